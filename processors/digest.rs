//! `digest`: SHA-256 over tenant (`x-tenant-id`, or `unknown`), `:method`, `:path` and
//! the request body, fed in that order with no separators, chunk by chunk as the body
//! streams (never re-buffered). Lower-case hex, sent upstream as `x-request-digest`
//! (with the headers when there is no body, else with the last body message, which
//! reaches the upstream when the headers are still held: BUFFERED, BUFFERED_PARTIAL
//! when the body fit, or a held FULL_DUPLEX_STREAMED answer) and returned on the
//! response.
//!
//! The digest is only ever given for the whole body: when Envoy sent none of it (body
//! mode NONE and no override), only a BUFFERED_PARTIAL prefix, or the body had not
//! ended when the response began, `x-request-digest` is left out and the reason is
//! counted (`extproc_results_withheld_total{processor="digest"}`).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::prelude::*;

/// Header carrying the digest.
pub const HEADER: &str = "x-request-digest";

/// How the digest reads the request body.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DigestBodyMode {
    /// Ask Envoy for the whole body, so the digest reaches the upstream as a header.
    #[default]
    Buffered,
    /// Hash chunks as they stream (large bodies); the digest then only reaches the
    /// response, since the request headers are already upstream.
    Streamed,
}

/// Settings of `digest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DigestSettings {
    /// See [`DigestBodyMode`].
    #[serde(default)]
    pub body_mode: DigestBodyMode,
}

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Digest {
    settings: DigestSettings,
}

impl Digest {
    /// A digest processor with these settings.
    pub fn new(settings: DigestSettings) -> Self {
        Self { settings }
    }
}

/// Per-request state: the running hash, then its hex value.
#[derive(Default)]
pub struct DigestState {
    hasher: Option<Sha256>,
    hex: Option<String>,
}

impl DigestState {
    fn finish(&mut self) -> Option<&str> {
        if self.hex.is_none() {
            let hasher = self.hasher.take()?;
            self.hex = Some(hex::encode(hasher.finalize()));
        }
        self.hex.as_deref()
    }
}

impl ProcessorSettings for DigestSettings {
    type Processor = Digest;

    fn build(&self, _: &BuildContext<'_>) -> Result<Digest, String> {
        Ok(Digest::new(self.clone()))
    }

    fn request_header_writes(&self) -> RequestHeaderWrites {
        RequestHeaderWrites::Names(vec![HEADER.to_string()])
    }
}

impl Processor for Digest {
    type State = DigestState;

    fn new_state(&self) -> DigestState {
        DigestState::default()
    }

    fn name(&self) -> &str {
        "digest"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds {
            request_body: match self.settings.body_mode {
                DigestBodyMode::Buffered => BodyNeed::Buffered,
                DigestBodyMode::Streamed => BodyNeed::Streamed,
            },
            ..PhaseNeeds::HEADERS
        }
    }

    async fn on_request_headers(
        &self,
        ctx: &mut RequestCtx,
        state: &mut DigestState,
        h: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        let tenant = match h.headers.get("x-tenant-id") {
            Some(t) if !t.is_empty() => t.as_ref(),
            _ => b"unknown".as_slice(),
        };
        let mut hasher = Sha256::new();
        hasher.update(tenant);
        hasher.update(ctx.method.as_bytes());
        hasher.update(ctx.path.as_bytes());
        state.hasher = Some(hasher);
        if h.end_of_stream {
            if let Some(hex) = state.finish() {
                out.set(HEADER, hex.to_string());
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_request_body(
        &self,
        _: &mut RequestCtx,
        state: &mut DigestState,
        body: &BodyPhase,
        out: &mut Mutations,
    ) -> HookResult {
        if let Some(hasher) = state.hasher.as_mut() {
            hasher.update(&body.chunk);
        }
        if body.end_of_stream {
            if let Some(hex) = state.finish() {
                out.set(HEADER, hex.to_string());
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_response_headers(
        &self,
        ctx: &mut RequestCtx,
        state: &mut DigestState,
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        if state.hex.is_none() {
            // The body did not end while the digest read it.
            if let Some(reason) = ctx.request_body().withheld_reason() {
                state.hasher = None;
                if ctx.request_body() != crate::processor::BodyReceipt::Unknown {
                    ctx.withhold(reason);
                }
                return Ok(Flow::Continue);
            }
        }
        if let Some(hex) = state.finish() {
            out.set(HEADER, hex.to_string());
        }
        Ok(Flow::Continue)
    }
}
