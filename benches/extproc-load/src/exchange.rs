//! One HTTP request as Envoy's ext_proc filter presents it: a gRPC `Process` stream,
//! one message per phase in Envoy's order, each answer checked for the kind and order
//! Envoy would accept, and the server's `mode_override` honoured when the simulated
//! filter allows it.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request, processing_response, HttpBody, HttpHeaders, HttpTrailers,
    ProcessingRequest, ProcessingResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::Channel;

/// How the simulated filter sends a body (its `processing_mode` body mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyMode {
    /// Not sent.
    None,
    /// In chunks of `chunk_bytes`, each answered.
    Streamed,
    /// Whole, in one message.
    Buffered,
}

/// What one exchange sends: the simulated filter's config and the HTTP request and
/// response it carries.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExchangeSpec {
    /// `:method` of the request.
    pub method: String,
    /// `:path` of the request.
    pub path: String,
    /// `:authority` of the request.
    pub authority: String,
    /// Further request headers.
    pub headers: Vec<(String, String)>,
    /// Whether request headers are sent (`request_header_mode: SEND`).
    pub request_headers: bool,
    /// Whether response headers are sent.
    pub response_headers: bool,
    /// Request body bytes (0: a request without a body).
    pub request_body_bytes: usize,
    /// Response body bytes (0: a response without a body).
    pub response_body_bytes: usize,
    /// How the request body is sent (`request_body_mode`).
    pub request_body_mode: BodyMode,
    /// How the response body is sent (`response_body_mode`).
    pub response_body_mode: BodyMode,
    /// Chunk size in `Streamed` mode.
    pub chunk_bytes: usize,
    /// Whether request trailers follow the request body (`request_trailer_mode: SEND`).
    pub request_trailers: bool,
    /// Whether response trailers follow the response body.
    pub response_trailers: bool,
    /// Whether the server's `mode_override` is honoured (`allow_mode_override`).
    pub allow_mode_override: bool,
    /// gRPC initial metadata of every stream.
    pub metadata: Vec<(String, String)>,
    /// How long one exchange may take before it counts as an error.
    #[serde(with = "millis")]
    pub timeout: Duration,
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }
}

/// How an exchange ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every phase was answered with its own kind.
    Completed,
    /// The server answered with an immediate response of this status.
    Immediate(u32),
}

/// A successful exchange.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// How it ended.
    pub ending: Ending,
    /// Messages sent (each answered).
    pub messages: u32,
}

/// Why an exchange failed: every answer Envoy would reject, and every transport error.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// The stream could not be opened.
    Open(String),
    /// The server ended the stream with a gRPC error.
    Status(String),
    /// An answer of another kind than the message it answers.
    WrongKind {
        /// The kind sent.
        sent: &'static str,
        /// The kind received.
        got: &'static str,
    },
    /// The stream ended before the message was answered.
    EndedEarly(&'static str),
    /// A message after the last answer.
    ExtraMessage(&'static str),
    /// The exchange took longer than the timeout.
    Timeout,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Open(e) => write!(f, "stream not opened: {e}"),
            Failure::Status(s) => write!(f, "grpc status {s}"),
            Failure::WrongKind { sent, got } => write!(f, "sent {sent}, answered {got}"),
            Failure::EndedEarly(sent) => write!(f, "stream ended before {sent} was answered"),
            Failure::ExtraMessage(got) => write!(f, "unexpected {got} after the last answer"),
            Failure::Timeout => f.write_str("timeout"),
        }
    }
}

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: (*k).to_string(),
                raw_value: v.as_bytes().to_vec(),
                ..HeaderValue::default()
            })
            .collect(),
    }
}

/// The kind of a message from Envoy, as the answer to it names it.
pub fn kind_in(request: &processing_request::Request) -> &'static str {
    use processing_request::Request as In;
    match request {
        In::RequestHeaders(_) => "request_headers",
        In::ResponseHeaders(_) => "response_headers",
        In::RequestBody(_) => "request_body",
        In::ResponseBody(_) => "response_body",
        In::RequestTrailers(_) => "request_trailers",
        In::ResponseTrailers(_) => "response_trailers",
    }
}

fn kind_out(response: Option<&processing_response::Response>) -> &'static str {
    use processing_response::Response as Out;
    match response {
        Some(Out::RequestHeaders(_)) => "request_headers",
        Some(Out::ResponseHeaders(_)) => "response_headers",
        Some(Out::RequestBody(_)) => "request_body",
        Some(Out::ResponseBody(_)) => "response_body",
        Some(Out::RequestTrailers(_)) => "request_trailers",
        Some(Out::ResponseTrailers(_)) => "response_trailers",
        Some(Out::ImmediateResponse(_)) => "immediate_response",
        Some(Out::StreamedImmediateResponse(_)) => "streamed_immediate_response",
        None => "an empty response",
    }
}

/// The phases left to send, as the filter's mode (and any override) decides.
#[derive(Debug, Clone, Copy)]
struct Plan {
    response_headers: bool,
    request_body: BodyMode,
    response_body: BodyMode,
    request_trailers: bool,
    response_trailers: bool,
}

impl Plan {
    fn new(spec: &ExchangeSpec) -> Self {
        Plan {
            response_headers: spec.response_headers,
            request_body: spec.request_body_mode,
            response_body: spec.response_body_mode,
            request_trailers: spec.request_trailers,
            response_trailers: spec.response_trailers,
        }
    }

    /// Applies a `mode_override` the way Envoy does: only the fields it may change,
    /// each to the mode named (request headers are already sent).
    fn overridden(mut self, response: &ProcessingResponse) -> Self {
        let Some(mode) = &response.mode_override else {
            return self;
        };
        let header = |m: i32, was: bool| match HeaderSendMode::try_from(m) {
            Ok(HeaderSendMode::Send) => true,
            Ok(HeaderSendMode::Skip) => false,
            _ => was,
        };
        let body = |m: i32| match BodySendMode::try_from(m) {
            Ok(BodySendMode::None) => BodyMode::None,
            Ok(BodySendMode::Streamed) => BodyMode::Streamed,
            // BUFFERED_PARTIAL and FULL_DUPLEX_STREAMED are sent whole here: the
            // generator's bodies never exceed a buffer limit, and a full-duplex server
            // answers one message with one answer too.
            Ok(_) => BodyMode::Buffered,
            Err(_) => BodyMode::None,
        };
        self.response_headers = header(mode.response_header_mode, self.response_headers);
        self.request_body = body(mode.request_body_mode);
        self.response_body = body(mode.response_body_mode);
        self.request_trailers = header(mode.request_trailer_mode, self.request_trailers);
        self.response_trailers = header(mode.response_trailer_mode, self.response_trailers);
        self
    }
}

/// One stream in progress. The call starts with the first message already queued,
/// as Envoy's does: a server may wait for it before answering the call.
struct Stream {
    client: ExternalProcessorClient<Channel>,
    tx: mpsc::Sender<ProcessingRequest>,
    call: Option<tonic::Request<ReceiverStream<ProcessingRequest>>>,
    rx: Option<tonic::Streaming<ProcessingResponse>>,
    messages: u32,
}

impl Stream {
    fn new(
        client: &ExternalProcessorClient<Channel>,
        spec: &ExchangeSpec,
    ) -> Result<Self, Failure> {
        let (tx, rx) = mpsc::channel(64);
        let mut call = tonic::Request::new(ReceiverStream::new(rx));
        for (k, v) in &spec.metadata {
            let key = MetadataKey::from_bytes(k.as_bytes())
                .map_err(|e| Failure::Open(format!("metadata key {k}: {e}")))?;
            let value: MetadataValue<_> = v
                .parse()
                .map_err(|e| Failure::Open(format!("metadata value {v}: {e}")))?;
            call.metadata_mut().insert(key, value);
        }
        Ok(Stream {
            client: client.clone(),
            tx,
            call: Some(call),
            rx: None,
            messages: 0,
        })
    }

    async fn send(&mut self, request: processing_request::Request) -> Result<(), Failure> {
        let kind = kind_in(&request);
        self.messages += 1;
        self.tx
            .send(ProcessingRequest {
                request: Some(request),
                ..ProcessingRequest::default()
            })
            .await
            .map_err(|_| Failure::EndedEarly(kind))?;
        if let Some(call) = self.call.take() {
            let answers = self
                .client
                .process(call)
                .await
                .map_err(|s| Failure::Open(format!("{} {}", s.code(), s.message())))?;
            self.rx = Some(answers.into_inner());
        }
        Ok(())
    }

    /// The answer to a message of `sent` kind; `Err(Ok(status))` for an immediate
    /// response.
    async fn answer(
        &mut self,
        sent: &'static str,
    ) -> Result<Result<ProcessingResponse, u32>, Failure> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(Failure::EndedEarly(sent));
        };
        let response = match rx.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Failure::EndedEarly(sent)),
            Err(s) => return Err(Failure::Status(format!("{} {}", s.code(), s.message()))),
        };
        let got = kind_out(response.response.as_ref());
        if let Some(processing_response::Response::ImmediateResponse(i)) = &response.response {
            let status = i.status.as_ref().map_or(0, |s| s.code as u32);
            return Ok(Err(status));
        }
        if got != sent {
            return Err(Failure::WrongKind { sent, got });
        }
        Ok(Ok(response))
    }

    /// Sends one message and checks its answer.
    async fn round(
        &mut self,
        request: processing_request::Request,
    ) -> Result<Result<ProcessingResponse, u32>, Failure> {
        let kind = kind_in(&request);
        self.send(request).await?;
        self.answer(kind).await
    }

    /// Sends a body as the mode says: whole, or in chunks sent back to back (as Envoy
    /// streams them) and answered in order.
    ///
    /// `trailers_follow` says the HTTP message has trailers (its body does not end the
    /// stream); `send_trailers` that the filter sends them after the body.
    async fn body(
        &mut self,
        request: bool,
        mode: BodyMode,
        len: usize,
        chunk: usize,
        trailers_follow: bool,
        send_trailers: bool,
    ) -> Result<Option<u32>, Failure> {
        let wrap = |body: HttpBody| {
            if request {
                processing_request::Request::RequestBody(body)
            } else {
                processing_request::Request::ResponseBody(body)
            }
        };
        let kind = if request {
            "request_body"
        } else {
            "response_body"
        };
        let sizes: Vec<usize> = match mode {
            BodyMode::None => return Ok(None),
            BodyMode::Buffered => vec![len],
            BodyMode::Streamed => {
                let chunk = chunk.max(1);
                (0..len.div_ceil(chunk))
                    .map(|i| chunk.min(len - i * chunk))
                    .collect()
            }
        };
        let last = sizes.len().saturating_sub(1);
        for (i, n) in sizes.iter().enumerate() {
            self.send(wrap(HttpBody {
                body: vec![b'x'; *n],
                end_of_stream: i == last && !trailers_follow,
                ..HttpBody::default()
            }))
            .await?;
        }
        for _ in &sizes {
            if let Err(status) = self.answer(kind).await? {
                return Ok(Some(status));
            }
        }
        if send_trailers {
            let trailers = HttpTrailers {
                trailers: Some(header_map(&[("x-trailer", "1")])),
            };
            let message = if request {
                processing_request::Request::RequestTrailers(trailers)
            } else {
                processing_request::Request::ResponseTrailers(trailers)
            };
            if let Err(status) = self.round(message).await? {
                return Ok(Some(status));
            }
        }
        Ok(None)
    }

    /// Half-closes and expects the server to end the stream cleanly.
    async fn finish(self) -> Result<(), Failure> {
        let Stream { tx, rx, .. } = self;
        drop(tx);
        let Some(mut rx) = rx else {
            return Ok(());
        };
        match rx.message().await {
            Ok(None) => Ok(()),
            Ok(Some(r)) => Err(Failure::ExtraMessage(kind_out(r.response.as_ref()))),
            Err(s) if s.code() == tonic::Code::Cancelled => Ok(()),
            Err(s) => Err(Failure::Status(format!("{} {}", s.code(), s.message()))),
        }
    }
}

/// A stream left waiting between phases: its request headers answered, nothing else
/// sent, as Envoy holds one while the upstream thinks. Dropping it closes the stream.
pub struct Held {
    _stream: Stream,
}

/// Opens a stream, sends the request headers of `spec` (a body announced, so the
/// exchange is not over) and checks their answer; the stream then waits.
pub async fn hold(
    client: &ExternalProcessorClient<Channel>,
    spec: &ExchangeSpec,
) -> Result<Held, Failure> {
    let mut stream = Stream::new(client, spec)?;
    let answer = stream.round(request_headers(spec, false)).await?;
    match answer {
        Ok(_) => Ok(Held { _stream: stream }),
        Err(status) => Err(Failure::Status(format!(
            "an immediate response ({status}) where a held stream was wanted"
        ))),
    }
}

/// The request headers of `spec`: its pseudo-headers, a `content-length` for a body,
/// and its further headers.
fn request_headers(spec: &ExchangeSpec, end_of_stream: bool) -> processing_request::Request {
    let length = spec.request_body_bytes.to_string();
    let mut pairs: Vec<(&str, &str)> = vec![
        (":method", &spec.method),
        (":path", &spec.path),
        (":authority", &spec.authority),
        (":scheme", "http"),
    ];
    if spec.request_body_bytes > 0 {
        pairs.push(("content-length", &length));
    }
    pairs.extend(spec.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    processing_request::Request::RequestHeaders(HttpHeaders {
        headers: Some(header_map(&pairs)),
        end_of_stream,
        ..HttpHeaders::default()
    })
}

/// Runs one exchange on `client`.
pub async fn exchange(
    client: &ExternalProcessorClient<Channel>,
    spec: &ExchangeSpec,
) -> Result<Done, Failure> {
    match tokio::time::timeout(spec.timeout, run(client, spec)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Timeout),
    }
}

async fn run(
    client: &ExternalProcessorClient<Channel>,
    spec: &ExchangeSpec,
) -> Result<Done, Failure> {
    use processing_request::Request as In;
    let mut stream = Stream::new(client, spec)?;
    let mut plan = Plan::new(spec);
    let immediate = |stream: Stream, status: u32| Done {
        ending: Ending::Immediate(status),
        messages: stream.messages,
    };
    if spec.request_headers {
        let end = spec.request_body_bytes == 0 && !spec.request_trailers;
        match stream.round(request_headers(spec, end)).await? {
            Err(status) => return Ok(immediate(stream, status)),
            Ok(response) if spec.allow_mode_override => plan = plan.overridden(&response),
            Ok(_) => {}
        }
    }
    if spec.request_body_bytes > 0 {
        if let Some(status) = stream
            .body(
                true,
                plan.request_body,
                spec.request_body_bytes,
                spec.chunk_bytes,
                spec.request_trailers,
                plan.request_trailers,
            )
            .await?
        {
            return Ok(immediate(stream, status));
        }
    }
    if plan.response_headers {
        let length = spec.response_body_bytes.to_string();
        let mut pairs = vec![(":status", "200")];
        if spec.response_body_bytes > 0 {
            pairs.push(("content-length", &length));
        }
        let answer = stream
            .round(In::ResponseHeaders(HttpHeaders {
                headers: Some(header_map(&pairs)),
                end_of_stream: spec.response_body_bytes == 0 && !spec.response_trailers,
                ..HttpHeaders::default()
            }))
            .await?;
        if let Err(status) = answer {
            return Ok(immediate(stream, status));
        }
    }
    if spec.response_body_bytes > 0 {
        if let Some(status) = stream
            .body(
                false,
                plan.response_body,
                spec.response_body_bytes,
                spec.chunk_bytes,
                spec.response_trailers,
                plan.response_trailers,
            )
            .await?
        {
            return Ok(immediate(stream, status));
        }
    }
    let messages = stream.messages;
    stream.finish().await?;
    Ok(Done {
        ending: Ending::Completed,
        messages,
    })
}
