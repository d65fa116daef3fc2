//! The gateway's config: parsed from YAML, validated as a whole, then turned into a
//! [`Router`] of chains once per load. Nothing half-valid is ever served: any error
//! names the file, the line or field, and what is wrong.

mod schema;
mod transport;

use std::path::Path;
use std::sync::Arc;

use regex::Regex;

pub use schema::{
    GatewayConfig, HeaderMatchConfig, MatchConfig, MetadataMatchConfig, RouteConfig, ServerConfig,
};
pub use transport::{ListenAddr, Secret, SocketMode, TlsConfig, REDACTED};

use crate::chain::Chain;
use crate::metrics::Metrics;
use crate::registry::{BuildContext, ProcessorSpec, Registry, RequestHeaderWrites};
use crate::router::{PathMatch, Route, RouteMatch, Router, ValueMatch};

/// The config served when no file is given.
pub const DEFAULT_YAML: &str = include_str!("default.yaml");

/// Most processors a chain may hold (their run marks fit one machine word).
pub const MAX_CHAIN_LEN: usize = 64;

/// A config that cannot be served, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {location}: {message}")]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub source_name: String,
    /// `line L column C` or the field path.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl GatewayConfig {
    /// The embedded default.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::embedded_with(&Registry::builtin())
    }

    /// The embedded default, read with `registry` (it names built-ins only, which a
    /// registry may have replaced).
    pub fn embedded_with(registry: &Registry) -> Result<Self, ConfigError> {
        Self::parse_with(registry, DEFAULT_YAML, "<embedded default>")
    }

    /// Reads and validates a YAML file naming built-in processors only.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(&Registry::builtin(), path)
    }

    /// Reads and validates a YAML file whose processors `registry` names.
    pub fn load_with(registry: &Registry, path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            location: "file".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse_with(registry, &text, &name)
    }

    /// Parses and validates YAML text naming built-in processors only;
    /// `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        Self::parse_with(&Registry::builtin(), text, source_name)
    }

    /// Parses and validates YAML text whose processors `registry` names.
    pub fn parse_with(
        registry: &Registry,
        text: &str,
        source_name: &str,
    ) -> Result<Self, ConfigError> {
        let parsed = registry.scope(|| serde_saphyr::from_str::<GatewayConfig>(text));
        let config: GatewayConfig = parsed.map_err(|e| {
            let location = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "document".into());
            // The plain message (no source snippet) still ends with the position;
            // keep only the reason, the location is reported on its own.
            let message = e.without_snippet().to_string();
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            ConfigError {
                source_name: source_name.to_string(),
                location,
                message,
            }
        })?;
        // Built to be checked, not served: nothing starts in the background (a reload
        // builds the serving routes next, and a JWKS URL is fetched for those only).
        config
            .validate_server()
            .and_then(|()| config.build_routes(None, false).map(drop))
            .map_err(|(field, message)| ConfigError {
                source_name: source_name.to_string(),
                location: field,
                message,
            })?;
        Ok(config)
    }

    /// Checks settings that parse but cannot work (server limits, the path policy).
    fn validate_server(&self) -> Result<(), (String, String)> {
        if self.server.http_exchange_ttl.is_zero() {
            return Err((
                "server.http_exchange_ttl".into(),
                "must be longer than zero: request state must outlive the upstream's answer".into(),
            ));
        }
        if self.path_policy.forward_normalized && !self.path_policy.normalize {
            return Err((
                "path_policy.forward_normalized".into(),
                "needs path_policy.normalize: true (there is no normalised path to forward)".into(),
            ));
        }
        if self.server.http_max_exchanges == 0 {
            return Err((
                "server.http_max_exchanges".into(),
                "must be at least 1".into(),
            ));
        }
        self.validate_security()
    }

    /// Checks the transport-security settings that parse but cannot work. The files
    /// themselves are read when the server starts (and name themselves in errors).
    fn validate_security(&self) -> Result<(), (String, String)> {
        let s = &self.server;
        if s.admin_token.is_some() && s.admin_token_file.is_some() {
            return Err((
                "server.admin_token".into(),
                "set admin_token or admin_token_file, not both".into(),
            ));
        }
        if let Some(token) = &s.admin_token {
            let t = token.expose().trim();
            if t.is_empty() {
                return Err(("server.admin_token".into(), "must not be empty".into()));
            }
            if t == REDACTED {
                return Err((
                    "server.admin_token".into(),
                    format!("`{REDACTED}` is how /config hides the token, not a token: set the real one (or admin_token_file)"),
                ));
            }
        }
        if let Some(tls) = &s.tls {
            for (field, path) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if path.as_os_str().is_empty() {
                    return Err((format!("server.tls.{field}"), "must not be empty".into()));
                }
            }
        }
        Ok(())
    }

    /// Builds the routes and their chains. Errors carry the field path.
    pub fn build_router(&self) -> Result<Router, (String, String)> {
        self.build_router_observed(None)
    }

    /// Like [`GatewayConfig::build_router`], with metric handles resolved for every
    /// route and processor.
    pub fn build_router_observed(
        &self,
        metrics: Option<&Arc<Metrics>>,
    ) -> Result<Router, (String, String)> {
        self.build_routes(metrics, true)
    }

    /// The routes as the server runs them: observed by `metrics` unless
    /// `server.request_metrics` is off.
    pub fn build_router_served(&self, metrics: &Arc<Metrics>) -> Result<Router, (String, String)> {
        self.build_router_observed(self.server.request_metrics.then_some(metrics))
    }

    /// Builds the routes; `start: false` builds chains that will never serve (a check):
    /// processors load and validate everything but start nothing in the background.
    fn build_routes(
        &self,
        metrics: Option<&Arc<Metrics>>,
        start: bool,
    ) -> Result<Router, (String, String)> {
        if let Some(name) = self.applied_header_name() {
            if !crate::phase::is_valid_header_name(&name) {
                return Err((
                    "applied_header".into(),
                    format!("`{name}` is not a valid header name"),
                ));
            }
        }
        let mut routes = Vec::with_capacity(self.routes.len());
        let mut names = std::collections::HashSet::new();
        let mut catch_all: Option<String> = None;
        for (i, r) in self.routes.iter().enumerate() {
            let at = |f: &str| format!("routes[{i}].{f}");
            if r.name.trim().is_empty() {
                return Err((at("name"), "route name must not be empty".into()));
            }
            if r.name == crate::router::UNMATCHED {
                return Err((
                    at("name"),
                    "`unmatched` is the built-in route of requests no route matches".into(),
                ));
            }
            if r.name == crate::router::PATH_REFUSED {
                return Err((
                    at("name"),
                    "`path_refused` is the built-in route of requests whose path is refused".into(),
                ));
            }
            if !names.insert(r.name.clone()) {
                return Err((at("name"), format!("duplicate route name `{}`", r.name)));
            }
            if let Some(previous) = &catch_all {
                return Err((
                    at("match"),
                    format!(
                        "route `{}` is unreachable: route `{previous}` before it matches every request",
                        r.name
                    ),
                ));
            }
            if r.processors.len() > MAX_CHAIN_LEN {
                return Err((
                    at("processors"),
                    format!("at most {MAX_CHAIN_LEN} processors per route"),
                ));
            }
            let matcher = match &r.matcher {
                Some(m) => route_match(m).map_err(|(f, msg)| (at(&format!("match.{f}")), msg))?,
                None => RouteMatch::default(),
            };
            if matcher.is_catch_all() {
                catch_all = Some(r.name.clone());
            }
            for o in claim_overwrites(&r.processors) {
                let at_writer = at(&format!("processors[{}] ({})", o.writer, o.writer_name));
                if !r.allow_claim_overwrite {
                    return Err((at_writer, o.describe(&r.name)));
                }
                if start {
                    tracing::warn!(
                        route = %r.name,
                        processor = o.writer_name,
                        "{}: allowed by allow_claim_overwrite: true",
                        o.describe(&r.name)
                    );
                }
            }
            let mut chain = Chain::builder()
                .applied_header(self.applied_header_name())
                .processor_timeout(self.server.processor_timeout);
            if let Some(m) = metrics {
                chain = chain.observe(m, &r.name);
            }
            let ctx = if start {
                BuildContext::serving(&r.name, metrics.map(|m| m.families()))
            } else {
                BuildContext::checking(&r.name)
            };
            for (j, p) in r.processors.iter().enumerate() {
                chain = p
                    .add_to(chain, &ctx)
                    .map_err(|msg| (at(&format!("processors[{j}] ({})", p.name())), msg))?;
            }
            let chain = chain
                .build()
                .map_err(|e| (at("processors"), e.to_string()))?;
            routes.push(Route {
                name: r.name.as_str().into(),
                matcher,
                chain,
                metrics: metrics.map(|m| m.route(&r.name)),
            });
        }
        Ok(
            Router::with_unmatched(routes, metrics.map(|m| m.route(crate::router::UNMATCHED)))
                .with_buffer_limit(self.server.envoy_buffer_limit_bytes)
                .with_path_policy(self.path_policy, metrics)
                .with_access_log(self.access_log),
        )
    }

    /// The JSON Schema (draft 7, what YAML editors read) of a config file naming the
    /// processors of `registry`, each with its settings: `extproc-gateway schema`
    /// prints it, and a `# yaml-language-server: $schema=...` line in `gateway.yaml`
    /// lets an editor complete and check the file as it is typed.
    pub fn json_schema(registry: &Registry) -> serde_json::Value {
        let generator = schemars::generate::SchemaSettings::draft07().into_generator();
        let schema = registry.scope(|| generator.into_root_schema_for::<GatewayConfig>());
        let mut value = schema.to_value();
        if let Some(root) = value.as_object_mut() {
            root.insert("title".into(), "extproc-gateway config".into());
        }
        value
    }

    /// The applied-processors header, or `None` when turned off (empty string).
    pub fn applied_header_name(&self) -> Option<String> {
        let name = self.applied_header.trim();
        (!name.is_empty()).then(|| name.to_ascii_lowercase())
    }

    /// The config as YAML with secrets hidden (for `/config`).
    pub fn to_redacted_yaml(&self) -> String {
        let mut shown = self.clone();
        for route in &mut shown.routes {
            for p in &mut route.processors {
                *p = p.redacted();
            }
        }
        serde_saphyr::to_string(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// A processor after `jwt_auth` that can write under its claim header prefix: the
/// upstream could no longer tell the claims `jwt_auth` verified from forged ones.
#[derive(Debug)]
struct ClaimOverwrite {
    /// Chain position and name of the processor that writes.
    writer: usize,
    writer_name: String,
    /// Chain position of the `jwt_auth` whose claims it can overwrite.
    auth: usize,
    prefix: String,
    /// The header it writes under the prefix; `None` when the client picks names.
    header: Option<String>,
}

impl ClaimOverwrite {
    fn describe(&self, route: &str) -> String {
        let (w, name, a, prefix) = (self.writer, &self.writer_name, self.auth, &self.prefix);
        let what = match &self.header {
            None => format!(
                "writes whatever headers the client names, so a client could overwrite the verified claim headers (`{prefix}*`) and forge claims. Put `{name}` before `jwt_auth`"
            ),
            Some(header) => format!(
                "writes `{header}`, which an upstream takes for a verified claim header (`{prefix}*`). Write it before `jwt_auth` or under another name"
            ),
        };
        format!(
            "route `{route}`: `{name}` (processors[{w}]) runs after `jwt_auth` (processors[{a}]) and {what}, or set `allow_claim_overwrite: true` on the route to accept this"
        )
    }
}

/// Every processor that comes after a `jwt_auth` of the chain and can write under
/// its claim header prefix (in any spelling that `jwt_auth` strips from clients).
fn claim_overwrites(chain: &[ProcessorSpec]) -> Vec<ClaimOverwrite> {
    use crate::processors::jwt_auth::is_claim_header;
    let mut found = Vec::new();
    for (auth, spec) in chain.iter().enumerate() {
        let Some(prefix) = spec.claim_header_prefix() else {
            continue;
        };
        for (writer, later) in chain.iter().enumerate().skip(auth + 1) {
            let header = match later.request_header_writes() {
                RequestHeaderWrites::ClientChosen => None,
                RequestHeaderWrites::Names(names) => {
                    match names.into_iter().find(|n| is_claim_header(n, prefix)) {
                        Some(n) => Some(n),
                        None => continue,
                    }
                }
            };
            found.push(ClaimOverwrite {
                writer,
                writer_name: later.name().to_string(),
                auth,
                prefix: prefix.to_ascii_lowercase(),
                header,
            });
        }
    }
    found
}

fn regex(field: &str, pattern: &str) -> Result<Regex, (String, String)> {
    // Anchored: a route regex must match the whole value, as in Envoy's safe_regex.
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| (field.to_string(), format!("invalid regex: {e}")))
}

fn route_match(m: &MatchConfig) -> Result<RouteMatch, (String, String)> {
    let paths = [&m.path_exact, &m.path_prefix, &m.path_regex]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if paths > 1 {
        return Err((
            "path_exact".into(),
            "set at most one of path_exact, path_prefix, path_regex".into(),
        ));
    }
    let path = if let Some(p) = &m.path_exact {
        Some(PathMatch::Exact(p.clone()))
    } else if let Some(p) = &m.path_prefix {
        Some(PathMatch::Prefix(p.clone()))
    } else if let Some(p) = &m.path_regex {
        Some(PathMatch::Regex(regex("path_regex", p)?))
    } else {
        None
    };
    for (i, method) in m.methods.iter().enumerate() {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err((
                format!("methods[{i}]"),
                format!("`{method}` is not an upper-case HTTP method"),
            ));
        }
    }
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let field = format!("headers[{i}]");
        if h.name.is_empty() {
            return Err((
                format!("{field}.name"),
                "header name must not be empty".into(),
            ));
        }
        let set = [
            h.exact.is_some(),
            h.prefix.is_some(),
            h.regex.is_some(),
            h.present.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err((
                field,
                "set exactly one of exact, prefix, regex, present".into(),
            ));
        }
        let value = if let Some(v) = &h.exact {
            ValueMatch::Exact(v.clone())
        } else if let Some(v) = &h.prefix {
            ValueMatch::Prefix(v.clone())
        } else if let Some(v) = &h.regex {
            ValueMatch::Regex(regex(&format!("{field}.regex"), v)?)
        } else {
            ValueMatch::Present(h.present.unwrap_or(true))
        };
        headers.push((h.name.to_ascii_lowercase(), value));
    }
    Ok(RouteMatch {
        path,
        authority: m.authority.clone(),
        methods: m.methods.clone(),
        headers,
        route_name: m.route_name.clone(),
        grpc_metadata: m
            .grpc_metadata
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        metadata: match &m.metadata {
            Some(md) if md.namespace.is_empty() || md.key.is_empty() => {
                return Err((
                    "metadata".into(),
                    "namespace and key must not be empty".into(),
                ))
            }
            Some(md) => Some(crate::router::MetadataMatch {
                namespace: md.namespace.clone(),
                key: md.key.clone(),
                value: md.value.clone(),
            }),
            None => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = GatewayConfig::embedded().unwrap();
        let router = c.build_router().unwrap();
        assert_eq!(router.routes().len(), 1);
        assert!(router.routes()[0].matcher.is_catch_all());
    }

    fn err(yaml: &str) -> String {
        GatewayConfig::parse(yaml, "test.yaml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_file_location_and_reason() {
        let e = err("routes:\n  - name: a\n    processors: [trivial]\n    colour: red\n");
        assert!(e.starts_with("test.yaml: line 4 column 5: "), "{e}");
        assert!(e.contains("unknown field `colour`"), "{e}");

        let e = err("routes:\n  - name: a\n    processors: [trivial, bogus]\n");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("unknown processor `bogus`; registered: "), "{e}");

        let e = err("routes:\n  - name: a\n    match: {path_regex: '('}\n    processors: []\n");
        assert!(e.contains("routes[0].match.path_regex"), "{e}");
        assert!(e.contains("invalid regex"), "{e}");

        let e = err("routes:\n  - name: a\n    processors: []\n  - name: b\n    processors: []\n");
        assert!(e.contains("routes[1].match"), "{e}");
        assert!(e.contains("unreachable"), "{e}");

        let e = err("routes:\n  - name: a\n    match: {path_prefix: /a}\n    processors: []\n  - name: a\n    processors: []\n");
        assert!(e.contains("duplicate route name"), "{e}");

        let e = err("server: {grpc_addr: 'nope'}\nroutes: []\n");
        assert!(e.contains("line 1"), "{e}");

        let e = err("routes:\n  - name: a\n    match: {headers: [{name: x, exact: a, prefix: b}]}\n    processors: []\n");
        assert!(e.contains("routes[0].match.headers[0]"), "{e}");

        let e = err("routes:\n  - name: a\n    match: {methods: [get]}\n    processors: []\n");
        assert!(e.contains("routes[0].match.methods[0]"), "{e}");
    }

    fn jwks() -> String {
        format!("{}/examples/jwt/jwks.json", env!("CARGO_MANIFEST_DIR"))
    }

    fn chain(processors: &str, allow: bool) -> String {
        format!(
            "routes:\n  - name: api\n    allow_claim_overwrite: {allow}\n    processors:\n      - trivial\n      - jwt_auth: {{jwks_file: '{}'}}\n{processors}",
            jwks()
        )
    }

    #[test]
    fn processors_after_jwt_auth_may_not_write_claim_headers() {
        let e = err(&chain("      - instructions\n", false));
        assert!(e.contains("routes[0].processors[2] (instructions)"), "{e}");
        assert!(e.contains("route `api`"), "{e}");
        assert!(e.contains("`jwt_auth` (processors[1])"), "{e}");
        assert!(e.contains("allow_claim_overwrite: true"), "{e}");
        assert!(e.contains("`decoded-*`"), "{e}");

        // A static header under the prefix, in any spelling jwt_auth strips.
        for name in ["decoded-role", "Decoded_Role", "DECODED-x"] {
            let e = err(&chain(
                &format!("      - headers: {{request: {{append: {{{name}: admin}}}}}}\n"),
                false,
            ));
            assert!(e.contains("routes[0].processors[2] (headers)"), "{e}");
            assert!(
                e.contains(&format!("writes `{}`", name.to_ascii_lowercase())),
                "{e}"
            );
        }
        // A built-in whose fixed header falls under a wide prefix.
        let e = err(&format!(
            "routes:\n  - name: r\n    processors:\n      - jwt_auth: {{jwks_file: '{}', claim_header_prefix: x-}}\n      - context_check\n",
            jwks()
        ));
        assert!(e.contains("processors[1] (context_check)"), "{e}");
        assert!(e.contains("writes `x-context-id`"), "{e}");

        // Allowed explicitly, before jwt_auth (which strips what is there), or
        // outside the prefix: the config loads.
        for ok in [
            chain("      - instructions\n", true),
            chain("      - headers: {request: {set: {decoded-role: x}}}\n", true),
            chain("      - headers: {request: {set: {x-decoded: x}}, response: {set: {decoded-a: b}}}\n", false),
            chain("      - headers: {request: {remove: [decoded-sub]}}\n", false),
            chain("      - echo\n      - digest\n      - timer\n", false),
            format!(
                "routes:\n  - name: r\n    processors:\n      - instructions\n      - jwt_auth: {{jwks_file: '{}'}}\n",
                jwks()
            ),
        ] {
            GatewayConfig::parse(&ok, "t.yaml").unwrap_or_else(|e| panic!("{e}\n{ok}"));
        }
        // The setting survives a round trip through /config.
        let c = GatewayConfig::parse(&chain("      - instructions\n", true), "t").unwrap();
        assert!(c.to_redacted_yaml().contains("allow_claim_overwrite: true"));
        let c = GatewayConfig::parse(&chain("", false), "t").unwrap();
        assert!(!c.to_redacted_yaml().contains("allow_claim_overwrite"));
    }

    #[test]
    fn an_invalid_applied_header_is_refused() {
        let e = err("applied_header: 'x bad'\nroutes: []\n");
        assert!(e.contains("applied_header"), "{e}");
        assert!(e.contains("not a valid header name"), "{e}");
    }

    #[test]
    fn transport_settings_round_trip_and_the_token_never_shows() {
        let yaml = "server:\n  grpc_addr: unix:/run/gw.sock\n  grpc_socket_mode: '0600'\n  tls: {cert_file: /c.pem, key_file: /k.pem, client_ca_file: /ca.pem, reload_interval: 2s}\n  admin_token: hunter2\nroutes: []\n";
        let c = GatewayConfig::parse(yaml, "t").unwrap();
        assert_eq!(c.server.grpc_addr, ListenAddr::Unix("/run/gw.sock".into()));
        assert_eq!(c.server.grpc_socket_mode, SocketMode(0o600));
        let tls = c.server.tls.clone().unwrap();
        assert_eq!(tls.client_ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(tls.reload_interval, std::time::Duration::from_secs(2));
        let shown = c.to_redacted_yaml();
        assert!(!shown.contains("hunter2") && !format!("{c:?}").contains("hunter2"));
        assert!(shown.contains("admin_token: <redacted>"), "{shown}");
        // What /config shows loads back, except that a redacted token is refused.
        let e = GatewayConfig::parse(&shown, "shown")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.admin_token") && e.contains("redacted"),
            "{e}"
        );
        let back = GatewayConfig::parse(&shown.replace("<redacted>", "hunter2"), "shown").unwrap();
        assert_eq!(back.server, c.server);

        let e = err("server: {admin_token: a, admin_token_file: /t}\nroutes: []\n");
        assert!(e.contains("not both"), "{e}");
        // Unquoted, the digits are still read as octal (never as decimal 660).
        let c =
            GatewayConfig::parse("server: {grpc_socket_mode: 0660}\nroutes: []\n", "t").unwrap();
        assert_eq!(c.server.grpc_socket_mode, SocketMode(0o660));
        let e = err("server: {grpc_socket_mode: 0999}\nroutes: []\n");
        assert!(e.contains("line 1") && e.contains("file mode"), "{e}");
        let e = err("server: {grpc_addr: 'unix:'}\nroutes: []\n");
        assert!(e.contains("needs a socket path"), "{e}");
        let e = err("server: {tls: {cert_file: /c.pem}}\nroutes: []\n");
        assert!(e.contains("key_file"), "{e}");
    }

    #[test]
    fn applied_header_can_be_renamed_or_turned_off() {
        let c = GatewayConfig::parse("applied_header: X-Chain\nroutes: []\n", "t").unwrap();
        assert_eq!(c.applied_header_name().as_deref(), Some("x-chain"));
        let c = GatewayConfig::parse("applied_header: ''\nroutes: []\n", "t").unwrap();
        assert_eq!(c.applied_header_name(), None);
    }

    #[test]
    fn path_policy_defaults_to_safe_and_is_validated() {
        let c = GatewayConfig::parse("routes: []\n", "t").unwrap();
        assert_eq!(c.path_policy, crate::path::PathPolicy::default());
        assert!(c.path_policy.normalize);
        assert!(!c.path_policy.forward_normalized);
        assert!(c.to_redacted_yaml().contains("path_policy:"));

        let c = GatewayConfig::parse(
            "path_policy:\n  path_with_escaped_slashes_action: KEEP_UNCHANGED\n  forward_normalized: true\nroutes: []\n",
            "t",
        )
        .unwrap();
        assert!(c.path_policy.forward_normalized);
        assert!(c.build_router().unwrap().path_policy().forward_normalized);

        let e = err("path_policy:\n  normalise: false\nroutes: []\n");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("unknown field `normalise`"), "{e}");
        let e = err("path_policy: {path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD}\n");
        assert!(e.contains("unknown variant `UNESCAPE_AND_FORWARD`"), "{e}");
        let e = err("path_policy: {normalize: false, forward_normalized: true}\n");
        assert!(e.contains("path_policy.forward_normalized"), "{e}");
        let e = err("routes:\n  - name: path_refused\n    processors: []\n");
        assert!(e.contains("routes[0].name"), "{e}");
        assert!(e.contains("built-in"), "{e}");
    }
}
