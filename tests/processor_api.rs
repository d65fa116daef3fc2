//! The processor API: hooks that fail go through the entry's failure policy, state is
//! made by the processor, chain-wide options apply whatever the order of the calls, a
//! hook `needs()` leaves out is refused, and a user's processor registers and is named
//! in YAML like a built-in.

use std::time::Duration;

use extproc_gateway::config::GatewayConfig;
use extproc_gateway::metrics::Metrics;
use extproc_gateway::prelude::*;
use extproc_gateway::processors::Trivial;
use extproc_gateway::registry::{ProcessorSpec, Registry, RegistryError};
use extproc_gateway::testing::Driver;
use serde::{Deserialize, Serialize};

const GET: [(&str, &str); 3] = [(":method", "GET"), (":path", "/"), ("x-request-id", "r1")];

/// What [`Flaky`] does at request headers.
#[derive(Clone, Copy)]
enum Fault {
    Error,
    Unavailable,
    Panic,
    Slow,
}

/// Fails at request headers as told; marks the response if it ever sees it.
struct Flaky(Fault);

impl Processor for Flaky {
    type State = ();

    fn name(&self) -> &str {
        "flaky"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds::HEADERS
    }

    fn new_state(&self) {}

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        out.set("x-flaky", "wrote before failing");
        match self.0 {
            Fault::Error => Err(ProcessorError::new("policy db said no: secret detail")),
            Fault::Unavailable => Err(ProcessorError::unavailable("policy db down")),
            Fault::Panic => panic!("flaky panics"),
            Fault::Slow => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Flow::Continue)
            }
        }
    }

    async fn on_response_headers(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        out.set("x-flaky-saw-response", "yes");
        Ok(Flow::Continue)
    }
}

fn metric_line(metrics: &Metrics, name: &str, labels: &str) -> Option<f64> {
    let text = metrics.render();
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn first_answer(chain: Chain) -> extproc_gateway::testing::Answer {
    let mut envoy = Driver::new(chain);
    envoy.request_headers(&GET, true).await.expect("answered")
}

#[tokio::test]
async fn an_error_fails_closed_with_500_naming_the_processor_not_the_detail() {
    let metrics = Metrics::new();
    let chain = Chain::builder()
        .processor(Flaky(Fault::Error))
        .processor(Trivial)
        .observe(&metrics, "r")
        .build()
        .unwrap();
    let answer = first_answer(chain).await;
    let immediate = answer.immediate.expect("an immediate response");
    assert_eq!(immediate.status, 500);
    let body = String::from_utf8_lossy(&immediate.body);
    assert!(body.contains("processor flaky failed"), "{body}");
    assert!(
        !body.contains("secret detail"),
        "the error text stays in the log: {body}"
    );
    assert_eq!(
        metric_line(
            &metrics,
            "extproc_processor_errors_total",
            r#"kind="error",processor="flaky",route="r""#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_unavailable_dependency_fails_closed_with_503() {
    let chain = Chain::builder()
        .processor(Flaky(Fault::Unavailable))
        .build()
        .unwrap();
    let immediate = first_answer(chain).await.immediate.expect("immediate");
    assert_eq!(immediate.status, 503);
    assert!(String::from_utf8_lossy(&immediate.body).contains("processor flaky unavailable"));
}

/// Fails open at request headers: the rest of the chain runs, the failing processor's
/// own writes are dropped, and it is left out of the rest of the request.
async fn fails_open(fault: Fault, kind: &str) {
    let metrics = Metrics::new();
    let chain = Chain::builder()
        .processor_with(
            Flaky(fault),
            ProcessorOptions::new().on_error(OnError::FailOpen),
        )
        .processor(Trivial)
        .observe(&metrics, "r")
        .processor_timeout(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    let answer = envoy.request_headers(&GET, true).await.expect("answered");
    assert!(answer.immediate.is_none(), "{answer:?}");
    assert_eq!(
        answer.header("x-extra-request-id"),
        Some("r1"),
        "trivial ran"
    );
    assert_eq!(
        answer.header("x-flaky"),
        None,
        "a failed hook's writes are dropped"
    );
    let response = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .expect("answered");
    assert_eq!(response.header("x-flaky-saw-response"), None);
    assert_eq!(response.header("x-ext-procs-applied"), Some("trivial"));
    let labels = format!(r#"kind="{kind}",processor="flaky",route="r""#);
    assert_eq!(
        metric_line(&metrics, "extproc_processor_errors_total", &labels),
        Some(1.0)
    );
    assert_eq!(
        metric_line(
            &metrics,
            "extproc_processor_skipped_total",
            r#"processor="flaky",reason="failed_open",route="r""#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_error_fails_open_when_the_entry_says_so() {
    fails_open(Fault::Error, "error").await;
}

#[tokio::test]
async fn a_panic_fails_open_when_the_entry_says_so() {
    fails_open(Fault::Panic, "panic").await;
}

#[tokio::test]
async fn a_timeout_set_after_the_processor_still_bounds_it() {
    // processor_timeout() is called after the processor is added (in fails_open):
    // without it the slow hook would take 5 s and the test would time out.
    tokio::time::timeout(Duration::from_secs(3), fails_open(Fault::Slow, "timeout"))
        .await
        .expect("the chain-wide timeout applied to a processor added before it");
    let chain = Chain::builder()
        .processor(Flaky(Fault::Slow))
        .processor_timeout(Some(Duration::from_millis(50)))
        .build()
        .unwrap();
    let immediate = first_answer(chain).await.immediate.expect("immediate");
    assert_eq!(immediate.status, 504);
}

/// Counts down from its configured budget across phases, in state made from its
/// settings.
struct Countdown {
    start: u32,
}

struct Left(u32);

impl Processor for Countdown {
    type State = Left;

    fn name(&self) -> &str {
        "countdown"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds::HEADERS
    }

    fn new_state(&self) -> Left {
        Left(self.start)
    }

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        left: &mut Left,
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        left.0 -= 1;
        out.set("x-left", left.0.to_string());
        Ok(Flow::Continue)
    }

    async fn on_response_headers(
        &self,
        _: &mut RequestCtx,
        left: &mut Left,
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        left.0 -= 1;
        out.set("x-left", left.0.to_string());
        Ok(Flow::Continue)
    }
}

#[tokio::test]
async fn state_starts_from_the_processors_settings_and_lives_across_phases() {
    let chain = Chain::builder()
        .processor(Countdown { start: 10 })
        .build()
        .unwrap();
    for _ in 0..2 {
        // A new stream gets a new state.
        let mut envoy = Driver::new(chain.clone());
        let req = envoy.request_headers(&GET, true).await.unwrap();
        assert_eq!(req.header("x-left"), Some("9"));
        let resp = envoy
            .response_headers(&[(":status", "200")], true)
            .await
            .unwrap();
        assert_eq!(resp.header("x-left"), Some("8"));
    }
}

/// Declares request headers only, but writes a response-body hook.
struct Undeclared {
    handled: bool,
}

impl Processor for Undeclared {
    type State = ();

    fn name(&self) -> &str {
        "undeclared"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds::REQUEST_HEADERS
    }

    fn new_state(&self) {}

    async fn on_response_body(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        _: &BodyPhase,
        _: &mut Mutations,
    ) -> HookResult {
        if !self.handled {
            return unhandled();
        }
        Ok(Flow::Continue)
    }
}

#[test]
fn a_hook_needs_leaves_out_is_refused_when_the_chain_is_built() {
    let err = Chain::builder()
        .processor(Undeclared { handled: true })
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        ChainError::UndeclaredHook {
            processor: "undeclared".into(),
            phase: "response_body",
        }
    );
    assert!(err.to_string().contains("would never be called"), "{err}");
    // A hook that declines the phase, as the default does, agrees with needs().
    assert!(Chain::builder()
        .processor(Undeclared { handled: false })
        .build()
        .is_ok());
}

// ---------------------------------------------------------------------------------
// A user's processor in the registry

/// `- require_tenant: {header: x-tenant-id}`: refuses requests without the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RequireTenant {
    header: String,
    #[serde(default = "default_status")]
    status: u16,
}

fn default_status() -> u16 {
    400
}

impl Processor for RequireTenant {
    type State = ();

    fn name(&self) -> &str {
        "require_tenant"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds::REQUEST_HEADERS
    }

    fn new_state(&self) {}

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        h: &HeadersPhase,
        _: &mut Mutations,
    ) -> HookResult {
        Ok(match h.headers.get(&self.header) {
            Some(_) => Flow::Continue,
            None => Flow::Respond(ImmediateResponse::json_error(self.status, "no tenant")),
        })
    }
}

impl ProcessorSettings for RequireTenant {
    type Processor = RequireTenant;

    fn build(&self, _: &BuildContext<'_>) -> Result<RequireTenant, String> {
        Ok(self.clone())
    }

    fn validate(&self) -> Result<(), String> {
        if (400..600).contains(&self.status) {
            Ok(())
        } else {
            Err(format!("status {} is not an error status", self.status))
        }
    }
}

fn registry() -> Registry {
    Registry::builtin()
        .with::<RequireTenant>("require_tenant")
        .expect("registers")
}

const CONFIG: &str = "\
routes:
  - name: api
    processors:
      - require_tenant: {header: x-tenant-id, status: 403}
        on_error: fail_open
      - trivial
";

#[tokio::test]
async fn a_registered_processor_is_named_in_yaml_like_a_built_in() {
    let config = GatewayConfig::parse_with(&registry(), CONFIG, "t.yaml").expect("loads");
    let entry = &config.routes[0].processors[0];
    assert_eq!(entry.name(), "require_tenant");
    assert_eq!(entry.on_error(), OnError::FailOpen);
    assert_eq!(
        *entry,
        ProcessorSpec::new(
            "require_tenant",
            RequireTenant {
                header: "x-tenant-id".into(),
                status: 403
            }
        )
        .with_on_error(OnError::FailOpen)
    );
    let router = config.build_router().expect("builds");
    assert_eq!(
        router.routes()[0].summary().processors,
        vec!["require_tenant".to_string(), "trivial".to_string()]
    );
    let mut envoy = Driver::with_router(router);
    let answer = envoy.request_headers(&GET, true).await.unwrap();
    assert_eq!(answer.immediate.map(|i| i.status), Some(403));

    // What /config shows loads again with the same registry.
    let shown = config.to_redacted_yaml();
    assert!(shown.contains("require_tenant"), "{shown}");
    let again = GatewayConfig::parse_with(&registry(), &shown, "shown.yaml")
        .unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert_eq!(again.routes[0].processors, config.routes[0].processors);
}

#[test]
fn a_registered_processors_settings_errors_carry_their_line() {
    let bad_field = CONFIG.replace("status: 403", "colour: red");
    let e = GatewayConfig::parse_with(&registry(), &bad_field, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t.yaml: line 4 "), "{e}");
    assert!(e.contains("unknown field `colour`"), "{e}");

    let invalid = CONFIG.replace("status: 403", "status: 200");
    let e = GatewayConfig::parse_with(&registry(), &invalid, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 4"), "{e}");
    assert!(e.contains("status 200 is not an error status"), "{e}");

    // Without the registration, the name is unknown, and the message lists what is.
    let e = GatewayConfig::parse(CONFIG, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 4"), "{e}");
    assert!(
        e.contains("unknown processor `require_tenant`; registered: context_check"),
        "{e}"
    );

    let bad_policy = CONFIG.replace("fail_open", "fail_sideways");
    let e = GatewayConfig::parse_with(&registry(), &bad_policy, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 5"), "{e}");
    assert!(e.contains("fail_sideways"), "{e}");
}

#[test]
fn the_registry_refuses_clashing_and_unusable_names() {
    assert_eq!(
        Registry::builtin()
            .with::<RequireTenant>("trivial")
            .unwrap_err(),
        RegistryError::Duplicate("trivial".into())
    );
    for bad in ["", "Require", "on_error", "when", "9lives", "a-b"] {
        assert_eq!(
            Registry::builtin().with::<RequireTenant>(bad).unwrap_err(),
            RegistryError::BadName(bad.into()),
            "{bad:?}"
        );
    }
    let names: Vec<String> = registry().names().map(String::from).collect();
    assert!(names.contains(&"require_tenant".to_string()));
    assert!(names.contains(&"jwt_auth".to_string()));
}

/// The built-ins, registered by their own crate through the same registry.
mod builtins {
    use extproc_gateway::processors::{DigestBodyMode, DigestSettings};
    use extproc_gateway::registry::{ProcessorSpec, Registry};

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
                DigestSettings {
                    body_mode: DigestBodyMode::Streamed
                }
            )
        );
        assert_ne!(
            specs[1],
            ProcessorSpec::new("digest", DigestSettings::default())
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
