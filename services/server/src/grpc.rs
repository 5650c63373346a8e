//! Serving gRPC, traced and measured (see `allot_telemetry::grpc`): the server builder every Allot service
//! uses, its health service, and graceful shutdown. Calling is `allot_common::grpc`.

use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// The layers every Allot server runs each call through: tracing and metrics, then (for a replicated
/// service) the standby's rejection.
pub type Layers = tower::layer::util::Stack<
    crate::standby::StandbyLayer,
    tower::layer::util::Stack<allot_telemetry::grpc::ServerLayer, tower::layer::util::Identity>,
>;

/// A router built on [`server`].
pub type Router = tonic::transport::server::Router<Layers>;

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
    builder(crate::standby::StandbyLayer(None))
}

/// Like [`server`], for a replicated service: while `leadership` says standby, every call but the health
/// service is answered `UNAVAILABLE` naming the leader (see [`crate::standby`]).
pub fn replicated_server(
    leadership: &crate::standby::Leadership,
) -> tonic::transport::Server<Layers> {
    builder(crate::standby::StandbyLayer(Some(leadership.clone())))
}

fn builder(standby: crate::standby::StandbyLayer) -> tonic::transport::Server<Layers> {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(allot_telemetry::grpc::ServerLayer)
        .layer(standby)
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
