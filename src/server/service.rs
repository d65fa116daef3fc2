//! The tonic `ExternalProcessor` service: one [`Exchange`] per gRPC stream.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::Status;

use super::exchange::{Exchange, ExchangeError, Handled};
use super::inbound::{Inbound, Incoming};
use crate::limits::{Limit, StreamLimits, StreamSlots};
use crate::live::RouterHandle;
use crate::metrics::{Metrics, StreamOutcome};
use crate::modes::Violation;
use crate::proto::ext_proc::ProcessingResponse;
use crate::wire::{self, Outbound};

/// The ext_proc gRPC service.
#[derive(Clone)]
pub struct ExtProcService {
    router: RouterHandle,
    metrics: Arc<Metrics>,
    limits: Arc<StreamLimits>,
    slots: StreamSlots,
    budget: Option<Arc<crate::budget::BodyBudget>>,
}

impl ExtProcService {
    /// A service routing with `router`, recording into `metrics`, with the default
    /// [`StreamLimits`].
    pub fn new(router: RouterHandle, metrics: Arc<Metrics>) -> Self {
        Self::with_stream_limits(router, metrics, StreamLimits::default())
    }

    /// The same service under other limits.
    pub fn with_limits(self, limits: StreamLimits) -> Self {
        let budget = self.budget.clone();
        let mut s = Self::with_stream_limits(self.router, self.metrics, limits);
        s.budget = budget;
        s
    }

    fn with_stream_limits(
        router: RouterHandle,
        metrics: Arc<Metrics>,
        limits: StreamLimits,
    ) -> Self {
        Self {
            router,
            metrics,
            slots: StreamSlots::new(limits.max_streams),
            limits: Arc::new(limits),
            budget: None,
        }
    }

    /// Bounds the body bytes streams may hold (see [`crate::budget`]).
    pub fn with_budget(mut self, budget: Arc<crate::budget::BodyBudget>) -> Self {
        self.budget = Some(budget);
        self
    }
}

/// Metadata keys that belong to gRPC/HTTP framing rather than to the operator.
fn is_transport_key(key: &str) -> bool {
    key.starts_with("grpc-") || matches!(key, "te" | "content-type" | "user-agent")
}

impl From<ExchangeError> for Status {
    fn from(e: ExchangeError) -> Self {
        match e {
            ExchangeError::InvalidArgument(m) => Status::invalid_argument(m),
            ExchangeError::OutOfOrder(m) => Status::failed_precondition(m),
        }
    }
}

/// Turns a failure to read the next message into the status that ends the stream, or
/// `None` when the peer simply went away.
fn inbound_error(status: Status) -> Option<Status> {
    match status.code() {
        tonic::Code::OutOfRange
        | tonic::Code::ResourceExhausted
        | tonic::Code::InvalidArgument
        | tonic::Code::Unimplemented => Some(status),
        _ => {
            tracing::debug!(%status, "ext_proc stream closed by peer");
            None
        }
    }
}

struct StreamState {
    inbound: Inbound<tonic::body::Body>,
    exchange: Exchange,
    metrics: Arc<Metrics>,
    /// Answers decided but not yet sent (a released full-duplex exchange).
    queued: std::collections::VecDeque<Outbound>,
    idle_timeout: Option<std::time::Duration>,
    /// Held while the stream is open (server.max_streams).
    _slot: tokio::sync::OwnedSemaphorePermit,
    done: bool,
}

/// The violation a status ending the stream stands for.
fn violation_of(status: &Status) -> Violation {
    match status.code() {
        tonic::Code::FailedPrecondition => Violation::OutOfOrder,
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Violation::Oversized,
        tonic::Code::InvalidArgument if status.message().starts_with("malformed") => {
            Violation::Malformed
        }
        // A compressed message: framing the gateway does not read.
        tonic::Code::Unimplemented => Violation::Malformed,
        _ => Violation::EmptyMessage,
    }
}

impl StreamState {
    /// Ends the stream with `status`: counted, logged, and returned to send.
    fn fail(&mut self, status: Status) -> Status {
        self.done = true;
        self.exchange.end(StreamOutcome::Error);
        self.metrics.grpc_error(code_name(status.code()));
        self.metrics.violation(violation_of(&status));
        let route = self.exchange.route().map(|r| r.name.to_string());
        tracing::warn!(route = ?route, %status, "ending ext_proc stream");
        status
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::OutOfRange => "out_of_range",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::Internal => "internal",
        _ => "other",
    }
}

/// Decodes one message and hands it to the exchange (a message with no phase ends the
/// stream as the exchange's own errors do).
async fn handle(
    exchange: &mut Exchange,
    message: crate::proto::ext_proc::ProcessingRequest,
) -> Result<Handled, ExchangeError> {
    exchange.handle(wire::decode(message)?).await
}

pub(crate) type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

impl ExtProcService {
    /// Opens one ext_proc stream: the answers to the messages read from `body`, sent
    /// with gRPC `metadata`. Messages over `max_message` bytes end the stream.
    pub(crate) fn open(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        body: tonic::body::Body,
        max_message: usize,
    ) -> Result<ResponseStream, Status> {
        let grpc_metadata: Vec<(String, String)> = metadata
            .iter()
            .filter_map(|entry| match entry {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    let key = k.as_str();
                    if is_transport_key(key) {
                        return None;
                    }
                    Some((key.to_string(), v.to_str().ok()?.to_string()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let Some(slot) = self.slots.try_take() else {
            self.metrics.limit_hit(Limit::Streams);
            tracing::warn!(
                max = self.limits.max_streams,
                "refusing an ext_proc stream: too many open"
            );
            return Err(Status::resource_exhausted(format!(
                "too many concurrent ext_proc streams (server.max_streams = {})",
                self.limits.max_streams
            )));
        };
        // Timeout extensions go out of band, ahead of the answer being worked on. The
        // channel carries the bare duration, encoded when sent: its first block of
        // slots is allocated with every stream, and a slot the size of a
        // ProcessingResponse made that block cost kilobytes per idle stream.
        let (extend_tx, extend_rx) = tokio::sync::mpsc::unbounded_channel::<std::time::Duration>();
        let extender: crate::processor::TimeoutExtender =
            Arc::new(move |by| extend_tx.send(by).is_ok());
        let state = StreamState {
            inbound: Inbound::new(body, max_message, self.budget.clone()),
            exchange: Exchange::new(self.router.current(), grpc_metadata)
                .with_timeout_extender(extender)
                .with_limits(self.limits.clone(), self.metrics.clone())
                .with_budget(self.budget.clone()),
            metrics: self.metrics.clone(),
            queued: std::collections::VecDeque::new(),
            idle_timeout: self.limits.idle_timeout,
            _slot: slot,
            done: false,
        };
        let stream = futures_util::stream::unfold(state, |mut st| async move {
            if let Some(next) = st.queued.pop_front() {
                return Some((Ok(wire::encode(next)), st));
            }
            if st.done {
                return None;
            }
            loop {
                let next = match st.idle_timeout {
                    Some(idle) => match tokio::time::timeout(idle, st.inbound.next()).await {
                        Ok(next) => next.transpose(),
                        Err(_) => {
                            st.metrics.limit_hit(Limit::Idle);
                            let status = st.fail(Status::deadline_exceeded(format!(
                                "no message from Envoy for {idle:?} (server.stream_idle_timeout)"
                            )));
                            return Some((Err(status), st));
                        }
                    },
                    None => st.inbound.next().await.transpose(),
                };
                match next {
                    Ok(Some(Incoming::Refused(len))) => match st.exchange.refuse_unreceived() {
                        Some(Handled::Reply(response)) => {
                            st.done = true;
                            return Some((Ok(wire::encode(*response)), st));
                        }
                        _ => {
                            let status = st.fail(Status::resource_exhausted(format!(
                                "no room for a {len}-byte ext_proc message: the gateway's \
                                 body budget (server.max_buffered_bytes) is in use"
                            )));
                            return Some((Err(status), st));
                        }
                    },
                    Ok(Some(Incoming::Message(message))) => {
                        // Boxed: the chain's future is only as large as the message
                        // being worked on needs, and only while it is; inline, every
                        // idle stream would carry its largest state.
                        match Box::pin(handle(&mut st.exchange, message)).await {
                            Ok(Handled::Reply(response)) => {
                                st.done = st.exchange.is_finished();
                                return Some((Ok(wire::encode(*response)), st));
                            }
                            Ok(Handled::Replies(responses)) => {
                                st.done = st.exchange.is_finished();
                                st.queued.extend(responses);
                                match st.queued.pop_front() {
                                    Some(first) => return Some((Ok(wire::encode(first)), st)),
                                    None => continue,
                                }
                            }
                            Ok(Handled::Silent) => continue,
                            Err(e) => {
                                let status = st.fail(Status::from(e));
                                return Some((Err(status), st));
                            }
                        }
                    }
                    Ok(None) => {
                        st.exchange.end(StreamOutcome::Completed);
                        return None;
                    }
                    Err(status) => {
                        st.done = true;
                        return match inbound_error(status) {
                            Some(status) => {
                                let status = st.fail(status);
                                Some((Err(status), st))
                            }
                            // The peer went away: counted as cancelled when dropped.
                            None => None,
                        };
                    }
                }
            }
        });
        // The side channel ends when the exchange (which holds its sender) is dropped
        // with the main stream; it is polled first so an extension precedes the answer.
        let extensions = tokio_stream::wrappers::UnboundedReceiverStream::new(extend_rx)
            .map(|by| Ok::<_, Status>(wire::encode_timeout_override(by)));
        let merged =
            futures_util::stream::select_with_strategy(extensions, stream, |_: &mut ()| {
                futures_util::stream::PollNext::Left
            });
        Ok(Box::pin(merged))
    }
}
