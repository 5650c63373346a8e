//! The `allot` binary against a real cluster: `execute` exits with the command's exit code, `batch` runs a job
//! file, and the operator views answer in JSON.

use allot_tests::Cluster;
use std::process::Output;

async fn allot(cluster: &Cluster, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(allot_args(cluster))
        .args(args)
        .output();
    tokio::time::timeout(allot_tests::PATIENCE, out)
        .await
        .expect("allot finishes")
        .expect("allot runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_exits_with_the_commands_exit_code() {
    let mut cluster = Cluster::start().await;
    cluster.add_agent("cpus:1;mem:256").await;
    let out = allot(
        &cluster,
        &["execute", "--command", "echo hi; exit 3", "--name", "three"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("TASK_RUNNING") && stderr.contains("TASK_FAILED"),
        "{stderr}"
    );
    let ok = allot(
        &cluster,
        &[
            "execute",
            "--command",
            "true",
            "--name",
            "zero",
            "--instances",
            "2",
        ],
    )
    .await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let tasks = allot(&cluster, &["tasks", "--json"]).await;
    let text = String::from_utf8_lossy(&tasks.stdout);
    assert_eq!(text.matches("TASK_FINISHED").count(), 2, "{text}");
    assert_eq!(text.matches("TASK_FAILED").count(), 1, "{text}");
    let agents = allot(&cluster, &["agents", "--json"]).await;
    assert!(String::from_utf8_lossy(&agents.stdout).contains("\"reachable\": true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_runs_a_job_file_and_summarises_it() {
    let mut cluster = Cluster::start().await;
    cluster.add_agent("cpus:2;mem:512").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let job = dir.path().join("job.toml");
    let mut text =
        String::from("name = \"small\"\nconcurrency = 3\nresources = \"cpus:0.25;mem:32\"\n");
    for i in 0..6 {
        text.push_str(&format!(
            "[[tasks]]\nid = \"t{i}\"\ncommand = \"echo {i} > {}/{i}.out\"\n",
            dir.path().display()
        ));
    }
    text.push_str("[[tasks]]\nid = \"bad\"\ncommand = \"exit 4\"\n");
    std::fs::write(&job, text).expect("job file");
    let out = allot(
        &cluster,
        &[
            "batch",
            job.to_str().expect("utf-8 path"),
            "--quiet",
            "--json",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "one task failed: {stdout}");
    assert!(stdout.contains("\"finished\": 6"), "{stdout}");
    assert!(stdout.contains("\"exit_code\": 4"), "{stdout}");
    for i in 0..6 {
        let got =
            std::fs::read_to_string(dir.path().join(format!("{i}.out"))).expect("task output");
        assert_eq!(got.trim(), i.to_string());
    }
    let bad = allot(&cluster, &["batch", "/nonexistent.toml"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_flag_is_a_usage_error() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .args([
            "execute",
            "--resources",
            "cpus:-1",
            "--command",
            "true",
            "--bogus",
        ])
        .output()
        .await
        .expect("allot runs");
    assert_eq!(out.status.code(), Some(64));
}

/// The `allot` arguments that reach `cluster`.
fn allot_args(cluster: &Cluster) -> Vec<String> {
    cluster.cli_args()
}

/// Waits until `path` holds at least `lines` lines; returns them.
async fn lines_in(path: &std::path::Path, lines: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + allot_tests::PATIENCE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines {
            return text.lines().map(str::to_string).collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never had {lines} lines: {text:?}",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_launches_again_a_task_its_agent_lost_and_not_one_that_failed() {
    let mut cluster = Cluster::start().await;
    let agent = cluster.add_agent("cpus:1;mem:256").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger");
    let job = dir.path().join("job.toml");
    // `t` runs until its agent dies with all of its processes and its task reaper (as on a reboot): the
    // restarted agent finds no exit status and reports TASK_FAILED (REASON_AGENT_RESTARTED), no fault of the
    // task; the batch launches it again as `t-retry1`. `bad` fails by its own exit code: it is not launched again.
    let d = dir.path().display();
    let text = format!(
        "name = \"retrying\"\nconcurrency = 2\nresources = \"cpus:0.25;mem:32\"\n\
         [[tasks]]\nid = \"t\"\ncommand = \"echo $ALLOT_TASK_ID >> {d}/ledger; [ -e {d}/marker ] || {{ touch {d}/marker; sleep 60; }}\"\n\
         [[tasks]]\nid = \"bad\"\ncommand = \"echo $ALLOT_TASK_ID >> {d}/ledger; exit 4\"\n"
    );
    std::fs::write(&job, text).expect("job file");
    let batch = tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(allot_args(&cluster))
        .args(["batch", job.to_str().expect("utf-8"), "--quiet", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("allot batch");
    lines_in(&ledger, 2).await;
    let work_dir = agent.work_dir.clone();
    let pid = allot_tests::checkpointed_pid(&work_dir, "t").expect("t's pid is checkpointed");
    agent.service.crash();
    allot_tests::kill_reaper(&work_dir);
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("killpg");
    let _again = cluster.start_agent("cpus:1;mem:256", work_dir).await;
    let out = tokio::time::timeout(allot_tests::PATIENCE, batch.wait_with_output())
        .await
        .expect("the batch ends")
        .expect("allot batch runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "bad failed: {stdout} {stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    let tasks = summary["tasks"].as_array().expect("tasks");
    let of = |id: &str| tasks.iter().find(|t| t["task_id"] == id).expect(id).clone();
    assert_eq!(of("t")["state"], "TASK_FINISHED", "{stdout}");
    assert_eq!(of("t")["attempts"], 2, "{stdout}");
    assert_eq!(of("bad")["state"], "TASK_FAILED", "{stdout}");
    assert_eq!(of("bad")["attempts"], 1, "{stdout}");
    let mut starts = std::fs::read_to_string(&ledger).expect("ledger");
    starts = starts.lines().collect::<Vec<_>>().join(" ");
    assert_eq!(starts.matches("bad").count(), 1, "{starts}");
    assert!(starts.contains("t-retry1"), "{starts}");
    assert!(
        !job.with_extension("toml.journal").exists(),
        "the journal is removed when the batch ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_batch_run_again_resumes_its_job_and_runs_no_task_twice() {
    let mut cluster = Cluster::start().await;
    cluster.add_agent("cpus:1;mem:256").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger");
    let job = dir.path().join("job.toml");
    let mut text =
        String::from("name = \"resumable\"\nconcurrency = 2\nresources = \"cpus:0.25;mem:32\"\n");
    for i in 0..6 {
        text.push_str(&format!(
            "[[tasks]]\nid = \"t{i}\"\ncommand = \"echo t{i} >> {}; sleep 1\"\n",
            ledger.display()
        ));
    }
    std::fs::write(&job, &text).expect("job file");
    let run = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(allot_args(&cluster))
            .args(["batch", job.to_str().expect("utf-8"), "--quiet", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("allot batch")
    };
    // The batch is killed (SIGKILL) with tasks running: they keep running, the journal stays.
    let mut first = run();
    lines_in(&ledger, 3).await;
    first.kill().await.expect("kill -9 the batch");
    let journal = dir.path().join("job.toml.journal");
    assert!(journal.exists(), "the journal outlives the batch");
    // A journal is not resumed against a changed job file.
    std::fs::write(&job, format!("{text}# edited\n")).expect("job file");
    let refused = tokio::time::timeout(allot_tests::PATIENCE, run().wait_with_output())
        .await
        .expect("the batch ends")
        .expect("allot batch runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another version"), "{stderr}");
    std::fs::write(&job, &text).expect("job file");
    // Run again: it re-subscribes as the same framework and finishes the job.
    let out = tokio::time::timeout(allot_tests::PATIENCE, run().wait_with_output())
        .await
        .expect("the batch ends")
        .expect("allot batch runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout} {stderr}");
    assert!(stderr.contains("resuming from"), "{stderr}");
    assert!(stdout.contains("\"finished\": 6"), "{stdout}");
    let starts = std::fs::read_to_string(&ledger).expect("ledger");
    for i in 0..6 {
        let n = starts.lines().filter(|l| *l == format!("t{i}")).count();
        assert_eq!(n, 1, "t{i} started once: {starts:?}");
    }
    assert!(
        !journal.exists(),
        "the journal is removed when the batch ends"
    );
    let frameworks = allot(&cluster, &["frameworks", "--json"]).await;
    let text = String::from_utf8_lossy(&frameworks.stdout);
    assert!(
        text.matches("resumable").count() <= 1,
        "one framework, resumed, not two: {text}"
    );
}
