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
use crate::modes::{BodyMode, Protocol};
use crate::phase::{
    BodyChange, BodyPhase, Flow, HeaderAction, Headers, HeadersPhase, ImmediateResponse, Mutations,
    Phase, PhaseKind,
};
use crate::processor::PhaseNeeds;
use crate::proto::core::{header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption};
use crate::proto::ext_proc::{
    body_mutation, common_response, processing_request, processing_response, BodyMutation,
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody, HttpHeaders,
    ProcessingRequest, ProcessingResponse, StreamedBodyResponse, TrailersResponse,
};
use crate::proto::http_status::HttpStatus;
use crate::proto::mode::processing_mode::HeaderSendMode;
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
        // The exchange knows the body mode and sets the kind.
        kind: crate::phase::BodyKind::Whole,
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

/// The dynamic metadata Envoy forwarded (`metadata_context.filter_metadata`), as
/// `namespace -> JSON object`.
pub fn metadata_context(message: &ProcessingRequest) -> serde_json::Map<String, serde_json::Value> {
    let Some(md) = &message.metadata_context else {
        return serde_json::Map::new();
    };
    md.filter_metadata
        .iter()
        .map(|(ns, st)| (ns.clone(), struct_json(st)))
        .collect()
}

fn struct_json(st: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        st.fields
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect(),
    )
}

/// The JSON value as a protobuf `Value` (numbers become doubles, as in any Struct).
pub fn proto_value(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(proto_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), proto_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
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

/// The body modes of one stream, one per direction.
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

/// The processing mode to ask for on the request-headers response: exactly what the
/// chain needs, within what Envoy can switch to from the filter's `configured` body
/// modes (see [`BodyMode::ask_for`]).
pub fn mode_override(needs: PhaseNeeds, configured: BodyModes) -> ProcessingMode {
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
        request_body_mode: configured.request.ask_for(needs.request_body).as_i32(),
        response_body_mode: configured.response.ask_for(needs.response_body).as_i32(),
        // Trailers end a body that comes without end_of_stream (a streamed one, or a
        // buffered one followed by trailers): a chain that reads a body also hears
        // them, so it knows the body is over. FULL_DUPLEX_STREAMED requires them.
        request_trailer_mode: send(
            needs.request_trailers
                || configured.request.is_fixed()
                || configured.request.ask_for(needs.request_body) != BodyMode::None,
        ),
        response_trailer_mode: send(
            needs.response_trailers
                || configured.response.is_fixed()
                || configured.response.ask_for(needs.response_body) != BodyMode::None,
        ),
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

/// What the first message says about Envoy's body modes (`protocol_config`).
pub fn protocol(message: &ProcessingRequest) -> Protocol {
    match &message.protocol_config {
        Some(p) => Protocol {
            known: true,
            request: BodyMode::from_i32(p.request_body_mode),
            response: BodyMode::from_i32(p.response_body_mode),
            send_body_without_waiting_for_header_response: p
                .send_body_without_waiting_for_header_response,
        },
        None => Protocol::default(),
    }
}

/// A response carrying only `override_message_timeout` (Envoy ignores every other
/// field of such a response and keeps waiting for the real answer).
pub fn timeout_override(by: std::time::Duration) -> ProcessingResponse {
    ProcessingResponse {
        override_message_timeout: Some(prost_types::Duration {
            seconds: i64::try_from(by.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(by.subsec_nanos()).unwrap_or(0),
        }),
        ..Default::default()
    }
}

/// A response that is only an immediate response (a refusal decided before any
/// processor ran).
pub fn encode_immediate(r: &ImmediateResponse) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::ImmediateResponse(
            immediate_response(r),
        )),
        ..Default::default()
    }
}

/// Encodes the chain's outcome as the response of the matching kind. The header
/// changes are moved into the answer (`outcome.mutations` is left empty): a large
/// answer holds thousands of names, and a copy of each would cost as much as the
/// chain that wrote them.
pub fn encode(outcome: &mut PhaseOutcome, reply: &Reply) -> ProcessingResponse {
    let m = std::mem::take(&mut outcome.mutations);
    encode_parts(&outcome.phase, &outcome.flow, m, reply)
}

/// Like [`encode`], with other mutations than the outcome's (a held full-duplex body
/// whose header changes go with the headers' answer).
pub fn encode_with(outcome: &PhaseOutcome, m: Mutations, reply: &Reply) -> ProcessingResponse {
    encode_parts(&outcome.phase, &outcome.flow, m, reply)
}

/// A plain "continue" answer of the message's kind, for a message no processor sees.
pub fn encode_continue(phase: &Phase, modes: &BodyModes) -> ProcessingResponse {
    let reply = Reply {
        mode_override: None,
        modes: *modes,
    };
    encode_parts(phase, &Flow::Continue, Mutations::new(), &reply)
}

/// The request headers' answer, sent late (after a held full-duplex body).
pub fn encode_headers_answer(m: Mutations, reply: &Reply) -> ProcessingResponse {
    use processing_response::Response;
    let dynamic_metadata = dynamic_metadata(&m);
    ProcessingResponse {
        response: Some(Response::RequestHeaders(headers_response(m))),
        mode_override: reply.mode_override,
        dynamic_metadata,
        ..Default::default()
    }
}

fn encode_parts(phase: &Phase, flow: &Flow, m: Mutations, reply: &Reply) -> ProcessingResponse {
    use processing_response::Response;
    let dynamic_metadata = dynamic_metadata(&m);
    let response = match flow {
        Flow::Respond(immediate) => Response::ImmediateResponse(immediate_response(immediate)),
        Flow::Continue => match phase {
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
        },
    };
    ProcessingResponse {
        response: Some(response),
        mode_override: match phase.kind() {
            PhaseKind::RequestHeaders => reply.mode_override,
            _ => None,
        },
        dynamic_metadata,
        ..Default::default()
    }
}

/// Processors' metadata writes as Envoy's `dynamic_metadata`: one struct per namespace.
fn dynamic_metadata(m: &Mutations) -> Option<prost_types::Struct> {
    if m.metadata().is_empty() {
        return None;
    }
    let mut namespaces: std::collections::BTreeMap<String, prost_types::Struct> =
        std::collections::BTreeMap::new();
    for w in m.metadata() {
        namespaces
            .entry(w.namespace.clone())
            .or_default()
            .fields
            .insert(w.key.clone(), proto_value(&w.value));
    }
    Some(prost_types::Struct {
        fields: namespaces
            .into_iter()
            .map(|(ns, st)| {
                (
                    ns,
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StructValue(st)),
                    },
                )
            })
            .collect(),
    })
}

fn headers_response(m: Mutations) -> HeadersResponse {
    HeadersResponse {
        response: Some(common(m, None)),
    }
}

fn body_response(m: Mutations, body: &BodyPhase, mode: BodyMode) -> BodyResponse {
    let body_mutation = if mode.answers_with_body() {
        // In full duplex (and GRPC) mode Envoy forwards only what the answer carries:
        // always send the chunk back (changed or not) with its end_of_stream.
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
    let content_length = match (mode == BodyMode::Buffered, m.body()) {
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

fn trailers_response(m: Mutations) -> TrailersResponse {
    TrailersResponse {
        header_mutation: header_mutation(m, None),
    }
}

fn common(m: Mutations, content_length: Option<usize>) -> CommonResponse {
    CommonResponse {
        status: common_response::ResponseStatus::Continue as i32,
        clear_route_cache: m.route_cache_cleared(),
        header_mutation: header_mutation(m, content_length),
        body_mutation: None,
        trailers: None,
    }
}

/// The header writes and removals as Envoy's `HeaderMutation`, their names and values
/// moved in (not copied).
fn header_mutation(m: Mutations, content_length: Option<usize>) -> Option<HeaderMutation> {
    if m.writes().is_empty() && m.removes().is_empty() && content_length.is_none() {
        return None;
    }
    let (writes, remove_headers) = m.into_header_changes();
    let mut set_headers: Vec<HeaderValueOption> =
        Vec::with_capacity(writes.len() + usize::from(content_length.is_some()));
    set_headers.extend(
        writes
            .filter(|w| content_length.is_none() || w.name != "content-length")
            .map(|w| option(w.name, w.value, w.action)),
    );
    if let Some(len) = content_length {
        set_headers.push(option(
            "content-length".to_string(),
            Bytes::from(len.to_string()),
            HeaderAction::Set,
        ));
    }
    Some(HeaderMutation {
        set_headers,
        remove_headers,
    })
}

fn option(name: String, value: Bytes, action: HeaderAction) -> HeaderValueOption {
    let append_action = match action {
        HeaderAction::Set => HeaderAppendAction::OverwriteIfExistsOrAdd,
        HeaderAction::Append => HeaderAppendAction::AppendIfExistsOrAdd,
        HeaderAction::AddIfAbsent => HeaderAppendAction::AddIfAbsent,
    };
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name,
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
    let headers = if r.headers().is_empty() {
        None
    } else {
        Some(HeaderMutation {
            set_headers: r
                .headers()
                .iter()
                .map(|(n, v)| option(n.clone(), v.clone(), HeaderAction::Append))
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
        grpc_status: r
            .grpc_status
            .map(|status| crate::proto::ext_proc::GrpcStatus { status }),
        details: r.details.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::BodyNeed;
    use crate::proto::core::HeaderMap;
    use crate::proto::mode::processing_mode::BodySendMode;

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
        let hm = header_mutation(m, None).unwrap();
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
            request: BodyMode::FullDuplexStreamed,
            response: BodyMode::Buffered,
        };
        let m = mode_override(needs, duplex);
        assert_eq!(m.request_body_mode, BodySendMode::FullDuplexStreamed as i32);
        assert_eq!(m.response_body_mode, BodySendMode::Buffered as i32);
        let partial = BodyModes {
            request: BodyMode::BufferedPartial,
            response: BodyMode::BufferedPartial,
        };
        let m = mode_override(needs, partial);
        assert_eq!(m.request_body_mode, BodySendMode::Streamed as i32);
        assert_eq!(m.response_body_mode, BodySendMode::Streamed as i32);
        assert_eq!(m.request_trailer_mode, HeaderSendMode::Send as i32);
    }

    #[test]
    fn dynamic_metadata_is_one_struct_per_namespace() {
        let mut m = Mutations::new();
        m.set_metadata("ns.a", "payload", serde_json::json!({"sub": "u1", "n": 2}));
        m.set_metadata("ns.a", "other", serde_json::json!(true));
        m.set_metadata("ns.b", "k", serde_json::json!("v"));
        let st = dynamic_metadata(&m).unwrap();
        assert_eq!(st.fields.len(), 2);
        let Some(prost_types::value::Kind::StructValue(a)) = &st.fields["ns.a"].kind else {
            panic!("namespace is not a struct")
        };
        assert_eq!(a.fields.len(), 2);
        let Some(prost_types::value::Kind::StructValue(p)) = &a.fields["payload"].kind else {
            panic!("payload is not a struct")
        };
        assert_eq!(
            p.fields["sub"].kind,
            Some(prost_types::value::Kind::StringValue("u1".into()))
        );
        assert_eq!(
            p.fields["n"].kind,
            Some(prost_types::value::Kind::NumberValue(2.0))
        );
    }
}
