//! The executor API: Mesos' v1 executor HTTP API (`POST /api/v1/executor`, JSON or protobuf, RecordIO event
//! stream; Mesos
//! `docs/executor-http-api.md`, `../shared/mesos-v1-api.md` section 3), served on `--executor-listen`
//! (loopback by default) for the executors this agent starts ([`crate::executors`]).
//!
//! Request checks, in Mesos' order: `405` (with `Allow: POST`) for another method; `400` without a
//! `Content-Type`, `415` for one other than `application/json` or `application/x-protobuf`; `400` for a
//! body that is not JSON or not a Call, or a Call that fails validation (`Failed to validate
//! executor::Call: ...`); `400` for an unknown framework or executor; `401` unless the call carries the
//! executor's secret (`Authorization: Bearer <MESOS_EXECUTOR_AUTHENTICATION_TOKEN>`), so that no other local
//! process can speak for an executor; `403` for a call of an executor that has not subscribed; then SUBSCRIBE
//! opens the event stream (`200`, chunked, one RecordIO record per chunk) and every other call is `202`.

use crate::Agent;
use crate::executors::Container;
use allot_mesos::executor::{Call, Event, Valid};
use allot_mesos::http::Encoding;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashSet;
use std::sync::Arc;

/// The executor API's routes (Mesos also answers under its process prefix, `/slave(1)/api/v1/executor`).
pub fn router(agent: Arc<Agent>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/executor", axum::routing::post(call))
        .route("/slave(1)/api/v1/executor", axum::routing::post(call))
        .route("/state", axum::routing::get(state))
        .route("/slave(1)/state", axum::routing::get(state))
        .with_state(agent)
}

/// The HTTP status of a refusal's number.
pub(crate) fn code_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

/// A plain-text error answer.
fn refuse(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

/// `POST /api/v1/executor`.
async fn call(
    State(agent): State<Arc<Agent>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    let parsed: Call = match allot_mesos::http::check_content_type(header(header::CONTENT_TYPE))
        .and_then(|e| allot_mesos::http::parse_call(&body, e))
    {
        Ok(c) => c,
        Err((code, message)) => return refuse(code_of(code), message),
    };
    let (framework_id, executor_id, valid) = match parsed.validate() {
        Ok(v) => v,
        Err(why) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("Failed to validate executor::Call: {why}"),
            );
        }
    };
    let key = (framework_id, executor_id);
    let Some(container) = agent.executors.get(&key) else {
        let framework_known = !agent.executors.of(&key.0, "").is_empty();
        return refuse(
            StatusCode::BAD_REQUEST,
            if framework_known {
                "Executor cannot be found"
            } else {
                "Framework cannot be found"
            },
        );
    };
    if !is_executor(&agent, peer, &headers, std::slice::from_ref(&container)).await {
        let mut r = refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: an executor call must carry 'Authorization: Bearer' with the executor's \
             MESOS_EXECUTOR_AUTHENTICATION_TOKEN, or come from a process of the executor",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"allot-executor\""),
        );
        return r;
    }
    match valid {
        Valid::Subscribe(s) => match allot_mesos::http::check_accept(header(header::ACCEPT)) {
            Ok(encoding) => subscribe(&agent, container, s, encoding).await,
            Err((code, message)) => refuse(code_of(code), message),
        },
        _ if !container.subscribed() => refuse(StatusCode::FORBIDDEN, "Executor is not subscribed"),
        Valid::Update(status) => {
            let mut status = allot_mesos::convert::status_from_v1(&status);
            fill(&agent, &container, &mut status);
            match container.update(status).await {
                Ok(()) => StatusCode::ACCEPTED.into_response(),
                Err(why) => refuse(StatusCode::BAD_REQUEST, why),
            }
        }
        Valid::Message(data) => {
            forward_message(&agent, &container, data);
            StatusCode::ACCEPTED.into_response()
        }
        Valid::Heartbeat => StatusCode::ACCEPTED.into_response(),
    }
}

/// `GET /state`: the agent as Mesos' agent describes itself (its ID, resources, and each framework's executors
/// with their sandboxes and tasks). For its executors (Toil's executor reads it at start: a caller with one
/// of their tokens, or connecting from one of their process groups), the frameworks' executors; for a
/// principal of `--credentials` (HTTP basic), also each running command task, as Mesos shows it: an executor
/// whose ID is the task's, with the task's sandbox as its `directory` (readable through `/files`). `401`
/// otherwise.
async fn state(
    State(agent): State<Arc<Agent>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let executors = agent.executors.all();
    let operator = match reader(&agent, peer, &headers, &executors).await {
        Ok(Reader::Operator) => true,
        Ok(Reader::Executor(_)) => false,
        Err(why) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                format!("Unauthorized: {}", why.unwrap_or(NOT_A_READER)),
            );
        }
    };
    let mut frameworks: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
        Default::default();
    for c in &executors {
        let (mut live, mut done) = (Vec::new(), Vec::new());
        let mut used = allot_resources::Resources::new();
        for (t, ended) in c.tasks() {
            let res = allot_common::convert::resources_from_proto(&t.resources).unwrap_or_default();
            let v = serde_json::json!({
                "id": t.task_id, "name": t.name, "framework_id": c.framework_id,
                "executor_id": c.info.executor_id, "slave_id": agent.id(),
                "resources": allot_mesos::convert::flat_resources(&res),
            });
            match ended {
                true => done.push(v),
                false => {
                    used.add(&res);
                    live.push(v)
                }
            }
        }
        frameworks
            .entry(c.framework_id.clone())
            .or_default()
            .push(serde_json::json!({
                "id": c.info.executor_id,
                "name": c.info.name,
                "source": "",
                "container": c.container_id,
                "directory": c.sandbox.display().to_string(),
                "resources": allot_mesos::convert::flat_resources(&used),
                "tasks": live,
                "queued_tasks": [],
                "completed_tasks": done,
            }));
    }
    if operator {
        let running: Vec<((String, String), allot_resources::Resources)> = agent
            .tasks
            .lock()
            .expect("tasks poisoned")
            .iter()
            .filter(|((fw, _), _)| !fw.is_empty())
            .map(|(k, r)| (k.clone(), r.resources.clone()))
            .collect();
        for ((fw, task), res) in running {
            if executors
                .iter()
                .any(|c| c.framework_id == fw && c.knows(&task))
            {
                continue;
            }
            let resources = allot_mesos::convert::flat_resources(&res);
            frameworks.entry(fw.clone()).or_default().push(serde_json::json!({
                "id": task,
                "name": format!("Command Executor (Task: {task})"),
                "source": task,
                "container": "",
                "directory": crate::executor::sandbox_path(&agent.work_dir, &fw, &task).display().to_string(),
                "resources": resources,
                "tasks": [{"id": task, "framework_id": fw, "executor_id": "", "slave_id": agent.id(),
                    "state": "TASK_RUNNING", "resources": resources}],
                "queued_tasks": [],
                "completed_tasks": [],
            }));
        }
    }
    let body = serde_json::json!({
        "id": agent.id(),
        "pid": format!("slave(1)@{}", agent.executor_endpoint),
        "hostname": agent.hostname,
        "version": allot_mesos::MESOS_VERSION,
        "resources": allot_mesos::convert::flat_resources(&agent.total),
        "attributes": {},
        "frameworks": frameworks.into_iter().map(|(id, executors)| serde_json::json!({
            "id": id, "executors": executors, "completed_executors": []})).collect::<Vec<_>>(),
        "completed_frameworks": [],
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Who may read the agent's `/state` and sandboxes (`/files`): a principal of `--credentials`, or an executor.
pub(crate) enum Reader {
    /// A principal of the agent's `--credentials` (HTTP basic): everything.
    Operator,
    /// One of the agent's executors: its own.
    Executor(Arc<Container>),
}

/// Why a caller without credentials or an executor's identity is refused.
pub(crate) const NOT_A_READER: &str = "the agent's /state and files are for its executors and for principals of its --credentials file (HTTP basic)";

/// The caller of a read-only endpoint: HTTP basic credentials of the agent's `--credentials`, else one of
/// `executors` ([`which_executor`]).
///
/// # Errors
/// `Some(why)` for wrong credentials; `None` for a caller that is neither.
pub(crate) async fn reader(
    agent: &Agent,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    executors: &[Arc<Container>],
) -> Result<Reader, Option<&'static str>> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|a| a.starts_with("Basic "));
    if let Some(auth) = basic {
        return match agent
            .credentials
            .as_ref()
            .and_then(|c| c.authenticate(Some(auth)))
        {
            Some(_) => Ok(Reader::Operator),
            None => Err(Some("wrong principal or secret")),
        };
    }
    match which_executor(agent, peer, headers, executors).await {
        Some(c) => Ok(Reader::Executor(c)),
        None => Err(None),
    }
}

/// Whether the caller is one of `executors` ([`which_executor`]).
async fn is_executor(
    agent: &Agent,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    executors: &[Arc<Container>],
) -> bool {
    which_executor(agent, peer, headers, executors)
        .await
        .is_some()
}

/// Which of `executors` the caller is: the one whose token it sends (`Authorization: Bearer`), or, sending
/// none (pymesos), the one in whose process group the process at the other end of its connection from `peer`
/// is, which no other local process can join ([`peer_in_groups`], one pass over `/proc` on a blocking thread).
pub(crate) async fn which_executor(
    agent: &Agent,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    executors: &[Arc<Container>],
) -> Option<Arc<Container>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(t) = token {
        return executors.iter().find(|c| c.token == t).cloned();
    }
    let local = agent.executor_endpoint.parse().ok()?;
    let groups: Vec<i32> = executors.iter().map(|c| c.pid.as_raw()).collect();
    let group = tokio::task::spawn_blocking(move || peer_in_groups(peer, local, &groups))
        .await
        .ok()??;
    executors.iter().find(|c| c.pid.as_raw() == group).cloned()
}

/// Which of the process groups `pgids` the TCP connection from `peer` to `local` (the executor API's
/// address) belongs to: its socket is found in `/proc/net/tcp` by its two ends, and its inode among the open
/// files of the groups' processes. Blocking.
fn peer_in_groups(
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    pgids: &[i32],
) -> Option<i32> {
    let inode = socket_inode(peer, local)?;
    let target = format!("socket:[{inode}]");
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let group = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // `pid (comm) state ppid pgrp ...`: comm may hold anything; fields follow the last `)`.
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().nth(2)?.parse::<i32>().ok()
            });
        let Some(group) = group.filter(|g| pgids.contains(g)) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
        {
            return Some(group);
        }
    }
    None
}

/// The inode of the socket whose local end is `from` and remote end `to`, from `/proc/net/tcp{,6}`.
fn socket_inode(from: std::net::SocketAddr, to: std::net::SocketAddr) -> Option<u64> {
    let (file, from_hex, to_hex) = match (from, to) {
        (std::net::SocketAddr::V4(f), std::net::SocketAddr::V4(t)) => {
            let hex = |a: std::net::SocketAddrV4| {
                format!(
                    "{:08X}:{:04X}",
                    u32::from_le_bytes(a.ip().octets()),
                    a.port()
                )
            };
            ("/proc/net/tcp", hex(f), hex(t))
        }
        _ => return None,
    };
    let table = std::fs::read_to_string(file).ok()?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1) == Some(&from_hex.as_str()) && cols.get(2) == Some(&to_hex.as_str()))
            .then(|| cols.get(9)?.parse().ok())
            .flatten()
    })
}

/// Completes an executor's status: the agent, framework and executor IDs, the source, a timestamp.
fn fill(agent: &Agent, c: &Container, status: &mut allot_proto::common::TaskStatus) {
    status.agent_id = agent.id();
    status.framework_id = c.framework_id.clone();
    status.executor_id = c.info.executor_id.clone();
    status.source = allot_proto::common::StatusSource::SourceExecutor as i32;
    if status.timestamp <= 0.0 {
        status.timestamp = allot_common::now_secs();
    }
}

/// SUBSCRIBE: the stream of SUBSCRIBED, LAUNCH, ... events. Unacknowledged updates the executor lists and the
/// agent has not checkpointed (its UPDATE call was lost) are taken as if sent now.
async fn subscribe(
    agent: &Arc<Agent>,
    c: Arc<Container>,
    s: allot_mesos::executor::Subscribe,
    encoding: Encoding,
) -> Response {
    // The tasks the executor has: given and not reported on, or reported on in an update it still holds (one
    // whose UPDATE call may never have reached the agent). None of them is launched again.
    let unacknowledged: HashSet<String> = s
        .unacknowledged_tasks
        .iter()
        .map(|t| t.task_id.value.clone())
        .chain(
            s.unacknowledged_updates
                .iter()
                .map(|u| u.status.task_id.value.clone()),
        )
        .collect();
    let subscribed = Event {
        kind: "SUBSCRIBED".into(),
        subscribed: Some(allot_mesos::executor::Subscribed {
            executor_info: allot_mesos::convert::executor_to_v1(&c.framework_id, &c.info),
            framework_info: allot_mesos::convert::framework_to_v1(
                &c.framework_id,
                &c.framework_info,
            ),
            agent_info: allot_mesos::v1::AgentInfo {
                hostname: agent.hostname.clone(),
                port: agent
                    .executor_endpoint
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok()),
                id: Some(allot_mesos::v1::Id::of(agent.id())),
                ..Default::default()
            },
            container_id: Some(allot_mesos::v1::Id::of(&c.container_id)),
        }),
        ..Default::default()
    };
    // The container is sized for every task it holds before the tasks not yet given go out as LAUNCH events.
    c.resize().await;
    let (n, rx) = c.subscribe(subscribed, &unacknowledged);
    tracing::info!(framework = %c.framework_id, executor = %c.info.executor_id, subscription = n, "executor subscribed");
    for u in s.unacknowledged_updates {
        let key = (c.framework_id.clone(), u.status.task_id.value.clone());
        let uuid = u.status.uuid.clone().unwrap_or_default().0;
        if uuid.len() != 16 || !c.knows(&key.1) || agent.updates.knows_update(&key, &uuid) {
            continue;
        }
        let mut status = allot_mesos::convert::status_from_v1(&u.status);
        fill(agent, &c, &mut status);
        let _ = c.update(status).await;
    }
    let stream = EventStream {
        rx,
        container: c,
        subscription: n,
        encoding,
        // Its first tick is at once: a HEARTBEAT right after the events already queued (SUBSCRIBED, LAUNCH).
        heartbeat: tokio::time::interval(EXECUTOR_HEARTBEAT_INTERVAL),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, encoding.media_type())
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// An executor's MESSAGE for its framework, to the broker (best effort: one try).
fn forward_message(agent: &Agent, c: &Container, data: Vec<u8>) {
    let req = allot_proto::agent::ExecutorToFrameworkRequest {
        agent_id: agent.id(),
        framework_id: c.framework_id.clone(),
        executor_id: c.info.executor_id.clone(),
        data,
    };
    agent.tell_broker("an executor's message", 1, move |mut client| {
        let req = req.clone();
        async move { client.executor_to_framework(req).await.map(drop) }
    });
}

/// How often an executor's stream carries a HEARTBEAT event (Mesos' `DEFAULT_EXECUTOR_HEARTBEAT_INTERVAL`), so
/// that proxies and executors see a live connection; the first follows SUBSCRIBED at once.
pub const EXECUTOR_HEARTBEAT_INTERVAL: std::time::Duration =
    std::time::Duration::from_secs(30 * 60);

/// A subscription's events as RecordIO records, one per chunk, and a HEARTBEAT every
/// [`EXECUTOR_HEARTBEAT_INTERVAL`]; dropping it (the executor went away) ends the subscription.
struct EventStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    container: Arc<Container>,
    subscription: u64,
    encoding: Encoding,
    heartbeat: tokio::time::Interval,
}

impl tokio_stream::Stream for EventStream {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            let ev = match self.rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => ev,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => match self.heartbeat.poll_tick(cx) {
                    Poll::Ready(_) => Event::bare("HEARTBEAT"),
                    Poll::Pending => return Poll::Pending,
                },
            };
            match ev.record(self.encoding) {
                Ok(r) => return Poll::Ready(Some(Ok(Bytes::from(r)))),
                // Ruled out for every event the agent writes by allot-mesos' tests.
                Err(e) => {
                    tracing::error!(event = %ev.kind, error = %e, "an event could not be encoded; it is left out")
                }
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.container.unsubscribed(self.subscription);
    }
}
