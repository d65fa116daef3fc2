//! Reads ext_proc messages off a gRPC request body, with every byte the gateway holds
//! between polls counted against the body budget.
//!
//! tonic's own decoder gathers each message in a per-stream buffer that grows to the
//! largest message the stream has seen and keeps that size until the stream ends. A
//! stream that sent a 1 MiB body and now waits for the upstream's response would hold
//! 1 MiB for nothing, and 10,000 such streams 10 GiB, outside any budget. Here a
//! message that arrives whole in one frame is decoded straight away; one that spans
//! frames is gathered in a buffer of exactly its size, held from the global budget
//! first and freed once decoded. When the budget is spent the message is skipped
//! without being kept, and the stream is told ([`Incoming::Refused`]) so the request
//! can be answered with 503. Between messages a stream holds nothing but the message
//! prefix.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use hyper::body::Body;
use prost::Message;
use tonic::Status;

use std::sync::Arc;

use crate::budget::{BodyBudget, Hold};
use crate::proto::ext_proc::ProcessingRequest;

/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// A message gathered across frames, with the budget it holds.
struct Partial {
    len: usize,
    buf: BytesMut,
    _hold: Option<Hold>,
}

/// What one read from the stream gives.
#[derive(Debug)]
// Moved once per message; boxing the large variant would add an allocation to each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Incoming {
    /// A decoded message.
    Message(ProcessingRequest),
    /// A message of this many bytes that the budget had no room for: its bytes are
    /// being skipped.
    Refused(usize),
}

/// The decoded messages of one ext_proc stream.
pub(crate) struct Inbound<B> {
    body: B,
    /// The unread rest of the last data frame.
    chunk: Bytes,
    prefix: [u8; PREFIX],
    prefix_len: usize,
    partial: Option<Partial>,
    /// Bytes of a refused message still to be skipped.
    skip: usize,
    max_message: usize,
    /// Where `partial` holds its bytes (nowhere when the server runs without a budget).
    budget: Option<Arc<BodyBudget>>,
    done: bool,
}

impl<B> Inbound<B> {
    /// Messages of at most `max_message` bytes from `body`.
    pub(crate) fn new(body: B, max_message: usize, budget: Option<Arc<BodyBudget>>) -> Self {
        Self {
            body,
            chunk: Bytes::new(),
            prefix: [0; PREFIX],
            prefix_len: 0,
            partial: None,
            skip: 0,
            max_message,
            budget,
            done: false,
        }
    }

    /// Decodes what `chunk` holds: `Some` once a message, or an error, is complete.
    fn advance(&mut self) -> Option<Result<Incoming, Status>> {
        while !self.chunk.is_empty() {
            if self.skip > 0 {
                let take = self.skip.min(self.chunk.len());
                self.chunk.advance(take);
                self.skip -= take;
                continue;
            }
            if let Some(partial) = &mut self.partial {
                let take = (partial.len - partial.buf.len()).min(self.chunk.len());
                partial.buf.extend_from_slice(&self.chunk.split_to(take));
                if partial.buf.len() < partial.len {
                    return None;
                }
                let bytes = std::mem::take(&mut partial.buf).freeze();
                // The hold ends here; the decoded message shares the buffer and lives
                // only while the chain handles it (processors that keep a body reserve
                // it themselves).
                self.partial = None;
                return Some(decode(bytes));
            }
            let take = (PREFIX - self.prefix_len).min(self.chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + take]
                .copy_from_slice(&self.chunk[..take]);
            self.chunk.advance(take);
            self.prefix_len += take;
            if self.prefix_len < PREFIX {
                return None;
            }
            self.prefix_len = 0;
            let [flag, a, b, c, d] = self.prefix;
            if flag != 0 {
                return Some(Err(Status::unimplemented(
                    "compressed ext_proc messages are not accepted (grpc-encoding identity only)",
                )));
            }
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            if len > self.max_message {
                return Some(Err(Status::out_of_range(format!(
                    "ext_proc message of {len} bytes is larger than the limit of {} bytes \
                     (server.max_message_bytes)",
                    self.max_message
                ))));
            }
            if self.chunk.len() >= len {
                // Whole in this frame: copied out at its own size, so the connection's
                // read buffer is not kept alive by a body a processor holds on to.
                let message = Bytes::copy_from_slice(&self.chunk[..len]);
                self.chunk.advance(len);
                return Some(decode(message));
            }
            let hold = match &self.budget {
                Some(budget) => match budget.hold(len) {
                    Ok(hold) => Some(hold),
                    Err(_) => {
                        self.skip = len;
                        return Some(Ok(Incoming::Refused(len)));
                    }
                },
                None => None,
            };
            self.partial = Some(Partial {
                len,
                buf: BytesMut::with_capacity(len),
                _hold: hold,
            });
        }
        None
    }

    fn finish(&mut self) -> Option<Result<Incoming, Status>> {
        self.done = true;
        if self.partial.is_some() || self.prefix_len > 0 || self.skip > 0 {
            return Some(Err(Status::invalid_argument(
                "malformed ProcessingRequest: the stream ended inside a message",
            )));
        }
        None
    }
}

fn decode(bytes: Bytes) -> Result<Incoming, Status> {
    ProcessingRequest::decode(bytes)
        .map(Incoming::Message)
        .map_err(|e| Status::invalid_argument(format!("malformed ProcessingRequest: {e}")))
}

impl<B> Stream for Inbound<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Incoming, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(item) = this.advance() {
                if item.is_err() {
                    this.done = true;
                }
                return Poll::Ready(Some(item));
            }
            match std::task::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers from the client carry nothing for ext_proc.
                    if let Ok(data) = frame.into_data() {
                        this.chunk = data;
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    // The peer reset or the connection broke: the stream is over.
                    return Poll::Ready(Some(Err(Status::cancelled(format!(
                        "ext_proc request body: {}",
                        e.into()
                    )))));
                }
                None => return Poll::Ready(this.finish()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::BodyBudget;
    use crate::proto::ext_proc::{processing_request, HttpBody};
    use futures_util::StreamExt;
    use http_body_util::StreamBody;

    fn framed(message: &ProcessingRequest) -> Vec<u8> {
        let encoded = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        out.extend_from_slice(&encoded);
        out
    }

    fn body_message(n: usize) -> ProcessingRequest {
        ProcessingRequest {
            request: Some(processing_request::Request::RequestBody(HttpBody {
                body: Bytes::from(vec![b'a'; n]),
                end_of_stream: true,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    type Frames = futures_util::stream::Iter<
        std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>,
    >;

    /// The wire bytes cut into frames of `size`.
    fn body(bytes: &[u8], size: usize) -> StreamBody<Frames> {
        let frames: Vec<_> = bytes
            .chunks(size.max(1))
            .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn messages_split_anywhere_decode_the_same_and_hold_no_budget_after() {
        let messages = [body_message(0), body_message(10), body_message(70_000)];
        let wire: Vec<u8> = messages.iter().flat_map(framed).collect();
        for size in [1, 3, 5, 7, 4096, 16_384, wire.len()] {
            let budget = BodyBudget::new(1 << 20, 1 << 20);
            let mut inbound = Inbound::new(body(&wire, size), 1 << 20, Some(budget.clone()));
            for expected in &messages {
                let got = inbound.next().await;
                assert!(
                    matches!(&got, Some(Ok(Incoming::Message(m))) if m == expected),
                    "{size}: {got:?}"
                );
            }
            assert!(inbound.next().await.is_none(), "{size}");
            assert_eq!(budget.used(), 0, "{size}");
        }
    }

    #[tokio::test]
    async fn a_message_spanning_frames_is_skipped_when_the_budget_is_spent() {
        let wire = [framed(&body_message(50_000)), framed(&body_message(10))].concat();
        let budget = BodyBudget::new(10_000, 1 << 20);
        let mut inbound = Inbound::new(body(&wire, 16_384), 1 << 20, Some(budget.clone()));
        let got = inbound.next().await;
        assert!(
            matches!(got, Some(Ok(Incoming::Refused(n))) if n > 50_000),
            "{got:?}"
        );
        assert_eq!(budget.used(), 0);
        // Its bytes are skipped: the next message decodes.
        let got = inbound.next().await;
        assert!(
            matches!(&got, Some(Ok(Incoming::Message(m))) if *m == body_message(10)),
            "{got:?}"
        );
        assert!(inbound.next().await.is_none());
    }

    #[tokio::test]
    async fn oversized_compressed_truncated_and_garbage_get_clear_statuses() {
        let cases: Vec<(Vec<u8>, tonic::Code)> = vec![
            (framed(&body_message(2000)), tonic::Code::OutOfRange),
            (vec![1, 0, 0, 0, 1, 0], tonic::Code::Unimplemented),
            (vec![0, 0, 0, 0, 9, 1, 2], tonic::Code::InvalidArgument),
            (vec![0, 0], tonic::Code::InvalidArgument),
            (
                vec![0, 0, 0, 0, 2, 0xff, 0xff],
                tonic::Code::InvalidArgument,
            ),
        ];
        for (wire, code) in cases {
            let mut inbound = Inbound::new(body(&wire, 3), 1000, None);
            let got = inbound.next().await;
            assert!(
                matches!(&got, Some(Err(s)) if s.code() == code),
                "{wire:?}: {got:?}"
            );
            assert!(inbound.next().await.is_none());
        }
    }

    /// Every result the stream gives for `wire` cut into frames of `size`.
    async fn results(wire: &[u8], size: usize) -> Vec<Result<ProcessingRequest, tonic::Code>> {
        let budget = BodyBudget::new(1 << 16, 1 << 16);
        let inbound = Inbound::new(body(wire, size), 1 << 12, Some(budget.clone()));
        let out: Vec<_> = inbound
            .map(|r| match r {
                Ok(Incoming::Message(m)) => Ok(m),
                Ok(Incoming::Refused(_)) => Err(tonic::Code::ResourceExhausted),
                Err(s) => Err(s.code()),
            })
            .collect()
            .await;
        assert_eq!(budget.used(), 0, "a reservation outlived the stream");
        out
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        #[test]
        fn any_bytes_cut_anywhere_give_the_same_results_and_never_panic(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    (0usize..100).prop_map(|n| framed(&body_message(n))),
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
                ],
                0..8,
            ),
            size in 1usize..64,
        ) {
            let wire: Vec<u8> = pieces.concat();
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let (whole, cut) = runtime.block_on(async {
                (results(&wire, wire.len()).await, results(&wire, size).await)
            });
            proptest::prop_assert_eq!(whole, cut);
        }
    }
}
