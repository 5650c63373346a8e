//! A framework's own executor for the tests that speaks Mesos' v1 executor HTTP API in protobuf
//! (`application/x-protobuf` calls, an `Accept: application/x-protobuf` event stream), over raw HTTP/1.1, as a
//! client written against Mesos' `.proto` files would: nothing of the SDK. It appends each event it receives,
//! as JSON, to `$MESOS_SANDBOX/events` (one per line), and answers each LAUNCH with TASK_RUNNING then
//! TASK_FINISHED, echoing the task's `data` in both. It exits on SHUTDOWN or when the stream ends.

use allot_mesos::protobuf::{from_json, to_json};
use serde_json::{Value, json};
use std::io::Write as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// POSTs `call` (its JSON form) in protobuf; the connection, positioned after the response's headers, and the
/// status.
async fn post(
    endpoint: &str,
    token: &str,
    call: &Value,
) -> (u16, BufReader<tokio::net::TcpStream>) {
    let body = from_json("mesos.v1.executor.Call", call, true).expect("a valid call");
    let mut s = tokio::net::TcpStream::connect(endpoint)
        .await
        .expect("the agent's executor API");
    let mut request = format!(
        "POST /api/v1/executor HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/x-protobuf\r\n\
         Accept: application/x-protobuf\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    s.write_all(&request).await.expect("write");
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header");
        if line.trim().is_empty() {
            break;
        }
    }
    (status, reader)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let endpoint = env("MESOS_AGENT_ENDPOINT");
    let token = env("MESOS_EXECUTOR_AUTHENTICATION_TOKEN");
    let ids = json!({"framework_id": {"value": env("MESOS_FRAMEWORK_ID")},
        "executor_id": {"value": env("MESOS_EXECUTOR_ID")}});
    let with = |extra: Value| {
        let mut v = ids.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let mut log =
        std::fs::File::create(format!("{}/events", env("MESOS_SANDBOX"))).expect("events file");
    let (status, mut stream) = post(
        &endpoint,
        &token,
        &with(json!({"type": "SUBSCRIBE", "subscribe": {}})),
    )
    .await;
    assert_eq!(status, 200, "SUBSCRIBE");
    let mut records = allot_mesos::recordio::Decoder::default();
    loop {
        // One chunk of the chunked body.
        let mut size = String::new();
        if stream.read_line(&mut size).await.unwrap_or(0) == 0 {
            return;
        }
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return;
        };
        if n == 0 {
            return;
        }
        let mut chunk = vec![0; n + 2];
        stream.read_exact(&mut chunk).await.expect("chunk");
        records.push(&chunk[..n]);
        while let Some(record) = records.next_record().expect("RecordIO") {
            let event = to_json("mesos.v1.executor.Event", &record).expect("a protobuf Event");
            writeln!(log, "{event}").expect("log");
            match event["type"].as_str() {
                Some("LAUNCH") => {
                    let task = &event["launch"]["task"];
                    for state in ["TASK_RUNNING", "TASK_FINISHED"] {
                        let uuid = uuid::Uuid::new_v4();
                        let update = with(json!({"type": "UPDATE", "update": {"status": {
                            "task_id": task["task_id"], "state": state, "source": "SOURCE_EXECUTOR",
                            "data": task["data"],
                            "uuid": base64_of(uuid.as_bytes())}}}));
                        let (status, _) = post(&endpoint, &token, &update).await;
                        assert_eq!(status, 202, "UPDATE");
                    }
                }
                Some("SHUTDOWN") => return,
                _ => {}
            }
        }
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
