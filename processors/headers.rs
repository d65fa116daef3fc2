//! `headers`: static header changes from config, on the upstream request and on the
//! response (set, append, remove), as Google's add_header callout and similar demos do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::prelude::*;

/// Changes for one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Replace or add.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Add alongside existing values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub append: BTreeMap<String, String>,
    /// Remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.append.is_empty() && self.remove.is_empty()
    }

    fn apply(&self, out: &mut Mutations) {
        for name in &self.remove {
            out.remove(name.clone());
        }
        for (name, value) in &self.set {
            out.set(name.clone(), value.clone());
        }
        for (name, value) in &self.append {
            out.append(name.clone(), value.clone());
        }
    }

    fn validate(&self, side: &str) -> Result<(), String> {
        let names = self
            .set
            .keys()
            .chain(self.append.keys())
            .chain(self.remove.iter());
        for name in names {
            if !is_header_name(name) {
                return Err(format!("{side}: `{name}` is not a valid header name"));
            }
        }
        for (name, value) in self.set.iter().chain(self.append.iter()) {
            if !is_header_value(value) {
                return Err(format!(
                    "{side}: value of `{name}` contains a control character"
                ));
            }
        }
        Ok(())
    }
}

/// Settings of `headers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadersSettings {
    /// Changes to the upstream request.
    #[serde(default)]
    pub request: HeaderEdits,
    /// Changes to the response.
    #[serde(default)]
    pub response: HeaderEdits,
}

/// A valid (non-pseudo) HTTP header name in either case: RFC 9110 token characters.
/// Config may spell names as it likes; they are lower-cased when written, and then
/// meet [`is_valid_header_name`](crate::phase::is_valid_header_name).
pub fn is_header_name(name: &str) -> bool {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        crate::phase::is_valid_header_name(&name.to_ascii_lowercase())
    } else {
        // Already lower case (the common spelling): checked without a copy.
        crate::phase::is_valid_header_name(name)
    }
}

/// A header value the gateway may emit: no control character but HTAB (the rule of
/// [`is_valid_header_value`](crate::phase::is_valid_header_value), checked at load so
/// a bad static value is a config error rather than a header dropped per request).
pub fn is_header_value(value: &str) -> bool {
    crate::phase::is_valid_header_value(value.as_bytes())
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct StaticHeaders {
    settings: HeadersSettings,
}

impl StaticHeaders {
    /// Validates the settings (names and values) and builds the processor.
    pub fn new(settings: HeadersSettings) -> Result<Self, String> {
        settings.request.validate("request")?;
        settings.response.validate("response")?;
        Ok(Self { settings })
    }
}

impl ProcessorSettings for HeadersSettings {
    type Processor = StaticHeaders;

    fn build(&self, _: &BuildContext<'_>) -> Result<StaticHeaders, String> {
        StaticHeaders::new(self.clone())
    }

    fn validate(&self) -> Result<(), String> {
        StaticHeaders::new(self.clone()).map(drop)
    }

    fn request_header_writes(&self) -> RequestHeaderWrites {
        RequestHeaderWrites::Names(
            self.request
                .set
                .keys()
                .chain(self.request.append.keys())
                .map(|n| n.to_ascii_lowercase())
                .collect(),
        )
    }
}

impl Processor for StaticHeaders {
    type State = ();

    fn new_state(&self) {}

    fn name(&self) -> &str {
        "headers"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds {
            request_headers: !self.settings.request.is_empty(),
            response_headers: !self.settings.response.is_empty(),
            ..PhaseNeeds::NONE
        }
    }

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        if self.settings.request.is_empty() {
            // Nothing configured for this side: not asked for (see `needs`).
            return unhandled();
        }
        self.settings.request.apply(out);
        Ok(Flow::Continue)
    }

    async fn on_response_headers(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        if self.settings.response.is_empty() {
            return unhandled();
        }
        self.settings.response.apply(out);
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::is_header_name;

    #[test]
    fn header_names_are_checked_in_either_case() {
        for ok in ["x-a", "X-A", "Content-Type", "a1!#$%&'*+-.^_`|~"] {
            assert!(is_header_name(ok), "{ok:?}");
        }
        for bad in ["", "x a", ":path", "X:A", "é", "X\u{0}"] {
            assert!(!is_header_name(bad), "{bad:?}");
        }
    }
}
