//! Soak: mixed traffic through real Envoy into the gateway at full speed, then checks
//! that nothing leaked between requests or stayed behind.
//!
//! The mix: GET and POST with bodies from 0 to 1 MiB (random sizes, distinct content)
//! through `trivial`, `timer` and a streamed `digest`; valid and invalid RS256 tokens
//! through `jwt_auth`; `echo` answering with the request's own body; `context_check`
//! with matching and tampered bodies; `instructions` with good and malformed JSON.
//! Every request carries a unique id and has exactly one expected status and content.
//!
//! Afterwards: zero cross-talk, zero unexpected statuses, the upstream called exactly
//! once per request meant to reach it, the active-streams gauge back at 0, and the
//! gateway's RSS back within `baseline + max(64 MiB, 50 %)` of the baseline measured
//! after a warm-up.
//!
//! `SOAK_SECS` sets the duration (default 10), `SOAK_TASKS` the concurrent clients
//! (default 32), `SOAK_SEED` replays a run. The long run:
//! `SOAK_SECS=60 cargo test --release --test e2e_soak -- --nocapture`.

mod common;

#[path = "fixtures/jwt/helpers.rs"]
mod jwt_helpers;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use jwt_helpers::*;
use serde_json::json;

const MIB: usize = 1024 * 1024;
/// RSS after the soak may exceed the baseline by this much at least (allocators keep
/// some freed memory) ...
const RSS_SLACK_KIB: u64 = 64 * 1024;
/// ... or by this share of the baseline, whichever is larger.
const RSS_SLACK_SHARE: f64 = 0.5;
/// Valid tokens, one per `sub`, signed once before the traffic starts.
const TOKENS: usize = 8;

fn gateway_config() -> String {
    format!(
        r#"
routes:
  - name: jwt
    match: {{path_prefix: /jwt}}
    processors:
      - jwt_auth:
          jwks_file: '{jwks}'
          issuer: '{ISSUER}'
          audiences: ['{AUDIENCE}']
      - trivial
  - name: echo
    match: {{path_prefix: /echo}}
    processors: [echo]
  - name: ctx
    match: {{path_prefix: /ctx}}
    processors: [context_check, trivial]
  - name: instructions
    match: {{path_prefix: /instr}}
    processors: [instructions, trivial]
  - name: default
    processors: [trivial, timer, {{digest: {{body_mode: streamed}}}}]
"#,
        jwks = example("jwks.json").display()
    )
}

/// The kinds of request in the mix, with their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Get,
    Post,
    JwtValid,
    JwtInvalid,
    Echo,
    Context,
    ContextTampered,
    Instructions,
    InstructionsMalformed,
}

const MIX: [(Kind, u64); 9] = [
    (Kind::Get, 15),
    (Kind::Post, 20),
    (Kind::JwtValid, 12),
    (Kind::JwtInvalid, 8),
    (Kind::Echo, 12),
    (Kind::Context, 12),
    (Kind::ContextTampered, 3),
    (Kind::Instructions, 15),
    (Kind::InstructionsMalformed, 3),
];

impl Kind {
    fn pick(rng: &mut Rng) -> Kind {
        let total: u64 = MIX.iter().map(|(_, w)| w).sum();
        let mut x = rng.below(total);
        for (kind, w) in MIX {
            if x < w {
                return kind;
            }
            x -= w;
        }
        unreachable!()
    }

    /// Whether the request is meant to reach the upstream.
    fn reaches_upstream(self) -> bool {
        !matches!(
            self,
            Kind::JwtInvalid | Kind::Echo | Kind::ContextTampered | Kind::InstructionsMalformed
        )
    }
}

/// A body length from 0 to 1 MiB: empty or exactly 1 MiB one time in ten each,
/// otherwise log-uniform (as many short bodies as long ones, per power of two).
fn body_len(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0 => 0,
        1 => MIB,
        _ => {
            let bits = rng.below(20) as u32;
            ((1usize << bits) + rng.below(1 << bits) as usize).min(MIB)
        }
    }
}

/// Tokens signed before the traffic: valid ones (`sub` = `tok-<k>`) and refused ones.
struct Tokens {
    valid: Vec<String>,
    /// (authorization header or none, the `www-authenticate` Envoy must return).
    invalid: Vec<(Option<String>, &'static str)>,
}

impl Tokens {
    fn mint() -> Tokens {
        let signer = Signer::example_rsa();
        let valid = (0..TOKENS)
            .map(|k| signer.sign(&claims_with(json!({"sub": format!("tok-{k}")}))))
            .collect();
        let refused = r#"Bearer error="invalid_token""#;
        let invalid = vec![
            // Signed by another key under the same kid.
            (Some(Signer::impostor_rsa().sign(&good_claims())), refused),
            // Expired an hour ago.
            (
                Some(signer.sign(&claims_with(json!({"exp": now() - 3600})))),
                refused,
            ),
            // Another audience.
            (
                Some(signer.sign(&claims_with(json!({"aud": "someone-else"})))),
                refused,
            ),
            (Some("not.a.token".to_string()), refused),
            (None, "Bearer"),
        ];
        Tokens { valid, invalid }
    }
}

/// One request of the mix, built from the random source: what to send and what must
/// come back.
struct Planned {
    kind: Kind,
    id: String,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The `www-authenticate` of a refused token.
    challenge: &'static str,
}

fn plan(rng: &mut Rng, tokens: &Tokens, id: String) -> Planned {
    let kind = Kind::pick(rng);
    let mut headers = vec![("x-request-id".to_string(), id.clone())];
    let mut challenge = "";
    let (method, path, body) = match kind {
        Kind::Get => ("GET", format!("/d/{id}"), Vec::new()),
        Kind::Post => {
            let len = body_len(rng);
            headers.push(("x-tenant-id".into(), format!("tenant-{id}")));
            ("POST", format!("/d/{id}"), rng.ascii(len))
        }
        Kind::JwtValid => {
            let k = rng.below(TOKENS as u64) as usize;
            headers.push((
                "authorization".into(),
                format!("Bearer {}", tokens.valid[k]),
            ));
            headers.push(("x-token".into(), format!("tok-{k}")));
            ("GET", format!("/jwt/{id}"), Vec::new())
        }
        Kind::JwtInvalid => {
            let (token, want) = &tokens.invalid[rng.below(tokens.invalid.len() as u64) as usize];
            if let Some(t) = token {
                headers.push(("authorization".into(), format!("Bearer {t}")));
            }
            challenge = want;
            let len = body_len(rng).min(64 * 1024);
            let method = if len == 0 { "GET" } else { "POST" };
            (method, format!("/jwt/{id}"), rng.ascii(len))
        }
        Kind::Echo => {
            let len = body_len(rng);
            headers.push(("x-echo-only".into(), "true".into()));
            headers.push(("x-soak-id".into(), id.clone()));
            let method = if len == 0 { "GET" } else { "POST" };
            (method, format!("/echo/{id}"), rng.ascii(len))
        }
        Kind::Context => {
            headers.push(("x-context-id".into(), id.clone()));
            if rng.below(2) == 0 {
                ("GET", format!("/ctx/{id}"), Vec::new())
            } else {
                ("POST", format!("/ctx/{id}"), id.clone().into_bytes())
            }
        }
        Kind::ContextTampered => {
            headers.push(("x-context-id".into(), id.clone()));
            (
                "POST",
                format!("/ctx/{id}"),
                format!("{id}-tampered").into_bytes(),
            )
        }
        Kind::Instructions => {
            headers.push((
                "instructions".into(),
                json!({"addHeaders": {"x-soak-add": id}, "removeHeaders": ["x-drop"]}).to_string(),
            ));
            headers.push(("x-drop".into(), "must go".into()));
            let len = body_len(rng).min(64 * 1024);
            let method = if len == 0 { "GET" } else { "POST" };
            (method, format!("/instr/{id}"), rng.ascii(len))
        }
        Kind::InstructionsMalformed => {
            headers.push(("instructions".into(), format!("{{\"addHeaders\": {id}")));
            ("GET", format!("/instr/{id}"), Vec::new())
        }
    };
    Planned {
        kind,
        id,
        method,
        path,
        headers,
        body,
        challenge,
    }
}

/// What went wrong with a response, if anything.
#[derive(Debug)]
enum Fault {
    /// Not the one status this request must get (or no response at all).
    Status(String),
    /// The right status with content that is not this request's.
    Content(String),
}

impl Planned {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn expected_status(&self) -> u16 {
        match self.kind {
            Kind::JwtInvalid => 401,
            Kind::ContextTampered => 500,
            Kind::InstructionsMalformed => 400,
            _ => 200,
        }
    }

    fn check(&self, r: &Result<Resp, String>) -> Result<(), Fault> {
        let r = r.as_ref().map_err(|e| Fault::Status(e.clone()))?;
        if r.status != self.expected_status() {
            return Err(Fault::Status(format!(
                "{} (want {}): {:.300}",
                r.status,
                self.expected_status(),
                String::from_utf8_lossy(&r.body)
            )));
        }
        self.check_content(r).map_err(Fault::Content)
    }

    fn check_content(&self, r: &Resp) -> Result<(), String> {
        let id = self.id.as_str();
        let eq = |what: &str, got: Option<&str>, want: &str| {
            if got == Some(want) {
                Ok(())
            } else {
                Err(format!("{what}: {got:?}, want {want:?}"))
            }
        };
        let json_error = || {
            serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .ok_or_else(|| format!("no JSON error: {:?}", String::from_utf8_lossy(&r.body)))
        };
        match self.kind {
            Kind::JwtInvalid => {
                eq(
                    "www-authenticate",
                    r.header("www-authenticate"),
                    self.challenge,
                )?;
                json_error().map(drop)
            }
            Kind::ContextTampered => {
                let e = json_error()?;
                if e.contains("context mismatch") {
                    Ok(())
                } else {
                    Err(format!("reason {e:?}"))
                }
            }
            Kind::InstructionsMalformed => {
                if r.body.is_empty() {
                    Err("no message for malformed instructions".into())
                } else {
                    Ok(())
                }
            }
            Kind::Echo => {
                eq("x-soak-id", r.header("x-soak-id"), id)?;
                if r.body[..] != self.body[..] {
                    return Err(format!(
                        "echoed body of {} bytes, sent {}",
                        r.body.len(),
                        self.body.len()
                    ));
                }
                Ok(())
            }
            _ => self.check_upstream(r),
        }
    }

    /// A response from the upstream: the echo is this request's, and the processors'
    /// headers carry this request's values.
    fn check_upstream(&self, r: &Resp) -> Result<(), String> {
        let id = self.id.as_str();
        let eq = |what: &str, got: Option<&str>, want: &str| {
            if got == Some(want) {
                Ok(())
            } else {
                Err(format!("{what}: {got:?}, want {want:?}"))
            }
        };
        let up: extproc_gateway::upstream::Echoed =
            serde_json::from_slice(&r.body).map_err(|e| format!("not an upstream echo: {e}"))?;
        let uh = |k: &str| up.headers.get(k).map(String::as_str);
        eq("upstream path", Some(&up.path), &self.path)?;
        eq("upstream method", Some(&up.method), self.method)?;
        eq("upstream x-request-id", uh("x-request-id"), id)?;
        if up.body.as_bytes() != &self.body[..] {
            return Err(format!(
                "upstream body of {} bytes, sent {}",
                up.body.len(),
                self.body.len()
            ));
        }
        eq("upstream x-extra-request-id", uh("x-extra-request-id"), id)?;
        eq("x-extra-request-id", r.header("x-extra-request-id"), id)?;
        match self.kind {
            Kind::Get | Kind::Post => {
                let tenant = self.header("x-tenant-id").unwrap_or("unknown");
                let want = digest(tenant, self.method, &self.path, &self.body);
                eq("x-request-digest", r.header("x-request-digest"), &want)?;
                eq(
                    "x-ext-procs-applied",
                    r.header("x-ext-procs-applied"),
                    "trivial,timer,digest",
                )?;
                match (r.header("x-request-started"), uh("x-request-started")) {
                    (Some(a), Some(b)) if a == b => {}
                    other => return Err(format!("x-request-started {other:?}")),
                }
            }
            Kind::JwtValid => {
                let sub = self.header("x-token").unwrap_or_default();
                eq("decoded-sub", uh("decoded-sub"), sub)?;
                eq("decoded-iss", uh("decoded-iss"), ISSUER)?;
            }
            Kind::Context => {
                eq("upstream x-context-id", uh("x-context-id"), id)?;
                eq("x-context-id", r.header("x-context-id"), id)?;
            }
            Kind::Instructions => {
                eq("upstream x-soak-add", uh("x-soak-add"), id)?;
                if uh("x-drop").is_some() {
                    return Err("x-drop reached the upstream".into());
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Totals of a run.
#[derive(Default)]
struct Totals {
    per_kind: BTreeMap<String, u64>,
    upstream_bound: u64,
    body_bytes: u64,
    largest_body: usize,
    status_faults: Vec<String>,
    content_faults: Vec<String>,
    status_count: u64,
    content_count: u64,
}

impl Totals {
    fn requests(&self) -> u64 {
        self.per_kind.values().sum()
    }
}

async fn traffic(
    port: u16,
    tasks: usize,
    run_for: Duration,
    tokens: Arc<Tokens>,
    rng: &mut Rng,
    label: &str,
) -> Totals {
    let totals = Arc::new(Mutex::new(Totals::default()));
    let deadline = Instant::now() + run_for;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (totals, tokens) = (totals.clone(), tokens.clone());
            let mut rng = Rng::new(rng.next_u64());
            let label = format!("{label}{t}");
            tokio::spawn(async move {
                let client = client();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let p = plan(&mut rng, &tokens, format!("{label}-{n}"));
                    let headers: Vec<(&str, &str)> = p
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let body = if p.body.is_empty() {
                        empty()
                    } else {
                        full(p.body.clone())
                    };
                    let r = try_send(
                        &client,
                        port,
                        p.method,
                        &p.path,
                        &headers,
                        body,
                        Duration::from_secs(60),
                    )
                    .await;
                    let fault = p.check(&r).err();
                    let mut t = totals.lock().expect("totals");
                    *t.per_kind.entry(format!("{:?}", p.kind)).or_default() += 1;
                    t.upstream_bound += u64::from(p.kind.reaches_upstream());
                    t.body_bytes += p.body.len() as u64;
                    t.largest_body = t.largest_body.max(p.body.len());
                    let what = format!("{} {:?} {} {}", p.id, p.kind, p.method, p.path);
                    match fault {
                        Some(Fault::Status(e)) => {
                            t.status_count += 1;
                            if t.status_faults.len() < 10 {
                                t.status_faults.push(format!("{what}: {e}"));
                            }
                        }
                        Some(Fault::Content(e)) => {
                            t.content_count += 1;
                            if t.content_faults.len() < 10 {
                                t.content_faults.push(format!("{what}: {e}"));
                            }
                        }
                        None => {}
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("client task");
    }
    Arc::try_unwrap(totals)
        .ok()
        .expect("no task holds the totals")
        .into_inner()
        .expect("totals")
}

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_leaves_no_cross_talk_and_no_residue() {
    let secs: u64 = env_or("SOAK_SECS", 10);
    let tasks: usize = env_or("SOAK_TASKS", 32);
    let mut rng = Rng::seeded("SOAK_SEED");
    let bin = envoy_bin().expect("envoy");
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&gateway_config()).await;
    let envoy = Envoy::start(
        &bin,
        &EnvoySpec::default(),
        gateway.grpc_port,
        upstream.port,
    )
    .await;
    let tokens = Arc::new(Tokens::mint());
    let rss = || gateway.rss_kib().expect("the gateway runs");

    // Warm-up: every kind, every path through the gateway, then the baseline at rest.
    let warm = traffic(
        envoy.port,
        tasks,
        Duration::from_secs(2),
        tokens.clone(),
        &mut rng,
        "w",
    )
    .await;
    metrics_when_idle(gateway.admin_port).await;
    let baseline = rss();

    // Peak RSS, sampled while the traffic runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (sampling, peak, pid) = (sampling.clone(), peak.clone(), gateway.pid());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    let run = traffic(
        envoy.port,
        tasks,
        Duration::from_secs(secs),
        tokens.clone(),
        &mut rng,
        "s",
    )
    .await;
    let elapsed = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("sampler");

    // Streams close just after their responses: poll the gauge down to 0.
    let text = metrics_when_idle(gateway.admin_port).await;
    assert_eq!(metric(&text, "extproc_active_streams"), Some(0.0));
    // RSS back near the baseline (polled: the allocator returns memory lazily).
    let limit = baseline + RSS_SLACK_KIB.max((baseline as f64 * RSS_SLACK_SHARE) as u64);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = rss();
        if now <= limit || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let peak = peak.load(Ordering::Relaxed);
    let requests = run.requests();
    eprintln!(
        "soak: {secs} s, {tasks} clients: {requests} requests in {elapsed:.1?} = {:.0} req/s, {:.1} MiB of request bodies (largest {} bytes)",
        requests as f64 / elapsed.as_secs_f64(),
        run.body_bytes as f64 / MIB as f64,
        run.largest_body,
    );
    eprintln!("soak: per kind {:?}", run.per_kind);
    eprintln!(
        "soak: gateway RSS baseline {} MiB, peak {} MiB, after {} MiB (limit {} MiB)",
        baseline / 1024,
        peak / 1024,
        after / 1024,
        limit / 1024
    );
    eprintln!(
        "soak: unexpected statuses {}, cross-talk {}",
        run.status_count, run.content_count
    );

    for t in [&warm, &run] {
        assert_eq!(
            t.status_count, 0,
            "unexpected statuses: {:#?}",
            t.status_faults
        );
        assert_eq!(t.content_count, 0, "cross-talk: {:#?}", t.content_faults);
    }
    for (kind, _) in MIX {
        assert!(
            run.per_kind.get(&format!("{kind:?}")).copied().unwrap_or(0) > 0,
            "no {kind:?} request in the soak"
        );
    }
    assert!(run.largest_body == MIB, "no 1 MiB body in the soak");
    // Exactly the requests meant for the upstream reached it, each once.
    assert_eq!(upstream.hits(), warm.upstream_bound + run.upstream_bound);
    assert!(
        after <= limit,
        "RSS {after} KiB after the soak, baseline {baseline} KiB, limit {limit} KiB"
    );
    assert_eq!(envoy.ext_proc_stat("spurious_msgs_received").await, 0);
    assert_eq!(envoy.ext_proc_stat("streams_failed").await, 0);
    assert_eq!(envoy.ext_proc_stat("message_timeouts").await, 0);
    assert_eq!(envoy.ext_proc_stat("rejected_header_mutations").await, 0);
}
