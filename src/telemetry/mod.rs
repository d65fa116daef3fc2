//! Logging and tracing. `tracing` is used throughout; OpenTelemetry export (OTLP over
//! gRPC) is switched on by the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) variable, with `OTEL_SERVICE_NAME` and
//! `OTEL_TRACES_SAMPLER` honoured by the SDK. When it is unset the gateway's spans are
//! disabled at their call sites and cost next to nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::phase::Headers;

mod json_lines;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The target of the per-processor spans, which `EXTPROC_TRACE_PROCESSORS` turns on
/// and off separately from the stream and message spans.
pub const PROCESSOR_SPANS: &str = "extproc_gateway::processor";

/// Flushes pending spans when dropped (at process exit).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("extproc-gateway: flushing traces failed: {e}");
            }
        }
    }
}

/// Whether trace export is running (set once by [`init`]).
fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text, one event per line.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message, fields, the spans
    /// it happened in, and `trace_id`/`span_id` when the stream's trace is exported.
    Json,
}

/// The target of the per-stream access log (`access_log: true` in the config).
pub const ACCESS_LOG: &str = "extproc_gateway::access";

/// Whether the standard OTEL variables ask for trace export.
pub fn export_requested() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Whether `EXTPROC_TRACE_PROCESSORS` asks for a span per processor per message.
pub fn processor_spans_requested() -> bool {
    std::env::var("EXTPROC_TRACE_PROCESSORS").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// What the trace export records: the stream and message spans, and the processors'
/// own when asked for.
fn traced_targets(processors: bool) -> Targets {
    let level = if processors {
        LevelFilter::DEBUG
    } else {
        LevelFilter::OFF
    };
    Targets::new()
        .with_target("extproc_gateway", LevelFilter::DEBUG)
        .with_target(PROCESSOR_SPANS, level)
}

/// Installs logging (filtered by `log_filter`, written as `format`) and, when asked
/// for, OTLP trace export. The access log's target is let through at INFO unless the
/// filter names it. Must run inside the Tokio runtime (the exporter's gRPC channel
/// lives there).
pub fn init(log_filter: &str, format: LogFormat) -> TelemetryGuard {
    let mut filter = EnvFilter::try_new(log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    if !log_filter.contains(ACCESS_LOG) {
        if let Ok(directive) = format!("{ACCESS_LOG}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(json_lines::JsonLines)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .with_filter(filter)
            .boxed(),
    };
    let (otel, provider, error) = if export_requested() {
        match exporter() {
            Ok(provider) => {
                let tracer = provider.tracer("extproc-gateway");
                // Only the attributes the gateway sets itself: the defaults add seven
                // more to every span (source file, module and line, thread name and
                // id, target, busy and idle time, the last read from the clock at
                // every poll) and activate an OpenTelemetry context per poll, which
                // together cost more than the spans themselves (see BENCHMARKS.md,
                // telemetry).
                let layer = tracing_opentelemetry::layer()
                    .with_location(false)
                    .with_threads(false)
                    .with_target(false)
                    .with_tracked_inactivity(false)
                    .with_context_activation(false)
                    .with_tracer(tracer)
                    .with_filter(traced_targets(processor_spans_requested()));
                EXPORTING.store(true, Ordering::Relaxed);
                (Some(layer), Some(provider), None)
            }
            Err(e) => (None, None, Some(e)),
        }
    } else {
        (None, None, None)
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if let Some(e) = error {
        tracing::error!(error = %e, "OpenTelemetry export requested but could not start; tracing to logs only");
    } else if provider.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    TelemetryGuard { provider }
}

fn exporter() -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("extproc-gateway");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

struct HeaderExtractor<'a>(&'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get_str(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k).collect()
    }
}

/// The stream's span when the sampler keeps its trace, else [`tracing::Span::none`], so
/// that a stream left out of the trace costs no span per message and processor. (The
/// decision is the SDK's sampler's, `OTEL_TRACES_SAMPLER`, taken when the span starts;
/// without export the span is returned as it is.)
pub fn if_sampled(span: tracing::Span) -> tracing::Span {
    if !EXPORTING.load(Ordering::Relaxed) || span.is_none() {
        return span;
    }
    if span.context().span().span_context().is_sampled() {
        span
    } else {
        tracing::Span::none()
    }
}

/// Makes the request's W3C `traceparent`/`tracestate` the parent of `span` (no-op
/// unless traces are exported).
pub fn set_parent(span: &tracing::Span, headers: &Headers) {
    if !EXPORTING.load(Ordering::Relaxed) || headers.get("traceparent").is_none() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(cx);
}
