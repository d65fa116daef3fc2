//! Test your processors without Envoy: [`Driver`] plays Envoy's side of one ext_proc
//! stream in process, through the same state machine and protobuf encoding the server
//! uses, and shows each answer in plain terms.
//!
//! Compiled only with the `testing` feature, so the driver never ships in a serving
//! binary: enable it where your tests are, e.g.
//! `extproc-gateway = { version = "...", features = ["testing"] }` under
//! `[dev-dependencies]` (this crate's own tests get it the same way).
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

use std::sync::Arc;

use bytes::Bytes;

use crate::chain::Chain;
use crate::router::{Route, RouteMatch, Router};
use crate::server::{Exchange, ExchangeError, Handled};
use crate::wire::{peer, Inbound, WireError};

pub use crate::wire::peer::{Answer, Immediate};

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

    /// Sends a message built in protobuf (e.g. with the `envoy-types` crate's
    /// `ProcessingRequest`), for what the methods below do not cover; `Ok(None)` when
    /// the gateway sends nothing back. It travels as its bytes, as over gRPC. Several
    /// answers at once (a held full-duplex exchange) are an error here: use
    /// [`Driver::send_all`].
    pub async fn send(
        &mut self,
        message: impl prost::Message,
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

    /// Like [`Driver::send`], returning every answer the message released, in order.
    pub async fn send_all(
        &mut self,
        message: impl prost::Message,
    ) -> Result<Vec<Answer>, ExchangeError> {
        self.handle(peer::decode_bytes(&message.encode_to_vec()))
            .await
    }

    async fn handle(
        &mut self,
        message: Result<Inbound, WireError>,
    ) -> Result<Vec<Answer>, ExchangeError> {
        Ok(match self.exchange.handle(message?).await? {
            Handled::Reply(r) => vec![peer::read(*r)],
            Handled::Replies(rs) => rs.into_iter().map(peer::read).collect(),
            Handled::Silent => Vec::new(),
        })
    }

    async fn expect(
        &mut self,
        message: Result<Inbound, WireError>,
    ) -> Result<Answer, ExchangeError> {
        let mut all = self.handle(message).await?;
        match all.len() {
            0 => Err(ExchangeError::InvalidArgument("no answer was sent".into())),
            1 => Ok(all.remove(0)),
            n => Err(ExchangeError::InvalidArgument(format!(
                "{n} answers to one message; use send_all"
            ))),
        }
    }

    /// Request headers (pseudo headers included); `end_of_stream` when no body follows.
    pub async fn request_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Answer, ExchangeError> {
        let message = peer::headers(true, headers, end_of_stream, self.observability);
        self.expect(message).await
    }

    /// A request body message.
    pub async fn request_body(
        &mut self,
        chunk: impl Into<Bytes>,
        end_of_stream: bool,
    ) -> Result<Answer, ExchangeError> {
        let message = peer::body(true, chunk.into(), end_of_stream, self.observability);
        self.expect(message).await
    }

    /// Request trailers.
    pub async fn request_trailers(
        &mut self,
        trailers: &[(&str, &str)],
    ) -> Result<Answer, ExchangeError> {
        let message = peer::trailers(true, trailers, self.observability);
        self.expect(message).await
    }

    /// Response headers (`:status` included).
    pub async fn response_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Answer, ExchangeError> {
        let message = peer::headers(false, headers, end_of_stream, self.observability);
        self.expect(message).await
    }

    /// A response body message.
    pub async fn response_body(
        &mut self,
        chunk: impl Into<Bytes>,
        end_of_stream: bool,
    ) -> Result<Answer, ExchangeError> {
        let message = peer::body(false, chunk.into(), end_of_stream, self.observability);
        self.expect(message).await
    }

    /// Response trailers.
    pub async fn response_trailers(
        &mut self,
        trailers: &[(&str, &str)],
    ) -> Result<Answer, ExchangeError> {
        let message = peer::trailers(false, trailers, self.observability);
        self.expect(message).await
    }
}
