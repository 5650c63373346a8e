//! Telemetry set-up shared by every Allot binary and the framework SDK.
//!
//! - Logs ([`init`]): a `tracing` subscriber writing to standard error; the filter comes from `ALLOT_LOG` (or
//!   `RUST_LOG`), default `info`, in `tracing_subscriber::EnvFilter` syntax; `ALLOT_LOG_FORMAT=json` gives one
//!   JSON object per line. The log filter never hides spans from the trace exporter. The log leaves out
//!   the spans made per call and per status update ([`LOG_QUIET`]: `rpc`, target `allot_telemetry::grpc`;
//!   `status update`, target `allot_common::status`), unless the filter names their target
//!   (`ALLOT_LOG=info,allot_telemetry::grpc=info,allot_common::status=info` shows both): an event inside
//!   them shows the spans around them, not the call's method or the update's task.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, every span
//!   of an `allot*` target at INFO or above is exported over OTLP/gRPC through a batch span processor. The
//!   standard variables are honoured by the OpenTelemetry SDK: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_SCHEDULE_DELAY` and the other `OTEL_BSP_*`,
//!   `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_HEADERS`; `OTEL_SDK_DISABLED=true` turns export off.
//! - Propagation ([`propagation`]): W3C trace context (`traceparent`, `tracestate`) in gRPC metadata on every
//!   call ([`grpc`]), and in a `trace_context` map inside messages that outlive a call (grants, events).
//! - Metrics ([`metrics`]): one Prometheus registry per process, with per-RPC rate, errors and duration
//!   recorded by [`grpc`], process CPU and memory, and each service's own series; served at `/metrics`.
//!
//! Span names and attributes follow the OpenTelemetry semantic conventions v1.26.0 ([`SEMCONV_SCHEMA_URL`]):
//! RPC spans are named `package.Service/Method` with `rpc.system = "grpc"`, `rpc.service`, `rpc.method` and
//! `rpc.grpc.status_code`; etcd spans carry `db.system = "etcd"` and `db.operation.name`.

pub mod grpc;
pub mod metrics;
mod otlp;
pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The semantic-conventions version whose names Allot's spans use.
pub const SEMCONV_SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";

/// Set once this process exports spans.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports spans: hot paths skip spans that would only be exported (e.g. one per
/// offer) when it does not.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// What to set up; [`Settings::from_env`] reads it from the environment.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Log filter in `EnvFilter` syntax; `None` means `info`.
    pub log_filter: Option<String>,
    /// One JSON object per log line instead of human-readable lines.
    pub json_logs: bool,
    /// OTLP/gRPC endpoint for traces (e.g. `http://127.0.0.1:4317`); `None` exports nothing.
    pub otlp_endpoint: Option<String>,
}

impl Settings {
    /// Reads `ALLOT_LOG` (or `RUST_LOG`), `ALLOT_LOG_FORMAT`, `OTEL_SDK_DISABLED`,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Settings {
            log_filter: var("ALLOT_LOG").or_else(|| var("RUST_LOG")),
            json_logs: var("ALLOT_LOG_FORMAT").is_some_and(|v| v.eq_ignore_ascii_case("json")),
            otlp_endpoint: if disabled {
                None
            } else {
                var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            },
        }
    }
}

/// Keeps telemetry running; drop it last, at the end of `main`: dropping it flushes the spans not yet
/// exported (waiting at most the exporter's timeout).
#[must_use = "telemetry stops when the guard is dropped"]
#[derive(Debug)]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
    exporter_runtime: Option<otlp::ExportRuntime>,
}

impl Guard {
    /// Whether spans are being exported over OTLP by this guard's provider.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every finished span now.
    ///
    /// # Errors
    /// [`TelemetryError::Flush`] with the SDK's error when the exporter fails or times out.
    pub fn flush(&self) -> Result<(), TelemetryError> {
        match &self.provider {
            Some(p) => p.force_flush().map_err(TelemetryError::Flush),
            None => Ok(()),
        }
    }
}

/// Why span export could not start or flush. Telemetry failing never stops a process: [`init`] logs these
/// and runs without export.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter's one-thread runtime could not start.
    #[error("cannot start the exporter's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The OTLP exporter could not be built (an endpoint that is not a valid URI).
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
        endpoint: String,
        /// The SDK's error.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Flushing finished spans failed or timed out.
    #[error("cannot export spans: {0}")]
    Flush(#[source] opentelemetry_sdk::error::OTelSdkError),
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                eprintln!("telemetry: flushing spans at exit failed: {e}");
            }
        }
        // The runtime that drove the exporter goes last, after the final export.
        drop(self.exporter_runtime.take());
    }
}

/// Installs the global `tracing` subscriber for `service` (e.g. `allot-registry`) at `version`, with
/// [`Settings::from_env`].
///
/// Calling it twice is harmless: the second call keeps the first subscriber and exports nothing itself.
pub fn init(service: &'static str, version: &'static str) -> Guard {
    init_with(service, version, Settings::from_env())
}

/// Targets whose spans the log leaves out unless its filter names them: each gRPC call's `rpc` span
/// (`allot_telemetry::grpc`) and each status update's `status update` span (`allot_common::status`, made by
/// the agent, the offer-broker and the SDK). Neither target logs events of its own. The log's formatter writes
/// a span's fields out when the span is made, whether or not anything is logged inside it: that was about 5%
/// of the offer-broker's CPU for the calls and a tenth of `allot batch`'s for the updates (issue 24). Without a
/// trace exporter nothing else wants these spans, which then cost nothing; with one they are exported as
/// before.
pub const LOG_QUIET: [&str; 2] = ["allot_telemetry::grpc", "allot_common::status"];

/// The log's `EnvFilter` directives for the user's `filter`: `filter`, then `<target>=off` for each
/// [`LOG_QUIET`] target it does not name. Directives, not a filter function, so that the filter's answer
/// stays cached per call site.
fn log_directives(filter: &str) -> String {
    let mut directives = filter.to_string();
    for target in LOG_QUIET {
        if !filter.contains(target) {
            directives.push_str(&format!(",{target}=off"));
        }
    }
    directives
}

/// [`init`] with explicit settings (tests point the exporter at their own receiver this way).
pub fn init_with(service: &'static str, version: &'static str, settings: Settings) -> Guard {
    let filter = log_directives(settings.log_filter.as_deref().unwrap_or("info"));
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if settings.json_logs {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.compact().with_filter(filter).boxed()
    };

    let mut exporter_runtime = None;
    let mut provider = None;
    let mut otel_error = None;
    if let Some(endpoint) = &settings.otlp_endpoint {
        match otlp::provider(service, version, endpoint) {
            Ok((p, rt)) => {
                provider = Some(p);
                exporter_runtime = Some(rt);
            }
            Err(e) => otel_error = Some(e),
        }
    }
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(
                p.tracer_with_scope(
                    opentelemetry::InstrumentationScope::builder(service)
                        .with_version(version)
                        .with_schema_url(SEMCONV_SCHEMA_URL)
                        .build(),
                ),
            )
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target().starts_with("allot") && *meta.level() <= tracing::Level::INFO
            }))
    });
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if !installed {
        // Another subscriber is already global: a provider of ours would never see a span.
        eprintln!("telemetry: a tracing subscriber is already installed; {service} keeps it");
        return Guard {
            provider: None,
            exporter_runtime: None,
        };
    }
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "OTLP trace export is off");
    }
    EXPORTING.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(
        service,
        version,
        exporting = provider.is_some(),
        "telemetry initialised"
    );
    Guard {
        provider,
        exporter_runtime,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_leaves_out_per_call_and_per_update_spans_unless_the_filter_names_them() {
        assert_eq!(
            log_directives("info"),
            "info,allot_telemetry::grpc=off,allot_common::status=off"
        );
        assert_eq!(
            log_directives("debug,allot_common::status=info"),
            "debug,allot_common::status=info,allot_telemetry::grpc=off"
        );
        let all = "info,allot_telemetry::grpc=debug,allot_common::status=info";
        assert_eq!(log_directives(all), all);
        for d in ["info", "warn,allot_agent=debug"] {
            assert!(EnvFilter::try_new(log_directives(d)).is_ok(), "{d}");
        }
    }
}
