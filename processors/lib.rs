//! The built-in processors of extproc-gateway, one file each, each with its settings
//! type, registered the way a user's processor is ([`register`]).
//!
//! This crate depends on the public processor API (`extproc-gateway-api`) alone, so
//! the compiler keeps protobuf, tonic and the server out of every built-in. `jwt_auth`
//! adds its JWKS counters through the API's metric families.

#![warn(missing_docs)]

pub mod context_check;
pub mod digest;
pub mod echo;
pub mod headers;
pub mod instructions;
pub mod jwt_auth;
pub mod timer;
pub mod trivial;

// The API's modules under the names the gateway re-exports them by.
use extproc_gateway_api::{phase, prelude, processor};

use extproc_gateway_api::settings::Registrar;

pub use context_check::{ContextCheck, ContextCheckSettings};
pub use digest::{Digest, DigestBodyMode, DigestSettings};
pub use echo::{Echo, EchoSettings};
pub use headers::{HeaderEdits, HeadersSettings, StaticHeaders};
pub use instructions::{HeaderInstructions, InstructionsSettings};
pub use jwt_auth::{JwtAuth, JwtSettings};
pub use timer::{Timer, TimerSettings};
pub use trivial::{Trivial, TrivialSettings};

/// Registers every built-in under its documented name, as any user's processor is
/// registered.
pub fn register<R: Registrar>(registry: &mut R) {
    let added: [Result<(), R::Error>; 8] = [
        registry.add::<TrivialSettings>("trivial"),
        registry.add::<TimerSettings>("timer"),
        registry.add::<DigestSettings>("digest"),
        registry.add::<EchoSettings>("echo"),
        registry.add::<JwtSettings>("jwt_auth"),
        registry.add::<ContextCheckSettings>("context_check"),
        registry.add::<HeadersSettings>("headers"),
        registry.add::<InstructionsSettings>("instructions"),
    ];
    for result in added {
        // The names are fixed and valid; a registry that already holds one keeps
        // the processor registered first.
        if let Err(e) = result {
            tracing::warn!(error = %e, "built-in processor not registered");
        }
    }
}
