//! Agents and recovery: agent records and liveness, and what to reconcile with agents after a start, a
//! loss, a return or a new registration.

use super::*;

impl State {
    /// Records agent `id`'s record (`None`: deleted). Returns whether it registered again (a new agent
    /// process: its registration time changed), which makes its tasks due for reconciliation.
    pub fn set_agent(&mut self, id: &str, record: Option<AgentRecord>) -> bool {
        match record {
            Some(rec) => {
                let since = rec.registered_at_ms;
                let before = self.agents.insert(id.to_string(), rec);
                before.is_some_and(|b| b.registered_at_ms != since)
            }
            None => {
                self.agents.remove(id);
                false
            }
        }
    }

    /// Records whether agent `id`'s liveness key is present, with the registration it names; returns the
    /// change (a new registration of an agent that stayed alive, e.g. a restart within its timeout, is
    /// [`Liveness::Same`]: its tasks are reconciled when its record is written again).
    pub fn set_alive(&mut self, id: &str, registration: Option<u64>) -> Liveness {
        let present = registration.is_some();
        let was = match registration {
            Some(r) => self.alive.insert(id.to_string(), r).is_some(),
            None => self.alive.remove(id).is_some(),
        };
        match (present, was) {
            (false, true) => Liveness::Lost,
            (true, false) => Liveness::Returned,
            _ => Liveness::Same,
        }
    }

    /// After a start: every task etcd records in a state an agent may have moved on from (TASK_STAGING,
    /// TASK_STARTING, TASK_RUNNING, TASK_KILLING; intermediate states are not written), with its agent.
    pub fn to_reconcile_after_start(&self) -> Vec<(String, Recorded)> {
        self.tasks
            .iter()
            .filter_map(|(key, rec)| {
                let (status, task) = (rec.status.as_ref()?, rec.task.as_ref()?);
                matches!(
                    status.state(),
                    TaskState::TaskStaging
                        | TaskState::TaskStarting
                        | TaskState::TaskRunning
                        | TaskState::TaskKilling
                )
                .then(|| (task.agent_id.clone(), (key.clone(), status.uuid.clone())))
            })
            .collect()
    }

    /// The tasks on `agent_id` whose latest status `pick` selects, but those whose launch is on its way to
    /// the agent (it may not know them yet).
    pub fn tasks_on(&self, agent_id: &str, pick: impl Fn(&TaskStatus) -> bool) -> Vec<Recorded> {
        self.tasks
            .iter()
            .filter(|(k, t)| {
                t.task.as_ref().is_some_and(|i| i.agent_id == agent_id)
                    && !self.launching.contains(*k)
            })
            .filter_map(|(k, t)| {
                let s = t.status.as_ref()?;
                pick(s).then(|| (k.clone(), s.uuid.clone()))
            })
            .collect()
    }

    /// The tasks whose launch to `agent_id` is in flight.
    pub fn launching_on(&self, agent_id: &str) -> Vec<TaskKey> {
        self.launching
            .iter()
            .filter(|k| {
                self.tasks
                    .get(*k)
                    .and_then(|t| t.task.as_ref())
                    .is_some_and(|t| t.agent_id == agent_id)
            })
            .cloned()
            .collect()
    }

    /// The live tasks on `agent_id` that are not already TASK_UNREACHABLE (they become so when it is lost).
    pub fn reachable_tasks_on(&self, agent_id: &str) -> Vec<TaskKey> {
        self.tasks
            .values()
            .filter(|t| t.task.as_ref().is_some_and(|i| i.agent_id == agent_id))
            .filter(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| is_live(s) && s.state() != TaskState::TaskUnreachable)
            })
            .filter_map(|t| Some((t.framework_id.clone(), t.task.as_ref()?.task_id.clone())))
            .collect()
    }

    /// Applies an agent's `answer` to reconciliation of the tasks `asked` (each with the uuid of the status
    /// recorded when it was asked). A task whose status changed meanwhile is left alone. Otherwise:
    /// - with `returned` (the agent is back from unreachable), a task it still runs is to be reported again
    ///   (`revived`, by state) and nothing else changes;
    /// - without, the agent's latest state replaces the recorded one with its acknowledgement; a terminal one
    ///   is due for writing and ends the task for the allocator;
    /// - a task the agent has never heard of is `relaunch`ed if it is recorded TASK_STAGING (its launch did not
    ///   reach the agent; the agent answers a launch of a task it knows with its state, so none starts twice),
    ///   and `lost` otherwise, or when the agent is back from unreachable.
    pub fn apply_reconciliation(
        &mut self,
        asked: &[Recorded],
        answer: ReconcileTasksResponse,
        returned: bool,
    ) -> Reconciled {
        let asked: HashMap<&TaskKey, &Vec<u8>> = asked.iter().map(|(k, u)| (k, u)).collect();
        let unchanged = |tasks: &FastMap<TaskKey, TaskRecord>, key: &TaskKey| {
            let now = tasks
                .get(key)
                .and_then(|r| r.status.as_ref())
                .map(|s| &s.uuid);
            now.is_some() && asked.get(key).copied() == now
        };
        let mut out = Reconciled::default();
        for t in answer.tasks {
            let Some(status) = t.status else { continue };
            let key = (status.framework_id.clone(), status.task_id.clone());
            if !unchanged(&self.tasks, &key) {
                continue;
            }
            if returned {
                if is_live(&status) {
                    out.revived.entry(status.state()).or_default().push(key);
                }
                continue;
            }
            // An unacknowledged one goes to the framework on the next heartbeat (and comes from the agent
            // again); a terminal one is written once acknowledged.
            let terminal = status.state().is_terminal();
            if let Some(rec) = self.tasks.get_mut(&key) {
                rec.status = Some(status);
                rec.acknowledged = t.acknowledged;
            }
            if terminal {
                out.ended.push(EndedTask {
                    framework_id: key.0.clone(),
                    task_id: key.1.clone(),
                });
                self.dirty.insert(key, self.flushes);
            }
        }
        for t in answer.unknown {
            let key = (t.framework_id, t.task_id);
            if !unchanged(&self.tasks, &key) {
                continue;
            }
            let staging = self
                .tasks
                .get(&key)
                .and_then(|r| r.status.as_ref())
                .is_some_and(|s| s.state() == TaskState::TaskStaging);
            if staging && !returned {
                out.relaunch.push(key);
            } else {
                out.lost.push(key);
            }
        }
        out
    }

    /// The launches to send again for `keys` (tasks recorded TASK_STAGING whose launch did not reach their
    /// agent), grouped by framework and agent; each is marked in flight.
    pub fn relaunches(&mut self, keys: &[TaskKey]) -> Vec<(String, String, Vec<TaskInfo>)> {
        let mut groups: BTreeMap<(String, String), Vec<TaskInfo>> = BTreeMap::new();
        for key in keys {
            let Some(info) = self.tasks.get(key).and_then(|r| r.task.clone()) else {
                continue;
            };
            self.launching.insert(key.clone());
            groups
                .entry((key.0.clone(), info.agent_id.clone()))
                .or_default()
                .push(info);
        }
        groups
            .into_iter()
            .map(|((fw, agent), tasks)| (fw, agent, tasks))
            .collect()
    }
}
