//! How a processor type is configured and built: the settings type YAML holds under
//! the processor's name, what the processor learns about where it is built, and how a
//! crate of processors registers them with the gateway without depending on it.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::metrics::MetricFamilies;
use crate::processor::Processor;

/// A processor's settings as written in config, and how to build the processor from
/// them. The settings type is what YAML holds under the processor's name; `serde`
/// reads it (prefer `#[serde(deny_unknown_fields)]`, so a typo is a config error with
/// its line) and writes it back for `/config`.
pub trait ProcessorSettings:
    Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static
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
