//! An OTLP/gRPC trace receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`, as an
//! OpenTelemetry Collector serves it on port 4317.

use crate::SpanRecord;
use crate::store::StoreWriter;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::sync::{Arc, Mutex};

/// Where received spans go.
pub trait SpanSink: Send + Sync + 'static {
    /// Keeps `spans` (one export request's).
    ///
    /// # Errors
    /// A text saying why they could not be kept; the exporter is answered UNAVAILABLE and may retry.
    fn keep(&self, spans: Vec<SpanRecord>) -> Result<(), String>;
}

/// Spans kept in memory, for tests: [`MemorySink::spans`] returns what arrived so far.
#[derive(Debug, Clone, Default)]
pub struct MemorySink(Arc<Mutex<Vec<SpanRecord>>>);

impl MemorySink {
    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl SpanSink for MemorySink {
    fn keep(&self, spans: Vec<SpanRecord>) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(spans);
        Ok(())
    }
}

impl SpanSink for StoreWriter {
    fn keep(&self, spans: Vec<SpanRecord>) -> Result<(), String> {
        self.append(&spans).map_err(|e| e.to_string())
    }
}

struct Export<S>(Arc<S>);

#[tonic::async_trait]
impl<S: SpanSink> TraceService for Export<S> {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = SpanRecord::from_request(request.into_inner());
        let sink = self.0.clone();
        // A store writes to disk: off the async workers.
        tokio::task::spawn_blocking(move || sink.keep(spans))
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .map_err(tonic::Status::unavailable)?;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves OTLP/gRPC trace export on `listener` (plaintext, as a local collector does: bind it to loopback)
/// into `sink` until `shutdown` completes.
///
/// # Errors
/// The transport's error when serving fails.
pub async fn serve<S: SpanSink>(
    listener: tokio::net::TcpListener,
    sink: Arc<S>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Export(sink)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
