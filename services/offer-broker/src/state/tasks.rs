//! Task decisions: launches, agents' status updates, acknowledgements, what each flush writes, the broker's
//! own updates, and RECONCILE.

use super::*;

impl State {
    /// The updates that answer the tasks `(task_id, agent_id)` of `fw`'s ACCEPT that was refused before
    /// anything was recorded: `state` (TASK_ERROR for an invalid launch, TASK_DROPPED otherwise, as Mesos 1.x)
    /// with `reason` and `message`, at `now`, with no uuid (there is no record to acknowledge). A task whose ID
    /// is taken by a live task of `fw`, or empty, gets none: its update would name another task.
    pub fn refusals(
        &self,
        fw: &str,
        tasks: &[(String, String)],
        (state, reason, message): (TaskState, &str, &str),
        now: f64,
    ) -> Vec<TaskStatus> {
        let mut seen = HashSet::new();
        tasks
            .iter()
            .filter(|(task, _)| !task.is_empty() && !self.is_live_task(fw, task))
            .filter(|(task, _)| seen.insert(task.as_str()))
            .map(|(task, agent)| TaskStatus {
                task_id: task.clone(),
                state: state as i32,
                message: message.to_string(),
                source: StatusSource::SourceMaster as i32,
                reason: reason.to_string(),
                agent_id: agent.clone(),
                framework_id: fw.to_string(),
                timestamp: now,
                uuid: Vec::new(),
                ..Default::default()
            })
            .collect()
    }

    /// Records the TASK_STAGING `records` an ACCEPT persisted; their launch is on its way to the agent.
    pub fn add_staged(&mut self, records: Vec<TaskRecord>) {
        for rec in records {
            let key = task_key(&rec);
            self.launching.insert(key.clone());
            self.tasks.insert(key, rec);
        }
    }

    /// The agent answered the launch of `keys` (or the launch ended otherwise).
    pub fn launched(&mut self, keys: &[TaskKey]) {
        for k in keys {
            self.launching.remove(k);
        }
    }

    /// Applies agents' `updates` (each with its sandbox) in memory, in order, and marks their tasks for the
    /// next flush:
    /// - an update for an unknown task, or after a terminal state, is acknowledged to its agent and dropped;
    ///   if it says the task is live and the broker ended it by its own decision or does not know it, the
    ///   task is killed: the framework was told it ended (TASK_LOST after its agent came back without it,
    ///   say) or it was torn down, and may have launched it again elsewhere
    ///   (a Mesos master likewise kills, on re-registration, tasks an agent runs that it counts as gone);
    /// - a repeat of the task's latest update is dropped; if that update is acknowledged and written already,
    ///   the acknowledgement goes to the agent again;
    /// - a new update replaces the task's status, unacknowledged (a torn-down framework acknowledges nothing:
    ///   the broker acknowledges for it and does not forward), and is forwarded; a terminal (or unreachable)
    ///   one ends the task for the allocator.
    ///
    /// An update without a uuid gets one (nothing can acknowledge it to its sender; it still reaches the
    /// framework once).
    pub fn apply_updates(
        &mut self,
        updates: Vec<(TaskStatus, Option<String>)>,
        new_uuid: impl Fn() -> Vec<u8>,
    ) -> Applied {
        let mut out = Applied {
            forward: Vec::with_capacity(updates.len()),
            ..Applied::default()
        };
        let kill = |status: &TaskStatus, out: &mut Applied| {
            if !status.state().is_terminal() {
                out.kill.push((
                    status.framework_id.clone(),
                    status.task_id.clone(),
                    status.agent_id.clone(),
                ));
            }
        };
        for (mut status, sandbox) in updates {
            if status.uuid.is_empty() {
                status.uuid = new_uuid();
            }
            let key = (status.framework_id.clone(), status.task_id.clone());
            let Some(rec) = self.tasks.get_mut(&key) else {
                tracing::warn!(framework = %key.0, task = %key.1, "status update for an unknown task dropped");
                self.agent_acks.extend(agent_ack(&status));
                kill(&status, &mut out);
                continue;
            };
            if let Some(cur) = &rec.status {
                if cur.uuid == status.uuid {
                    // Unacknowledged, it is re-sent to the framework on heartbeats; acknowledged but not yet
                    // written, the flush acknowledges it to the agent.
                    if rec.acknowledged && !self.dirty.contains_key(&key) {
                        self.agent_acks.extend(agent_ack(&status));
                    }
                    continue;
                }
                if cur.state().is_terminal() {
                    self.agent_acks.extend(agent_ack(&status));
                    // Ended by the broker's own decision (TASK_LOST, TASK_DROPPED, ...), yet live on its agent:
                    // kill it. Ended by its agent's word, a live update is an older one sent again.
                    if cur.source() == StatusSource::SourceMaster {
                        kill(&status, &mut out);
                    }
                    continue;
                }
            }
            let state = status.state();
            if rec.status.as_ref().map(|c| c.state()) == Some(TaskState::TaskUnreachable)
                && !state.is_terminal()
            {
                self.must_write.insert(key.clone());
            }
            if state.is_terminal() || state == TaskState::TaskUnreachable {
                out.ended.push(EndedTask {
                    framework_id: key.0.clone(),
                    task_id: key.1.clone(),
                });
            }
            rec.status = Some(status.clone());
            // A torn-down framework acknowledges nothing any more: the broker acknowledges for it (the agent
            // can then forget the update, as a Mesos agent does when its framework is shut down).
            let torn_down = self
                .frameworks
                .get(&key.0)
                .is_some_and(|f| !f.record.active);
            rec.acknowledged = torn_down;
            if let Some(s) = sandbox.filter(|s| !s.is_empty()) {
                rec.sandbox = s;
            }
            self.dirty.insert(key, self.flushes);
            if !torn_down {
                out.forward.push(status);
            }
        }
        out
    }

    /// ACKNOWLEDGE by `fw` of its updates `(task_id, uuid)`: each task whose latest update has that uuid is
    /// acknowledged; an acknowledgement of an older update is ignored. An acknowledged intermediate state
    /// (TASK_STARTING, TASK_RUNNING) needs no write: its acknowledgement joins [`State::agent_acks`], to go to
    /// the agent at once (the agent keeps it and sends the task's next update), as a flush would have passed
    /// it on; a terminal one, or one that must be written first (back from TASK_UNREACHABLE, a failed write),
    /// is marked for the next flush. Returns whether any acknowledgement is ready for an agent.
    ///
    /// # Errors
    /// [`Error::UnknownTask`] if any task is unknown; nothing is acknowledged then.
    pub fn acknowledge(&mut self, fw: &str, acks: Vec<(String, Vec<u8>)>) -> Result<bool, Error> {
        let acks: Vec<(TaskKey, Vec<u8>)> = acks
            .into_iter()
            .map(|(task, uuid)| ((fw.to_string(), task), uuid))
            .collect();
        if let Some(((_, task), _)) = acks.iter().find(|(key, _)| !self.tasks.contains_key(key)) {
            return Err(Error::UnknownTask(task.clone()));
        }
        let mut ready = false;
        for (key, uuid) in acks {
            if let Some(rec) = self.tasks.get_mut(&key)
                && !rec.acknowledged
                && rec.status.as_ref().map(|s| &s.uuid) == Some(&uuid)
            {
                rec.acknowledged = true;
                let terminal = rec.status.as_ref().is_some_and(|s| s.state().is_terminal());
                if terminal || self.must_write.contains(&key) {
                    self.dirty.entry(key).or_insert(self.flushes);
                } else if let Some(ack) = rec.status.as_ref().and_then(agent_ack) {
                    self.dirty.remove(&key);
                    self.agent_acks.push(ack);
                    ready = true;
                }
            }
        }
        Ok(ready)
    }

    /// The acknowledgements ready to go to agents now (see [`State::acknowledge`]).
    pub fn take_agent_acks(&mut self) -> Vec<StatusUpdateAcknowledgement> {
        std::mem::take(&mut self.agent_acks)
    }

    /// Starts a flush: chooses what it writes (see `updates.rs`). Counts the flush, then for each dirty task:
    /// - one that must be written (back from TASK_UNREACHABLE, or a failed write) is written;
    /// - an acknowledged intermediate state (TASK_STARTING, TASK_RUNNING) is not written: its acknowledgement
    ///   goes straight to the agent, which keeps it and tells a restarted broker;
    /// - an acknowledged terminal state, or a state left unacknowledged for more than `wait` flushes, is
    ///   written;
    /// - anything else stays dirty.
    ///
    /// `write` is called with each task to write (its acknowledgement, if any, goes to the agent once etcd
    /// holds the record). Returns the acknowledgements that can go to agents now.
    pub fn take_due(
        &mut self,
        wait: u64,
        mut write: impl FnMut(&TaskKey, &TaskRecord),
    ) -> Vec<StatusUpdateAcknowledgement> {
        self.flushes += 1;
        let now = self.flushes;
        let tasks = &self.tasks;
        let mut acks = std::mem::take(&mut self.agent_acks);
        let must_write = std::mem::take(&mut self.must_write);
        self.dirty.retain(|k, since| {
            let Some(rec) = tasks.get(k) else {
                return false;
            };
            let terminal = rec.status.as_ref().is_some_and(|s| s.state().is_terminal());
            if must_write.contains(k) {
                write(k, rec);
                return false;
            }
            if rec.acknowledged && !terminal {
                acks.extend(rec.status.as_ref().and_then(agent_ack));
                return false;
            }
            if rec.acknowledged || *since + wait < now {
                write(k, rec);
                return false;
            }
            true
        });
        acks
    }

    /// The write of `keys` failed: they stay due, and their next write may not be skipped.
    pub fn write_failed(&mut self, keys: impl IntoIterator<Item = TaskKey>) {
        for key in keys {
            self.dirty.insert(key.clone(), 0);
            self.must_write.insert(key);
        }
    }

    /// Updates the broker makes itself (source MASTER): `state` for every task of `tasks`, with `reason` and
    /// `message`, at `now` (Unix seconds), each with a new uuid.
    pub fn master_statuses(
        &self,
        tasks: &[TaskKey],
        (state, reason, message): (TaskState, &str, &str),
        now: f64,
        new_uuid: impl Fn() -> Vec<u8>,
    ) -> Vec<TaskStatus> {
        tasks
            .iter()
            .map(|(fw, task)| {
                let agent_id = self
                    .tasks
                    .get(&(fw.clone(), task.clone()))
                    .and_then(|t| t.task.as_ref().map(|t| t.agent_id.clone()))
                    .unwrap_or_default();
                TaskStatus {
                    task_id: task.clone(),
                    state: state as i32,
                    message: message.to_string(),
                    source: StatusSource::SourceMaster as i32,
                    reason: reason.to_string(),
                    agent_id,
                    framework_id: fw.clone(),
                    timestamp: now,
                    uuid: new_uuid(),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// The records of the broker's own `updates`, to write before they take effect: each task's record with
    /// the update, unacknowledged. Updates for unknown tasks, after a terminal state and repeats of a task in
    /// the same batch are left out.
    pub fn own_update_records(&self, updates: Vec<TaskStatus>) -> Vec<TaskRecord> {
        let mut seen: HashSet<TaskKey> = HashSet::new();
        let mut records = Vec::with_capacity(updates.len());
        for status in updates {
            let key = (status.framework_id.clone(), status.task_id.clone());
            let Some(current) = self.tasks.get(&key) else {
                tracing::warn!(framework = %key.0, task = %key.1, "status update for an unknown task dropped");
                continue;
            };
            if current
                .status
                .as_ref()
                .is_some_and(|c| c.state().is_terminal())
                || !seen.insert(key)
            {
                continue;
            }
            let mut rec = current.clone();
            rec.status = Some(status);
            rec.acknowledged = false;
            records.push(rec);
        }
        records
    }

    /// Replaces the records of `records`' tasks (written to etcd already).
    pub fn put_records(&mut self, records: impl IntoIterator<Item = TaskRecord>) {
        for rec in records {
            self.tasks.insert(task_key(&rec), rec);
        }
    }

    /// RECONCILE by `fw`: the latest state of the named tasks (TASK_UNKNOWN for tasks it does not have), or
    /// of every live task when none are named, with no uuid (nothing to acknowledge) and reason
    /// REASON_RECONCILIATION. `now` stamps the TASK_UNKNOWN answers.
    pub fn reconcile(&self, fw: &str, tasks: &[pb::ReconcileTask], now: f64) -> Vec<TaskStatus> {
        let latest = |t: &TaskRecord| {
            let mut s = t.status.clone().unwrap_or_default();
            s.uuid.clear();
            s.reason = "REASON_RECONCILIATION".into();
            s
        };
        if tasks.is_empty() {
            return self
                .tasks
                .values()
                .filter(|t| t.framework_id == fw && t.status.as_ref().is_some_and(is_live))
                .map(latest)
                .collect();
        }
        tasks
            .iter()
            .map(
                |rt| match self.tasks.get(&(fw.to_string(), rt.task_id.clone())) {
                    Some(t) => latest(t),
                    None => TaskStatus {
                        task_id: rt.task_id.clone(),
                        state: TaskState::TaskUnknown as i32,
                        source: StatusSource::SourceMaster as i32,
                        reason: "REASON_RECONCILIATION".into(),
                        agent_id: rt.agent_id.clone(),
                        framework_id: fw.to_string(),
                        timestamp: now,
                        ..Default::default()
                    },
                },
            )
            .collect()
    }
}
