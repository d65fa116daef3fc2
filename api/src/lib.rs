//! The processor API of extproc-gateway: what a processor sees of a request (phase
//! events, header lists, bodies), what it answers (mutations, immediate responses,
//! errors for its failure policy), the [`Processor`](processor::Processor) trait and
//! the [`ProcessorSettings`](settings::ProcessorSettings) YAML names it by.
//!
//! It knows nothing of protobuf, tonic or the server, so a crate of processors that
//! depends on it alone (the built-ins do) cannot reach them either. The gateway
//! (`extproc-gateway`) re-exports every module here under the same names.

#![warn(missing_docs)]

pub mod budget;
pub mod metrics;
pub mod phase;
pub mod processor;
pub mod settings;

/// Prometheus, at the version [`metrics::MetricFamilies`] hands out.
pub use prometheus;

/// schemars, at the version [`settings::ProcessorSettings`] requires: derive
/// `JsonSchema` on your settings with it.
pub use schemars;

/// The names a processor author needs, in one import.
pub mod prelude {
    pub use crate::budget::OverBudget;
    pub use crate::phase::{
        BodyKind, BodyPhase, Flow, Headers, HeadersPhase, ImmediateResponse, Mutations, Phase,
        PhaseKind,
    };
    pub use crate::processor::{
        unhandled, BodyNeed, BodyReceipt, HookResult, OnError, PhaseNeeds, Processor,
        ProcessorError, RequestCtx, Withheld,
    };
    pub use crate::settings::{BuildContext, ProcessorSettings, RequestHeaderWrites};
    pub use schemars::JsonSchema;
}
