//! What Envoy really sends on one stream, per direction: message order, the body mode
//! in force, what part of a body each message holds, and what has arrived of each body.
//!
//! The gateway plans with what it asked for (`mode_override`) but believes only what
//! arrives. Envoy takes an override whole or not at all, so the first message that
//! tells them apart settles it for both directions: a body that arrives where the
//! filter sends none proves the override was taken; a phase the gateway asked to skip
//! proves it was ignored.

use crate::modes::{BodyMode, BodyModes, ModeMismatch, ModeOverride, Protocol};
use crate::phase::{BodyKind, BodyPhase, Phase};
use crate::processor::{BodyNeed, BodyReceipt, PhaseNeeds, RequestCtx};

/// What to do with a message once its order is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Run it through the chain and answer.
    Run,
    /// Answer it with a plain "continue" and give it to no processor (a repeated end
    /// of stream, which Envoy can send and which must not be hashed twice).
    Answer,
    /// Send nothing: a full-duplex chunk after end of stream (Envoy treats an answer
    /// to it as spurious).
    IgnoreSilently,
}

/// One direction (request or response) of the stream.
#[derive(Debug, Default, Clone, Copy)]
struct Side {
    configured: BodyMode,
    asked: BodyMode,
    need: BodyNeed,
    headers: bool,
    headers_end: bool,
    /// Body messages seen.
    bodies: u32,
    /// end_of_stream seen on headers or body, or trailers.
    ended: bool,
    trailers: bool,
    /// The last body message could be a BUFFERED_PARTIAL prefix.
    maybe_prefix: bool,
    receipt: BodyReceipt,
    /// `content-length` of the headers, when sent.
    content_length: Option<usize>,
    /// The chain asked Envoy to skip these.
    skip_headers: bool,
    skip_trailers: bool,
}

/// The tracked state of one stream.
#[derive(Debug)]
pub struct Flows {
    /// The first message carried `protocol_config`: the configured modes are known.
    known: bool,
    request: Side,
    response: Side,
    /// Whether Envoy took the `mode_override`: unknown until a message tells.
    honoured: Option<bool>,
    /// An override was sent.
    overridden: bool,
    /// The request headers' answer is held for a full-duplex body.
    holding: bool,
    ignored_counted: bool,
    mismatches: Vec<ModeMismatch>,
}

impl Flows {
    /// A stream whose first message said this about Envoy's modes.
    pub fn new(protocol: Protocol) -> Self {
        let side = |mode: BodyMode| Side {
            configured: mode,
            asked: mode,
            ..Side::default()
        };
        let mut flows = Flows {
            known: protocol.known,
            request: side(protocol.request),
            response: side(protocol.response),
            honoured: None,
            overridden: false,
            holding: false,
            ignored_counted: false,
            mismatches: Vec::new(),
        };
        if protocol.send_body_without_waiting_for_header_response
            || protocol.request.is_fixed()
            || protocol.response.is_fixed()
        {
            // Envoy ignores every override in these configurations.
            flows.honoured = Some(false);
        }
        flows
    }

    /// The body modes to answer with: what the gateway asked for unless Envoy is
    /// known to have ignored it.
    pub fn modes(&self) -> BodyModes {
        BodyModes {
            request: self.effective(&self.request),
            response: self.effective(&self.response),
        }
    }

    fn effective(&self, side: &Side) -> BodyMode {
        match self.honoured {
            Some(false) => side.configured,
            _ => side.asked,
        }
    }

    /// Decides the `mode_override` for this request's needs and remembers it. A body
    /// announced larger than Envoy's buffer (`buffer_limit`) is asked for as STREAMED:
    /// BUFFERED would get the client a 413.
    pub fn plan(
        &mut self,
        mut needs: PhaseNeeds,
        observability: bool,
        buffer_limit: usize,
    ) -> ModeOverride {
        if needs.request_body == BodyNeed::Buffered
            && !self.request.configured.is_fixed()
            && self
                .request
                .content_length
                .is_some_and(|n| n > buffer_limit)
        {
            needs.request_body = BodyNeed::Streamed;
        }
        let configured = BodyModes {
            request: self.request.configured,
            response: self.response.configured,
        };
        let mode = ModeOverride::for_needs(needs, configured);
        self.request.need = needs.request_body;
        self.response.need = needs.response_body;
        for (side, mode) in [
            (&mut self.request, configured.request),
            (&mut self.response, configured.response),
        ] {
            if mode == BodyMode::Grpc && side.need != BodyNeed::None {
                self.mismatches.push(ModeMismatch::GrpcBodyMode);
            }
        }
        if observability {
            // Nothing is answered in observability mode: the override never leaves.
            self.honoured = Some(false);
            return mode;
        }
        self.overridden = true;
        self.request.asked = mode.request_body;
        self.response.asked = mode.response_body;
        self.response.skip_headers = !mode.response_headers;
        self.request.skip_trailers = !mode.request_trailers;
        self.response.skip_trailers = !mode.response_trailers;
        mode
    }

    /// Whether the request headers' answer waits for the body: FULL_DUPLEX_STREAMED
    /// lets the server answer the headers after reading the body, and a processor
    /// needs the whole body before the headers leave.
    pub fn hold_request_headers(&mut self) -> bool {
        self.holding = self.request.configured == BodyMode::FullDuplexStreamed
            && self.request.need == BodyNeed::Buffered
            && !self.request.ended;
        self.holding
    }

    /// The held headers' answer was sent.
    pub fn released_request_headers(&mut self) {
        self.holding = false;
    }

    /// Mismatches found since the last call.
    pub fn take_mismatches(&mut self) -> Vec<ModeMismatch> {
        std::mem::take(&mut self.mismatches)
    }

    /// Copies what is known of both bodies into the request's context.
    pub fn fill_receipts(&self, ctx: &mut RequestCtx) {
        ctx.set_body_receipt(true, self.request.receipt);
        ctx.set_body_receipt(false, self.response.receipt);
    }

    /// Whether the exchange got as far as Envoy needed it (a reset then is normal).
    pub fn looks_complete(&self) -> bool {
        let asked_response = !self.response.skip_headers || self.response.need != BodyNeed::None;
        self.response.headers || self.response.ended || (!asked_response && self.request.ended)
    }

    /// Mismatches only the end of the stream reveals: a response body that was
    /// needed and never sent.
    pub fn at_stream_end(&mut self) -> Vec<ModeMismatch> {
        let r = &self.response;
        if r.headers && !r.headers_end && r.bodies == 0 && !r.trailers && r.need != BodyNeed::None {
            self.mismatches.push(ModeMismatch::ResponseBodyNotSent);
        }
        self.take_mismatches()
    }

    fn learn(&mut self, honoured: bool) {
        if self.honoured.is_none() && self.overridden {
            self.honoured = Some(honoured);
        }
        if !honoured {
            self.override_ignored();
        }
    }

    fn override_ignored(&mut self) {
        if self.overridden && !self.ignored_counted {
            self.ignored_counted = true;
            self.mismatches.push(ModeMismatch::OverrideIgnored);
        }
    }

    /// Checks the message's place in the stream, learns from it, and labels a body
    /// message with what it holds. Err is the reason the stream must end.
    pub fn observe(&mut self, phase: &mut Phase, observability: bool) -> Result<Step, String> {
        let request = phase.kind().is_request();
        let side_name = if request { "request" } else { "response" };
        match phase {
            Phase::RequestHeaders(h) | Phase::ResponseHeaders(h) => {
                let side = self.side(request);
                if side.headers || side.bodies > 0 || side.trailers {
                    return Err(format!(
                        "{side_name} headers after {side_name} headers, body or trailers"
                    ));
                }
                side.headers = true;
                side.headers_end = h.end_of_stream;
                side.ended = h.end_of_stream;
                side.receipt = if h.end_of_stream {
                    BodyReceipt::NoBody
                } else {
                    BodyReceipt::Pending
                };
                side.content_length = h
                    .headers
                    .get_str("content-length")
                    .and_then(|v| v.trim().parse().ok());
                if !request {
                    if self.response.skip_headers {
                        self.learn(false);
                    }
                    self.request_side_over();
                }
            }
            Phase::RequestBody(b) | Phase::ResponseBody(b) => {
                let side = self.side(request);
                if side.trailers {
                    return Err(format!("{side_name} body after {side_name} trailers"));
                }
                if side.ended && side.bodies > 0 {
                    // Envoy's duplicated last chunk (full duplex), or an end of stream
                    // sent twice: answered (or ignored in full duplex), never fatal.
                    return Ok(
                        if self.modes().get(request) == BodyMode::FullDuplexStreamed {
                            Step::IgnoreSilently
                        } else {
                            Step::Answer
                        },
                    );
                }
                if side.headers_end {
                    return Err(format!(
                        "{side_name} body after {side_name} headers with end_of_stream"
                    ));
                }
                self.body(request, b, observability);
            }
            Phase::RequestTrailers(_) | Phase::ResponseTrailers(_) => {
                let side = self.side(request);
                if side.trailers {
                    return Err(format!("{side_name} trailers arrived twice"));
                }
                if side.headers_end {
                    return Err(format!(
                        "{side_name} trailers after {side_name} headers with end_of_stream"
                    ));
                }
                let skipped = side.skip_trailers;
                side.trailers = true;
                side.ended = true;
                // Trailers end the body: all of it arrived unless the last message
                // may have been a BUFFERED_PARTIAL prefix.
                let (pending, bodies, maybe_prefix, need) = (
                    side.receipt == BodyReceipt::Pending,
                    side.bodies,
                    side.maybe_prefix,
                    side.need,
                );
                if pending {
                    let receipt = if bodies == 0 {
                        // Trailers but no body message: the body (if any) was not sent.
                        if need == BodyNeed::None {
                            BodyReceipt::NotSent
                        } else {
                            self.not_sent(request)
                        }
                    } else if maybe_prefix {
                        self.partial(request)
                    } else {
                        BodyReceipt::Complete
                    };
                    self.side(request).receipt = receipt;
                }
                if skipped {
                    self.learn(false);
                }
                if !request {
                    self.request_side_over();
                }
            }
        }
        Ok(Step::Run)
    }

    fn side(&mut self, request: bool) -> &mut Side {
        if request {
            &mut self.request
        } else {
            &mut self.response
        }
    }

    /// The response has begun: whatever has not arrived of the request body will
    /// not reach the processors before the response.
    fn request_side_over(&mut self) {
        if self.request.receipt != BodyReceipt::Pending {
            return;
        }
        self.request.receipt = if self.request.bodies == 0 {
            self.not_sent(true)
        } else if self.request.maybe_prefix {
            self.partial(true)
        } else {
            // Still streaming (the upstream answered early): not all of it.
            BodyReceipt::Partial
        };
    }

    /// A body that exists was not sent: learn and count.
    fn not_sent(&mut self, request: bool) -> BodyReceipt {
        let side = if request { self.request } else { self.response };
        if side.need != BodyNeed::None {
            if side.configured == BodyMode::None || side.configured == BodyMode::Grpc {
                // The filter sends no body and the gateway asked for one.
                self.learn(false);
            }
            self.mismatches.push(if request {
                ModeMismatch::RequestBodyNotSent
            } else {
                ModeMismatch::ResponseBodyNotSent
            });
        }
        BodyReceipt::NotSent
    }

    fn partial(&mut self, request: bool) -> BodyReceipt {
        let side = if request { self.request } else { self.response };
        if side.need != BodyNeed::None {
            self.mismatches.push(if request {
                ModeMismatch::RequestBodyPartial
            } else {
                ModeMismatch::ResponseBodyPartial
            });
        }
        if side.asked == BodyMode::Streamed && side.configured == BodyMode::BufferedPartial {
            // A prefix where STREAMED was asked for: the override was not taken.
            self.learn(false);
        }
        BodyReceipt::Partial
    }

    /// Learns from a body message and labels it.
    fn body(&mut self, request: bool, b: &mut BodyPhase, observability: bool) {
        let first = self.side(request).bodies == 0;
        let previous_maybe_prefix = self.side(request).maybe_prefix;
        {
            let side = self.side(request);
            side.bodies += 1;
        }
        if previous_maybe_prefix {
            // Another chunk after a possible prefix: it was a STREAMED chunk.
            self.side(request).maybe_prefix = false;
            self.learn(true);
        }
        let side = if request { self.request } else { self.response };
        if !self.known || side.configured == BodyMode::Grpc {
            // No protocol_config (an older Envoy), or GRPC mode (not implemented by
            // Envoy 1.40, which may still send a body): neither the mode in force nor
            // the override's fate is known, so only end_of_stream says where a body
            // ends.
            let end = b.end_of_stream;
            b.kind = if first && end {
                BodyKind::Whole
            } else {
                BodyKind::Chunk
            };
            let side = self.side(request);
            if end {
                side.ended = true;
                side.receipt = BodyReceipt::Complete;
            }
            return;
        }
        if first && self.overridden && self.honoured.is_none() && side.asked != side.configured {
            if side.configured == BodyMode::None || side.configured == BodyMode::Grpc {
                self.learn(true);
            } else if side.asked == BodyMode::None {
                self.learn(false);
            }
        } else if first && side.asked == BodyMode::None && self.honoured == Some(true) {
            // Cannot happen if Envoy took the override; count it all the same.
            self.override_ignored();
        }
        let mode = match self.honoured {
            Some(true) => side.asked,
            Some(false) => side.configured,
            None => side.asked,
        };
        // In observability mode Envoy sends only STREAMED bodies.
        let mode = if observability {
            BodyMode::Streamed
        } else {
            mode
        };
        let fits = side.content_length == Some(b.chunk.len());
        let ambiguous_partial = self.honoured.is_none()
            && side.asked == BodyMode::Streamed
            && side.configured == BodyMode::BufferedPartial;
        // BUFFERED asked where STREAMED is configured: a body followed by trailers
        // comes without end_of_stream in both, whole in one and a first chunk in the
        // other. Until a second chunk or the trailers tell, it is only a chunk.
        let ambiguous_buffered = self.honoured.is_none()
            && side.asked == BodyMode::Buffered
            && side.configured != BodyMode::Buffered
            && side.configured != BodyMode::None
            && side.configured != BodyMode::Grpc;
        if !first && side.asked == BodyMode::Buffered && self.honoured.is_none() {
            // BUFFERED sends one message: a second one means STREAMED is in force.
            self.learn(false);
        }
        let mode = if !first && side.asked == BodyMode::Buffered && self.honoured == Some(false) {
            side.configured
        } else {
            mode
        };
        let (kind, maybe_prefix) = match mode {
            BodyMode::FullDuplexStreamed => (BodyKind::Duplex, false),
            BodyMode::Buffered if ambiguous_buffered && !(b.end_of_stream || fits) => {
                (BodyKind::Chunk, false)
            }
            // BUFFERED never truncates (over Envoy's limit the client gets 413); a
            // body followed by trailers comes without end_of_stream.
            BodyMode::Buffered => (BodyKind::Whole, false),
            BodyMode::BufferedPartial if first && (b.end_of_stream || fits) => {
                (BodyKind::Whole, false)
            }
            BodyMode::BufferedPartial => (BodyKind::Prefix, true),
            BodyMode::Streamed if ambiguous_partial && first && !b.end_of_stream && !fits => {
                // A STREAMED chunk, or a PARTIAL prefix if Envoy kept its mode: the
                // next message tells. Until then it is treated as a prefix.
                (BodyKind::Prefix, true)
            }
            BodyMode::Streamed | BodyMode::None | BodyMode::Grpc => {
                if first && (b.end_of_stream || fits) {
                    (BodyKind::Whole, false)
                } else {
                    (BodyKind::Chunk, false)
                }
            }
        };
        b.kind = kind;
        if kind == BodyKind::Whole {
            // The last body message, whatever end_of_stream said (trailers may follow).
            b.end_of_stream = true;
        }
        let known_partial = kind == BodyKind::Prefix && !ambiguous_partial;
        let end = b.end_of_stream;
        {
            let side = self.side(request);
            side.maybe_prefix = maybe_prefix;
            if end {
                side.ended = true;
                side.receipt = BodyReceipt::Complete;
            }
        }
        if known_partial {
            let receipt = self.partial(request);
            let side = self.side(request);
            side.receipt = receipt;
            side.maybe_prefix = true;
        }
    }
}
