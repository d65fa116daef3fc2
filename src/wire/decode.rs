//! `ProcessingRequest` -> [`Inbound`]: the phase event and what Envoy says around it.

use bytes::Bytes;

use super::Inbound;
use crate::modes::{BodyMode, Protocol};
use crate::phase::{BodyKind, BodyPhase, Headers, HeadersPhase, Phase};
use crate::proto::core::HeaderValue;
use crate::proto::ext_proc::{processing_request, HttpBody, HttpHeaders, ProcessingRequest};

/// The key under which Envoy's HTTP ext_proc filter puts request attributes.
pub const ATTRIBUTES_KEY: &str = "envoy.filters.http.ext_proc";

/// Why a message could not be turned into a phase.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The message carries no phase at all.
    #[error("ProcessingRequest carries no request/response headers, body or trailers")]
    Empty,
    /// The bytes are not a `ProcessingRequest` (the gRPC transport reports this
    /// itself, before any decoding into phases).
    #[error("malformed ProcessingRequest: {0}")]
    Malformed(String),
}

/// Takes the phase and its surroundings out of a message (headers and bodies are
/// moved, not copied).
pub fn decode(message: ProcessingRequest) -> Result<Inbound, WireError> {
    use processing_request::Request;
    let ProcessingRequest {
        request,
        metadata_context,
        attributes,
        observability_mode,
        protocol_config,
        ..
    } = message;
    let phase = match request.ok_or(WireError::Empty)? {
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
    };
    let protocol = match protocol_config {
        Some(p) => Protocol {
            known: true,
            request: BodyMode::from_i32(p.request_body_mode),
            response: BodyMode::from_i32(p.response_body_mode),
            send_body_without_waiting_for_header_response: p
                .send_body_without_waiting_for_header_response,
        },
        None => Protocol::default(),
    };
    Ok(Inbound {
        phase,
        observability_mode,
        attributes: flatten_attributes(&attributes),
        metadata_context: metadata_context.map(|md| {
            md.filter_metadata
                .iter()
                .map(|(ns, st)| (ns.clone(), struct_json(st)))
                .collect()
        }),
        protocol,
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
        kind: BodyKind::Whole,
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
fn flatten_attributes(
    attributes: &std::collections::HashMap<String, prost_types::Struct>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    let mut keys: Vec<&String> = attributes.keys().collect();
    // Envoy's own key last, so it wins over any other filter's attribute of the same name.
    keys.sort_by_key(|k| k.as_str() == ATTRIBUTES_KEY);
    for key in keys {
        for (name, value) in &attributes[key].fields {
            out.insert(name.clone(), json_value(value));
        }
    }
    out
}

fn struct_json(st: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        st.fields
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect(),
    )
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
        let msg = ProcessingRequest {
            request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
                headers: Some(HeaderMap {
                    headers: vec![hv("a", "", "raw"), hv("b", "old", ""), hv("c", "x", "y")],
                }),
                end_of_stream: true,
                ..Default::default()
            })),
            ..Default::default()
        };
        let Phase::RequestHeaders(h) = decode(msg).unwrap().phase else {
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
            decode(ProcessingRequest::default()).unwrap_err(),
            WireError::Empty
        );
    }

    #[test]
    fn metadata_context_is_absent_unless_sent() {
        let mut msg = ProcessingRequest {
            request: Some(processing_request::Request::RequestTrailers(
                Default::default(),
            )),
            ..Default::default()
        };
        assert!(decode(msg.clone()).unwrap().metadata_context.is_none());
        msg.metadata_context = Some(Default::default());
        assert_eq!(
            decode(msg).unwrap().metadata_context,
            Some(serde_json::Map::new())
        );
    }
}
