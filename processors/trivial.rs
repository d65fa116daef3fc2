//! `trivial`: copies Envoy's `x-request-id` into `x-extra-request-id` on the upstream
//! request and on the response, the smallest processor that proves both directions.

use crate::prelude::*;

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Trivial;

/// Header written on the upstream request and on the response.
pub const HEADER: &str = "x-extra-request-id";

/// Settings of `trivial`: none (`- trivial` or `- trivial: {}`).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct TrivialSettings {}

impl ProcessorSettings for TrivialSettings {
    type Processor = Trivial;

    fn build(&self, _: &BuildContext<'_>) -> Result<Trivial, String> {
        Ok(Trivial)
    }

    fn request_header_writes(&self) -> RequestHeaderWrites {
        RequestHeaderWrites::Names(vec![HEADER.to_string()])
    }
}

impl Processor for Trivial {
    type State = ();

    fn new_state(&self) {}

    fn name(&self) -> &str {
        "trivial"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds::HEADERS
    }

    async fn on_request_headers(
        &self,
        ctx: &mut RequestCtx,
        _: &mut (),
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        if !ctx.request_id.is_empty() {
            out.set(HEADER, ctx.request_id.clone());
        }
        Ok(Flow::Continue)
    }

    async fn on_response_headers(
        &self,
        ctx: &mut RequestCtx,
        _: &mut (),
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        if !ctx.request_id.is_empty() {
            out.set(HEADER, ctx.request_id.clone());
        }
        Ok(Flow::Continue)
    }
}
