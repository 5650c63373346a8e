//! Status updates and the acknowledgement protocol.
//!
//! Updates are at least once and in order per task, end to end. An agent's status update manager checkpoints
//! each update of a task and keeps its oldest unacknowledged one in flight, re-sending it until the
//! framework's acknowledgement comes back through the broker (Mesos' status update manager). The broker's
//! part:
//!
//! 1. **Receive** (`Agent -> StatusUpdates.Stream`, the agent's long-lived stream, or `Update`/`UpdateBatch`
//!    calls while it has none): the update takes effect in memory at once
//!    ([`State::apply_updates`](crate::state::State::apply_updates)) and is forwarded to the framework as an
//!    UPDATE; a terminal one frees the task's resources in the allocator at once (`TasksEnded`). Nothing is
//!    written yet.
//! 2. **Acknowledge** (`Scheduler.Acknowledge`): the framework's acknowledgement also takes effect in memory
//!    at once. An acknowledged intermediate state (TASK_STARTING, TASK_RUNNING) is not written at all: its
//!    acknowledgement goes on to the agent at once (`Broker::pass_acks`: down the agent's stream, or by an
//!    `Agent.AcknowledgeStatusUpdates` call to an agent without one),
//!    which remembers it, tells a restarted broker (`Agent.ReconcileTasks`), and sends the task's next update.
//!    Waiting for the flush here cost every task up to two flush intervals between TASK_STARTING and its end
//!    (issue 24).
//! 3. **Flush**, every [`FLUSH_INTERVAL`]: each task whose terminal update is acknowledged is written, state
//!    and acknowledgement in one record, and only then is the acknowledgement passed on to the agent, which
//!    may then forget the task. The framework saw the terminal update when it arrived, and the allocator freed
//!    the task's resources then: this wait delays no task. An update still
//!    unacknowledged after [`UNACKNOWLEDGED_WRITE_DELAY`] is written as it is (so that etcd, and an allocator
//!    restarted from it, catch up with a framework that stopped acknowledging).
//!
//! So a task costs etcd two writes (TASK_STAGING at the ACCEPT, its acknowledged end), and a broker that dies
//! loses nothing that etcd or an agent does not still hold: every acknowledged update is in etcd or on its
//! agent. Unacknowledged updates go to their framework again on every heartbeat and on re-subscription.
//!
//! Updates the broker makes itself (TASK_LOST, TASK_UNREACHABLE, reconciliation) have no agent to keep them:
//! they are written before they are forwarded (`Broker::master_updates`), retried until etcd takes them.
//! Task records are written from memory by one writer at a time (`task_writes`), so an older snapshot of a
//! task never overwrites a newer one.

use crate::broker::Broker;
use crate::error::Error;
use crate::metrics::M;
use crate::state::{TaskKey, agent_ack};
use allot_proto::agent::StatusUpdateAcknowledgement;
use allot_proto::common::{TaskState, TaskStatus};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// W3C trace contexts of updates, by task ID and uuid.
type TraceContexts = HashMap<(String, Vec<u8>), HashMap<String, String>>;

/// How often acknowledged updates reach etcd and agents (see the module documentation).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// How long an update may wait for its framework's acknowledgement before it is written to etcd anyway. An
/// acknowledgement within this time costs no second write.
pub const UNACKNOWLEDGED_WRITE_DELAY: Duration = Duration::from_secs(5);

impl Broker {
    /// A status update from an agent: forwarded to its framework at once and written to etcd lazily (see the
    /// module documentation). A repeat of an update already recorded as acknowledged is acknowledged to the
    /// agent again; a repeat of an unacknowledged one is dropped (the broker's heartbeats re-send
    /// unacknowledged updates to the framework); an update for an unknown task or after a terminal state is
    /// acknowledged to the agent and dropped (with a warning for unknown tasks).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an update without IDs.
    pub fn status_update(
        self: &Arc<Self>,
        status: TaskStatus,
        sandbox: Option<String>,
    ) -> Result<(), Error> {
        if status.task_id.is_empty() || status.framework_id.is_empty() {
            return Err(Error::Invalid(
                "a status update needs task_id and framework_id".into(),
            ));
        }
        let span = allot_common::status_update_span(&status, "internal");
        let _entered = span.enter();
        self.receive_updates(vec![(status, sandbox)], HashMap::new());
        Ok(())
    }

    /// A batch of status updates from one agent (an `UpdateBatch` call or a message of its stream), in order,
    /// each with its sandbox and the W3C trace context of the agent's span for it (empty: none), each handled
    /// as by [`Broker::status_update`]; each update with a context is recorded as a `status update` span in its
    /// own task's trace, and the framework's UPDATE continues that span. Updates without IDs are dropped with a
    /// warning.
    pub fn status_updates(
        self: &Arc<Self>,
        updates: Vec<(
            TaskStatus,
            String,
            std::collections::HashMap<String, String>,
        )>,
    ) {
        let span = tracing::info_span!("status updates", allot.updates = updates.len());
        let _entered = span.enter();
        let mut contexts = HashMap::new();
        let updates: Vec<(TaskStatus, Option<String>)> = updates
            .into_iter()
            .filter(|(s, _, _)| {
                let ok = !s.task_id.is_empty() && !s.framework_id.is_empty();
                if !ok {
                    tracing::warn!(task = %s.task_id, framework = %s.framework_id, "status update without task_id or framework_id dropped");
                }
                ok
            })
            .map(|(s, sandbox, context)| {
                if !context.is_empty() {
                    let one = allot_common::status_update_span(&s, "internal");
                    allot_telemetry::propagation::set_parent_from_map(&one, &context);
                    let mine = allot_telemetry::propagation::to_map(&one);
                    if !mine.is_empty() {
                        contexts.insert((s.task_id.clone(), s.uuid.clone()), mine);
                    }
                }
                (s, Some(sandbox))
            })
            .collect();
        self.receive_updates(updates, contexts);
    }

    /// Applies agents' `updates` in memory, marks their tasks for the next flush and forwards them, each with
    /// its trace context in `contexts` (by task ID and uuid; else the current span's); tells agents to kill the
    /// tasks they report live that the broker holds ended.
    fn receive_updates(
        self: &Arc<Self>,
        updates: Vec<(TaskStatus, Option<String>)>,
        mut contexts: TraceContexts,
    ) {
        let (applied, acks_ready) = {
            let mut state = self.lock();
            let applied = state.apply_updates(updates, allot_common::new_status_uuid);
            (applied, !state.agent_acks.is_empty())
        };
        // Repeats and dropped updates are acknowledged to their agents the same way as the framework's
        // acknowledgements of intermediate states: by the one sender of `agent_acks`.
        if acks_ready {
            self.acks_ready.notify_one();
        }
        for status in &applied.forward {
            M.updates
                .with_label_values(&[status.state().as_str_name()])
                .inc();
            tracing::debug!(framework = %status.framework_id, task = %status.task_id,
                state = status.state().as_str_name(), "status update");
        }
        tracing::debug!(updates = applied.forward.len(), "status updates received");
        if contexts.is_empty() {
            self.send_updates(applied.forward);
        } else {
            let current = allot_telemetry::propagation::current_map();
            let traced = applied.forward.into_iter().map(|s| {
                let c = contexts
                    .remove(&(s.task_id.clone(), s.uuid.clone()))
                    .unwrap_or_else(|| current.clone());
                (s, c)
            });
            self.lock().send_traced_updates(traced);
        }
        self.allocator.tell_ended(applied.ended);
        for (fw, task, agent) in applied.kill {
            tracing::warn!(framework = %fw, %task, %agent,
                "an agent reports live a task that has ended or is unknown; killing it");
            M.stale_killed.inc();
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.kill_on_agent(&agent, (&fw, &task), ("", "")).await {
                    tracing::warn!(framework = %fw, %task, %agent, error = %e, "cannot kill it");
                }
            });
        }
    }

    /// ACKNOWLEDGE: the framework has seen the updates `(task_id, uuid)` of `acks`. Takes effect in memory at
    /// once. The acknowledgement of an intermediate state (TASK_STARTING, TASK_RUNNING) goes on to the agent at
    /// once, so that it sends the task's next update without waiting; that of a terminal state reaches etcd,
    /// then the agent, with the next flush. An acknowledgement of an update that is not the task's latest is
    /// ignored.
    ///
    /// # Errors
    /// [`Error::NotSubscribed`] or [`Error::TornDown`]; [`Error::UnknownTask`] if any task is unknown
    /// (nothing is acknowledged then).
    pub fn acknowledge(&self, fw: &str, acks: Vec<(String, Vec<u8>)>) -> Result<(), Error> {
        let ready = {
            let mut state = self.lock();
            state.check_subscribed(fw)?;
            state.acknowledge(fw, acks)?
        };
        if ready {
            self.acks_ready.notify_one();
        }
        Ok(())
    }

    /// Passes acknowledgements that need no write on to agents as they become ready, until aborted. While
    /// one round is being sent, those that arrive meanwhile gather for the next, so a busy broker sends them
    /// in batches and an idle one at once.
    pub(crate) async fn pass_acks(self: Arc<Self>) {
        loop {
            self.acks_ready.notified().await;
            let acks = self.lock().take_agent_acks();
            self.send_agent_acks(acks).await;
        }
    }

    /// Flushes every [`FLUSH_INTERVAL`] until aborted.
    pub(crate) async fn flush(self: Arc<Self>) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_once().await;
        }
    }

    /// Writes the tasks that are due (see [`State::take_due`](crate::state::State::take_due)) in as few
    /// transactions as fit, then passes the acknowledgements now recorded in etcd on to their agents. On an
    /// etcd error the tasks stay due for the next flush and their agents hear nothing (they re-send).
    pub async fn flush_once(&self) {
        let writes = self.task_writes.lock().await;
        // Each record due is encoded where it lies (no clone of the record), with the task's key and, when the
        // framework has acknowledged it, the acknowledgement to pass on once it is written.
        let mut encoded: allot_server::store::Encoded = Vec::new();
        let mut written: Vec<(TaskKey, Option<StatusUpdateAcknowledgement>)> = Vec::new();
        let wait = (UNACKNOWLEDGED_WRITE_DELAY.as_millis() / FLUSH_INTERVAL.as_millis()) as u64;
        let mut acks = self.lock().take_due(wait, |k, rec| {
            encoded.push((
                self.store.task_key(&k.0, &k.1),
                prost::Message::encode_to_vec(rec),
            ));
            let ack = rec
                .acknowledged
                .then(|| rec.status.as_ref().and_then(agent_ack))
                .flatten();
            written.push((k.clone(), ack));
        });
        let mut written = written.into_iter();
        for (n, result) in self.store.put_chunks(encoded).await {
            let tasks = written.by_ref().take(n);
            match result {
                Ok(_) => acks.extend(tasks.filter_map(|(_, ack)| ack)),
                Err(e) => {
                    tracing::warn!(tasks = n, error = %e, "cannot persist task status; retrying");
                    self.lock().write_failed(tasks.map(|(key, _)| key));
                }
            }
        }
        // The records are written: passing the acknowledgements on need not hold up other writers.
        drop(writes);
        self.send_agent_acks(acks).await;
    }

    /// Passes acknowledgements on to agents: down each agent's status update stream if it has one open, else
    /// one call per agent address (a simulator holds many agents).
    async fn send_agent_acks(&self, acks: Vec<StatusUpdateAcknowledgement>) {
        if acks.is_empty() {
            return;
        }
        let acks = self.agents.streams.send(acks);
        if acks.is_empty() {
            return;
        }
        let (by_address, unknown) = self
            .by_address(acks.into_iter().map(|a| (a.agent_id.clone(), a)).collect())
            .await;
        for agent in unknown.keys() {
            tracing::debug!(%agent, "acknowledgements for an unknown agent dropped");
        }
        for (addr, acknowledgements) in by_address {
            self.agents.acknowledge(&addr, acknowledgements);
        }
    }

    /// Status updates that the broker itself makes (source MASTER): `state` for every `(framework, task)` of
    /// `tasks`, with `reason` and `message`, recorded in one etcd transaction, retried until etcd takes it: a
    /// decision that cannot be recorded is not made yet (meanwhile etcd keeps the tasks' earlier states, which
    /// a restarted broker reconciles with their agents).
    pub(crate) async fn master_updates(
        &self,
        tasks: &[TaskKey],
        state: TaskState,
        reason: &str,
        message: &str,
    ) {
        if tasks.is_empty() {
            return;
        }
        let updates = self.master_statuses(tasks, state, reason, message);
        let mut delays = allot_common::retry_delays(Duration::from_millis(200));
        while let Err(e) = self.record_updates(updates.clone()).await {
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tracing::warn!(tasks = tasks.len(), error = %e, ?delay, "cannot record status updates; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The updates [`Broker::master_updates`] records.
    pub(crate) fn master_statuses(
        &self,
        tasks: &[TaskKey],
        state: TaskState,
        reason: &str,
        message: &str,
    ) -> Vec<TaskStatus> {
        self.lock().master_statuses(
            tasks,
            (state, reason, message),
            allot_common::now_secs(),
            allot_common::new_status_uuid,
        )
    }

    /// Records `updates` that the broker makes itself in etcd, then forwards each to its framework. Updates
    /// for unknown tasks and after a terminal state are dropped.
    ///
    /// # Errors
    /// [`Error::Store`] if etcd cannot persist them; nothing is recorded or forwarded then.
    pub(crate) async fn record_updates(&self, updates: Vec<TaskStatus>) -> Result<(), Error> {
        let _writes = self.task_writes.lock().await;
        let records = self.lock().own_update_records(updates);
        let keyed: Vec<(String, _)> = records
            .into_iter()
            .map(|rec| {
                let task = rec.task.as_ref().map_or("", |t| t.task_id.as_str());
                (self.store.task_key(&rec.framework_id, task), rec)
            })
            .collect();
        self.store.put_chunked(&keyed).await?;
        let statuses: Vec<TaskStatus> = keyed
            .iter()
            .filter_map(|(_, rec)| rec.status.clone())
            .collect();
        self.lock()
            .put_records(keyed.into_iter().map(|(_, rec)| rec));
        for status in &statuses {
            M.updates
                .with_label_values(&[status.state().as_str_name()])
                .inc();
        }
        self.send_updates(statuses);
        Ok(())
    }
}
