//! `extproc-gateway check-envoy ENVOY_YAML [--config GATEWAY_YAML]`: reads an Envoy
//! bootstrap and reports where its ext_proc filters and the gateway's routes disagree.
//!
//! Envoy accepts most of these configs silently and the trouble shows only under
//! traffic: a body the gateway never receives because `allow_mode_override` is off, a
//! 413 on the first large body, an authenticating route that fails open. Each finding
//! names the line to edit and the fix.
//!
//! How routes are paired with filters: a filter's gRPC initial metadata (its
//! `grpc_service.initial_metadata`, merged with the `grpc_initial_metadata` of an
//! `ExtProcPerRoute` override) decides which gateway routes with `match.grpc_metadata`
//! it can reach; every other route condition (path, headers, authority, route name)
//! is assumed to be able to match, so each such route counts for every filter.

mod checks;
pub mod envoy;
pub mod findings;
pub mod gateway;
pub mod yaml;

use std::path::Path;
use std::process::ExitCode;

pub use findings::{Finding, Report, Severity};

use crate::config::GatewayConfig;
use crate::registry::Registry;

/// Exit code when the input could not be checked at all (unreadable file, YAML
/// syntax, invalid gateway config), as opposed to 1 for a config with errors.
pub const EXIT_UNCHECKED: u8 = 2;

/// Checks Envoy YAML text against a gateway config. `file` names the text in findings.
/// `Err` means the text is not YAML (a finding with the line of the syntax error).
pub fn check(text: &str, file: &str, gateway: &GatewayConfig) -> Result<Report, Finding> {
    let unchecked = |line: usize, what: String| Finding {
        file: file.to_string(),
        line,
        severity: Severity::Error,
        what,
        fix: String::new(),
    };
    let root = yaml::parse(text)
        .map_err(|e| {
            unchecked(
                e.line,
                format!("not valid YAML (column {}): {}", e.column, e.message),
            )
        })?
        .ok_or_else(|| unchecked(0, "the file holds no YAML document".into()))?;
    let routes = gateway::routes(gateway)
        .map_err(|(field, msg)| unchecked(0, format!("gateway config: {field}: {msg}")))?;
    let mut report = Report {
        file: file.to_string(),
        routes: routes.len(),
        ..Report::default()
    };
    let boot = match envoy::Bootstrap::read(&root) {
        Ok(b) => b,
        Err(e) => {
            report.push(Finding {
                file: file.to_string(),
                line: e.line,
                severity: Severity::Error,
                what: e.message,
                fix: "pass an Envoy bootstrap (the file given to `envoy -c`)".into(),
            });
            return Ok(report);
        }
    };
    Ok(checks::run(file, &boot, &routes, gateway, root.line))
}

/// The subcommand: loads both files (the gateway config's processors named by
/// `registry`), prints one line per finding and a summary, and returns 0 (no errors),
/// 1 (errors) or 2 (could not check).
pub fn main(registry: &Registry, envoy_file: &Path, config: Option<&Path>) -> ExitCode {
    let name = envoy_file.display().to_string();
    let gateway = match config {
        Some(path) => GatewayConfig::load_with(registry, path),
        None => GatewayConfig::embedded_with(registry),
    };
    let gateway = match gateway {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_UNCHECKED);
        }
    };
    let text = match std::fs::read_to_string(envoy_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: error: cannot read: {e}");
            return ExitCode::from(EXIT_UNCHECKED);
        }
    };
    match check(&text, &name, &gateway) {
        Ok(report) => {
            for f in &report.findings {
                println!("{f}");
            }
            println!("{}", report.summary());
            if report.errors() > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(finding) => {
            eprintln!("{finding}");
            ExitCode::from(EXIT_UNCHECKED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = r#"
static_resources:
  listeners:
  - name: l
    per_connection_buffer_limit_bytes: 1048576
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              VHOST_CONFIG
              routes:
              - name: r
                match: {prefix: "/"}
                route: {cluster: up}
                ROUTE_CONFIG
          http_filters:
          - name: ep
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {envoy_grpc: {cluster_name: gw}}
              FILTER_CONFIG
  clusters:
  - name: gw
    circuit_breakers: {thresholds: [{max_requests: 100000}]}
    http2_protocol_options: {}
    health_checks: [{grpc_health_check: {}}]
"#;

    fn run(filter: &str, vhost: &str, route: &str, gateway: &str) -> Report {
        let text = BOOT
            .replace("FILTER_CONFIG", filter)
            .replace("VHOST_CONFIG", vhost)
            .replace("ROUTE_CONFIG", route);
        let gateway = GatewayConfig::parse(gateway, "gw.yaml").unwrap();
        check(&text, "e.yaml", &gateway).unwrap()
    }

    fn texts(r: &Report) -> Vec<String> {
        r.findings.iter().map(|f| f.to_string()).collect()
    }

    const HEADERS_ONLY: &str = "routes: [{name: h, processors: [trivial]}]\n";
    const DIGEST: &str = "routes: [{name: d, processors: [digest]}]\n";

    #[test]
    fn a_headers_only_route_is_happy_with_envoys_defaults() {
        let r = run("failure_mode_allow: false", "", "", HEADERS_ONLY);
        assert_eq!(texts(&r), Vec::<String>::new());
    }

    #[test]
    fn a_route_override_beats_a_disabled_virtual_host_and_keeps_its_mode() {
        let per = |body: &str| {
            format!(
                "typed_per_filter_config: {{ep: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, {body}}}}}"
            )
        };
        // The virtual host disables the filter, the route turns it back on with a
        // mode that withholds the body digest needs.
        let r = run(
            "allow_mode_override: true",
            &per("disabled: true"),
            &per("overrides: {processing_mode: {request_body_mode: NONE}, failure_mode_allow: false}"),
            DIGEST,
        );
        // The override's processing_mode is still overridable (allow_mode_override is
        // the filter's): no finding.
        assert_eq!(texts(&r), Vec::<String>::new());
        let r = run(
            "",
            &per("disabled: true"),
            &per("overrides: {processing_mode: {request_body_mode: STREAMED}}"),
            DIGEST,
        );
        let t = texts(&r);
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(t[0].starts_with("e.yaml:20: error: on Envoy route `r` (ExtProcPerRoute): gateway route `d` needs the request body whole"), "{t:?}");
        assert!(t[0].contains("Envoy streams it (STREAMED)"), "{t:?}");
        // Disabled on the route: nothing runs, nothing to report.
        let r = run("", "", &per("disabled: true"), DIGEST);
        assert_eq!(texts(&r), Vec::<String>::new());
    }

    #[test]
    fn a_filter_config_wrapper_is_unwrapped() {
        let r = run(
            "",
            "",
            "typed_per_filter_config: {ep: {\"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, disabled: true}}}",
            DIGEST,
        );
        assert_eq!(texts(&r), Vec::<String>::new());
    }

    #[test]
    fn allowed_override_modes_must_list_the_narrow_mode_too() {
        // The full mode of the default chain is listed, but a request without
        // x-context-id / x-echo-only gets a narrower override, which is not: Envoy then
        // keeps processing_mode (no body) and digest goes without.
        let full = "{response_header_mode: SEND, request_body_mode: BUFFERED, response_body_mode: BUFFERED, request_trailer_mode: SEND, response_trailer_mode: SEND}";
        let r = run(
            &format!("allow_mode_override: true\n              allowed_override_modes: [{full}]"),
            "",
            "",
            "routes: [{name: d, processors: [trivial, timer, digest, context_check, echo]}]\n",
        );
        let t = texts(&r);
        assert_eq!(t.len(), 1, "{t:?}");
        assert!(
            t[0].contains("requests of gateway route `d` that trigger no optional body reading need the request body whole"),
            "{t:?}"
        );
        assert!(
            t[0].contains("response_body_mode: NONE, request_trailer_mode: SEND"),
            "{t:?}"
        );
    }

    #[test]
    fn bad_values_are_findings_not_panics() {
        let r = run("message_timeout: 200ms", "", "", HEADERS_ONLY);
        assert!(
            texts(&r)[0].contains("message_timeout is not a duration"),
            "{:?}",
            texts(&r)
        );
        let r = run(
            "processing_mode: {request_body_mode: BUFFERD}",
            "",
            "",
            HEADERS_ONLY,
        );
        assert!(texts(&r)[0].contains("request_body_mode has a value Envoy does not know"));
        let gateway = GatewayConfig::embedded().unwrap();
        for text in [
            "[]",
            "42",
            "static_resources: 3",
            "static_resources: {listeners: [1, {filter_chains: 2}]}",
            "{a: *x}",
        ] {
            let _ = check(text, "x.yaml", &gateway);
        }
    }
}
