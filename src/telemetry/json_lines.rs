//! `--log-format json`: one JSON object per line, for log pipelines (Loki, Elastic,
//! Cloud Logging) that index fields instead of parsing text. Each line carries the
//! event's fields, the spans the log filter lets through that it happened in (with
//! their fields), and, when its stream's trace is exported, the `trace_id` and
//! `span_id` of the span it happened in, so a log line leads to its trace and back.

use std::fmt;
use std::time::SystemTime;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON line formatter; pair it with `JsonFields` for span fields
/// (`fmt::layer().event_format(JsonLines).fmt_fields(JsonFields::new())`).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(SystemTime::now())
                .to_string()
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(message) = fields.0.remove("message") {
            line.insert("message".into(), message);
        }
        if !fields.0.is_empty() {
            line.insert("fields".into(), Value::Object(fields.0));
        }
        if let Some(scope) = ctx.event_scope() {
            let mut spans = Vec::new();
            for span in scope.from_root() {
                let mut entry = Map::new();
                entry.insert("name".into(), span.name().into());
                if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(f.as_str()) {
                        entry.extend(m);
                    }
                }
                spans.push(Value::Object(entry));
            }
            if !spans.is_empty() {
                line.insert("spans".into(), Value::Array(spans));
            }
        }
        // The event's span as the registry knows it: the spans this layer's filter
        // leaves out (the DEBUG stream span under an `info` filter) still carry the
        // trace. Looked up with no span's extensions borrowed (the OpenTelemetry
        // layer borrows them to give the context).
        let leaf = event.parent().cloned().or_else(|| {
            event
                .is_contextual()
                .then(|| tracing::dispatcher::get_default(|d| d.current_span().id().cloned()))
                .flatten()
        });
        if let Some((trace_id, span_id)) = leaf.and_then(|id| trace_of(&id)) {
            line.insert("trace_id".into(), trace_id.into());
            line.insert("span_id".into(), span_id.into());
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// The trace and span ids of an exported span (none without export, or for a span
/// the sampler left out).
fn trace_of(id: &tracing::span::Id) -> Option<(String, String)> {
    if !super::exporting() {
        return None;
    }
    let cx = tracing::dispatcher::get_default(|d| tracing_opentelemetry::get_otel_context(id, d))?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// An event's fields as JSON values (numbers and booleans kept as such).
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}
