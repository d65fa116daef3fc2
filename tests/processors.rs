//! `context_check`, `headers` and `instructions` through the in-process Driver.

use extproc_gateway::modes::BodyMode;
use extproc_gateway::prelude::*;
use extproc_gateway::processors::{
    ContextCheck, HeaderEdits, HeaderInstructions, HeadersSettings, StaticHeaders,
};
use extproc_gateway::testing::Driver;

fn driver<P: Processor>(p: P) -> Driver {
    Driver::new(Chain::builder().processor(p).build().unwrap())
}

const REQ: &[(&str, &str)] = &[(":method", "POST"), (":path", "/p?q=1")];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    REQ.iter().copied().chain(extra.iter().copied()).collect()
}

#[tokio::test]
async fn context_check_passes_matching_request_and_response() {
    let mut d = driver(ContextCheck);
    let a = d
        .request_headers(&with(&[("x-context-id", "id-7")]), false)
        .await
        .unwrap();
    assert_eq!(a.header("x-context-id"), Some("id-7"));
    let mode = a.mode_override.expect("mode override");
    assert_eq!(
        mode.request_body,
        BodyMode::Buffered,
        "buffered request body"
    );
    assert_eq!(
        mode.response_body,
        BodyMode::Buffered,
        "buffered response body"
    );
    let a = d.request_body("id-7", true).await.unwrap();
    assert!(a.immediate.is_none());
    d.response_headers(&[(":status", "200")], false)
        .await
        .unwrap();
    let a = d
        .response_body(r#"{"path":"/p?q=1","x":1}"#, true)
        .await
        .unwrap();
    assert!(a.immediate.is_none());
    assert_eq!(a.header("x-context-id"), Some("id-7"));
}

#[tokio::test]
async fn context_check_detects_cross_talk_in_either_direction() {
    let mut d = driver(ContextCheck);
    d.request_headers(&with(&[("x-context-id", "id-7")]), false)
        .await
        .unwrap();
    // Body split over chunks that do not add up to the id.
    d.request_body("id-", false).await.unwrap();
    let a = d.request_body("8", true).await.unwrap();
    let i = a.immediate.expect("500");
    assert_eq!(i.status, 500);
    assert!(String::from_utf8_lossy(&i.body).contains("request body does not equal"));

    let mut d = driver(ContextCheck);
    d.request_headers(&with(&[("x-context-id", "id-7")]), false)
        .await
        .unwrap();
    d.request_body("id-7", true).await.unwrap();
    d.response_headers(&[(":status", "200")], false)
        .await
        .unwrap();
    let a = d.response_body(r#"{"path":"/other"}"#, true).await.unwrap();
    let i = a.immediate.expect("500");
    assert_eq!(i.status, 500);
    assert!(String::from_utf8_lossy(&i.body).contains("path does not equal"));

    let mut d = driver(ContextCheck);
    d.request_headers(&with(&[("x-context-id", "id-7")]), false)
        .await
        .unwrap();
    d.request_body("id-7", true).await.unwrap();
    d.response_headers(&[(":status", "200")], false)
        .await
        .unwrap();
    let a = d.response_body("not json", true).await.unwrap();
    assert_eq!(a.immediate.expect("500").status, 500);
}

#[tokio::test]
async fn context_check_compares_no_body_on_a_get_but_still_checks_the_response() {
    // As the SDK's example: a GET has no request-body message, so nothing is
    // compared; the response's `path` is still checked and the id returned.
    let mut d = driver(ContextCheck);
    let a = d
        .request_headers(&with(&[("x-context-id", "ctx-42")]), true)
        .await
        .unwrap();
    assert!(a.immediate.is_none(), "{a:?}");
    assert_eq!(a.header("x-context-id"), Some("ctx-42"));
    d.response_headers(&[(":status", "200")], false)
        .await
        .unwrap();
    let a = d.response_body(r#"{"path":"/p?q=1"}"#, true).await.unwrap();
    assert!(a.immediate.is_none(), "{a:?}");
    assert_eq!(a.header("x-context-id"), Some("ctx-42"));

    let mut d = driver(ContextCheck);
    d.request_headers(&with(&[("x-context-id", "ctx-42")]), true)
        .await
        .unwrap();
    d.response_headers(&[(":status", "200")], false)
        .await
        .unwrap();
    let a = d
        .response_body(r#"{"path":"/elsewhere"}"#, true)
        .await
        .unwrap();
    assert_eq!(a.immediate.expect("500 on a wrong path").status, 500);
}

#[tokio::test]
async fn context_check_without_id_only_forwards_an_empty_header() {
    let mut d = driver(ContextCheck);
    let a = d.request_headers(REQ, false).await.unwrap();
    assert_eq!(a.header("x-context-id"), Some(""));
    let mode = a.mode_override.expect("mode override");
    assert_eq!(
        mode.request_body,
        BodyMode::None,
        "no body read without an id"
    );
    assert_eq!(mode.response_body, BodyMode::None);
}

#[tokio::test]
async fn headers_processor_sets_appends_and_removes_both_ways() {
    let settings = HeadersSettings {
        request: HeaderEdits {
            set: [("x-env".to_string(), "prod".to_string())].into(),
            append: [("via".to_string(), "gateway".to_string())].into(),
            remove: vec!["x-debug".into()],
        },
        response: HeaderEdits {
            set: [("x-frame-options".to_string(), "DENY".to_string())].into(),
            remove: vec!["server".into()],
            ..HeaderEdits::default()
        },
    };
    let mut d = driver(StaticHeaders::new(settings).unwrap());
    let a = d
        .request_headers(&with(&[("x-debug", "1"), ("x-env", "dev")]), true)
        .await
        .unwrap();
    assert_eq!(a.header("x-env"), Some("prod"));
    assert_eq!(a.header("via"), Some("gateway"));
    assert_eq!(a.removed, vec!["x-debug".to_string()]);
    let a = d
        .response_headers(&[(":status", "200"), ("server", "u")], true)
        .await
        .unwrap();
    assert_eq!(a.header("x-frame-options"), Some("DENY"));
    assert!(a.removed.contains(&"server".to_string()));
}

#[test]
fn headers_processor_rejects_bad_names_and_values() {
    let mut s = HeadersSettings::default();
    s.request.set = [("bad name".to_string(), "v".to_string())].into();
    assert!(StaticHeaders::new(s)
        .unwrap_err()
        .contains("not a valid header name"));
    let mut s = HeadersSettings::default();
    s.response.append = [("x-a".to_string(), "a\r\nb".to_string())].into();
    assert!(StaticHeaders::new(s)
        .unwrap_err()
        .contains("control character"));
    let e = extproc_gateway::config::GatewayConfig::parse(
        "routes:\n  - name: r\n    processors:\n      - headers: {request: {set: {'a b': x}}}\n",
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("line 4"), "{e}");
    assert!(e.contains("not a valid header name"), "{e}");
}

#[tokio::test]
async fn instructions_apply_to_the_upstream_request() {
    let mut d = driver(HeaderInstructions);
    let json = r#"{"addHeaders": {"x-a": "1", "x-b": "2"}, "removeHeaders": ["x-c"]}"#;
    let a = d
        .request_headers(&with(&[("instructions", json), ("x-c", "gone")]), true)
        .await
        .unwrap();
    assert!(a.immediate.is_none());
    assert_eq!(a.header("x-a"), Some("1"));
    assert_eq!(a.header("x-b"), Some("2"));
    assert_eq!(a.removed, vec!["x-c".to_string()]);
    // No instructions header: nothing changes.
    let mut d = driver(HeaderInstructions);
    let a = d.request_headers(REQ, true).await.unwrap();
    assert!(a.set.is_empty() && a.removed.is_empty() && a.immediate.is_none());
}

#[tokio::test]
async fn malformed_instructions_get_400_with_a_clear_reason() {
    for (json, expect) in [
        ("{not json", "invalid instructions header"),
        (r#"{"addHeaders": ["x"]}"#, "invalid instructions header"),
        (r#"{"addHeaders": {"bad name": "v"}}"#, "not a header name"),
        (r#"{"addHeaders": {"x": "v"}, "extra": 1}"#, "unknown field"),
    ] {
        let mut d = driver(HeaderInstructions);
        let a = d
            .request_headers(&with(&[("instructions", json)]), true)
            .await
            .unwrap();
        let i = a.immediate.unwrap_or_else(|| panic!("no 400 for {json}"));
        assert_eq!(i.status, 400, "{json}");
        assert_eq!(i.header("content-type"), Some("application/json"));
        let body = String::from_utf8_lossy(&i.body);
        assert!(body.contains(expect), "{json}: {body}");
    }
}

#[tokio::test]
async fn instructions_a_header_cannot_carry_get_400_naming_the_header() {
    for (json, expect) in [
        (
            r#"{"addHeaders": {"x-ok": "1", "x-ctl": "a\u0001b"}}"#,
            "value of `x-ctl` contains a control character",
        ),
        (
            r#"{"addHeaders": {"x-del": "a\u007fb"}}"#,
            "value of `x-del` contains a control character",
        ),
        (
            r#"{"addHeaders": {"x-crlf": "a\r\nInjected: 1"}}"#,
            "value of `x-crlf` contains a control character",
        ),
        (
            r#"{"addHeaders": {":path": "/admin"}}"#,
            "`:path` is not a header name",
        ),
        (r#"{"addHeaders": {"": "v"}}"#, "`` is not a header name"),
        (
            r#"{"addHeaders": {"x-é": "v"}}"#,
            "`x-é` is not a header name",
        ),
        (
            r#"{"removeHeaders": ["x-fine", "bad\u0000name"]}"#,
            "`bad\\0name` is not a header name",
        ),
    ] {
        let mut d = driver(HeaderInstructions);
        let a = d
            .request_headers(&with(&[("instructions", json)]), true)
            .await
            .unwrap();
        let i = a.immediate.unwrap_or_else(|| panic!("no 400 for {json}"));
        assert_eq!(i.status, 400, "{json}");
        let body: serde_json::Value = serde_json::from_slice(&i.body).unwrap();
        let reason = body["error"].as_str().unwrap();
        assert!(reason.contains(expect), "{json}: {reason}");
    }
    // A tab, spaces and UTF-8 are fine in a value; names are lower-cased.
    let mut d = driver(HeaderInstructions);
    let json = r#"{"addHeaders": {"X-Tab": "a\tb c", "x-utf8": "é"}}"#;
    let a = d
        .request_headers(&with(&[("instructions", json)]), true)
        .await
        .unwrap();
    assert!(a.immediate.is_none(), "{:?}", a.immediate);
    assert_eq!(a.header("x-tab"), Some("a\tb c"));
    assert_eq!(a.header("x-utf8"), Some("é"));
}

#[tokio::test]
async fn built_in_processors_never_copy_an_invalid_client_value() {
    use extproc_gateway::processors::{Echo, Trivial};
    // Envoy never forwards such values, but the gateway does not rely on it: a value
    // a header cannot carry is left out, never emitted.
    let mut d = driver(Trivial);
    let a = d
        .request_headers(&with(&[("x-request-id", "id\u{7f}")]), true)
        .await
        .unwrap();
    assert!(a.immediate.is_none());
    assert_eq!(a.header("x-extra-request-id"), None);

    let mut d = driver(ContextCheck);
    let a = d
        .request_headers(&with(&[("x-context-id", "a\u{1}b")]), true)
        .await
        .unwrap();
    assert_eq!(a.header("x-context-id"), None, "{:?}", a.set);

    // echo answers with the request's headers, minus the ones a reply cannot carry.
    let mut d = driver(Echo);
    let a = d
        .request_headers(
            &with(&[
                ("x-echo-only", "yes"),
                ("x-fine", "a\tb"),
                ("x-ctl", "a\u{0}b"),
                ("x-del", "\u{7f}"),
                ("bad name", "v"),
                ("X-Upper", "kept, lower-cased"),
            ]),
            true,
        )
        .await
        .unwrap();
    let i = a.immediate.expect("echo answers");
    assert_eq!(i.status, 200);
    assert_eq!(i.header("x-fine"), Some("a\tb"));
    assert_eq!(i.header("x-upper"), Some("kept, lower-cased"));
    for gone in ["x-ctl", "x-del", "bad name"] {
        assert_eq!(i.header(gone), None, "{gone}");
    }
}

#[test]
fn static_header_values_with_control_characters_are_refused_at_load() {
    for value in ["a\u{7f}", "a\u{1}b", "\u{1b}[31m"] {
        let mut s = HeadersSettings::default();
        s.request.set = [("x-a".to_string(), value.to_string())].into();
        let e = StaticHeaders::new(s).unwrap_err();
        assert!(
            e.contains("value of `x-a` contains a control character"),
            "{e}"
        );
    }
    let mut s = HeadersSettings::default();
    s.request.set = [("x-a".to_string(), "tab\tok".to_string())].into();
    assert!(StaticHeaders::new(s).is_ok());
}

#[tokio::test]
async fn streamed_bodies_are_bounded() {
    use extproc_gateway::processors::Echo;
    // echo gathers a streamed body to answer it: past its limit, 413.
    let mut d = driver(Echo);
    d.request_headers(&with(&[("x-echo-only", "yes")]), false)
        .await
        .unwrap();
    let chunk = vec![b'x'; 4 * 1024 * 1024];
    let mut last = None;
    for _ in 0..5 {
        let a = d.request_body(chunk.clone(), false).await.unwrap();
        if a.immediate.is_some() {
            last = a.immediate;
            break;
        }
        assert!(a.body_cleared, "held back from the upstream");
    }
    assert_eq!(last.expect("413").status, 413);

    // context_check reads the path of a streamed response only up to its limit.
    let mut d = driver(ContextCheck);
    d.request_headers(&with(&[("x-context-id", "i")]), false)
        .await
        .unwrap();
    d.request_body("i", true).await.unwrap();
    d.response_headers(&[(":status", "200")], false)
        .await
        .unwrap();
    let big = vec![b' '; 700 * 1024];
    d.response_body(big.clone(), false).await.unwrap();
    // Too large to read is not cross-talk: no 500, and the id is not confirmed.
    let a = d.response_body(big, false).await.unwrap();
    assert!(a.immediate.is_none(), "{a:?}");
    let a = d.response_body(r#"{"path":"/p?q=1"}"#, true).await.unwrap();
    assert!(a.immediate.is_none(), "{a:?}");
    assert_eq!(a.header("x-context-id"), None);
}
