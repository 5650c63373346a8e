//! One received span, flattened from OTLP into what the queries and the renderers need.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One span as received over OTLP, with its resource's `service.name` and `process.pid`; IDs are lower-case
/// hex, times Unix nanoseconds, attribute values text (integers and booleans in decimal and `true`/`false`).
///
/// This is also the on-disk form of a [`crate::Store`]: one JSON object per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// `service.name` of the process that sent it (`allot-offer-broker`, `allot`, a framework's name ...).
    pub service: String,
    /// `process.pid` of that process; 0 when the resource did not say.
    #[serde(default)]
    pub pid: i64,
    /// Trace ID, 32 hex digits.
    pub trace_id: String,
    /// Span ID, 16 hex digits.
    pub span_id: String,
    /// Parent span ID; empty for a root span.
    #[serde(default)]
    pub parent_span_id: String,
    /// Span name (`ACCEPT`, `accept`, `allocation cycle`, `allot.agent.v1.Agent/LaunchTasks` ...).
    pub name: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer (0 unspecified).
    #[serde(default)]
    pub kind: i32,
    /// Attributes, values as text.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Links as `(trace_id, span_id)`: an `accept` span links to the `offer` spans it consumed.
    #[serde(default)]
    pub links: Vec<(String, String)>,
    /// Start, Unix nanoseconds.
    pub start_ns: u64,
    /// End, Unix nanoseconds.
    pub end_ns: u64,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    #[serde(default)]
    pub status: i32,
}

impl SpanRecord {
    /// Attribute `key` as text, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Duration in milliseconds (0 for a span that ends before it starts).
    pub fn duration_ms(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e6
    }

    /// The task IDs the span is about: `allot.task.id`, or the comma-separated `allot.task.ids` of a
    /// launch; empty when it names none.
    pub fn task_ids(&self) -> Vec<&str> {
        match (self.attr("allot.task.id"), self.attr("allot.task.ids")) {
            (Some(one), _) if !one.is_empty() => vec![one],
            (_, Some(many)) => many.split(',').filter(|t| !t.is_empty()).collect(),
            _ => Vec::new(),
        }
    }

    /// Flattens an OTLP export request into spans, in the order received.
    pub fn from_request(request: ExportTraceServiceRequest) -> Vec<SpanRecord> {
        let mut out = Vec::new();
        for rs in request.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            let pid = resource
                .get("process.pid")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(SpanRecord {
                        service: service.clone(),
                        pid,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        kind: s.kind,
                        attributes: attrs(&s.attributes),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                        start_ns: s.start_time_unix_nano,
                        end_ns: s.end_time_unix_nano,
                        status: s.status.map(|st| st.code).unwrap_or(0),
                    });
                }
            }
        }
        out
    }
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| text(&Some(v.clone())))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
