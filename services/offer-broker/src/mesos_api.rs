//! The Mesos v1 scheduler HTTP API (issue 26): `POST /api/v1/scheduler` (also `/master/api/v1/scheduler`),
//! `GET /version` and `GET /health`, on `--mesos-listen`, so that a Mesos framework (pymesos, mesos-go, ...)
//! runs with nothing changed but the master's address.
//!
//! A translation, not a second implementation: each call becomes the `allot.scheduler.v1` request the gRPC API
//! takes and goes through the same [`SchedulerService`] (its authorization, the ACL file, the audit trail, the
//! broker's flows); each event of the framework's stream goes out in Mesos' form (`allot_mesos::convert`),
//! one RecordIO record per HTTP chunk. Calls and event streams are JSON or protobuf (`Content-Type` and
//! `Accept` as Mesos reads them; `allot_mesos::protobuf`); the operator API is JSON only.
//!
//! The rules are Mesos' (`../shared/mesos-v1-api.md` sections 1, 2 and 6): from a standby, `307` to the same
//! path on the leader's Mesos API (`Location: //host:port/path`; each replica records where it serves it in
//! etcd, `mesos_endpoints/<its gRPC address>`), or `503` while no leader is known; `405` for
//! another method, `400`/`415` for the media type, `400` for a body that is not a valid Call, `401` for a
//! caller that does not authenticate, `406` for a SUBSCRIBE that accepts neither JSON nor protobuf, `400` for a SUBSCRIBE
//! with a `Mesos-Stream-Id` or a call without the current one, `400` for an unknown framework and `403` for
//! one not subscribed here; SUBSCRIBE answers `200` with a `Mesos-Stream-Id` and the stream (SUBSCRIBED, then a
//! HEARTBEAT at once, then the events; a subscription the broker refuses gets an ERROR event and the stream
//! ends); every other call `202`. Outcomes Mesos reports as events are reported as events: the tasks of a
//! refused ACCEPT get TASK_ERROR or TASK_DROPPED updates, a KILL of an unknown task a TASK_LOST update.
//!
//! Authentication: a broker with TLS material (the default) serves HTTPS and HTTP on the one port ([`serve`]
//! tells them apart by the first byte). Over HTTPS a client may present a certificate of the cluster's
//! authority, whose principal it then is; a client without one (over HTTPS, or HTTP as pymesos speaks) sends
//! HTTP basic credentials from `--credentials` (`principal`, `secret`), a principal of kind `framework`; either
//! is authorized as a certificate's would be on the gRPC API. A broker run `--insecure` serves HTTP only and
//! takes anonymous calls. Basic credentials over plain HTTP travel in the clear: bind `--mesos-listen` to a
//! trusted network when clients use HTTP.

use crate::broker::Broker;
use crate::grpc::{EventStream, SchedulerService};
use allot_mesos::http::{Encoding, Refusal};
use allot_mesos::scheduler::{self as s, Valid};
use allot_proto::scheduler::{self as pb, scheduler_server::Scheduler as _};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The header naming a subscription.
const STREAM_ID: &str = "mesos-stream-id";

/// An open subscription over HTTP.
struct Subscription {
    stream_id: String,
    /// Events the front end itself sends on the stream (TASK_LOST for a KILL of an unknown task, ...).
    inject: mpsc::UnboundedSender<s::Event>,
}

/// The front end's state.
pub struct MesosApi {
    service: Arc<SchedulerService>,
    store: allot_server::Store,
    /// This replica's own `host:port`.
    own: String,
    broker: Arc<Broker>,
    leadership: allot_server::standby::Leadership,
    credentials: Option<Arc<allot_server::credentials::Credentials>>,
    /// Whether callers must authenticate (a broker with TLS material).
    secured: bool,
    /// The framework principal callers without credentials are taken as, if any
    /// (`--mesos-anonymous-principal`).
    anonymous: Option<String>,
    master: s::MasterInfo,
    streams: Mutex<HashMap<String, Subscription>>,
    started: std::time::Instant,
}

impl MesosApi {
    /// A front end for `service` (and its `broker`), served at `addr` (for SUBSCRIBED's `master_info` and
    /// `/redirect`), redirecting to the leader's (found in `store`) while `leadership` says standby; callers
    /// authenticate against `credentials` when `secured`, or, sending none, are `anonymous` if given.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        service: Arc<SchedulerService>,
        store: allot_server::Store,
        broker: Arc<Broker>,
        leadership: allot_server::standby::Leadership,
        credentials: Option<Arc<allot_server::credentials::Credentials>>,
        secured: bool,
        anonymous: Option<String>,
        addr: std::net::SocketAddr,
    ) -> MesosApi {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) => u32::from_le_bytes(v4.octets()),
            std::net::IpAddr::V6(_) => 0,
        };
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| addr.ip().to_string());
        MesosApi {
            service,
            store,
            own: addr.to_string(),
            broker,
            leadership,
            credentials,
            secured,
            anonymous,
            master: s::MasterInfo {
                id: allot_common::new_id("master"),
                ip,
                port: u32::from(addr.port()),
                pid: Some(format!("master@{addr}")),
                hostname: Some(hostname.clone()),
                version: Some(allot_mesos::MESOS_VERSION.into()),
                address: Some(s::Address {
                    hostname: Some(hostname),
                    ip: Some(addr.ip().to_string()),
                    port: i32::from(addr.port()),
                }),
            },
            streams: Mutex::default(),
            started: std::time::Instant::now(),
        }
    }

    /// Who calls: the principal of the client certificate of an HTTPS connection (`peer`), else from the
    /// `Authorization` header a principal of the credentials file; without one, the anonymous principal
    /// (`--mesos-anonymous-principal`) if there is one, or nobody on an insecure broker.
    ///
    /// # Errors
    /// `401` for a wrong credential, or none on a secured broker.
    fn authenticate(
        &self,
        peer: Option<axum::Extension<TlsPeer>>,
        authorization: Option<&str>,
    ) -> Result<Caller, Refusal> {
        if let Some(axum::Extension(TlsPeer(p))) = peer {
            return Ok(Caller(Some(p)));
        }
        match (&self.credentials, authorization) {
            (Some(c), Some(auth)) => match c.authenticate(Some(auth)) {
                Some(p) => Ok(Caller(Some(p))),
                None => Err((401, "Unauthorized: wrong principal or secret".into())),
            },
            (_, None) if self.anonymous.is_some() => Ok(Caller(self.anonymous.as_ref().map(|name| {
                allot_common::tls::Principal {
                    name: name.clone(),
                    kind: "framework".into(),
                }
            }))),
            _ if self.secured => Err((
                401,
                "Unauthorized: this broker requires HTTP basic authentication (a principal and secret from \
                 its --credentials file)"
                    .into(),
            )),
            _ => Ok(Caller(None)),
        }
    }

    /// What every request of a leader-only endpoint goes through: a standby redirects to the leader's same
    /// path and query (`503` while none is known); then the caller authenticates ([`MesosApi::authenticate`]).
    ///
    /// # Errors
    /// The answer to give instead: the redirect, or the refusal.
    async fn admit(
        &self,
        peer: Option<axum::Extension<TlsPeer>>,
        headers: &HeaderMap,
        uri: &axum::http::Uri,
    ) -> Result<Caller, Box<Response>> {
        match self.leader().await {
            Ok(None) => {}
            Ok(Some(leader)) => {
                let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
                return Err(Box::new(redirect_to(&leader, path)));
            }
            Err((code, message)) => return Err(Box::new(refuse(code, message))),
        }
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        self.authenticate(peer, auth)
            .map_err(|(code, message)| Box::new(refuse(code, message)))
    }

    /// What the operator views are made of, now.
    fn snapshot(&self) -> crate::mesos_state::Snapshot {
        crate::mesos_state::Snapshot {
            frameworks: self.broker.frameworks(),
            tasks: self.broker.tasks(""),
            offers: self.broker.offers(),
            agents: self.broker.agents(),
        }
    }

    /// Records in etcd that the replica advertised as `grpc` serves the Mesos API here, so that standbys can
    /// redirect to it once it leads. Best effort: without the record a standby answers `503` instead of `307`.
    pub async fn announce(&self, grpc: &str) {
        let key = self
            .store
            .key(allot_server::store::Kind::MesosEndpoints, grpc);
        if let Err(e) = self
            .store
            .put_bytes(&key, self.own.clone().into_bytes())
            .await
        {
            tracing::warn!(error = %e, "cannot record where this broker serves the Mesos API; standbys will answer 503, not redirect");
        }
    }

    /// Where the leader serves the Mesos API: `Ok(None)` while this replica leads; `Err` with a `503` when no
    /// leader, or no record of its Mesos API, is known.
    async fn leader(&self) -> Result<Option<String>, Refusal> {
        let leader = match self.leadership.leader_if_standby() {
            None => return Ok(None),
            Some(Some(l)) => l,
            Some(None) => {
                return Err((
                    503,
                    "not the leader, and no leader is elected yet; retry".into(),
                ));
            }
        };
        let key = self
            .store
            .key(allot_server::store::Kind::MesosEndpoints, &leader);
        let found = self.store.list_bytes(&key).await.ok().and_then(|kvs| {
            kvs.into_iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| String::from_utf8(v).ok())
        });
        match found {
            Some(addr) => Ok(Some(addr)),
            None => Err((
                503,
                format!("not the leader; the leader ({leader}) does not serve the Mesos API"),
            )),
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, Subscription>> {
        self.streams.lock().expect("streams poisoned")
    }

    /// Sends `ev` on framework `fw`'s HTTP stream, if it has one.
    fn inject(&self, fw: &str, ev: s::Event) {
        if let Some(sub) = self.streams().get(fw) {
            let _ = sub.inject.send(ev);
        }
    }
}

/// The routes.
pub fn router(api: Arc<MesosApi>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/scheduler", axum::routing::post(scheduler))
        .route("/master/api/v1/scheduler", axum::routing::post(scheduler))
        .route("/api/v1", axum::routing::post(operator))
        .route("/master/api/v1", axum::routing::post(operator))
        .route("/version", axum::routing::get(version))
        .route("/redirect", axum::routing::get(redirect))
        .route("/master/redirect", axum::routing::get(redirect))
        .route("/health", axum::routing::get(|| async { StatusCode::OK }))
        .route(
            "/master/health",
            axum::routing::get(|| async { StatusCode::OK }),
        )
        .route("/metrics/snapshot", axum::routing::get(metrics))
        .route("/master/state", axum::routing::get(view))
        .route("/state", axum::routing::get(view))
        .route("/master/state-summary", axum::routing::get(view))
        .route("/master/frameworks", axum::routing::get(view))
        .route("/frameworks", axum::routing::get(view))
        .route("/master/slaves", axum::routing::get(view))
        .route("/slaves", axum::routing::get(view))
        .route("/master/tasks", axum::routing::get(view))
        .route("/tasks", axum::routing::get(view))
        .with_state(api)
}

/// `GET /version`: a Mesos-style version (pymesos parses it as integers) and Allot's own.
async fn version() -> Response {
    let body = serde_json::json!({
        "version": allot_mesos::MESOS_VERSION,
        "allot_version": env!("CARGO_PKG_VERSION"),
        "build_date": "",
        "build_time": 0,
        "build_user": "allot",
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The principal of the client certificate presented on an HTTPS connection, put in each of its requests.
#[derive(Debug, Clone)]
pub struct TlsPeer(pub allot_common::tls::Principal);

/// Serves `router` on `listener` until the process ends: HTTPS (a client certificate optional, see
/// `allot_common::tls::TlsConfigs::https`) for a connection whose first byte opens a TLS handshake, when
/// `tls` is given, and plain HTTP otherwise. A handshake that fails or does not finish within
/// `allot_server::grpc::TLS_HANDSHAKE_TIMEOUT` drops that connection only.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<Arc<allot_common::tls::Tls>>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the Mesos API cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (router, tls) = (router.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let timeout = allot_server::grpc::TLS_HANDSHAKE_TIMEOUT;
            let mut first = [0u8; 1];
            let https = match (
                &tls,
                tokio::time::timeout(timeout, tcp.peek(&mut first)).await,
            ) {
                (Some(_), Ok(Ok(1))) => first[0] == 0x16,
                (_, Ok(Ok(_))) => false,
                _ => return,
            };
            let served = match (https, tls) {
                (true, Some(tls)) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.configs().https);
                    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => return,
                    };
                    let principal = allot_server::grpc::principal_of_tls(&stream);
                    let router = match principal {
                        Some(p) => router.layer(axum::Extension(TlsPeer(p))),
                        None => router,
                    };
                    serve_connection(stream, router).await
                }
                _ => serve_connection(tcp, router).await,
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "a Mesos API connection ended with an error");
            }
        });
    }
}

/// Serves one HTTP/1.1 connection.
async fn serve_connection<S>(stream: S, router: axum::Router) -> Result<(), hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await
}

/// Who calls: the principal HTTP authentication established, if any, which each gRPC request carries.
struct Caller(Option<allot_common::tls::Principal>);

impl Caller {
    /// `message` as a request of this caller.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(p) = &self.0 {
            r.extensions_mut().insert(p.clone());
        }
        r
    }
}

/// `307` to `//addr` + `path`, as Mesos redirects (protocol-relative).
fn redirect_to(addr: &str, path: &str) -> Response {
    let location = format!("//{addr}{path}");
    let mut r = (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::CONNECTION, "close")],
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `GET /redirect`: `307` to the leading master's Mesos API (this replica's own when it leads).
async fn redirect(State(api): State<Arc<MesosApi>>) -> Response {
    match api.leader().await {
        Ok(None) => redirect_to(&api.own, ""),
        Ok(Some(leader)) => redirect_to(&leader, ""),
        Err((code, message)) => refuse(code, message),
    }
}

/// JSON `body`, `200`.
fn json_response(body: &serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The query parameters of `uri` (IDs and numbers: no percent-decoding needed).
fn query(uri: &axum::http::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `GET /metrics/snapshot`: answered by any replica (`master/elected` says which leads), authenticated.
async fn metrics(
    State(api): State<Arc<MesosApi>>,
    peer: Option<axum::Extension<TlsPeer>>,
    headers: HeaderMap,
) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if let Err((code, message)) = api.authenticate(peer, auth) {
        return refuse(code, message);
    }
    let elected = api.leadership.leader_if_standby().is_none();
    let snapshot = match elected {
        true => api.snapshot(),
        false => Default::default(),
    };
    json_response(&crate::mesos_state::metrics(
        &snapshot,
        elected,
        api.started.elapsed().as_secs_f64(),
    ))
}

/// The read-only master views (`/master/state`, `/master/frameworks`, `/master/slaves`, `/master/tasks`,
/// `/master/state-summary`, and their short aliases): authenticated as the scheduler API is; a standby
/// redirects to the leader.
async fn view(
    State(api): State<Arc<MesosApi>>,
    peer: Option<axum::Extension<TlsPeer>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(answer) = api.admit(peer, &headers, &uri).await {
        return *answer;
    }
    let q = query(&uri);
    let s = api.snapshot();
    use crate::mesos_state as v;
    let body = match uri.path().trim_start_matches("/master") {
        "/state" => v::state(&s, &api.master),
        "/state-summary" => v::state_summary(&s, &api.master),
        "/frameworks" => v::frameworks(&s, q.get("framework_id").map(String::as_str)),
        "/slaves" => v::slaves(&s, q.get("slave_id").map(String::as_str)),
        _ => v::tasks(&s, &q),
    };
    json_response(&body)
}

/// `POST /api/v1`: Mesos' operator API, its read calls (see `mesos_state::operator`), authenticated like the
/// scheduler API; a standby redirects to the leader.
async fn operator(
    State(api): State<Arc<MesosApi>>,
    peer: Option<axum::Extension<TlsPeer>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(answer) = api.admit(peer, &headers, &uri).await {
        return *answer;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let call: serde_json::Value =
        match allot_mesos::http::check_content_type(header("content-type")).and_then(|e| match e {
            Encoding::Json => allot_mesos::http::parse_json(&body),
            Encoding::Protobuf => Err((
                415,
                "Allot's operator API speaks application/json only".to_string(),
            )),
        }) {
            Ok(c) => c,
            Err((code, message)) => return refuse(code, message),
        };
    let Some(kind) = call.get("type").and_then(|t| t.as_str()) else {
        return refuse(
            400,
            "Failed to validate master::Call: Expecting 'type' to be present",
        );
    };
    let elected = api.leadership.leader_if_standby().is_none();
    let uptime = api.started.elapsed().as_secs_f64();
    match crate::mesos_state::operator(kind, &api.snapshot(), &api.master, elected, uptime) {
        Ok(answer) => json_response(&answer),
        Err(why) => refuse(400, why),
    }
}

/// A plain-text refusal.
fn refuse(code: u16, message: impl Into<String>) -> Response {
    let mut r = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response();
    if code == 401 {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"allot\""),
        );
    }
    r
}

/// The HTTP answer to a call the gRPC service refused with `status`.
fn refusal(status: &tonic::Status) -> Response {
    use tonic::Code;
    let code = match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::AlreadyExists => 400,
        Code::PermissionDenied | Code::FailedPrecondition => 403,
        Code::Unauthenticated => 401,
        Code::Unavailable | Code::DeadlineExceeded => 503,
        _ => 500,
    };
    refuse(code, status.message().to_string())
}

/// `202 Accepted`, with `Connection: close` (pymesos reuses one connection and dies on one closed under it;
/// a fresh one per call is always safe).
fn accepted() -> Response {
    (StatusCode::ACCEPTED, [(header::CONNECTION, "close")]).into_response()
}

/// `POST /api/v1/scheduler`.
async fn scheduler(
    State(api): State<Arc<MesosApi>>,
    peer: Option<axum::Extension<TlsPeer>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let caller = match api.admit(peer, &headers, &uri).await {
        Ok(c) => c,
        Err(answer) => return *answer,
    };
    let call: s::Call = match allot_mesos::http::check_content_type(header("content-type"))
        .and_then(|e| allot_mesos::http::parse_call(&body, e))
    {
        Ok(c) => c,
        Err((code, message)) => return refuse(code, message),
    };
    let framework = call.framework().unwrap_or_default().to_string();
    let valid = match call.validate() {
        Ok(v) => v,
        Err(why) => return refuse(400, format!("Failed to validate scheduler::Call: {why}")),
    };
    if let Valid::Subscribe(info) = valid {
        if header(STREAM_ID).is_some() {
            return refuse(
                400,
                "Subscribe calls should not include the 'Mesos-Stream-Id' header",
            );
        }
        let encoding = match allot_mesos::http::check_accept(header("accept")) {
            Ok(e) => e,
            Err((code, message)) => return refuse(code, message),
        };
        return subscribe(api.clone(), info, &caller, encoding).await;
    }
    // Every other call: on the framework's current subscription here.
    let current = api.streams().get(&framework).map(|s| s.stream_id.clone());
    match (current, header(STREAM_ID)) {
        (None, _) if api.broker.framework_user(&framework).is_none() => {
            return refuse(400, "Framework cannot be found");
        }
        (None, _) => return refuse(403, "Framework is not subscribed"),
        (Some(_), None) => {
            return refuse(
                400,
                "All non-subscribe calls should include the 'Mesos-Stream-Id' header",
            );
        }
        (Some(current), Some(given)) if current != given => {
            return refuse(
                400,
                format!(
                    "The stream ID '{given}' included in this request didn't match the stream ID currently \
                     associated with framework ID {framework}"
                ),
            );
        }
        _ => {}
    }
    let svc = &api.service;
    let fw = framework.clone();
    let outcome = match valid {
        Valid::Subscribe(_) => unreachable!("handled above"),
        Valid::Teardown => svc
            .teardown(caller.request(pb::TeardownRequest { framework_id: fw }))
            .await
            .map(drop),
        Valid::Accept(offer_ids, operations, refuse_seconds) => {
            return accept(
                &api,
                &framework,
                offer_ids,
                operations,
                refuse_seconds,
                &caller,
            )
            .await;
        }
        Valid::Decline(offer_ids, refuse_seconds) => svc
            .decline(caller.request(pb::DeclineRequest {
                framework_id: fw,
                offer_ids,
                filters: Some(pb::Filters { refuse_seconds }),
            }))
            .await
            .map(drop)
            // An offer already gone needs no decline.
            .or_else(|e| match e.code() {
                tonic::Code::NotFound => Ok(()),
                _ => Err(e),
            }),
        Valid::Revive => svc
            .revive(caller.request(pb::ReviveRequest { framework_id: fw }))
            .await
            .map(drop),
        Valid::Suppress => svc
            .suppress(caller.request(pb::SuppressRequest { framework_id: fw }))
            .await
            .map(drop),
        Valid::Kill(task_id, agent_id) => {
            let killed = svc
                .kill(caller.request(pb::KillRequest {
                    framework_id: fw,
                    task_id: task_id.clone(),
                    agent_id: agent_id.clone(),
                }))
                .await;
            match killed {
                // Mesos answers the kill of a task it does not know with TASK_LOST.
                Err(e) if e.code() == tonic::Code::NotFound => {
                    api.inject(&framework, lost(&task_id, &agent_id, e.message()));
                    Ok(())
                }
                r => r.map(drop),
            }
        }
        Valid::Shutdown(agent_id, executor_id) => best_effort(
            svc.shutdown(caller.request(pb::ShutdownRequest {
                framework_id: fw,
                agent_id,
                executor_id,
            }))
            .await
            .map(drop),
        ),
        Valid::Acknowledge(agent_id, task_id, uuid) => svc
            .acknowledge(caller.request(pb::AcknowledgeRequest {
                framework_id: fw,
                agent_id,
                task_id,
                uuid,
                more: Vec::new(),
            }))
            .await
            .map(drop),
        Valid::Reconcile(tasks) => svc
            .reconcile(
                caller.request(pb::ReconcileRequest {
                    framework_id: fw,
                    tasks: tasks
                        .into_iter()
                        .map(|(task_id, agent_id)| pb::ReconcileTask { task_id, agent_id })
                        .collect(),
                }),
            )
            .await
            .map(drop),
        Valid::Message(agent_id, executor_id, data) => best_effort(
            svc.message(caller.request(pb::MessageRequest {
                framework_id: fw,
                agent_id,
                executor_id,
                data,
            }))
            .await
            .map(drop),
        ),
        Valid::Ignored(kind) => {
            tracing::debug!(framework = %framework, call = %kind, "a Mesos call Allot accepts and ignores");
            Ok(())
        }
    };
    match outcome {
        Ok(()) => accepted(),
        Err(e) => refusal(&e),
    }
}

/// ACCEPT with RESERVE and UNRESERVE operations only: `202` when the broker applied them (the offers come
/// again with the reservation), `400` with the reason when it refused them (as Mesos' validation does for
/// an invalid operation), `503` when the allocator cannot be reached.
async fn accept_reservations(
    api: &MesosApi,
    framework: &str,
    offer_ids: Vec<String>,
    reservations: Vec<(bool, Vec<allot_mesos::v1::Resource>)>,
    refuse_seconds: Option<f64>,
    caller: &Caller,
) -> Response {
    let mut operations = Vec::new();
    for (reserve, resources) in reservations {
        let resources = match allot_mesos::convert::resources_from_v1(&resources) {
            Ok(r) => r,
            Err(why) => return refuse(400, format!("Failed to validate scheduler::Call: {why}")),
        };
        operations.push(pb::Operation {
            operation: Some(match reserve {
                true => pb::operation::Operation::Reserve(pb::Reserve { resources }),
                false => pb::operation::Operation::Unreserve(pb::Unreserve { resources }),
            }),
        });
    }
    let r = api
        .service
        .accept(caller.request(pb::AcceptRequest {
            framework_id: framework.into(),
            offer_ids,
            operations,
            filters: Some(pb::Filters { refuse_seconds }),
        }))
        .await;
    match r {
        Ok(_) => accepted(),
        Err(e) => refusal(&e),
    }
}

/// A best-effort call (MESSAGE, SHUTDOWN): an executor that is not there is not an error, as in Mesos.
fn best_effort(r: Result<(), tonic::Status>) -> Result<(), tonic::Status> {
    match r {
        Err(e) if e.code() == tonic::Code::NotFound => {
            tracing::debug!(error = %e.message(), "a best-effort call found nothing to act on");
            Ok(())
        }
        r => r,
    }
}

/// A TASK_LOST update from the master (no uuid: nothing to acknowledge).
fn lost(task_id: &str, agent_id: &str, why: &str) -> s::Event {
    let status = allot_proto::common::TaskStatus {
        task_id: task_id.into(),
        state: allot_proto::common::TaskState::TaskLost as i32,
        message: why.into(),
        source: allot_proto::common::StatusSource::SourceMaster as i32,
        reason: "REASON_RECONCILIATION".into(),
        agent_id: agent_id.into(),
        timestamp: allot_common::now_secs(),
        ..Default::default()
    };
    s::Event {
        kind: "UPDATE".into(),
        update: Some(s::Update {
            status: allot_mesos::convert::status_to_v1(&status),
        }),
        ..Default::default()
    }
}

/// ACCEPT: LAUNCH operations become one gRPC ACCEPT. A task Allot cannot take (a Mesos feature it does not
/// support) fails the whole ACCEPT: each task gets TASK_ERROR with the reason and the offers are declined.
/// The broker's own refusals are already answered on the stream (TASK_ERROR, TASK_DROPPED), so they are `202`
/// here, as in Mesos.
async fn accept(
    api: &MesosApi,
    framework: &str,
    offer_ids: Vec<String>,
    operations: Vec<s::Operation>,
    refuse_seconds: Option<f64>,
    caller: &Caller,
) -> Response {
    let mut tasks = Vec::new();
    let mut unsupported = None;
    let mut reservations = Vec::new();
    for op in operations {
        match (op.kind.as_deref(), op.launch, op.reserve, op.unreserve) {
            (Some("LAUNCH") | None, Some(l), ..) => tasks.extend(l.task_infos),
            (Some("RESERVE"), _, Some(r), _) => reservations.push((true, r.resources)),
            (Some("UNRESERVE"), _, _, Some(r)) => reservations.push((false, r.resources)),
            (kind, ..) => {
                unsupported = Some(format!(
                    "operation {} is not supported by Allot (LAUNCH, RESERVE and UNRESERVE are)",
                    kind.unwrap_or("without a type")
                ))
            }
        }
    }
    if unsupported.is_none() && !reservations.is_empty() && tasks.is_empty() {
        return accept_reservations(
            api,
            framework,
            offer_ids,
            reservations,
            refuse_seconds,
            caller,
        )
        .await;
    }
    if !reservations.is_empty() && unsupported.is_none() {
        unsupported = Some(
            "RESERVE and UNRESERVE cannot share an ACCEPT with LAUNCH in Allot: reserve first, then launch on \
             the offers that follow"
                .into(),
        );
    }
    let converted: Result<Vec<_>, String> = match unsupported {
        Some(why) => Err(why),
        None => tasks
            .iter()
            .map(allot_mesos::convert::task_from_v1)
            .collect(),
    };
    let tasks = match converted {
        Ok(t) => t,
        Err(why) => {
            for t in &tasks {
                let status = allot_proto::common::TaskStatus {
                    task_id: t.task_id.value.clone(),
                    state: allot_proto::common::TaskState::TaskError as i32,
                    message: why.clone(),
                    source: allot_proto::common::StatusSource::SourceMaster as i32,
                    reason: "REASON_TASK_INVALID".into(),
                    agent_id: t.agent_id.value.clone(),
                    timestamp: allot_common::now_secs(),
                    ..Default::default()
                };
                api.inject(
                    framework,
                    s::Event {
                        kind: "UPDATE".into(),
                        update: Some(s::Update {
                            status: allot_mesos::convert::status_to_v1(&status),
                        }),
                        ..Default::default()
                    },
                );
            }
            let declined = api
                .service
                .decline(caller.request(pb::DeclineRequest {
                    framework_id: framework.into(),
                    offer_ids,
                    filters: Some(pb::Filters { refuse_seconds }),
                }))
                .await;
            if let Err(e) = declined {
                tracing::debug!(error = %e.message(), "declining the offers of a refused ACCEPT");
            }
            return match tasks.is_empty() {
                true => refuse(400, why),
                false => accepted(),
            };
        }
    };
    let r = api
        .service
        .accept(caller.request(pb::AcceptRequest {
            framework_id: framework.into(),
            offer_ids,
            operations: vec![pb::Operation {
                operation: Some(pb::operation::Operation::Launch(pb::Launch {
                    task_infos: tasks,
                })),
            }],
            filters: Some(pb::Filters { refuse_seconds }),
        }))
        .await;
    match r {
        Ok(_) => accepted(),
        Err(e)
            if matches!(
                e.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            ) =>
        {
            accepted()
        }
        Err(e) => refusal(&e),
    }
}

/// SUBSCRIBE: the broker's subscription, as a Mesos event stream.
async fn subscribe(
    api: Arc<MesosApi>,
    info: allot_mesos::v1::FrameworkInfo,
    caller: &Caller,
    encoding: Encoding,
) -> Response {
    use tokio_stream::StreamExt as _;
    let aware = allot_mesos::convert::partition_aware(&info.capabilities);
    let info = allot_mesos::convert::framework_from_v1(&info);
    let role = info.roles.first().cloned().unwrap_or_else(|| "*".into());
    let events = api
        .service
        .subscribe(caller.request(pb::SubscribeRequest {
            framework_info: Some(info),
        }))
        .await;
    let stream_id = uuid::Uuid::new_v4().to_string();
    let mut events = match events {
        Ok(r) => r.into_inner(),
        Err(e)
            if matches!(
                e.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ) =>
        {
            return refusal(&e);
        }
        Err(e) if e.code() == tonic::Code::Unavailable => return refusal(&e),
        Err(e) => {
            // Mesos: a SUBSCRIBE that passed HTTP validation gets 200 and an ERROR event, then the stream ends.
            let record = frame(encoding, &s::Event::error(e.message().to_string()));
            let once = tokio_stream::iter(record.map(Ok::<_, std::convert::Infallible>));
            return stream_response(&stream_id, encoding, Body::from_stream(once));
        }
    };
    let Some(Ok(first)) = events.next().await else {
        return refuse(503, "the subscription ended before it began; retry");
    };
    let framework = match &first.event {
        Some(pb::event::Event::Subscribed(s)) => s.framework_id.clone(),
        _ => return refuse(500, "the subscription did not begin with SUBSCRIBED"),
    };
    let (inject, injected) = mpsc::unbounded_channel();
    api.streams().insert(
        framework.clone(),
        Subscription {
            stream_id: stream_id.clone(),
            inject,
        },
    );
    let mut head = std::collections::VecDeque::new();
    if let Some(ev) = allot_mesos::convert::event_to_v1(&first, &role, aware, &api.master) {
        head.extend(frame(encoding, &ev));
    }
    // Mesos sends a HEARTBEAT right after SUBSCRIBED.
    head.extend(frame(encoding, &s::Event::bare("HEARTBEAT")));
    let stream = HttpEvents {
        head,
        events,
        injected,
        role,
        aware,
        api: api.clone(),
        framework,
        stream_id: stream_id.clone(),
        encoding,
    };
    stream_response(&stream_id, encoding, Body::from_stream(stream))
}

/// `event` as one RecordIO record in `encoding`; none (and an error in the log) if it does not fit Mesos'
/// protobuf form, which the `allot-mesos` tests rule out for every event Allot writes.
fn frame(encoding: Encoding, event: &s::Event) -> Option<Bytes> {
    match event.record(encoding) {
        Ok(r) => Some(Bytes::from(r)),
        Err(e) => {
            tracing::error!(event = %event.kind, error = %e, "an event could not be encoded; it is left out");
            None
        }
    }
}

/// `200`, `encoding`'s media type, `Mesos-Stream-Id`, chunked `body`.
fn stream_response(stream_id: &str, encoding: Encoding, body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(encoding.media_type()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(stream_id) {
        h.insert(STREAM_ID, v);
    }
    r
}

/// A subscription's events as RecordIO records, one per chunk: the first ones, then what the front end
/// injects and what the broker sends. Ends when the broker's stream does (TEARDOWN, a newer subscription);
/// dropping it (the framework went away) ends the subscription here and at the broker.
struct HttpEvents {
    head: std::collections::VecDeque<Bytes>,
    events: EventStream,
    injected: mpsc::UnboundedReceiver<s::Event>,
    role: String,
    aware: bool,
    api: Arc<MesosApi>,
    framework: String,
    stream_id: String,
    encoding: Encoding,
}

impl tokio_stream::Stream for HttpEvents {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if let Some(b) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(b)));
        }
        while let Poll::Ready(Some(ev)) = self.injected.poll_recv(cx) {
            if let Some(b) = frame(self.encoding, &ev) {
                return Poll::Ready(Some(Ok(b)));
            }
        }
        loop {
            match std::pin::Pin::new(&mut self.events).poll_next(cx) {
                Poll::Ready(Some(Ok(ev))) => {
                    let me = &*self;
                    if let Some(out) =
                        allot_mesos::convert::event_to_v1(&ev, &me.role, me.aware, &me.api.master)
                        && let Some(b) = frame(me.encoding, &out)
                    {
                        return Poll::Ready(Some(Ok(b)));
                    }
                }
                Poll::Ready(_) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for HttpEvents {
    fn drop(&mut self) {
        let mut streams = self.api.streams();
        if streams
            .get(&self.framework)
            .is_some_and(|s| s.stream_id == self.stream_id)
        {
            streams.remove(&self.framework);
        }
    }
}
