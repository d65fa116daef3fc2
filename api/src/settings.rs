//! How a processor type is configured and built: the settings type YAML holds under
//! the processor's name, what the processor learns about where it is built, and how a
//! crate of processors registers them with the gateway without depending on it.

use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::metrics::MetricFamilies;
use crate::processor::Processor;

/// A processor's settings as written in config, and how to build the processor from
/// them. The settings type is what YAML holds under the processor's name; `serde`
/// reads it (prefer `#[serde(deny_unknown_fields)]`, so a typo is a config error with
/// its line) and writes it back for `/config`; its `JsonSchema` (derive it, from the
/// re-exported [`schemars`]) is what editors check that YAML against
/// (`extproc-gateway schema`), so keep both derives on the same type.
pub trait ProcessorSettings:
    Serialize + DeserializeOwned + JsonSchema + Clone + fmt::Debug + Send + Sync + 'static
{
    /// The processor these settings build.
    type Processor: Processor;

    /// Builds the processor for one route (once per config load, never per request).
    /// Fails when a resource it names cannot be loaded (a key file, say); the error
    /// names the route and the entry.
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Self::Processor, String>;

    /// Checks settings that parse but cannot work, while the config is read, so the
    /// error carries the entry's line. Default: nothing to check.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// The settings as `/config` shows them: secrets replaced. Default: unchanged.
    fn redacted(&self) -> Self {
        self.clone()
    }

    /// The request headers the processor may write upstream. A route refuses a
    /// processor after `jwt_auth` whose writes fall under the claim header prefix,
    /// since the upstream could no longer tell verified claims from forged ones.
    /// Default: none declared.
    fn request_header_writes(&self) -> RequestHeaderWrites {
        RequestHeaderWrites::Names(Vec::new())
    }

    /// A prefix of request headers this processor vouches for (`jwt_auth`'s verified
    /// claims): later processors of the route may not write under it. Default: none.
    fn claim_header_prefix(&self) -> Option<&str> {
        None
    }
}

/// Which request headers a processor may write upstream
/// ([`ProcessorSettings::request_header_writes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHeaderWrites {
    /// These names (lower case), whatever the request says.
    Names(Vec<String>),
    /// Names the client chooses (`instructions`): any header at all.
    ClientChosen,
}

/// What a processor may learn about where it is built.
#[derive(Clone, Copy)]
pub struct BuildContext<'a> {
    route: &'a str,
    metrics: Option<&'a MetricFamilies>,
    serving: bool,
}

impl<'a> BuildContext<'a> {
    /// For a chain that will serve on `route`, observed by `metrics` when given.
    pub fn serving(route: &'a str, metrics: Option<&'a MetricFamilies>) -> Self {
        Self {
            route,
            metrics,
            serving: true,
        }
    }

    /// For a chain that is only checked (`check-config`, `check-envoy`, a reload's
    /// validation): load and validate everything, start nothing in the background.
    pub fn checking(route: &'a str) -> Self {
        Self {
            route,
            metrics: None,
            serving: false,
        }
    }

    /// The route's name.
    pub fn route(&self) -> &str {
        self.route
    }

    /// The gateway's Prometheus registry, for a processor with counters of its own
    /// beyond its hooks (which the chain already measures). `None` when the chain is
    /// not observed (metrics off, or only checked).
    pub fn metrics(&self) -> Option<&'a MetricFamilies> {
        self.metrics
    }

    /// False when the chain will never serve: a processor must not start background
    /// work (fetching a JWKS URL, opening connections) for it.
    pub fn is_serving(&self) -> bool {
        self.serving
    }
}

/// Where processor types are registered. The gateway's registry implements it, so a
/// crate of processors (the built-ins among them) lists its own names without
/// depending on the gateway.
pub trait Registrar {
    /// Why a registration was refused.
    type Error: fmt::Display;

    /// Adds a processor type: config entries named `name` are read as `S` and build
    /// `S::Processor`.
    fn add<S: ProcessorSettings>(&mut self, name: &str) -> Result<(), Self::Error>;
}

/// The JSON Schema of a duration as the config writes it (`humantime`: `1s`, `250ms`,
/// `1m 30s`): `#[schemars(schema_with = "duration_schema")]` on a field read with
/// `#[serde(with = "humantime_serde")]`, so an editor flags `5 seconds` or `5` before
/// the gateway does.
pub fn duration_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "examples": ["1s", "250ms", "1m 30s"]
    })
}

/// What `humantime` reads: numbers each followed by a unit, e.g. `1h 30m`.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+\s*(nsec|ns|usec|us|msec|ms|seconds|second|sec|s|minutes|minute|min|m|hours|hour|hr|h|days|day|d|weeks|week|w|months|month|M|years|year|y)\s*)+$";

/// The same for an optional duration (`Option<Duration>` read with
/// `humantime_serde`).
pub fn optional_duration_schema(g: &mut SchemaGenerator) -> Schema {
    let mut schema = duration_schema(g);
    schema.insert("type".into(), serde_json::json!(["string", "null"]));
    schema
}
