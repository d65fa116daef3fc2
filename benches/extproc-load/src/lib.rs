//! Load for ext_proc servers, as Envoy's filter would make it, and the floor server
//! to compare them with.
//!
//! `extproc-load` plays Envoy's side of the `Process` stream against any ext_proc
//! address: the phases, body sizes, chunking, gRPC initial metadata and
//! `allow_mode_override` of a filter config; every answer is checked for the kind and
//! order Envoy would accept. `extproc-floor` is the least a server can do (an empty
//! CONTINUE of the matching kind), so a real server's cost reads as a ratio to it. `extproc-otlp-sink` is a local
//! trace collector, so a server's cost with trace export on can be measured too.

#![warn(missing_docs)]

pub mod exchange;
pub mod floor;
pub mod hold;
pub mod load;
pub mod otlp_sink;
pub mod report;

pub use exchange::{BodyMode, ExchangeSpec};
pub use load::{run, LoadSpec, Stop};
pub use report::Report;
