//! Mesos' v1 scheduler HTTP API on the offer-broker (issue 26), over raw HTTP/1.1 on a real socket, as a Mesos
//! framework speaks it: the protocol rules of Mesos' own tests (`scheduler_http_api_tests.cpp`;
//! `../shared/mesos-v1-api.md` section 6) and a task run end to end.

use allot_tests::{Cluster, ClusterOptions, PATIENCE};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

const CREDENTIALS: &str = "framework-mesos s3cret\n";

/// `Authorization` for `principal:secret`.
fn basic(principal_secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(principal_secret)
    )
}

/// An HTTP response: status, headers (lowercased names), and the reader positioned at the body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    reader: BufReader<tokio::net::TcpStream>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The whole body (Content-Length or until close; not for streams).
    async fn body(mut self) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, self.reader.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The next chunk of a chunked body; `None` at its end.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let mut line = String::new();
        self.reader.read_line(&mut line).await.ok()?;
        let size = usize::from_str_radix(line.trim(), 16).ok()?;
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).await.ok()?;
        data.truncate(size);
        (size > 0).then_some(data)
    }

    /// The next event of a SUBSCRIBE stream: one RecordIO record per chunk, as Mesos sends.
    async fn event(&mut self) -> Option<Value> {
        let chunk = tokio::time::timeout(PATIENCE, self.chunk())
            .await
            .expect("an event within patience")?;
        let text = String::from_utf8(chunk).expect("text");
        let (len, record) = text.split_once('\n').expect("a RecordIO record");
        assert_eq!(len.parse::<usize>().unwrap(), record.len(), "{text}");
        Some(serde_json::from_str(record).expect("JSON"))
    }

    /// The next event of a stream in protobuf, as JSON (through `allot_mesos::protobuf`, which reads Mesos'
    /// field numbers).
    async fn proto_event(&mut self) -> Option<Value> {
        let chunk = tokio::time::timeout(PATIENCE, self.chunk())
            .await
            .expect("an event within patience")?;
        let nl = chunk
            .iter()
            .position(|b| *b == b'\n')
            .expect("a RecordIO record");
        let len: usize = std::str::from_utf8(&chunk[..nl]).unwrap().parse().unwrap();
        assert_eq!(len, chunk.len() - nl - 1);
        Some(
            allot_mesos::protobuf::to_json("mesos.v1.scheduler.Event", &chunk[nl + 1..])
                .expect("protobuf"),
        )
    }

    /// The next protobuf event of type `kind`, skipping others.
    async fn next_proto(&mut self, kind: &str) -> Value {
        loop {
            let ev = self
                .proto_event()
                .await
                .unwrap_or_else(|| panic!("the stream ended before {kind}"));
            if ev["type"] == kind {
                return ev;
            }
        }
    }

    /// The next event of type `kind`, skipping others (HEARTBEAT, OFFERS, ...).
    async fn next(&mut self, kind: &str) -> Value {
        loop {
            let ev = self
                .event()
                .await
                .unwrap_or_else(|| panic!("the stream ended before {kind}"));
            if ev["type"] == kind {
                return ev;
            }
        }
    }
}

/// Sends `method path` with `headers` (each ending in CRLF) and `body`.
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> Answer {
    http_bytes(addr, method, path, headers, body.as_bytes()).await
}

/// [`http`] with a body of bytes (protobuf).
async fn http_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    s.write_all(&request).await.expect("write");
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await.expect("status");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Answer {
        status,
        headers,
        reader,
    }
}

/// A POST of `body` to the scheduler API with `headers`.
async fn post(addr: SocketAddr, headers: &str, body: &str) -> Answer {
    http(addr, "POST", "/api/v1/scheduler", headers, body).await
}

/// A POST of `call` to the scheduler API as `framework-mesos`, with `extra` headers.
async fn call(addr: SocketAddr, extra: &str, call: &Value) -> Answer {
    let headers = format!(
        "Content-Type: application/json\r\nConnection: close\r\n{}{extra}",
        basic("framework-mesos:s3cret")
    );
    post(addr, &headers, &call.to_string()).await
}

/// A cluster serving the Mesos API with [`CREDENTIALS`] and one agent of 2 CPUs and 512 MiB; the Mesos API's
/// address.
async fn mesos_cluster() -> (Cluster, SocketAddr) {
    let mut cluster = Cluster::start_with(ClusterOptions {
        mesos_credentials: Some(CREDENTIALS.into()),
        ..Default::default()
    })
    .await;
    cluster.add_agent("cpus:2;mem:512").await;
    let addr = cluster.mesos_addr.expect("the Mesos API");
    (cluster, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesos_framework_runs_a_task_over_the_v1_scheduler_http_api() {
    let (_cluster, addr) = mesos_cluster().await;
    let user = allot_tests::current_user();

    // pymesos asks for /version and parses it.
    let version = http(addr, "GET", "/version", "Connection: close\r\n", "").await;
    assert_eq!(version.status, 200);
    let v: Value = serde_json::from_str(&version.body().await).unwrap();
    assert_eq!(v["version"], "1.11.0");

    let subscribe = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {
        "user": user, "name": "mesos-http", "roles": ["*"], "capabilities": [{"type": "MULTI_ROLE"}]}}});
    // The protocol rules, each as Mesos answers.
    let json_type = "Content-Type: application/json\r\nConnection: close\r\n";
    let cases: Vec<(Answer, u16, &str)> = vec![
        (
            http(
                addr,
                "GET",
                "/api/v1/scheduler",
                "Connection: close\r\n",
                "",
            )
            .await,
            405,
            "GET",
        ),
        (
            post(addr, json_type, &subscribe.to_string()).await,
            401,
            "no credentials",
        ),
        (
            post(
                addr,
                &format!("{json_type}{}", basic("framework-mesos:nope")),
                &subscribe.to_string(),
            )
            .await,
            401,
            "a wrong secret",
        ),
        (
            post(
                addr,
                &format!("Connection: close\r\n{}", basic("framework-mesos:s3cret")),
                &subscribe.to_string(),
            )
            .await,
            400,
            "no Content-Type",
        ),
        (
            post(
                addr,
                &format!(
                    "Content-Type: application/unknown-media-type\r\nConnection: close\r\n{}",
                    basic("framework-mesos:s3cret")
                ),
                "{}",
            )
            .await,
            415,
            "an unknown media type",
        ),
        (
            call(addr, "", &json!("MALFORMED_CONTENT")).await,
            400,
            "malformed content",
        ),
        (
            call(addr, "", &json!({"string": "valid_json"})).await,
            400,
            "JSON that is no Call",
        ),
        (
            call(addr, "Accept: foo\r\n", &subscribe).await,
            406,
            "Accept: foo",
        ),
        (
            call(addr, "Mesos-Stream-Id: x\r\n", &subscribe).await,
            400,
            "SUBSCRIBE with a stream ID",
        ),
        (
            call(
                addr,
                "",
                &json!({"type": "TEARDOWN", "framework_id": {"value": "no-such-framework"}}),
            )
            .await,
            400,
            "an unknown framework",
        ),
    ];
    for (answer, want, what) in cases {
        let status = answer.status;
        assert_eq!(status, want, "{what}: {}", answer.body().await);
    }
    let mut bad_role = subscribe.clone();
    bad_role["subscribe"]["framework_info"]["roles"] = json!(["/test/test1"]);
    let mut refused = call(addr, "", &bad_role).await;
    assert_eq!(refused.status, 200, "a refused SUBSCRIBE still streams");
    assert_eq!(
        refused.next("ERROR").await["error"]["message"]
            .as_str()
            .map(|m| !m.is_empty()),
        Some(true)
    );
    assert!(refused.event().await.is_none(), "and then ends");

    // A subscription: 200, chunked, a stream ID, SUBSCRIBED then HEARTBEAT at once, then offers.
    let mut stream = call(addr, "", &subscribe).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("transfer-encoding"), Some("chunked"));
    assert_eq!(stream.header("content-type"), Some("application/json"));
    let stream_id = stream
        .header("mesos-stream-id")
        .expect("a stream ID")
        .to_string();
    let subscribed = stream.event().await.unwrap();
    assert_eq!(subscribed["type"], "SUBSCRIBED");
    let fw = subscribed["subscribed"]["framework_id"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!fw.is_empty());
    assert_eq!(subscribed["subscribed"]["master_info"]["version"], "1.11.0");
    assert_eq!(stream.event().await.unwrap()["type"], "HEARTBEAT");
    let offers = stream.next("OFFERS").await;
    let offer = &offers["offers"]["offers"][0];
    assert_eq!(offer["allocation_info"]["role"], "*");
    assert_eq!(offer["resources"][0]["type"], "SCALAR");
    // The agent's HTTP endpoint, as Mesos' master gives it.
    assert_eq!(offer["url"]["scheme"], "http");
    assert_eq!(offer["url"]["path"], "/slave(1)");
    assert_eq!(offer["url"]["address"]["ip"], "127.0.0.1");
    assert!(offer["url"]["address"]["port"].as_u64().unwrap() > 0);
    let with_id = format!("Mesos-Stream-Id: {stream_id}\r\n");

    // Calls need the current stream ID.
    let task = json!({"name": "hello", "task_id": {"value": "t1"}, "agent_id": offer["agent_id"],
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}}],
        "command": {"value": "echo hello from $MESOS_SANDBOX"}});
    let accept = json!({"type": "ACCEPT", "framework_id": {"value": fw}, "accept": {
        "offer_ids": [offer["id"]], "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task]}}],
        "filters": {"refuse_seconds": 1}}});
    assert_eq!(call(addr, "", &accept).await.status, 400, "no stream ID");
    assert_eq!(
        call(addr, "Mesos-Stream-Id: stale\r\n", &accept)
            .await
            .status,
        400,
        "another stream ID"
    );
    let accepted = call(addr, &with_id, &accept).await;
    let status = accepted.status;
    assert_eq!(status, 202, "{}", accepted.body().await);
    // Every update is acknowledged, as pymesos does; the task finishes.
    ack_until_finished(&mut stream, false, addr, &with_id, &fw, "t1").await;
    let bad_uuid = json!({"type": "ACKNOWLEDGE", "framework_id": {"value": fw}, "acknowledge": {
        "agent_id": {"value": "a"}, "task_id": {"value": "t1"}, "uuid": "YmFkLXV1aWQ="}});
    let answer = call(addr, &with_id, &bad_uuid).await;
    assert_eq!(answer.status, 400);
    assert!(answer.body().await.contains("Not a valid UUID"));
    // Explicit reconciliation: the latest state, without a uuid.
    let reconcile = json!({"type": "RECONCILE", "framework_id": {"value": fw}, "reconcile": {
        "tasks": [{"task_id": {"value": "t1"}}]}});
    assert_eq!(call(addr, &with_id, &reconcile).await.status, 202);
    let update = stream.next("UPDATE").await;
    assert_eq!(update["update"]["status"]["state"], "TASK_FINISHED");
    assert!(update["update"]["status"].get("uuid").is_none());
    // The read-only master views tools read, authenticated like the scheduler API.
    let authed = format!("Connection: close\r\n{}", basic("framework-mesos:s3cret"));
    assert_eq!(
        http(addr, "GET", "/master/state", "Connection: close\r\n", "")
            .await
            .status,
        401
    );
    let state: Value = serde_json::from_str(
        &http(addr, "GET", "/master/state", &authed, "")
            .await
            .body()
            .await,
    )
    .unwrap();
    assert_eq!(state["version"], "1.11.0");
    assert_eq!(state["activated_slaves"], 1);
    assert_eq!(state["slaves"][0]["id"], offer["agent_id"]["value"]);
    let mine = &state["frameworks"][0];
    assert_eq!(
        (mine["id"].as_str(), mine["name"].as_str()),
        (Some(fw.as_str()), Some("mesos-http"))
    );
    assert_eq!(mine["completed_tasks"][0]["state"], "TASK_FINISHED");
    let tasks: Value = serde_json::from_str(
        &http(
            addr,
            "GET",
            &format!("/master/tasks?framework_id={fw}&task_id=t1"),
            &authed,
            "",
        )
        .await
        .body()
        .await,
    )
    .unwrap();
    assert_eq!(tasks["tasks"][0]["id"], "t1");
    let slaves: Value =
        serde_json::from_str(&http(addr, "GET", "/slaves", &authed, "").await.body().await)
            .unwrap();
    assert_eq!(slaves["slaves"][0]["active"], true);
    let metrics: Value = serde_json::from_str(
        &http(addr, "GET", "/metrics/snapshot", &authed, "")
            .await
            .body()
            .await,
    )
    .unwrap();
    assert_eq!(metrics["master/elected"], 1.0);
    assert_eq!(metrics["master/tasks_finished"], 1.0);
    assert_eq!(metrics["master/frameworks_connected"], 1.0);
    // The operator API's read calls, in protobuf JSON.
    let operator = |body: Value| {
        let headers = format!("Content-Type: application/json\r\n{authed}");
        async move { http(addr, "POST", "/api/v1", &headers, &body.to_string()).await }
    };
    let answer = operator(json!({"type": "GET_STATE"})).await;
    assert_eq!(answer.status, 200);
    let state: Value = serde_json::from_str(&answer.body().await).unwrap();
    let st = &state["get_state"];
    assert_eq!(
        st["get_tasks"]["completed_tasks"][0]["task_id"]["value"],
        "t1"
    );
    assert_eq!(
        st["get_frameworks"]["frameworks"][0]["framework_info"]["id"]["value"],
        fw.as_str()
    );
    assert_eq!(
        st["get_agents"]["agents"][0]["agent_info"]["id"],
        offer["agent_id"]
    );
    assert_eq!(operator(json!({"type": "SUBSCRIBE"})).await.status, 400);
    // KILL of a task the cluster does not know: TASK_LOST.
    let kill = json!({"type": "KILL", "framework_id": {"value": fw}, "kill": {"task_id": {"value": "nope"}}});
    assert_eq!(call(addr, &with_id, &kill).await.status, 202);
    let lost = stream.next("UPDATE").await;
    assert_eq!(lost["update"]["status"]["state"], "TASK_LOST");
    assert_eq!(lost["update"]["status"]["task_id"]["value"], "nope");
    // A Mesos feature Allot lacks is refused with a clear TASK_ERROR.
    let offers = stream.next("OFFERS").await;
    let offer = &offers["offers"]["offers"][0];
    let mut fetching = json!({"name": "f", "task_id": {"value": "t2"}, "agent_id": offer["agent_id"],
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}],
        "command": {"value": "true", "uris": [{"value": "http://example.invalid/f.tgz"}]}});
    let accept = json!({"type": "ACCEPT", "framework_id": {"value": fw}, "accept": {
        "offer_ids": [offer["id"]], "operations": [{"type": "LAUNCH", "launch": {"task_infos": [fetching.take()]}}]}});
    assert_eq!(call(addr, &with_id, &accept).await.status, 202);
    let error = stream.next("UPDATE").await;
    assert_eq!(error["update"]["status"]["state"], "TASK_ERROR");
    assert!(
        error["update"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("uris"),
        "{error}"
    );
    // HEARTBEATs keep coming, one per interval (the harness's 2 s, as SUBSCRIBED said).
    assert_eq!(subscribed["subscribed"]["heartbeat_interval_seconds"], 2.0);
    stream.next("HEARTBEAT").await;
    // TEARDOWN ends the stream.
    let teardown = json!({"type": "TEARDOWN", "framework_id": {"value": fw}});
    assert_eq!(call(addr, &with_id, &teardown).await.status, 202);
    while stream.event().await.is_some() {}
}

/// Acknowledges every update of task `task` on `stream` (in protobuf when `protobuf`), as pymesos does, until
/// TASK_FINISHED; the updates before it must be TASK_STARTING or TASK_RUNNING.
async fn ack_until_finished(
    stream: &mut Answer,
    protobuf: bool,
    addr: SocketAddr,
    with_id: &str,
    fw: &str,
    task: &str,
) {
    loop {
        let update = match protobuf {
            true => stream.next_proto("UPDATE").await,
            false => stream.next("UPDATE").await,
        };
        let status = &update["update"]["status"];
        assert_eq!(status["task_id"]["value"], task);
        // uuid: 16 bytes, base64 in the JSON form; a protobuf ACKNOWLEDGE carries the raw bytes.
        let ack = json!({"type": "ACKNOWLEDGE", "framework_id": {"value": fw}, "acknowledge": {
            "agent_id": status["agent_id"], "task_id": status["task_id"], "uuid": status["uuid"]}});
        let answer = match protobuf {
            true => proto_call(addr, with_id, &ack).await,
            false => call(addr, with_id, &ack).await,
        };
        assert_eq!(answer.status, 202);
        if status["state"] == "TASK_FINISHED" {
            return;
        }
        assert!(
            ["TASK_STARTING", "TASK_RUNNING"].contains(&status["state"].as_str().unwrap()),
            "{status}"
        );
    }
}

/// A POST of `call` (its JSON form) to the scheduler API as `framework-mesos`, encoded as protobuf.
async fn proto_call(addr: SocketAddr, extra: &str, call: &Value) -> Answer {
    let headers = format!(
        "Content-Type: application/x-protobuf\r\nConnection: close\r\n{}{extra}",
        basic("framework-mesos:s3cret")
    );
    let body = allot_mesos::protobuf::from_json("mesos.v1.scheduler.Call", call, true).unwrap();
    http_bytes(addr, "POST", "/api/v1/scheduler", &headers, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesos_framework_runs_a_task_speaking_protobuf() {
    let (_cluster, addr) = mesos_cluster().await;
    let subscribe = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {
        "user": allot_tests::current_user(), "name": "mesos-protobuf", "roles": ["*"],
        "capabilities": [{"type": "MULTI_ROLE"}]}}});
    // A protobuf body that is not a Call.
    let garbage = http_bytes(
        addr,
        "POST",
        "/api/v1/scheduler",
        &format!(
            "Content-Type: application/x-protobuf\r\nConnection: close\r\n{}",
            basic("framework-mesos:s3cret")
        ),
        &[0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(garbage.status, 400);
    assert!(garbage.body().await.contains("Call protobuf"));

    // Accept: protobuf only -> a protobuf stream (a JSON SUBSCRIBE may ask for one too).
    let mut stream = proto_call(addr, "Accept: application/x-protobuf\r\n", &subscribe).await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.header("content-type"),
        Some("application/x-protobuf")
    );
    let stream_id = stream.header("mesos-stream-id").unwrap().to_string();
    let subscribed = stream.proto_event().await.unwrap();
    assert_eq!(subscribed["type"], "SUBSCRIBED", "{subscribed}");
    let fw = subscribed["subscribed"]["framework_id"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(subscribed["subscribed"]["master_info"]["version"], "1.11.0");
    assert_eq!(stream.proto_event().await.unwrap()["type"], "HEARTBEAT");
    let offers = stream.next_proto("OFFERS").await;
    let offer = &offers["offers"]["offers"][0];
    assert_eq!(offer["resources"][0]["type"], "SCALAR");
    let with_id = format!("Mesos-Stream-Id: {stream_id}\r\n");
    let task = json!({"name": "hello", "task_id": {"value": "p1"}, "agent_id": offer["agent_id"],
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}}],
        "command": {"value": "test \"$GREETING\" = hi",
            "environment": {"variables": [{"name": "GREETING", "value": "hi"}]}},
        "data": "aGk="});
    let accept = json!({"type": "ACCEPT", "framework_id": {"value": fw}, "accept": {
        "offer_ids": [offer["id"]], "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task]}}],
        "filters": {"refuse_seconds": 1}}});
    let accepted = proto_call(addr, &with_id, &accept).await;
    let status = accepted.status;
    assert_eq!(status, 202, "{}", accepted.body().await);
    // (The command sees its environment: it would fail otherwise.)
    ack_until_finished(&mut stream, true, addr, &with_id, &fw, "p1").await;
    let teardown = json!({"type": "TEARDOWN", "framework_id": {"value": fw}});
    assert_eq!(proto_call(addr, &with_id, &teardown).await.status, 202);
    while stream.proto_event().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_broker_redirects_mesos_frameworks_to_the_leader() {
    let cluster = Cluster::start_with(ClusterOptions {
        mesos_credentials: Some(CREDENTIALS.into()),
        replicas: 2,
        ..Default::default()
    })
    .await;
    let leader = cluster.mesos_addr.expect("the leader's Mesos API");
    let standby = cluster.mesos_standby_addrs[0];
    let subscribe =
        json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "u", "name": "n"}}});
    // Until the standby has seen the election it answers 503 (no leader known), then it redirects.
    allot_tests::eventually("the standby knows the leader", || async move {
        http(standby, "GET", "/redirect", "Connection: close\r\n", "")
            .await
            .status
            == 307
    })
    .await;
    // A SUBSCRIBE to the standby: 307 to the same path on the leader, protocol-relative, as Mesos answers.
    let moved = call(standby, "", &subscribe).await;
    assert_eq!(moved.status, 307);
    assert_eq!(
        moved.header("location"),
        Some(format!("//{leader}/api/v1/scheduler").as_str())
    );
    let via_prefix = http(
        standby,
        "POST",
        "/master/api/v1/scheduler",
        &format!(
            "Content-Type: application/json\r\nConnection: close\r\n{}",
            basic("framework-mesos:s3cret")
        ),
        &subscribe.to_string(),
    )
    .await;
    assert_eq!(
        via_prefix.header("location"),
        Some(format!("//{leader}/master/api/v1/scheduler").as_str())
    );
    // /redirect names the leader from either replica.
    for at in [standby, leader] {
        let r = http(at, "GET", "/redirect", "Connection: close\r\n", "").await;
        assert_eq!(r.status, 307);
        assert_eq!(r.header("location"), Some(format!("//{leader}").as_str()));
    }
    // The leader serves.
    let mut stream = call(leader, "", &subscribe).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.event().await.unwrap()["type"], "SUBSCRIBED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesos_framework_re_subscribes_after_the_broker_is_killed_and_its_task_is_not_lost() {
    let (mut cluster, addr) = mesos_cluster().await;
    let info =
        json!({"user": allot_tests::current_user(), "name": "survivor", "failover_timeout": 60});
    let mut stream = call(
        addr,
        "",
        &json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": info}}),
    )
    .await;
    let stream_id = stream.header("mesos-stream-id").unwrap().to_string();
    let fw = stream.next("SUBSCRIBED").await["subscribed"]["framework_id"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    let offers = stream.next("OFFERS").await;
    let offer = &offers["offers"]["offers"][0];
    let task = json!({"name": "long", "task_id": {"value": "long"}, "agent_id": offer["agent_id"],
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}],
        "command": {"value": "sleep 2"}});
    let accept = json!({"type": "ACCEPT", "framework_id": {"value": fw}, "accept": {
        "offer_ids": [offer["id"]], "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task]}}]}});
    assert_eq!(
        call(addr, &format!("Mesos-Stream-Id: {stream_id}\r\n"), &accept)
            .await
            .status,
        202
    );
    // The broker dies (kill -9) while the task runs; the stream ends.
    cluster.restart_broker().await;
    while stream.event().await.is_some() {}
    // The framework subscribes again with its ID, as pymesos does: same framework, a new stream ID.
    let mut again_info = info.clone();
    again_info["id"] = json!({"value": fw});
    let resubscribe = json!({"type": "SUBSCRIBE", "framework_id": {"value": fw},
        "subscribe": {"framework_info": again_info}});
    let mut stream = call(addr, "", &resubscribe).await;
    assert_eq!(stream.status, 200);
    let new_id = stream.header("mesos-stream-id").unwrap().to_string();
    assert_ne!(new_id, stream_id);
    assert_eq!(
        stream.next("SUBSCRIBED").await["subscribed"]["framework_id"]["value"],
        fw.as_str()
    );
    // The old stream ID is refused; the task's updates arrive and end in TASK_FINISHED.
    let reconcile =
        json!({"type": "RECONCILE", "framework_id": {"value": fw}, "reconcile": {"tasks": []}});
    assert_eq!(
        call(
            addr,
            &format!("Mesos-Stream-Id: {stream_id}\r\n"),
            &reconcile
        )
        .await
        .status,
        400
    );
    let with_id = format!("Mesos-Stream-Id: {new_id}\r\n");
    loop {
        let update = stream.next("UPDATE").await;
        let status = &update["update"]["status"];
        assert_eq!(status["task_id"]["value"], "long");
        if let Some(uuid) = status.get("uuid") {
            let ack = json!({"type": "ACKNOWLEDGE", "framework_id": {"value": fw}, "acknowledge": {
                "agent_id": status["agent_id"], "task_id": status["task_id"], "uuid": uuid}});
            assert_eq!(call(addr, &with_id, &ack).await.status, 202);
        }
        if status["state"] == "TASK_FINISHED" {
            break;
        }
        assert_ne!(status["state"], "TASK_LOST", "{status}");
    }
}

/// One HTTPS request to `addr` as a client of `config` (with its certificate, or none): the status and the
/// whole response.
async fn https(
    addr: SocketAddr,
    config: tokio_rustls::rustls::ClientConfig,
    request: String,
) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    allot_tests::raw_exchange(tls, &request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesos_api_serves_https_on_the_same_port_with_a_client_certificate_or_basic_credentials()
 {
    let cluster = Cluster::start_with(ClusterOptions {
        mesos_credentials: Some(CREDENTIALS.into()),
        ..Default::default()
    })
    .await;
    let addr = cluster.mesos_addr.expect("the Mesos API");
    let material = cluster
        .dialer("framework-tls")
        .material()
        .cloned()
        .expect("TLS material");
    let with_cert = {
        let mut c = (*material.configs().client).clone();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    };
    let without_cert = {
        let roots = {
            let mut r = tokio_rustls::rustls::RootCertStore::empty();
            let ca = std::fs::read(cluster.etcd.tls_dir().unwrap().join("ca.pem")).unwrap();
            for c in tokio_rustls::rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
                r.add(c.unwrap()).unwrap();
            }
            r
        };
        let mut c = tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    };
    let get = |extra: &str| {
        format!("GET /master/state HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n")
    };
    // A certificate of the cluster's authority is enough.
    let (code, text) = https(addr, with_cert, get("")).await;
    assert_eq!(code, 200, "{text}");
    // Without one, HTTP basic credentials over HTTPS; neither: 401.
    assert_eq!(https(addr, without_cert.clone(), get("")).await.0, 401);
    let (code, text) = https(addr, without_cert, get(&basic("framework-mesos:s3cret"))).await;
    assert_eq!(code, 200, "{text}");
    // Plain HTTP on the same port still works for clients that cannot do TLS.
    assert_eq!(
        http(
            addr,
            "GET",
            "/master/state",
            &format!("Connection: close\r\n{}", basic("framework-mesos:s3cret")),
            ""
        )
        .await
        .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_sandboxes_and_its_state_to_operators_as_mesos_does() {
    let mut cluster = Cluster::start_with(ClusterOptions {
        mesos_credentials: Some(CREDENTIALS.into()),
        ..Default::default()
    })
    .await;
    let agent = cluster.add_agent("cpus:2;mem:512").await;
    let addr: SocketAddr = std::fs::read_to_string(agent.work_dir.join("executor_endpoint"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut fw = allot_tests::TestFramework::subscribe(&cluster, "files", "*").await;
    fw.launch(allot_tests::task(
        "f1",
        "echo hello from the sandbox; ln -s /etc/passwd escape; sleep 60",
        0.1,
        32.0,
    ))
    .await;
    fw.await_state("f1", allot_proto::common::TaskState::TaskRunning)
        .await;
    let authed = format!("Connection: close\r\n{}", basic("framework-mesos:s3cret"));
    let get = |path: String, headers: String| async move {
        let answer = http(addr, "GET", &path, &headers, "").await;
        let status = answer.status;
        (status, answer.body().await)
    };
    // Anonymous callers and wrong secrets are refused.
    assert_eq!(
        get("/state".into(), "Connection: close\r\n".into()).await.0,
        401
    );
    assert_eq!(
        get(
            "/files/debug".into(),
            format!("Connection: close\r\n{}", basic("framework-mesos:nope"))
        )
        .await
        .0,
        401
    );
    // /state names the command task's sandbox, as Mesos' agent does.
    let (status, body) = get("/state".into(), authed.clone()).await;
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    let executor = &state["frameworks"][0]["executors"][0];
    assert_eq!(executor["id"], "f1");
    assert_eq!(executor["tasks"][0]["state"], "TASK_RUNNING");
    let dir = executor["directory"].as_str().unwrap().to_string();
    // TASK_RUNNING comes when the command's gate opens, before its first line is written: wait for it.
    for _ in 0..200 {
        if std::fs::metadata(format!("{dir}/stdout")).is_ok_and(|m| m.len() > 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let debug: Value =
        serde_json::from_str(&get("/files/debug".into(), authed.clone()).await.1).unwrap();
    assert!(debug.get(&dir).is_some(), "{debug}");
    let (_, listing) = get(format!("/files/browse?path={dir}"), authed.clone()).await;
    let listing: Value = serde_json::from_str(&listing).unwrap();
    let names: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&format!("{dir}/stdout").as_str()),
        "{listing}"
    );
    let stdout = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == format!("{dir}/stdout"))
        .unwrap();
    assert!(
        stdout["mode"].as_str().unwrap().starts_with("-rw"),
        "{stdout}"
    );
    // read: from an offset, with a length; offset -1 asks for the size.
    let (status, read) = get(
        format!("/files/read?path={dir}/stdout&offset=6&length=4"),
        authed.clone(),
    )
    .await;
    assert_eq!(status, 200, "{read}");
    let read: Value = serde_json::from_str(&read).unwrap();
    assert_eq!(
        (read["data"].as_str(), read["offset"].as_u64()),
        (Some("from"), Some(6))
    );
    let size: Value = serde_json::from_str(
        &get(
            format!("/files/read.json?path={dir}/stdout&offset=-1"),
            authed.clone(),
        )
        .await
        .1,
    )
    .unwrap();
    assert_eq!(size["offset"], "hello from the sandbox\n".len());
    assert_eq!(size["data"], "");
    let (status, bytes) = get(format!("/files/download?path={dir}/stdout"), authed.clone()).await;
    assert_eq!((status, bytes.as_str()), (200, "hello from the sandbox\n"));
    // Confined to sandboxes: no way out by `..`, by a link the task made, or to the agent's own files.
    let work_dir = agent.work_dir.display();
    for outside in [
        format!("/files/read?path={dir}/escape"),
        format!("/files/read?path={dir}/../../../agent_id"),
        format!("/files/read?path={work_dir}/agent_id"),
        format!("/files/browse?path={work_dir}/meta"),
        format!("/files/browse?path={work_dir}/sandboxes"),
        "/files/read?path=/etc/passwd".to_string(),
    ] {
        let (status, body) = get(outside.clone(), authed.clone()).await;
        assert_eq!(status, 404, "{outside}: {body}");
    }
    // Mesos' errors: no path, a directory read, a bad offset.
    assert_eq!(get("/files/read".into(), authed.clone()).await.0, 400);
    assert_eq!(
        get(format!("/files/read?path={dir}"), authed.clone())
            .await
            .0,
        400
    );
    assert_eq!(
        get(
            format!("/files/read?path={dir}/stdout&offset=x"),
            authed.clone()
        )
        .await
        .0,
        400
    );
    fw.kill("f1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesos_framework_reserves_and_unreserves_with_accept() {
    let (_cluster, addr) = mesos_cluster().await;
    let subscribe = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {
        "user": allot_tests::current_user(), "name": "reserver", "roles": ["db"],
        "capabilities": [{"type": "MULTI_ROLE"}]}}});
    let mut stream = call(addr, "", &subscribe).await;
    assert_eq!(stream.status, 200);
    let stream_id = stream.header("mesos-stream-id").unwrap().to_string();
    let fw = stream.next("SUBSCRIBED").await["subscribed"]["framework_id"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    let with_id = format!("Mesos-Stream-Id: {stream_id}\r\n");
    let cpus = |role: &str| {
        json!([{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1.0},
            "reservations": [{"type": "DYNAMIC", "role": role}]}])
    };
    let op = |kind: &str, offer: &Value, resources: Value| {
        let key = kind.to_ascii_lowercase();
        json!({"type": "ACCEPT", "framework_id": {"value": fw}, "accept": {
            "offer_ids": [offer["id"]],
            "operations": [{"type": kind, key: {"resources": resources}}],
            "filters": {"refuse_seconds": 0}}})
    };
    let offers = stream.next("OFFERS").await;
    let offer = offers["offers"]["offers"][0].clone();
    // For a role the framework is not in: 400, the offer is still its.
    let answer = call(addr, &with_id, &op("RESERVE", &offer, cpus("web"))).await;
    let status = answer.status;
    assert_eq!(status, 400, "{}", answer.body().await);
    let answer = call(addr, &with_id, &op("RESERVE", &offer, cpus("db"))).await;
    let status = answer.status;
    assert_eq!(status, 202, "{}", answer.body().await);
    // The next offer holds one CPU reserved for db.
    let reserved = loop {
        let offers = stream.next("OFFERS").await;
        let o = offers["offers"]["offers"][0].clone();
        if o["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "cpus" && r["role"] == "db")
        {
            break o;
        }
    };
    let answer = call(addr, &with_id, &op("UNRESERVE", &reserved, cpus("db"))).await;
    let status = answer.status;
    assert_eq!(status, 202, "{}", answer.body().await);
    let offers = stream.next("OFFERS").await;
    let o = &offers["offers"]["offers"][0];
    assert!(
        o["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["role"] == "*"),
        "unreserved again: {o}"
    );
}
