//! The built-in processors, one file each, each with its settings type, registered
//! the way a user's processor is ([`register`], [`Registry::builtin`]).
//!
//! Each processor imports the processor trait, the phase types and the settings trait
//! (`crate::prelude`), and `jwt_auth` its JWKS counters from `crate::metrics`: none of
//! them knows about protobuf or the server.

pub mod context_check;
pub mod digest;
pub mod echo;
pub mod headers;
pub mod instructions;
pub mod jwt_auth;
pub mod timer;
pub mod trivial;

use crate::registry::{Registry, RegistryError};

pub use context_check::{ContextCheck, ContextCheckSettings};
pub use digest::{Digest, DigestBodyMode, DigestSettings};
pub use echo::{Echo, EchoSettings};
pub use headers::{HeaderEdits, HeadersSettings, StaticHeaders};
pub use instructions::{HeaderInstructions, InstructionsSettings};
pub use jwt_auth::{JwtAuth, JwtSettings};
pub use timer::{Timer, TimerSettings};
pub use trivial::{Trivial, TrivialSettings};

impl Registry {
    /// Every built-in processor, under its documented name. Defined with the
    /// built-ins, so the registry itself knows none of them.
    pub fn builtin() -> Self {
        let mut registry = Self::empty();
        register(&mut registry);
        registry
    }
}

/// Registers every built-in under its documented name, as any user's processor is
/// registered.
pub fn register(registry: &mut Registry) {
    let added: [Result<(), RegistryError>; 8] = [
        registry.register::<TrivialSettings>("trivial"),
        registry.register::<TimerSettings>("timer"),
        registry.register::<DigestSettings>("digest"),
        registry.register::<EchoSettings>("echo"),
        registry.register::<JwtSettings>("jwt_auth"),
        registry.register::<ContextCheckSettings>("context_check"),
        registry.register::<HeadersSettings>("headers"),
        registry.register::<InstructionsSettings>("instructions"),
    ];
    for result in added {
        // The names are fixed and valid; a registry that already holds one keeps
        // the processor registered first.
        if let Err(e) = result {
            tracing::warn!(error = %e, "built-in processor not registered");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::{ProcessorSpec, Registry};

    /// Reads YAML with the built-ins in scope.
    fn read<T: serde::de::DeserializeOwned>(yaml: &str) -> Result<T, serde_saphyr::Error> {
        Registry::builtin().scope(|| serde_saphyr::from_str(yaml))
    }

    #[test]
    fn bare_names_and_maps_parse() {
        let specs: Vec<ProcessorSpec> =
            read("- trivial\n- digest: {body_mode: streamed}\n- echo: {}\n- timer:\n").unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["trivial", "digest", "echo", "timer"]);
        assert_eq!(
            specs[1],
            ProcessorSpec::new(
                "digest",
                super::DigestSettings {
                    body_mode: super::DigestBodyMode::Streamed
                }
            )
        );
        assert_ne!(
            specs[1],
            ProcessorSpec::new("digest", super::DigestSettings::default())
        );
    }

    #[test]
    fn unknown_names_and_settings_are_errors_with_a_line() {
        let err = read::<Vec<ProcessorSpec>>("- trivial\n- nope\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown processor `nope`"), "{err}");
        assert!(err.contains("registered: context_check, digest"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = read::<Vec<ProcessorSpec>>("- trivial\n- digest: {mode: x}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `mode`"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = read::<Vec<ProcessorSpec>>("- trivial: {x: 1}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `x`"), "{err}");
    }

    #[test]
    fn a_rendered_list_loads_again() {
        let specs: Vec<ProcessorSpec> = read(
            "- trivial\n- digest: {body_mode: streamed}\n- headers: {request: {set: {x-a: b}}}\n- echo: {}\n- timer:\n  on_error: fail_open\n",
        )
        .unwrap();
        let text = serde_saphyr::to_string(&specs).unwrap();
        let again: Vec<ProcessorSpec> = read(&text).unwrap();
        assert_eq!(again, specs, "{text}");
        assert!(text.contains("- trivial\n"), "{text}");
        assert!(text.contains("on_error: fail_open"), "{text}");
        let err = read::<Vec<ProcessorSpec>>("- trivial: {}\n  echo: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("one processor per list entry"), "{err}");
        let err = read::<Vec<ProcessorSpec>>("- jwt_auth\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("set exactly one of jwks_file"), "{err}");
    }
}
