//! A gateway binary with a processor of its own: `tenant_quota`, registered next to the
//! built-ins and configured in YAML like them, served by the same command line.
//!
//! `tenant_quota` asks a policy service how many request-body bytes a tenant may send
//! (`GET {policy_url}{tenant}` answering `{"max_body_bytes": N}`), counts the body as
//! it streams and refuses it with 413 past the quota; the response tells the client
//! what it sent. An unknown tenant gets 403. When the policy service is down or slow,
//! the hook returns an error and the entry's `on_error` decides: `fail_closed` (503)
//! or `fail_open` (the request goes on without a quota).
//!
//! Try it (a directory of JSON files is a policy service):
//!
//! ```text
//! python3 -m http.server 9000 --bind 127.0.0.1 --directory examples/custom_processor/tenants &
//! cargo run --example custom_processor -- -c examples/custom_processor/gateway.yaml
//! cargo run --example custom_processor -- check-config examples/custom_processor/gateway.yaml
//! ```
//!
//! and point Envoy at 127.0.0.1:50051 with `envoy.yaml` (request body STREAMED, or
//! `allow_mode_override: true`). `/config`, `/routes`, `/metrics` and SIGHUP reload
//! work for `tenant_quota` as for any built-in.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use extproc_gateway::prelude::*;
use extproc_gateway::registry::{Registry, RegistryError};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// The settings under `- tenant_quota:` in YAML. `JsonSchema` puts them in the schema
/// `tenant-gateway schema` prints, so editors check them too (the `crate` path spares
/// this binary its own schemars dependency).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "extproc_gateway::schemars")]
pub struct TenantQuotaSettings {
    /// The request header naming the tenant.
    #[serde(default = "default_header")]
    pub header: String,
    /// Where tenants' policies are: the tenant's name is appended (`http://` only).
    pub policy_url: String,
    /// How long the policy service may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "extproc_gateway::registry::duration_schema")]
    pub timeout: Duration,
}

fn default_header() -> String {
    "x-tenant-id".into()
}

fn default_timeout() -> Duration {
    Duration::from_millis(200)
}

impl ProcessorSettings for TenantQuotaSettings {
    type Processor = TenantQuota;

    fn build(&self, _: &BuildContext<'_>) -> Result<TenantQuota, String> {
        Ok(TenantQuota {
            settings: self.clone(),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        })
    }

    /// Checked while the YAML is read, so a mistake is reported with its line.
    fn validate(&self) -> Result<(), String> {
        if !self.policy_url.starts_with("http://") {
            return Err(format!(
                "policy_url `{}` must start with http://",
                self.policy_url
            ));
        }
        if self.timeout.is_zero() {
            return Err("timeout must be longer than zero".into());
        }
        Ok(())
    }
}

/// What the policy service says about one tenant.
#[derive(Debug, Deserialize)]
struct Policy {
    max_body_bytes: u64,
}

/// See the module documentation.
pub struct TenantQuota {
    settings: TenantQuotaSettings,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// Per-request state, typed: the tenant's quota and what the body used of it.
#[derive(Debug)]
pub struct Usage {
    quota: Option<u64>,
    sent: u64,
}

impl TenantQuota {
    /// Asks the policy service; `Ok(None)` for a tenant it does not know.
    async fn policy(&self, tenant: &str) -> Result<Option<Policy>, ProcessorError> {
        let uri: http::Uri = format!("{}{tenant}", self.settings.policy_url)
            .parse()
            .map_err(|e| ProcessorError::new(format!("policy URL for `{tenant}`: {e}")))?;
        let call = async {
            let response = self
                .client
                .get(uri)
                .await
                .map_err(|e| ProcessorError::unavailable(format!("policy service: {e}")))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|e| ProcessorError::unavailable(format!("policy service: {e}")))?
                .to_bytes();
            match status.as_u16() {
                200 => Ok(Some(serde_json::from_slice::<Policy>(&body)?)),
                404 => Ok(None),
                other => Err(ProcessorError::unavailable(format!(
                    "policy service answered {other}"
                ))),
            }
        };
        tokio::time::timeout(self.settings.timeout, call)
            .await
            .map_err(|_| ProcessorError::unavailable("policy service timed out"))?
    }
}

impl Processor for TenantQuota {
    type State = Usage;

    fn name(&self) -> &str {
        "tenant_quota"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds {
            request_headers: true,
            // Counted chunk by chunk: no need to hold the body.
            request_body: BodyNeed::Streamed,
            response_headers: true,
            ..PhaseNeeds::NONE
        }
    }

    fn new_state(&self) -> Usage {
        Usage {
            quota: None,
            sent: 0,
        }
    }

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        usage: &mut Usage,
        h: &HeadersPhase,
        _: &mut Mutations,
    ) -> HookResult {
        let Some(tenant) = h.headers.get_str(&self.settings.header) else {
            return Ok(Flow::Respond(ImmediateResponse::json_error(
                400,
                "a tenant header is required",
            )));
        };
        if tenant.is_empty()
            || !tenant
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Ok(Flow::Respond(ImmediateResponse::json_error(
                400,
                "bad tenant",
            )));
        }
        match self.policy(tenant).await? {
            Some(policy) => usage.quota = Some(policy.max_body_bytes),
            None => {
                return Ok(Flow::Respond(ImmediateResponse::json_error(
                    403,
                    "unknown tenant",
                )))
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_request_body(
        &self,
        _: &mut RequestCtx,
        usage: &mut Usage,
        body: &BodyPhase,
        _: &mut Mutations,
    ) -> HookResult {
        usage.sent += body.chunk.len() as u64;
        match usage.quota {
            Some(quota) if usage.sent > quota => Ok(Flow::Respond(ImmediateResponse::json_error(
                413,
                "over the tenant's body quota",
            ))),
            _ => Ok(Flow::Continue),
        }
    }

    async fn on_response_headers(
        &self,
        _: &mut RequestCtx,
        usage: &mut Usage,
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        out.set("x-tenant-bytes", usage.sent.to_string());
        Ok(Flow::Continue)
    }
}

/// The built-ins plus `tenant_quota`.
pub fn registry() -> Result<Registry, RegistryError> {
    Registry::builtin().with::<TenantQuotaSettings>("tenant_quota")
}

fn main() -> Result<ExitCode, RegistryError> {
    Ok(extproc_gateway::cli::run(registry()?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use extproc_gateway::config::GatewayConfig;
    use extproc_gateway::testing::Driver;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A policy service on a free port: `acme` may send `quota` bytes, `slow` never
    /// answers in time, `broken` gets a 500, everyone else is unknown. Its URL ends
    /// in `/tenants/`.
    pub(crate) async fn policy_service(quota: u64) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).to_string();
                    let (status, body) = if request.starts_with("GET /tenants/acme ") {
                        ("200 OK", format!("{{\"max_body_bytes\": {quota}}}"))
                    } else if request.starts_with("GET /tenants/broken ") {
                        ("500 Internal Server Error", String::new())
                    } else if request.starts_with("GET /tenants/slow ") {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        ("200 OK", "{}".to_string())
                    } else {
                        ("404 Not Found", String::new())
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/tenants/")
    }

    fn driver(policy_url: &str, on_error: &str) -> Driver {
        let yaml = format!(
            "routes:\n  - name: api\n    processors:\n      - tenant_quota: {{policy_url: '{policy_url}', timeout: 100ms}}\n        on_error: {on_error}\n      - trivial\n"
        );
        let config = GatewayConfig::parse_with(&registry().unwrap(), &yaml, "test.yaml")
            .unwrap_or_else(|e| panic!("{e}"));
        Driver::with_router(config.build_router().unwrap())
    }

    fn request(tenant: &str) -> Vec<(&str, &str)> {
        vec![
            (":method", "POST"),
            (":path", "/upload"),
            ("x-tenant-id", tenant),
            ("x-request-id", "r1"),
        ]
    }

    #[tokio::test]
    async fn a_known_tenant_within_quota_goes_through_and_sees_its_usage() {
        let mut envoy = driver(&policy_service(8).await, "fail_closed");
        let answer = envoy
            .request_headers(&request("acme"), false)
            .await
            .unwrap();
        assert!(answer.immediate.is_none(), "{answer:?}");
        let body = envoy
            .request_body(Bytes::from_static(b"12345"), false)
            .await
            .unwrap();
        assert!(body.immediate.is_none());
        envoy
            .request_body(Bytes::from_static(b"678"), true)
            .await
            .unwrap();
        let response = envoy
            .response_headers(&[(":status", "200")], true)
            .await
            .unwrap();
        assert_eq!(response.header("x-tenant-bytes"), Some("8"));
    }

    #[tokio::test]
    async fn a_body_over_the_quota_gets_413() {
        let mut envoy = driver(&policy_service(8).await, "fail_closed");
        envoy
            .request_headers(&request("acme"), false)
            .await
            .unwrap();
        let answer = envoy
            .request_body(Bytes::from_static(b"123456789"), true)
            .await
            .unwrap();
        assert_eq!(answer.immediate.map(|i| i.status), Some(413));
    }

    #[tokio::test]
    async fn an_unknown_tenant_gets_403() {
        let mut envoy = driver(&policy_service(8).await, "fail_closed");
        let answer = envoy
            .request_headers(&request("nobody"), false)
            .await
            .unwrap();
        assert_eq!(answer.immediate.map(|i| i.status), Some(403));
    }

    #[tokio::test]
    async fn a_slow_policy_service_fails_closed_with_503_or_open_as_configured() {
        let url = policy_service(8).await;
        let answer = driver(&url, "fail_closed")
            .request_headers(&request("slow"), false)
            .await
            .unwrap();
        assert_eq!(answer.immediate.map(|i| i.status), Some(503));

        let mut envoy = driver(&url, "fail_open");
        let answer = envoy
            .request_headers(&request("slow"), false)
            .await
            .unwrap();
        assert!(answer.immediate.is_none(), "{answer:?}");
        assert_eq!(
            answer.header("x-extra-request-id"),
            Some("r1"),
            "trivial ran"
        );
        // Skipped for the rest of the request: no quota, no usage header.
        envoy
            .request_body(Bytes::from_static(b"123456789"), true)
            .await
            .unwrap();
        let response = envoy
            .response_headers(&[(":status", "200")], true)
            .await
            .unwrap();
        assert_eq!(response.header("x-tenant-bytes"), None);
    }

    #[test]
    fn settings_mistakes_are_config_errors_with_a_line() {
        let yaml = "routes:\n  - name: api\n    processors:\n      - tenant_quota: {policy_url: 'ftp://x/'}\n";
        let e = GatewayConfig::parse_with(&registry().unwrap(), yaml, "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("must start with http://"), "{e}");
    }
}
