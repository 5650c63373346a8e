//! Serving and calling gRPC, traced and measured (see `allot_telemetry::grpc`).

use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::Endpoint;

/// A client channel: every call is traced (W3C context in its metadata) and counted.
pub type Channel = allot_telemetry::grpc::TracedChannel;

/// The layers every Allot server runs each call through.
pub type Layers =
    tower::layer::util::Stack<allot_telemetry::grpc::ServerLayer, tower::layer::util::Identity>;

/// A router built on [`server`].
pub type Router = tonic::transport::server::Router<Layers>;

/// Largest gRPC message accepted by Allot servers and clients, in bytes (16 MiB): large enough for an offer
/// burst to a framework on 10,000 agents, small enough that an oversized request is refused.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight calls.
///
/// The router should already hold the service's health service (see [`health`]).
///
/// # Errors
/// The transport error if the server fails.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    use futures::StreamExt as _;
    // The server's own `tcp_nodelay` applies only to listeners it binds: set it on each accepted socket, or
    // Nagle's algorithm and delayed ACKs hold small responses and stream messages for ~40 ms.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.and_then(|s| {
            s.set_nodelay(true)?;
            Ok(s)
        })
    });
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// A server builder with Allot's defaults (TCP no-delay, HTTP/2 keepalive) whose every call gets a server
/// span (parented by the caller's trace context) and the per-RPC metrics.
pub fn server() -> tonic::transport::Server<Layers> {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(allot_telemetry::grpc::ServerLayer)
}

/// A `grpc.health.v1.Health` service reporting SERVING for the whole server (service name "").
pub async fn health()
-> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    service
}

/// A channel to `addr` (`host:port` or a full `http://` URI) that connects on first use and reconnects
/// after failures.
///
/// # Errors
/// An error if `addr` is not a valid URI.
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Channel::new(raw_channel(addr)?))
}

fn raw_channel(addr: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
}
