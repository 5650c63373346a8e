//! Tracing and metrics for every gRPC call, server and client side.
//!
//! - [`ServerLayer`] (a `tower::Layer` for `tonic::transport::Server::layer`): for each call, a server span
//!   named `package.Service/Method` whose parent is the caller's W3C context from the metadata, and the
//!   `allot_rpc_server_*` series. Health checks (`grpc.health.v1.Health`) are counted but not traced.
//! - [`TracedChannel`]: a channel that opens a client span for each call, child of the caller's current
//!   span, writes its context into the call's metadata, and records the `allot_rpc_client_*` series.
//!
//! Attributes follow the semantic conventions for RPC (v1.26.0): `rpc.system = "grpc"`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`, and `otel.kind` `server` or `client`. A server span's status is
//! ERROR for the codes the conventions call server errors (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
//! INTERNAL, UNAVAILABLE, DATA_LOSS); a client span's for any code but OK.
//!
//! The status code is read from the response headers, where gRPC puts it for a call that fails before its
//! first message; a call whose headers carry none succeeded (its code travels in the trailers).

use crate::metrics::RPC;
use crate::propagation;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument as _;

/// Names of the gRPC status codes, by number (`OK` = 0 … `UNAUTHENTICATED` = 16).
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of gRPC status `code` (`"UNKNOWN"` for numbers outside 0..=16).
pub fn code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|c| CODE_NAMES.get(c))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// `(service, method)` of a gRPC path `/package.Service/Method`.
fn split_path(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// The gRPC status code of a response, from its headers (0, OK, when they carry none).
fn status_code<B>(response: &http::Response<B>) -> i32 {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rpc_span(kind: &'static str, service: &str, method: &str) -> tracing::Span {
    tracing::info_span!(
        "rpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = kind,
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

/// Which end of a call a span and its series describe.
#[derive(Clone, Copy)]
enum Side {
    Server,
    Client,
}

/// Records the end of a call on `span` (`rpc.grpc.status_code`, ERROR status) and in the side's series.
fn finish(
    side: Side,
    span: &tracing::Span,
    service: &str,
    method: &str,
    code: i32,
    start: Instant,
) {
    span.record("rpc.grpc.status_code", code);
    let (error, requests, duration) = match side {
        Side::Server => (
            matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
            &RPC.server_requests,
            &RPC.server_duration,
        ),
        Side::Client => (code != 0, &RPC.client_requests, &RPC.client_duration),
    };
    if error {
        span.record("otel.status_code", "ERROR");
    }
    requests
        .with_label_values(&[service, method, code_name(code)])
        .inc();
    duration
        .with_label_values(&[service, method])
        .observe(start.elapsed().as_secs_f64());
}

/// A boxed future of a response.
type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Traces and measures every call a tonic server serves; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerLayer;

impl<S> tower::Layer<S> for ServerLayer {
    type Service = TracedServer<S>;

    fn layer(&self, inner: S) -> TracedServer<S> {
        TracedServer { inner }
    }
}

/// The service [`ServerLayer`] wraps around a server.
#[derive(Debug, Clone)]
pub struct TracedServer<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for TracedServer<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let (service, method) = (service.to_string(), method.to_string());
        let span = if service.starts_with("grpc.health.") {
            tracing::Span::none()
        } else {
            let span = rpc_span("server", &service, &method);
            propagation::set_parent_from_headers(&span, request.headers());
            span
        };
        let start = Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let result = future.await;
                let code = result.as_ref().map_or(2, status_code);
                let span = tracing::Span::current();
                finish(Side::Server, &span, &service, &method, code, start);
                result
            }
            .instrument(span),
        )
    }
}

/// A `tonic::transport::Channel` that traces and measures every call; see the module documentation.
///
/// Generated clients take it like a channel: `RegistryClient::new(allot_common::grpc::channel(addr)?)`.
#[derive(Debug, Clone)]
pub struct TracedChannel {
    inner: tonic::transport::Channel,
}

impl TracedChannel {
    /// Wraps `channel`.
    pub fn new(channel: tonic::transport::Channel) -> TracedChannel {
        TracedChannel { inner: channel }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for TracedChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let (service, method) = (service.to_string(), method.to_string());
        let span = rpc_span("client", &service, &method);
        propagation::inject_headers(&span, request.headers_mut());
        // The channel that was polled ready serves this call; a clone takes its place for the next one.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let start = Instant::now();
        let future = {
            let _entered = span.enter();
            tower::Service::call(&mut ready, request)
        };
        Box::pin(
            async move {
                let result = future.await;
                let code = result.as_ref().map_or(14, status_code);
                let span = tracing::Span::current();
                finish(Side::Client, &span, &service, &method, code, start);
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/allot.scheduler.v1.Scheduler/Accept"),
            ("allot.scheduler.v1.Scheduler", "Accept")
        );
        assert_eq!(split_path("/odd"), ("odd", ""));
    }

    #[test]
    fn codes_have_their_standard_names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
        assert_eq!(code_name(-1), "UNKNOWN");
    }
}
