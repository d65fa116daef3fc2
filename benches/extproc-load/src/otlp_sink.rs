//! A local OTLP trace collector for the load kit: it accepts `TraceService/Export` over
//! gRPC, as Jaeger or the OpenTelemetry Collector would, and only counts what arrives.
//! The kit measures a server with trace export really on (spans encoded, batched and
//! sent over a socket), and checks from the count that spans did arrive rather than
//! assume the exporter worked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// What the sink has received so far.
#[derive(Debug, Default)]
pub struct Received {
    spans: AtomicU64,
    exports: AtomicU64,
}

impl Received {
    /// Spans received, over all exports.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }

    /// Export calls received (one per batch the exporter sent).
    pub fn exports(&self) -> u64 {
        self.exports.load(Ordering::Relaxed)
    }
}

/// The sink's gRPC service.
#[derive(Debug, Default, Clone)]
pub struct Sink(Arc<Received>);

impl Sink {
    /// A sink whose counts are read through `received`.
    pub fn new(received: Arc<Received>) -> Self {
        Self(received)
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0
            .spans
            .fetch_add(u64::try_from(spans).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.0.exports.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the sink on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    received: Arc<Received>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            // A socket that refuses the option still serves, only slower.
            let _ = stream.set_nodelay(true);
        })
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink::new(received)))
        .serve_with_incoming(incoming)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    #[tokio::test]
    async fn counts_every_span_of_every_export() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Received::default());
        tokio::spawn(serve(listener, received.clone()));
        let mut client = TraceServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let batch = |n: usize| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![
                    ScopeSpans {
                        spans: vec![Span::default(); n],
                        ..ScopeSpans::default()
                    },
                    ScopeSpans {
                        spans: vec![Span::default(); 1],
                        ..ScopeSpans::default()
                    },
                ],
                ..ResourceSpans::default()
            }],
        };
        client.export(batch(3)).await.expect("export");
        client.export(batch(0)).await.expect("export");
        assert_eq!(received.spans(), 5);
        assert_eq!(received.exports(), 2);
    }
}
