//! Attempts of the tasks of `allot batch` and `allot execute`: which launch (task ID) is which attempt of
//! which job task, and what to do when a launch ends. Pure logic, unit-tested without I/O.
//!
//! A job task that ends through no fault of its own is launched again under a new task ID
//! (`<id>-retry<N>`), up to `max_retries` times:
//! - TASK_LOST, TASK_DROPPED, TASK_GONE, TASK_GONE_BY_OPERATOR and TASK_UNKNOWN (the launch or its agent
//!   went away, or the broker never recorded it);
//! - TASK_FAILED for a reason on the agent's side: REASON_AGENT_RESTARTED (the agent restarted and found no
//!   exit status), REASON_EXECUTOR_TERMINATED (the executor could not start or wait for the command, or the
//!   command's processes vanished), REASON_CONTAINER_LAUNCH_FAILED;
//! - TASK_UNREACHABLE for longer than the unreachable timeout (the agent is partitioned away; if the old
//!   launch comes back, it is killed, as a Mesos partition-aware framework does).
//!
//! A task preempted (TASK_KILLED with REASON_PREEMPTED: the allocator took its resources back for a starved
//! role) is launched again too, without counting against `max_retries`: it did nothing wrong and may be
//! preempted more than once.
//!
//! A task that failed by its own doing (a non-zero exit, a signal, the memory limit) or was refused as
//! invalid (TASK_ERROR) or killed otherwise is not launched again: it would fail the same way.

use allot_sdk::{TaskState, TaskStatus};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Whether a launch that ended in `state` with `reason` ended through no fault of its own (see the module
/// documentation), so that launching the task again may succeed.
pub fn through_no_fault(state: TaskState, reason: &str) -> bool {
    match state {
        TaskState::TaskLost
        | TaskState::TaskDropped
        | TaskState::TaskGone
        | TaskState::TaskGoneByOperator
        | TaskState::TaskUnknown => true,
        TaskState::TaskFailed => matches!(
            reason,
            "REASON_AGENT_RESTARTED"
                | "REASON_EXECUTOR_TERMINATED"
                | "REASON_CONTAINER_LAUNCH_FAILED"
        ),
        _ => false,
    }
}

/// The task ID of attempt `attempt` (1 = the first launch) of job task `job`.
pub fn attempt_id(job: &str, attempt: u32) -> String {
    if attempt <= 1 {
        job.to_string()
    } else {
        format!("{job}-retry{}", attempt - 1)
    }
}

/// The task ID of the launch that [`Attempts::overdue`] gave up, for what it decided (`next`).
pub fn given_up(next: &Next) -> Option<String> {
    match next {
        Next::Retry(job, attempt) => Some(attempt_id(job, attempt - 1)),
        Next::Ended(job, attempt) => Some(attempt_id(job, *attempt)),
        _ => None,
    }
}

/// What to do after an update.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Nothing: the update is not news (an intermediate state, a repeat, an abandoned launch's end).
    Nothing,
    /// The job task ended for good (its latest attempt's update, and the number of attempts).
    Ended(String, u32),
    /// Launch job task `.0` again as attempt `.1` (its task ID from [`attempt_id`]).
    Retry(String, u32),
    /// An abandoned launch is alive again: kill it (task ID, agent ID).
    Kill(String, String),
}

/// A job task's live launch.
#[derive(Debug, Clone)]
struct Live {
    job: String,
    attempt: u32,
    /// Since when (seconds, any clock) its latest update is TASK_UNREACHABLE.
    unreachable_since: Option<f64>,
}

/// The attempts of every job task.
#[derive(Debug)]
pub struct Attempts {
    max_retries: u32,
    unreachable_timeout: f64,
    /// Launch (task ID) -> its job task and attempt, while it may still end.
    live: HashMap<String, Live>,
    /// Job task -> attempts made so far.
    tries: BTreeMap<String, u32>,
    /// Launches given up (retried after TASK_UNREACHABLE): if they show up live, they are killed.
    abandoned: HashSet<String>,
    /// Job task -> launches of it that were preempted (not counted against `max_retries`).
    preempted: BTreeMap<String, u32>,
}

impl Attempts {
    /// No attempts yet; a job task is launched again at most `max_retries` times, and a launch unreachable for
    /// `unreachable_timeout` seconds counts as lost.
    pub fn new(max_retries: u32, unreachable_timeout: f64) -> Attempts {
        Attempts {
            max_retries,
            unreachable_timeout,
            live: HashMap::new(),
            tries: BTreeMap::new(),
            abandoned: HashSet::new(),
            preempted: BTreeMap::new(),
        }
    }

    /// Job task `job` is launched as attempt `attempt` (recorded also when resuming from a journal).
    pub fn launched(&mut self, job: &str, attempt: u32) {
        self.live.insert(
            attempt_id(job, attempt),
            Live {
                job: job.to_string(),
                attempt,
                unreachable_since: None,
            },
        );
        let tries = self.tries.entry(job.to_string()).or_default();
        *tries = (*tries).max(attempt);
    }

    /// Decides what `status` (observed at `now`, in seconds) means for its job task.
    pub fn update(&mut self, status: &TaskStatus, now: f64) -> Next {
        let state = status.state();
        if self.abandoned.contains(&status.task_id) {
            if state.is_terminal() || state == TaskState::TaskUnknown {
                self.abandoned.remove(&status.task_id);
                return Next::Nothing;
            }
            return if state == TaskState::TaskUnreachable {
                Next::Nothing
            } else {
                Next::Kill(status.task_id.clone(), status.agent_id.clone())
            };
        }
        let Some(live) = self.live.get_mut(&status.task_id) else {
            return Next::Nothing;
        };
        if state == TaskState::TaskUnreachable {
            live.unreachable_since.get_or_insert(now);
            return Next::Nothing;
        }
        live.unreachable_since = None;
        // TASK_UNKNOWN (the broker has no record: the launch never took effect) ends the launch as surely as a
        // terminal state, though Mesos does not call it terminal.
        if !state.is_terminal() && state != TaskState::TaskUnknown {
            return Next::Nothing;
        }
        let live = self.live.remove(&status.task_id).expect("live");
        if state == TaskState::TaskKilled && status.reason == "REASON_PREEMPTED" {
            *self.preempted.entry(live.job.clone()).or_default() += 1;
            return Next::Retry(live.job, live.attempt + 1);
        }
        self.after_end(live, through_no_fault(state, &status.reason))
    }

    /// The launches unreachable for longer than the timeout at `now`: each is given up (killed if it comes
    /// back) and its job task launched again, or ended if it has no retries left. Returns what to do for each
    /// ([`given_up`] names the launch).
    pub fn overdue(&mut self, now: f64) -> Vec<Next> {
        let ids: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| {
                l.unreachable_since
                    .is_some_and(|t| now - t >= self.unreachable_timeout)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::new();
        for id in ids {
            let live = self.live.remove(&id).expect("live");
            self.abandoned.insert(id);
            out.push(self.after_end(live, true));
        }
        out
    }

    fn after_end(&mut self, live: Live, retry: bool) -> Next {
        let preempted = self.preempted.get(&live.job).copied().unwrap_or(0);
        if retry && live.attempt - preempted.min(live.attempt) <= self.max_retries {
            Next::Retry(live.job, live.attempt + 1)
        } else {
            Next::Ended(live.job, live.attempt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(task: &str, state: TaskState, reason: &str) -> TaskStatus {
        TaskStatus {
            task_id: task.into(),
            agent_id: "a1".into(),
            state: state as i32,
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_preempted_task_is_launched_again_without_using_a_retry() {
        let mut a = Attempts::new(1, 60.0);
        let preempted = |id: &str| status(id, TaskState::TaskKilled, "REASON_PREEMPTED");
        a.launched("t", 1);
        assert_eq!(a.update(&preempted("t"), 1.0), Next::Retry("t".into(), 2));
        a.launched("t", 2);
        assert_eq!(
            a.update(&preempted("t-retry1"), 2.0),
            Next::Retry("t".into(), 3)
        );
        // Its one retry is still there for a loss.
        a.launched("t", 3);
        let lost = status("t-retry2", TaskState::TaskLost, "");
        assert_eq!(a.update(&lost, 3.0), Next::Retry("t".into(), 4));
        a.launched("t", 4);
        let lost = status("t-retry3", TaskState::TaskLost, "");
        assert_eq!(a.update(&lost, 4.0), Next::Ended("t".into(), 4));
        // A kill for any other reason is not retried.
        a.launched("u", 1);
        let killed = status("u", TaskState::TaskKilled, "REASON_TASK_KILLED");
        assert_eq!(a.update(&killed, 5.0), Next::Ended("u".into(), 1));
    }

    #[test]
    fn only_ends_through_no_fault_of_the_task_are_retried() {
        for s in [
            TaskState::TaskLost,
            TaskState::TaskDropped,
            TaskState::TaskGone,
            TaskState::TaskUnknown,
        ] {
            assert!(through_no_fault(s, ""), "{s:?}");
        }
        assert!(through_no_fault(
            TaskState::TaskFailed,
            "REASON_AGENT_RESTARTED"
        ));
        assert!(through_no_fault(
            TaskState::TaskFailed,
            "REASON_EXECUTOR_TERMINATED"
        ));
        assert!(!through_no_fault(
            TaskState::TaskFailed,
            "REASON_COMMAND_EXECUTOR_FAILED"
        ));
        assert!(!through_no_fault(
            TaskState::TaskFailed,
            "REASON_CONTAINER_LIMITATION_MEMORY"
        ));
        assert!(!through_no_fault(
            TaskState::TaskError,
            "REASON_TASK_INVALID"
        ));
        assert!(!through_no_fault(TaskState::TaskKilled, ""));
        assert!(!through_no_fault(TaskState::TaskFinished, ""));
    }

    #[test]
    fn a_lost_task_is_launched_again_under_a_new_id_until_its_retries_run_out() {
        let mut a = Attempts::new(2, 60.0);
        a.launched("t", 1);
        let lost = |id: &str| status(id, TaskState::TaskLost, "");
        assert_eq!(
            a.update(&status("t", TaskState::TaskRunning, ""), 0.0),
            Next::Nothing
        );
        assert_eq!(a.update(&lost("t"), 1.0), Next::Retry("t".into(), 2));
        assert_eq!(attempt_id("t", 2), "t-retry1");
        a.launched("t", 2);
        // A repeat of the first launch's end is not news.
        assert_eq!(a.update(&lost("t"), 2.0), Next::Nothing);
        assert_eq!(a.update(&lost("t-retry1"), 3.0), Next::Retry("t".into(), 3));
        a.launched("t", 3);
        assert_eq!(a.update(&lost("t-retry2"), 4.0), Next::Ended("t".into(), 3));
        assert_eq!(a.tries.get("t"), Some(&3));
        assert!(a.live.is_empty());
    }

    #[test]
    fn a_launch_the_broker_has_no_record_of_is_launched_again() {
        // An ACCEPT lost with a broker that died: reconciliation answers TASK_UNKNOWN.
        let mut a = Attempts::new(3, 60.0);
        a.launched("t", 1);
        assert_eq!(
            a.update(&status("t", TaskState::TaskUnknown, ""), 1.0),
            Next::Retry("t".into(), 2)
        );
    }

    #[test]
    fn a_task_that_failed_by_its_own_exit_code_ends_at_once() {
        let mut a = Attempts::new(3, 60.0);
        a.launched("t", 1);
        let failed = status("t", TaskState::TaskFailed, "REASON_COMMAND_EXECUTOR_FAILED");
        assert_eq!(a.update(&failed, 1.0), Next::Ended("t".into(), 1));
    }

    #[test]
    fn an_unreachable_launch_is_given_up_after_the_timeout_and_killed_if_it_returns() {
        let mut a = Attempts::new(3, 60.0);
        a.launched("t", 1);
        a.launched("u", 1);
        let unreachable = |id: &str| status(id, TaskState::TaskUnreachable, "");
        assert_eq!(a.update(&unreachable("t"), 10.0), Next::Nothing);
        assert_eq!(a.update(&unreachable("u"), 10.0), Next::Nothing);
        // u comes back before the timeout: it is kept.
        assert_eq!(
            a.update(&status("u", TaskState::TaskRunning, ""), 30.0),
            Next::Nothing
        );
        assert!(a.overdue(69.0).is_empty());
        assert_eq!(a.overdue(70.0), [Next::Retry("t".into(), 2)]);
        assert!(a.overdue(200.0).is_empty(), "u is reachable, t given up");
        // The old launch of t returns: it is killed; its end is not news.
        assert_eq!(
            a.update(&status("t", TaskState::TaskRunning, ""), 80.0),
            Next::Kill("t".into(), "a1".into())
        );
        assert_eq!(
            a.update(&status("t", TaskState::TaskKilled, ""), 81.0),
            Next::Nothing
        );
    }
}
