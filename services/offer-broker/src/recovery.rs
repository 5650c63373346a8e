//! Recovery: the leader's start, and tasks whose agent went away, came back or restarted.
//!
//! - **Start** ([`Broker::start`]): a new leader loads frameworks, tasks and agents from etcd. Every framework
//!   etcd records as active is disconnected until it re-subscribes; its failover timeout runs from now, but no
//!   shorter than three heartbeat intervals. Then it asks every agent what it knows of the tasks etcd records
//!   as not yet terminal (`Agent.ReconcileTasks`; intermediate states are not written): the agent's latest
//!   state replaces the recorded one; a task recorded TASK_STAGING that the agent has never heard of (the
//!   ACCEPT was recorded, the launch never reached the agent: the broker died, or its call failed) is
//!   launched again, so that a recorded launch is carried out; a task past TASK_STAGING that the agent has no
//!   record of becomes TASK_LOST.
//! - **Agent lost** (its `alive` key deleted by the registry): its live tasks become TASK_UNREACHABLE.
//! - **Agent returned** (its `alive` key back): its TASK_UNREACHABLE tasks are reconciled; those it still runs
//!   are reported, and written, live again.
//! - **Agent registered again** (a new agent process): all its tasks are reconciled, once the launches in
//!   flight to it have been answered, so that a launch that died with the earlier process is sent again.
//!
//! The broker never asks an agent about a task whose launch it has not heard the agent answer: until then the
//! agent may not know the task, and reconciliation would call a launch in flight TASK_LOST.

use crate::broker::Broker;
use crate::link::agents::LAUNCH_TIMEOUT;
use crate::state::{Framework, Liveness, Recorded, task_key};
use allot_proto::agent::{AgentTask, ReconcileTasksRequest};
use allot_proto::common::{AgentRecord, FrameworkRecord, TaskRecord, TaskState, TaskStatus};
use allot_server::store::{Kind, decode};
use std::sync::Arc;
use std::time::Duration;

/// Tasks per `Agent.ReconcileTasks` call.
const RECONCILE_CHUNK: usize = 4096;

impl Broker {
    /// Loads frameworks, tasks and agents from etcd and starts the background work: reconciliation with the
    /// agents, following agents and their liveness, the allocator's decision stream, heartbeats and the
    /// flush. Returns the background tasks.
    ///
    /// # Errors
    /// A store error if etcd cannot be read.
    pub async fn start(
        self: Arc<Self>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, allot_server::StoreError> {
        let (frameworks, _) = self
            .store
            .list::<FrameworkRecord>(&self.store.prefix(Kind::Frameworks))
            .await?;
        let (tasks, _) = self
            .store
            .list::<TaskRecord>(&self.store.prefix(Kind::Tasks))
            .await?;
        // The agents too, so that reconciliation finds their addresses without one etcd read per agent.
        let (agents, _) = self
            .store
            .list::<AgentRecord>(&self.store.prefix(Kind::Agents))
            .await?;
        let grace = 3.0 * self.heartbeat_interval.as_secs_f64();
        let recovered = {
            let mut state = self.lock();
            for (_, a) in agents {
                state.agents.insert(a.agent_id.clone(), a);
            }
            for (_, record) in frameworks {
                state.frameworks.insert(
                    record.framework_id.clone(),
                    Framework {
                        record,
                        sender: None,
                        epoch: 0,
                        suppressed: false,
                    },
                );
            }
            for (_, t) in tasks {
                state.tasks.insert(task_key(&t), t);
            }
            state.recovered_frameworks(grace)
        };
        for (fw, timeout) in recovered {
            self.tear_down_after(fw, 0, timeout);
        }
        let mut handles = vec![tokio::spawn(self.clone().reconcile_agents())];
        let me = self.clone();
        handles.push(tokio::spawn(allot_server::store::follow_prefix(
            self.store.clone(),
            self.store.prefix(Kind::Agents),
            Duration::from_secs(1),
            move |id, value| {
                let record = value.and_then(|v| decode::<AgentRecord>(id.as_bytes(), v).ok());
                if me.lock().set_agent(id, record) {
                    let me = me.clone();
                    let id = id.to_string();
                    tokio::spawn(async move { me.agent_reregistered(&id).await });
                }
            },
        )));
        let me = self.clone();
        handles.push(tokio::spawn(allot_server::store::follow_prefix(
            self.store.clone(),
            self.store.prefix(Kind::Alive),
            Duration::from_secs(1),
            move |id, value| {
                let registration = value.map(allot_server::store::alive_registration);
                let change = me.lock().set_alive(id, registration);
                let (me, id) = (me.clone(), id.to_string());
                match change {
                    Liveness::Lost => {
                        tokio::spawn(async move { me.agent_lost(&id).await });
                    }
                    Liveness::Returned => {
                        tokio::spawn(async move { me.agent_returned(&id).await });
                    }
                    Liveness::Same => {}
                }
            },
        )));
        handles.push(tokio::spawn(self.clone().follow_allocator()));
        handles.push(tokio::spawn(self.clone().heartbeats()));
        handles.push(tokio::spawn(self.clone().flush()));
        handles.push(tokio::spawn(self.clone().pass_acks()));
        Ok(handles)
    }

    /// After a start: reconciles every task etcd records in a state its agent may have moved on from (see the
    /// module documentation). An agent that does not answer keeps its tasks' recorded states (if it is gone,
    /// the registry's timeout makes them TASK_UNREACHABLE).
    async fn reconcile_agents(self: Arc<Self>) {
        let recorded = self.lock().to_reconcile_after_start();
        if recorded.is_empty() {
            return;
        }
        let tasks = recorded.len();
        let (by_address, unknown) = self.by_address(recorded).await;
        for (agent, tasks) in unknown {
            tracing::warn!(%agent, tasks = tasks.len(), "tasks on an unknown agent keep their recorded state");
        }
        let agents = by_address.len();
        let calls = by_address
            .into_iter()
            .map(|(addr, tasks)| self.reconcile_at(addr, tasks, false));
        let lost: usize = futures::future::join_all(calls).await.into_iter().sum();
        tracing::info!(
            agent_addresses = agents,
            tasks,
            lost,
            "reconciled the recorded tasks with their agents"
        );
    }

    /// Reconciles `tasks` (each with the uuid of its recorded status) with the agent (or simulator) at `addr`;
    /// returns how many were reported TASK_LOST. A task recorded TASK_STAGING that the agent never heard of
    /// is launched again. With `returned` (the agent came back after it was
    /// unreachable), a task the agent still has is reported again, as a new update written to etcd (reason
    /// REASON_RECONCILIATION), so that the framework and the allocator see the task live again (see
    /// [`State::apply_reconciliation`](crate::state::State::apply_reconciliation)).
    async fn reconcile_at(
        self: &Arc<Self>,
        addr: String,
        tasks: Vec<Recorded>,
        returned: bool,
    ) -> usize {
        let mut lost_total = 0;
        for chunk in tasks.chunks(RECONCILE_CHUNK) {
            let req = ReconcileTasksRequest {
                tasks: chunk
                    .iter()
                    .map(|((fw, task), _)| AgentTask {
                        framework_id: fw.clone(),
                        task_id: task.clone(),
                    })
                    .collect(),
            };
            let Some(answer) = self.agents.reconcile(&addr, req).await else {
                tracing::warn!(agent = %addr, tasks = chunk.len(), "agent did not answer reconciliation; its tasks keep their recorded state");
                continue;
            };
            let (done, relaunches) = {
                let mut state = self.lock();
                let done = state.apply_reconciliation(chunk, answer, returned);
                let relaunches = state.relaunches(&done.relaunch);
                (done, relaunches)
            };
            self.allocator.tell_ended(done.ended);
            for (fw, agent, tasks) in relaunches {
                tracing::info!(framework = %fw, agent = %agent, tasks = tasks.len(),
                    "launch did not reach the agent; sending it again");
                self.spawn_launch(&fw, &agent, tasks);
            }
            for (state, tasks) in done.revived {
                self.master_updates(
                    &tasks,
                    state,
                    "REASON_RECONCILIATION",
                    &format!("agent at {addr} is reachable again and still runs the task"),
                )
                .await;
            }
            lost_total += done.lost.len();
            self.master_updates(
                &done.lost,
                TaskState::TaskLost,
                "REASON_TASK_UNKNOWN",
                "the agent has no record of the task: its launch did not reach it",
            )
            .await;
        }
        lost_total
    }

    /// An agent is reachable (again): its tasks that were made TASK_UNREACHABLE are reconciled with it; those
    /// it still runs are reported in their state again, those it never heard of TASK_LOST. Updates it could not
    /// deliver meanwhile arrive from its status update manager on their own.
    async fn agent_returned(self: &Arc<Self>, agent_id: &str) {
        let unreachable = |s: &TaskStatus| s.state() == TaskState::TaskUnreachable;
        self.reconcile_agent(
            agent_id,
            unreachable,
            true,
            "agent reachable again; reconciling its unreachable tasks",
        )
        .await;
    }

    /// An agent registered again (a new agent process, or one back from a partition): its tasks are reconciled
    /// with it, as a Mesos master reconciles the tasks an agent reports when it re-registers. A task launched
    /// before the registration that the agent has never heard of (the launch died with the earlier agent
    /// process, before it wrote the task down) is launched again; tasks it knows report their latest state.
    /// Launches still on their way to the agent are waited for first (at most [`LAUNCH_TIMEOUT`]), for the new
    /// process may be the one they reach; a launch made later is not reconciled here. TASK_UNREACHABLE tasks
    /// are [`Broker::agent_returned`]'s.
    async fn agent_reregistered(self: &Arc<Self>, agent_id: &str) {
        let in_flight = self.lock().launching_on(agent_id);
        let deadline = tokio::time::Instant::now() + LAUNCH_TIMEOUT + Duration::from_secs(1);
        while tokio::time::Instant::now() < deadline
            && in_flight.iter().any(|k| self.lock().launching.contains(k))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let settled = |s: &TaskStatus| {
            let state = s.state();
            !state.is_terminal() && state != TaskState::TaskUnreachable
        };
        self.reconcile_agent(
            agent_id,
            settled,
            false,
            "agent registered again; reconciling its tasks",
        )
        .await;
    }

    /// Reconciles the tasks on `agent_id` whose latest status `pick` selects (see [`Broker::reconcile_at`]),
    /// but those whose launch is on its way to the agent.
    async fn reconcile_agent(
        self: &Arc<Self>,
        agent_id: &str,
        pick: impl Fn(&TaskStatus) -> bool,
        returned: bool,
        what: &'static str,
    ) {
        let tasks = self.lock().tasks_on(agent_id, pick);
        if tasks.is_empty() {
            return;
        }
        let Some(addr) = self.agent_address(agent_id).await else {
            return;
        };
        tracing::info!(agent = %agent_id, tasks = tasks.len(), "{what}");
        self.reconcile_at(addr, tasks, returned).await;
    }

    /// An agent's lease lapsed: its live tasks become TASK_UNREACHABLE.
    async fn agent_lost(&self, agent_id: &str) {
        let live = self.lock().reachable_tasks_on(agent_id);
        tracing::warn!(agent = %agent_id, tasks = live.len(), "agent unreachable");
        self.master_updates(
            &live,
            TaskState::TaskUnreachable,
            "REASON_AGENT_UNREACHABLE",
            &format!("agent {agent_id} stopped heartbeating"),
        )
        .await;
    }
}
