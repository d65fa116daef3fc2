//! The gateway's side: each route with what its chain needs from Envoy, which of its
//! processors need what, and how Envoy can reach it (gRPC metadata, path match).

use crate::chain::Chain;
use crate::config::GatewayConfig;
use crate::phase::HeadersPhase;
use crate::processor::{BodyNeed, PhaseNeeds};
use crate::registry::BuildContext;

use super::envoy::Part;

/// One processor of a route and what it asks Envoy for.
#[derive(Debug, Clone)]
pub struct ProcessorNeeds {
    /// Its name in config.
    pub name: String,
    /// Its widest needs.
    pub needs: PhaseNeeds,
    /// Its needs on a request without trigger headers.
    pub narrow: PhaseNeeds,
}

/// One gateway route, as the checks see it.
#[derive(Debug, Clone)]
pub struct GatewayRoute {
    /// Route name.
    pub name: String,
    /// The widest phases its chain asks for (`chain.needs()`).
    pub needs: PhaseNeeds,
    /// What it asks for on a request that triggers no optional reading (no
    /// `x-echo-only`, no `x-context-id`): the narrowest mode_override it sends.
    pub narrow_needs: PhaseNeeds,
    /// Its processors in chain order.
    pub processors: Vec<ProcessorNeeds>,
    /// `path_exact` / `path_prefix` / `path_regex`, as `path_prefix: /public`.
    pub path_match: Option<String>,
    /// gRPC metadata the route requires (`match.grpc_metadata`).
    pub grpc_metadata: Vec<(String, String)>,
    /// True when `grpc_metadata` is its only condition: given that metadata it matches
    /// every request, so routes after it are not reached.
    pub only_metadata: bool,
    /// True when it runs `jwt_auth`: it authenticates and must be able to block.
    pub authenticates: bool,
}

impl GatewayRoute {
    /// Processors of the route that need `part` (at least `at_least` for bodies).
    pub fn needing(&self, part: Part, at_least: BodyNeed) -> Vec<String> {
        self.processors
            .iter()
            .filter(|p| wants(&p.needs, part, at_least))
            .map(|p| p.name.clone())
            .collect()
    }

    /// Processors that answer the client themselves (their answer is the point).
    pub fn answering(&self) -> Vec<String> {
        self.processors
            .iter()
            .map(|p| p.name.clone())
            .filter(|n| ANSWERING.contains(&n.as_str()))
            .collect()
    }

    /// Processors that ask for less on some requests (their `needs_for` narrows, e.g.
    /// a body read only when a trigger header is present).
    pub fn narrowing(&self) -> Vec<String> {
        self.processors
            .iter()
            .filter(|p| p.narrow != p.needs)
            .map(|p| p.name.clone())
            .collect()
    }
}

/// Built-in processors whose purpose is an immediate response (401, an echo, a 500 on
/// cross-talk, a 400 on bad instructions).
const ANSWERING: [&str; 4] = ["jwt_auth", "echo", "context_check", "instructions"];

/// Whether `needs` includes `part` (bodies: at least `at_least`).
pub fn wants(needs: &PhaseNeeds, part: Part, at_least: BodyNeed) -> bool {
    let body = |b: BodyNeed| b != BodyNeed::None && b >= at_least;
    match part {
        Part::RequestHeaders => needs.request_headers,
        Part::RequestBody => body(needs.request_body),
        Part::RequestTrailers => needs.request_trailers,
        Part::ResponseHeaders => needs.response_headers,
        Part::ResponseBody => body(needs.response_body),
        Part::ResponseTrailers => needs.response_trailers,
    }
}

/// Builds every route of the config. Errors name the route field, as `check-config`
/// does.
pub fn routes(config: &GatewayConfig) -> Result<Vec<GatewayRoute>, (String, String)> {
    let router = config.build_router()?;
    let bare = HeadersPhase::default();
    let mut out = Vec::new();
    for (built, spec) in router.routes().iter().zip(&config.routes) {
        let mut processors = Vec::new();
        for p in &spec.processors {
            let one = p
                .add_to(
                    Chain::builder().applied_header(None),
                    &BuildContext::checking(&spec.name),
                )
                .and_then(|c| c.build().map_err(|e| e.to_string()))
                .map_err(|e| (format!("route {}", spec.name), e))?;
            processors.push(ProcessorNeeds {
                name: p.name().to_string(),
                needs: one.needs(),
                narrow: one.needs_for(&bare),
            });
        }
        let m = &built.matcher;
        let path_match = spec.matcher.as_ref().and_then(|m| {
            m.path_exact
                .as_ref()
                .map(|p| format!("path_exact: {p}"))
                .or_else(|| m.path_prefix.as_ref().map(|p| format!("path_prefix: {p}")))
                .or_else(|| m.path_regex.as_ref().map(|p| format!("path_regex: {p}")))
        });
        out.push(GatewayRoute {
            name: built.name.to_string(),
            needs: built.chain.needs(),
            narrow_needs: built.chain.needs_for(&bare),
            processors,
            path_match,
            grpc_metadata: m.grpc_metadata.clone(),
            only_metadata: m.path.is_none()
                && m.authority.is_none()
                && m.methods.is_empty()
                && m.headers.is_empty()
                && m.route_name.is_none(),
            authenticates: spec
                .processors
                .iter()
                .any(|p| p.claim_header_prefix().is_some()),
        });
    }
    Ok(out)
}

/// The routes a stream carrying `metadata` (gRPC initial metadata) can reach, in
/// order. Routes that require metadata the stream lacks are skipped; a route whose
/// only condition is satisfied metadata ends the list (it takes every such request).
/// Every other condition (path, headers, ...) is assumed to be able to match.
pub fn reachable<'r>(
    routes: &'r [GatewayRoute],
    metadata: &[(String, String)],
) -> Vec<&'r GatewayRoute> {
    let mut out = Vec::new();
    for r in routes {
        let satisfied = r
            .grpc_metadata
            .iter()
            .all(|(k, v)| metadata.iter().any(|(mk, mv)| mk == k && mv == v));
        if !satisfied {
            continue;
        }
        out.push(r);
        if r.only_metadata {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Vec<GatewayRoute> {
        routes(&GatewayConfig::parse(yaml, "t").unwrap()).unwrap()
    }

    #[test]
    fn needs_per_route_and_processor() {
        let r = &config(DEFAULT)[0];
        assert_eq!(r.needs.request_body, BodyNeed::Buffered);
        assert_eq!(r.needs.response_body, BodyNeed::Buffered);
        // Without trigger headers only digest reads a body.
        assert_eq!(r.narrow_needs.request_body, BodyNeed::Buffered);
        assert_eq!(r.narrow_needs.response_body, BodyNeed::None);
        assert_eq!(
            r.needing(Part::RequestBody, BodyNeed::Buffered),
            ["digest", "context_check", "echo"]
        );
        assert_eq!(
            r.needing(Part::ResponseBody, BodyNeed::Streamed),
            ["context_check"]
        );
        assert!(!r.authenticates);
        assert_eq!(r.narrowing(), ["context_check", "echo"]);
    }

    const DEFAULT: &str =
        "routes:\n  - name: d\n    processors: [trivial, timer, digest, context_check, echo]\n";

    #[test]
    fn metadata_selects_routes_and_a_metadata_only_route_ends_the_search() {
        let rs = config(
            "routes:
  - name: a
    match: {grpc_metadata: {x-chain: a}}
    processors: [trivial]
  - name: p
    match: {path_prefix: /p}
    processors: [timer]
  - name: all
    processors: [digest]
",
        );
        let names = |m: &[(String, String)]| {
            reachable(&rs, m)
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&[("x-chain".into(), "a".into())]), ["a"]);
        assert_eq!(names(&[]), ["p", "all"]);
        assert_eq!(names(&[("x-chain".into(), "b".into())]), ["p", "all"]);
        assert_eq!(rs[1].path_match.as_deref(), Some("path_prefix: /p"));
    }
}
