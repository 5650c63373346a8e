//! Telemetry end to end: real service processes export OTLP to an in-process receiver; one task's trace runs
//! from the framework's ACCEPT to its TASK_RUNNING update back at the framework through the broker and the
//! agent; every service's `/metrics` moves with work.

use allot_tests::otlp::{OtlpReceiver, SpanRecord};
use allot_tests::procs::{ProcessCluster, metric, scrape};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

const FRAMEWORK: &str = "allot-test-framework";
const BROKER: &str = "allot-offer-broker";
const AGENT: &str = "allot-agent";
const ALLOCATOR: &str = "allot-allocator";

/// Runs `commands` (one task each, `cpus:0.5;mem:64`) through an SDK framework until all finish.
async fn run_tasks(cluster: &ProcessCluster, commands: &[&str]) {
    let tasks: Vec<_> = commands
        .iter()
        .enumerate()
        .map(|(i, c)| allot_sdk::shell_task(&format!("t{i}"), c, "cpus:0.5;mem:64").expect("task"))
        .collect();
    let config = allot_sdk::DriverConfig::new(
        &cluster.broker.addr,
        allot_sdk::framework_info("telemetry", "*"),
    )
    .with_dialer(cluster.etcd.dialer("framework-default"));
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        allot_sdk::run(config, allot_tests::RunAll::new(tasks)),
    )
    .await
    .unwrap_or_else(|_| panic!("the tasks did not finish; {}", cluster.logs()))
    .expect("the framework runs");
    assert_eq!(done.finished, commands.len());
}

/// A scheduler API client of `cluster`'s broker, as the default framework principal.
fn scheduler_client(
    cluster: &ProcessCluster,
) -> allot_proto::scheduler::scheduler_client::SchedulerClient<allot_common::grpc::Channel> {
    allot_proto::scheduler::scheduler_client::SchedulerClient::new(
        cluster
            .etcd
            .dialer("framework-default")
            .channel(&cluster.broker.addr)
            .expect("channel"),
    )
}

/// The chain of `(service, span name)` from `span` up to its trace's root.
fn ancestry<'a>(
    span: &'a SpanRecord,
    by_id: &HashMap<&str, &'a SpanRecord>,
) -> Vec<(String, String)> {
    let mut out = vec![(span.service.clone(), span.name.clone())];
    let mut at = span;
    while !at.parent_span_id.is_empty() {
        let parent = by_id.get(at.parent_span_id.as_str()).unwrap_or_else(|| {
            panic!(
                "the parent of {} ({}) was never exported",
                at.name, at.service
            )
        });
        out.push((parent.service.clone(), parent.name.clone()));
        at = parent;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_task_trace_runs_from_accept_to_running_through_three_processes() {
    let receiver = OtlpReceiver::start().await;
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            receiver.endpoint(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
    ];
    let mut cluster = ProcessCluster::start(1, &env).await;
    // This process is the framework: its SDK spans go to the same receiver.
    let telemetry = allot_telemetry::init_with(
        FRAMEWORK,
        "0.0.0",
        allot_telemetry::Settings {
            log_filter: Some("warn".into()),
            json_logs: false,
            otlp_endpoint: Some(receiver.endpoint()),
        },
    );
    assert!(telemetry.exporting());
    run_tasks(&cluster, &["sleep 0.3"]).await;
    telemetry
        .flush()
        .expect("the framework's spans are exported");
    cluster.stop();

    let spans = receiver.spans();
    let accept = spans
        .iter()
        .find(|s| s.service == FRAMEWORK && s.name == "ACCEPT")
        .expect("the framework's ACCEPT span");
    assert!(
        accept.parent_span_id.is_empty(),
        "ACCEPT starts the task's trace"
    );
    assert_eq!(accept.attr("allot.task.ids"), Some("t0"));
    let trace: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.trace_id == accept.trace_id)
        .collect();
    // ALLOT_TRACE_SVG=FILE renders this trace as a waterfall (docs/images/task-trace.svg is one).
    if let Some(path) = std::env::var_os("ALLOT_TRACE_SVG") {
        let svg = allot_traces::render::svg_waterfall(
            "One task's trace: ACCEPT to TASK_FINISHED",
            &trace,
        );
        std::fs::write(&path, svg).expect("write the SVG");
    }
    let by_id: HashMap<&str, &SpanRecord> =
        trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();

    // Spans from at least three processes share the trace: the framework, the broker and the agent.
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    let pids: BTreeSet<i64> = trace.iter().map(|s| s.pid).collect();
    for s in [FRAMEWORK, BROKER, AGENT] {
        assert!(services.contains(s), "{s} is in the trace: {services:?}");
    }
    assert!(pids.len() >= 3, "three processes: {pids:?}");
    assert_eq!(pids.len(), services.len(), "one process per service");

    // Every span's parent is in the trace (all exported, links intact).
    for s in &trace {
        if s.span_id != accept.span_id {
            assert!(
                by_id.contains_key(s.parent_span_id.as_str()),
                "{} ({}) has a parent in the trace",
                s.name,
                s.service
            );
        }
    }

    // TASK_RUNNING back at the framework, parent by parent up to the ACCEPT.
    let running = trace
        .iter()
        .find(|s| {
            s.service == FRAMEWORK
                && s.name == "status update"
                && s.attr("allot.task.state") == Some("TASK_RUNNING")
        })
        .expect("the framework's TASK_RUNNING span is in the ACCEPT's trace");
    let chain = ancestry(running, &by_id);
    // The agent's update goes up its status update stream (no call of its own between the agent's span and
    // the broker's), or by an `Update` call if the stream was not open yet.
    let by_call = |(_, b): &(String, String)| b != "allot.agent.v1.StatusUpdates/Update";
    let expected: Vec<(String, String)> = [
        (FRAMEWORK, "status update"),
        (BROKER, "status update"),
        (BROKER, "allot.agent.v1.StatusUpdates/Update"),
        (AGENT, "allot.agent.v1.StatusUpdates/Update"),
        (AGENT, "status update"),
        (AGENT, "launch task"),
        (AGENT, "allot.agent.v1.Agent/LaunchTasks"),
        (BROKER, "allot.agent.v1.Agent/LaunchTasks"),
        (BROKER, "launch"),
        (BROKER, "accept"),
        (BROKER, "allot.scheduler.v1.Scheduler/Accept"),
        (FRAMEWORK, "allot.scheduler.v1.Scheduler/Accept"),
        (FRAMEWORK, "ACCEPT"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let streamed: Vec<(String, String)> = expected.iter().filter(|x| by_call(x)).cloned().collect();
    assert!(
        chain == streamed || chain == expected,
        "{chain:?} is neither {streamed:?} nor {expected:?}"
    );

    // RPC spans carry the semantic conventions' attributes and kinds.
    for s in trace
        .iter()
        .filter(|s| s.name == "allot.scheduler.v1.Scheduler/Accept")
    {
        assert_eq!(s.attr("rpc.system"), Some("grpc"));
        assert_eq!(s.attr("rpc.service"), Some("allot.scheduler.v1.Scheduler"));
        assert_eq!(s.attr("rpc.method"), Some("Accept"));
        assert_eq!(s.attr("rpc.grpc.status_code"), Some("0"));
        let kind = if s.service == BROKER { 2 } else { 3 };
        assert_eq!(
            s.kind, kind,
            "server on the broker, client at the framework"
        );
    }
    // The agent's update span names the task and its state.
    let agent_running = trace
        .iter()
        .find(|s| {
            s.service == AGENT
                && s.name == "status update"
                && s.attr("allot.task.state") == Some("TASK_RUNNING")
        })
        .expect("agent TASK_RUNNING");
    assert_eq!(agent_running.attr("allot.task.id"), Some("t0"));
    // The tasks were persisted in an etcd transaction inside the ACCEPT.
    let broker_accept = trace
        .iter()
        .find(|s| s.service == BROKER && s.name == "accept")
        .expect("broker accept");
    assert!(
        trace.iter().any(|s| s.name == "etcd txn"
            && s.parent_span_id == broker_accept.span_id
            && s.attr("db.system") == Some("etcd")
            && s.attr("db.operation.name") == Some("txn")),
        "an etcd txn span under the broker's accept"
    );

    // The ACCEPT links to the offer it used; the offer is a child of the allocation cycle that made it.
    let (link_trace, link_span) = broker_accept
        .links
        .first()
        .expect("accept links to its offer");
    let offer = spans
        .iter()
        .find(|s| &s.trace_id == link_trace && &s.span_id == link_span)
        .expect("the linked offer span was exported");
    assert_eq!(offer.name, "offer");
    assert_eq!(offer.service, BROKER);
    assert_eq!(
        offer.attr("allot.framework.id"),
        broker_accept.attr("allot.framework.id")
    );
    let cycle = spans
        .iter()
        .find(|s| s.span_id == offer.parent_span_id && s.trace_id == offer.trace_id)
        .expect("the offer's parent was exported");
    assert_eq!(cycle.service, ALLOCATOR);
    assert_eq!(cycle.name, "allocation cycle");
    assert_eq!(cycle.attr("allot.policy.name"), Some("drf"));
    assert_eq!(cycle.attr("allot.policy.kind"), Some("builtin"));
    for key in ["allot.policy.version", "allot.cycle.duration_ms"] {
        assert!(
            cycle.attr(key).is_some_and(|v| !v.is_empty()),
            "{key} on the cycle"
        );
    }
    // A built-in has no artifact: its sha256 is empty, but the attribute is there.
    assert_eq!(cycle.attr("allot.policy.sha256"), Some(""));
    assert_eq!(cycle.attr("allot.agents"), Some("1"));
    assert_eq!(cycle.attr("allot.frameworks"), Some("1"));
    assert_eq!(cycle.attr("allot.grants"), Some("1"));
    assert_eq!(offer.attr("allot.cycle"), cycle.attr("allot.cycle"));
    let policy_call = spans
        .iter()
        .find(|s| s.parent_span_id == cycle.span_id && s.name == "policy allocate")
        .expect("the policy call is a child of the cycle");
    assert_eq!(policy_call.attr("allot.grants"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_metrics_that_move_with_work() {
    let mut cluster = ProcessCluster::start(1, &[]).await;
    let scrape_all = |c: &ProcessCluster| {
        let addrs = [
            c.registry.metrics.clone(),
            c.allocator.metrics.clone(),
            c.broker.metrics.clone(),
            c.agents[0].metrics.clone(),
        ];
        async move {
            let mut out = Vec::new();
            for a in &addrs {
                out.push(scrape(a).await);
            }
            out
        }
    };
    let before = scrape_all(&cluster).await;
    run_tasks(&cluster, &["true", "true", "sleep 0.2"]).await;
    // Gauges refresh on the broker's heartbeat (1 s here).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = scrape_all(&cluster).await;
    let [reg0, alloc0, broker0, agent0] = &before[..] else {
        unreachable!()
    };
    let [reg1, alloc1, broker1, agent1] = &after[..] else {
        unreachable!()
    };
    let v =
        |text: &str, name: &str, labels: &[(&str, &str)]| metric(text, name, labels).unwrap_or(0.0);
    let grew = |a: &str, b: &str, name: &str, labels: &[(&str, &str)]| {
        let (x, y) = (v(a, name, labels), v(b, name, labels));
        assert!(y > x, "{name}{labels:?} grew: {x} -> {y}");
    };

    // Every process: its own CPU and memory, and per-RPC rate, errors and duration; no expected call counted
    // as an error (finding a leader used to call a method no service had, an UNIMPLEMENTED per CLI call).
    let unimplemented = allot_telemetry::grpc::code_name(tonic::Code::Unimplemented as i32);
    for text in &after {
        assert!(v(text, "process_resident_memory_bytes", &[]) > 0.0);
        assert!(metric(text, "process_cpu_seconds_total", &[]).is_some());
        assert!(
            metric(
                text,
                "allot_rpc_server_requests_total",
                &[("grpc_code", unimplemented)]
            )
            .is_none(),
            "a call answered {unimplemented}"
        );
    }
    // Registry: heartbeats served from memory (no etcd request), the agent reachable, registration timed.
    grew(
        reg0,
        reg1,
        "allot_rpc_server_requests_total",
        &[("rpc_method", "Heartbeat"), ("grpc_code", "OK")],
    );
    assert_eq!(v(reg1, "allot_registry_agents_reachable", &[]), 1.0);
    let etcd = "allot_etcd_request_duration_seconds_count";
    assert!(v(reg1, etcd, &[]) > 0.0, "registration went through etcd");
    assert_eq!(
        v(reg0, etcd, &[]),
        v(reg1, etcd, &[]),
        "heartbeats write nothing to etcd"
    );
    // Broker: the scheduler calls, offers, launches, updates and tasks by state.
    let accept = [
        ("rpc_service", "allot.scheduler.v1.Scheduler"),
        ("rpc_method", "Accept"),
    ];
    grew(broker0, broker1, "allot_rpc_server_requests_total", &accept);
    grew(
        broker0,
        broker1,
        "allot_rpc_server_duration_seconds_count",
        &accept,
    );
    grew(broker0, broker1, "allot_offers_total", &[]);
    grew(broker0, broker1, "allot_offers_accepted_total", &[]);
    for series in [
        "allot_offers_outstanding",
        "allot_offers_declined_total",
        "allot_offers_rescinded_total",
    ] {
        assert!(
            metric(broker1, series, &[]).is_some(),
            "{series} is exposed"
        );
    }
    grew(broker0, broker1, "allot_tasks_launched_total", &[]);
    assert_eq!(
        v(broker1, "allot_agent_streams_open", &[]),
        1.0,
        "the agent's status update stream is open"
    );
    grew(
        broker0,
        broker1,
        "allot_task_status_updates_total",
        &[("state", "TASK_FINISHED")],
    );
    assert_eq!(
        v(broker1, "allot_tasks", &[("state", "TASK_FINISHED")]),
        3.0
    );
    grew(
        broker0,
        broker1,
        "allot_etcd_request_duration_seconds_count",
        &[("db_operation", "txn")],
    );
    // Errors are counted by code: an ACCEPT of an unknown offer is NOT_FOUND.
    {
        use allot_proto::scheduler::AcceptRequest;
        let mut c = scheduler_client(&cluster);
        let err = c
            .accept(AcceptRequest {
                framework_id: "nobody".into(),
                offer_ids: vec!["no-such-offer".into()],
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_ne!(err.code(), tonic::Code::Ok);
        let text = scrape(&cluster.broker.metrics).await;
        let code = allot_telemetry::grpc::code_name(err.code() as i32);
        assert!(
            v(
                &text,
                "allot_rpc_server_requests_total",
                &[("rpc_method", "Accept"), ("grpc_code", code)]
            ) >= 1.0
        );
    }
    // Allocator: cycles and their duration, grants, policy latency, shares and cluster resources.
    grew(alloc0, alloc1, "allot_allocation_cycles_total", &[]);
    // The framework is gone: with no cycle to run, the allocator's gauges still say the cluster is idle (they
    // used to keep the last busy cycle's figures: every resource allocated, offers outstanding).
    assert_eq!(v(alloc1, "allot_allocator_offers_outstanding", &[]), 0.0);
    assert_eq!(
        v(
            alloc1,
            "allot_cluster_resources",
            &[("resource", "cpus"), ("state", "allocated")]
        ),
        0.0
    );
    assert!(
        v(
            alloc1,
            "allot_cluster_resources",
            &[("resource", "cpus"), ("state", "total")]
        ) > 0.0
    );
    grew(
        alloc0,
        alloc1,
        "allot_allocation_cycle_duration_seconds_count",
        &[],
    );
    grew(alloc0, alloc1, "allot_allocation_grants_total", &[]);
    grew(
        alloc0,
        alloc1,
        "allot_policy_call_duration_seconds_count",
        &[("policy", "drf"), ("kind", "builtin")],
    );
    assert_eq!(v(alloc1, "allot_policy_active", &[("policy", "drf")]), 1.0);
    assert_eq!(
        v(
            alloc1,
            "allot_cluster_resources",
            &[("resource", "cpus"), ("state", "total")]
        ),
        4.0
    );
    assert!(metric(alloc1, "allot_role_dominant_share", &[("role", "*")]).is_some());
    assert!(v(alloc1, "allot_allocator_heartbeat_timestamp_seconds", &[]) > 1.7e9);
    // Agent: its resources, and the updates the broker acknowledged.
    assert_eq!(
        v(
            agent1,
            "allot_agent_resources",
            &[("resource", "mem"), ("state", "total")]
        ),
        4096.0
    );
    grew(
        agent0,
        agent1,
        "allot_agent_status_updates_total",
        &[("state", "TASK_RUNNING")],
    );
    cluster.stop();
    // Every series the alert rules and the dashboard use is one the services export.
    let exported: BTreeSet<String> = after
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .fold(n.to_string(), |n, suffix| {
                    n.strip_suffix(suffix).map(str::to_string).unwrap_or(n)
                })
        })
        .collect();
    // Labelled series that appear only with their first event (no failure, drop or starvation happened here).
    let on_first_event = [
        "allot_policy_failures_total",
        "allot_allocation_grants_dropped_total",
        "allot_framework_starved_cycles",
        "allot_preemptions_total",
    ];
    for name in referenced_series() {
        assert!(
            exported.contains(&name) || on_first_event.contains(&name.as_str()),
            "{name} (used by an alert or the dashboard) is exported"
        );
    }
}

/// The `allot_*` series named in `observability/prometheus/alerts.yml` and `observability/grafana/allot.json`.
fn referenced_series() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../observability");
    let mut names = BTreeSet::new();
    for file in ["prometheus/alerts.yml", "grafana/allot.json"] {
        let text = std::fs::read_to_string(root.join(file)).expect("observability file");
        let mut rest = text.as_str();
        while let Some(i) = rest.find("allot_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let name = name.strip_suffix("_bucket").unwrap_or(name);
            names.insert(name.to_string());
            rest = &tail[end..];
        }
    }
    assert!(names.len() > 20, "found the series names: {names:?}");
    names
}

/// The alert rules are valid, their unit tests pass, and the scrape configuration is valid (Debian's
/// promtool; `tests/run.sh` installs it).
#[test]
fn alert_rules_pass_promtool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../observability/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"],
        &["check", "config", "prometheus.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool is installed (apt-get install prometheus; tests/run.sh does)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs the `allot` binary with `args`; returns (exit code, stdout, stderr).
async fn allot_cli(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let out = tokio::process::Command::new(allot_tests::procs::bin_dir().join("allot"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output();
    let out = tokio::time::timeout(allot_tests::PATIENCE, out)
        .await
        .expect("allot finishes")
        .expect("allot runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The local trace store end to end: `allot traces serve` (a real process) keeps the spans of real services
/// and of `allot batch` (the framework); `allot trace TASK_ID` draws one task's trace, leaving out the other
/// task its ACCEPT launched, and says why the task is on its agent (the offer, the allocation cycle, the
/// policy); `allot traces list` and `allot traces cycles --framework` answer from the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_store_says_why_a_task_is_on_its_agent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("traces");
    let store_arg = store.display().to_string();
    let addr = format!("127.0.0.1:{}", allot_tests::free_port());
    let serve_log = std::fs::File::create(dir.path().join("serve.log")).expect("log");
    let mut serve = std::process::Command::new(allot_tests::procs::bin_dir().join("allot"))
        .args([
            "traces",
            "serve",
            "--listen",
            &addr,
            "--traces-dir",
            &store_arg,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(serve_log)
        .spawn()
        .expect("allot traces serve starts");
    let deadline = std::time::Instant::now() + allot_tests::PATIENCE;
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the store listens");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://{addr}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
    ];
    let mut cluster = ProcessCluster::start(1, &env).await;
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        "name = \"traced\"\nconcurrency = 2\nresources = \"cpus:0.5;mem:32\"\n\
         [[tasks]]\nid = \"traced-a\"\ncommand = \"true\"\n\
         [[tasks]]\nid = \"traced-b\"\ncommand = \"true\"\n",
    )
    .expect("job file");
    let tls_dir = cluster
        .etcd
        .tls_dir()
        .expect("a secured cluster")
        .display()
        .to_string();
    let (code, _, stderr) = allot_cli(
        &[
            "--broker",
            &cluster.broker.addr,
            "--tls-dir",
            &tls_dir,
            "batch",
            job.to_str().expect("utf-8"),
            "--quiet",
        ],
        &env,
    )
    .await;
    assert_eq!(code, 0, "the batch runs: {stderr}");
    // SIGTERM: every service exports what it still holds before it exits.
    cluster.stop();

    let store_args = ["--traces-dir", store_arg.as_str()];
    let svg = dir.path().join("a.svg");
    let (code, text, stderr) = allot_cli(
        &[
            &["trace", "traced-a", "--svg", svg.to_str().expect("utf-8")][..],
            &store_args,
        ]
        .concat(),
        &[],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    for part in [
        "task traced-a · trace ",
        "ACCEPT [allot]",
        "accept [offer-broker]",
        "launch task [agent]",
        "status update [agent] TASK_FINISHED",
        "why this agent:",
        "task traced-a is on agent ",
        "made by allocation cycle ",
        "policy drf (builtin, ",
        "the policy call took ",
    ] {
        assert!(text.contains(part), "`{part}` in:\n{text}");
    }
    assert_eq!(
        text.matches("launch task [agent]").count(),
        1,
        "traced-b's launch is left out:\n{text}"
    );
    assert!(
        std::fs::read_to_string(&svg)
            .expect("the SVG")
            .contains("launch task"),
        "the SVG waterfall"
    );

    let (code, json, stderr) = allot_cli(
        &[&["--json", "trace", "traced-a"][..], &store_args].concat(),
        &[],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let t = &report["traces"][0];
    let offer = &t["placements"][0]["offers"][0];
    assert_eq!(
        t["agent_id"], offer["offer"]["attributes"]["allot.agent.id"],
        "the task is on the agent of the offer its framework accepted"
    );
    assert_eq!(offer["cycle"]["name"], "allocation cycle");
    let framework = offer["offer"]["attributes"]["allot.framework.id"]
        .as_str()
        .expect("the offer names its framework")
        .to_string();

    let (_, list, _) = allot_cli(&[&["traces", "list"][..], &store_args].concat(), &[]).await;
    assert!(
        list.contains("traced-a") && list.contains("ACCEPT"),
        "{list}"
    );
    let (code, cycles, stderr) = allot_cli(
        &[
            &[
                "--json",
                "traces",
                "cycles",
                "--limit",
                "1000",
                "--framework",
                &framework,
            ][..],
            &store_args,
        ]
        .concat(),
        &[],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let cycles: serde_json::Value = serde_json::from_str(&cycles).expect("JSON");
    assert!(
        cycles
            .as_array()
            .expect("rows")
            .iter()
            .any(|r| r["offers_to_framework"].as_u64() >= Some(1)),
        "a cycle offered to the framework: {cycles}"
    );

    let (code, _, stderr) =
        allot_cli(&[&["trace", "no-such-task"][..], &store_args].concat(), &[]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no stored span names task no-such-task"),
        "{stderr}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert!(
        serve.wait().expect("serve exits").success(),
        "a clean exit on SIGTERM"
    );
}

/// A graceful stop (SIGTERM, as `systemctl restart` sends) of a broker with long-lived streams open (a
/// framework's event stream, the agent's status update stream) ends within the drain timeout: the streams
/// never end by themselves, and the server used to wait for them until the supervisor's SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_streams_open_stops_gracefully_within_the_drain_timeout() {
    use allot_proto::scheduler::SubscribeRequest;
    let mut cluster = ProcessCluster::start(1, &[]).await;
    let mut client = scheduler_client(&cluster);
    let mut events = client
        .subscribe(SubscribeRequest {
            framework_info: Some(allot_sdk::framework_info("held-open", "*")),
        })
        .await
        .expect("subscribe")
        .into_inner();
    events
        .message()
        .await
        .expect("SUBSCRIBED")
        .expect("an event");
    let stopped = std::time::Instant::now();
    // SIGTERM, then at most 10 s before SIGKILL.
    cluster.broker.stop();
    let took = stopped.elapsed();
    assert!(
        took < allot_server::grpc::DRAIN_TIMEOUT + Duration::from_secs(3),
        "the broker took {took:?} to stop"
    );
    cluster.stop();
}
