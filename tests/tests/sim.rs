//! Simulated agents (`allot-agent --simulate N`) against the real control plane and etcd, and the batched
//! paths they and the SDK use: UpdateBatch for status updates, ACKNOWLEDGE with `more`.

use allot_proto::agent::{
    StatusUpdateBatchRequest, StatusUpdateRequest, status_updates_client::StatusUpdatesClient,
};
use allot_proto::common::{TaskState, TaskStatus};
use allot_proto::scheduler as pb;
use allot_tests::fill::Fill;
use allot_tests::{Cluster, TestFramework, eventually, task};
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_run_a_workload_to_the_end() {
    let cluster = Cluster::start().await;
    let _agents = cluster
        .add_simulated_agents(20, "cpus:4;mem:1024", Duration::from_millis(100))
        .await;
    let mut frameworks = tokio::task::JoinSet::new();
    for i in 0..2 {
        let name = format!("fill{i}");
        let config = cluster.driver_config(allot_sdk::framework_info(&name, "*"));
        let task = "cpus:1;mem:64".parse().expect("resources");
        frameworks.spawn(allot_sdk::run(
            config,
            Fill::new(&name, 150, task, "sleep 0.2"),
        ));
    }
    let mut running = 0;
    while let Some(done) = tokio::time::timeout(allot_tests::PATIENCE * 2, frameworks.join_next())
        .await
        .expect("the frameworks finish their tasks")
    {
        let seen = done.expect("joins").expect("runs").take_seen();
        assert_eq!(seen.terminal, 150, "every task ended");
        assert_eq!(seen.failed, 0, "every task ended TASK_FINISHED");
        running += seen.latencies.len();
    }
    assert_eq!(running, 300, "every task was seen TASK_RUNNING");
    // 300 tasks on 80 CPUs: the agents were used more than once, and every terminal update was acknowledged
    // (in batches) and persisted.
    eventually("all 300 tasks are FINISHED and acknowledged", || async {
        let tasks = cluster.tasks("").await;
        tasks.len() == 300
            && tasks.iter().all(|t| {
                t.acknowledged
                    && t.status.as_ref().map(|s| s.state()) == Some(TaskState::TaskFinished)
            })
    })
    .await;
    let agents: std::collections::HashSet<String> = cluster
        .tasks("")
        .await
        .iter()
        .filter_map(|t| t.task.as_ref().map(|t| t.agent_id.clone()))
        .collect();
    assert!(agents.len() > 1, "tasks ran on several simulated agents");
    assert!(
        agents.iter().all(|a| a.starts_with("sim-sim")),
        "{agents:?}"
    );
}

/// The next UPDATE of `task` to `state`, not acknowledged.
async fn update_of(fw: &mut TestFramework, task: &str, state: TaskState) -> TaskStatus {
    fw.wait_for(allot_tests::PATIENCE, |e| match e {
        pb::event::Event::Update(u) => u
            .status
            .clone()
            .filter(|s| s.task_id == task && s.state() == state),
        _ => None,
    })
    .await
    .unwrap_or_else(|| panic!("no update of {task} to {}", state.as_str_name()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_updates_and_acknowledgements_are_recorded_and_bad_entries_dropped() {
    let cluster = Cluster::start().await;
    let _agents = cluster
        .add_simulated_agents(1, "cpus:2;mem:512", Duration::from_secs(600))
        .await;
    let mut fw = TestFramework::subscribe(&cluster, "batch", "*").await;
    let offer = fw.offers().await.remove(0);
    let agent = offer.agent_id.clone();
    fw.accept(
        &offer.offer_id,
        vec![
            task("t1", "sleep 600", 0.5, 64.0),
            task("t2", "sleep 600", 0.5, 64.0),
        ],
        0.0,
    )
    .await
    .expect("accept");
    let r1 = update_of(&mut fw, "t1", TaskState::TaskRunning).await;
    let r2 = update_of(&mut fw, "t2", TaskState::TaskRunning).await;

    // One batch: an entry without IDs, t1 FINISHED, the same update again, an update of an unknown task.
    let finished = TaskStatus {
        task_id: "t1".into(),
        framework_id: fw.id.clone(),
        agent_id: agent.clone(),
        state: TaskState::TaskFinished as i32,
        uuid: b"u-finished".to_vec(),
        ..Default::default()
    };
    let unknown = TaskStatus {
        task_id: "nope".into(),
        ..finished.clone()
    };
    let entry = |s: TaskStatus| StatusUpdateRequest {
        status: Some(s),
        ..Default::default()
    };
    // As the simulated agents' own principal (an agent may report only its own tasks).
    let mut updates = StatusUpdatesClient::new(
        cluster
            .dialer("agent-sim")
            .channel(&cluster.broker.addr.to_string())
            .expect("channel"),
    );
    updates
        .update_batch(StatusUpdateBatchRequest {
            updates: vec![
                entry(TaskStatus::default()),
                entry(finished.clone()),
                entry(finished.clone()),
                entry(unknown),
            ],
        })
        .await
        .expect("a batch with bad entries is accepted; the bad ones are dropped");
    let done = update_of(&mut fw, "t1", TaskState::TaskFinished).await;
    assert_eq!(done.uuid, b"u-finished");
    assert!(
        fw.wait_for(Duration::from_millis(500), |e| match e {
            pb::event::Event::Update(u)
                if u.status
                    .as_ref()
                    .is_some_and(|s| s.task_id == "t1" && s.state() == TaskState::TaskFinished) =>
                Some(()),
            _ => None,
        })
        .await
        .is_none(),
        "the repeated update was not forwarded twice"
    );

    // One ACKNOWLEDGE for both tasks' latest updates, in `more`.
    let ack = |s: &TaskStatus| pb::Acknowledgement {
        agent_id: s.agent_id.clone(),
        task_id: s.task_id.clone(),
        uuid: s.uuid.clone(),
    };
    fw.client
        .acknowledge(pb::AcknowledgeRequest {
            framework_id: fw.id.clone(),
            more: vec![ack(&done), ack(&r2)],
            ..Default::default()
        })
        .await
        .expect("batched acknowledge");
    let empty = fw
        .client
        .acknowledge(pb::AcknowledgeRequest {
            framework_id: fw.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("an ACKNOWLEDGE of nothing is refused");
    assert_eq!(empty.code(), Code::InvalidArgument);
    let unknown = fw
        .client
        .acknowledge(pb::AcknowledgeRequest {
            framework_id: fw.id.clone(),
            more: vec![pb::Acknowledgement {
                task_id: "nope".into(),
                ..ack(&r1)
            }],
            ..Default::default()
        })
        .await
        .expect_err("an unknown task is refused");
    assert_eq!(unknown.code(), Code::NotFound);
    let tasks = cluster.tasks(&fw.id).await;
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t.acknowledged), "{tasks:?}");

    // A simulated task can be killed. Its RUNNING was just acknowledged: the lazy write of that
    // acknowledgement must not put RUNNING back over TASK_KILLED in etcd.
    fw.kill("t2").await.expect("kill");
    update_of(&mut fw, "t2", TaskState::TaskKilled).await;
    let store = cluster.etcd.store().await;
    let in_etcd = |task: &'static str| allot_tests::recorded_task(&store, &fw.id, task);
    eventually("t1's acknowledgement reaches etcd", || async {
        in_etcd("t1").await.acknowledged
    })
    .await;
    // Unacknowledged, TASK_KILLED is written once it has waited UNACKNOWLEDGED_WRITE_DELAY.
    tokio::time::sleep(
        allot_offer_broker::updates::UNACKNOWLEDGED_WRITE_DELAY
            + allot_offer_broker::updates::FLUSH_INTERVAL * 3,
    )
    .await;
    let t2 = in_etcd("t2").await;
    assert_eq!(
        t2.status.as_ref().map(|s| s.state()),
        Some(TaskState::TaskKilled),
        "{t2:?}"
    );
    assert!(!t2.acknowledged, "TASK_KILLED itself was not acknowledged");
}
