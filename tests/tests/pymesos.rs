//! pymesos 0.3.15, the Mesos Python client, unmodified against a real cluster (issue 26): its scheduler driver
//! speaks to the broker's Mesos HTTP API with HTTP basic credentials, its executor driver to the agent's
//! executor API. `tests/pymesos/scheduler.py` runs the scenario and checks what it saw (see its docs);
//! `tests/pymesos/setup.sh` makes the Python environment (pymesos from PyPI) once.

use allot_tests::{Cluster, ClusterOptions};
use std::path::PathBuf;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pymesos_framework_and_its_pymesos_executor_run_unchanged() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let setup = std::process::Command::new("bash")
        .arg(repo.join("tests/pymesos/setup.sh"))
        .status()
        .expect("run tests/pymesos/setup.sh");
    assert!(setup.success(), "tests/pymesos/setup.sh failed");
    let mut cluster = Cluster::start_with(ClusterOptions {
        mesos_credentials: Some("framework-pymesos pymesos-secret\n".into()),
        ..Default::default()
    })
    .await;
    cluster.add_agent("cpus:2;mem:1024").await;
    let master = cluster.mesos_addr.expect("the Mesos API").to_string();
    let python = repo.join("target/pymesos/bin/python");
    let executor = format!(
        "{} {}",
        python.display(),
        repo.join("tests/pymesos/executor.py").display()
    );
    let run = tokio::process::Command::new(&python)
        .arg(repo.join("tests/pymesos/scheduler.py"))
        .args([
            master.as_str(),
            "framework-pymesos",
            "pymesos-secret",
            &executor,
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the pymesos framework finished in time")
        .expect("run python");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the pymesos framework saw something Mesos would not do:\n{stdout}\n{stderr}"
    );
}
