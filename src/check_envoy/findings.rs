//! What `check-envoy` reports: one finding per place where Envoy's config and the
//! gateway's routes disagree, each with the line to edit and the fix.

use std::fmt;

/// How bad a finding is: an error breaks requests or security, a warning costs
/// performance or breaks only some requests (large bodies, heavy load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Requests fail, are answered wrongly, or pass unchecked.
    Error,
    /// Cost, capacity or an edge case; the exit code stays 0.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One disagreement, printed as `FILE:LINE: SEVERITY: WHAT. Fix: FIX`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finding {
    /// The Envoy file as named on the command line.
    pub file: String,
    /// 1-based line of the YAML node concerned (0 when the file has no line to point
    /// at, e.g. it cannot be read).
    pub line: usize,
    /// Error or warning.
    pub severity: Severity,
    /// What breaks, in the operator's terms.
    pub what: String,
    /// What to change.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.file, self.line)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        write!(f, "{}: {}", self.severity, self.what.trim_end_matches('.'))?;
        if !self.fix.is_empty() {
            write!(f, ". Fix: {}", self.fix.trim_end_matches('.'))?;
        }
        Ok(())
    }
}

/// Everything one run found, and what it looked at (for the summary line).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The Envoy file as named on the command line.
    pub file: String,
    /// Findings in line order, duplicates removed.
    pub findings: Vec<Finding>,
    /// ext_proc filters examined.
    pub filters: usize,
    /// Gateway routes examined.
    pub routes: usize,
}

impl Report {
    /// Adds a finding unless the same one (line, severity, text) is already there:
    /// several routes or overrides can lead to the same advice.
    pub fn push(&mut self, finding: Finding) {
        if !self.findings.contains(&finding) {
            self.findings.push(finding);
        }
    }

    /// Sorts by line, errors first on a line, so the output reads top to bottom.
    pub fn sort(&mut self) {
        self.findings.sort_by_key(|f| (f.line, f.severity));
    }

    /// Number of errors.
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    /// Number of warnings.
    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// The one-line summary printed after the findings.
    pub fn summary(&self) -> String {
        let plural = |n: usize, word: &str| {
            if n == 1 {
                format!("{n} {word}")
            } else {
                format!("{n} {word}s")
            }
        };
        format!(
            "{}: {}, {} ({} checked against {})",
            self.file,
            plural(self.errors(), "error"),
            plural(self.warnings(), "warning"),
            plural(self.filters, "ext_proc filter"),
            plural(self.routes, "gateway route"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_prints_file_line_severity_what_and_fix() {
        let f = Finding {
            file: "envoy.yaml".into(),
            line: 42,
            severity: Severity::Error,
            what: "the body is withheld.".into(),
            fix: "set allow_mode_override: true.".into(),
        };
        assert_eq!(
            f.to_string(),
            "envoy.yaml:42: error: the body is withheld. Fix: set allow_mode_override: true"
        );
    }

    #[test]
    fn duplicates_are_dropped_and_the_summary_counts() {
        let f = Finding {
            file: "e.yaml".into(),
            line: 3,
            severity: Severity::Warning,
            what: "w".into(),
            fix: "f".into(),
        };
        let mut r = Report {
            file: "e.yaml".into(),
            filters: 1,
            routes: 2,
            ..Report::default()
        };
        r.push(f.clone());
        r.push(f);
        assert_eq!(r.findings.len(), 1);
        assert_eq!(
            r.summary(),
            "e.yaml: 0 errors, 1 warning (1 ext_proc filter checked against 2 gateway routes)"
        );
    }
}
