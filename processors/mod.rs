//! The built-in processors, one file each, and the config entry that names them.
//!
//! Each processor imports only the processor trait and the phase types
//! (`crate::prelude`): none of them knows about protobuf or the server.

pub mod context_check;
pub mod digest;
pub mod echo;
pub mod headers;
pub mod instructions;
pub mod jwt_auth;
pub mod timer;
pub mod trivial;

use std::fmt;

use serde::de::value::{MapAccessDeserializer, MapDeserializer};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::chain::ChainBuilder;

pub use context_check::ContextCheck;
pub use digest::{Digest, DigestBodyMode, DigestSettings};
pub use echo::Echo;
pub use headers::{HeaderEdits, HeadersSettings, StaticHeaders};
pub use instructions::HeaderInstructions;
pub use jwt_auth::{JwtAuth, JwtSettings};
pub use timer::Timer;
pub use trivial::Trivial;

/// One entry of a route's `processors:` list: either a bare name (`- trivial`) or a
/// one-key map of name to settings (`- digest: {body_mode: streamed}`).
#[derive(Debug, Clone, PartialEq)]
pub enum ProcessorSpec {
    /// See [`trivial`].
    Trivial,
    /// See [`timer`].
    Timer,
    /// See [`digest`].
    Digest(DigestSettings),
    /// See [`echo`].
    Echo,
    /// See [`jwt_auth`].
    JwtAuth(JwtSettings),
    /// See [`context_check`].
    ContextCheck,
    /// See [`headers`].
    Headers(HeadersSettings),
    /// See [`instructions`].
    Instructions,
}

/// Which request headers a processor may write upstream
/// ([`ProcessorSpec::request_header_writes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHeaderWrites {
    /// These names (lower case), whatever the request says.
    Names(Vec<String>),
    /// Names the client chooses (`instructions`): any header at all.
    ClientChosen,
}

/// Names accepted in config, for error messages.
pub const NAMES: &[&str] = &[
    "trivial",
    "timer",
    "digest",
    "echo",
    "jwt_auth",
    "context_check",
    "headers",
    "instructions",
];

impl ProcessorSpec {
    /// The name used in config and in `x-ext-procs-applied`.
    pub fn name(&self) -> &'static str {
        match self {
            ProcessorSpec::Trivial => "trivial",
            ProcessorSpec::Timer => "timer",
            ProcessorSpec::Digest(_) => "digest",
            ProcessorSpec::Echo => "echo",
            ProcessorSpec::JwtAuth(_) => "jwt_auth",
            ProcessorSpec::ContextCheck => "context_check",
            ProcessorSpec::Headers(_) => "headers",
            ProcessorSpec::Instructions => "instructions",
        }
    }

    /// Appends the processor to a chain. Fails when its resources cannot be loaded
    /// (e.g. a key file).
    pub fn add_to(&self, chain: ChainBuilder) -> Result<ChainBuilder, String> {
        self.add(chain, true)
    }

    /// Like [`ProcessorSpec::add_to`], for a chain that will never serve (a config
    /// being checked): everything is loaded and validated, nothing is started in the
    /// background, so checking a config fetches no JWKS URL.
    pub fn add_unstarted(&self, chain: ChainBuilder) -> Result<ChainBuilder, String> {
        self.add(chain, false)
    }

    fn add(&self, chain: ChainBuilder, start: bool) -> Result<ChainBuilder, String> {
        Ok(match self {
            ProcessorSpec::Trivial => chain.processor(Trivial),
            ProcessorSpec::Timer => chain.processor(Timer),
            ProcessorSpec::Digest(s) => chain.processor(Digest::new(s.clone())),
            ProcessorSpec::Echo => chain.processor(Echo),
            ProcessorSpec::JwtAuth(s) if !start => chain.processor(JwtAuth::unstarted(s.clone())?),
            ProcessorSpec::JwtAuth(s) => {
                let metrics = chain
                    .observed()
                    .filter(|_| s.jwks_url.is_some())
                    .map(|(m, route)| m.jwks(route));
                chain.processor(JwtAuth::observed(s.clone(), metrics)?)
            }
            ProcessorSpec::ContextCheck => chain.processor(ContextCheck),
            ProcessorSpec::Headers(s) => chain.processor(StaticHeaders::new(s.clone())?),
            ProcessorSpec::Instructions => chain.processor(HeaderInstructions),
        })
    }

    /// The request headers this processor may write upstream, as far as its config
    /// tells: the config uses it to refuse a chain in which a processor after
    /// `jwt_auth` could overwrite the verified claim headers.
    pub fn request_header_writes(&self) -> RequestHeaderWrites {
        let fixed = |name: &str| RequestHeaderWrites::Names(vec![name.to_string()]);
        match self {
            ProcessorSpec::Trivial => fixed(trivial::HEADER),
            ProcessorSpec::Timer => fixed(timer::STARTED_HEADER),
            ProcessorSpec::Digest(_) => fixed(digest::HEADER),
            ProcessorSpec::ContextCheck => fixed(context_check::HEADER),
            // Its reply goes to the client; it writes nothing upstream.
            ProcessorSpec::Echo => RequestHeaderWrites::Names(Vec::new()),
            ProcessorSpec::Headers(s) => RequestHeaderWrites::Names(
                s.request
                    .set
                    .keys()
                    .chain(s.request.append.keys())
                    .map(|n| n.to_ascii_lowercase())
                    .collect(),
            ),
            ProcessorSpec::Instructions => RequestHeaderWrites::ClientChosen,
            // Writes only under its own prefix, having removed what was there.
            ProcessorSpec::JwtAuth(_) => RequestHeaderWrites::Names(Vec::new()),
        }
    }

    /// The claim header prefix of a `jwt_auth`, `None` for other processors.
    pub fn claim_header_prefix(&self) -> Option<&str> {
        match self {
            ProcessorSpec::JwtAuth(s) => Some(&s.claim_header_prefix),
            _ => None,
        }
    }

    /// The spec as `/config` shows it: secrets hidden.
    pub fn redacted(&self) -> ProcessorSpec {
        match self {
            ProcessorSpec::JwtAuth(s) => ProcessorSpec::JwtAuth(s.redacted()),
            other => other.clone(),
        }
    }
}

/// Written the way it is read: a bare name, or `{name: settings}`, so a rendered
/// config (`/config`) loads again.
impl Serialize for ProcessorSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fn one<S: serde::Serializer, T: Serialize>(
            serializer: S,
            name: &str,
            settings: &T,
        ) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = serializer.serialize_map(Some(1))?;
            map.serialize_entry(name, settings)?;
            map.end()
        }
        match self {
            ProcessorSpec::Digest(s) => one(serializer, self.name(), s),
            ProcessorSpec::JwtAuth(s) => one(serializer, self.name(), s),
            ProcessorSpec::Headers(s) => one(serializer, self.name(), s),
            _ => serializer.serialize_str(self.name()),
        }
    }
}

/// Settings of a processor that has none: only `{}` or nothing is accepted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

/// One entry as written, read by serde's derive as an externally tagged enum: the
/// singleton-map style, `{name: settings}`, the name choosing the variant (so an
/// unknown name is serde's `unknown variant` error, listing the names). Settings
/// are optional everywhere, so `- timer:`, `- echo: {}` and a bare `- digest`
/// (read as `{digest: null}`) all parse; [`ProcessorSpec`]'s `TryFrom` validates.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
#[expect(
    dead_code,
    reason = "`NoSettings` is read only to refuse unknown fields"
)]
enum Entry {
    Trivial(Option<NoSettings>),
    Timer(Option<NoSettings>),
    Digest(Option<DigestSettings>),
    Echo(Option<NoSettings>),
    JwtAuth(Option<JwtSettings>),
    ContextCheck(Option<NoSettings>),
    Headers(Option<HeadersSettings>),
    Instructions(Option<NoSettings>),
}

impl TryFrom<Entry> for ProcessorSpec {
    type Error = String;

    fn try_from(entry: Entry) -> Result<Self, String> {
        Ok(match entry {
            Entry::Trivial(_) => ProcessorSpec::Trivial,
            Entry::Timer(_) => ProcessorSpec::Timer,
            Entry::Digest(s) => ProcessorSpec::Digest(s.unwrap_or_default()),
            Entry::Echo(_) => ProcessorSpec::Echo,
            Entry::ContextCheck(_) => ProcessorSpec::ContextCheck,
            Entry::Instructions(_) => ProcessorSpec::Instructions,
            Entry::Headers(s) => {
                let s = s.unwrap_or_default();
                StaticHeaders::new(s.clone())?;
                ProcessorSpec::Headers(s)
            }
            Entry::JwtAuth(s) => {
                let s = s.ok_or("jwt_auth needs settings (a key source)")?;
                s.validate()?;
                ProcessorSpec::JwtAuth(s)
            }
        })
    }
}

/// A bare name is the one-key map `{name: null}`; a map must hold exactly one
/// processor. Everything else is serde's derive on the (private) entry enum.
impl<'de> Deserialize<'de> for ProcessorSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;

        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = ProcessorSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a processor name ({}) or a one-key map of name to settings",
                    NAMES.join(", ")
                )
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<ProcessorSpec, E> {
                let bare = MapDeserializer::<_, E>::new(std::iter::once((name, ())));
                let entry = Entry::deserialize(MapAccessDeserializer::new(bare))?;
                ProcessorSpec::try_from(entry).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ProcessorSpec, A::Error> {
                let entry = Entry::deserialize(MapAccessDeserializer::new(&mut map))?;
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(
                        "one processor per list entry (write each as its own `- name: {...}`)",
                    ));
                }
                ProcessorSpec::try_from(entry).map_err(de::Error::custom)
            }
        }

        deserializer.deserialize_any(SpecVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_and_maps_parse() {
        let specs: Vec<ProcessorSpec> = serde_saphyr::from_str(
            "- trivial\n- digest: {body_mode: streamed}\n- echo: {}\n- timer:\n",
        )
        .unwrap();
        assert_eq!(
            specs,
            vec![
                ProcessorSpec::Trivial,
                ProcessorSpec::Digest(DigestSettings {
                    body_mode: digest::DigestBodyMode::Streamed
                }),
                ProcessorSpec::Echo,
                ProcessorSpec::Timer,
            ]
        );
    }

    #[test]
    fn unknown_names_and_settings_are_errors_with_a_line() {
        let err = serde_saphyr::from_str::<Vec<ProcessorSpec>>("- trivial\n- nope\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `nope`"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = serde_saphyr::from_str::<Vec<ProcessorSpec>>("- digest: {mode: x}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `mode`"), "{err}");
        let err = serde_saphyr::from_str::<Vec<ProcessorSpec>>("- trivial: {x: 1}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `x`"), "{err}");
    }

    #[test]
    fn a_rendered_list_loads_again() {
        let specs: Vec<ProcessorSpec> = serde_saphyr::from_str(
            "- trivial\n- digest: {body_mode: streamed}\n- headers: {request: {set: {x-a: b}}}\n- echo: {}\n",
        )
        .unwrap();
        let text = serde_saphyr::to_string(&specs).unwrap();
        let again: Vec<ProcessorSpec> = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(again, specs, "{text}");
        let err = serde_saphyr::from_str::<Vec<ProcessorSpec>>("- trivial: {}\n  echo: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("one processor per list entry"), "{err}");
        let err = serde_saphyr::from_str::<Vec<ProcessorSpec>>("- jwt_auth\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("jwt_auth needs settings"), "{err}");
    }
}
