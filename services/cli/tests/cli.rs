//! The `allot` binary against a real cluster: `execute` exits with the command's exit code, `batch` runs a job
//! file, and the operator views answer in JSON.

use allot_tests::Cluster;
use std::process::Output;

async fn allot(cluster: &Cluster, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .args([
            "--registry",
            &cluster.registry.addr.to_string(),
            "--broker",
            &cluster.broker.addr.to_string(),
        ])
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
