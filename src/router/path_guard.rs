//! The router's side of path safety ([`crate::path`]): the built-in route that
//! refuses a path with 400 before any processor runs, and the layer that sends the
//! normalised path upstream when `path_policy.forward_normalized` asks for it.

use std::sync::Arc;

use bytes::Bytes;
use tower::Layer;

use super::{Route, RouteMatch, PATH_REFUSED};
use crate::chain::{ready_phase, Chain, PhaseCall, PhaseFuture, PhaseRequest, PhaseService};
use crate::metrics::{Metrics, PathRefusalMetrics};
use crate::path::{PathPolicy, PathRefusal};
use crate::phase::{Flow, ImmediateResponse, Mutations, Phase};

/// gRPC INVALID_ARGUMENT: what a gRPC client gets for a refused path.
const GRPC_INVALID_ARGUMENT: u32 = 3;

/// How a router reads paths: the policy, the built-in refusal route of each reason,
/// and the refusal counters.
#[derive(Debug, Clone)]
pub(super) struct PathGuard {
    pub(super) policy: PathPolicy,
    refused: [Arc<Route>; PathRefusal::ALL.len()],
    counters: Option<PathRefusalMetrics>,
}

impl PathGuard {
    pub(super) fn new(policy: PathPolicy, metrics: Option<&Arc<Metrics>>) -> Self {
        let refused = PathRefusal::ALL.map(|reason| {
            Arc::new(Route {
                name: Arc::from(PATH_REFUSED),
                matcher: RouteMatch::default(),
                chain: Chain::empty().wrapped_direct(RefuseLayer(reason)),
                metrics: metrics.map(|m| m.route(PATH_REFUSED)),
            })
        });
        Self {
            policy,
            refused,
            counters: metrics.map(|m| m.path_refusals()),
        }
    }

    /// Counts and logs a refused path; the route whose chain answers the 400.
    pub(super) fn refuse(&self, reason: PathRefusal, raw: &[u8]) -> &Arc<Route> {
        if let Some(c) = &self.counters {
            c.refused(reason);
        }
        tracing::debug!(
            reason = reason.as_str(),
            path = ?shown(raw),
            "request path refused"
        );
        // Every reason has its route; the first refusal route is a 400 all the same.
        let [first, ..] = &self.refused;
        self.refused.get(reason.index()).unwrap_or(first)
    }
}

/// The path for a log line: lossy UTF-8, control characters escaped by `Debug`,
/// at most 256 characters.
fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).chars().take(256).collect()
}

/// The 400 a refused path gets: `{"error": sentence, "reason": label}`.
fn refusal(reason: PathRefusal) -> ImmediateResponse {
    let body = serde_json::json!({
        "error": reason.message(),
        "reason": reason.as_str(),
    })
    .to_string();
    ImmediateResponse::new(400)
        .header("content-type", "application/json")
        .body(body)
        .details(&format!("{PATH_REFUSED}:{}", reason.as_str()))
        .grpc_status(GRPC_INVALID_ARGUMENT)
}

/// The only layer of a refusal route's chain: answers the first phase it sees.
#[derive(Clone, Copy)]
struct RefuseLayer(PathRefusal);

impl Layer<PhaseService> for RefuseLayer {
    type Service = RefuseService;

    fn layer(&self, _inner: PhaseService) -> RefuseService {
        RefuseService(self.0)
    }
}

#[derive(Clone, Copy)]
struct RefuseService(PathRefusal);

impl PhaseCall for RefuseService {
    fn call_phase(&self, req: PhaseRequest) -> PhaseFuture {
        ready_phase(req.finish(Flow::Respond(refusal(self.0))))
    }
}

/// Outermost layer of every route's chain under `forward_normalized`: at request
/// headers, `:path` becomes the normalised path (query kept) in what Envoy forwards,
/// in what the processors see and in [`RequestCtx::path`](crate::processor::RequestCtx),
/// and Envoy's route cache is cleared so its own routing reads the same path.
#[derive(Clone, Copy)]
pub(super) struct ForwardNormalizedLayer(pub(super) PathPolicy);

impl Layer<PhaseService> for ForwardNormalizedLayer {
    type Service = ForwardNormalizedService;

    fn layer(&self, inner: PhaseService) -> ForwardNormalizedService {
        ForwardNormalizedService {
            policy: self.0,
            inner,
        }
    }
}

#[derive(Clone)]
pub(super) struct ForwardNormalizedService {
    policy: PathPolicy,
    inner: PhaseService,
}

impl PhaseCall for ForwardNormalizedService {
    fn call_phase(&self, mut req: PhaseRequest) -> PhaseFuture {
        if let Phase::RequestHeaders(h) = &req.phase {
            let rewritten = h
                .headers
                .get(":path")
                .and_then(|raw| self.policy.routing_path(raw).ok())
                .filter(|p| p.changed())
                .map(|p| p.with_query());
            if let Some(path) = rewritten {
                let mut m = Mutations::new();
                if let Err(e) = m.set_request_path(Bytes::from(path.clone())) {
                    // A normalised path has no control character; keep the one sent.
                    tracing::debug!(error = %e, "normalised path not forwarded");
                    return self.inner.run(req);
                }
                m.clear_route_cache();
                m.apply_to(&mut req.phase);
                req.mutations.merge(m);
                req.ctx.path = path;
            }
        }
        self.inner.run(req)
    }
}
