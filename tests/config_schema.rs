//! The config's JSON Schema (`extproc-gateway schema`, shipped as
//! `docs/gateway.schema.json`): it is what the binary prints, every config the project
//! ships validates against it, and it refuses the mistakes the gateway refuses, each
//! checked both ways (the schema and the gateway agree).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use extproc_gateway::config::GatewayConfig;
use extproc_gateway::registry::Registry;
use serde_json::Value;

const SHIPPED: &str = "docs/gateway.schema.json";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn printed() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_extproc-gateway"))
        .arg("schema")
        .output()
        .expect("run extproc-gateway schema");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the schema is JSON")
}

#[test]
fn the_shipped_schema_is_what_the_binary_prints() {
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(SHIPPED)).expect("read the shipped schema"),
    )
    .expect("the shipped schema is JSON");
    assert!(
        shipped == printed(),
        "{SHIPPED} is stale: run `cargo run -- schema > {SHIPPED}`"
    );
    assert_eq!(shipped, GatewayConfig::json_schema(&Registry::builtin()));
    // Every built-in processor has its settings in it.
    let entry = &shipped["definitions"]["ProcessorEntry"]["oneOf"];
    let named: Vec<String> = entry
        .as_array()
        .expect("oneOf")
        .iter()
        .filter_map(|e| e["required"][0].as_str().map(str::to_string))
        .collect();
    let builtin: Vec<String> = Registry::builtin().names().map(str::to_string).collect();
    assert_eq!(named, builtin);
}

/// Every YAML file in the repository that is a gateway config (a map with `routes` or
/// `server`, not an Envoy bootstrap), but the custom binary's (its own schema:
/// tests/custom_binary.rs).
fn shipped_configs() -> Vec<PathBuf> {
    repo_files(&["examples/custom_processor"])
        .into_iter()
        .filter(|rel| rel.ends_with(".yaml") || rel.ends_with(".yml"))
        .map(|rel| root().join(rel))
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            serde_saphyr::from_str::<Value>(&text).is_ok_and(|doc| {
                (doc.get("routes").is_some() || doc.get("server").is_some())
                    && doc.get("static_resources").is_none()
            })
        })
        .collect()
}

#[test]
fn every_shipped_config_validates_against_the_schema() {
    let files = shipped_configs();
    let rel = |p: &Path| {
        p.strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let names: Vec<String> = files.iter().map(|p| rel(p)).collect();
    for must in [
        "src/config/default.yaml",
        "examples/jwt/gateway.yaml",
        "deploy/kubernetes/base/gateway.yaml",
        "deploy/kubernetes/istio/gateway.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "{must} not found among {names:?}"
        );
    }
    let texts: Vec<String> = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let errors = schema_errors(&printed(), &texts);
    for ((name, text), errs) in names.iter().zip(&texts).zip(errors) {
        assert!(errs.is_empty(), "{name} does not validate: {errs:#?}");
        // And the gateway loads it (the schema is not looser than a config that works).
        let dir = root().join(name);
        let loaded = extproc_gateway::registry::Registry::builtin()
            .scope(|| GatewayConfig::parse(text, name));
        assert!(
            loaded.is_ok(),
            "{name} validates but does not load: {:?} ({})",
            loaded.err(),
            dir.display()
        );
    }
}

#[test]
fn the_schema_refuses_what_the_gateway_refuses() {
    let route = |processors: &str| format!("routes:\n  - name: r\n    processors: {processors}\n");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a misspelt key",
            "server:\n  drain_dealy: 5s\n".into(),
            "drain_dealy",
        ),
        (
            "a duration without a unit",
            "server:\n  drain_delay: 5\n".into(),
            "drain_delay",
        ),
        (
            "a duration in words",
            "server:\n  shutdown_grace: ten seconds\n".into(),
            "shutdown_grace",
        ),
        (
            "an address without a port",
            "server:\n  grpc_addr: localhost\n".into(),
            "grpc_addr",
        ),
        ("an unknown processor", route("[trivail]"), "processors/0"),
        (
            "two processors in one entry",
            route("[{trivial: {}, timer: {}}]"),
            "processors/0",
        ),
        (
            "a processor's misspelt setting",
            route("[{digest: {bodymode: streamed}}]"),
            "processors/0",
        ),
        (
            "a processor's unknown mode",
            route("[{digest: {body_mode: chunked}}]"),
            "processors/0",
        ),
        (
            "an unknown on_error",
            route("[{trivial: {}, on_error: maybe}]"),
            "processors/0",
        ),
        (
            "a route without a name",
            "routes:\n  - processors: [trivial]\n".into(),
            "routes/0",
        ),
        (
            "a misspelt match key",
            "routes:\n  - name: r\n    match: {path_prefx: /api}\n".into(),
            "routes/0/match",
        ),
        (
            "a wrong escaped-slashes action",
            "path_policy:\n  path_with_escaped_slashes_action: IGNORE\n".into(),
            "path_policy",
        ),
    ];
    let texts: Vec<String> = cases.iter().map(|(_, t, _)| t.clone()).collect();
    let errors = schema_errors(&printed(), &texts);
    for ((what, text, at), errs) in cases.iter().zip(errors) {
        assert!(!errs.is_empty(), "the schema accepts {what}:\n{text}");
        assert!(
            errs.iter().any(|e| e.contains(at)),
            "{what}: no error at {at}: {errs:#?}"
        );
        let loaded = Registry::builtin().scope(|| GatewayConfig::parse(text, "bad.yaml"));
        assert!(
            loaded.is_err(),
            "the gateway loads {what}, which the schema refuses:\n{text}"
        );
    }
}
