//! Frameworks' own executors (Mesos' custom executors, issue 26): a task whose `TaskInfo.executor` is set runs
//! in that executor, which the agent starts once per (framework, executor ID) and which then receives every
//! task launched with the same executor ID here.
//!
//! # Life of an executor
//! The first task starts it: its command runs under the same wrapper as a command task (exit status written to
//! the executor's checkpoint directory), in a process group of its own, in its sandbox
//! `<work_dir>/executors/<framework_id>/<executor_id>/runs/<container_id>`, in one cgroup (its container) whose
//! limits are the sum of its live tasks' resources (which include the executor's own, see the broker's
//! validation), resized as tasks come and go. Its environment is Mesos' (`MESOS_FRAMEWORK_ID`,
//! `MESOS_EXECUTOR_ID`, `MESOS_AGENT_ENDPOINT`, `MESOS_SANDBOX`, `MESOS_DIRECTORY`, `MESOS_CHECKPOINT`,
//! `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD`, `MESOS_EXECUTOR_AUTHENTICATION_TOKEN`, ...). It must SUBSCRIBE to
//! the agent's executor API ([`crate::executor_api`]) within `--executor-registration-timeout`, or it is
//! killed and its tasks fail (REASON_EXECUTOR_REGISTRATION_TIMEOUT).
//!
//! Once subscribed it gets a LAUNCH event per task (the tasks launched before it subscribed, at once), KILL
//! when a task is killed, ACKNOWLEDGED when the framework acknowledged one of its updates, MESSAGE for the
//! framework's messages, SHUTDOWN. Each UPDATE it sends goes through the agent's status update manager, like
//! the command executor's: checkpointed, delivered in order, re-sent until acknowledged.
//!
//! When its process group's leader exits, every task it had not ended gets TASK_FAILED (TASK_KILLED after a
//! SHUTDOWN) from the agent with REASON_EXECUTOR_TERMINATED, and the framework gets FAILURE with the executor
//! ID and wait status (`ExitedExecutor`, best effort).
//!
//! # Agent restarts
//! An executor outlives the agent process, as a command task does: the agent checkpoints it
//! (`ExecutorCheckpoint` in `<work_dir>/meta/frameworks/<fw>/executors/<id>/executor`) once its process runs;
//! a restarted agent finds it by pid (checked against its environment), watches it, and waits for it to
//! subscribe again (an executor driver retries for `MESOS_RECOVERY_TIMEOUT`). On that SUBSCRIBE the agent
//! sends LAUNCH again for each of its tasks that the executor neither reported on nor lists as unacknowledged,
//! and takes each listed unacknowledged update the agent has not checkpointed.

use crate::Agent;
use crate::executor::{KillReason, Launch, RunAs, TaskUpdates, alive, switch_user, wrapped_argv};
use crate::isolation::TaskIsolation;
use allot_mesos::executor::Event;
use allot_proto::agent::ExecutorCheckpoint;
use allot_proto::agent::status_updates_client::StatusUpdatesClient;
use allot_proto::common::{
    ExecutorInfo, FrameworkInfo, StatusSource, TaskInfo, TaskState, TaskStatus,
};
use allot_resources::Resources;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use prost::Message as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// An executor on this agent: `(framework ID, executor ID)`.
pub type ExecutorKey = (String, String);

/// The time between SHUTDOWN and SIGKILL when the ExecutorInfo does not say (Mesos: 5 s).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The executors of this agent, running or awaiting their SUBSCRIBE.
#[derive(Default)]
pub struct Executors {
    running: Mutex<HashMap<ExecutorKey, Arc<Container>>>,
}

impl Executors {
    /// The executor `key`, if it runs here.
    pub fn get(&self, key: &ExecutorKey) -> Option<Arc<Container>> {
        self.running
            .lock()
            .expect("executors poisoned")
            .get(key)
            .cloned()
    }

    /// The executors of framework `fw` (all when `executor_id` is empty, else that one).
    pub fn of(&self, fw: &str, executor_id: &str) -> Vec<Arc<Container>> {
        self.running
            .lock()
            .expect("executors poisoned")
            .values()
            .filter(|c| {
                c.framework_id == fw
                    && (executor_id.is_empty() || c.info.executor_id == executor_id)
            })
            .cloned()
            .collect()
    }

    /// Every executor.
    pub fn all(&self) -> Vec<Arc<Container>> {
        self.running
            .lock()
            .expect("executors poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Forgets `c` (it exited), unless another instance took its key meanwhile.
    fn remove(&self, c: &Arc<Container>) {
        let mut running = self.running.lock().expect("executors poisoned");
        if running.get(&c.key()).is_some_and(|x| Arc::ptr_eq(x, c)) {
            running.remove(&c.key());
        }
    }
}

/// One task of an executor, as the agent tracks it.
struct Slot {
    task: TaskInfo,
    updates: TaskUpdates,
    /// Whether a LAUNCH of it went out on a subscription (after a recovery: assumed).
    given: bool,
    /// Whether the executor sent an update of it.
    heard: bool,
    /// Whether its final update is made (by the executor, or by the agent for it).
    ended: bool,
    /// A KILL asked for while the executor had no subscription, with its grace period: sent at the next one.
    kill: Option<Option<f64>>,
    /// Notified once the executor's terminal update of it is checkpointed.
    done: Arc<Notify>,
    /// Its resources (task and executor share).
    resources: Resources,
}

/// Why an executor ends, for its tasks' final updates.
#[derive(Debug, Clone)]
struct Ending {
    state: TaskState,
    reason: &'static str,
    message: String,
}

#[derive(Default)]
struct Inner {
    /// The subscription's event stream and its number.
    stream: Option<(u64, mpsc::UnboundedSender<Event>)>,
    subscriptions: u64,
    tasks: BTreeMap<String, Slot>,
    /// Tasks with updates from the executor not all acknowledged: ACKNOWLEDGED goes to the executor for them.
    reporting: HashSet<String>,
    ending: Option<Ending>,
}

/// A running executor and its tasks (its container).
pub struct Container {
    /// Its framework.
    pub framework_id: String,
    /// As launched.
    pub info: ExecutorInfo,
    /// Its framework's FrameworkInfo (for SUBSCRIBED).
    pub framework_info: FrameworkInfo,
    /// The secret it authenticates with.
    pub token: String,
    /// Its container ID.
    pub container_id: String,
    /// Its sandbox.
    pub sandbox: PathBuf,
    /// Its checkpoint directory.
    checkpoint: PathBuf,
    /// The leader of its process group.
    pub pid: Pid,
    inner: Mutex<Inner>,
    /// Cancelled once its process group leader is gone.
    pub exited: CancellationToken,
    /// Its cgroup, until released.
    iso: Mutex<Option<TaskIsolation>>,
}

impl Container {
    /// `(framework ID, executor ID)`.
    pub fn key(&self) -> ExecutorKey {
        (self.framework_id.clone(), self.info.executor_id.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("executor poisoned")
    }

    /// Sends `ev` on its subscription; `false` when it has none.
    pub fn send(&self, ev: Event) -> bool {
        match &self.lock().stream {
            Some((_, tx)) => tx.send(ev).is_ok(),
            None => false,
        }
    }

    /// Whether it is subscribed.
    pub fn subscribed(&self) -> bool {
        self.lock().stream.is_some()
    }

    /// Sets the cgroup's limits from the live tasks' resources (at least the executor's own), on a blocking
    /// thread (cgroup file writes stay off the async workers).
    pub(crate) async fn resize(self: &Arc<Self>) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.resize_now()).await;
    }

    /// [`Container::resize`], here. Blocking.
    fn resize_now(&self) {
        // Resizes are serialized and each reads the tasks after the one before it wrote: the last write is
        // always of the latest tasks, whatever order concurrent resizes started in.
        let iso = self.iso.lock().expect("iso poisoned");
        let mut sum =
            allot_common::convert::resources_from_proto(&self.info.resources).unwrap_or_default();
        {
            let inner = self.lock();
            if !inner.tasks.is_empty() {
                sum = Resources::new();
                for s in inner.tasks.values() {
                    sum.add(&s.resources);
                }
            }
        }
        if let Some(iso) = iso.as_ref()
            && let Err(e) = iso.resize(sum.scalar("cpus"), sum.scalar("mem"))
        {
            tracing::warn!(executor = %self.info.executor_id, error = %e, "cannot resize the executor's container");
        }
    }

    /// Adds `task` (its updates going to `updates`), not yet given to the executor: the caller grows the
    /// container ([`Container::resize`]), then gives it ([`Container::give`]), so that the task never runs
    /// under the smaller limits. `given`: a recovered task the executor is assumed to have. Returns what is
    /// notified when the executor ends it.
    fn add(&self, task: TaskInfo, updates: TaskUpdates, given: bool) -> Arc<Notify> {
        let done = Arc::new(Notify::new());
        let resources =
            allot_common::convert::resources_from_proto(&task.resources).unwrap_or_default();
        {
            let mut inner = self.lock();
            inner.tasks.insert(
                task.task_id.clone(),
                Slot {
                    task,
                    updates,
                    given,
                    heard: false,
                    ended: false,
                    kill: None,
                    done: done.clone(),
                    resources,
                },
            );
        }
        done
    }

    /// LAUNCH for task `task_id` if the executor is subscribed and does not have it yet (else its SUBSCRIBE
    /// gives it).
    fn give(&self, task_id: &str) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let (Some((_, tx)), Some(slot)) = (&inner.stream, inner.tasks.get_mut(task_id))
            && !slot.given
        {
            slot.given = tx
                .send(Event::launch(allot_mesos::convert::task_to_v1(
                    &self.framework_id,
                    &slot.task,
                )))
                .is_ok();
        }
    }

    /// The task is over for the agent: forgets it (the caller shrinks the container, [`Container::resize`]).
    fn forget(&self, task_id: &str) {
        self.lock().tasks.remove(task_id);
    }

    /// KILL of task `task_id`: sent to the executor when subscribed; kept for its next subscription when it
    /// has the task but no subscription now (an agent restart, a dropped stream); `true` when the executor was
    /// never given the task, which the caller then ends itself (marked ended here).
    fn kill(&self, task_id: &str, grace: Option<f64>) -> bool {
        let mut inner = self.lock();
        let stream = inner.stream.as_ref().map(|(_, tx)| tx.clone());
        let Some(slot) = inner.tasks.get_mut(task_id).filter(|s| !s.ended) else {
            return false;
        };
        if !slot.given {
            slot.ended = true;
            return true;
        }
        let sent = stream.is_some_and(|tx| tx.send(Event::kill(task_id, grace)).is_ok());
        if !sent {
            slot.kill = Some(grace);
        }
        false
    }

    /// Marks task `task_id` ended if it was not: `true` when the caller is to make its final update.
    fn end(&self, task_id: &str) -> bool {
        match self.lock().tasks.get_mut(task_id) {
            Some(s) if !s.ended => {
                s.ended = true;
                true
            }
            _ => false,
        }
    }

    /// Why it ends, if it does (first reason wins).
    fn set_ending(&self, state: TaskState, reason: &'static str, message: String) {
        self.lock().ending.get_or_insert(Ending {
            state,
            reason,
            message,
        });
    }

    /// A new subscription: the old stream (if any) ends, SUBSCRIBED goes first, then LAUNCH of every task it
    /// was not given, or that it neither reported on nor lists in `unacknowledged` (after an agent restart or
    /// a lost stream). Returns the subscription's number and its events.
    pub fn subscribe(
        &self,
        subscribed: Event,
        unacknowledged: &HashSet<String>,
    ) -> (u64, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        inner.subscriptions += 1;
        let n = inner.subscriptions;
        let _ = tx.send(subscribed);
        for slot in inner.tasks.values_mut() {
            let has = slot.heard || (slot.given && unacknowledged.contains(&slot.task.task_id));
            if !slot.ended && !has {
                let _ = tx.send(Event::launch(allot_mesos::convert::task_to_v1(
                    &self.framework_id,
                    &slot.task,
                )));
                slot.given = true;
            }
            if let Some(grace) = slot.kill.take().filter(|_| !slot.ended) {
                let _ = tx.send(Event::kill(&slot.task.task_id, grace));
            }
        }
        inner.stream = Some((n, tx));
        (n, rx)
    }

    /// Subscription `n`'s stream closed (the executor went away, or subscribed again).
    pub fn unsubscribed(&self, n: u64) {
        let mut inner = self.lock();
        if inner.stream.as_ref().is_some_and(|(m, _)| *m == n) {
            inner.stream = None;
        }
    }

    /// The executor reports `status` (validated, filled in): checkpointed and sent like any update. A terminal
    /// one ends the task.
    ///
    /// # Errors
    /// A message when the task is not one of this executor's live tasks.
    pub async fn update(&self, status: TaskStatus) -> Result<(), String> {
        let terminal = status.state().is_terminal();
        let (updates, done) = {
            let mut inner = self.lock();
            let Some(slot) = inner.tasks.get_mut(&status.task_id) else {
                return Err(format!(
                    "task {} is not a live task of executor {}",
                    status.task_id, self.info.executor_id
                ));
            };
            if slot.ended {
                return Err(format!("task {} has ended", status.task_id));
            }
            slot.heard = true;
            slot.ended = terminal;
            let out = (slot.updates.clone(), slot.done.clone());
            inner.reporting.insert(status.task_id.clone());
            out
        };
        updates.push_async(vec![status]).await;
        if terminal {
            done.notify_one();
        }
        Ok(())
    }

    /// The framework acknowledged update `uuid` of task `task_id`: ACKNOWLEDGED to the executor, if the task is
    /// one it reported on (`terminal`: the last one, after which it is forgotten).
    pub fn acknowledged(&self, task_id: &str, uuid: &[u8], terminal: bool) {
        let mut inner = self.lock();
        if !inner.reporting.contains(task_id) {
            return;
        }
        if terminal {
            inner.reporting.remove(task_id);
        }
        if let Some((_, tx)) = &inner.stream {
            let _ = tx.send(Event::acknowledged(task_id, uuid.to_vec()));
        }
    }

    /// Its tasks the agent follows, with whether each has ended (its final update made).
    pub fn tasks(&self) -> Vec<(TaskInfo, bool)> {
        self.lock()
            .tasks
            .values()
            .map(|s| (s.task.clone(), s.ended))
            .collect()
    }

    /// Whether the executor has task `task_id` live and reported on it (for unacknowledged updates listed at
    /// SUBSCRIBE).
    pub fn knows(&self, task_id: &str) -> bool {
        self.lock().tasks.get(task_id).is_some_and(|s| !s.ended)
    }

    /// SHUTDOWN: tells the executor (if subscribed), then kills its process group after its grace period, or
    /// at once when it is not subscribed. Its live tasks end TASK_KILLED.
    pub fn shutdown(self: &Arc<Self>, why: &str) {
        self.set_ending(
            TaskState::TaskKilled,
            "REASON_EXECUTOR_TERMINATED",
            format!("Executor shut down: {why}"),
        );
        let grace = match self.info.shutdown_grace_period {
            g if g > 0.0 => Duration::from_secs_f64(g.min(3600.0)),
            _ => DEFAULT_SHUTDOWN_GRACE,
        };
        let told = self.send(Event::bare("SHUTDOWN"));
        let me = self.clone();
        tokio::spawn(async move {
            if told {
                let _ = tokio::time::timeout(grace, me.exited.cancelled()).await;
            }
            if !me.exited.is_cancelled() {
                let _ = killpg(me.pid, Signal::SIGKILL);
            }
        });
    }
}

/// A status the agent makes for task `l` of a framework's executor.
fn agent_status(l: &Launch, e: &Ending) -> TaskStatus {
    TaskStatus {
        task_id: l.task.task_id.clone(),
        state: e.state as i32,
        message: e.message.clone(),
        source: StatusSource::SourceAgent as i32,
        reason: e.reason.into(),
        agent_id: l.agent_id.clone(),
        framework_id: l.framework_id.clone(),
        timestamp: allot_common::now_secs(),
        uuid: allot_common::new_status_uuid(),
        executor_id: l
            .task
            .executor
            .as_ref()
            .map(|x| x.executor_id.clone())
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The cgroup name of executor `key` (task IDs cannot hold `+`, so no task's cgroup has it).
fn cgroup_name((fw, id): &ExecutorKey) -> String {
    format!("executor+{fw}+{id}")
}

/// The checkpoint directory of executor `key`.
fn checkpoint_dir(work_dir: &Path, (fw, id): &ExecutorKey) -> PathBuf {
    work_dir
        .join("meta")
        .join("frameworks")
        .join(fw)
        .join("executors")
        .join(id)
}

/// Mesos' duration text for `d` (`MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD`, e.g. `5secs`).
fn mesos_duration(d: Duration) -> String {
    format!("{}secs", d.as_secs_f64())
}

/// A random secret for an executor to authenticate with.
fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Agent {
    /// Runs task `l` (`TaskInfo.executor` set) in its executor, starting the executor if it does not run here:
    /// the executor future [`Agent::supervise`] takes. `framework` is the task's FrameworkInfo.
    pub(crate) async fn run_executor_task(
        self: Arc<Self>,
        l: Launch,
        framework: FrameworkInfo,
        kill: CancellationToken,
        updates: TaskUpdates,
    ) {
        let agent = self.clone();
        let (launch, up) = (l.clone(), updates.clone());
        let span = tracing::Span::current();
        let started = tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                up.begin(&launch.task);
                agent.executor_for(&launch, &framework)
            })
        })
        .await
        .unwrap_or_else(|e| Err(format!("the executor's start-up failed: {e}")));
        let container = match started {
            Ok(c) => c,
            Err(message) => {
                let ending = Ending {
                    state: TaskState::TaskFailed,
                    reason: "REASON_EXECUTOR_TERMINATED",
                    message,
                };
                updates.push_async(vec![agent_status(&l, &ending)]).await;
                return;
            }
        };
        self.follow_task(container, l, kill, updates, false).await;
    }

    /// Follows task `l` of `container` to its end: `given` for a task recovered after a restart (the executor
    /// is assumed to have it). KILL goes to the executor (at its next subscription if it has none now; a task
    /// it was never given ends at once, TASK_KILLED); the executor's exit ends the task if the executor did
    /// not.
    async fn follow_task(
        &self,
        container: Arc<Container>,
        l: Launch,
        kill: CancellationToken,
        updates: TaskUpdates,
        given: bool,
    ) {
        let task_id = l.task.task_id.clone();
        let done = container.add(l.task.clone(), updates.clone(), given);
        container.resize().await;
        container.give(&task_id);
        let mut kill_sent = false;
        loop {
            tokio::select! {
                _ = done.notified() => break,
                _ = kill.cancelled(), if !kill_sent => {
                    kill_sent = true;
                    let grace = (l.task.kill_grace_period > 0.0).then_some(l.task.kill_grace_period);
                    if container.kill(&task_id, grace) {
                        let why = kill_message(&l.kill_reason);
                        let ending = Ending { state: TaskState::TaskKilled, reason: why.0, message: why.1 };
                        updates.push_async(vec![agent_status(&l, &ending)]).await;
                        break;
                    }
                }
                _ = container.exited.cancelled() => {
                    if container.end(&task_id) {
                        let ending = container.lock().ending.clone().unwrap_or(Ending {
                            state: TaskState::TaskFailed,
                            reason: "REASON_EXECUTOR_TERMINATED",
                            message: "Executor terminated".into(),
                        });
                        updates.push_async(vec![agent_status(&l, &ending)]).await;
                    }
                    break;
                }
            }
        }
        container.forget(&task_id);
        container.resize().await;
    }

    /// The running executor for task `l`, or a new one started for it. Blocking (fork, files, cgroup).
    ///
    /// # Errors
    /// The message of the task's TASK_FAILED: an ExecutorInfo that differs from the running executor's, or a
    /// start that failed (sandbox, user, cgroup, spawn).
    fn executor_for(
        self: &Arc<Self>,
        l: &Launch,
        framework: &FrameworkInfo,
    ) -> Result<Arc<Container>, String> {
        let info = l.task.executor.clone().unwrap_or_default();
        let key = (l.framework_id.clone(), info.executor_id.clone());
        let mut running = self.executors.running.lock().expect("executors poisoned");
        if let Some(c) = running.get(&key) {
            if c.exited.is_cancelled() {
                return Err(format!(
                    "executor {} is exiting; launch the task again",
                    info.executor_id
                ));
            }
            if c.info.command != info.command {
                return Err(format!(
                    "the task's ExecutorInfo differs from that of the running executor {} (its command)",
                    info.executor_id
                ));
            }
            return Ok(c.clone());
        }
        let c = self.start_executor(&key, info, framework)?;
        running.insert(key, c.clone());
        drop(running);
        self.expect_subscription(c.clone());
        tracing::info!(framework = %c.framework_id, executor = %c.info.executor_id, pid = %c.pid, "executor started");
        Ok(c)
    }

    /// Starts executor `key` (see the module docs) and the tasks that watch its exit and its registration.
    fn start_executor(
        self: &Arc<Self>,
        key: &ExecutorKey,
        info: ExecutorInfo,
        framework: &FrameworkInfo,
    ) -> Result<Arc<Container>, String> {
        let container_id = uuid::Uuid::new_v4().to_string();
        let sandbox = self
            .work_dir
            .join("executors")
            .join(&key.0)
            .join(&key.1)
            .join("runs")
            .join(&container_id);
        let checkpoint = checkpoint_dir(&self.work_dir, key);
        for dir in [&sandbox, &checkpoint] {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let command = info.command.clone().unwrap_or_default();
        let run_as: Option<RunAs> = match self.switch_user {
            true => {
                let user = match command.user.is_empty() {
                    true => &framework.user,
                    false => &command.user,
                };
                switch_user(user)?
            }
            false => None,
        };
        let own = allot_common::convert::resources_from_proto(&info.resources).unwrap_or_default();
        // rlimits are set at exec and cannot grow with the tasks: an executor gets none.
        let iso = match &self.isolator {
            crate::isolation::Isolator::Rlimits(_) => TaskIsolation::None,
            isolator => isolator
                .prepare(
                    &cgroup_name(key),
                    own.scalar("cpus"),
                    own.scalar("mem"),
                    false,
                )
                .map_err(|e| format!("cannot isolate the executor: {e}"))?,
        };
        let exit_file = checkpoint.join("exit");
        let argv = wrapped_argv(&command, &exit_file, &iso, run_as.as_ref());
        let open = |name: &str| std::fs::File::create(sandbox.join(name));
        let (stdout, stderr) = match (open("stdout"), open("stderr")) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => {
                iso.release();
                return Err(format!("cannot create stdout/stderr in the sandbox: {e}"));
            }
        };
        if let Some(who) = &run_as {
            let _ = std::fs::write(&exit_file, b"");
            for p in [
                &sandbox,
                &sandbox.join("stdout"),
                &sandbox.join("stderr"),
                &exit_file,
            ] {
                if let Err(e) = nix::unistd::chown(p.as_path(), Some(who.uid), Some(who.gid)) {
                    iso.release();
                    return Err(format!(
                        "cannot give the sandbox to user '{}': {e}",
                        who.name
                    ));
                }
            }
        }
        let token = new_token();
        let grace = match info.shutdown_grace_period {
            g if g > 0.0 => Duration::from_secs_f64(g.min(3600.0)),
            _ => DEFAULT_SHUTDOWN_GRACE,
        };
        let agent_id = self.id();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&sandbox)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .envs(&command.environment)
            .env("MESOS_FRAMEWORK_ID", &key.0)
            .env("MESOS_EXECUTOR_ID", &key.1)
            .env("MESOS_AGENT_ENDPOINT", &self.executor_endpoint)
            .env("MESOS_SANDBOX", &sandbox)
            .env("MESOS_DIRECTORY", &sandbox)
            .env("MESOS_CHECKPOINT", "1")
            .env(
                "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD",
                mesos_duration(grace),
            )
            .env("MESOS_EXECUTOR_AUTHENTICATION_TOKEN", &token)
            .env("MESOS_SLAVE_ID", &agent_id)
            .env("MESOS_AGENT_ID", &agent_id)
            .env(
                "MESOS_SLAVE_PID",
                format!("slave(1)@{}", self.executor_endpoint),
            )
            .env("MESOS_HTTP_COMMAND_EXECUTOR", "0")
            .env(
                "MESOS_RECOVERY_TIMEOUT",
                mesos_duration(self.executor_registration_timeout),
            )
            .env("MESOS_SUBSCRIPTION_BACKOFF_MAX", "2secs")
            .env("LIBPROCESS_PORT", "0")
            .env("ALLOT_SANDBOX", &sandbox)
            .env("ALLOT_FRAMEWORK_ID", &key.0)
            .env("ALLOT_EXECUTOR_ID", &key.1)
            .env("ALLOT_AGENT_ID", &agent_id)
            // Its own process group (pymesos' executor kills its whole group on shutdown); no kill_on_drop:
            // it outlives a crashed agent.
            .process_group(0);
        if let Some(who) = &run_as {
            cmd.env("USER", &who.name).env("LOGNAME", &who.name);
        }
        if self.stopped.is_cancelled() {
            iso.release();
            return Err("the agent stopped before the executor started".into());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                iso.release();
                return Err(format!("cannot start executor '{}': {e}", argv[0]));
            }
        };
        let pid = child.id().unwrap_or(0);
        if let Err(e) = iso.attach(pid) {
            tracing::warn!(executor = %key.1, error = %e, "cannot move the executor into its cgroup");
        }
        let record = ExecutorCheckpoint {
            framework_id: key.0.clone(),
            info: Some(info.clone()),
            framework_info: Some(framework.clone()),
            pid,
            token: token.clone(),
        };
        write_checkpoint(&checkpoint, &record, &container_id, &sandbox);
        // Checkpointed and in its cgroup: the executor may start (see `wrapped_argv`).
        if let Some(gate) = child.stdin.take().filter(|_| !self.stopped.is_cancelled())
            && let Err(e) = nix::unistd::write(&gate, crate::executor::GATE_OPEN)
        {
            tracing::warn!(executor = %key.1, error = %e, "cannot open the executor's gate");
        }
        let c = Arc::new(Container {
            framework_id: key.0.clone(),
            info,
            framework_info: framework.clone(),
            token,
            container_id,
            sandbox,
            checkpoint,
            pid: Pid::from_raw(pid as i32),
            inner: Mutex::default(),
            exited: CancellationToken::new(),
            iso: Mutex::new(Some(iso)),
        });
        let (agent, watched) = (self.clone(), c.clone());
        tokio::runtime::Handle::current().spawn(async move {
            let status = child.wait().await.ok().map(|s| {
                use std::os::unix::process::ExitStatusExt as _;
                s.into_raw()
            });
            agent.executor_exited(watched, status).await;
        });
        Ok(c)
    }

    /// Kills executor `c` if it has not subscribed within the registration timeout (its tasks fail with
    /// REASON_EXECUTOR_REGISTRATION_TIMEOUT).
    fn expect_subscription(self: &Arc<Self>, c: Arc<Container>) {
        let timeout = self.executor_registration_timeout;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(timeout) => {}
                _ = c.exited.cancelled() => return,
            }
            if c.lock().subscriptions == 0 {
                tracing::warn!(framework = %c.framework_id, executor = %c.info.executor_id, ?timeout, "executor did not subscribe in time; killing it");
                c.set_ending(
                    TaskState::TaskFailed,
                    "REASON_EXECUTOR_REGISTRATION_TIMEOUT",
                    format!("Executor did not subscribe within {timeout:?}"),
                );
                let _ = killpg(c.pid, Signal::SIGKILL);
            }
        });
    }

    /// Executor `c`'s process group leader is gone (wait `status` when the agent was its parent, else from
    /// its exit file): its live tasks end, its cgroup and checkpoint go, the framework hears of it.
    async fn executor_exited(self: &Arc<Self>, c: Arc<Container>, status: Option<i32>) {
        let described = match status {
            Some(s) if s & 0x7f == 0 => format!("Executor exited with status {}", (s >> 8) & 0xff),
            Some(s) => format!("Executor terminated by signal {}", s & 0x7f),
            None => "Executor terminated".into(),
        };
        tracing::info!(framework = %c.framework_id, executor = %c.info.executor_id, %described, "executor ended");
        c.set_ending(
            TaskState::TaskFailed,
            "REASON_EXECUTOR_TERMINATED",
            described,
        );
        c.lock().stream = None;
        self.executors.remove(&c);
        let cleanup = c.clone();
        let _ = tokio::task::spawn_blocking(move || {
            // Whatever it left in its process group goes with it.
            let _ = killpg(cleanup.pid, Signal::SIGKILL);
            if let Some(iso) = cleanup.iso.lock().expect("iso poisoned").take() {
                iso.release();
            }
            let _ = std::fs::remove_dir_all(&cleanup.checkpoint);
        })
        .await;
        c.exited.cancel();
        let req = allot_proto::agent::ExitedExecutorRequest {
            agent_id: self.id(),
            framework_id: c.framework_id.clone(),
            executor_id: c.info.executor_id.clone(),
            status,
        };
        self.tell_broker("an executor's exit", 5, move |mut client| {
            let req = req.clone();
            async move { client.exited_executor(req).await.map(drop) }
        });
    }

    /// Makes `call` to the leading broker on a task of its own, up to `attempts` times with backoff (best
    /// effort: `what` is logged when every attempt failed).
    pub(crate) fn tell_broker<F, Fut>(&self, what: &'static str, attempts: usize, call: F)
    where
        F: Fn(StatusUpdatesClient<allot_common::grpc::Channel>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
    {
        let brokers = self.brokers.clone();
        tokio::spawn(async move {
            let mut delays = allot_common::retry_delays(Duration::from_millis(200));
            for attempt in 1..=attempts {
                match call(StatusUpdatesClient::new(brokers.channel())).await {
                    Ok(()) => return,
                    Err(e) => {
                        brokers.failed(&e);
                        if attempt == attempts {
                            tracing::warn!(error = %e.message(), "cannot tell the broker of {what}");
                            return;
                        }
                        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
                    }
                }
            }
        });
    }

    /// After a restart: the executors an earlier agent process started, from their checkpoints. One still
    /// running is watched (polled) and expected to subscribe again; one that ended while no agent watched is
    /// reported (its checkpoint removed). Returns the running ones, for their tasks' recovery.
    pub(crate) fn recover_executors(self: &Arc<Self>) {
        let frameworks = self.work_dir.join("meta").join("frameworks");
        let Ok(fws) = std::fs::read_dir(&frameworks) else {
            return;
        };
        for fw in fws.flatten() {
            let Ok(execs) = std::fs::read_dir(fw.path().join("executors")) else {
                continue;
            };
            for dir in execs.flatten() {
                let path = dir.path();
                let Some(record) = std::fs::read(path.join("executor"))
                    .ok()
                    .and_then(|b| ExecutorCheckpoint::decode(b.as_slice()).ok())
                else {
                    let _ = std::fs::remove_dir_all(&path);
                    continue;
                };
                let info = record.info.clone().unwrap_or_default();
                let key = (record.framework_id.clone(), info.executor_id.clone());
                let (container_id, sandbox) = read_run(&path);
                let running = record.pid > 1
                    && crate::executor::has_environment(
                        record.pid as i32,
                        &[
                            format!("ALLOT_FRAMEWORK_ID={}", key.0),
                            format!("ALLOT_EXECUTOR_ID={}", key.1),
                        ],
                    );
                let c = Arc::new(Container {
                    framework_id: key.0.clone(),
                    info,
                    framework_info: record.framework_info.unwrap_or_default(),
                    token: record.token,
                    container_id,
                    sandbox,
                    checkpoint: path.clone(),
                    pid: Pid::from_raw(record.pid as i32),
                    inner: Mutex::default(),
                    exited: CancellationToken::new(),
                    iso: Mutex::new(Some(self.isolator.reopen(&cgroup_name(&key), false))),
                });
                self.executors
                    .running
                    .lock()
                    .expect("executors poisoned")
                    .insert(key.clone(), c.clone());
                let agent = self.clone();
                if running {
                    tracing::info!(framework = %key.0, executor = %key.1, pid = record.pid, "reattached to a running executor; waiting for it to subscribe");
                    self.expect_subscription(c.clone());
                    tokio::spawn(async move {
                        while alive(c.pid) {
                            tokio::time::sleep(crate::executor::WATCH_INTERVAL).await;
                        }
                        let status = recorded_status(&c.checkpoint);
                        agent.executor_exited(c, status).await;
                    });
                } else {
                    let status = recorded_status(&path);
                    tokio::spawn(async move { agent.executor_exited(c, status).await });
                }
            }
        }
    }

    /// Recovers task `l` of a running executor (after a restart), or ends it if its executor is gone.
    pub(crate) async fn recover_executor_task(
        self: Arc<Self>,
        l: Launch,
        kill: CancellationToken,
        updates: TaskUpdates,
    ) {
        let key = (
            l.framework_id.clone(),
            l.task
                .executor
                .as_ref()
                .map(|e| e.executor_id.clone())
                .unwrap_or_default(),
        );
        match self.executors.get(&key) {
            Some(c) => self.follow_task(c, l, kill, updates, true).await,
            None => {
                let ending = Ending {
                    state: TaskState::TaskFailed,
                    reason: "REASON_EXECUTOR_TERMINATED",
                    message: "The agent restarted and found the task's executor gone".into(),
                };
                updates.push_async(vec![agent_status(&l, &ending)]).await;
            }
        }
    }
}

/// `(reason, message)` of a TASK_KILLED the agent makes for a task its executor was never given.
fn kill_message(reason: &KillReason) -> (&'static str, String) {
    match reason.get() {
        Some((r, why)) if r == "REASON_PREEMPTED" => (
            "REASON_PREEMPTED",
            format!("Task killed before its executor ran it: {why}"),
        ),
        _ => (
            "REASON_TASK_KILLED",
            "Task killed before its executor subscribed".into(),
        ),
    }
}

/// Writes `record` to `dir/executor` (whole or not at all: a temporary file renamed), and the run's container
/// ID and sandbox to `dir/run`.
fn write_checkpoint(dir: &Path, record: &ExecutorCheckpoint, container_id: &str, sandbox: &Path) {
    let tmp = dir.join("executor.tmp");
    let written = std::fs::write(&tmp, record.encode_to_vec())
        .and_then(|()| std::fs::rename(&tmp, dir.join("executor")))
        .and_then(|()| {
            std::fs::write(
                dir.join("run"),
                format!("{container_id}\n{}", sandbox.display()),
            )
        });
    if let Err(e) = written {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot checkpoint the executor");
    }
}

/// The container ID and sandbox of the run checkpointed in `dir`.
fn read_run(dir: &Path) -> (String, PathBuf) {
    let text = std::fs::read_to_string(dir.join("run")).unwrap_or_default();
    let mut lines = text.lines();
    let id = lines.next().unwrap_or_default().to_string();
    let sandbox = PathBuf::from(lines.next().unwrap_or_default());
    (id, sandbox)
}

/// The wait status the wrapper's recorded exit status stands for (`exit << 8`, or the signal above 128).
fn recorded_status(dir: &Path) -> Option<i32> {
    let s: i32 = std::fs::read_to_string(dir.join("exit"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(if (129..=128 + 64).contains(&s) {
        s - 128
    } else {
        (s & 0xff) << 8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Container {
        Container {
            framework_id: "f".into(),
            info: ExecutorInfo {
                executor_id: "e".into(),
                ..Default::default()
            },
            framework_info: FrameworkInfo::default(),
            token: "secret".into(),
            container_id: "c".into(),
            sandbox: PathBuf::new(),
            checkpoint: PathBuf::new(),
            pid: Pid::from_raw(0),
            inner: Mutex::default(),
            exited: CancellationToken::new(),
            iso: Mutex::new(None),
        }
    }

    fn updates(task: &str) -> TaskUpdates {
        TaskUpdates {
            key: ("f".into(), task.into()),
            manager: Arc::new(crate::status::StatusUpdateManager::in_memory(
                Duration::from_secs(1),
            )),
            sandbox: Arc::from(""),
            context: Arc::default(),
        }
    }

    fn task(id: &str) -> TaskInfo {
        TaskInfo {
            task_id: id.into(),
            ..Default::default()
        }
    }

    fn launched(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            out.push(match ev.launch {
                Some(l) => l.task.task_id.value,
                None => ev.kind,
            });
        }
        out
    }

    #[tokio::test]
    async fn a_new_subscription_launches_only_what_the_executor_cannot_have() {
        let c = container();
        // Recovered after an agent restart: assumed given.
        for t in ["heard", "listed", "reported", "lost"] {
            c.add(task(t), updates(t), true);
        }
        c.add(task("new"), updates("new"), false);
        let (n, _rx) = c.subscribe(Event::bare("SUBSCRIBED"), &HashSet::new());
        c.unsubscribed(n);
        c.lock().tasks.get_mut("heard").unwrap().heard = true;
        c.lock().tasks.get_mut("lost").unwrap().given = true;
        // What the executor says it holds: a task it has not reported on, a task whose update it still holds.
        let has: HashSet<String> = ["listed", "reported"].map(String::from).into();
        let (_, mut rx) = c.subscribe(Event::bare("SUBSCRIBED"), &has);
        // "new" went out on the first subscription, which the executor does not list: it never got it.
        assert_eq!(launched(&mut rx), ["SUBSCRIBED", "lost", "new"]);
        // While subscribed, a task goes out once it is given (after the container grew for it), once; a stream
        // that ended is forgotten only if it is the current one.
        c.add(task("later"), updates("later"), false);
        assert!(launched(&mut rx).is_empty(), "not before it is given");
        c.give("later");
        c.give("later");
        assert_eq!(launched(&mut rx), ["later"]);
        c.unsubscribed(n);
        assert!(c.subscribed());
    }

    #[tokio::test]
    async fn a_kill_while_the_executor_is_away_waits_for_its_next_subscription() {
        let c = container();
        c.add(task("running"), updates("running"), true);
        c.add(task("queued"), updates("queued"), false);
        // No subscription: the task it has is killed at its return; the one it never got ends now.
        assert!(!c.kill("running", Some(2.0)));
        assert!(c.kill("queued", None));
        let has: HashSet<String> = ["running".to_string()].into();
        let (_, mut rx) = c.subscribe(Event::bare("SUBSCRIBED"), &has);
        let mut seen = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            seen.push((ev.kind.clone(), ev.kill.map(|k| k.task_id.value)));
        }
        assert_eq!(
            seen,
            [
                ("SUBSCRIBED".to_string(), None),
                ("KILL".to_string(), Some("running".to_string()))
            ]
        );
    }

    #[test]
    fn a_recorded_exit_status_is_a_wait_status() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded_status(dir.path()), None);
        std::fs::write(dir.path().join("exit"), "3\n").unwrap();
        assert_eq!(recorded_status(dir.path()), Some(3 << 8));
        std::fs::write(dir.path().join("exit"), "137\n").unwrap();
        assert_eq!(recorded_status(dir.path()), Some(9));
        assert_eq!(mesos_duration(Duration::from_millis(2500)), "2.5secs");
        assert_eq!(cgroup_name(&("f".into(), "e".into())), "executor+f+e");
    }
}
