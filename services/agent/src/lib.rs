//! The agent: one per node. Registers the node's resources with the registry, keeps its lease alive with
//! heartbeats, and runs the tasks the offer-broker launches on it, reporting every state change reliably.
//!
//! Layout:
//! - [`executor`]: the command executor (one process group per task, sandbox, exit codes, kill);
//! - [`executors`]: frameworks' own executors (one per framework and executor ID, its tasks in its container);
//! - [`executor_api`]: Mesos' v1 executor HTTP API, which those executors call;
//! - [`files`]: the sandboxes over HTTP (`/files/browse`, `read`, `download`, `debug`), as Mesos' agent serves them;
//! - [`gc`]: finished sandboxes removed after `--gc-delay`, sooner as the disk fills;
//! - [`isolation`]: cgroups or rlimits per task;
//! - [`fence`]: launches run only by the registration they were meant for (no task started by a launch
//!   a network partition held up after the broker gave it up);
//! - [`grpc`]: `allot.agent.v1.Agent` (LaunchTasks, KillTask, AcknowledgeStatusUpdates);
//! - [`status`]: the status update manager (checkpointed, re-sent until the framework acknowledges);
//! - here: [`Config`], [`run`], registration, heartbeats and the delivery of status updates.
//!
//! The AgentID is checkpointed in `<work_dir>/agent_id`, so a restarted agent re-registers as the same agent.
//! Each task's status updates are checkpointed under `<work_dir>/meta` and go to the broker in order; each is
//! re-sent until the framework's acknowledgement comes back through the broker (see [`status`]). Tasks outlive
//! the agent process: a restarted agent reattaches to those still running and reports those that ended while
//! it was down (`recover_tasks`, [`executor`]'s checkpoints).

pub mod executor;
pub mod executor_api;
pub mod executors;
pub mod fence;
pub mod files;
pub mod gc;
pub mod grpc;
pub mod isolation;
pub mod reaper;
pub mod sim;
pub mod status;
pub mod uplink;

use allot_common::AbortOnDrop;
use allot_common::convert::resources_to_proto;
use allot_proto::agent::status_updates_client::StatusUpdatesClient;
use allot_proto::common::AgentInfo;
use allot_proto::registry::{
    HeartbeatRequest, RegisterAgentRequest, registry_client::RegistryClient,
};
use allot_resources::Resources;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Agent configuration: flags, `ALLOT_*` environment variables, or a TOML file (`--config`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "allot-agent",
    version,
    about = "Allot agent: runs tasks on this node"
)]
pub struct Config {
    /// TOML file with defaults for any of these flags.
    #[arg(long, env = "ALLOT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on.
    #[arg(long, env = "ALLOT_LISTEN", default_value = "127.0.0.1:5053")]
    pub listen: String,
    /// Where to serve Prometheus metrics.
    #[command(flatten)]
    pub metrics: allot_server::config::MetricsArgs,
    /// Mutual TLS (default; the agent presents `agent-<hostname>` unless --tls-name says otherwise) or
    /// --insecure.
    #[command(flatten)]
    pub tls: allot_server::config::TlsArgs,
    /// Who may read every sandbox over `/files` and the whole `/state` on the executor API's address
    /// (HTTP basic; Mesos' `--http_credentials`). Without it, only executors, each its own sandbox.
    #[command(flatten)]
    pub credentials: allot_server::config::CredentialsArgs,
    /// Address the broker uses to reach this agent; default: the bound listen address.
    #[arg(long, env = "ALLOT_ADVERTISE")]
    pub advertise: Option<String>,
    /// The registry's gRPC address; for replicated registries, every replica's, comma-separated (calls follow
    /// the leader).
    #[arg(long, env = "ALLOT_REGISTRY", default_value = "127.0.0.1:5050")]
    pub registry: String,
    /// The offer-broker's gRPC address (status updates go there); for replicated brokers, every replica's,
    /// comma-separated (updates follow the leader).
    #[arg(long, env = "ALLOT_BROKER", default_value = "127.0.0.1:5052")]
    pub broker: String,
    /// Directory for the checkpointed AgentID and the task sandboxes.
    #[arg(long, env = "ALLOT_WORK_DIR", default_value = ".allot/agent")]
    pub work_dir: PathBuf,
    /// Resources to offer, Mesos style: `cpus:4;mem:8192;disk:10240;ports:[31000-32000]` (mem and disk in
    /// MiB); `cpus(db):2` reserves for role `db` (static reservation). Default: this machine's cores, its
    /// memory less 1 GiB, 10 GiB disk and ports 31000-32000.
    #[arg(long, env = "ALLOT_RESOURCES")]
    pub resources: Option<String>,
    /// Attributes, `key:value;key:value`.
    #[arg(long, env = "ALLOT_ATTRIBUTES", default_value = "")]
    pub attributes: String,
    /// Address (loopback by default) to serve the executor API on (Mesos' `POST /api/v1/executor`, for
    /// frameworks' own executors; their `MESOS_AGENT_ENDPOINT`). Port 0: a free port, checkpointed in the
    /// work directory (`executor_endpoint`) and bound again after a restart, because running executors
    /// subscribe to the same endpoint again.
    #[arg(long, env = "ALLOT_EXECUTOR_LISTEN", default_value = "127.0.0.1:0")]
    pub executor_listen: String,
    /// How long a started executor has to subscribe (also after an agent restart) before it is killed and
    /// its tasks fail (Mesos' `--executor_registration_timeout`).
    #[arg(long, env = "ALLOT_EXECUTOR_REGISTRATION_TIMEOUT", default_value = "1m", value_parser = allot_server::config::parse_duration)]
    pub executor_registration_timeout: Duration,
    /// How long a finished task's or executor's sandbox is kept at most (Mesos' `--gc_delay`); less as the disk
    /// fills (see `--gc-disk-headroom`).
    #[arg(long, env = "ALLOT_GC_DELAY", default_value = "1week", value_parser = allot_server::config::parse_duration)]
    pub gc_delay: Duration,
    /// The fraction of the disk to keep free (Mesos' `--gc_disk_headroom`): sandboxes older than
    /// `gc_delay * max(0, 1 - headroom - disk usage)` are removed at each disk check.
    #[arg(long, env = "ALLOT_GC_DISK_HEADROOM", default_value_t = 0.1)]
    pub gc_disk_headroom: f64,
    /// Time between disk checks and sandbox collections (Mesos' `--disk_watch_interval`).
    #[arg(long, env = "ALLOT_DISK_WATCH_INTERVAL", default_value = "1m", value_parser = allot_server::config::parse_duration)]
    pub disk_watch_interval: Duration,
    /// Hostname reported in offers; default: this machine's.
    #[arg(long, env = "ALLOT_HOSTNAME")]
    pub hostname: Option<String>,
    /// Isolation of tasks.
    #[arg(long, env = "ALLOT_ISOLATION", value_enum, default_value = "auto")]
    pub isolation: isolation::Mode,
    /// cgroup path (relative to each controller's root) under which task cgroups are made.
    #[arg(long, env = "ALLOT_CGROUP_ROOT", default_value = "allot")]
    pub cgroup_root: String,
    /// Run this many simulated agents in this process instead of one real agent (see [`sim`]): each registers
    /// and heartbeats on its own; tasks are not executed but reported TASK_RUNNING at once and TASK_FINISHED
    /// after `--sim-task-duration` (or N seconds for a command `sleep N`). For scale tests of the control plane.
    #[arg(long, env = "ALLOT_SIMULATE")]
    pub simulate: Option<usize>,
    /// How long a simulated task runs when its command does not say (`sleep N`).
    #[arg(long, env = "ALLOT_SIM_TASK_DURATION", default_value = "1s", value_parser = allot_server::config::parse_duration)]
    pub sim_task_duration: Duration,
    /// First re-send of a status update that the framework has not acknowledged; doubles each time up to
    /// 10 min (Mesos: 10 s).
    #[arg(long, env = "ALLOT_STATUS_UPDATE_RETRY_INTERVAL", default_value = "10s", value_parser = allot_server::config::parse_duration)]
    pub status_update_retry_interval: Duration,
    /// Kill every task when the agent stops (SIGTERM, SIGINT), to drain the node. Without it a stopped agent
    /// leaves its tasks running and the next agent process on the same `--work-dir` reattaches to them, so
    /// that an agent can be upgraded or restarted under its tasks (as a Mesos agent is).
    #[arg(long, env = "ALLOT_KILL_TASKS_ON_STOP")]
    pub kill_tasks_on_stop: bool,
    /// Default time between SIGTERM and SIGKILL when a task is killed.
    #[arg(long, env = "ALLOT_KILL_GRACE_PERIOD", default_value = "3s", value_parser = allot_server::config::parse_duration)]
    pub kill_grace_period: Duration,
    /// Run each task as the Unix user it names (its `CommandInfo.user`, else its framework's `user`), with
    /// that user's groups, its sandbox owned by that user (Mesos' `--switch_user`); a user that does not exist
    /// here ends the task TASK_FAILED. Needs an agent run as root, unless every task names the agent's own
    /// user. `--switch-user=false` runs every task as the agent's user.
    #[arg(long, env = "ALLOT_SWITCH_USER", default_value_t = true, action = clap::ArgAction::Set)]
    pub switch_user: bool,
}

/// An agent failure that stops it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--resources` or `--attributes` cannot be parsed.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The work directory cannot be used.
    #[error("work directory {path}: {source}")]
    WorkDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Isolation was required and is not available.
    #[error(transparent)]
    Isolation(#[from] isolation::IsolationError),
    /// The gRPC server failed or an address is invalid.
    #[error("gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The `/metrics` endpoint could not start.
    #[error(transparent)]
    Service(#[from] allot_server::ServiceError),
}

pub(crate) struct Running {
    pub(crate) kill: CancellationToken,
    /// Why it is killed, when KillTask says (read by its executor for the final status).
    pub(crate) kill_reason: executor::KillReason,
    /// What the task holds (its TaskInfo resources).
    pub(crate) resources: Resources,
}

/// The agent's Prometheus series: `allot_agent_resources{agent, resource, state}` (`state` = `total` or
/// `used`; cpus in CPUs, mem and disk in MiB), `allot_agent_tasks_running{agent}`,
/// `allot_agent_status_updates_total{state}` (acknowledged by the framework) and
/// `allot_agent_status_update_retries_total` (deliveries that failed and were retried).
struct Metrics {
    resources: allot_telemetry::metrics::prometheus::GaugeVec,
    running: allot_telemetry::metrics::prometheus::GaugeVec,
    updates: allot_telemetry::metrics::prometheus::IntCounterVec,
    retries: allot_telemetry::metrics::prometheus::IntCounter,
}

static M: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(|| {
    use allot_telemetry::metrics::{counter_vec, gauge_vec};
    Metrics {
        resources: gauge_vec(
            "allot_agent_resources",
            "An agent's resources, total and used by its tasks (cpus in CPUs, mem and disk in MiB)",
            &["agent", "resource", "state"],
        ),
        running: gauge_vec(
            "allot_agent_tasks_running",
            "Tasks running or still reporting on an agent",
            &["agent"],
        ),
        updates: counter_vec(
            "allot_agent_status_updates_total",
            "Status updates the framework acknowledged, by state",
            &["state"],
        ),
        retries: allot_telemetry::metrics::counter(
            "allot_agent_status_update_retries_total",
            "Status update deliveries retried after a failure",
        ),
    }
});

/// The agent's shared state.
pub struct Agent {
    pub(crate) agent_id: Mutex<String>,
    /// This registration and when the registry last confirmed it: which launches may run.
    pub(crate) fence: fence::Fence,
    pub(crate) work_dir: PathBuf,
    pub(crate) isolator: isolation::Isolator,
    pub(crate) grace: Duration,
    /// Run each task as its user (`--switch-user`).
    pub(crate) switch_user: bool,
    pub(crate) updates: Arc<status::StatusUpdateManager>,
    pub(crate) tasks: Mutex<HashMap<(String, String), Running>>,
    /// The address the broker reaches this agent at (the `agent` label of its series).
    pub(crate) address: String,
    /// This node's hostname.
    pub(crate) hostname: String,
    /// Frameworks' own executors.
    pub(crate) executors: executors::Executors,
    /// `ip:port` of the executor API (`MESOS_AGENT_ENDPOINT`).
    pub(crate) executor_endpoint: String,
    /// How long a started executor has to subscribe.
    pub(crate) executor_registration_timeout: Duration,
    /// The broker replicas (executors' messages and exits go there).
    pub(crate) brokers: allot_common::grpc::Replicas,
    /// The status update stream to the leading broker, while open ([`uplink`]).
    pub(crate) uplink: Arc<uplink::Uplink>,
    /// Cancelled when this agent process stops serving (`run` returned or was dropped): a command whose
    /// start-up is still under way on a blocking thread is then not started (see `executor::Launch::stopped`).
    pub(crate) stopped: CancellationToken,
    pub(crate) total: Resources,
    /// Principals who may read every sandbox (`--credentials`).
    pub(crate) credentials: Option<Arc<allot_server::credentials::Credentials>>,
    /// The task reaper that starts command tasks ([`reaper`]); `None` where its program is not found (command
    /// tasks then run under the wrapper shell, see [`executor`]).
    pub(crate) reaper: Option<Arc<reaper::Client>>,
}

impl Agent {
    /// One sandbox collection ([`gc`]): what is live is read here, the file system is walked on a blocking
    /// thread.
    async fn collect_sandboxes(self: &Arc<Self>, delay: Duration, headroom: f64) {
        let mut live = gc::Live::default();
        live.tasks
            .extend(self.tasks.lock().expect("tasks poisoned").keys().cloned());
        live.tasks.extend(self.updates.streams());
        live.sandboxes
            .extend(self.executors.all().iter().map(|c| c.sandbox.clone()));
        let work_dir = self.work_dir.clone();
        let done = tokio::task::spawn_blocking(move || {
            let usage = gc::disk_usage(&work_dir).unwrap_or(0.0);
            let age = gc::max_age(delay, headroom, usage);
            (
                usage,
                age,
                gc::collect(&work_dir, &live, age, std::time::SystemTime::now()),
            )
        })
        .await;
        if let Ok((usage, age, removed)) = done
            && removed > 0
        {
            tracing::info!(
                removed,
                disk_usage = usage,
                max_age_s = age.as_secs(),
                "finished sandboxes removed"
            );
        }
    }

    /// The broker's acknowledgements of status updates (by call or down the [`uplink`]): each acknowledged
    /// update leaves the status update manager, which sends its task's next one; an executor hears of its
    /// own updates' (its ACKNOWLEDGED event). Unknown or stale acknowledgements are ignored.
    pub(crate) fn acknowledged(
        &self,
        acknowledgements: Vec<allot_proto::agent::StatusUpdateAcknowledgement>,
    ) {
        for ((fw, task), uuid, state) in self.updates.acknowledge_all(acknowledgements) {
            M.updates.with_label_values(&[state.as_str_name()]).inc();
            for c in self.executors.of(&fw, "") {
                c.acknowledged(&task, &uuid, state.is_terminal());
            }
        }
    }

    /// The AgentID (empty until the first registration).
    pub fn id(&self) -> String {
        self.agent_id.lock().expect("agent id poisoned").clone()
    }

    /// Number of tasks running or still reporting.
    pub fn running(&self) -> usize {
        self.tasks.lock().expect("tasks poisoned").len()
    }

    /// The executor's view of task `task` of framework `framework_id`: its sandbox, kill grace period (the
    /// task's own, else the agent's) and checkpoint directory.
    pub(crate) fn launch(
        &self,
        framework_id: &str,
        agent_id: &str,
        task: allot_proto::common::TaskInfo,
    ) -> executor::Launch {
        let key = (framework_id.to_string(), task.task_id.clone());
        executor::Launch {
            framework_id: framework_id.to_string(),
            agent_id: agent_id.to_string(),
            // A task of a framework's own executor lives in the executor's directory (its runs below it).
            sandbox: match &task.executor {
                Some(e) => self
                    .work_dir
                    .join("executors")
                    .join(framework_id)
                    .join(&e.executor_id),
                None => executor::sandbox_path(&self.work_dir, framework_id, &task.task_id),
            },
            grace: if task.kill_grace_period > 0.0 {
                Duration::from_secs_f64(task.kill_grace_period)
            } else {
                self.grace
            },
            checkpoint: self.updates.task_dir(&key),
            user: self.switch_user.then(|| {
                task.command
                    .as_ref()
                    .map(|c| c.user.clone())
                    .unwrap_or_default()
            }),
            task,
            kill_reason: Default::default(),
            stopped: self.stopped.clone(),
            reaper: self.reaper.clone(),
        }
    }

    /// Runs task `l` through `run` (an executor future, given the launch, the token that kills the task, and
    /// the task's [`executor::TaskUpdates`]) on its own tokio task: the task is one of this agent's (its
    /// resources in use, KillTask cancels the token) until `run` returns, and each update it pushes goes to the
    /// status update manager in order, with the task's sandbox and the launch's trace `context`. Returns
    /// `false`, running nothing, if the task is already here.
    pub(crate) fn supervise<F>(
        self: &Arc<Self>,
        l: executor::Launch,
        context: HashMap<String, String>,
        run: impl FnOnce(executor::Launch, CancellationToken, executor::TaskUpdates) -> F,
    ) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let key = (l.framework_id.clone(), l.task.task_id.clone());
        let kill = CancellationToken::new();
        {
            let mut tasks = self.tasks.lock().expect("tasks poisoned");
            if tasks.contains_key(&key) {
                return false;
            }
            let resources =
                allot_common::convert::resources_from_proto(&l.task.resources).unwrap_or_default();
            tasks.insert(
                key.clone(),
                Running {
                    kill: kill.clone(),
                    kill_reason: l.kill_reason.clone(),
                    resources,
                },
            );
        }
        self.refresh_usage();
        let updates = executor::TaskUpdates {
            key: key.clone(),
            manager: self.updates.clone(),
            sandbox: Arc::from(l.sandbox.display().to_string()),
            context: Arc::new(context),
        };
        let running = run(l, kill, updates);
        let agent = self.clone();
        tokio::spawn(async move {
            running.await;
            agent.tasks.lock().expect("tasks poisoned").remove(&key);
            agent.refresh_usage();
        });
        true
    }

    /// Sets the agent's series from its tasks.
    pub(crate) fn refresh_usage(&self) {
        let (n, used) = {
            let tasks = self.tasks.lock().expect("tasks poisoned");
            let mut used = Resources::new();
            for t in tasks.values() {
                used.add(&t.resources);
            }
            (tasks.len(), used)
        };
        M.running.with_label_values(&[&self.address]).set(n as f64);
        for (name, milli) in self.total.scalars() {
            M.resources
                .with_label_values(&[&self.address, name, "total"])
                .set(milli as f64 / 1000.0);
            M.resources
                .with_label_values(&[&self.address, name, "used"])
                .set(used.scalar_milli(name) as f64 / 1000.0);
        }
    }
}

/// Delivers `due` status updates to the broker in order: as one message up the agent's status update stream
/// while it is open ([`uplink`]), else by call: one `Update` call for a single update, one `UpdateBatch` call
/// for several (the heads of many tasks' streams, due together under load: one call instead of one per update,
/// issue 24). Each update is a `status update` span whose parent is the task's launch (its W3C context), so the
/// update joins the trace of the ACCEPT that launched the task; on the stream and in a batch each update
/// carries its span's context in `trace_context`. Returns the updates the broker refused as malformed (and
/// those without IDs, which are never sent).
///
/// # Errors
/// The failed call's status; the manager re-sends every head after a backoff.
async fn deliver(
    brokers: allot_common::grpc::Replicas,
    uplink: Arc<uplink::Uplink>,
    due: Vec<status::Outgoing>,
) -> Result<Vec<status::Refused>, tonic::Status> {
    use tracing::Instrument as _;
    let mut refused = Vec::new();
    let mut batch = Vec::with_capacity(due.len());
    for o in due {
        let Some(status) = o.request.status.as_ref() else {
            continue;
        };
        if status.task_id.is_empty() || status.framework_id.is_empty() {
            tracing::warn!(task = %status.task_id, "a status update without task or framework ID; dropped");
            refused.extend(o.refused());
            continue;
        }
        let span = allot_common::status_update_span(status, "internal");
        allot_telemetry::propagation::set_parent_from_map(&span, &o.context);
        batch.push((o, span));
    }
    if batch.is_empty() {
        return Ok(refused);
    }
    // Each update with its own span's context, for the stream and for a batch.
    let traced = |batch: &[(status::Outgoing, tracing::Span)]| -> Vec<_> {
        batch
            .iter()
            .map(|(o, span)| {
                let mut request = o.request.clone();
                request.trace_context = allot_telemetry::propagation::to_map(span);
                request
            })
            .collect()
    };
    let mut unsent = None;
    if uplink.is_open() {
        match uplink.send(traced(&batch)) {
            Ok(()) => return Ok(refused),
            Err(updates) => unsent = Some(updates),
        }
    }
    let mut client = StatusUpdatesClient::new(brokers.channel());
    let result = match batch.len() {
        1 => {
            let (o, span) = batch.pop().expect("one");
            let dropped = o.refused();
            match client.update(o.request).instrument(span).await {
                Err(e) if e.code() == tonic::Code::InvalidArgument => {
                    tracing::warn!(error = %e.message(), "broker refused a status update; dropped");
                    refused.extend(dropped);
                    Ok(())
                }
                r => r.map(|_| ()),
            }
        }
        n => {
            let updates = unsent.unwrap_or_else(|| traced(&batch));
            let span = tracing::info_span!("status updates", allot.updates = n);
            client
                .update_batch(allot_proto::agent::StatusUpdateBatchRequest { updates })
                .instrument(span)
                .await
                .map(|_| ())
        }
    };
    if let Err(e) = result {
        M.retries.inc();
        // A standby broker names the leader: the re-send goes there.
        brokers.failed(&e);
        return Err(e);
    }
    Ok(refused)
}

/// After a restart (Mesos' agent recovery): every task that an earlier agent process left unfinished (its
/// checkpointed stream does not end in a terminal update) is recovered from its checkpoint directory (see
/// [`executor`]). A task still running is reattached to: watched until it ends, killable, its resources in
/// use. A task that ended while the agent was down is reported from the exit status it recorded; one that left
/// none, TASK_FAILED with reason REASON_AGENT_RESTARTED. The final updates go through the status update
/// manager like any other, after the earlier ones still unacknowledged.
fn recover_tasks(agent: &Arc<Agent>) {
    for ((fw, task_id), latest) in agent.updates.unfinished() {
        let key = (fw.clone(), task_id.clone());
        let dir = agent.updates.task_dir(&key);
        let checkpointed = dir
            .as_deref()
            .map(executor::checkpointed)
            .unwrap_or_default();
        let task = checkpointed
            .task
            .unwrap_or_else(|| allot_proto::common::TaskInfo {
                task_id: task_id.clone(),
                ..Default::default()
            });
        let agent_id = latest.map_or_else(|| task.agent_id.clone(), |l| l.agent_id);
        let launch = agent.launch(&fw, &agent_id, task);
        let found = dir
            .as_deref()
            .map_or(executor::Recovered::Ended(executor::Exit::Unknown), |d| {
                executor::recover(d, checkpointed.pid, &fw, &task_id)
            });
        tracing::info!(framework = %fw, task = %task_id, ?found, "recovering a task left by an earlier agent process");
        let isolator = agent.isolator.clone();
        if launch.task.executor.is_some() {
            let me = agent.clone();
            agent.supervise(launch, HashMap::new(), |l, kill, tx| {
                me.recover_executor_task(l, kill, tx)
            });
            continue;
        }
        match found {
            executor::Recovered::Running(pid) => {
                agent.supervise(launch, HashMap::new(), |l, kill, tx| {
                    executor::watch_task(l, pid, isolator, kill, tx)
                })
            }
            executor::Recovered::Ended(exit) => {
                agent.supervise(launch, HashMap::new(), |l, _, tx| {
                    executor::report_ended(l, isolator, exit, tx)
                })
            }
        };
    }
}

fn default_resources() -> Resources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let mem_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map(|kib| (kib / 1024.0 - 1024.0).max(256.0))
        .unwrap_or(1024.0)
        .floor();
    format!("cpus:{cpus};mem:{mem_mib};disk:10240;ports:[31000-32000]")
        .parse()
        .expect("default resources parse")
}

fn parse_attributes(s: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once(':')
            .ok_or_else(|| Error::Config(format!("attribute '{part}' is not key:value")))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// What a node registers: its `AgentInfo` (address, hostname, resources with reservations, attributes), its
/// unreserved resources and its static reservations by role.
pub(crate) struct Node {
    pub(crate) info: AgentInfo,
    pub(crate) resources: Resources,
    pub(crate) reserved: BTreeMap<String, Resources>,
}

impl Node {
    /// From the flags (`--resources`, `--attributes`, `--hostname`, `--advertise`) and the bound listener.
    fn of(config: &Config, listener: &tokio::net::TcpListener) -> Result<Node, Error> {
        let (resources, reserved) = match &config.resources {
            Some(s) => {
                allot_resources::parse_reservations(s).map_err(|e| Error::Config(e.to_string()))?
            }
            None => (default_resources(), Default::default()),
        };
        let attributes = parse_attributes(&config.attributes)?;
        let address = match &config.advertise {
            Some(a) => a.clone(),
            None => listener
                .local_addr()
                .map(|a| a.to_string())
                .map_err(|e| Error::Config(format!("cannot read the listen address: {e}")))?,
        };
        let hostname = config.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        });
        let mut all = resources_to_proto(&resources);
        for (role, r) in &reserved {
            all.extend(allot_common::convert::piece_to_proto(
                &Resources::new(),
                r,
                role,
            ));
        }
        Ok(Node {
            info: AgentInfo {
                hostname,
                address,
                resources: all,
                attributes: attributes.into_iter().collect(),
                // Known once the executor API is bound (`run`).
                http_address: String::new(),
            },
            resources,
            reserved,
        })
    }
}

/// The address others reach the agent's HTTP endpoint at: `bound` (`ip:port`), or, bound to every address
/// (`0.0.0.0`, `::`), the host of `advertised` (the gRPC address the broker uses) with its port.
fn advertised_http(bound: &str, advertised: &str) -> String {
    match bound.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let host = advertised.rsplit_once(':').map_or(advertised, |(h, _)| h);
            format!("{host}:{}", a.port())
        }
        _ => bound.to_string(),
    }
}

/// Runs the agent on `listener` until `shutdown` resolves. On shutdown its tasks go on running for the next
/// agent process to reattach to, and the agent stops at once (every update is checkpointed and goes out after
/// the next start). With `--kill-tasks-on-stop` they are killed, and their final updates are given the grace
/// period plus five seconds to be acknowledged, while the server still takes the acknowledgements.
///
/// # Errors
/// [`Error`] for bad configuration, an unusable work directory, required isolation that is missing, or a
/// failing gRPC server.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    if let Some(n) = config.simulate {
        return sim::run(config, n, listener, shutdown).await;
    }
    let node = Node::of(&config, &listener)?;
    let dialer = config.tls.open(&format!("agent-{}", node.info.hostname))?;
    let _metrics = config.metrics.serve().await?;
    let work_dir = std::path::absolute(&config.work_dir).unwrap_or(config.work_dir.clone());
    std::fs::create_dir_all(&work_dir).map_err(|source| Error::WorkDir {
        path: work_dir.display().to_string(),
        source,
    })?;
    let id_file = work_dir.join("agent_id");
    let checkpointed = std::fs::read_to_string(&id_file)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let Node {
        mut info,
        resources,
        reserved,
    } = node;
    let address = info.address.clone();
    let cgroup_parent = format!(
        "{}/{}",
        config.cgroup_root.trim_matches('/'),
        address.replace([':', '.'], "_")
    );
    let isolator = isolation::detect(config.isolation, &cgroup_parent)?;
    let meta = work_dir.join("meta");
    let updates = Arc::new(
        status::StatusUpdateManager::recover(&meta, config.status_update_retry_interval).map_err(
            |source| Error::WorkDir {
                path: meta.display().to_string(),
                source,
            },
        )?,
    );
    let brokers = dialer.replicas(&config.broker)?;
    let uplink = Arc::new(uplink::Uplink::default());
    // Aborted with `run`: a crashed agent sends nothing more (its checkpoint has what is left).
    let sending = {
        let (brokers, uplink) = (brokers.clone(), uplink.clone());
        updates.start(move |due| deliver(brokers.clone(), uplink.clone(), due))
    };
    let (executor_listener, executor_endpoint) =
        bind_executor_api(&config.executor_listen, &work_dir.join("executor_endpoint")).await?;
    info.http_address = advertised_http(&executor_endpoint, &info.address);
    let agent = Arc::new(Agent {
        agent_id: Mutex::new(checkpointed.clone()),
        fence: fence::Fence::default(),
        work_dir: work_dir.clone(),
        isolator,
        grace: config.kill_grace_period,
        switch_user: config.switch_user,
        updates: updates.clone(),
        tasks: Mutex::new(HashMap::new()),
        address: address.clone(),
        hostname: info.hostname.clone(),
        executors: Default::default(),
        executor_endpoint,
        executor_registration_timeout: config.executor_registration_timeout,
        brokers,
        uplink,
        total: resources.clone(),
        stopped: CancellationToken::new(),
        credentials: config.credentials.open()?,
        reaper: reaper::find_program().map(|p| Arc::new(reaper::Client::new(p, &work_dir))),
    });
    // However `run` ends (returns, or is dropped as a crashed process would be), the agent has stopped.
    let _stopped = agent.stopped.clone().drop_guard();
    agent.recover_executors();
    recover_tasks(&agent);
    // Served until `run` returns (aborted with it): executors reach their agent here.
    let _executor_api = {
        let router = executor_api::router(agent.clone()).merge(files::router(agent.clone()));
        AbortOnDrop(tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
            if let Err(e) = axum::serve(executor_listener, service).await {
                tracing::error!(error = %e, "the executor API stopped");
            }
        }))
    };
    // Sandbox collection, until `run` returns (aborted with it).
    let _gc = {
        let agent = agent.clone();
        let (delay, headroom, every) = (
            config.gc_delay,
            config.gc_disk_headroom,
            config.disk_watch_interval,
        );
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                agent.collect_sandboxes(delay, headroom).await;
            }
        }))
    };
    agent.refresh_usage();
    tracing::info!(%address, %resources, ?reserved, isolation = agent.isolator.name(), reaper = agent.reaper.is_some(), work_dir = %work_dir.display(), "agent starting");

    let registry = dialer.replicas(&config.registry)?;
    // Aborted when `run` returns or is dropped: a crashed agent must stop heartbeating.
    let liveness = {
        let agent = agent.clone();
        AbortOnDrop(tokio::spawn(async move {
            let registration = Registration {
                id: &agent.agent_id,
                id_file: Some(id_file),
                fence: Some(&agent.fence),
            };
            keep_registered(registry, info, registration, None).await
        }))
    };
    // The status update stream to the broker, until `run` returns (aborted with it).
    let _uplink = AbortOnDrop(tokio::spawn(uplink::keep_open(agent.clone())));
    let router = allot_server::grpc::server()
        .add_service(allot_server::grpc::health().await)
        .add_service(allot_server::grpc::probe())
        .add_service(
            allot_proto::agent::agent_server::AgentServer::with_interceptor(
                grpc::AgentService(agent.clone()),
                grpc::broker_only,
            ),
        );
    // The server stops only after the drain, so that acknowledgements still reach the agent meanwhile.
    let stopping = {
        let agent = agent.clone();
        async move {
            shutdown.await;
            if config.kill_tasks_on_stop {
                for running in agent.tasks.lock().expect("tasks poisoned").values() {
                    running.kill.cancel();
                }
                for executor in agent.executors.all() {
                    executor.shutdown("the agent is stopping (--kill-tasks-on-stop)");
                }
                // The tasks end within their grace periods; their final updates get a few seconds more.
                let within = agent.grace + Duration::from_secs(5);
                sending.drain(within, || agent.running() > 0).await;
            } else {
                // Nothing is waited for: every update is checkpointed and goes out after the next start.
                tracing::info!(
                    tasks = agent.running(),
                    "stopping; the tasks go on running for the next agent process"
                );
                sending.drain(Duration::ZERO, || false).await;
            }
        }
    };
    let result = allot_server::grpc::serve(router, listener, stopping, dialer.material()).await;
    drop(liveness);
    result?;
    Ok(())
}

/// Binds the executor API on `listen`; with port 0, on the endpoint checkpointed in `file` by an earlier
/// agent process if it is free (its executors subscribe there again), else on a free port, checkpointed.
/// Returns the listener and its `ip:port`.
///
/// # Errors
/// [`Error::Config`] when `listen` cannot be bound.
async fn bind_executor_api(
    listen: &str,
    file: &std::path::Path,
) -> Result<(tokio::net::TcpListener, String), Error> {
    let bind = |addr: String| async move {
        tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on --executor-listen {addr}: {e}")))
    };
    let ephemeral = listen.ends_with(":0");
    let earlier = std::fs::read_to_string(file)
        .ok()
        .map(|s| s.trim().to_string());
    let listener = match (ephemeral, earlier) {
        (true, Some(addr)) if !addr.is_empty() => {
            // The last agent process's socket may take a moment to go.
            let mut tries = 0;
            loop {
                match bind(addr.clone()).await {
                    Ok(l) => break l,
                    Err(_) if tries < 10 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "cannot bind the executor API where the last agent process served it; running executors will not find this agent");
                        break bind(listen.to_string()).await?;
                    }
                }
            }
        }
        _ => bind(listen.to_string()).await?,
    };
    let endpoint = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| listen.to_string());
    if let Err(e) = std::fs::write(file, &endpoint) {
        tracing::warn!(file = %file.display(), error = %e, "cannot checkpoint the executor API's endpoint");
    }
    Ok((listener, endpoint))
}

/// Where [`keep_registered`] keeps what the registry answers.
pub(crate) struct Registration<'a> {
    /// The AgentID: the one to register as (empty: a new one), then the one the registry gave.
    pub id: &'a Mutex<String>,
    /// Where the AgentID is checkpointed, if anywhere.
    pub id_file: Option<PathBuf>,
    /// The launch fence to keep up to date, if any (simulated agents have none).
    pub fence: Option<&'a fence::Fence>,
}

/// Registers (with the AgentID in `at.id`, if any), records the ID in `at.id` and in `at.id_file` (when
/// given), then heartbeats, telling `at.fence` of each registration and each answered heartbeat;
/// re-registers as the same agent whenever the registry says the lease lapsed. Calls go to the leading
/// replica of `registry` (a standby names it). `admission`, a permit of whoever limits how many agents
/// register at once, is released after the first registration.
pub(crate) async fn keep_registered(
    registry: allot_common::grpc::Replicas,
    info: AgentInfo,
    at: Registration<'_>,
    mut admission: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let Registration { id, id_file, fence } = at;
    let first = Duration::from_millis(200);
    let mut delays = allot_common::retry_delays(first);
    loop {
        let req = RegisterAgentRequest {
            info: Some(info.clone()),
            agent_id: id.lock().expect("agent id poisoned").clone(),
        };
        let sent = std::time::Instant::now();
        let resp = match registry
            .call(|ch| {
                let req = req.clone();
                async move { RegistryClient::new(ch).register_agent(req).await }
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e.message(), ?delay, "cannot register; retrying");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        delays = allot_common::retry_delays(first);
        drop(admission.take());
        *id.lock().expect("agent id poisoned") = resp.agent_id.clone();
        if let Some(fence) = fence {
            let timeout = Duration::from_secs_f64(resp.agent_timeout.clamp(0.1, 3600.0));
            fence.registered(resp.registration, timeout, sent);
        }
        if let Some(file) = &id_file
            && let Err(e) = std::fs::write(file, &resp.agent_id)
        {
            tracing::warn!(error = %e, file = %file.display(), "cannot checkpoint the AgentID");
        }
        if id_file.is_some() {
            tracing::info!(agent_id = %resp.agent_id, "registered");
        } else {
            tracing::debug!(agent_id = %resp.agent_id, "registered");
        }
        let interval = Duration::from_secs_f64(resp.heartbeat_interval.clamp(0.1, 60.0));
        loop {
            tokio::time::sleep(interval).await;
            let beat = HeartbeatRequest {
                agent_id: resp.agent_id.clone(),
            };
            let sent = std::time::Instant::now();
            match registry
                .call(|ch| {
                    let beat = beat.clone();
                    async move { RegistryClient::new(ch).heartbeat(beat).await }
                })
                .await
            {
                Ok(_) => {
                    if let Some(fence) = fence {
                        fence.confirmed(sent);
                    }
                }
                Err(e) if e.code() == tonic::Code::NotFound => {
                    tracing::warn!(error = %e.message(), "lease lapsed; re-registering");
                    break;
                }
                Err(e) => tracing::warn!(error = %e.message(), "heartbeat failed"),
            }
        }
    }
}
