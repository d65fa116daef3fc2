//! Envoy's body modes as the gateway sees them: what the filter is configured to send
//! (`protocol_config` on the first message), what the gateway asks for in its
//! `mode_override`, and the reasons a route can get less than it needs.
//!
//! Envoy's modes are Envoy's: an override may be ignored (`allow_mode_override` off,
//! `allowed_override_modes`, `send_body_without_waiting_for_header_response`,
//! FULL_DUPLEX_STREAMED), so the gateway plans with what it asked for but believes
//! only what arrives.

use crate::processor::{BodyNeed, PhaseNeeds};

/// One of Envoy's `ProcessingMode.BodySendMode` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BodyMode {
    /// The body is not sent.
    #[default]
    None,
    /// A message per chunk, headers already forwarded.
    Streamed,
    /// One message with the whole body, headers held; over Envoy's buffer limit the
    /// client gets 413.
    Buffered,
    /// One message with the body up to Envoy's buffer limit, headers held; the rest is
    /// forwarded without the processor.
    BufferedPartial,
    /// Chunks both ways: what the answers carry is what Envoy forwards.
    FullDuplexStreamed,
    /// One message per gRPC message of a gRPC body; answered like full duplex.
    Grpc,
}

impl BodyMode {
    /// From the protobuf enum value; unknown values are `None` (the proto default).
    pub fn from_i32(value: i32) -> BodyMode {
        match value {
            1 => BodyMode::Streamed,
            2 => BodyMode::Buffered,
            3 => BodyMode::BufferedPartial,
            4 => BodyMode::FullDuplexStreamed,
            5 => BodyMode::Grpc,
            _ => BodyMode::None,
        }
    }

    /// The protobuf enum value.
    pub const fn as_i32(self) -> i32 {
        match self {
            BodyMode::None => 0,
            BodyMode::Streamed => 1,
            BodyMode::Buffered => 2,
            BodyMode::BufferedPartial => 3,
            BodyMode::FullDuplexStreamed => 4,
            BodyMode::Grpc => 5,
        }
    }

    /// Envoy's name, as in its config.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyMode::None => "NONE",
            BodyMode::Streamed => "STREAMED",
            BodyMode::Buffered => "BUFFERED",
            BodyMode::BufferedPartial => "BUFFERED_PARTIAL",
            BodyMode::FullDuplexStreamed => "FULL_DUPLEX_STREAMED",
            BodyMode::Grpc => "GRPC",
        }
    }

    /// From Envoy's name, as its config writes it (`None` for a name Envoy does not
    /// know).
    pub fn from_name(name: &str) -> Option<BodyMode> {
        Some(match name {
            "NONE" => BodyMode::None,
            "STREAMED" => BodyMode::Streamed,
            "BUFFERED" => BodyMode::Buffered,
            "BUFFERED_PARTIAL" => BodyMode::BufferedPartial,
            "FULL_DUPLEX_STREAMED" => BodyMode::FullDuplexStreamed,
            "GRPC" => BodyMode::Grpc,
            _ => return None,
        })
    }

    /// A mode a `mode_override` cannot switch out of (Envoy ignores every override
    /// when its filter is configured for FULL_DUPLEX_STREAMED).
    pub fn is_fixed(self) -> bool {
        self == BodyMode::FullDuplexStreamed
    }

    /// Modes whose answers carry the body (`streamed_response`).
    pub fn answers_with_body(self) -> bool {
        self == BodyMode::FullDuplexStreamed
    }

    /// The mode to ask for when a route needs `need` and the filter is configured
    /// with `self`. Never asks for BUFFERED where the filter said BUFFERED_PARTIAL (a
    /// large body would turn into a 413): a reader that needs the whole body asks for
    /// STREAMED there instead, and is told the body is partial if Envoy keeps PARTIAL.
    pub fn ask_for(self, need: BodyNeed) -> BodyMode {
        if self.is_fixed() {
            return self;
        }
        // Envoy 1.40 sends nothing in GRPC mode (not implemented): plan as for NONE.
        match (need, self) {
            (BodyNeed::None, _) => BodyMode::None,
            (BodyNeed::Streamed, BodyMode::Grpc) => BodyMode::Streamed,
            (BodyNeed::Buffered, BodyMode::Grpc) => BodyMode::Buffered,
            (BodyNeed::Streamed, BodyMode::None | BodyMode::BufferedPartial) => BodyMode::Streamed,
            (BodyNeed::Streamed, current) => current,
            (BodyNeed::Buffered, BodyMode::BufferedPartial) => BodyMode::Streamed,
            (BodyNeed::Buffered, _) => BodyMode::Buffered,
        }
    }
}

/// The body modes of one stream, one per direction: what the filter is configured
/// with, or what is in force once an override was sent. The shape of a body answer
/// depends on it (full duplex echoes the chunk, BUFFERED fixes `content-length`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BodyModes {
    /// Request body.
    pub request: BodyMode,
    /// Response body.
    pub response: BodyMode,
}

impl BodyModes {
    /// The mode of one direction.
    pub fn get(&self, request: bool) -> BodyMode {
        if request {
            self.request
        } else {
            self.response
        }
    }
}

/// What the gateway asks Envoy to send for the rest of one request: the
/// `mode_override` of its request-headers answer, in the terms of [`PhaseNeeds`].
/// Headers and trailers are sent (`true`, Envoy's SEND) or skipped (SKIP); bodies come
/// in a [`BodyMode`]. The request headers are always asked for (they are what is being
/// answered), so they have no field.
///
/// Envoy may ignore it (see the module docs): the gateway remembers what it asked
/// for, and believes only what arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeOverride {
    /// Whether the response headers are sent.
    pub response_headers: bool,
    /// How the request body is sent.
    pub request_body: BodyMode,
    /// How the response body is sent.
    pub response_body: BodyMode,
    /// Whether the request trailers are sent.
    pub request_trailers: bool,
    /// Whether the response trailers are sent.
    pub response_trailers: bool,
}

impl ModeOverride {
    /// Exactly what a chain that `needs` these phases must be sent, within what Envoy
    /// can switch to from the filter's `configured` body modes (see
    /// [`BodyMode::ask_for`]): a route that never reads a body is never sent one.
    pub fn for_needs(needs: PhaseNeeds, configured: BodyModes) -> ModeOverride {
        let request_body = configured.request.ask_for(needs.request_body);
        let response_body = configured.response.ask_for(needs.response_body);
        ModeOverride {
            response_headers: needs.response_headers,
            request_body,
            response_body,
            // Trailers end a body that comes without end_of_stream (a streamed one, or
            // a buffered one followed by trailers): a chain that reads a body also
            // hears them, so it knows the body is over. FULL_DUPLEX_STREAMED requires
            // them.
            request_trailers: needs.request_trailers
                || configured.request.is_fixed()
                || request_body != BodyMode::None,
            response_trailers: needs.response_trailers
                || configured.response.is_fixed()
                || response_body != BodyMode::None,
        }
    }
}

/// What Envoy says about the stream in the first message's `protocol_config`: the
/// body modes the filter (or its per-route override) is configured with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Protocol {
    /// False when the message had no `protocol_config` (observability mode, or an
    /// Envoy older than 1.34): the modes are then Envoy's defaults.
    pub known: bool,
    /// Configured request body mode.
    pub request: BodyMode,
    /// Configured response body mode.
    pub response: BodyMode,
    /// Body chunks may arrive before the headers' answer; Envoy then ignores
    /// `mode_override`.
    pub send_body_without_waiting_for_header_response: bool,
}

/// Why a route got less from Envoy than its chain needs (or more than it asked for).
/// Counted per route in `extproc_mode_mismatches_total{reason}`, logged once per route
/// and reason, and listed on `/routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModeMismatch {
    /// The request has a body, the chain needs it, and Envoy sent none of it.
    RequestBodyNotSent,
    /// Only a prefix of the request body reached the gateway (BUFFERED_PARTIAL).
    RequestBodyPartial,
    /// The response has a body, the chain needs it, and Envoy sent none of it.
    ResponseBodyNotSent,
    /// Only a prefix of the response body reached the gateway.
    ResponseBodyPartial,
    /// A phase the gateway asked Envoy to skip arrived anyway: the override was not
    /// honoured (extra messages cost time; results stay right).
    OverrideIgnored,
    /// The filter is configured for GRPC body mode, which Envoy 1.40 does not
    /// implement (it sends no body): the gateway asks for what it needs instead.
    GrpcBodyMode,
    /// A processor answered the client in observability mode, where Envoy cannot
    /// act on an answer: a check that should block did not.
    ObservabilityCannotBlock,
}

impl ModeMismatch {
    /// Every reason, for zero-initialised metrics.
    pub const ALL: [ModeMismatch; 7] = [
        ModeMismatch::RequestBodyNotSent,
        ModeMismatch::RequestBodyPartial,
        ModeMismatch::ResponseBodyNotSent,
        ModeMismatch::ResponseBodyPartial,
        ModeMismatch::OverrideIgnored,
        ModeMismatch::GrpcBodyMode,
        ModeMismatch::ObservabilityCannotBlock,
    ];

    /// Stable snake_case name (a metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            ModeMismatch::RequestBodyNotSent => "request_body_not_sent",
            ModeMismatch::RequestBodyPartial => "request_body_partial",
            ModeMismatch::ResponseBodyNotSent => "response_body_not_sent",
            ModeMismatch::ResponseBodyPartial => "response_body_partial",
            ModeMismatch::OverrideIgnored => "override_ignored",
            ModeMismatch::GrpcBodyMode => "grpc_body_mode",
            ModeMismatch::ObservabilityCannotBlock => "observability_cannot_block",
        }
    }

    /// What the operator should change, for the log line.
    pub fn hint(self) -> &'static str {
        match self {
            ModeMismatch::RequestBodyNotSent | ModeMismatch::ResponseBodyNotSent => {
                "set allow_mode_override: true on the ext_proc filter, or a body mode that sends the body"
            }
            ModeMismatch::RequestBodyPartial | ModeMismatch::ResponseBodyPartial => {
                "raise per_connection_buffer_limit_bytes, or allow_mode_override: true so the gateway can ask for STREAMED"
            }
            ModeMismatch::OverrideIgnored => {
                "set allow_mode_override: true (and no send_body_without_waiting_for_header_response) so Envoy skips what the route does not need"
            }
            ModeMismatch::GrpcBodyMode => {
                "use STREAMED or FULL_DUPLEX_STREAMED for routes whose processors read bodies"
            }
            ModeMismatch::ObservabilityCannotBlock => {
                "turn observability_mode off for routes whose processors must block (jwt_auth)"
            }
        }
    }
}

/// Why the gateway ended a stream with an error: counted in
/// `extproc_protocol_violations_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Violation {
    /// The message carries no phase.
    EmptyMessage,
    /// The bytes are not a ProcessingRequest.
    Malformed,
    /// A message out of order (e.g. request headers twice, body after trailers).
    OutOfOrder,
    /// A message over the size limit.
    Oversized,
}

impl Violation {
    /// Every kind, for zero-initialised metrics.
    pub const ALL: [Violation; 4] = [
        Violation::EmptyMessage,
        Violation::Malformed,
        Violation::OutOfOrder,
        Violation::Oversized,
    ];

    /// Stable snake_case name (a metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::EmptyMessage => "empty_message",
            Violation::Malformed => "malformed",
            Violation::OutOfOrder => "out_of_order",
            Violation::Oversized => "oversized",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_is_never_upgraded_to_buffered() {
        use BodyMode::*;
        assert_eq!(BufferedPartial.ask_for(BodyNeed::Buffered), Streamed);
        assert_eq!(BufferedPartial.ask_for(BodyNeed::Streamed), Streamed);
        assert_eq!(BufferedPartial.ask_for(BodyNeed::None), None);
        assert_eq!(None.ask_for(BodyNeed::Buffered), Buffered);
        assert_eq!(Streamed.ask_for(BodyNeed::Buffered), Buffered);
        assert_eq!(Buffered.ask_for(BodyNeed::Streamed), Buffered);
        assert_eq!(None.ask_for(BodyNeed::Streamed), Streamed);
        assert_eq!(
            FullDuplexStreamed.ask_for(BodyNeed::None),
            FullDuplexStreamed
        );
        assert_eq!(Grpc.ask_for(BodyNeed::Buffered), Buffered);
        assert_eq!(Grpc.ask_for(BodyNeed::None), None);
    }

    #[test]
    fn override_asks_only_for_needed_phases() {
        let m = ModeOverride::for_needs(PhaseNeeds::HEADERS, BodyModes::default());
        assert_eq!(m.request_body, BodyMode::None);
        assert_eq!(m.response_body, BodyMode::None);
        assert!(m.response_headers);
        assert!(!m.request_trailers);
        let needs = PhaseNeeds {
            request_body: BodyNeed::Buffered,
            response_body: BodyNeed::Streamed,
            ..PhaseNeeds::HEADERS
        };
        let m = ModeOverride::for_needs(needs, BodyModes::default());
        assert_eq!(m.request_body, BodyMode::Buffered);
        assert_eq!(m.response_body, BodyMode::Streamed);
        let duplex = BodyModes {
            request: BodyMode::FullDuplexStreamed,
            response: BodyMode::Buffered,
        };
        let m = ModeOverride::for_needs(needs, duplex);
        assert_eq!(m.request_body, BodyMode::FullDuplexStreamed);
        assert_eq!(m.response_body, BodyMode::Buffered);
        let partial = BodyModes {
            request: BodyMode::BufferedPartial,
            response: BodyMode::BufferedPartial,
        };
        let m = ModeOverride::for_needs(needs, partial);
        assert_eq!(m.request_body, BodyMode::Streamed);
        assert_eq!(m.response_body, BodyMode::Streamed);
        assert!(m.request_trailers);
    }

    #[test]
    fn names_round_trip() {
        for v in 0..6 {
            let mode = BodyMode::from_i32(v);
            assert_eq!(BodyMode::from_name(mode.as_str()), Some(mode));
        }
        assert_eq!(BodyMode::from_name("SOMETIMES"), None);
    }

    #[test]
    fn protobuf_values_round_trip() {
        for v in 0..6 {
            assert_eq!(BodyMode::from_i32(v).as_i32(), v);
        }
        assert_eq!(BodyMode::from_i32(99), BodyMode::None);
    }
}
