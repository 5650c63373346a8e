//! The OTLP/gRPC span exporter, driven on a runtime of its own.
//!
//! The SDK's batch span processor exports from a plain OS thread, but the tonic transport needs a Tokio
//! reactor: [`OnRuntime`] runs each export as a task on a one-thread runtime that lives as long as the
//! telemetry [`Guard`](crate::Guard), so export works whatever runtime (if any) the service uses.

use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::sync::Arc;
use std::time::Duration;

/// The runtime the exporter's gRPC client runs on.
#[derive(Debug)]
pub(crate) struct ExportRuntime(Option<tokio::runtime::Runtime>);

/// A runtime cannot simply be dropped inside async code (where `init` may be called, and the guard
/// dropped): it is shut down in the background instead.
impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A span exporter whose every export runs on `handle`.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    handle: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let inner = Arc::clone(&self.inner);
        let task = self.handle.spawn(async move { inner.export(batch).await });
        async move {
            task.await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// The resource describing this process: `service.name` (unless `OTEL_SERVICE_NAME` names it),
/// `service.version`, `service.instance.id` (host and pid) and `process.pid`, plus `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(service: &'static str, version: &'static str) -> Resource {
    let pid = std::process::id();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string());
    let mut builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name(service);
    }
    builder
        .with_attributes([
            KeyValue::new("service.version", version),
            KeyValue::new("service.instance.id", format!("{host}/{pid}")),
            KeyValue::new("host.name", host),
            KeyValue::new("process.pid", i64::from(pid)),
        ])
        .build()
}

/// A tracer provider exporting to `endpoint` over OTLP/gRPC with a batch span processor.
///
/// # Errors
/// [`crate::TelemetryError`] when the runtime cannot start or the endpoint is not a valid URI.
pub(crate) fn provider(
    service: &'static str,
    version: &'static str,
    endpoint: &str,
) -> Result<(SdkTracerProvider, ExportRuntime), crate::TelemetryError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(crate::TelemetryError::Runtime)?;
    let exporter = {
        let _in_runtime = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|source| crate::TelemetryError::Exporter {
                endpoint: endpoint.to_string(),
                source,
            })?
    };
    let exporter = OnRuntime {
        inner: Arc::new(exporter),
        handle: runtime.handle().clone(),
    };
    let runtime = ExportRuntime(Some(runtime));
    let provider = SdkTracerProvider::builder()
        .with_resource(resource(service, version))
        .with_batch_exporter(exporter)
        .build();
    Ok((provider, runtime))
}
