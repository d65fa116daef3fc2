//! The ext_proc gRPC method as a tower service in tonic's router, in place of the
//! generated `ExternalProcessorServer`: requests are read by [`super::inbound`], which
//! holds no memory between messages that the body budget does not see; answers are
//! encoded by tonic as before.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codec::{Codec, EncodeBody};
use tonic::server::NamedService;
use tonic::Status;

use super::service::ExtProcService;
use crate::proto::ext_proc::{ProcessingRequest, ProcessingResponse};

/// The one method of `envoy.service.ext_proc.v3.ExternalProcessor`.
const PROCESS: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";

/// Serves `Process` with `service`, messages limited to `max_message` bytes each way.
#[derive(Clone)]
pub(crate) struct ExtProcGrpc {
    service: ExtProcService,
    max_message: usize,
}

impl ExtProcGrpc {
    pub(crate) fn new(service: ExtProcService, max_message: usize) -> Self {
        Self {
            service,
            max_message,
        }
    }

    fn respond(&self, request: http::Request<Body>) -> http::Response<Body> {
        if request.uri().path() != PROCESS {
            return Status::unimplemented(format!("no method {}", request.uri().path()))
                .into_http();
        }
        if let Some(encoding) = request.headers().get("grpc-encoding") {
            if encoding.as_bytes() != b"identity" {
                let mut response = Status::unimplemented(
                    "compressed ext_proc requests are not accepted (grpc-encoding identity only)",
                )
                .into_http();
                response.headers_mut().insert(
                    "grpc-accept-encoding",
                    http::HeaderValue::from_static("identity"),
                );
                return response;
            }
        }
        let (parts, body) = request.into_parts();
        let metadata = tonic::metadata::MetadataMap::from_headers(parts.headers);
        let answers = match self.service.open(&metadata, body, self.max_message) {
            Ok(answers) => answers,
            Err(status) => return status.into_http(),
        };
        let encoder =
            tonic_prost::ProstCodec::<ProcessingResponse, ProcessingRequest>::default().encoder();
        let body = EncodeBody::new_server(
            encoder,
            answers,
            None,
            Default::default(),
            Some(self.max_message),
        );
        let mut response = http::Response::new(Body::new(body));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
}

impl NamedService for ExtProcGrpc {
    const NAME: &'static str = "envoy.service.ext_proc.v3.ExternalProcessor";
}

impl tower::Service<http::Request<Body>> for ExtProcGrpc {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        std::future::ready(Ok(self.respond(request)))
    }
}
