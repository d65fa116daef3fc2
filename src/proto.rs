//! Code generated from `proto/` (the ext_proc v3 API, wire-compatible with Envoy's).
//! Only `wire` reads or writes the messages' fields; the gRPC and HTTP transports name
//! the messages only to move them whole. Hidden from the docs and not part of the
//! library's API (the project's tests use it to speak protobuf to the gateway);
//! processors never see these types.
#![allow(missing_docs, clippy::all)]

/// Envoy's API packages, nested as their protobuf package names.
pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod extensions {
        pub mod filters {
            pub mod http {
                pub mod ext_proc {
                    pub mod v3 {
                        tonic::include_proto!("envoy.extensions.filters.http.ext_proc.v3");
                    }
                }
            }
        }
    }
    pub mod service {
        pub mod ext_proc {
            pub mod v3 {
                tonic::include_proto!("envoy.service.ext_proc.v3");
            }
        }
    }
    pub mod r#type {
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
}

pub use envoy::config::core::v3 as core;
pub use envoy::extensions::filters::http::ext_proc::v3 as mode;
pub use envoy::r#type::v3 as http_status;
pub use envoy::service::ext_proc::v3 as ext_proc;

/// The compiled descriptors of `proto/` (with the well-known types they import), for
/// transcoding ext_proc messages to and from proto3 JSON.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ext_proc_descriptors.bin"));
