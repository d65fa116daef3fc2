//! Test your processors without Envoy: [`Driver`] plays Envoy's side of one ext_proc
//! stream in process, through the same state machine and protobuf encoding the server
//! uses, and shows each answer in plain terms.
//!
//! ```
//! # tokio_test_block(async {
//! use extproc_gateway::prelude::*;
//! use extproc_gateway::processors::Trivial;
//! use extproc_gateway::testing::Driver;
//!
//! let mut envoy = Driver::new(Chain::builder().processor(Trivial).build().unwrap());
//! let answer = envoy
//!     .request_headers(&[(":method", "GET"), (":path", "/"), ("x-request-id", "abc")], true)
//!     .await
//!     .unwrap();
//! assert_eq!(answer.header("x-extra-request-id"), Some("abc"));
//! # });
//! # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

pub mod upstream;

use std::sync::Arc;

use bytes::Bytes;

use crate::chain::Chain;
use crate::phase::PhaseKind;
use crate::proto::core::{HeaderMap, HeaderValue};
use crate::proto::ext_proc::{
    body_mutation, processing_request, processing_response, HeaderMutation, HttpBody, HttpHeaders,
    HttpTrailers, ProcessingRequest, ProcessingResponse,
};
use crate::proto::mode::ProcessingMode;
use crate::router::{Route, RouteMatch, Router};
use crate::server::{Exchange, ExchangeError, Handled};

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

/// The gateway's answer to one message, decoded.
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
    /// The processing mode asked for (request headers only).
    pub mode_override: Option<ProcessingMode>,
    /// Set when the chain answered the client itself.
    pub immediate: Option<Immediate>,
    /// The raw protobuf, for anything not covered above.
    pub raw: ProcessingResponse,
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

    fn from_response(raw: ProcessingResponse) -> Self {
        use processing_response::Response as R;
        let mut a = Answer {
            mode_override: raw.mode_override,
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
                    status: i.status.as_ref().map(|s| s.code as u16).unwrap_or(0),
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

/// Plays Envoy's side of one ext_proc stream against a chain or a router.
pub struct Driver {
    exchange: Exchange,
    observability: bool,
}

impl Driver {
    /// A stream served by one catch-all route running `chain`.
    pub fn new(chain: Chain) -> Self {
        Self::with_router(Router::new(vec![Route {
            name: Arc::from("test"),
            matcher: RouteMatch::default(),
            chain,
            metrics: None,
        }]))
    }

    /// A stream served by `router`, as the gateway would serve it.
    pub fn with_router(router: Router) -> Self {
        Self::with_metadata(router, Vec::new())
    }

    /// Like [`Driver::with_router`], with gRPC initial metadata on the stream.
    pub fn with_metadata(router: Router, metadata: Vec<(String, String)>) -> Self {
        Self {
            exchange: Exchange::new(Arc::new(router), metadata),
            observability: false,
        }
    }

    /// Sends every following message with `observability_mode` (no answers expected).
    pub fn observability_mode(mut self, on: bool) -> Self {
        self.observability = on;
        self
    }

    /// The route chosen for this stream (after the first message).
    pub fn route_name(&self) -> Option<String> {
        self.exchange.route().map(|r| r.name.to_string())
    }

    /// True once the gateway answered the client and closed the stream.
    pub fn is_finished(&self) -> bool {
        self.exchange.is_finished()
    }

    /// Sends a raw message; `Ok(None)` when the gateway sends nothing back. Several
    /// answers at once (a held full-duplex exchange) are an error here: use
    /// [`Driver::send_all`].
    pub async fn send(
        &mut self,
        message: ProcessingRequest,
    ) -> Result<Option<Answer>, ExchangeError> {
        let mut all = self.send_all(message).await?;
        match all.len() {
            0 => Ok(None),
            1 => Ok(all.pop()),
            n => Err(ExchangeError::InvalidArgument(format!(
                "{n} answers to one message; use send_all"
            ))),
        }
    }

    /// Sends a raw message and returns every answer it released, in order.
    pub async fn send_all(
        &mut self,
        message: ProcessingRequest,
    ) -> Result<Vec<Answer>, ExchangeError> {
        Ok(match self.exchange.handle(message).await? {
            Handled::Reply(r) => vec![Answer::from_response(*r)],
            Handled::Replies(rs) => rs.into_iter().map(Answer::from_response).collect(),
            Handled::Silent => Vec::new(),
        })
    }

    fn message(&self, request: processing_request::Request) -> ProcessingRequest {
        ProcessingRequest {
            request: Some(request),
            observability_mode: self.observability,
            ..Default::default()
        }
    }

    async fn expect(
        &mut self,
        request: processing_request::Request,
    ) -> Result<Answer, ExchangeError> {
        let message = self.message(request);
        self.send(message)
            .await?
            .ok_or_else(|| ExchangeError::InvalidArgument("no answer was sent".into()))
    }

    /// Request headers (pseudo headers included); `end_of_stream` when no body follows.
    pub async fn request_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Answer, ExchangeError> {
        self.expect(processing_request::Request::RequestHeaders(http_headers(
            headers,
            end_of_stream,
        )))
        .await
    }

    /// A request body message.
    pub async fn request_body(
        &mut self,
        chunk: impl Into<Bytes>,
        end_of_stream: bool,
    ) -> Result<Answer, ExchangeError> {
        self.expect(processing_request::Request::RequestBody(HttpBody {
            body: chunk.into(),
            end_of_stream,
            ..Default::default()
        }))
        .await
    }

    /// Request trailers.
    pub async fn request_trailers(
        &mut self,
        trailers: &[(&str, &str)],
    ) -> Result<Answer, ExchangeError> {
        self.expect(processing_request::Request::RequestTrailers(HttpTrailers {
            trailers: Some(header_map(trailers)),
        }))
        .await
    }

    /// Response headers (`:status` included).
    pub async fn response_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Answer, ExchangeError> {
        self.expect(processing_request::Request::ResponseHeaders(http_headers(
            headers,
            end_of_stream,
        )))
        .await
    }

    /// A response body message.
    pub async fn response_body(
        &mut self,
        chunk: impl Into<Bytes>,
        end_of_stream: bool,
    ) -> Result<Answer, ExchangeError> {
        self.expect(processing_request::Request::ResponseBody(HttpBody {
            body: chunk.into(),
            end_of_stream,
            ..Default::default()
        }))
        .await
    }

    /// Response trailers.
    pub async fn response_trailers(
        &mut self,
        trailers: &[(&str, &str)],
    ) -> Result<Answer, ExchangeError> {
        self.expect(processing_request::Request::ResponseTrailers(
            HttpTrailers {
                trailers: Some(header_map(trailers)),
            },
        ))
        .await
    }
}

/// Builds an ext_proc header map the way current Envoy sends it (`raw_value` only).
pub fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
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

fn http_headers(headers: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
    HttpHeaders {
        headers: Some(header_map(headers)),
        end_of_stream,
        ..Default::default()
    }
}
