//! Prometheus metrics: one registry per process, served as text at `/metrics`.
//!
//! Every series Allot defines is named `allot_*`, in base units (seconds, bytes, MiB only where the name
//! says so). This module owns the per-RPC series, recorded for every gRPC call by [`crate::grpc`]:
//!
//! | series | type | labels |
//! |---|---|---|
//! | `allot_rpc_server_requests_total` | counter | `rpc_service`, `rpc_method`, `grpc_code` |
//! | `allot_rpc_server_duration_seconds` | histogram | `rpc_service`, `rpc_method` |
//! | `allot_rpc_client_requests_total` | counter | `rpc_service`, `rpc_method`, `grpc_code` |
//! | `allot_rpc_client_duration_seconds` | histogram | `rpc_service`, `rpc_method` |
//!
//! Rate is the counter's rate, errors its rate with `grpc_code != "OK"`, duration the histogram (time to the
//! response headers: for a server stream, the time to open it). The process's own `process_*` series (CPU
//! seconds, resident memory, open files) come with the registry. Services register their series in
//! [`registry`] through the re-exported [`prometheus`] crate.

pub use prometheus;

use prometheus::{
    Encoder as _, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry,
};
use std::net::SocketAddr;
use std::sync::LazyLock;

/// Histogram buckets for latencies from 100 µs to 10 s, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's registry (Prometheus' default registry, which also carries the `process_*` series).
pub fn registry() -> &'static Registry {
    prometheus::default_registry()
}

/// Registers `metric` in [`registry`] and returns it.
///
/// # Panics
/// When a series of the same name is already registered: every series is defined once, in a `LazyLock`.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(metric: M) -> M {
    registry()
        .register(Box::new(metric.clone()))
        .expect("each Allot series is registered once");
    metric
}

/// A counter `name`, registered.
pub fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("valid counter"))
}

/// A gauge `name`, registered.
pub fn gauge(name: &str, help: &str) -> Gauge {
    register(Gauge::new(name, help).expect("valid gauge"))
}

/// A histogram `name` (in seconds, [`LATENCY_BUCKETS`]), registered.
pub fn histogram(name: &str, help: &str) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
            .expect("valid histogram"),
    )
}

/// A counter family `name` with `labels`, registered.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
}

/// A gauge family `name` with `labels`, registered.
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    register(prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
}

/// A histogram family `name` (in seconds, [`LATENCY_BUCKETS`]) with `labels`, registered.
pub fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register(
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )
        .expect("valid histogram"),
    )
}

pub(crate) struct Rpc {
    pub(crate) server_requests: IntCounterVec,
    pub(crate) server_duration: HistogramVec,
    pub(crate) client_requests: IntCounterVec,
    pub(crate) client_duration: HistogramVec,
}

pub(crate) static RPC: LazyLock<Rpc> = LazyLock::new(|| Rpc {
    server_requests: counter_vec(
        "allot_rpc_server_requests_total",
        "gRPC calls served, by service, method and status code",
        &["rpc_service", "rpc_method", "grpc_code"],
    ),
    server_duration: histogram_vec(
        "allot_rpc_server_duration_seconds",
        "Time from a call's arrival to its response headers, in seconds",
        &["rpc_service", "rpc_method"],
    ),
    client_requests: counter_vec(
        "allot_rpc_client_requests_total",
        "gRPC calls made, by service, method and status code",
        &["rpc_service", "rpc_method", "grpc_code"],
    ),
    client_duration: histogram_vec(
        "allot_rpc_client_duration_seconds",
        "Time from a call's start to its response headers, in seconds",
        &["rpc_service", "rpc_method"],
    ),
});

/// Every series of [`registry`] in the Prometheus text exposition format 0.0.4.
pub fn render() -> String {
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&registry().gather(), &mut out) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// A running `/metrics` endpoint; it stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves [`render`] at `GET /metrics` on `addr` (`host:port`; port 0 picks a free one) over HTTP/1.1.
///
/// # Errors
/// The I/O error when `addr` cannot be bound.
pub async fn serve(addr: &str) -> std::io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    // Touch the RPC series so that they are listed before the first call.
    LazyLock::force(&RPC);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                render(),
            )
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    Ok(MetricsServer { addr, task })
}
