//! Envoy's end of the protocol, for the in-process test driver (`testing::Driver`):
//! the messages Envoy sends, built as current Envoy builds them and decoded as the
//! server decodes them, and the gateway's answers encoded as the server encodes them
//! and read back in plain terms ([`Answer`]).
//!
//! Compiled with the `testing` feature only.

use bytes::Bytes;
use prost::Message as _;

use super::{Inbound, Outbound, WireError};
use crate::modes::ModeOverride;
use crate::phase::PhaseKind;
use crate::proto::core::{HeaderMap, HeaderValue};
use crate::proto::ext_proc::{
    body_mutation, processing_request, processing_response, HeaderMutation, HttpBody, HttpHeaders,
    HttpTrailers, ProcessingRequest, ProcessingResponse,
};

/// Headers (pseudo headers included) as Envoy sends them; `end_of_stream` when no body
/// follows.
pub fn headers(
    request: bool,
    headers: &[(&str, &str)],
    end_of_stream: bool,
    observability_mode: bool,
) -> Result<Inbound, WireError> {
    let h = HttpHeaders {
        headers: Some(header_map(headers)),
        end_of_stream,
        ..Default::default()
    };
    send(
        if request {
            processing_request::Request::RequestHeaders(h)
        } else {
            processing_request::Request::ResponseHeaders(h)
        },
        observability_mode,
    )
}

/// A body message as Envoy sends it.
pub fn body(
    request: bool,
    chunk: Bytes,
    end_of_stream: bool,
    observability_mode: bool,
) -> Result<Inbound, WireError> {
    let b = HttpBody {
        body: chunk,
        end_of_stream,
        ..Default::default()
    };
    send(
        if request {
            processing_request::Request::RequestBody(b)
        } else {
            processing_request::Request::ResponseBody(b)
        },
        observability_mode,
    )
}

/// Trailers as Envoy sends them.
pub fn trailers(
    request: bool,
    trailers: &[(&str, &str)],
    observability_mode: bool,
) -> Result<Inbound, WireError> {
    let t = HttpTrailers {
        trailers: Some(header_map(trailers)),
    };
    send(
        if request {
            processing_request::Request::RequestTrailers(t)
        } else {
            processing_request::Request::ResponseTrailers(t)
        },
        observability_mode,
    )
}

/// Decodes the bytes of a `ProcessingRequest` as the gRPC transport does.
pub fn decode_bytes(bytes: &[u8]) -> Result<Inbound, WireError> {
    let message =
        ProcessingRequest::decode(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    super::decode(message)
}

fn send(
    request: processing_request::Request,
    observability_mode: bool,
) -> Result<Inbound, WireError> {
    super::decode(ProcessingRequest {
        request: Some(request),
        observability_mode,
        ..Default::default()
    })
}

/// A header map the way current Envoy sends it (`raw_value` only).
fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect(),
    }
}

/// An immediate response as the client would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Immediate {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

impl Immediate {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The gateway's answer to one message, as Envoy reads it from the wire, in plain
/// terms: what a test of a processor checks, without protobuf.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The kind of response (None for an immediate response).
    pub kind: Option<PhaseKind>,
    /// Headers set or appended, in order.
    pub set: Vec<(String, String)>,
    /// Headers removed.
    pub removed: Vec<String>,
    /// Replaced body (or streamed body in full duplex).
    pub body: Option<Bytes>,
    /// Whether the body was cleared.
    pub body_cleared: bool,
    /// Whether Envoy was asked to re-pick the route.
    pub clear_route_cache: bool,
    /// What Envoy is asked to send for the rest of the request (request headers
    /// only): the phases the route's chain needs.
    pub mode_override: Option<ModeOverride>,
    /// Set when the chain answered the client itself.
    pub immediate: Option<Immediate>,
    /// The response as encoded, for [`Answer::encoded`].
    raw: ProcessingResponse,
}

impl Answer {
    /// The last value written for a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.set
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The answer as the protobuf bytes Envoy receives, for checks of the encoding
    /// itself (header values in `raw_value` only, append actions, the full-duplex
    /// echo, dynamic metadata): decode them with Envoy's own definitions, e.g. the
    /// `envoy-types` crate.
    pub fn encoded(&self) -> Vec<u8> {
        self.raw.encode_to_vec()
    }
}

/// Encodes the answer as the server does and reads it back as Envoy would.
pub fn read(answer: Outbound) -> Answer {
    read_response(super::encode(answer))
}

fn read_response(raw: ProcessingResponse) -> Answer {
    use processing_response::Response as R;
    let mut a = Answer {
        mode_override: raw.mode_override.as_ref().map(super::modes::from_proto),
        ..Default::default()
    };
    let (kind, common, trailers) = match &raw.response {
        Some(R::RequestHeaders(h)) => (PhaseKind::RequestHeaders, h.response.as_ref(), None),
        Some(R::ResponseHeaders(h)) => (PhaseKind::ResponseHeaders, h.response.as_ref(), None),
        Some(R::RequestBody(b)) => (PhaseKind::RequestBody, b.response.as_ref(), None),
        Some(R::ResponseBody(b)) => (PhaseKind::ResponseBody, b.response.as_ref(), None),
        Some(R::RequestTrailers(t)) => {
            (PhaseKind::RequestTrailers, None, t.header_mutation.as_ref())
        }
        Some(R::ResponseTrailers(t)) => (
            PhaseKind::ResponseTrailers,
            None,
            t.header_mutation.as_ref(),
        ),
        Some(R::ImmediateResponse(i)) => {
            a.immediate = Some(Immediate {
                status: i
                    .status
                    .as_ref()
                    .and_then(|s| u16::try_from(s.code).ok())
                    .unwrap_or(0),
                headers: i.headers.as_ref().map(mutation_pairs).unwrap_or_default(),
                body: i.body.clone(),
            });
            a.raw = raw;
            return a;
        }
        _ => {
            a.raw = raw;
            return a;
        }
    };
    a.kind = Some(kind);
    let mutation = common.and_then(|c| c.header_mutation.as_ref()).or(trailers);
    if let Some(m) = mutation {
        a.set = mutation_pairs(m);
        a.removed = m.remove_headers.clone();
    }
    if let Some(c) = common {
        a.clear_route_cache = c.clear_route_cache;
        match c.body_mutation.as_ref().and_then(|b| b.mutation.as_ref()) {
            Some(body_mutation::Mutation::Body(b)) => a.body = Some(b.clone()),
            Some(body_mutation::Mutation::ClearBody(true)) => a.body_cleared = true,
            Some(body_mutation::Mutation::StreamedResponse(s)) => a.body = Some(s.body.clone()),
            _ => {}
        }
    }
    a.raw = raw;
    a
}

fn mutation_pairs(m: &HeaderMutation) -> Vec<(String, String)> {
    m.set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| {
            (
                h.key.clone(),
                String::from_utf8_lossy(&h.raw_value).into_owned(),
            )
        })
        .collect()
}
