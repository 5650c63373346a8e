//! Frameworks' own executors end to end (issue 26): real agents start `allot-test-executor` (the SDK's
//! executor driver speaking Mesos' v1 executor HTTP API to the agent), which runs several tasks in one
//! process, exchanges framework messages with the scheduler, and is reattached to after an agent crash.

use allot_proto::common::{CommandInfo, ExecutorInfo, StatusSource, TaskInfo, TaskState};
use allot_proto::scheduler::{self as pb, event};
use allot_tests::{Cluster, PATIENCE, TestFramework};
use std::time::Duration;
use tonic::Code;

/// Task `id` of executor `executor`, doing `what` (see the test executor), with 0.2 CPUs and 32 MiB; the
/// executor itself takes 0.1 CPUs and 32 MiB.
fn executor_task(id: &str, executor: &str, what: &str) -> TaskInfo {
    let res = allot_tests::cpus_mem;
    TaskInfo {
        name: id.into(),
        task_id: id.into(),
        resources: res(0.2, 32.0),
        executor: Some(ExecutorInfo {
            executor_id: executor.into(),
            name: "test executor".into(),
            command: Some(CommandInfo {
                value: env!("CARGO_BIN_EXE_allot-test-executor").into(),
                shell: true,
                ..Default::default()
            }),
            resources: res(0.1, 32.0),
            shutdown_grace_period: 1.0,
            ..Default::default()
        }),
        data: what.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A reader of the memory limit (bytes) of executor `executor` of framework `fw`'s container, when the agents
/// here isolate with cgroups (v1 `memory.limit_in_bytes` or v2 `memory.max` under the tests' cgroup root).
fn container_memory_limit(fw: &str, executor: &str) -> Option<impl Fn() -> Option<u64> + use<>> {
    let name = format!("executor+{fw}+{executor}");
    let file = [
        ("/sys/fs/cgroup/memory/allot-test", "memory.limit_in_bytes"),
        ("/sys/fs/cgroup/allot-test", "memory.max"),
    ]
    .into_iter()
    .find_map(|(root, file)| {
        std::fs::read_dir(root).ok()?.flatten().find_map(|agent| {
            let path = agent.path().join(&name).join(file);
            path.exists().then_some(path)
        })
    })?;
    Some(move || std::fs::read_to_string(&file).ok()?.trim().parse().ok())
}

/// The next MESSAGE event from an executor.
async fn message(fw: &mut TestFramework) -> pb::Message {
    fw.wait_for(PATIENCE, |e| match e {
        event::Event::Message(m) => Some(m.clone()),
        _ => None,
    })
    .await
    .expect("a message from the executor")
}

/// The executor's pid, from its `hello <pid>` message.
async fn hello(fw: &mut TestFramework) -> String {
    let m = message(fw).await;
    let text = String::from_utf8(m.data).expect("text");
    text.strip_prefix("hello ")
        .unwrap_or_else(|| panic!("not a hello: {text}"))
        .to_string()
}

/// The next FAILURE event naming an executor.
async fn executor_lost(fw: &mut TestFramework) -> pb::Failure {
    fw.wait_for(PATIENCE, |e| match e {
        event::Event::Failure(f) if !f.executor_id.is_empty() => Some(f.clone()),
        _ => None,
    })
    .await
    .expect("FAILURE for the executor")
}

async fn send(
    fw: &mut TestFramework,
    agent_id: &str,
    executor: &str,
    data: &[u8],
) -> Result<(), tonic::Status> {
    fw.client
        .message(pb::MessageRequest {
            framework_id: fw.id.clone(),
            agent_id: agent_id.into(),
            executor_id: executor.into(),
            data: data.to_vec(),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_runs_many_tasks_in_one_process_talks_to_its_framework_and_its_exit_ends_its_tasks()
 {
    let mut cluster = Cluster::start().await;
    cluster.add_agent("cpus:2;mem:512").await;
    let mut fw = TestFramework::subscribe(&cluster, "warm", "*").await;
    let offer = fw.offers().await.remove(0);
    let agent_id = offer.agent_id.clone();
    let tasks = vec![
        executor_task("t1", "warm", "run:2"),
        executor_task("t2", "warm", "run:2"),
        executor_task("t3", "warm", "hang"),
    ];
    fw.accept(&offer.offer_id, tasks, 1.0)
        .await
        .expect("accept");
    let pid = hello(&mut fw).await;
    for t in ["t1", "t2", "t3"] {
        let running = fw.await_state(t, TaskState::TaskRunning).await;
        assert_eq!(running.data, pid.as_bytes(), "{t} runs in the one executor");
        assert_eq!(running.executor_id, "warm");
        assert_eq!(running.source(), StatusSource::SourceExecutor);
        assert_eq!(running.agent_id, agent_id);
    }
    // The container's memory limit is its live tasks' (each 32 MiB and the executor's 32 MiB; t1 and t2 run
    // for 2 s).
    let limit = container_memory_limit(&fw.id, "warm");
    if let Some(limit) = &limit {
        assert_eq!(limit(), Some((3 * 64) << 20), "three tasks");
    }
    for t in ["t1", "t2"] {
        fw.await_state(t, TaskState::TaskFinished).await;
    }
    // ...and shrinks as they end.
    match limit {
        Some(limit) => {
            allot_tests::eventually("the container shrinks to one task", || async {
                limit() == Some(64 << 20)
            })
            .await
        }
        None => eprintln!("no memory cgroups here: the container's resizing is not checked"),
    }
    // Its tasks' sandbox is the executor's directory (its runs below it).
    let records = cluster.tasks(&fw.id).await;
    let sandbox = &records
        .iter()
        .find(|r| r.task.as_ref().unwrap().task_id == "t1")
        .unwrap()
        .sandbox;
    assert!(
        sandbox.ends_with(&format!("/executors/{}/warm", fw.id)),
        "{sandbox}"
    );
    assert!(std::path::Path::new(sandbox).is_dir());
    // Framework messages both ways.
    send(&mut fw, &agent_id, "warm", b"ping")
        .await
        .expect("message");
    let echo = message(&mut fw).await;
    assert_eq!(
        (echo.data.as_slice(), echo.executor_id.as_str()),
        (&b"echo:ping"[..], "warm")
    );
    let e = send(&mut fw, &agent_id, "cold", b"x").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // KILL goes to the executor, which reports TASK_KILLED.
    fw.kill("t3").await.expect("kill");
    let killed = fw.await_state("t3", TaskState::TaskKilled).await;
    assert_eq!(killed.source(), StatusSource::SourceExecutor);
    // The executor exits (code 7) with a task still running: the agent ends that task and the framework
    // hears of the exit.
    let offer = fw.offers().await.remove(0);
    let tasks = vec![
        executor_task("t4", "warm", "hang"),
        executor_task("t5", "warm", "exit:7"),
    ];
    fw.accept(&offer.offer_id, tasks, 1.0)
        .await
        .expect("accept");
    fw.await_state("t4", TaskState::TaskRunning).await;
    let lost = executor_lost(&mut fw).await;
    assert_eq!(
        (lost.executor_id.as_str(), lost.agent_id.as_str()),
        ("warm", agent_id.as_str())
    );
    assert_eq!(lost.status, Some(7 << 8), "the wait status of exit(7)");
    for t in ["t4", "t5"] {
        let failed = fw.await_state(t, TaskState::TaskFailed).await;
        assert_eq!(failed.reason, "REASON_EXECUTOR_TERMINATED", "{t}");
        assert_eq!(failed.source(), StatusSource::SourceAgent);
        assert!(failed.message.contains("status 7"), "{}", failed.message);
    }
    // The next task of that executor ID starts a new instance.
    let offer = fw.offers().await.remove(0);
    fw.accept(
        &offer.offer_id,
        vec![executor_task("t6", "warm", "run:0.1")],
        1.0,
    )
    .await
    .expect("accept");
    let again = hello(&mut fw).await;
    assert_ne!(again, pid, "a new executor process");
    fw.await_state("t6", TaskState::TaskFinished).await;
    // An executor task that names both a command and an executor is refused.
    let offer = fw.offers().await.remove(0);
    let mut both = executor_task("t7", "warm", "run:0");
    both.command = allot_tests::task("x", "true", 0.1, 32.0).command;
    let e = fw
        .accept(&offer.offer_id, vec![both], 1.0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let refused = fw.await_state("t7", TaskState::TaskError).await;
    assert!(
        refused.message.contains("both a command and an executor"),
        "{}",
        refused.message
    );
    // TEARDOWN shuts the framework's executors down.
    let pid: i32 = again.parse().expect("pid");
    assert!(running(pid));
    fw.client
        .teardown(pb::TeardownRequest {
            framework_id: fw.id.clone(),
        })
        .await
        .expect("teardown");
    allot_tests::eventually("the executor is gone after TEARDOWN", || async {
        !running(pid)
    })
    .await;
}

fn running(pid: i32) -> bool {
    allot_agent::executor::alive(nix::unistd::Pid::from_raw(pid))
}

/// One raw HTTP/1.1 request to `addr`: `(status, headers and body as text)`.
async fn http(addr: &str, request: String) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    allot_tests::raw_exchange(s, &request).await
}

/// A POST of `body` to the executor API with `headers` (each ending in CRLF); the connection closes after.
fn post(addr: &str, headers: &str, body: &str) -> String {
    format!(
        "POST /api/v1/executor HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_api_checks_calls_as_mesos_does_and_an_executor_that_never_subscribes_is_killed()
 {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().expect("work dir");
    let soon =
        |c: &mut allot_agent::Config| c.executor_registration_timeout = Duration::from_secs(3);
    cluster
        .start_agent_with("cpus:2;mem:512", dir.path().to_path_buf(), soon)
        .await;
    let addr = std::fs::read_to_string(dir.path().join("executor_endpoint")).expect("endpoint");
    let mut fw = TestFramework::subscribe(&cluster, "mute", "*").await;
    // An executor that never subscribes.
    let mut mute = executor_task("t1", "mute", "hang");
    mute.executor
        .as_mut()
        .unwrap()
        .command
        .as_mut()
        .unwrap()
        .value = "exec sleep 60".into();
    fw.launch(mute).await;
    let checkpoint = dir
        .path()
        .join("meta/frameworks")
        .join(&fw.id)
        .join("executors/mute/executor");
    allot_tests::eventually("the executor is checkpointed", || async {
        checkpoint.exists()
    })
    .await;
    let record: allot_proto::agent::ExecutorCheckpoint =
        prost::Message::decode(std::fs::read(&checkpoint).unwrap().as_slice()).unwrap();
    let json = "Content-Type: application/json\r\n";
    let token = format!("{json}Authorization: Bearer {}\r\n", record.token);
    let update = format!(
        r#"{{"type":"UPDATE","framework_id":{{"value":"{}"}},"executor_id":{{"value":"mute"}},"update":{{"status":{{"task_id":{{"value":"t1"}},"state":"TASK_RUNNING","uuid":"AAECAwQFBgcICQoLDA0ODw==","source":"SOURCE_EXECUTOR"}}}}}}"#,
        fw.id
    );
    let stranger = update.replace(&fw.id, "someone-else");
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("GET /api/v1/executor HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
            405,
            "allow: POST",
        ),
        (post(&addr, "", &update), 400, "Content-Type"),
        (
            post(&addr, "Content-Type: application/unknown\r\n", &update),
            415,
            "",
        ),
        (
            post(&addr, json, "MALFORMED"),
            400,
            "Failed to parse body into JSON",
        ),
        (
            post(&addr, json, r#"{"string":"valid_json"}"#),
            400,
            "Failed to validate executor::Call",
        ),
        (
            post(
                &addr,
                json,
                &update.replace(r#","update":{"#, r#","nothing":{"#),
            ),
            400,
            "'update'",
        ),
        (
            post(
                &addr,
                json,
                &update.replace("AAECAwQFBgcICQoLDA0ODw==", "AAEC"),
            ),
            400,
            "Not a valid UUID",
        ),
        (
            post(&addr, json, &update.replace("TASK_RUNNING", "TASK_STAGING")),
            400,
            "TASK_STAGING",
        ),
        (
            post(&addr, json, &stranger),
            400,
            "Framework cannot be found",
        ),
        (
            post(&addr, json, &update),
            401,
            "MESOS_EXECUTOR_AUTHENTICATION_TOKEN",
        ),
        (
            post(
                &addr,
                &json.replace("\r\n", "\r\nAuthorization: Bearer forged\r\n"),
                &update,
            ),
            401,
            "",
        ),
        (post(&addr, &token, &update), 403, "not subscribed"),
    ];
    for (request, want, says) in cases {
        let (code, text) = http(&addr, request.clone()).await;
        assert_eq!(code, want, "{request}\n->\n{text}");
        assert!(
            text.to_lowercase().contains(&says.to_lowercase()),
            "{text} lacks {says}"
        );
    }
    // The agent's /state is for its executors: with the executor's token, not without.
    let get_state = |auth: String| {
        format!("GET /state HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n")
    };
    assert_eq!(http(&addr, get_state(String::new())).await.0, 401);
    let (code, text) = http(
        &addr,
        get_state(format!("Authorization: Bearer {}\r\n", record.token)),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let state: serde_json::Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let executor = &state["frameworks"][0]["executors"][0];
    assert_eq!(executor["id"], "mute");
    assert_eq!(executor["tasks"][0]["id"], "t1");
    assert!(
        executor["directory"]
            .as_str()
            .unwrap()
            .contains("/executors/")
    );
    // It did not subscribe in time: killed, its task failed, its framework told.
    let failed = fw.await_state("t1", TaskState::TaskFailed).await;
    assert_eq!(failed.reason, "REASON_EXECUTOR_REGISTRATION_TIMEOUT");
    let lost = executor_lost(&mut fw).await;
    assert_eq!(lost.status, Some(9), "killed by SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_agent_reattaches_to_its_running_executor_which_subscribes_again() {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().expect("work dir");
    let leave = |c: &mut allot_agent::Config| c.kill_tasks_on_stop = false;
    let agent = cluster
        .start_agent_with("cpus:2;mem:512", dir.path().to_path_buf(), leave)
        .await;
    let mut fw = TestFramework::subscribe(&cluster, "reattached", "*").await;
    let offer = fw.offers().await.remove(0);
    // An executor that sends no token (as pymesos'): the agent knows it by its connection's process.
    let tokenless = |id: &str, what: &str| {
        let mut t = executor_task(id, "warm", what);
        let command = t.executor.as_mut().unwrap().command.as_mut().unwrap();
        command.value = format!(
            "unset MESOS_EXECUTOR_AUTHENTICATION_TOKEN; exec {}",
            command.value
        );
        t
    };
    fw.accept(&offer.offer_id, vec![tokenless("t1", "hang")], 1.0)
        .await
        .expect("accept");
    let pid = hello(&mut fw).await;
    fw.await_state("t1", TaskState::TaskRunning).await;
    agent.service.crash();
    let _again = cluster
        .start_agent_with("cpus:2;mem:512", dir.path().to_path_buf(), leave)
        .await;
    // The same executor process subscribes to the new agent process.
    assert_eq!(hello(&mut fw).await, pid, "the executor outlived the agent");
    // Its task is still its own: a kill reaches it through the new agent.
    let mut attempts = 0;
    while let Err(e) = fw.kill("t1").await {
        attempts += 1;
        assert!(attempts < 50, "the kill never reached the agent: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = fw.await_state("t1", TaskState::TaskKilled).await;
    assert_eq!(killed.source(), StatusSource::SourceExecutor);
    // A new task goes to the same process.
    let offer = fw.offers().await.remove(0);
    let agent_id = offer.agent_id.clone();
    fw.accept(&offer.offer_id, vec![tokenless("t2", "run:0.1")], 1.0)
        .await
        .expect("accept");
    let running = fw.await_state("t2", TaskState::TaskRunning).await;
    assert_eq!(running.data, pid.as_bytes());
    fw.await_state("t2", TaskState::TaskFinished).await;
    // SHUTDOWN: the executor ends and the framework hears of it.
    fw.client
        .shutdown(pb::ShutdownRequest {
            framework_id: fw.id.clone(),
            agent_id,
            executor_id: "warm".into(),
        })
        .await
        .expect("shutdown");
    let lost = executor_lost(&mut fw).await;
    assert_eq!(lost.executor_id, "warm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_that_speaks_protobuf_runs_tasks_and_gets_a_heartbeat() {
    let cluster = Cluster::start().await;
    let mut cluster = cluster;
    let agent = cluster.add_agent("cpus:2;mem:512").await;
    let mut fw = TestFramework::subscribe(&cluster, "protobuf-executor", "*").await;
    let mut task = executor_task("p1", "proto", "payload");
    task.executor.as_mut().unwrap().command = Some(CommandInfo {
        value: env!("CARGO_BIN_EXE_allot-proto-executor").into(),
        shell: true,
        ..Default::default()
    });
    fw.launch(task).await;
    let running = fw.await_state("p1", TaskState::TaskRunning).await;
    assert_eq!(running.source, StatusSource::SourceExecutor as i32);
    assert_eq!(running.data, b"payload", "the executor's data");
    fw.await_state("p1", TaskState::TaskFinished).await;
    // What the executor received, decoded from protobuf: SUBSCRIBED, the LAUNCH, then a HEARTBEAT at once.
    let runs = agent
        .work_dir
        .join("executors")
        .join(&fw.id)
        .join("proto")
        .join("runs");
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .next()
        .expect("its sandbox");
    // The executor logs the HEARTBEAT once it is done posting its updates, which the framework may see first.
    let log = run.path().join("events");
    allot_tests::eventually("the executor logged three events", || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 3)
    })
    .await;
    let text = std::fs::read_to_string(&log).expect("the executor's event log");
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds[..3], ["SUBSCRIBED", "LAUNCH", "HEARTBEAT"], "{text}");
    let subscribed: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        subscribed["subscribed"]["executor_info"]["executor_id"]["value"],
        "proto"
    );
    assert_eq!(
        subscribed["subscribed"]["framework_info"]["id"]["value"],
        fw.id.as_str()
    );
}
