//! The floor: the least an ext_proc server can do. Every message gets an empty
//! CONTINUE of the matching kind, nothing is asked of Envoy and nothing is kept, so the
//! cost of any real server can be read as a ratio to it.

use std::pin::Pin;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request, processing_response, BodyResponse, HeadersResponse, ProcessingRequest,
    ProcessingResponse, TrailersResponse,
};
use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

/// The floor's gRPC service.
#[derive(Debug, Default, Clone, Copy)]
pub struct Floor;

/// The empty answer of the kind that matches `request`.
pub fn answer(request: ProcessingRequest) -> Result<ProcessingResponse, Status> {
    use processing_request::Request as In;
    use processing_response::Response as Out;
    let response = match request.request {
        Some(In::RequestHeaders(_)) => Out::RequestHeaders(HeadersResponse::default()),
        Some(In::ResponseHeaders(_)) => Out::ResponseHeaders(HeadersResponse::default()),
        Some(In::RequestBody(_)) => Out::RequestBody(BodyResponse::default()),
        Some(In::ResponseBody(_)) => Out::ResponseBody(BodyResponse::default()),
        Some(In::RequestTrailers(_)) => Out::RequestTrailers(TrailersResponse::default()),
        Some(In::ResponseTrailers(_)) => Out::ResponseTrailers(TrailersResponse::default()),
        None => {
            return Err(Status::invalid_argument(
                "a ProcessingRequest without a request",
            ))
        }
    };
    Ok(ProcessingResponse {
        response: Some(response),
        ..ProcessingResponse::default()
    })
}

#[tonic::async_trait]
impl ExternalProcessor for Floor {
    type ProcessStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let answers = request.into_inner().map(|message| message.and_then(answer));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// Serves the floor on `listener` with tonic's defaults until the process ends, with
/// Nagle's algorithm off as on any gRPC server Envoy talks to (small answers would
/// otherwise wait for delayed ACKs).
pub async fn serve(listener: TcpListener) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            // A socket that refuses the option still serves, only slower.
            let _ = stream.set_nodelay(true);
        })
    });
    tonic::transport::Server::builder()
        .add_service(ExternalProcessorServer::new(Floor))
        .serve_with_incoming(incoming)
        .await
}
