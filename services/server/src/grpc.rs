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

/// How long a server that was told to stop waits for its calls in flight before it closes their connections:
/// a long-lived stream (a framework's event stream, an agent's status update stream, the broker's allocator
/// subscription) never ends by itself, and its client reconnects (to the next leader) when it is cut.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight calls for at most
/// [`DRAIN_TIMEOUT`]: over mutual TLS with `tls` ([`serve_tls`]) when given, in plaintext ([`serve_plaintext`],
/// `--insecure`) otherwise.
///
/// The router should already hold the service's health service (see [`health`]).
///
/// # Errors
/// The transport error if the server fails.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    tls: Option<&std::sync::Arc<allot_common::tls::Tls>>,
) -> Result<(), tonic::transport::Error> {
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let serving = match tls {
        Some(tls) => {
            futures::future::Either::Left(serve_tls(router, listener, shutdown, tls.clone()))
        }
        None => futures::future::Either::Right(serve_plaintext(router, listener, shutdown)),
    };
    let drained = async {
        match stopped.await {
            Ok(()) => tokio::time::sleep(DRAIN_TIMEOUT).await,
            // The server ended before it was told to stop: `serving` has the answer.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        r = serving => r,
        _ = drained => {
            tracing::info!(drain = ?DRAIN_TIMEOUT, "calls still open after the drain (long-lived streams); closing them");
            Ok(())
        }
    }
}

/// The principal the client certificate of TLS connection `stream` names, if any (see
/// `allot_common::tls::principal_of`).
pub fn principal_of_tls<IO>(
    stream: &tokio_rustls::server::TlsStream<IO>,
) -> Option<allot_common::tls::Principal> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| allot_common::tls::principal_of(c))
}

/// Serves `router` on `listener` in plaintext until `shutdown` resolves, then drains in-flight calls.
///
/// # Errors
/// The transport error if the server fails.
pub async fn serve_plaintext(
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

/// How long a caller has to complete its TLS handshake before its connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Like [`serve_plaintext`], over mutual TLS (see `allot_common::tls`): every connection must complete a handshake
/// with `tls`'s current server configuration, presenting a certificate the authority signed, within
/// [`TLS_HANDSHAKE_TIMEOUT`]; a plaintext, wrong-authority or stalled caller is dropped (logged at debug)
/// and the others are served meanwhile, each handshake running on a task of its own. Handlers learn who
/// called with [`peer_principal`].
///
/// # Errors
/// The transport error if the server fails.
pub async fn serve_tls(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    tls: std::sync::Arc<allot_common::tls::Tls>,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Authenticated>>(64);
    let accepting = allot_common::AbortOnDrop(tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (tx, acceptor) = (
                tx.clone(),
                tokio_rustls::TlsAcceptor::from(tls.configs().server),
            );
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(Authenticated::new(stream))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake not completed in time"),
                }
            });
        }
    }));
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let result = router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    drop(accepting);
    result
}

/// A connection [`serve_tls`] accepted, with the principal its client certificate names, read once when the
/// handshake completes (not at every call: parsing the certificate per call was 4% of the offer-broker's CPU,
/// issue 24). tonic puts the principal in each call's extensions as a [`PeerPrincipal`].
struct Authenticated {
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    principal: PeerPrincipal,
}

impl Authenticated {
    fn new(stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Authenticated {
        Authenticated {
            principal: PeerPrincipal(principal_of_tls(&stream)),
            stream,
        }
    }
}

/// The principal of a call's connection (see [`Authenticated`]); `None` when its certificate names none.
#[derive(Debug, Clone)]
struct PeerPrincipal(Option<allot_common::tls::Principal>);

impl tonic::transport::server::Connected for Authenticated {
    type ConnectInfo = PeerPrincipal;

    fn connect_info(&self) -> PeerPrincipal {
        self.principal.clone()
    }
}

impl tokio::io::AsyncRead for Authenticated {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Authenticated {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The principal whose certificate the caller of `request` presented (served by [`serve_tls`]), or the one
/// an in-process front end authenticated and put in the request's extensions (the Mesos HTTP API, after HTTP
/// basic authentication: no remote caller can set an extension); `None` for a plaintext connection.
pub fn peer_principal<T>(request: &tonic::Request<T>) -> Option<allot_common::tls::Principal> {
    if let Some(p) = request.extensions().get::<allot_common::tls::Principal>() {
        return Some(p.clone());
    }
    request.extensions().get::<PeerPrincipal>()?.0.clone()
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

/// `allot.leader.v1.Probe`: answers OK, so that `Replicas::find_leader` knows it reached the leader (a
/// standby's layer answers for it, naming the leader, before the call gets here). Every Allot server adds it
/// beside [`health`].
pub fn probe() -> allot_proto::leader::probe_server::ProbeServer<Probe> {
    allot_proto::leader::probe_server::ProbeServer::new(Probe)
}

/// The `allot.leader.v1.Probe` service (see [`probe`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe;

#[tonic::async_trait]
impl allot_proto::leader::probe_server::Probe for Probe {
    async fn leader(
        &self,
        _: tonic::Request<allot_proto::leader::LeaderRequest>,
    ) -> Result<tonic::Response<allot_proto::leader::LeaderResponse>, tonic::Status> {
        Ok(tonic::Response::new(allot_proto::leader::LeaderResponse {}))
    }
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
