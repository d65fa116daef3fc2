//! extproc-gateway: one ext_proc server for Envoy that runs a chain of processors per
//! route, in place of one Envoy filter (and one gRPC stream) per behaviour.
//!
//! The crate is both the `extproc-gateway` binary and a library: implement
//! [`Processor`](processor::Processor) for your own logic, stack it with the built-in
//! [`processors`] in a [`Chain`](chain::Chain), and test it with the in-process
//! [`testing::Driver`] that plays Envoy's side of the stream (feature `testing`).

#![warn(missing_docs)]

// The processor API's modules: `extproc_gateway::phase` and `extproc_gateway_api::phase`
// name the same items.
/// schemars, at the version processor settings derive `JsonSchema` with.
pub use extproc_gateway_api::schemars;
pub use extproc_gateway_api::{budget, phase, processor};
/// The built-in processors (the `extproc-gateway-processors` crate).
pub use extproc_gateway_processors as processors;

pub mod admin;
pub mod chain;
pub mod check_envoy;
pub mod cli;
/// `when:` conditions: CEL expressions that decide per request whether a processor
/// entry runs.
pub mod condition;
pub mod config;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod modes;
pub mod path;
#[doc(hidden)]
pub mod proto;
pub mod registry;
pub mod router;
pub mod server;
pub mod telemetry;
// Documented whatever the features, so the docs show the test driver.
#[cfg(any(test, doc, feature = "testing"))]
pub mod testing;
pub mod upstream;
#[doc(hidden)]
pub mod wire;

/// The names a processor author needs, in one import: the processor API's prelude
/// and the chain builder.
pub mod prelude {
    pub use crate::chain::{Chain, ChainBuilder, ChainError, ProcessorOptions};
    pub use extproc_gateway_api::prelude::*;
}
