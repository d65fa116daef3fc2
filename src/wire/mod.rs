//! The protobuf boundary: ext_proc messages in, [`Inbound`] events out, and
//! [`Outbound`] answers back into the one response kind each message expects.
//!
//! This is the only module that reads or writes the fields of the generated ext_proc
//! types. The transports name the messages only to move them whole (the gRPC codec and
//! message reader decode and encode them; the HTTP transport transcodes them to proto3
//! JSON through [`JsonCodec`]), and the exchange above sees only the gateway's own
//! types: phases, mutations, immediate responses, body modes. The module encodes the
//! protocol rules other servers got wrong: read `raw_value` but fall back to `value`,
//! write only `raw_value`, answer each message with its own kind, echo a full-duplex
//! body through `streamed_response`, and keep `content-length` right when a buffered
//! body is replaced.
//!
//! It is public only so the project's own tests and benches can drive the exchange
//! with protobuf messages; it is not part of the library's API.

mod decode;
mod encode;
mod json;
mod modes;
#[cfg(any(test, doc, feature = "testing"))]
pub mod peer;

use bytes::Bytes;

use crate::modes::{BodyMode, BodyModes, ModeOverride, Protocol};
use crate::phase::{Flow, ImmediateResponse, Mutations, Phase, PhaseKind};

pub use decode::{decode, WireError, ATTRIBUTES_KEY};
pub use encode::{encode, encode_timeout_override};
pub use json::{JsonCodec, JsonError};

/// One message from Envoy, decoded into the gateway's terms.
#[derive(Debug)]
pub struct Inbound {
    /// The phase it carries (headers and bodies moved out of the message, not copied).
    pub phase: Phase,
    /// Envoy takes no answer to it (`observability_mode`).
    pub observability_mode: bool,
    /// The request attributes, flattened to `name -> JSON value` (empty when Envoy
    /// sent none): routes match on them, and they fill the context of a stream that
    /// did not start with request headers.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The dynamic metadata Envoy forwarded, as `namespace -> JSON object`; `None`
    /// when the message carried no `metadata_context` (Envoy sends it with every
    /// message when configured to, and the latest wins).
    pub metadata_context: Option<serde_json::Map<String, serde_json::Value>>,
    /// What `protocol_config` says about Envoy's body modes (only the first message
    /// of a stream carries it).
    pub protocol: Protocol,
}

/// The gateway's answer to one of Envoy's messages, before encoding: what the
/// exchange decided, in the gateway's own types. [`encode()`] writes it as the
/// `ProcessingResponse` Envoy expects.
#[derive(Debug)]
pub enum Outbound {
    /// Go on: the answer of the message's own kind, carrying the chain's changes.
    Continue {
        /// The kind of message answered (the response is of the matching kind).
        kind: PhaseKind,
        /// Header, body and metadata changes.
        mutations: Mutations,
        /// How a body message is answered; `None` for other kinds.
        body: Option<BodyAnswer>,
        /// What to send for the rest of the request (request headers' answer only).
        mode_override: Option<ModeOverride>,
    },
    /// Answer the client now (Envoy's `ImmediateResponse`); the upstream is not called
    /// or its response is replaced.
    Respond {
        /// The response to send.
        response: ImmediateResponse,
        /// The chain's changes: only the metadata writes travel (as dynamic metadata).
        mutations: Mutations,
        /// What to send for the rest of the request (request headers' answer only).
        mode_override: Option<ModeOverride>,
    },
}

/// What the answer to a body message needs beyond the chain's changes: its shape
/// depends on the body mode in force.
#[derive(Debug, Clone)]
pub struct BodyAnswer {
    /// The body mode in force for the message's direction.
    pub mode: BodyMode,
    /// The chunk as received, when the mode answers with the body and no processor
    /// changed it (full duplex: Envoy forwards only what the answer carries, so an
    /// unchanged chunk is echoed); empty otherwise.
    pub received: Bytes,
    /// The chunk's `end_of_stream`, echoed with it.
    pub end_of_stream: bool,
}

impl Outbound {
    /// The answer to `phase` as the chain decided it (`flow`, `mutations`), in the body
    /// `modes` in force. `mode_override` travels only on the request headers' answer.
    pub fn answer(
        phase: &Phase,
        flow: Flow,
        mutations: Mutations,
        modes: BodyModes,
        mode_override: Option<ModeOverride>,
    ) -> Outbound {
        let kind = phase.kind();
        let mode_override = match kind {
            PhaseKind::RequestHeaders => mode_override,
            _ => None,
        };
        match flow {
            Flow::Respond(response) => Outbound::Respond {
                response,
                mutations,
                mode_override,
            },
            Flow::Continue => {
                let body = match phase {
                    Phase::RequestBody(b) | Phase::ResponseBody(b) => {
                        let mode = modes.get(kind.is_request());
                        Some(BodyAnswer {
                            mode,
                            // Only cloned when it is sent back.
                            received: if mode.answers_with_body() && mutations.body().is_none() {
                                b.chunk.clone()
                            } else {
                                Bytes::new()
                            },
                            end_of_stream: b.end_of_stream,
                        })
                    }
                    _ => None,
                };
                Outbound::Continue {
                    kind,
                    mutations,
                    body,
                    mode_override,
                }
            }
        }
    }

    /// A plain "continue" answer of the message's kind, for a message no processor
    /// sees.
    pub fn proceed(phase: &Phase, modes: BodyModes) -> Outbound {
        Outbound::answer(phase, Flow::Continue, Mutations::new(), modes, None)
    }

    /// An immediate response decided before any processor ran (a refusal by the
    /// server itself).
    pub fn refusal(response: ImmediateResponse) -> Outbound {
        Outbound::Respond {
            response,
            mutations: Mutations::new(),
            mode_override: None,
        }
    }

    /// The override this answer asks for, if any.
    pub fn mode_override(&self) -> Option<&ModeOverride> {
        match self {
            Outbound::Continue { mode_override, .. } | Outbound::Respond { mode_override, .. } => {
                mode_override.as_ref()
            }
        }
    }

    /// The override this answer asks for, to change before it is sent (a transport
    /// that can carry less than Envoy's gRPC stream narrows it).
    pub fn mode_override_mut(&mut self) -> Option<&mut ModeOverride> {
        match self {
            Outbound::Continue { mode_override, .. } | Outbound::Respond { mode_override, .. } => {
                mode_override.as_mut()
            }
        }
    }
}
