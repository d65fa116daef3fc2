//! The protobuf boundary: ext_proc messages in, [`Phase`] events out, and
//! [`PhaseOutcome`]s back into the one response kind each message expects.
//!
//! This is the only module (besides the server) that touches generated types, and it
//! encodes the protocol rules other servers got wrong: read `raw_value` but fall back to
//! `value`, write only `raw_value`, answer each message with its own kind, echo a
//! full-duplex body through `streamed_response`, and keep `content-length` right when
//! a buffered body is replaced.

use bytes::Bytes;

use crate::chain::PhaseOutcome;
use crate::phase::{
    BodyChange, BodyPhase, Flow, HeaderAction, Headers, HeadersPhase, ImmediateResponse, Mutations,
    Phase, PhaseKind,
};
use crate::processor::{BodyNeed, PhaseNeeds};
use crate::proto::core::{header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption};
use crate::proto::ext_proc::{
    body_mutation, common_response, processing_request, processing_response, BodyMutation,
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody, HttpHeaders,
    ProcessingRequest, ProcessingResponse, StreamedBodyResponse, TrailersResponse,
};
use crate::proto::http_status::HttpStatus;
use crate::proto::mode::processing_mode::{BodySendMode, HeaderSendMode};
use crate::proto::mode::ProcessingMode;

/// The key under which Envoy's HTTP ext_proc filter puts request attributes.
pub const ATTRIBUTES_KEY: &str = "envoy.filters.http.ext_proc";

/// Why a message could not be turned into a phase.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The message carries no phase at all.
    #[error("ProcessingRequest carries no request/response headers, body or trailers")]
    Empty,
}

/// Takes the phase out of a message (headers and bodies are moved, not copied).
pub fn decode(message: &mut ProcessingRequest) -> Result<Phase, WireError> {
    use processing_request::Request;
    Ok(match message.request.take().ok_or(WireError::Empty)? {
        Request::RequestHeaders(h) => Phase::RequestHeaders(headers_phase(h)),
        Request::ResponseHeaders(h) => Phase::ResponseHeaders(headers_phase(h)),
        Request::RequestBody(b) => Phase::RequestBody(body_phase(b)),
        Request::ResponseBody(b) => Phase::ResponseBody(body_phase(b)),
        Request::RequestTrailers(t) => {
            Phase::RequestTrailers(header_list(t.trailers.map(|m| m.headers)))
        }
        Request::ResponseTrailers(t) => {
            Phase::ResponseTrailers(header_list(t.trailers.map(|m| m.headers)))
        }
    })
}

fn headers_phase(h: HttpHeaders) -> HeadersPhase {
    HeadersPhase {
        headers: header_list(h.headers.map(|m| m.headers)),
        end_of_stream: h.end_of_stream,
    }
}

fn body_phase(b: HttpBody) -> BodyPhase {
    BodyPhase {
        chunk: b.body,
        end_of_stream: b.end_of_stream || b.end_of_stream_without_message,
    }
}

/// Converts a header list, reading `raw_value` and falling back to `value` (Envoy
/// before 1.27 filled only `value`).
fn header_list(values: Option<Vec<HeaderValue>>) -> Headers {
    values
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let value = if h.raw_value.is_empty() && !h.value.is_empty() {
                Bytes::from(h.value)
            } else {
                h.raw_value
            };
            (h.key, value)
        })
        .collect()
}

/// Flattens the request attributes (`{"envoy.filters.http.ext_proc": {"xds.route_name":
/// ...}}`) into `name -> JSON value`.
pub fn attributes(message: &ProcessingRequest) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    let mut keys: Vec<&String> = message.attributes.keys().collect();
    // Envoy's own key last, so it wins over any other filter's attribute of the same name.
    keys.sort_by_key(|k| k.as_str() == ATTRIBUTES_KEY);
    for key in keys {
        for (name, value) in &message.attributes[key].fields {
            out.insert(name.clone(), json_value(value));
        }
    }
    out
}

fn json_value(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(json_value).collect())
        }
    }
}

/// A body mode Envoy is using for one direction, as far as the gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BodyModes {
    /// Envoy's `BodySendMode` for the request body.
    pub request: i32,
    /// Envoy's `BodySendMode` for the response body.
    pub response: i32,
}

impl BodyModes {
    /// Whether the given direction is FULL_DUPLEX_STREAMED (answers carry the body).
    pub fn duplex(&self, request: bool) -> bool {
        let mode = if request { self.request } else { self.response };
        mode == BodySendMode::FullDuplexStreamed as i32
    }
}

/// The processing mode to ask for on the request-headers response: exactly what the
/// chain needs. FULL_DUPLEX_STREAMED and GRPC body modes are kept as they are, since
/// Envoy does not allow switching into or out of them.
pub fn mode_override(needs: PhaseNeeds, current: BodyModes) -> ProcessingMode {
    let send = |wanted: bool| {
        if wanted {
            HeaderSendMode::Send as i32
        } else {
            HeaderSendMode::Skip as i32
        }
    };
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: send(needs.response_headers),
        request_body_mode: body_mode(needs.request_body, current.request),
        response_body_mode: body_mode(needs.response_body, current.response),
        request_trailer_mode: send(needs.request_trailers),
        response_trailer_mode: send(needs.response_trailers),
    }
}

fn body_mode(need: BodyNeed, current: i32) -> i32 {
    let fixed = [
        BodySendMode::FullDuplexStreamed as i32,
        BodySendMode::Grpc as i32,
    ];
    if fixed.contains(&current) {
        return current;
    }
    match need {
        BodyNeed::None => BodySendMode::None as i32,
        // A streamed reader is happy with any mode that sends the body.
        BodyNeed::Streamed if current != BodySendMode::None as i32 => current,
        BodyNeed::Streamed => BodySendMode::Streamed as i32,
        BodyNeed::Buffered => BodySendMode::Buffered as i32,
    }
}

/// How to answer one message beyond what the chain decided.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// Sent on the request-headers response only.
    pub mode_override: Option<ProcessingMode>,
    /// Body modes in force, to pick the body answer's shape.
    pub modes: BodyModes,
}

/// Encodes the chain's outcome as the response of the matching kind.
pub fn encode(outcome: &PhaseOutcome, reply: &Reply) -> ProcessingResponse {
    use processing_response::Response;
    let response = match &outcome.flow {
        Flow::Respond(immediate) => Response::ImmediateResponse(immediate_response(immediate)),
        Flow::Continue => {
            let m = &outcome.mutations;
            match &outcome.phase {
                Phase::RequestHeaders(_) => Response::RequestHeaders(headers_response(m)),
                Phase::ResponseHeaders(_) => Response::ResponseHeaders(headers_response(m)),
                Phase::RequestBody(b) => {
                    Response::RequestBody(body_response(m, b, reply.modes.request))
                }
                Phase::ResponseBody(b) => {
                    Response::ResponseBody(body_response(m, b, reply.modes.response))
                }
                Phase::RequestTrailers(_) => Response::RequestTrailers(trailers_response(m)),
                Phase::ResponseTrailers(_) => Response::ResponseTrailers(trailers_response(m)),
            }
        }
    };
    ProcessingResponse {
        response: Some(response),
        mode_override: match outcome.phase.kind() {
            PhaseKind::RequestHeaders => reply.mode_override,
            _ => None,
        },
        ..Default::default()
    }
}

fn headers_response(m: &Mutations) -> HeadersResponse {
    HeadersResponse {
        response: Some(common(m, None)),
    }
}

fn body_response(m: &Mutations, body: &BodyPhase, mode: i32) -> BodyResponse {
    let body_mutation = if mode == BodySendMode::FullDuplexStreamed as i32 {
        // In full duplex Envoy forwards only what the answer carries: always send the
        // chunk back (changed or not) with its end_of_stream.
        let chunk = match m.body() {
            Some(BodyChange::Replace(b)) => b.clone(),
            Some(BodyChange::Clear) => Bytes::new(),
            None => body.chunk.clone(),
        };
        Some(BodyMutation {
            mutation: Some(body_mutation::Mutation::StreamedResponse(
                StreamedBodyResponse {
                    body: chunk,
                    end_of_stream: body.end_of_stream,
                    ..Default::default()
                },
            )),
        })
    } else {
        m.body().map(|change| BodyMutation {
            mutation: Some(match change {
                BodyChange::Replace(b) => body_mutation::Mutation::Body(b.clone()),
                BodyChange::Clear => body_mutation::Mutation::ClearBody(true),
            }),
        })
    };
    let content_length = match (mode == BodySendMode::Buffered as i32, m.body()) {
        (true, Some(BodyChange::Replace(b))) => Some(b.len()),
        (true, Some(BodyChange::Clear)) => Some(0),
        _ => None,
    };
    let mut response = common(m, content_length);
    response.body_mutation = body_mutation;
    BodyResponse {
        response: Some(response),
    }
}

fn trailers_response(m: &Mutations) -> TrailersResponse {
    TrailersResponse {
        header_mutation: header_mutation(m, None),
    }
}

fn common(m: &Mutations, content_length: Option<usize>) -> CommonResponse {
    CommonResponse {
        status: common_response::ResponseStatus::Continue as i32,
        header_mutation: header_mutation(m, content_length),
        body_mutation: None,
        trailers: None,
        clear_route_cache: m.route_cache_cleared(),
    }
}

fn header_mutation(m: &Mutations, content_length: Option<usize>) -> Option<HeaderMutation> {
    if m.writes().is_empty() && m.removes().is_empty() && content_length.is_none() {
        return None;
    }
    let mut set_headers: Vec<HeaderValueOption> = m
        .writes()
        .iter()
        .filter(|w| content_length.is_none() || w.name != "content-length")
        .map(|w| option(&w.name, w.value.clone(), w.action))
        .collect();
    if let Some(len) = content_length {
        set_headers.push(option(
            "content-length",
            Bytes::from(len.to_string()),
            HeaderAction::Set,
        ));
    }
    Some(HeaderMutation {
        set_headers,
        remove_headers: m.removes().to_vec(),
    })
}

fn option(name: &str, value: Bytes, action: HeaderAction) -> HeaderValueOption {
    let append_action = match action {
        HeaderAction::Set => HeaderAppendAction::OverwriteIfExistsOrAdd,
        HeaderAction::Append => HeaderAppendAction::AppendIfExistsOrAdd,
        HeaderAction::AddIfAbsent => HeaderAppendAction::AddIfAbsent,
    };
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            // Only raw_value: Envoy rejects a mutation that sets both.
            value: String::new(),
            raw_value: value,
        }),
        append: None,
        append_action: append_action as i32,
        keep_empty_value: true,
    }
}

/// Encodes an immediate response.
pub fn immediate_response(r: &ImmediateResponse) -> crate::proto::ext_proc::ImmediateResponse {
    let headers = if r.headers.is_empty() {
        None
    } else {
        Some(HeaderMutation {
            set_headers: r
                .headers
                .iter()
                .map(|(n, v)| option(n, v.clone(), HeaderAction::Append))
                .collect(),
            remove_headers: Vec::new(),
        })
    };
    crate::proto::ext_proc::ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(r.status),
        }),
        headers,
        body: r.body.clone(),
        grpc_status: None,
        details: r.details.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::core::HeaderMap;

    fn hv(key: &str, value: &str, raw: &str) -> HeaderValue {
        HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Bytes::copy_from_slice(raw.as_bytes()),
        }
    }

    #[test]
    fn reads_raw_value_then_value() {
        let mut msg = ProcessingRequest {
            request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
                headers: Some(HeaderMap {
                    headers: vec![hv("a", "", "raw"), hv("b", "old", ""), hv("c", "x", "y")],
                }),
                end_of_stream: true,
                ..Default::default()
            })),
            ..Default::default()
        };
        let Phase::RequestHeaders(h) = decode(&mut msg).unwrap() else {
            panic!("wrong phase")
        };
        assert_eq!(h.headers.get_str("a"), Some("raw"));
        assert_eq!(h.headers.get_str("b"), Some("old"));
        assert_eq!(h.headers.get_str("c"), Some("y"));
        assert!(h.end_of_stream);
    }

    #[test]
    fn empty_message_is_an_error() {
        assert_eq!(
            decode(&mut ProcessingRequest::default()),
            Err(WireError::Empty)
        );
    }

    #[test]
    fn writes_only_raw_value() {
        let mut m = Mutations::new();
        m.set("x-a", "1");
        let hm = header_mutation(&m, None).unwrap();
        let h = hm.set_headers[0].header.as_ref().unwrap();
        assert_eq!(h.value, "");
        assert_eq!(&h.raw_value[..], b"1");
        assert_eq!(
            hm.set_headers[0].append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
    }

    #[test]
    fn mode_override_asks_only_for_needed_phases() {
        let m = mode_override(PhaseNeeds::HEADERS, BodyModes::default());
        assert_eq!(m.request_body_mode, BodySendMode::None as i32);
        assert_eq!(m.response_body_mode, BodySendMode::None as i32);
        assert_eq!(m.response_header_mode, HeaderSendMode::Send as i32);
        assert_eq!(m.request_trailer_mode, HeaderSendMode::Skip as i32);
        let needs = PhaseNeeds {
            request_body: BodyNeed::Buffered,
            response_body: BodyNeed::Streamed,
            ..PhaseNeeds::HEADERS
        };
        let m = mode_override(needs, BodyModes::default());
        assert_eq!(m.request_body_mode, BodySendMode::Buffered as i32);
        assert_eq!(m.response_body_mode, BodySendMode::Streamed as i32);
        let duplex = BodyModes {
            request: BodySendMode::FullDuplexStreamed as i32,
            response: BodySendMode::Buffered as i32,
        };
        let m = mode_override(needs, duplex);
        assert_eq!(m.request_body_mode, BodySendMode::FullDuplexStreamed as i32);
        assert_eq!(m.response_body_mode, BodySendMode::Buffered as i32);
    }
}
