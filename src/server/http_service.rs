//! ext_proc over HTTP: Envoy's `http_service` instead of `grpc_service`.
//!
//! What Envoy 1.40 does (`ext_proc/http_client/http_client_impl.cc`, checked against
//! the real binary): for every ProcessingRequest it would have put on a gRPC stream it
//! sends one HTTP `POST` to the path of `http_service.http_uri.uri`, with
//! `content-type: application/json`, the request as proto3 JSON, and `x-request-id`
//! set to the filter's stream id (the same for every POST of one HTTP request). It
//! accepts only a `200` whose body is a JSON ProcessingResponse; any other status, an
//! empty body or a body that does not parse fails the request (`status_on_error`,
//! 500 by default) unless `failure_mode_allow` is set. Only headers travel this way:
//! Envoy refuses a config with body or trailer modes.
//!
//! Each POST is therefore one message of an exchange, and the exchange's state
//! (timer's start, digest's hash, the processors that ran) must wait between the
//! request-headers POST and the response-headers POST. It waits in a map keyed by
//! (POST path, `x-request-id`), bounded in size and time: an entry not resumed
//! within `server.http_exchange_ttl` is dropped, and past `server.http_max_exchanges`
//! the oldest goes first; both are counted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::net::TcpListener;

use super::exchange::{Exchange, ExchangeError, Handled};
use crate::live::{Readiness, RouterHandle};
use crate::metrics::{HttpExchangeEvent, HttpResult, Metrics, StreamOutcome};
use crate::modes::{BodyMode, ModeOverride, Violation};
use crate::phase::PhaseKind;
use crate::wire::{self, Inbound, JsonCodec, JsonError, Outbound, WireError};

/// The header in which Envoy's HTTP client sends the filter's stream id.
pub const STREAM_ID_HEADER: &str = "x-request-id";

/// Limits of the HTTP listener (from `server.*`).
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Largest request body read (`server.max_message_bytes`).
    pub max_body_bytes: usize,
    /// How long a request's state waits for the next POST (`server.http_exchange_ttl`).
    pub exchange_ttl: Duration,
    /// Most states held at once (`server.http_max_exchanges`).
    pub max_exchanges: usize,
}

/// The ext_proc HTTP service: shared by every connection of the listener.
pub struct HttpService {
    router: RouterHandle,
    metrics: Arc<Metrics>,
    codec: JsonCodec,
    store: ExchangeStore,
    max_body_bytes: usize,
    readiness: Readiness,
}

impl HttpService {
    /// A service over the routes in force (a reload applies to new requests), recording
    /// into `metrics`; `GET /healthz` follows `readiness`.
    pub fn new(
        router: RouterHandle,
        metrics: Arc<Metrics>,
        readiness: Readiness,
        settings: HttpSettings,
    ) -> Result<Arc<Self>, JsonError> {
        Ok(Arc::new(Self {
            router,
            codec: JsonCodec::new()?,
            store: ExchangeStore::new(
                settings.exchange_ttl,
                settings.max_exchanges.max(1),
                metrics.clone(),
            ),
            metrics,
            max_body_bytes: settings.max_body_bytes,
            readiness,
        }))
    }

    /// The HTTP routes: `POST <any path>` is ext_proc, `GET /healthz` is 200 while
    /// ready (503 while draining) for an Envoy HTTP health check; anything else 405.
    pub fn app(self: Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self)
    }

    /// Drops the states whose time is up (also done on every insert).
    pub fn sweep(&self) {
        self.store.sweep();
    }

    /// Answers one POST body with the JSON response, or the error to send.
    async fn process(&self, key: Option<Key>, body: &[u8]) -> Result<Vec<u8>, Failure> {
        let message = self.codec.decode_request(body).map_err(Failure::Json)?;
        let message = wire::decode(message);
        let kind = Kind::of(&message);
        let mut exchange = self.exchange_for(key.as_ref(), kind);
        match answer(&mut exchange, message).await {
            Err(e) => {
                exchange.end(StreamOutcome::Error);
                Err(Failure::Exchange(e))
            }
            Ok(mut response) => {
                if let Some(mode) = response.as_mut().and_then(Outbound::mode_override_mut) {
                    headers_only(mode);
                }
                match key {
                    Some(key)
                        if !exchange.is_finished() && more_to_come(kind, response.as_ref()) =>
                    {
                        self.store.put(key, exchange);
                    }
                    _ => exchange.end(StreamOutcome::Completed),
                }
                // Nothing to say (observability mode): an empty ProcessingResponse.
                let response = response.map(wire::encode).unwrap_or_default();
                self.codec.encode_response(&response).map_err(Failure::Json)
            }
        }
    }

    /// The exchange this message continues, or a new one.
    fn exchange_for(&self, key: Option<&Key>, kind: Kind) -> Exchange {
        let http = self.metrics.http();
        let held = match key {
            Some(key) => self.store.take(key),
            None => {
                http.exchanges(HttpExchangeEvent::Uncorrelated, 1);
                None
            }
        };
        match held {
            // Request headers always start a request: a state under the same key is
            // a leftover of another one.
            Some(old) if kind == Kind::RequestHeaders => {
                http.exchanges(HttpExchangeEvent::Replaced, 1);
                drop(old);
            }
            Some(exchange) => {
                http.exchanges(HttpExchangeEvent::Resumed, 1);
                return exchange;
            }
            None => {}
        }
        // No gRPC initial metadata over HTTP: routes match on headers and attributes.
        Exchange::new(self.router.current(), Vec::new()).headers_only()
    }
}

/// Drives the exchange with one message: the single call site of [`Exchange::handle`],
/// so a change of what it returns is adapted here. Over HTTP every POST needs exactly
/// one answer, to that POST's message. Several answers at once come only from a held
/// full-duplex body, which cannot travel over HTTP; should they come, the last is the
/// answer to this message. A message the exchange answers with nothing (observability
/// mode) gets `None`: an empty ProcessingResponse, which Envoy ignores in that mode.
async fn answer(
    exchange: &mut Exchange,
    message: Result<Inbound, WireError>,
) -> Result<Option<Outbound>, ExchangeError> {
    Ok(match exchange.handle(message?).await? {
        Handled::Reply(response) => Some(*response),
        Handled::Replies(mut responses) => responses.pop(),
        Handled::Silent => None,
    })
}

/// Keeps a mode_override within what Envoy can do over HTTP: headers only. Envoy 1.40
/// applies a body mode asked this way and then POSTs the body, but never completes
/// the request with the answer (it times out), so bodies are never asked for.
fn headers_only(mode: &mut ModeOverride) {
    mode.request_body = BodyMode::None;
    mode.response_body = BodyMode::None;
    mode.request_trailers = false;
    mode.response_trailers = false;
}

/// Whether Envoy will POST again for this request after this answer: after the
/// request headers unless the answer told it to skip the response headers; never
/// after a response message (no bodies or trailers over HTTP).
fn more_to_come(kind: Kind, response: Option<&Outbound>) -> bool {
    match kind {
        Kind::RequestHeaders => response
            .and_then(Outbound::mode_override)
            .is_none_or(|m| m.response_headers),
        Kind::RequestOther => true,
        Kind::Response | Kind::Empty => false,
    }
}

/// Which message a POST carries, as far as keeping its state goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RequestHeaders,
    RequestOther,
    Response,
    Empty,
}

impl Kind {
    fn of(message: &Result<Inbound, WireError>) -> Self {
        match message.as_ref().map(|m| m.phase.kind()) {
            Ok(PhaseKind::RequestHeaders) => Kind::RequestHeaders,
            Ok(kind) if kind.is_request() => Kind::RequestOther,
            Ok(_) => Kind::Response,
            Err(_) => Kind::Empty,
        }
    }
}

/// Why a POST got an error status.
enum Failure {
    Json(JsonError),
    Exchange(ExchangeError),
}

/// One ext_proc POST, or the health check.
async fn handle(State(svc): State<Arc<HttpService>>, request: Request) -> Response {
    let http = svc.metrics.http();
    if request.method() == Method::GET && request.uri().path() == "/healthz" {
        return if svc.readiness.get() {
            (StatusCode::OK, "ok\n").into_response()
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
        };
    }
    if request.method() != Method::POST {
        http.request(HttpResult::NotAllowed);
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            HttpResult::NotAllowed,
            "ext_proc over HTTP takes POST (GET only for /healthz)",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let key = key(request.uri().path(), request.headers());
    let body = match Limited::new(request.into_body(), svc.max_body_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            http.request(HttpResult::TooLarge);
            svc.metrics.violation(Violation::Oversized);
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                HttpResult::TooLarge,
                &format!(
                    "ProcessingRequest JSON larger than server.max_message_bytes ({} bytes)",
                    svc.max_body_bytes
                ),
            );
        }
        Err(e) => {
            http.request(HttpResult::Malformed);
            svc.metrics.violation(Violation::Malformed);
            return error(
                StatusCode::BAD_REQUEST,
                HttpResult::Malformed,
                &format!("cannot read the request body: {e}"),
            );
        }
    };
    match svc.process(key, &body).await {
        Ok(json) => {
            http.request(HttpResult::Ok);
            ([(header::CONTENT_TYPE, "application/json")], json).into_response()
        }
        Err(Failure::Json(e @ JsonError::Malformed { .. })) => {
            http.request(HttpResult::Malformed);
            svc.metrics.violation(Violation::Malformed);
            tracing::warn!(error = %e, "rejecting an ext_proc HTTP request");
            error(
                StatusCode::BAD_REQUEST,
                HttpResult::Malformed,
                &e.to_string(),
            )
        }
        Err(Failure::Json(e)) => {
            http.request(HttpResult::Internal);
            tracing::error!(error = %e, "cannot encode an ext_proc HTTP answer");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                HttpResult::Internal,
                &e.to_string(),
            )
        }
        Err(Failure::Exchange(e)) => {
            http.request(HttpResult::Rejected);
            svc.metrics.violation(e.violation());
            // The gRPC status the same error would end a stream with, as HTTP.
            let status = tonic::Status::from(e);
            let code = match status.code() {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
                tonic::Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            tracing::warn!(%status, "rejecting an ext_proc HTTP request");
            error(code, HttpResult::Rejected, status.message())
        }
    }
}

/// A JSON error body: `{"error": "...", "result": "malformed"}`.
fn error(status: StatusCode, result: HttpResult, message: &str) -> Response {
    let body = serde_json::json!({ "error": message, "result": result.as_str() });
    (status, axum::Json(body)).into_response()
}

/// Serves `service` on `listener` until `shutdown` resolves, then lets requests in
/// flight finish. States still held then are dropped (counted as cancelled streams).
pub async fn serve(
    listener: TcpListener,
    service: Arc<HttpService>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let sweeper = {
        let svc = Arc::downgrade(&service);
        let every =
            (service.store.ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match svc.upgrade() {
                    Some(s) => s.sweep(),
                    None => return,
                }
            }
        })
    };
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let result = axum::serve(listener, service.clone().app())
        .with_graceful_shutdown(shutdown)
        .await;
    sweeper.abort();
    service.store.clear();
    result
}

/// A held state's key: the POST path (so two ext_proc filters pointed at the gateway
/// with different paths never share one) and Envoy's stream id.
type Key = (Box<str>, Box<str>);

fn key(path: &str, headers: &HeaderMap) -> Option<Key> {
    let id = headers.get(STREAM_ID_HEADER)?.to_str().ok()?.trim();
    if id.is_empty() {
        return None;
    }
    Some((path.into(), id.into()))
}

/// One held state.
struct Held {
    exchange: Exchange,
    deadline: Instant,
    generation: u64,
}

#[derive(Default)]
struct Store {
    map: HashMap<Key, Held>,
    /// Keys in insertion order (so deadline order: the TTL is the same for all). An
    /// entry whose generation no longer matches the map's is stale and skipped.
    order: VecDeque<(Key, Instant, u64)>,
    next_generation: u64,
}

/// The states of requests between POSTs: bounded by count and by time.
struct ExchangeStore {
    inner: Mutex<Store>,
    ttl: Duration,
    cap: usize,
    metrics: Arc<Metrics>,
}

impl ExchangeStore {
    fn new(ttl: Duration, cap: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Mutex::new(Store::default()),
            ttl,
            cap,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the map consistent (every operation
        // is a whole insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes and returns the live state under `key`.
    fn take(&self, key: &Key) -> Option<Exchange> {
        let now = Instant::now();
        let mut store = self.lock();
        let held = store.map.remove(key)?;
        let held_now = store.map.len();
        drop(store);
        self.metrics.http().held(held_now);
        if held.deadline <= now {
            self.metrics.http().exchanges(HttpExchangeEvent::Expired, 1);
            // Dropped here, outside the lock: ends as a cancelled stream.
            return None;
        }
        Some(held.exchange)
    }

    /// Holds `exchange` until the next POST of its request, or its deadline.
    fn put(&self, key: Key, exchange: Exchange) {
        let now = Instant::now();
        let mut dropped = Vec::new();
        let mut store = self.lock();
        let generation = store.next_generation;
        store.next_generation += 1;
        let deadline = now + self.ttl;
        store.order.push_back((key.clone(), deadline, generation));
        if let Some(old) = store.map.insert(
            key,
            Held {
                exchange,
                deadline,
                generation,
            },
        ) {
            self.metrics
                .http()
                .exchanges(HttpExchangeEvent::Replaced, 1);
            dropped.push(old);
        }
        self.evict(&mut store, now, &mut dropped);
        let held_now = store.map.len();
        drop(store);
        self.metrics.http().held(held_now);
        drop(dropped);
    }

    /// Drops expired states.
    fn sweep(&self) {
        let mut dropped = Vec::new();
        let mut store = self.lock();
        self.evict(&mut store, Instant::now(), &mut dropped);
        let held_now = store.map.len();
        drop(store);
        self.metrics.http().held(held_now);
        drop(dropped);
    }

    /// Drops every state (at shutdown).
    fn clear(&self) {
        let mut store = self.lock();
        let dropped: Vec<Held> = store.map.drain().map(|(_, h)| h).collect();
        store.order.clear();
        drop(store);
        self.metrics.http().held(0);
        drop(dropped);
    }

    /// Pops expired entries and, while over the cap, the oldest ones. The dropped
    /// states are handed back to be dropped once the lock is released.
    fn evict(&self, store: &mut Store, now: Instant, dropped: &mut Vec<Held>) {
        let (mut expired, mut evicted) = (0u64, 0u64);
        while let Some((_, deadline, _)) = store.order.front() {
            if *deadline > now && store.map.len() <= self.cap {
                break;
            }
            let Some((key, _, generation)) = store.order.pop_front() else {
                break;
            };
            if store
                .map
                .get(&key)
                .is_some_and(|h| h.generation == generation)
            {
                if let Some(held) = store.map.remove(&key) {
                    if held.deadline <= now {
                        expired += 1;
                    } else {
                        evicted += 1;
                    }
                    dropped.push(held);
                }
            }
        }
        // Stale entries (resumed or replaced states) are skipped when they reach the
        // front; compact when they pile up so the queue stays within a few times the cap.
        if store.order.len() > 2 * self.cap + 64 {
            let Store { map, order, .. } = store;
            order.retain(|(k, _, g)| map.get(k).is_some_and(|h| h.generation == *g));
        }
        let http = self.metrics.http();
        if expired > 0 {
            http.exchanges(HttpExchangeEvent::Expired, expired);
        }
        if evicted > 0 {
            http.exchanges(HttpExchangeEvent::Evicted, evicted);
            tracing::warn!(
                evicted,
                cap = self.cap,
                "ext_proc HTTP: request states dropped to stay within server.http_max_exchanges"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Router;

    fn store(ttl: Duration, cap: usize) -> (ExchangeStore, Arc<Metrics>) {
        let metrics = Metrics::new();
        (ExchangeStore::new(ttl, cap, metrics.clone()), metrics)
    }

    fn exchange() -> Exchange {
        Exchange::new(
            Arc::new(Router::with_unmatched(Vec::new(), None)),
            Vec::new(),
        )
    }

    fn k(id: &str) -> Key {
        ("/ext_proc".into(), id.into())
    }

    fn count(metrics: &Metrics, event: &str) -> u64 {
        let text = metrics.render();
        let line = format!("extproc_http_exchanges_total{{event=\"{event}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
    }

    #[test]
    fn take_returns_what_put_held_once() {
        let (s, _) = store(Duration::from_secs(60), 10);
        s.put(k("1"), exchange());
        assert!(s.take(&k("2")).is_none());
        assert!(s.take(&k("1")).is_some());
        assert!(s.take(&k("1")).is_none());
    }

    #[test]
    fn the_oldest_is_evicted_past_the_cap_and_counted() {
        let (s, m) = store(Duration::from_secs(60), 2);
        s.put(k("1"), exchange());
        s.put(k("2"), exchange());
        s.put(k("3"), exchange());
        assert!(s.take(&k("1")).is_none(), "the oldest went first");
        assert!(s.take(&k("2")).is_some());
        assert!(s.take(&k("3")).is_some());
        assert_eq!(count(&m, "evicted"), 1);
        assert_eq!(count(&m, "expired"), 0);
    }

    #[test]
    fn expired_states_are_dropped_by_take_and_by_sweep() {
        let (s, m) = store(Duration::from_millis(20), 10);
        s.put(k("1"), exchange());
        s.put(k("2"), exchange());
        std::thread::sleep(Duration::from_millis(40));
        assert!(s.take(&k("1")).is_none());
        s.sweep();
        assert_eq!(s.lock().map.len(), 0);
        assert_eq!(count(&m, "expired"), 2);
        assert!(m.render().contains("extproc_http_exchanges_held 0"));
    }

    #[test]
    fn a_resumed_key_is_not_evicted_by_its_stale_queue_entry() {
        let (s, m) = store(Duration::from_secs(60), 2);
        s.put(k("1"), exchange());
        let e = s.take(&k("1")).unwrap();
        s.put(k("1"), e);
        s.put(k("2"), exchange());
        assert!(s.take(&k("1")).is_some());
        assert!(s.take(&k("2")).is_some());
        assert_eq!(count(&m, "evicted"), 0);
    }

    #[test]
    fn the_queue_stays_bounded_under_churn() {
        let (s, _) = store(Duration::from_secs(60), 4);
        for i in 0..10_000 {
            s.put(k(&i.to_string()), exchange());
            let _ = s.take(&k(&i.to_string()));
        }
        let st = s.lock();
        assert!(st.map.is_empty());
        assert!(st.order.len() <= 2 * 4 + 64 + 1, "{}", st.order.len());
    }

    #[test]
    fn the_key_needs_envoys_stream_id() {
        let mut h = HeaderMap::new();
        assert!(key("/p", &h).is_none());
        h.insert(STREAM_ID_HEADER, HeaderValue::from_static(" "));
        assert!(key("/p", &h).is_none());
        h.insert(
            STREAM_ID_HEADER,
            HeaderValue::from_static("1712676870102671173"),
        );
        assert_eq!(
            key("/p", &h),
            Some(("/p".into(), "1712676870102671173".into()))
        );
    }

    #[test]
    fn mode_override_is_kept_to_headers() {
        let mut m = ModeOverride {
            response_headers: true,
            request_body: BodyMode::Buffered,
            response_body: BodyMode::Streamed,
            request_trailers: true,
            response_trailers: true,
        };
        headers_only(&mut m);
        assert_eq!(
            m,
            ModeOverride {
                response_headers: true,
                request_body: BodyMode::None,
                response_body: BodyMode::None,
                request_trailers: false,
                response_trailers: false,
            }
        );
    }
}
