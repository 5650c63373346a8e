//! Unit tests of the broker's decisions, on a [`State`] built in memory (no etcd, no network).

use super::*;
use allot_common::convert::resources_from_proto;
use allot_proto::agent::ReconciledTask;
use allot_proto::common::{CommandInfo, FrameworkInfo};

const FW: &str = "fw-1";
const AGENT: &str = "agent-1";

fn uuid(n: u8) -> Vec<u8> {
    vec![n; 16]
}

fn record(fw: &str, active: bool) -> FrameworkRecord {
    FrameworkRecord {
        framework_id: fw.into(),
        info: Some(FrameworkInfo {
            name: "test".into(),
            failover_timeout: 7.0,
            ..Default::default()
        }),
        registered_at_ms: 1,
        active,
    }
}

/// A state with framework `FW` subscribed (its event stream returned), agent `AGENT` alive.
fn subscribed() -> (State, mpsc::UnboundedReceiver<Event>) {
    let mut s = State::default();
    let (tx, rx) = mpsc::unbounded_channel();
    s.subscribe(record(FW, true), tx);
    s.agents.insert(
        AGENT.into(),
        AgentRecord {
            agent_id: AGENT.into(),
            info: Some(AgentInfo {
                hostname: "host-1".into(),
                address: "127.0.0.1:1".into(),
                ..Default::default()
            }),
            registered_at_ms: 10,
            principal: String::new(),
        },
    );
    s.alive.insert(AGENT.into(), 10);
    (s, rx)
}

fn offer(s: &mut State, id: &str, fw: &str, resources: &str) {
    let r: Resources = resources.parse().unwrap();
    s.offers.insert(
        id.into(),
        OfferEntry {
            offer: pb::Offer {
                offer_id: id.into(),
                framework_id: fw.into(),
                agent_id: AGENT.into(),
                resources: resources_to_proto(&r),
                ..Default::default()
            },
            resources: r,
            span: SpanContext::empty_context(),
        },
    );
}

fn task_info(id: &str, resources: &str) -> TaskInfo {
    TaskInfo {
        task_id: id.into(),
        agent_id: AGENT.into(),
        resources: resources_to_proto(&resources.parse().unwrap()),
        command: Some(CommandInfo {
            value: "true".into(),
            shell: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A state with task `t1` of `FW` staged on `AGENT` (its launch answered).
fn with_task() -> (State, mpsc::UnboundedReceiver<Event>) {
    let (mut s, rx) = subscribed();
    stage(&mut s, "t1");
    s.launched(&[(FW.into(), "t1".into())]);
    (s, rx)
}

/// Stages task `task` of `FW` on `AGENT` (cpus 1), its launch in flight.
fn stage(s: &mut State, task: &str) {
    s.add_staged(vec![staging_record(
        FW,
        AGENT,
        task_info(task, "cpus:1"),
        1.0,
    )]);
}

/// Applies one update of `task` from `AGENT`, with uuid `[n; 16]`.
fn apply(s: &mut State, task: &str, state: TaskState, n: u8) -> Applied {
    s.apply_updates(vec![(update(task, state, n), None)], || uuid(0))
}

/// `FW` acknowledges the update `[n; 16]` of `task`.
fn ack(s: &mut State, task: &str, n: u8) {
    s.acknowledge(FW, vec![(task.into(), uuid(n))]).unwrap();
}

/// The broker records `task` TASK_UNREACHABLE (its agent was lost).
fn make_unreachable(s: &mut State, task: &str) {
    let statuses = s.master_statuses(
        &[key(task)],
        (
            TaskState::TaskUnreachable,
            "REASON_AGENT_UNREACHABLE",
            "gone",
        ),
        2.0,
        || uuid(5),
    );
    let records = s.own_update_records(statuses);
    s.put_records(records);
}

fn update(task: &str, state: TaskState, n: u8) -> TaskStatus {
    TaskStatus {
        task_id: task.into(),
        framework_id: FW.into(),
        agent_id: AGENT.into(),
        state: state as i32,
        source: StatusSource::SourceExecutor as i32,
        uuid: uuid(n),
        ..Default::default()
    }
}

fn key(task: &str) -> TaskKey {
    (FW.into(), task.into())
}

fn status_of(s: &State, task: &str) -> TaskStatus {
    s.tasks[&key(task)].status.clone().unwrap()
}

fn events(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<event::Event> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .filter_map(|e| e.event)
        .collect()
}

fn due(s: &mut State, wait: u64) -> (Vec<TaskKey>, Vec<StatusUpdateAcknowledgement>) {
    let mut written = Vec::new();
    let acks = s.take_due(wait, |k, _| written.push(k.clone()));
    (written, acks)
}

#[test]
fn a_call_needs_a_subscription_and_a_torn_down_framework_cannot_come_back() {
    let (mut s, _rx) = subscribed();
    assert!(s.check_subscribed(FW).is_ok());
    assert!(matches!(
        s.check_subscribed("other"),
        Err(Error::NotSubscribed(_))
    ));
    assert!(s.check_resubscribe(FW).is_ok());
    assert!(matches!(
        s.check_resubscribe("other"),
        Err(Error::UnknownFramework(_))
    ));
    s.tear_down(FW, record(FW, false));
    assert!(matches!(s.check_subscribed(FW), Err(Error::TornDown(_))));
    assert!(matches!(s.check_resubscribe(FW), Err(Error::Removed(_))));
}

#[test]
fn a_resubscription_replaces_the_stream_and_resends_unacknowledged_updates() {
    let (mut s, _old) = with_task();
    apply(&mut s, "t1", TaskState::TaskRunning, 1);
    let (tx, _new) = mpsc::unbounded_channel();
    let (epoch, old, pending) = s.subscribe(record(FW, true), tx);
    assert_eq!(epoch, 2);
    assert!(old.is_some(), "the old stream is handed back to be told");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].state(), TaskState::TaskRunning);
    // The first connection's close no longer counts.
    assert!(s.disconnect(FW, 1).is_none());
    assert!(s.frameworks[FW].sender.is_some());
}

#[test]
fn a_disconnect_returns_the_offers_and_starts_the_failover_timeout() {
    let (mut s, _rx) = subscribed();
    offer(&mut s, "o1", FW, "cpus:1");
    offer(&mut s, "o2", "other", "cpus:1");
    let (offers, timeout) = s.disconnect(FW, 1).expect("the current connection");
    assert_eq!(offers, ["o1"]);
    assert_eq!(timeout, 7.0);
    assert!(
        s.offers.contains_key("o2"),
        "another framework's offer stays"
    );
    assert!(s.still_gone(FW, 1));
    assert!(s.disconnect(FW, 1).is_none(), "only once");
}

#[test]
fn grants_are_offered_only_to_connected_frameworks_on_alive_known_agents() {
    let (mut s, _rx) = subscribed();
    assert_eq!(s.offer_target(FW, AGENT).unwrap().hostname, "host-1");
    assert!(s.offer_target("other", AGENT).is_none(), "not connected");
    assert!(s.offer_target(FW, "agent-2").is_none(), "no record");
    assert_eq!(s.set_alive(AGENT, None), Liveness::Lost);
    assert!(s.offer_target(FW, AGENT).is_none(), "not alive");
    assert_eq!(s.set_alive(AGENT, Some(11)), Liveness::Returned);
    assert_eq!(s.set_alive(AGENT, Some(12)), Liveness::Same);
    assert_eq!(
        s.alive[AGENT], 12,
        "the latest registration is the one launches name"
    );
}

#[test]
fn accept_checks_every_offer_and_takes_them_all_or_none() {
    let (mut s, _rx) = subscribed();
    offer(&mut s, "o1", FW, "cpus:1;mem:64");
    offer(&mut s, "o2", FW, "cpus:1;mem:64");
    offer(&mut s, "theirs", "other", "cpus:1");
    let (agent, total) = s.check_offers(FW, &["o1".into(), "o2".into()]).unwrap();
    assert_eq!(agent, AGENT);
    assert_eq!(total, "cpus:2;mem:128".parse().unwrap());
    for (ids, bad) in [
        (vec![], "no offer_ids"),
        (vec!["o1", "o1"], "named twice"),
        (vec!["o1", "theirs"], "unknown"),
        (vec!["gone"], "unknown"),
    ] {
        let ids: Vec<String> = ids.into_iter().map(String::from).collect();
        let e = s.check_offers(FW, &ids).unwrap_err();
        assert!(e.to_string().contains(bad), "{e}");
    }
    // A rescind between the checks and the take wins, and nothing is taken.
    s.rescind(["o2".to_string()]);
    assert!(matches!(
        s.take_offers_for_accept(&["o1".into(), "o2".into()]),
        Err(Error::Rescinded)
    ));
    assert!(s.offers.contains_key("o1"));
    let taken = s.take_offers_for_accept(&["o1".into()]).unwrap();
    assert_eq!(taken.len(), 1);
    assert!(!s.offers.contains_key("o1"), "an offer is used once");
}

#[test]
fn a_decline_takes_its_valid_offers_even_beside_one_no_longer_valid() {
    let (mut s, _rx) = subscribed();
    offer(&mut s, "o1", FW, "cpus:1");
    offer(&mut s, "o2", FW, "cpus:1");
    offer(&mut s, "theirs", "other", "cpus:1");
    assert!(matches!(
        s.take_declined_offers(FW, Vec::new()),
        Err(Error::Invalid(_))
    ));
    let ids = ["o1", "gone", "theirs", "o2"].map(String::from).to_vec();
    let (taken, unknown) = s.take_declined_offers(FW, ids).unwrap();
    assert_eq!(taken, ["o1", "o2"]);
    assert_eq!(unknown.as_deref(), Some("gone"));
    assert!(!s.offers.contains_key("o1") && !s.offers.contains_key("o2"));
    assert!(
        s.offers.contains_key("theirs"),
        "another framework's offer is not declined"
    );
}

#[test]
fn launched_tasks_draw_on_the_role_reservation_first() {
    let reserved: Resources = "cpus:1".parse().unwrap();
    let unreserved: Resources = "cpus:2;mem:128".parse().unwrap();
    let mut resources = piece_to_proto(&Resources::new(), &reserved, "db");
    resources.extend(resources_to_proto(&unreserved));
    let taken = vec![OfferEntry {
        offer: pb::Offer {
            resources,
            ..Default::default()
        },
        resources: unreserved.plus(&reserved),
        span: SpanContext::empty_context(),
    }];
    let info = task_info("t1", "cpus:1.5;mem:64");
    let mut valid = vec![ValidTask {
        resources: resources_from_proto(&info.resources).unwrap(),
        info,
    }];
    tag_reservations(&taken, &mut valid);
    let (unres, res) = pieces_from_proto(&valid[0].info.resources).unwrap();
    assert_eq!(res["db"], "cpus:1".parse().unwrap());
    assert_eq!(unres, "cpus:0.5;mem:64".parse().unwrap());
}

#[test]
fn a_staged_task_is_live_and_in_flight_until_its_launch_is_answered() {
    let (mut s, _rx) = subscribed();
    stage(&mut s, "t1");
    assert!(s.is_live_task(FW, "t1"));
    assert_eq!(status_of(&s, "t1").state(), TaskState::TaskStaging);
    assert_eq!(s.launching_on(AGENT), [key("t1")]);
    assert!(
        s.tasks_on(AGENT, |_| true).is_empty(),
        "a launch in flight is not reconciled"
    );
    s.launched(&[key("t1")]);
    assert!(s.launching_on(AGENT).is_empty());
    assert_eq!(s.tasks_on(AGENT, |_| true).len(), 1);
}

#[test]
fn updates_are_forwarded_once_and_a_terminal_one_ends_the_task() {
    let (mut s, _rx) = with_task();
    let a = s.apply_updates(
        vec![
            (
                update("t1", TaskState::TaskRunning, 1),
                Some("/sandbox".into()),
            ),
            (update("t1", TaskState::TaskRunning, 1), None),
        ],
        || uuid(0),
    );
    assert_eq!(a.forward.len(), 1, "a repeat is not forwarded again");
    assert!(a.ended.is_empty());
    assert_eq!(s.tasks[&key("t1")].sandbox, "/sandbox");
    assert!(!s.tasks[&key("t1")].acknowledged);
    let a = apply(&mut s, "t1", TaskState::TaskFinished, 2);
    assert_eq!(a.forward.len(), 1);
    assert_eq!(a.ended.len(), 1, "the allocator frees its resources");
    // After a terminal state, anything more is acknowledged to the agent and dropped.
    let a = s.apply_updates(vec![(update("t1", TaskState::TaskFailed, 3), None)], || {
        uuid(0)
    });
    assert!(a.forward.is_empty());
    assert_eq!(status_of(&s, "t1").state(), TaskState::TaskFinished);
    assert_eq!(s.agent_acks.len(), 1);
    assert_eq!(s.agent_acks[0].uuid, uuid(3));
    assert!(
        a.kill.is_empty(),
        "an ended task reported ended is not killed"
    );
    let a = s.apply_updates(
        vec![(update("t1", TaskState::TaskRunning, 4), None)],
        || uuid(0),
    );
    assert!(
        a.kill.is_empty(),
        "an older live update sent again after the agent's own terminal one is no reason to kill"
    );
}

#[test]
fn a_task_reported_live_after_the_broker_ended_it_is_killed() {
    // The broker gave t1 up (TASK_LOST: its agent came back without it); a launch a partition held up
    // starts it after all, and the agent reports it running: it is killed, and the framework hears nothing.
    let (mut s, _rx) = with_task();
    let statuses = s.master_statuses(
        &[key("t1")],
        (TaskState::TaskLost, "REASON_TASK_UNKNOWN", "no record"),
        2.0,
        || uuid(5),
    );
    let records = s.own_update_records(statuses);
    s.put_records(records);
    let a = apply(&mut s, "t1", TaskState::TaskRunning, 1);
    assert!(a.forward.is_empty());
    assert_eq!(a.kill, vec![(FW.into(), "t1".into(), AGENT.into())]);
    assert_eq!(status_of(&s, "t1").state(), TaskState::TaskLost);
}

#[test]
fn an_update_for_an_unknown_task_is_acknowledged_and_dropped() {
    let (mut s, _rx) = subscribed();
    let a = apply(&mut s, "nope", TaskState::TaskRunning, 1);
    assert!(a.forward.is_empty());
    assert_eq!(s.agent_acks.len(), 1);
    assert!(s.tasks.is_empty());
    assert_eq!(
        a.kill.len(),
        1,
        "a live task the broker does not know is killed"
    );
    let a = apply(&mut s, "nope", TaskState::TaskFinished, 2);
    assert!(a.kill.is_empty(), "an ended one is only acknowledged");
}

#[test]
fn a_torn_down_framework_is_acknowledged_for_and_not_forwarded() {
    let (mut s, _rx) = with_task();
    s.tear_down(FW, record(FW, false));
    let a = s.apply_updates(vec![(update("t1", TaskState::TaskKilled, 1), None)], || {
        uuid(0)
    });
    assert!(a.forward.is_empty());
    assert_eq!(a.ended.len(), 1);
    assert!(s.tasks[&key("t1")].acknowledged);
}

#[test]
fn an_update_without_a_uuid_gets_one() {
    let (mut s, _rx) = with_task();
    let a = apply(&mut s, "t1", TaskState::TaskRunning, 1);
    assert_eq!(a.forward[0].uuid, uuid(1));
    let mut no_uuid = update("t1", TaskState::TaskFinished, 0);
    no_uuid.uuid.clear();
    let a = s.apply_updates(vec![(no_uuid, None)], || uuid(9));
    assert_eq!(a.forward[0].uuid, uuid(9));
}

#[test]
fn acknowledgements_name_the_latest_update_and_unknown_tasks_refuse_the_call() {
    let (mut s, _rx) = with_task();
    apply(&mut s, "t1", TaskState::TaskRunning, 1);
    assert!(matches!(
        s.acknowledge(FW, vec![("t1".into(), uuid(1)), ("nope".into(), uuid(1))]),
        Err(Error::UnknownTask(t)) if t == "nope"
    ));
    assert!(
        !s.tasks[&key("t1")].acknowledged,
        "nothing acknowledged then"
    );
    ack(&mut s, "t1", 7);
    assert!(
        !s.tasks[&key("t1")].acknowledged,
        "an older uuid is ignored"
    );
    ack(&mut s, "t1", 1);
    assert!(s.tasks[&key("t1")].acknowledged);
}

#[test]
fn intermediate_acknowledgements_go_on_at_once_and_acknowledged_ends_wait_for_their_write() {
    let (mut s, _rx) = with_task();
    apply(&mut s, "t1", TaskState::TaskRunning, 1);
    // Unacknowledged: nothing written, nothing passed on.
    assert_eq!(due(&mut s, 25), (vec![], vec![]));
    // An acknowledged TASK_RUNNING is never written; its acknowledgement is ready for the agent at once.
    assert!(s.acknowledge(FW, vec![("t1".into(), uuid(1))]).unwrap());
    let acks = s.take_agent_acks();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].uuid, uuid(1));
    assert_eq!(
        due(&mut s, 25),
        (vec![], vec![]),
        "nothing left for the flush"
    );
    // An acknowledged terminal update is written (its acknowledgement follows the write).
    apply(&mut s, "t1", TaskState::TaskFinished, 2);
    assert!(!s.acknowledge(FW, vec![("t1".into(), uuid(2))]).unwrap());
    assert!(s.take_agent_acks().is_empty(), "not before etcd holds it");
    let (written, acks) = due(&mut s, 25);
    assert_eq!(written, [key("t1")]);
    assert!(acks.is_empty());
    assert!(s.dirty.is_empty());
}

#[test]
fn an_update_left_unacknowledged_is_written_after_the_wait() {
    let (mut s, _rx) = with_task();
    apply(&mut s, "t1", TaskState::TaskRunning, 1);
    for _ in 0..3 {
        assert!(due(&mut s, 3).0.is_empty());
    }
    assert_eq!(due(&mut s, 3).0, [key("t1")], "written on the fourth flush");
}

#[test]
fn a_failed_write_is_written_at_the_next_flush_even_if_acknowledged_meanwhile() {
    let (mut s, _rx) = with_task();
    apply(&mut s, "t1", TaskState::TaskRunning, 1);
    s.write_failed([key("t1")]);
    ack(&mut s, "t1", 1);
    let (written, acks) = due(&mut s, 25);
    assert_eq!(written, [key("t1")], "must be written, not skipped");
    assert!(acks.is_empty());
}

#[test]
fn a_task_back_from_unreachable_is_written_when_running_again() {
    let (mut s, _rx) = with_task();
    make_unreachable(&mut s, "t1");
    let a = apply(&mut s, "t1", TaskState::TaskRunning, 6);
    assert_eq!(a.forward.len(), 1);
    ack(&mut s, "t1", 6);
    assert_eq!(due(&mut s, 25).0, [key("t1")]);
}

#[test]
fn the_brokers_own_updates_skip_unknown_ended_and_repeated_tasks() {
    let (mut s, _rx) = with_task();
    let statuses = s.master_statuses(
        &[key("t1"), key("t1"), key("nope")],
        (TaskState::TaskLost, "REASON_TASK_UNKNOWN", "lost"),
        3.0,
        || uuid(4),
    );
    assert_eq!(statuses.len(), 3);
    assert_eq!(statuses[0].agent_id, AGENT, "the agent comes from the task");
    assert_eq!(statuses[0].source(), StatusSource::SourceMaster);
    let records = s.own_update_records(statuses.clone());
    assert_eq!(records.len(), 1);
    assert!(!records[0].acknowledged);
    s.put_records(records);
    assert!(
        s.own_update_records(statuses).is_empty(),
        "nothing after a terminal state"
    );
    assert_eq!(
        agent_ack(&status_of(&s, "t1")),
        None,
        "no agent to acknowledge"
    );
}

#[test]
fn reconcile_answers_named_tasks_and_every_live_task_without_uuids() {
    let (mut s, _rx) = with_task();
    stage(&mut s, "t2");
    apply(&mut s, "t2", TaskState::TaskFinished, 1);
    let all = s.reconcile(FW, &[], 9.0);
    assert_eq!(all.len(), 1, "only live tasks");
    assert_eq!(all[0].task_id, "t1");
    assert!(all[0].uuid.is_empty());
    assert_eq!(all[0].reason, "REASON_RECONCILIATION");
    let named = s.reconcile(
        FW,
        &[
            pb::ReconcileTask {
                task_id: "t2".into(),
                ..Default::default()
            },
            pb::ReconcileTask {
                task_id: "nope".into(),
                ..Default::default()
            },
        ],
        9.0,
    );
    assert_eq!(named[0].state(), TaskState::TaskFinished);
    assert_eq!(named[1].state(), TaskState::TaskUnknown);
}

#[test]
fn reconciliation_answers_replace_unchanged_tasks_and_unknown_staged_ones_launch_again() {
    let (mut s, _rx) = with_task();
    for t in ["t2", "t3"] {
        s.add_staged(vec![staging_record(FW, AGENT, task_info(t, "cpus:1"), 1.0)]);
        s.launched(&[key(t)]);
    }
    let asked = s.tasks_on(AGENT, |_| true);
    assert_eq!(asked.len(), 3);
    // t3 changed after the question: its answer is ignored.
    apply(&mut s, "t3", TaskState::TaskRunning, 9);
    let answer = ReconcileTasksResponse {
        tasks: vec![
            ReconciledTask {
                status: Some(update("t1", TaskState::TaskFinished, 1)),
                acknowledged: true,
            },
            ReconciledTask {
                status: Some(update("t3", TaskState::TaskFailed, 2)),
                acknowledged: false,
            },
        ],
        unknown: vec![allot_proto::agent::AgentTask {
            framework_id: FW.into(),
            task_id: "t2".into(),
        }],
    };
    let done = s.apply_reconciliation(&asked, answer, false);
    assert_eq!(done.relaunch, [key("t2")]);
    assert!(done.lost.is_empty());
    assert_eq!(done.ended.len(), 1);
    assert_eq!(status_of(&s, "t1").state(), TaskState::TaskFinished);
    assert!(s.tasks[&key("t1")].acknowledged);
    assert!(
        s.dirty.contains_key(&key("t1")),
        "a terminal answer is written"
    );
    assert_eq!(status_of(&s, "t3").state(), TaskState::TaskRunning);
}

#[test]
fn an_agent_back_from_unreachable_revives_what_it_still_runs() {
    let (mut s, _rx) = with_task();
    make_unreachable(&mut s, "t1");
    assert!(
        s.reachable_tasks_on(AGENT).is_empty(),
        "already unreachable"
    );
    let asked = s.tasks_on(AGENT, |st| st.state() == TaskState::TaskUnreachable);
    let answer = ReconcileTasksResponse {
        tasks: vec![ReconciledTask {
            status: Some(update("t1", TaskState::TaskRunning, 1)),
            acknowledged: true,
        }],
        unknown: vec![],
    };
    let done = s.apply_reconciliation(&asked, answer, true);
    assert_eq!(done.revived[&TaskState::TaskRunning], [key("t1")]);
    assert_eq!(
        status_of(&s, "t1").state(),
        TaskState::TaskUnreachable,
        "the revival is recorded as an update of its own"
    );
}

#[test]
fn after_a_start_tasks_in_intermediate_states_are_reconciled() {
    let (mut s, _rx) = with_task();
    stage(&mut s, "t2");
    apply(&mut s, "t2", TaskState::TaskFinished, 1);
    let due = s.to_reconcile_after_start();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].0, AGENT);
    assert_eq!(due[0].1.0, key("t1"));
}

#[test]
fn a_new_registration_of_an_agent_is_told_apart_from_an_update() {
    let (mut s, _rx) = subscribed();
    let mut rec = s.agents[AGENT].clone();
    assert!(
        !s.set_agent(AGENT, Some(rec.clone())),
        "the same registration"
    );
    rec.registered_at_ms += 1;
    assert!(s.set_agent(AGENT, Some(rec)), "registered again");
    assert!(!s.set_agent(AGENT, None));
    assert!(!s.agents.contains_key(AGENT));
}

#[test]
fn heartbeats_resend_unacknowledged_updates_on_the_current_stream() {
    let (mut s, mut rx) = with_task();
    apply(&mut s, "t1", TaskState::TaskRunning, 1);
    events(&mut rx);
    s.heartbeat();
    let evs = events(&mut rx);
    assert!(matches!(evs[0], event::Event::Heartbeat(_)));
    assert!(
        matches!(&evs[1], event::Event::Update(u) if u.status.as_ref().unwrap().task_id == "t1")
    );
    ack(&mut s, "t1", 1);
    s.heartbeat();
    assert_eq!(events(&mut rx).len(), 1, "only the heartbeat");
}

#[test]
fn teardown_takes_the_offers_and_names_the_live_tasks_to_kill() {
    let (mut s, _rx) = with_task();
    offer(&mut s, "o1", FW, "cpus:1");
    let (offers, live) = s.tear_down(FW, record(FW, false));
    assert_eq!(offers, ["o1"]);
    assert_eq!(live, [("t1".to_string(), AGENT.to_string())]);
    assert!(s.frameworks[FW].sender.is_none());
    assert!(
        s.recovered_frameworks(45.0).is_empty(),
        "not active any more"
    );
}

#[test]
fn recovered_frameworks_get_at_least_the_grace_time() {
    let (s, _rx) = subscribed();
    assert_eq!(s.recovered_frameworks(45.0), [(FW.to_string(), 45.0)]);
    assert_eq!(s.recovered_frameworks(1.0), [(FW.to_string(), 7.0)]);
}

#[test]
fn refuse_seconds_must_be_a_finite_number_of_seconds() {
    assert_eq!(refuse_of(None, 5.0).unwrap(), 5.0);
    assert_eq!(refuse_of(Some(0.0), 5.0).unwrap(), 0.0);
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(refuse_of(Some(bad), 5.0), Err(Error::Invalid(_))));
    }
}

#[test]
fn a_refused_accept_answers_each_new_task_but_never_a_live_one() {
    let (mut s, _rx) = with_task();
    let asked = [
        ("t1".to_string(), AGENT.to_string()),
        ("t2".to_string(), String::new()),
        ("t2".to_string(), String::new()),
        (String::new(), String::new()),
    ];
    let answers = s.refusals(
        FW,
        &asked,
        (
            TaskState::TaskDropped,
            "REASON_INVALID_OFFERS",
            "offer gone",
        ),
        4.0,
    );
    assert_eq!(
        answers.len(),
        1,
        "t1 is live, t2 once, no empty ID: {answers:?}"
    );
    assert_eq!(answers[0].task_id, "t2");
    assert_eq!(answers[0].state(), TaskState::TaskDropped);
    assert_eq!(answers[0].source(), StatusSource::SourceMaster);
    assert!(answers[0].uuid.is_empty(), "nothing to acknowledge");
    assert!(!s.tasks.contains_key(&key("t2")), "nothing recorded");
    apply(&mut s, "t1", TaskState::TaskFinished, 1);
    let again = s.refusals(
        FW,
        &asked[..1],
        (TaskState::TaskError, "REASON_TASK_INVALID", "bad"),
        4.0,
    );
    assert_eq!(again.len(), 1, "an ended task's ID may be answered");
}

#[test]
fn a_staged_task_its_agent_never_heard_of_is_launched_again_and_a_started_one_is_lost() {
    let (mut s, _rx) = with_task();
    stage(&mut s, "t2");
    s.launched(&[key("t2")]);
    apply(&mut s, "t2", TaskState::TaskRunning, 1);
    ack(&mut s, "t2", 1);
    let asked = s.tasks_on(AGENT, |_| true);
    let unknown = |task: &str| allot_proto::agent::AgentTask {
        framework_id: FW.into(),
        task_id: task.into(),
    };
    let answer = ReconcileTasksResponse {
        tasks: vec![],
        unknown: vec![unknown("t1"), unknown("t2")],
    };
    let done = s.apply_reconciliation(&asked, answer, false);
    assert_eq!(done.relaunch, [key("t1")], "recorded TASK_STAGING");
    assert_eq!(done.lost, [key("t2")], "the agent forgot a task it ran");
    let launches = s.relaunches(&done.relaunch);
    assert_eq!(launches.len(), 1);
    let (fw, agent, tasks) = &launches[0];
    assert_eq!((fw.as_str(), agent.as_str()), (FW, AGENT));
    assert_eq!(tasks[0].task_id, "t1");
    assert_eq!(s.launching_on(AGENT), [key("t1")], "in flight again");
}

#[test]
fn a_task_unknown_to_an_agent_back_from_unreachable_is_lost_not_launched() {
    let (mut s, _rx) = with_task();
    make_unreachable(&mut s, "t1");
    let asked = s.tasks_on(AGENT, |st| st.state() == TaskState::TaskUnreachable);
    let answer = ReconcileTasksResponse {
        tasks: vec![],
        unknown: vec![allot_proto::agent::AgentTask {
            framework_id: FW.into(),
            task_id: "t1".into(),
        }],
    };
    let done = s.apply_reconciliation(&asked, answer, true);
    assert!(done.relaunch.is_empty());
    assert_eq!(done.lost, [key("t1")]);
}
