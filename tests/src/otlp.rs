//! An in-process OTLP/gRPC trace receiver (`allot_traces::receiver` into memory): what a collector would
//! get, kept for assertions.

pub use allot_traces::SpanRecord;
use allot_traces::receiver::MemorySink;
use std::net::SocketAddr;
use std::sync::Arc;

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    /// Where it listens: give `http://{addr}` as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub addr: SocketAddr,
    sink: MemorySink,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sink = MemorySink::default();
        let serving = Arc::new(sink.clone());
        let task = tokio::spawn(async move {
            let _ = allot_traces::receiver::serve(listener, serving, std::future::pending()).await;
        });
        OtlpReceiver { addr, sink, task }
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.sink.spans()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
