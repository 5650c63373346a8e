//! mesos-framework 0.5.3 (npm), a Node.js client of Mesos' v1 scheduler HTTP API, unmodified against a real
//! cluster (issue 26): a second Mesos client, in another language than pymesos. It sends no credentials, as
//! most Mesos frameworks do (Mesos does not authenticate HTTP frameworks by default), so the broker takes such
//! calls as a named framework principal (`--mesos-anonymous-principal`). `tests/mesos-framework/scheduler.js`
//! runs the scenario and checks what it saw (see its docs); `tests/mesos-framework/setup.sh` installs the
//! library (npm) once.

use allot_tests::{Cluster, ClusterOptions};
use std::path::PathBuf;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_js_mesos_framework_runs_unchanged() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = repo.join("target/mesos-framework");
    let setup = std::process::Command::new("bash")
        .arg(repo.join("tests/mesos-framework/setup.sh"))
        .arg(&dir)
        .status()
        .expect("run tests/mesos-framework/setup.sh");
    assert!(setup.success(), "tests/mesos-framework/setup.sh failed");
    let mut cluster = Cluster::start_with(ClusterOptions {
        mesos_credentials: Some("framework-node node-secret\n".into()),
        mesos_anonymous_principal: Some("framework-node".into()),
        ..Default::default()
    })
    .await;
    cluster.add_agent("cpus:2;mem:1024").await;
    let master = cluster.mesos_addr.expect("the Mesos API").to_string();
    let run = tokio::process::Command::new("node")
        .arg(repo.join("tests/mesos-framework/scheduler.js"))
        .arg(&master)
        .current_dir(&dir)
        .env("NODE_PATH", dir.join("node_modules"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the Node.js framework finished in time")
        .expect("run node");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("\nOK"),
        "the Node.js framework saw something Mesos would not do:\n{stdout}\n{stderr}"
    );
}
