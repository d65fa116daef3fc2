//! extproc-gateway: one ext_proc server for Envoy that runs a chain of processors per
//! route, in place of one Envoy filter (and one gRPC stream) per behaviour.
//!
//! The crate is both the `extproc-gateway` binary and a library: implement
//! [`Processor`](processor::Processor) for your own logic, stack it with the built-in
//! [`processors`] in a [`Chain`](chain::Chain), and test it with the in-process
//! [`testing::Driver`] that plays Envoy's side of the stream (feature `testing`).

#![warn(missing_docs)]

pub mod admin;
pub mod budget;
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
pub mod phase;
pub mod processor;
#[path = "../processors/mod.rs"]
pub mod processors;
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

/// The names a processor author needs, in one import.
pub mod prelude {
    pub use crate::budget::OverBudget;
    pub use crate::chain::{Chain, ChainBuilder, ChainError, ProcessorOptions};
    pub use crate::phase::{
        BodyKind, BodyPhase, Flow, Headers, HeadersPhase, ImmediateResponse, Mutations, Phase,
        PhaseKind,
    };
    pub use crate::processor::{
        unhandled, BodyNeed, BodyReceipt, HookResult, OnError, PhaseNeeds, Processor,
        ProcessorError, RequestCtx, Withheld,
    };
    pub use crate::registry::{BuildContext, ProcessorSettings, RequestHeaderWrites};
}
