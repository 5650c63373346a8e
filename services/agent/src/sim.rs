//! Simulated agents: many agents in one process, for testing the control plane at scale on one machine.
//!
//! `allot-agent --simulate N` registers N agents with the registry, each with the resources of `--resources`,
//! its own AgentID (`<hostname>-sim<i>`, so a restarted simulator re-registers the same agents) and its own
//! heartbeats, over real gRPC. All N share this process's listener: the offer-broker reaches every one of them
//! at the same address, and a launch is routed by its tasks' `agent_id`.
//!
//! Tasks are not executed. A launched task is reported TASK_RUNNING at once and TASK_FINISHED after its
//! duration: N seconds when its command is `sleep N`, `--sim-task-duration` otherwise; a KILL ends it with
//! TASK_KILLED. (A Mesos executor may report TASK_RUNNING without TASK_STARTING; the simulator does, to spend
//! the control plane's effort on the updates that matter.)
//!
//! Status updates go through one [`StatusUpdateManager`] for the whole process (in memory, not checkpointed):
//! the heads of every task's stream that are due go in one `UpdateBatch` call, and each update is re-sent until
//! the framework's acknowledgement comes back through the broker (at-least-once, in order per task, as for a
//! real agent).

use crate::status::{Outgoing, Refused, StatusUpdateManager, TaskKey};
use crate::{Error, Node, Registration, keep_registered};
use allot_common::AbortOnDrop;
use allot_proto::agent::{
    AcknowledgeStatusUpdatesRequest, AcknowledgeStatusUpdatesResponse, KillTaskRequest,
    KillTaskResponse, LaunchTasksRequest, LaunchTasksResponse, ReconcileTasksRequest,
    ReconcileTasksResponse, StatusUpdateBatchRequest, agent_server,
    status_updates_client::StatusUpdatesClient,
};
use allot_proto::common::{StatusSource, TaskState, TaskStatus};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// How many simulated agents register at the same time.
const REGISTER_CONCURRENCY: usize = 64;

/// The simulator's series: `allot_sim_agents_registered`, `allot_sim_tasks_running`,
/// `allot_sim_status_updates_total` (acknowledged by the framework) and `allot_sim_update_batches_total`
/// (`UpdateBatch` calls the broker answered).
struct Metrics {
    registered: allot_telemetry::metrics::prometheus::Gauge,
    running: allot_telemetry::metrics::prometheus::Gauge,
    updates: allot_telemetry::metrics::prometheus::IntCounter,
    batches: allot_telemetry::metrics::prometheus::IntCounter,
}

static M: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(|| {
    use allot_telemetry::metrics::{counter, gauge};
    Metrics {
        registered: gauge(
            "allot_sim_agents_registered",
            "Simulated agents that have registered at least once",
        ),
        running: gauge(
            "allot_sim_tasks_running",
            "Simulated tasks running on this process's agents",
        ),
        updates: counter(
            "allot_sim_status_updates_total",
            "Status updates of simulated tasks the framework acknowledged",
        ),
        batches: counter(
            "allot_sim_update_batches_total",
            "UpdateBatch calls the broker answered with OK",
        ),
    }
});

/// Sends `due` updates to the broker in one `UpdateBatch` call; returns them all as refused if the broker
/// refused the batch as malformed.
///
/// # Errors
/// The call's status when the broker did not answer.
async fn send_batch(
    brokers: allot_common::grpc::Replicas,
    due: Vec<Outgoing>,
) -> Result<Vec<Refused>, Status> {
    let mut broker = StatusUpdatesClient::new(brokers.channel());
    let refused: Vec<Refused> = due.iter().filter_map(Outgoing::refused).collect();
    let req = StatusUpdateBatchRequest {
        updates: due.into_iter().map(|o| o.request).collect(),
    };
    match broker.update_batch(req).await {
        Ok(_) => {
            M.batches.inc();
            Ok(Vec::new())
        }
        Err(e) if e.code() == tonic::Code::InvalidArgument => {
            tracing::warn!(error = %e.message(), updates = refused.len(), "broker refused a batch of status updates; dropped");
            Ok(refused)
        }
        Err(e) => {
            brokers.failed(&e);
            Err(e)
        }
    }
}

/// The simulated agents of this process.
struct Sim {
    /// The AgentIDs this process simulates.
    agents: HashSet<String>,
    /// Running tasks by `(framework_id, task_id)`: the agent each runs on and its launch number (a task killed
    /// and launched again is a new launch, whose end is not the old one's).
    tasks: Mutex<HashMap<TaskKey, (String, u64)>>,
    /// When each launch finishes, earliest first: one timer for every simulated task (a tokio task and a timer
    /// of its own per task cost the simulator more than the control plane it is there to load).
    ends: Mutex<BinaryHeap<Reverse<(Instant, u64, TaskKey)>>>,
    /// Wakes the timer when a launch ends earlier than every other.
    earlier: Notify,
    launches: AtomicU64,
    updates: Arc<StatusUpdateManager>,
    duration: Duration,
}

fn status(fw: &str, agent: &str, task: &str, state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        task_id: task.to_string(),
        state: state as i32,
        message: message.to_string(),
        source: StatusSource::SourceExecutor as i32,
        agent_id: agent.to_string(),
        framework_id: fw.to_string(),
        timestamp: allot_common::now_secs(),
        uuid: allot_common::new_status_uuid(),
        ..Default::default()
    }
}

/// How long a simulated task runs: N seconds for a command `sleep N`, else `default`.
fn duration_of(command: &str, default: Duration) -> Duration {
    command
        .trim()
        .strip_prefix("sleep ")
        .and_then(|n| n.trim().parse::<f64>().ok())
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
}

impl Sim {
    fn push(&self, status: TaskStatus) {
        // In memory only: this cannot fail.
        let _ = self.updates.push(status, "", &HashMap::new());
    }

    /// Ends launch `launch` of task `key` with `state` if it is still running. The update is pushed before
    /// the task leaves the map, so that reconciliation always finds it somewhere.
    fn end(&self, key: &TaskKey, launch: Option<u64>, state: TaskState, message: &str) -> bool {
        let mut tasks = self.tasks.lock().expect("tasks poisoned");
        let Some((agent, running)) = tasks.get(key) else {
            return false;
        };
        if launch.is_some_and(|l| l != *running) {
            return false;
        }
        self.push(status(&key.0, agent, &key.1, state, message));
        tasks.remove(key);
        M.running.dec();
        true
    }

    /// Finishes every launch whose duration is up, until the process ends.
    async fn finish_tasks(self: Arc<Self>) {
        loop {
            let woken = self.earlier.notified();
            let now = Instant::now();
            let (due, next) = {
                let mut ends = self.ends.lock().expect("ends poisoned");
                let mut due = Vec::new();
                while ends.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
                    let Reverse((_, launch, key)) = ends.pop().expect("peeked");
                    due.push((launch, key));
                }
                (due, ends.peek().map(|Reverse((at, _, _))| *at))
            };
            for (launch, key) in due {
                self.end(
                    &key,
                    Some(launch),
                    TaskState::TaskFinished,
                    "simulated task finished",
                );
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = woken => {}
                    }
                }
                None => woken.await,
            }
        }
    }
}

struct SimService(Arc<Sim>);

#[tonic::async_trait]
impl agent_server::Agent for SimService {
    async fn framework_to_executor(
        &self,
        _: Request<allot_proto::agent::FrameworkToExecutorRequest>,
    ) -> Result<Response<allot_proto::agent::FrameworkToExecutorResponse>, Status> {
        Err(Status::not_found(
            "simulated agents run no executors of frameworks' own",
        ))
    }

    async fn shutdown_executor(
        &self,
        _: Request<allot_proto::agent::ShutdownExecutorRequest>,
    ) -> Result<Response<allot_proto::agent::ShutdownExecutorResponse>, Status> {
        Ok(Response::new(
            allot_proto::agent::ShutdownExecutorResponse {},
        ))
    }

    async fn launch_tasks(
        &self,
        request: Request<LaunchTasksRequest>,
    ) -> Result<Response<LaunchTasksResponse>, Status> {
        let r = request.into_inner();
        let sim = &self.0;
        crate::grpc::check_launch(
            &r,
            |a| sim.agents.contains(a),
            "a simulator of other agents",
        )?;
        let mut ends = Vec::with_capacity(r.tasks.len());
        for task in r.tasks {
            let key = (r.framework_id.clone(), task.task_id.clone());
            let launch = sim.launches.fetch_add(1, Ordering::Relaxed);
            {
                let mut tasks = sim.tasks.lock().expect("tasks poisoned");
                if tasks.contains_key(&key) || sim.updates.has_seen(&key) {
                    tracing::warn!(task = %task.task_id, "launch of a known task ignored");
                    continue;
                }
                sim.push(status(
                    &key.0,
                    &task.agent_id,
                    &key.1,
                    TaskState::TaskRunning,
                    "simulated",
                ));
                tasks.insert(key.clone(), (task.agent_id, launch));
            }
            M.running.inc();
            let command = task
                .command
                .as_ref()
                .map(|c| c.value.as_str())
                .unwrap_or("");
            let at = Instant::now() + duration_of(command, sim.duration);
            ends.push(Reverse((at, launch, key)));
        }
        // The launch's ends join the timer's heap under one lock; the timer is woken if one of them comes first.
        let first = |heap: &BinaryHeap<_>| heap.peek().map(|Reverse((at, _, _))| *at);
        let mut heap = sim.ends.lock().expect("ends poisoned");
        let before = first(&heap);
        heap.extend(ends);
        let earlier = first(&heap).is_some_and(|at| before.is_none_or(|b| at < b));
        drop(heap);
        if earlier {
            sim.earlier.notify_one();
        }
        Ok(Response::new(LaunchTasksResponse {}))
    }

    async fn acknowledge_status_updates(
        &self,
        request: Request<AcknowledgeStatusUpdatesRequest>,
    ) -> Result<Response<AcknowledgeStatusUpdatesResponse>, Status> {
        let acked = self
            .0
            .updates
            .acknowledge_all(request.into_inner().acknowledgements);
        M.updates.inc_by(acked.len() as u64);
        Ok(Response::new(AcknowledgeStatusUpdatesResponse {}))
    }

    async fn reconcile_tasks(
        &self,
        request: Request<ReconcileTasksRequest>,
    ) -> Result<Response<ReconcileTasksResponse>, Status> {
        let sim = &self.0;
        let tasks = sim.tasks.lock().expect("tasks poisoned");
        Ok(Response::new(crate::grpc::reconcile(
            &sim.updates,
            |k| tasks.contains_key(k),
            request.into_inner().tasks,
        )))
    }

    async fn kill_task(
        &self,
        request: Request<KillTaskRequest>,
    ) -> Result<Response<KillTaskResponse>, Status> {
        let r = request.into_inner();
        let key = (r.framework_id, r.task_id);
        if self
            .0
            .end(&key, None, TaskState::TaskKilled, "simulated task killed")
        {
            Ok(Response::new(KillTaskResponse {}))
        } else {
            Err(Status::not_found(format!(
                "task {} is not running on this simulator",
                key.1
            )))
        }
    }
}

/// Runs `n` simulated agents on `listener` until `shutdown` resolves.
///
/// # Errors
/// [`Error`] for bad `--resources`/`--attributes` or a failing gRPC server.
pub async fn run(
    config: crate::Config,
    n: usize,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let node = Node::of(&config, &listener)?;
    let _metrics = config.metrics.serve().await?;
    let ids: Vec<String> = (0..n)
        .map(|i| {
            let host: String = node
                .info
                .hostname
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("{host}-sim{i}")
        })
        .collect();
    let updates = Arc::new(StatusUpdateManager::in_memory(
        config.status_update_retry_interval,
    ));
    let dialer = config.tls.open(&format!("agent-{}", node.info.hostname))?;
    let brokers = dialer.replicas(&config.broker)?;
    let sending = updates.start(move |due| send_batch(brokers.clone(), due));
    let sim = Arc::new(Sim {
        agents: ids.iter().cloned().collect(),
        tasks: Mutex::new(HashMap::new()),
        ends: Mutex::new(BinaryHeap::new()),
        earlier: Notify::new(),
        launches: AtomicU64::new(0),
        updates: updates.clone(),
        duration: config.sim_task_duration,
    });
    let finishing = AbortOnDrop(tokio::spawn(sim.clone().finish_tasks()));
    tracing::info!(agents = n, address = %node.info.address, resources = %node.resources, "simulated agents starting");
    let registry = dialer.replicas(&config.registry)?;
    let admission = Arc::new(tokio::sync::Semaphore::new(REGISTER_CONCURRENCY));
    let liveness = {
        let (info, admission) = (node.info.clone(), admission.clone());
        AbortOnDrop(tokio::spawn(async move {
            let mut agents = tokio::task::JoinSet::new();
            for (i, id) in ids.into_iter().enumerate() {
                let permit = admission.clone().acquire_owned().await.expect("open");
                let mut info = info.clone();
                info.hostname = format!("{}-sim{i}", info.hostname);
                let registry = registry.clone();
                agents.spawn(async move {
                    let id = Mutex::new(id);
                    let at = Registration {
                        id: &id,
                        id_file: None,
                        fence: None,
                    };
                    keep_registered(registry, info, at, Some(permit)).await
                });
                if i % 1000 == 999 {
                    tracing::info!(agents = i + 1, "simulated agents registering");
                }
            }
            // Wait until the last permits come back: every agent registered once.
            let _all = admission
                .acquire_many(REGISTER_CONCURRENCY as u32)
                .await
                .expect("open");
            M.registered.set(n as f64);
            tracing::info!(agents = n, "simulated agents registered");
            while agents.join_next().await.is_some() {}
        }))
    };
    let router = allot_server::grpc::server()
        .add_service(allot_server::grpc::health().await)
        .add_service(allot_server::grpc::probe())
        .add_service(agent_server::AgentServer::with_interceptor(
            SimService(sim.clone()),
            crate::grpc::broker_only,
        ));
    // Report the tasks still running as killed, and give the updates five seconds to drain while the server
    // still takes their acknowledgements.
    let stopping = async move {
        shutdown.await;
        drop(finishing);
        let running: Vec<TaskKey> = sim
            .tasks
            .lock()
            .expect("tasks poisoned")
            .keys()
            .cloned()
            .collect();
        for key in running {
            sim.end(&key, None, TaskState::TaskKilled, "simulated task killed");
        }
        sending.drain(Duration::from_secs(5), || false).await;
    };
    let result = allot_server::grpc::serve(router, listener, stopping, dialer.material()).await;
    drop(liveness);
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleep_command_sets_the_duration() {
        let d = Duration::from_secs(1);
        assert_eq!(duration_of("sleep 0.25", d), Duration::from_millis(250));
        assert_eq!(duration_of("  sleep 3 ", d), Duration::from_secs(3));
        assert_eq!(duration_of("sleep forever", d), d);
        assert_eq!(duration_of("sleep -1", d), d);
        assert_eq!(duration_of("echo hi", d), d);
    }
}
