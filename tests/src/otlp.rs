//! An in-process OTLP/gRPC trace receiver: what a collector would get, kept for assertions.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// `service.name` of the process that sent it.
    pub service: String,
    /// `process.pid` of that process.
    pub pid: i64,
    /// Trace ID, hex.
    pub trace_id: String,
    /// Span ID, hex.
    pub span_id: String,
    /// Parent span ID, hex; empty for a root span.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// OTLP span kind (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: HashMap<String, String>,
    /// Links as `(trace_id, span_id)`, hex.
    pub links: Vec<(String, String)>,
    /// Start and end, Unix nanoseconds.
    pub start_ns: u64,
    /// End, Unix nanoseconds.
    pub end_ns: u64,
    /// OTLP status code (0 unset, 1 ok, 2 error).
    pub status: i32,
}

impl SpanRecord {
    /// Attribute `key` as text, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<SpanRecord>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.0.lock().expect("sink poisoned");
        for rs in request.into_inner().resource_spans {
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
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    /// Where it listens: give `http://{addr}` as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub addr: SocketAddr,
    sink: Sink,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sink = Sink::default();
        let service = TraceServiceServer::new(sink.clone());
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        OtlpReceiver { addr, sink, task }
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.sink.0.lock().expect("sink poisoned").clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renders `spans` (one trace) as an SVG waterfall: one row per span in tree order (children under their
/// parent, by start time), indented by depth, a bar per span on a shared time axis, coloured by service.
pub fn render_waterfall(title: &str, spans: &[&SpanRecord]) -> String {
    use std::fmt::Write as _;
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&SpanRecord>> = HashMap::new();
    let mut roots = Vec::new();
    for s in spans {
        if ids.contains(s.parent_span_id.as_str()) {
            children
                .entry(s.parent_span_id.as_str())
                .or_default()
                .push(s);
        } else {
            roots.push(*s);
        }
    }
    roots.sort_by_key(|s| s.start_ns);
    for c in children.values_mut() {
        c.sort_by_key(|s| s.start_ns);
    }
    let mut rows: Vec<(usize, &SpanRecord)> = Vec::new();
    fn walk<'a>(
        s: &'a SpanRecord,
        depth: usize,
        children: &HashMap<&str, Vec<&'a SpanRecord>>,
        rows: &mut Vec<(usize, &'a SpanRecord)>,
    ) {
        rows.push((depth, s));
        for c in children.get(s.span_id.as_str()).into_iter().flatten() {
            walk(c, depth + 1, children, rows);
        }
    }
    for r in roots {
        walk(r, 0, &children, &mut rows);
    }
    let t0 = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let t1 = spans
        .iter()
        .map(|s| s.end_ns)
        .max()
        .unwrap_or(t0 + 1)
        .max(t0 + 1);
    let (label_w, bar_w, row_h, top) = (600.0, 620.0, 18.0, 56.0);
    let width = label_w + bar_w + 90.0;
    let height = top + row_h * rows.len() as f64 + 40.0;
    let palette = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
    ];
    let mut services: Vec<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    services.sort();
    services.dedup();
    let colour =
        |svc: &str| palette[services.iter().position(|s| *s == svc).unwrap_or(0) % palette.len()];
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let total_ms = (t1 - t0) as f64 / 1e6;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">"#
    );
    let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="8" y="18" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let mut x = 8.0;
    for svc in &services {
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="28" width="10" height="10" fill="{}"/><text x="{}" y="37">{}</text>"#,
            colour(svc),
            x + 14.0,
            esc(svc)
        );
        x += 24.0 + 7.0 * svc.len() as f64;
    }
    for ms in 0..=4 {
        let frac = ms as f64 / 4.0;
        let gx = label_w + frac * bar_w;
        let _ = write!(
            svg,
            r##"<line x1="{gx}" y1="{}" x2="{gx}" y2="{}" stroke="#ddd"/><text x="{gx}" y="{}" text-anchor="middle" fill="#555">{:.0} ms</text>"##,
            top - 6.0,
            height - 30.0,
            height - 16.0,
            frac * total_ms
        );
    }
    for (i, (depth, s)) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let label = format!("{}  [{}]", s.name, s.service.trim_start_matches("allot-"));
        let lx = 8.0 + 12.0 * *depth as f64;
        let bx = label_w + (s.start_ns - t0) as f64 / (t1 - t0) as f64 * bar_w;
        let bw = ((s.end_ns.saturating_sub(s.start_ns)) as f64 / (t1 - t0) as f64 * bar_w).max(1.5);
        let state = s
            .attr("allot.task.state")
            .map(|st| format!(" {st}"))
            .unwrap_or_default();
        let _ = write!(
            svg,
            r##"<text x="{lx}" y="{}">{}{}</text><rect x="{bx:.1}" y="{}" width="{bw:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{}" fill="#333">{:.2} ms</text>"##,
            y + 12.0,
            esc(&label),
            esc(&state),
            y + 3.0,
            row_h - 6.0,
            colour(&s.service),
            (bx + bw + 4.0).min(width - 80.0),
            y + 12.0,
            (s.end_ns.saturating_sub(s.start_ns)) as f64 / 1e6
        );
    }
    svg.push_str("</svg>\n");
    svg
}
