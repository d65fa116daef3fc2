//! The built-in dashboard in a real browser: real Envoy, the gateway binary and the
//! echo upstream carry real traffic while headless Chromium renders
//! `http://127.0.0.1:{admin}/dashboard`; the rendered DOM must show non-zero rates,
//! percentiles and counts for every route, phase and processor that saw traffic.
//!
//! Chromium runs with `--virtual-time-budget`: its clock (timers and `Date.now()`) is
//! virtual and only pauses while a fetch is pending, so the page's 2 s polls happen
//! in a fraction of real time. Traffic therefore keeps flowing while Chromium runs,
//! so that the difference between two polls (what the page shows) is not empty.
//!
//! `UPDATE_SCREENSHOT=1` also copies the screenshot to `docs/dashboard.png`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const GATEWAY: &str = r#"
routes:
  - name: api
    match: {path_prefix: /api}
    processors: [trivial, digest]
  - name: echo
    match: {path_prefix: /echo}
    processors: [trivial, echo]
  - name: default
    processors: [trivial, timer]
"#;

/// Chromium: `CHROMIUM_BIN`, else `/usr/bin/chromium`; panics when there is none.
fn chromium_bin() -> Option<PathBuf> {
    let bin = std::env::var("CHROMIUM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/bin/chromium"));
    if bin.exists() {
        return Some(bin);
    }
    // A missing Chromium fails the test, never skips it.
    panic!(
        "Chromium is required at {}: apt-get install -y chromium (or set CHROMIUM_BIN)",
        bin.display()
    );
}

/// Runs headless Chromium on `url` with extra arguments; returns its stdout.
async fn chromium(bin: &Path, profile: &Path, url: String, extra: Vec<String>) -> String {
    let bin = bin.to_path_buf();
    let profile = profile.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-quic",
                "--no-first-run",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                // Five polls of the page's 2 s timer, in virtual time.
                "--virtual-time-budget=8000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(&extra)
            .arg(&url)
            .current_dir(&profile)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        // Both pipes are read while it runs: a page larger than a pipe's buffer
        // (64 KiB) would otherwise block Chromium on its write, and this wait forever.
        fn drain(
            pipe: Option<impl std::io::Read + Send + 'static>,
        ) -> std::thread::JoinHandle<String> {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut out);
                }
                String::from_utf8_lossy(&out).into_owned()
            })
        }
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            match child.try_wait().expect("chromium wait") {
                Some(status) => break status,
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "chromium timed out on {url}:\n{}",
                        stderr.join().unwrap_or_default()
                    );
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let stdout = stdout.join().unwrap_or_default();
        assert!(
            status.success(),
            "chromium failed ({status}) on {url}:\n{}",
            stderr.join().unwrap_or_default()
        );
        stdout
    })
    .await
    .expect("chromium task")
}

/// One figure of the rendered page: its `data-*` attributes and its text.
#[derive(Debug)]
struct Cell {
    attrs: BTreeMap<String, String>,
    text: String,
}

impl Cell {
    fn value(&self) -> f64 {
        self.attrs
            .get("value")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric data-value: {self:?}"))
    }
}

fn cells(dom: &str) -> Vec<Cell> {
    let td = regex::Regex::new(r#"(?s)<td([^>]*)>(.*?)</td>"#).unwrap();
    let attr = regex::Regex::new(r#"data-([a-z_]+)="([^"]*)""#).unwrap();
    td.captures_iter(dom)
        .map(|c| Cell {
            attrs: attr
                .captures_iter(&c[1])
                .map(|a| (a[1].to_string(), a[2].replace("&amp;", "&")))
                .collect(),
            text: c[2].trim().to_string(),
        })
        .collect()
}

/// The figure whose `data-*` attributes are exactly `want` (plus `value`).
fn figure<'a>(cells: &'a [Cell], want: &[(&str, &str)]) -> Result<&'a Cell, String> {
    let found: Vec<&Cell> = cells
        .iter()
        .filter(|c| {
            c.attrs.len() == want.len() + 1
                && want
                    .iter()
                    .all(|(k, v)| c.attrs.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match found[..] {
        [one] => Ok(one),
        _ => Err(format!("figure {want:?}: found {found:?}")),
    }
}

/// What the rendered page got wrong, if anything.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    /// The figure is shown and above zero.
    fn positive(&mut self, cells: &[Cell], want: &[(&str, &str)]) {
        match figure(cells, want) {
            Ok(c) => self.check(
                c.value() > 0.0 && !c.text.is_empty() && c.text != "–" && c.text != "0",
                || format!("expected a non-zero figure for {want:?}, got {c:?}"),
            ),
            Err(e) => self.0.push(e),
        }
    }

    /// The figure is shown and zero.
    fn zero(&mut self, cells: &[Cell], want: &[(&str, &str)]) {
        match figure(cells, want) {
            Ok(c) => self.check(c.value() == 0.0, || {
                format!("expected 0 for {want:?}: {c:?}")
            }),
            Err(e) => self.0.push(e),
        }
    }
}

/// Checks a page rendered after traffic: non-zero figures for every route, phase and
/// processor that saw traffic.
fn problems(dom: &str) -> Vec<String> {
    let mut p = Problems::default();
    // Polled at least twice: figures are differences over a window, not totals.
    p.check(!dom.contains(">never<"), || "the page never polled".into());
    p.check(dom.contains("s of data)"), || "no second poll".into());
    p.check(!dom.contains("data-empty=\"true\""), || {
        "shows no traffic".into()
    });
    p.check(!dom.contains("Polling /api/snapshot failed"), || {
        "error banner".into()
    });
    let cells = cells(dom);
    for problem in chart_problems(dom).into_iter().chain(chain_problems(dom)) {
        p.0.push(problem);
    }

    // Per route: rate, stream percentiles, counts and outcomes.
    for route in ["api", "default", "echo"] {
        for metric in ["rate", "requests", "total", "p50", "p90", "p99"] {
            p.positive(&cells, &[("route", route), ("metric", metric)]);
        }
    }
    p.positive(&cells, &[("route", "api"), ("metric", "completed")]);
    p.positive(&cells, &[("route", "default"), ("metric", "completed")]);
    p.positive(
        &cells,
        &[("route", "echo"), ("metric", "immediate_response")],
    );
    for route in ["api", "default"] {
        p.zero(
            &cells,
            &[("route", route), ("metric", "immediate_response")],
        );
    }
    for route in ["api", "default", "echo"] {
        p.zero(&cells, &[("route", route), ("metric", "error")]);
        p.zero(&cells, &[("route", route), ("metric", "processor_errors")]);
    }
    p.positive(
        &cells,
        &[
            ("route", "echo"),
            ("processor", "echo"),
            ("status", "200"),
            ("metric", "count"),
        ],
    );

    // Per route and phase: message rate and percentiles.
    let phases: &[(&str, &[&str])] = &[
        (
            "api",
            &["request_headers", "request_body", "response_headers"],
        ),
        ("default", &["request_headers", "response_headers"]),
        ("echo", &["request_headers", "request_body"]),
    ];
    for (route, phases) in phases {
        for phase in *phases {
            for metric in ["rate", "messages", "p50", "p90", "p99"] {
                p.positive(
                    &cells,
                    &[("route", route), ("phase", phase), ("metric", metric)],
                );
            }
        }
    }

    // Per route, processor and phase.
    let processors: &[(&str, &str, &[&str])] = &[
        ("api", "trivial", &["request_headers", "response_headers"]),
        (
            "api",
            "digest",
            &["request_headers", "request_body", "response_headers"],
        ),
        (
            "default",
            "trivial",
            &["request_headers", "response_headers"],
        ),
        ("default", "timer", &["request_headers", "response_headers"]),
        ("echo", "trivial", &["request_headers"]),
        ("echo", "echo", &["request_headers", "request_body"]),
    ];
    for (route, processor, phases) in processors {
        for phase in *phases {
            for metric in ["rate", "calls", "p50", "p90", "p99"] {
                p.positive(
                    &cells,
                    &[
                        ("route", route),
                        ("processor", processor),
                        ("phase", phase),
                        ("metric", metric),
                    ],
                );
            }
        }
    }
    p.0
}

/// The charts' own data: the summary the page writes (`#chart-data`) of the arrays it
/// hands uPlot, per chart: points in the window, and per series its points, how many
/// are above zero and the largest.
fn chart_data(dom: &str) -> Option<serde_json::Value> {
    let start = dom.find(r#"id="chart-data">"#)? + r#"id="chart-data">"#.len();
    let end = start + dom[start..].find("</script>")?;
    serde_json::from_str(&dom[start..end]).ok()
}

/// Every chart holds points for the traffic the test sent, drawn by uPlot.
fn chart_problems(dom: &str) -> Vec<String> {
    let Some(data) = chart_data(dom) else {
        return vec!["no #chart-data on the page".into()];
    };
    let mut problems = Vec::new();
    let processor_series: Vec<String> = [
        (
            "api",
            "trivial",
            &["request headers", "response headers"][..],
        ),
        (
            "api",
            "digest",
            &["request headers", "request body", "response headers"][..],
        ),
        (
            "default",
            "trivial",
            &["request headers", "response headers"][..],
        ),
        (
            "default",
            "timer",
            &["request headers", "response headers"][..],
        ),
        ("echo", "echo", &["request headers", "request body"][..]),
    ]
    .iter()
    .flat_map(|(r, p, phases)| phases.iter().map(move |ph| format!("{r} {p} {ph}")))
    .collect();
    let want: Vec<(&str, Vec<String>)> = vec![
        (
            "requests",
            vec![
                "api completed".into(),
                "default completed".into(),
                "echo immediate_response".into(),
            ],
        ),
        (
            "latency",
            ["api", "default", "echo"]
                .iter()
                .flat_map(|r| ["p50", "p90", "p99"].map(|q| format!("{r} {q}")))
                .collect(),
        ),
        (
            "phases",
            vec![
                "request headers p90".into(),
                "request body p90".into(),
                "response headers p90".into(),
            ],
        ),
        ("processors", processor_series),
        ("immediate", vec!["echo echo 200".into()]),
        ("active", vec!["active streams".into()]),
    ];
    for (chart, labels) in want {
        let c = &data[chart];
        let points = c["points"].as_u64().unwrap_or(0);
        if points < 2 {
            problems.push(format!("chart {chart}: {points} points"));
        }
        for label in labels {
            let series = c["series"]
                .as_array()
                .and_then(|s| s.iter().find(|x| x["label"] == label.as_str()));
            match series {
                None => problems.push(format!("chart {chart}: no series `{label}`")),
                Some(s) if s["nonzero"].as_u64().unwrap_or(0) == 0 && chart != "active" => problems
                    .push(format!(
                        "chart {chart}: series `{label}` has no point above zero: {s}"
                    )),
                Some(s) if s["points"].as_u64().unwrap_or(0) == 0 => {
                    problems.push(format!("chart {chart}: series `{label}` has no point: {s}"))
                }
                _ => {}
            }
        }
        // uPlot drew it: its canvas is in the chart's figure.
        let fig = format!(r#"data-chart="{chart}""#);
        let drawn = dom.find(&fig).is_some_and(|i| {
            dom[i..]
                .split("</figure>")
                .next()
                .is_some_and(|f| f.contains("<canvas"))
        });
        if !drawn {
            problems.push(format!("chart {chart} has no canvas"));
        }
    }
    // No errors were sent: the errors chart is there, with no series.
    if data["errors"]["series"]
        .as_array()
        .is_none_or(|s| !s.is_empty())
    {
        problems.push(format!("errors chart: {}", data["errors"]));
    }
    problems
}

/// Each route's chain picture names its processors in order, with the phases Envoy
/// is asked for.
fn chain_problems(dom: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let routes: [(&str, &[&str], &[&str]); 3] = [
        (
            "api",
            &["trivial", "digest"],
            &["request_headers", "request_body", "response_headers"],
        ),
        (
            "echo",
            &["trivial", "echo"],
            &["request_headers", "request_body"],
        ),
        (
            "default",
            &["trivial", "timer"],
            &["request_headers", "response_headers"],
        ),
    ];
    for (route, chain, asked) in routes {
        let marker = format!(r#"data-chain="{route}""#);
        let Some(start) = dom.find(&marker) else {
            problems.push(format!("no chain picture for {route}"));
            continue;
        };
        let picture = &dom[start..start + dom[start..].find("</ol>").unwrap_or(0)];
        let mut at = 0;
        for (i, processor) in chain.iter().enumerate() {
            let entry = format!(
                r#"data-route="{route}" data-processor="{processor}" data-position="{}""#,
                i + 1
            );
            match picture[at..].find(&entry) {
                Some(j) => at += j,
                None => problems.push(format!(
                    "chain picture of {route}: no {processor} at {}",
                    i + 1
                )),
            }
        }
        let rest = &dom[start..];
        let rest = &rest[..rest.find("</section>").unwrap_or(rest.len())];
        for phase in asked {
            if !rest.contains(&format!(r#"data-route="{route}" data-asked="{phase}""#)) {
                problems.push(format!(
                    "chain picture of {route}: {phase} not shown as asked for"
                ));
            }
        }
    }
    problems
}

/// One request of the traffic mix, by number.
async fn one_request(client: &HttpClient, port: u16, i: usize) {
    let body = format!("{{\"item\":{i},\"note\":\"{}\"}}", "x".repeat(i % 700));
    let r = match i % 5 {
        0 | 1 => {
            let path = format!("/api/items/{i}");
            send(client, port, "POST", &path, &[], full(body)).await
        }
        2 => send(client, port, "GET", "/api/items", &[], empty()).await,
        3 => {
            let path = format!("/static/{i}.css");
            let b = if i.is_multiple_of(2) {
                full(body)
            } else {
                empty()
            };
            send(client, port, "PUT", &path, &[], b).await
        }
        _ => {
            let h = [("x-echo-only", "yes")];
            send(client, port, "POST", "/echo/ping", &h, full(body)).await
        }
    };
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_shows_live_figures_in_headless_chromium() {
    let Some(chrome) = chromium_bin() else { return };
    let Some(envoy_bin) = envoy_bin() else { return };
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(GATEWAY).await;
    let envoy = Envoy::start(
        &envoy_bin,
        &EnvoySpec::default(),
        gateway.grpc_port,
        upstream.port,
    )
    .await;
    let admin = gateway.admin_port;
    let profile = tempfile::tempdir().expect("tempdir");

    // Before any traffic (through `/`, which redirects to the dashboard).
    let dom = chromium(
        &chrome,
        profile.path(),
        format!("http://127.0.0.1:{admin}/"),
        vec!["--dump-dom".into()],
    )
    .await;
    assert!(dom.contains("data-empty=\"true\""), "{dom}");
    assert!(dom.contains(">no traffic yet<"), "{dom}");
    // The chain pictures come from the running config, traffic or not.
    let chains = chain_problems(&dom);
    assert!(chains.is_empty(), "{chains:?}\n{dom}");
    assert!(!dom.contains(">never<"), "the page never polled:\n{dom}");

    // Real traffic: 50 requests on each route, with and without bodies...
    let client = client();
    let port = envoy.port;
    let mut tasks = Vec::new();
    for w in 0..5 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                one_request(&client, port, n * 5 + w).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("traffic");
    }
    // ...and more while Chromium runs, so the page's window between polls has data.
    let stop = Arc::new(AtomicBool::new(false));
    let mut live = Vec::new();
    for w in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        live.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                one_request(&client, port, i).await;
                i += 1;
            }
        }));
    }

    let url = format!("http://127.0.0.1:{admin}/dashboard");
    // The page's window spans only the real time its polls took, so a slow machine may
    // catch one kind of request in no window at all: look again before failing.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dom = chromium(
            &chrome,
            profile.path(),
            url.clone(),
            vec!["--dump-dom".into()],
        )
        .await;
        let problems = problems(&dom);
        if problems.is_empty() {
            break;
        }
        if attempt == 3 {
            panic!("dashboard after traffic:\n{}\n\n{dom}", problems.join("\n"));
        }
        eprintln!("attempt {attempt}: {}", problems.join("; "));
    }
    let shot = profile.path().join("dashboard.png");
    chromium(
        &chrome,
        profile.path(),
        url,
        vec![
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,1900".into(),
        ],
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in live {
        t.await.expect("live traffic");
    }

    // The screenshot.
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 10 * 1024, "screenshot only {} bytes", png.len());
    if std::env::var("UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).expect("docs/");
        std::fs::copy(&shot, docs.join("dashboard.png")).expect("copy screenshot");
        eprintln!("updated docs/dashboard.png");
    }
}

/// With an admin token set, the page (itself open) asks for the token when
/// `/api/snapshot` answers 401, says so when a token is refused, and with the token
/// in its URL fragment (`/dashboard#token=...`, never sent to the server) polls and
/// renders as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_with_an_admin_token_asks_for_it_and_uses_it() {
    let Some(chrome) = chromium_bin() else { return };
    let gateway =
        Gateway::start_with_env(GATEWAY, &[("EXTPROC_ADMIN_TOKEN", "dash-token-1")]).await;
    let admin = gateway.admin_port;
    let profile = tempfile::tempdir().expect("tempdir");
    let dom = |fragment: &str| {
        chromium(
            &chrome,
            profile.path(),
            format!("http://127.0.0.1:{admin}/dashboard{fragment}"),
            vec!["--dump-dom".into()],
        )
    };
    let shown = r#"<form id="token-form" class="token">"#;

    let page = dom("").await;
    assert!(page.contains(shown), "no token form:\n{page}");
    assert!(page.contains("needs its admin token"), "{page}");
    assert!(page.contains(">never<"), "figures without a token:\n{page}");

    let page = dom("#token=wrong").await;
    assert!(page.contains(shown), "no token form:\n{page}");
    assert!(page.contains("refused this admin token"), "{page}");
    assert!(
        page.contains(">never<"),
        "figures with a wrong token:\n{page}"
    );

    let page = dom("#token=dash-token-1").await;
    assert!(
        !page.contains(shown),
        "token form shown with the token:\n{page}"
    );
    assert!(!page.contains(">never<"), "the page never polled:\n{page}");
    assert!(page.contains(">no traffic yet<"), "{page}");
}

/// An Envoy filter that withholds what a chain needs (`allow_mode_override: false`,
/// no request body) shows on the route's chain picture: the mismatch named with its
/// count, and the request body Envoy was asked for marked short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_picture_highlights_a_mode_mismatch() {
    let chrome = chromium_bin().expect("chromium");
    let envoy_bin = envoy_bin().expect("envoy");
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(
        "routes:\n  - name: signed\n    processors: [trivial, {digest: {}, when: 'request.method == \"POST\"'}]\n",
    )
    .await;
    let config = envoy_config(
        &EnvoySpec::default(),
        0,
        0,
        gateway.grpc_port,
        upstream.port,
    )
    .replace("allow_mode_override: true", "allow_mode_override: false");
    let envoy = Envoy::start_ingress(&envoy_bin, config).await;
    let client = client();
    for i in 0..3 {
        let r = send(
            &client,
            envoy.port,
            "POST",
            &format!("/p/{i}"),
            &[],
            full("body"),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let profile = tempfile::tempdir().expect("tempdir");
    let dom = chromium(
        &chrome,
        profile.path(),
        format!("http://127.0.0.1:{}/dashboard", gateway.admin_port),
        vec!["--dump-dom".into()],
    )
    .await;
    let start = dom
        .find(r#"data-chain="signed""#)
        .unwrap_or_else(|| panic!("no chain picture:\n{dom}"));
    let picture = &dom[start..];
    let picture = &picture[..picture.find("</section>").unwrap_or(picture.len())];
    assert!(
        picture.contains(r#"class="mismatch" data-route="signed""#)
            && picture.contains("request_body_not_sent"),
        "no mismatch shown:\n{picture}"
    );
    assert!(
        picture.contains(r#"class="phase short" data-route="signed" data-asked="request_body""#),
        "the request body is not marked short:\n{picture}"
    );
    // The `when:` of digest is on the picture.
    assert!(
        picture.contains(r#"when request.method == "POST""#),
        "{picture}"
    );
    drop(envoy);
}

/// Many routes: 80 of them, each with two processors, give the latency chart 240
/// series and the processor chart 320. Every series reaches the page's charts, and each
/// chart stays the same height (its legend scrolls), so the page stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_series_keep_the_charts_bounded() {
    const ROUTES: usize = 80;
    let chrome = chromium_bin().expect("chromium");
    let envoy_bin = envoy_bin().expect("envoy");
    let mut config = String::from("routes:\n");
    for i in 0..ROUTES {
        config.push_str(&format!(
            "  - name: r{i}\n    match: {{path_prefix: /r{i}/}}\n    processors: [trivial, timer]\n"
        ));
    }
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config).await;
    let envoy = Envoy::start(
        &envoy_bin,
        &EnvoySpec::default(),
        gateway.grpc_port,
        upstream.port,
    )
    .await;
    let port = envoy.port;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..4 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let client = client();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let r = send(
                    &client,
                    port,
                    "GET",
                    &format!("/r{}/x", i % ROUTES),
                    &[],
                    empty(),
                )
                .await;
                assert_eq!(r.status, 200);
                i += 4;
            }
        }));
    }
    // Every route has traffic before the page opens.
    let deadline = Instant::now() + Duration::from_secs(30);
    while upstream.hits() < (ROUTES * 2) as u64 {
        assert!(
            Instant::now() < deadline,
            "the load stalled at {}",
            upstream.hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let profile = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{}/dashboard", gateway.admin_port);
    let mut attempt = 0;
    let data = loop {
        attempt += 1;
        let dom = chromium(
            &chrome,
            profile.path(),
            url.clone(),
            vec!["--dump-dom".into()],
        )
        .await;
        let data = chart_data(&dom).expect("#chart-data");
        let series = data["latency"]["series"].as_array().map_or(0, Vec::len);
        if series == ROUTES * 3 || attempt == 3 {
            break data;
        }
        eprintln!("attempt {attempt}: {series} latency series");
    };
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load");
    }
    let count = |chart: &str| data[chart]["series"].as_array().map_or(0, Vec::len);
    assert_eq!(count("latency"), ROUTES * 3, "{}", data["latency"]);
    assert_eq!(count("processors"), ROUTES * 4, "{}", data["processors"]);
    assert!(count("requests") >= ROUTES, "{}", data["requests"]);
    // Bounded height: the two-series active-streams chart and the 320-series
    // processor chart are about as tall.
    let height = |chart: &str| data[chart]["height"].as_f64().unwrap_or(0.0);
    assert!(height("active") > 100.0, "{data}");
    assert!(
        height("processors") <= height("active") + 120.0,
        "the processor chart grows with its series: {} px against {} px",
        height("processors"),
        height("active")
    );
}
