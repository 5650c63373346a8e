//! The broker's state and flows.
//!
//! Locking: one `std::sync::Mutex` over [`Inner`], never held across an `.await`. Each flow reads what it
//! needs under the lock, does its I/O (etcd, allocator, agents) without it, and re-checks under the lock
//! before it commits a change.

use crate::metrics::M;
use crate::validate::{ValidTask, validate_launch};
use allot_common::convert::{
    piece_to_proto, pieces_from_proto, resources_from_proto, resources_to_proto, take_from,
};
use allot_common::grpc::Channel;
use allot_proto::agent::{
    AcknowledgeStatusUpdatesRequest, AgentTask, KillTaskRequest, LaunchTasksRequest,
    ReconcileTasksRequest, StatusUpdateAcknowledgement, agent_client::AgentClient,
};
use allot_proto::allocator::{
    ActivateFrameworkRequest, DeactivateFrameworkRequest, EndedTask, LaunchedTask,
    RecoverOffersRequest, ReviveRequest, SubscribeRequest as AllocSubscribe, SuppressRequest,
    TasksEndedRequest, allocator_client::AllocatorClient, allocator_event,
};
use allot_proto::common::{
    AgentRecord, FrameworkInfo, FrameworkRecord, StatusSource, TaskInfo, TaskRecord, TaskState,
    TaskStatus,
};
use allot_proto::scheduler::{self as pb, Event, event};
use allot_resources::Resources;
use allot_server::Store;
use allot_server::store::{Kind, decode};
use allot_telemetry::propagation;
use allot_telemetry::propagation::SpanContext;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument as _;

/// The sender of a framework's event stream.
pub type EventSender = mpsc::UnboundedSender<Result<Event, Status>>;

/// How often acknowledgements reach etcd and agents. Agents' status updates and frameworks' acknowledgements
/// take effect in memory at once (an update is forwarded to its framework as it arrives, and a terminal one
/// frees the task's resources in the allocator at once, `TasksEnded`). At every flush, each task whose
/// terminal update is acknowledged is written, state and acknowledgement in one record, and only then is the
/// acknowledgement passed on to the agent (`Agent.AcknowledgeStatusUpdates`), whose status update manager has
/// kept and re-sent the update until then. An acknowledged intermediate state (TASK_STARTING, TASK_RUNNING) is
/// not written at all; its acknowledgement goes to the agent, which remembers it and tells a restarted broker
/// (`Agent.ReconcileTasks`). An update still unacknowledged after [`UNACKNOWLEDGED_WRITE_DELAY`] is written as
/// it is. So a task costs etcd two writes (TASK_STAGING at the ACCEPT, its acknowledged end), and a broker that
/// dies loses nothing that etcd or an agent does not still hold. Updates the broker makes itself (TASK_LOST,
/// TASK_UNREACHABLE) have no agent to keep them and are written before they are forwarded.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// How long an update may wait for its framework's acknowledgement before it is written to etcd anyway (so
/// that etcd, and an allocator restarted from it, catch up with a framework that stopped acknowledging). An
/// acknowledgement within this time costs no second write.
pub const UNACKNOWLEDGED_WRITE_DELAY: Duration = Duration::from_secs(5);

/// Mesos' default `refuse_seconds` when a DECLINE or ACCEPT carries no filters.
pub const DEFAULT_REFUSE_SECONDS: f64 = 5.0;

/// How long the broker waits for an agent to answer a launch (`Agent.LaunchTasks`); an agent that has not
/// answered by then is treated like one that could not be reached: the tasks become TASK_LOST.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

struct Framework {
    record: FrameworkRecord,
    sender: Option<EventSender>,
    /// Incremented on every (re-)subscription; a disconnect only counts for the connection it belongs to.
    epoch: u64,
    suppressed: bool,
}

struct OfferEntry {
    offer: pb::Offer,
    resources: Resources,
    /// The offer's span, which the ACCEPT that uses the offer links to.
    span: SpanContext,
}

/// A task's key in the broker's maps: `(framework_id, task_id)`.
type TaskKey = (String, String);

/// The maps keyed by task or offer, touched several times for every task: hashed with foldhash (the keys are
/// IDs the control plane made or checked, and SipHash was 3-4% of the broker's CPU at 6,000 tasks/s).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// See [`FastMap`].
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

#[derive(Default)]
struct Inner {
    frameworks: HashMap<String, Framework>,
    offers: FastMap<String, OfferEntry>,
    tasks: FastMap<TaskKey, TaskRecord>,
    agents: HashMap<String, AgentRecord>,
    alive: HashSet<String>,
    /// Tasks whose record in memory is newer than in etcd, with the flush count when they changed (see
    /// [`FLUSH_INTERVAL`]).
    dirty: FastMap<TaskKey, u64>,
    /// Flushes so far.
    flushes: u64,
    /// Dirty tasks whose next write may not be skipped even if it is an acknowledged intermediate state: tasks
    /// back from TASK_UNREACHABLE, which etcd (and the allocator, through it) still counts as gone.
    must_write: FastSet<TaskKey>,
    /// Acknowledgements to pass on to agents with the next flush: repeats of updates already recorded as
    /// acknowledged, and updates dropped (unknown task, after a terminal state).
    agent_acks: Vec<StatusUpdateAcknowledgement>,
    /// Tasks whose launch is on its way to their agent: accepted, and the agent has not answered the launch
    /// yet. Until it has, the agent may not know the task, so asking it (`Agent.ReconcileTasks`) would call a
    /// launch in flight TASK_LOST.
    launching: FastSet<TaskKey>,
}

impl Inner {
    /// Removes every outstanding offer of framework `fw`; returns their IDs.
    fn take_framework_offers(&mut self, fw: &str) -> Vec<String> {
        let ids: Vec<String> = self
            .offers
            .iter()
            .filter(|(_, o)| o.offer.framework_id == fw)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.offers.remove(id);
        }
        ids
    }
}

/// The offer-broker. Shared behind an `Arc` by every gRPC service and background task.
pub struct Broker {
    store: Store,
    /// The allocator's replicas; calls go to the one that leads.
    allocators: allot_common::grpc::Replicas,
    heartbeat_interval: Duration,
    inner: Mutex<Inner>,
    agent_clients: Mutex<HashMap<String, AgentClient<Channel>>>,
    /// Held by whoever writes task records from memory (the flush and the broker's own updates), so that an
    /// older snapshot of a task never overwrites a newer one in etcd. The ACCEPT's TASK_STAGING writes need
    /// not: they create keys that nothing else writes yet.
    task_writes: tokio::sync::Mutex<()>,
    /// The ACCEPTs' TASK_STAGING records, written together with those of concurrent ACCEPTs.
    staging: allot_server::store::GroupCommit,
    /// Ended tasks on their way to the allocator (see [`start_telling_ended`]).
    ended: mpsc::UnboundedSender<Vec<EndedTask>>,
    /// Offers on their way back to the allocator (see [`start_recovering`]).
    recovering: mpsc::UnboundedSender<Recovery>,
}

/// An offer recovery for the allocator, the span of the call that made it, and who waits for the answer.
type Recovery = (
    RecoverOffersRequest,
    tracing::Span,
    tokio::sync::oneshot::Sender<Result<(), Status>>,
);

/// At most this many recoveries go to the allocator in one `RecoverOffers` call.
const MAX_RECOVERIES_PER_CALL: usize = 256;

/// Starts the task that returns offers to the allocator: one `RecoverOffers` call at a time, carrying every
/// recovery that queued up while the previous call was in flight (each ACCEPT returns its offer: at 8,000
/// tasks/s about 700 small calls a second). Each caller hears the call's answer, so that an ACCEPT launches
/// only after the allocator has its tasks (their `TasksEnded` comes after). The call's span is a child of the
/// first recovery's. The task ends with the returned sender.
fn start_recovering(allocators: allot_common::grpc::Replicas) -> mpsc::UnboundedSender<Recovery> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Recovery>();
    tokio::spawn(async move {
        while let Some((mut first, span, reply)) = rx.recv().await {
            let mut replies = vec![reply];
            while first.more.len() + 1 < MAX_RECOVERIES_PER_CALL {
                let Ok((more, _, reply)) = rx.try_recv() else {
                    break;
                };
                first.more.push(more);
                replies.push(reply);
            }
            let recovered = on_allocator(&allocators, first, |mut a, req| async move {
                a.recover_offers(req).await
            })
            .instrument(span)
            .await
            .map(|_| ());
            for reply in replies {
                let _ = reply.send(recovered.clone());
            }
        }
    });
    tx
}

/// At most this many ended tasks go to the allocator in one `TasksEnded` call (about 60 bytes each).
const MAX_ENDED_PER_CALL: usize = 10_000;

/// The least time from the start of one `TasksEnded` call to the start of the next. Ended tasks that queue up
/// meanwhile go in the next call; the allocator offers freed resources at its next allocation cycle (every
/// `--allocation-interval`, 1 s by default as in Mesos), so this adds little to the time before they are
/// offered again.
const TELL_ENDED_SPACING: Duration = Duration::from_millis(20);

/// Starts the task that tells the allocator of ended tasks: one `TasksEnded` call at a time and at most one
/// per [`TELL_ENDED_SPACING`], carrying every ended task that queued up meanwhile (at 9,000 tasks/s a call per
/// `UpdateBatch` made about 500 small calls a second; one at a time, still about 240). The task ends with the
/// returned sender.
fn start_telling_ended(
    allocators: allot_common::grpc::Replicas,
) -> mpsc::UnboundedSender<Vec<EndedTask>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<EndedTask>>();
    tokio::spawn(async move {
        while let Some(mut tasks) = rx.recv().await {
            let started = tokio::time::Instant::now();
            while let Ok(more) = rx.try_recv() {
                tasks.extend(more);
            }
            for chunk in tasks.chunks(MAX_ENDED_PER_CALL) {
                let told = on_allocator(&allocators, chunk, |mut a, chunk| async move {
                    a.tasks_ended(TasksEndedRequest {
                        tasks: chunk.to_vec(),
                    })
                    .await
                });
                if let Err(e) = told.await {
                    tracing::debug!(error = %e.message(), "cannot tell the allocator of ended tasks");
                }
            }
            tokio::time::sleep_until(started + TELL_ENDED_SPACING).await;
        }
    });
    tx
}

/// A task to reconcile with its agent, with the uuid of its recorded status.
type Recorded = ((String, String), Vec<u8>);

/// The acknowledgement for the agent of `status` (`None` for an update the broker made itself).
fn agent_ack(status: &TaskStatus) -> Option<StatusUpdateAcknowledgement> {
    (status.source() != StatusSource::SourceMaster && !status.agent_id.is_empty()).then(|| {
        StatusUpdateAcknowledgement {
            agent_id: status.agent_id.clone(),
            framework_id: status.framework_id.clone(),
            task_id: status.task_id.clone(),
            uuid: status.uuid.clone(),
        }
    })
}

/// An event without trace context.
fn plain(ev: event::Event) -> Event {
    Event {
        event: Some(ev),
        trace_context: Default::default(),
    }
}

/// An UPDATE event carrying `trace_context` (the span that recorded it, or nothing for a re-send).
fn update_event(status: TaskStatus, trace_context: HashMap<String, String>) -> Event {
    Event {
        event: Some(event::Event::Update(pb::Update {
            status: Some(status),
        })),
        trace_context,
    }
}

/// The `(framework, task)` key of a task record in the broker's map.
fn task_key(rec: &TaskRecord) -> (String, String) {
    let task = rec
        .task
        .as_ref()
        .map(|t| t.task_id.clone())
        .unwrap_or_default();
    (rec.framework_id.clone(), task)
}

/// An allocator client on `channel`, taking messages as large as Allot's servers send.
fn allocator_client(channel: Channel) -> AllocatorClient<Channel> {
    AllocatorClient::new(channel).max_decoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES)
}

/// Makes a call with `req` on the leading replica of `allocators`: a standby's answer or an unreachable
/// replica sends it on to the leader (see [`allot_common::grpc::Replicas::call`]), with a copy of `req` each
/// time.
///
/// # Errors
/// The last attempt's status.
async fn on_allocator<R, T, F, Fut>(
    allocators: &allot_common::grpc::Replicas,
    req: R,
    mut call: F,
) -> Result<T, Status>
where
    R: Clone,
    F: FnMut(AllocatorClient<Channel>, R) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    allocators
        .call(|ch| call(allocator_client(ch), req.clone()))
        .await
}

impl Broker {
    /// A broker over `store` that takes decisions from the leading replica of `allocators`.
    /// Must be called within a Tokio runtime (it starts the group committer of TASK_STAGING writes and the
    /// sender of ended tasks to the allocator).
    pub fn new(
        store: Store,
        allocators: allot_common::grpc::Replicas,
        heartbeat_interval: Duration,
    ) -> Self {
        Self {
            store: store.clone(),
            heartbeat_interval,
            inner: Mutex::new(Inner::default()),
            agent_clients: Mutex::new(HashMap::new()),
            task_writes: tokio::sync::Mutex::new(()),
            staging: allot_server::store::GroupCommit::start(store.clone()),
            ended: start_telling_ended(allocators.clone()),
            recovering: start_recovering(allocators.clone()),
            allocators,
        }
    }

    /// A client of the allocator replica believed to lead.
    fn allocator(&self) -> AllocatorClient<Channel> {
        allocator_client(self.allocators.channel())
    }

    /// Tells the allocator that framework `fw` is connected (and whether it is suppressed).
    ///
    /// # Errors
    /// The allocator's status (see [`on_allocator`]).
    async fn activate(&self, fw: String, suppressed: bool) -> Result<(), Status> {
        let req = ActivateFrameworkRequest {
            framework_id: fw,
            suppressed,
        };
        on_allocator(&self.allocators, req, |mut a, req| async move {
            a.activate_framework(req).await
        })
        .await
        .map(|_| ())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("broker state poisoned")
    }

    /// Loads frameworks, tasks and agents from etcd and starts the background work: following agents and their
    /// liveness, the allocator's decision stream, and heartbeats. Returns the background tasks.
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
        {
            let mut inner = self.lock();
            for (_, a) in agents {
                inner.agents.insert(a.agent_id.clone(), a);
            }
            for (_, record) in frameworks {
                inner.frameworks.insert(
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
                inner.tasks.insert(task_key(&t), t);
            }
        }
        // Every framework etcd records as active is disconnected from this broker until it re-subscribes. Its
        // failover timeout runs from now, but no shorter than three heartbeat intervals: a scheduler notices a
        // silent broker within three intervals and re-subscribes, and a broker failover is no scheduler's fault.
        let grace = 3.0 * self.heartbeat_interval.as_secs_f64();
        let recovered: Vec<(String, f64)> = self
            .lock()
            .frameworks
            .iter()
            .filter(|(_, f)| f.record.active)
            .map(|(id, f)| {
                let timeout = f.record.info.as_ref().map_or(0.0, |i| i.failover_timeout);
                (id.clone(), timeout.max(grace))
            })
            .collect();
        for (fw, timeout) in recovered {
            self.tear_down_after(fw, 0, timeout);
        }
        let mut handles = Vec::new();
        handles.push(tokio::spawn(self.clone().reconcile_agents()));
        let me = self.clone();
        handles.push(tokio::spawn(allot_server::store::follow_prefix(
            self.store.clone(),
            self.store.prefix(Kind::Agents),
            Duration::from_secs(1),
            move |id, value| {
                let mut inner = me.lock();
                match value.and_then(|v| decode::<AgentRecord>(id.as_bytes(), v).ok()) {
                    Some(rec) => {
                        let since = rec.registered_at_ms;
                        let before = inner.agents.insert(id.to_string(), rec);
                        if before.is_some_and(|b| b.registered_at_ms != since) {
                            let me = me.clone();
                            let id = id.to_string();
                            tokio::spawn(async move { me.agent_reregistered(&id).await });
                        }
                    }
                    None => {
                        inner.agents.remove(id);
                    }
                }
            },
        )));
        let me = self.clone();
        handles.push(tokio::spawn(allot_server::store::follow_prefix(
            self.store.clone(),
            self.store.prefix(Kind::Alive),
            Duration::from_secs(1),
            move |id, value| {
                let was = {
                    let mut inner = me.lock();
                    if value.is_some() {
                        !inner.alive.insert(id.to_string())
                    } else {
                        inner.alive.remove(id)
                    }
                };
                if value.is_none() && was {
                    let me = me.clone();
                    let id = id.to_string();
                    tokio::spawn(async move { me.agent_lost(&id).await });
                } else if value.is_some() && !was {
                    let me = me.clone();
                    let id = id.to_string();
                    tokio::spawn(async move { me.agent_returned(&id).await });
                }
            },
        )));
        handles.push(tokio::spawn(self.clone().follow_allocator()));
        handles.push(tokio::spawn(self.clone().heartbeats()));
        handles.push(tokio::spawn(self.clone().flush()));
        Ok(handles)
    }

    /// After a start: asks every agent what it knows of the tasks that etcd records on it as TASK_STAGING,
    /// TASK_STARTING, TASK_RUNNING or TASK_KILLING (intermediate states are not written, see
    /// [`FLUSH_INTERVAL`]). The latest state an agent reports replaces the recorded one in memory;
    /// a task the agent has never heard of (the ACCEPT was recorded, the launch never reached the agent) is
    /// reported TASK_LOST. A task that changed meanwhile (its agent re-sent an update) is left alone. An agent
    /// that does not answer keeps its tasks' recorded states (if it is gone, the registry's timeout makes them
    /// TASK_UNREACHABLE).
    async fn reconcile_agents(self: Arc<Self>) {
        let recorded: Vec<(String, Recorded)> = {
            let inner = self.lock();
            inner
                .tasks
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
        };
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
    /// returns how many were reported TASK_LOST.
    ///
    /// With `returned` (the agent came back after it was unreachable), a task the agent still has is not
    /// replaced silently: its state is reported again, as a new update written to etcd (reason
    /// REASON_RECONCILIATION), so that the framework and the allocator see the task live again.
    async fn reconcile_at(&self, addr: String, tasks: Vec<Recorded>, returned: bool) -> usize {
        let Some(client) = self.client_at(addr.clone()) else {
            return 0;
        };
        let mut lost_total = 0;
        for chunk in tasks.chunks(4096) {
            let req = ReconcileTasksRequest {
                tasks: chunk
                    .iter()
                    .map(|((fw, task), _)| AgentTask {
                        framework_id: fw.clone(),
                        task_id: task.clone(),
                    })
                    .collect(),
            };
            let mut answer = None;
            let mut delays = allot_common::retry_delays(Duration::from_millis(200));
            for _ in 0..6 {
                match client.clone().reconcile_tasks(req.clone()).await {
                    Ok(r) => {
                        answer = Some(r.into_inner());
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(agent = %addr, error = %e.message(), "reconciliation failed; retrying");
                        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                    }
                }
            }
            let Some(answer) = answer else {
                tracing::warn!(agent = %addr, tasks = chunk.len(), "agent did not answer reconciliation; its tasks keep their recorded state");
                continue;
            };
            let recorded: HashMap<&(String, String), &Vec<u8>> =
                chunk.iter().map(|(k, u)| (k, u)).collect();
            let mut lost = Vec::new();
            let mut revived: HashMap<TaskState, Vec<(String, String)>> = HashMap::new();
            let mut ended = Vec::new();
            {
                let mut inner = self.lock();
                let flushes = inner.flushes;
                let unchanged = |inner: &Inner, key: &(String, String)| {
                    let rec_uuid = inner
                        .tasks
                        .get(key)
                        .and_then(|r| r.status.as_ref())
                        .map(|s| &s.uuid);
                    rec_uuid.is_some() && recorded.get(key).copied() == rec_uuid
                };
                for t in answer.tasks {
                    let Some(status) = t.status else { continue };
                    let key = (status.framework_id.clone(), status.task_id.clone());
                    if !unchanged(&inner, &key) {
                        continue;
                    }
                    if returned {
                        if !status.state().is_terminal() {
                            revived.entry(status.state()).or_default().push(key);
                        }
                        continue;
                    }
                    // An unacknowledged one goes to the framework on the next heartbeat (and comes from the
                    // agent again); a terminal one is written once acknowledged.
                    let terminal = status.state().is_terminal();
                    if let Some(rec) = inner.tasks.get_mut(&key) {
                        rec.status = Some(status);
                        rec.acknowledged = t.acknowledged;
                    }
                    if terminal {
                        ended.push(EndedTask {
                            framework_id: key.0.clone(),
                            task_id: key.1.clone(),
                        });
                        inner.dirty.insert(key, flushes);
                    }
                }
                for t in answer.unknown {
                    let key = (t.framework_id, t.task_id);
                    if unchanged(&inner, &key) {
                        lost.push(key);
                    }
                }
            }
            self.tell_ended(ended);
            for (state, tasks) in revived {
                self.master_updates(
                    &tasks,
                    state,
                    "REASON_RECONCILIATION",
                    &format!("agent at {addr} is reachable again and still runs the task"),
                )
                .await;
            }
            lost_total += lost.len();
            self.master_updates(
                &lost,
                TaskState::TaskLost,
                "REASON_TASK_UNKNOWN",
                "the agent has no record of the task: its launch did not reach it",
            )
            .await;
        }
        lost_total
    }

    // ---------------------------------------------------------------- allocator link

    async fn follow_allocator(self: Arc<Self>) {
        loop {
            let mut client = self.allocator();
            match client.subscribe(AllocSubscribe {}).await {
                Ok(resp) => {
                    tracing::info!("subscribed to the allocator");
                    self.new_allocator_session().await;
                    let mut stream = resp.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(ev)) => self.on_allocator_event(ev.event).await,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "allocator stream failed");
                                self.allocators.failed(&e);
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    // A standby names the leader; a replica that cannot be reached is skipped.
                    self.allocators.failed(&e);
                    tracing::warn!(error = %e.message(), allocator = %self.allocators.current(),
                        "cannot subscribe to the allocator; retrying")
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A new allocator session knows no offers: rescind ours, then tell it who is connected.
    async fn new_allocator_session(&self) {
        let (rescinds, active) = {
            let mut inner = self.lock();
            let offers: Vec<(String, String)> = inner
                .offers
                .drain()
                .map(|(id, o)| (o.offer.framework_id, id))
                .collect();
            let active: Vec<(String, bool)> = inner
                .frameworks
                .iter()
                .filter(|(_, f)| f.sender.is_some())
                .map(|(id, f)| (id.clone(), f.suppressed))
                .collect();
            (offers, active)
        };
        M.rescinded.inc_by(rescinds.len() as u64);
        for (fw, offer_id) in rescinds {
            self.send(&fw, event::Event::Rescind(pb::Rescind { offer_id }));
        }
        for (fw, suppressed) in active {
            let _ = self.activate(fw, suppressed).await;
        }
    }

    async fn on_allocator_event(&self, ev: Option<allocator_event::Event>) {
        match ev {
            Some(allocator_event::Event::Grants(g)) => {
                let mut unwanted = Vec::new();
                let mut by_fw: HashMap<String, Vec<pb::Offer>> = HashMap::new();
                {
                    let mut inner = self.lock();
                    for grant in g.grants {
                        let connected = inner
                            .frameworks
                            .get(&grant.framework_id)
                            .is_some_and(|f| f.sender.is_some());
                        let Ok(resources) = resources_from_proto(&grant.resources) else {
                            unwanted.push(grant.offer_id);
                            continue;
                        };
                        // Offer only agents we can launch on: alive, and with their record (address) known.
                        let record = inner.agents.get(&grant.agent_id);
                        let (true, true, Some(record)) =
                            (connected, inner.alive.contains(&grant.agent_id), record)
                        else {
                            unwanted.push(grant.offer_id);
                            continue;
                        };
                        let info = record.info.clone().unwrap_or_default();
                        // The offer's span, a child of the allocation cycle that made it; made only when
                        // spans are exported (thousands of offers a cycle would cost for nothing).
                        let span = if allot_telemetry::exporting() {
                            let span = tracing::info_span!(
                                "offer",
                                allot.offer.id = %grant.offer_id,
                                allot.framework.id = %grant.framework_id,
                                allot.agent.id = %grant.agent_id,
                                allot.cycle = grant.cycle,
                            );
                            propagation::set_parent_from_map(&span, &grant.trace_context);
                            propagation::span_context_of(&span)
                        } else {
                            SpanContext::empty_context()
                        };
                        let offer = pb::Offer {
                            offer_id: grant.offer_id.clone(),
                            framework_id: grant.framework_id.clone(),
                            agent_id: grant.agent_id,
                            hostname: info.hostname,
                            resources: grant.resources,
                            attributes: info.attributes,
                        };
                        inner.offers.insert(
                            grant.offer_id,
                            OfferEntry {
                                offer: offer.clone(),
                                resources,
                                span,
                            },
                        );
                        by_fw.entry(grant.framework_id).or_default().push(offer);
                    }
                }
                for (fw, offers) in by_fw {
                    tracing::debug!(framework = %fw, offers = offers.len(), "sending offers");
                    let n = offers.len() as u64;
                    let ids: Vec<String> = offers.iter().map(|o| o.offer_id.clone()).collect();
                    if self.send(&fw, event::Event::Offers(pb::Offers { offers })) {
                        M.offers.inc_by(n);
                    } else {
                        unwanted.extend(self.take_offers(ids.into_iter()));
                    }
                }
                // The full refresh (which counts every task) runs on heartbeats; here only the offers.
                M.outstanding.set(self.lock().offers.len() as f64);
                if !unwanted.is_empty() {
                    self.recover(unwanted, 0.0, Vec::new()).await;
                }
            }
            Some(allocator_event::Event::Rescind(r)) => {
                let gone: Vec<(String, String)> = {
                    let mut inner = self.lock();
                    r.offer_ids
                        .into_iter()
                        .filter_map(|id| {
                            inner.offers.remove(&id).map(|o| (o.offer.framework_id, id))
                        })
                        .collect()
                };
                M.rescinded.inc_by(gone.len() as u64);
                for (fw, offer_id) in gone {
                    self.send(&fw, event::Event::Rescind(pb::Rescind { offer_id }));
                }
            }
            None => {}
        }
    }

    fn take_offers(&self, ids: impl Iterator<Item = String>) -> Vec<String> {
        let mut inner = self.lock();
        ids.filter(|id| inner.offers.remove(id).is_some()).collect()
    }

    /// Tells the allocator that framework `fw` wants no more offers and returns its `offers`, unfiltered.
    async fn deactivate(&self, fw: &str, offers: Vec<String>) {
        let req = DeactivateFrameworkRequest {
            framework_id: fw.to_string(),
        };
        let _ = on_allocator(&self.allocators, req, |mut a, req| async move {
            a.deactivate_framework(req).await
        })
        .await;
        self.recover(offers, 0.0, Vec::new()).await;
    }

    async fn recover(
        &self,
        offer_ids: Vec<String>,
        refuse_seconds: f64,
        launched: Vec<LaunchedTask>,
    ) {
        if offer_ids.is_empty() && launched.is_empty() {
            return;
        }
        let req = RecoverOffersRequest {
            offer_ids,
            refuse_seconds,
            launched,
            more: Vec::new(),
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let answered = match self.recovering.send((req, tracing::Span::current(), reply)) {
            Ok(()) => answer.await.ok(),
            Err(_) => None,
        };
        let recovered = answered
            .unwrap_or_else(|| Err(Status::unavailable("the offer recovery sender stopped")));
        if let Err(e) = recovered {
            // The allocator restarted or is unreachable: its next session starts from etcd, which has the tasks.
            tracing::warn!(error = %e.message(), "cannot return offers to the allocator");
        }
    }

    // ---------------------------------------------------------------- event streams

    /// Sends `ev` to framework `fw` if it is connected. Returns whether it was sent.
    pub fn send(&self, fw: &str, ev: event::Event) -> bool {
        let inner = self.lock();
        match inner.frameworks.get(fw).and_then(|f| f.sender.as_ref()) {
            Some(tx) => tx.send(Ok(plain(ev))).is_ok(),
            None => false,
        }
    }

    /// Sends each status as an UPDATE to its framework, if connected, under one lock; each event carries the
    /// current span's trace context, so that the framework continues the task's trace.
    fn send_updates(&self, statuses: impl IntoIterator<Item = TaskStatus>) {
        let trace_context = propagation::current_map();
        let inner = self.lock();
        for status in statuses {
            if let Some(tx) = inner
                .frameworks
                .get(&status.framework_id)
                .and_then(|f| f.sender.as_ref())
            {
                let _ = tx.send(Ok(update_event(status, trace_context.clone())));
            }
        }
    }

    /// Sets the gauges from the broker's state: offers outstanding, tasks by state, connections, agents.
    fn refresh_gauges(&self) {
        let inner = self.lock();
        M.outstanding.set(inner.offers.len() as f64);
        M.connected.set(
            inner
                .frameworks
                .values()
                .filter(|f| f.sender.is_some())
                .count() as f64,
        );
        M.agents_alive.set(inner.alive.len() as f64);
        let mut by_state: BTreeMap<&str, u64> = (0..32)
            .filter_map(|n| TaskState::try_from(n).ok())
            .map(|s| (s.as_str_name(), 0))
            .collect();
        for t in inner.tasks.values() {
            if let Some(s) = &t.status {
                *by_state.entry(s.state().as_str_name()).or_default() += 1;
            }
        }
        for (state, n) in by_state {
            M.tasks.with_label_values(&[state]).set(n as f64);
        }
    }

    async fn heartbeats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.heartbeat_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.refresh_gauges();
            let inner = self.lock();
            for f in inner.frameworks.values() {
                if let Some(tx) = &f.sender {
                    let _ = tx.send(Ok(plain(event::Event::Heartbeat(pb::Heartbeat {}))));
                }
            }
            // Unacknowledged updates go again, to their framework's current connection.
            for t in inner.tasks.values().filter(|t| !t.acknowledged) {
                if let (Some(status), Some(tx)) = (
                    &t.status,
                    inner
                        .frameworks
                        .get(&t.framework_id)
                        .and_then(|f| f.sender.as_ref()),
                ) {
                    let _ = tx.send(Ok(update_event(status.clone(), HashMap::new())));
                }
            }
        }
    }

    // ---------------------------------------------------------------- scheduler calls

    /// SUBSCRIBE: registers (or re-registers) a framework and returns its event stream's receiver.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for a bad `FrameworkInfo`; `NOT_FOUND` for a re-subscription with an unknown or
    /// torn-down framework ID; `UNAVAILABLE` if etcd cannot record it.
    pub async fn subscribe(
        self: &Arc<Self>,
        mut info: FrameworkInfo,
    ) -> Result<(String, u64, mpsc::UnboundedReceiver<Result<Event, Status>>), Status> {
        if info.name.trim().is_empty() {
            return Err(Status::invalid_argument("FrameworkInfo.name is empty"));
        }
        if !(info.failover_timeout.is_finite() && info.failover_timeout >= 0.0) {
            return Err(Status::invalid_argument(
                "FrameworkInfo.failover_timeout must be a finite number of seconds >= 0",
            ));
        }
        if info.roles.is_empty() {
            info.roles.push("*".to_string());
        }
        for r in &info.roles {
            if !allot_common::valid_role(r) {
                return Err(Status::invalid_argument(format!("role '{r}' is invalid")));
            }
        }
        if info.user.is_empty() {
            info.user = "nobody".to_string();
        }
        let resubscribe = !info.framework_id.is_empty();
        let id = if resubscribe {
            let known = self
                .lock()
                .frameworks
                .get(&info.framework_id)
                .map(|f| f.record.active);
            match known {
                Some(true) => info.framework_id.clone(),
                Some(false) => {
                    return Err(Status::not_found(format!(
                        "framework {} was torn down",
                        info.framework_id
                    )));
                }
                None => {
                    return Err(Status::not_found(format!(
                        "framework {} is unknown",
                        info.framework_id
                    )));
                }
            }
        } else {
            allot_common::new_id("fw")
        };
        info.framework_id = id.clone();
        let record = FrameworkRecord {
            framework_id: id.clone(),
            info: Some(info.clone()),
            registered_at_ms: allot_common::now_ms(),
            active: true,
        };
        self.store
            .put(&self.store.key(Kind::Frameworks, &id), &record, None)
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Ok(plain(event::Event::Subscribed(pb::Subscribed {
            framework_id: id.clone(),
            heartbeat_interval_seconds: self.heartbeat_interval.as_secs_f64(),
        }))));
        let (epoch, old, pending) = {
            let mut inner = self.lock();
            let entry = inner
                .frameworks
                .entry(id.clone())
                .or_insert_with(|| Framework {
                    record: record.clone(),
                    sender: None,
                    epoch: 0,
                    suppressed: false,
                });
            entry.record = record;
            entry.epoch += 1;
            entry.suppressed = false;
            let old = entry.sender.replace(tx.clone());
            let epoch = entry.epoch;
            let pending: Vec<TaskStatus> = inner
                .tasks
                .values()
                .filter(|t| t.framework_id == id && !t.acknowledged)
                .filter_map(|t| t.status.clone())
                .collect();
            (epoch, old, pending)
        };
        if let Some(old) = old {
            let _ = old.send(Ok(plain(event::Event::Error(pb::Error {
                message: "framework failed over: a newer subscription replaced this one".into(),
            }))));
        }
        for status in pending {
            let _ = tx.send(Ok(update_event(status, HashMap::new())));
        }
        if let Err(e) = self.activate(id.clone(), false).await {
            // The next allocator session activates every connected framework.
            tracing::warn!(framework = %id, error = %e.message(), "cannot activate the framework at the allocator");
        }
        tracing::info!(framework = %id, name = %info.name, roles = ?info.roles, resubscribe, "framework subscribed");
        Ok((id, epoch, rx))
    }

    /// The event stream of connection `epoch` of framework `fw` closed.
    pub async fn disconnected(self: Arc<Self>, fw: String, epoch: u64) {
        let (offers, timeout) = {
            let mut inner = self.lock();
            let Some(f) = inner.frameworks.get_mut(&fw) else {
                return;
            };
            if f.epoch != epoch || f.sender.is_none() {
                return;
            }
            f.sender = None;
            let timeout = f
                .record
                .info
                .as_ref()
                .map(|i| i.failover_timeout)
                .unwrap_or(0.0);
            let offers = inner.take_framework_offers(&fw);
            (offers, timeout)
        };
        tracing::info!(framework = %fw, failover_timeout = timeout, "framework disconnected");
        self.deactivate(&fw, offers).await;
        self.tear_down_after(fw, epoch, timeout);
    }

    /// Tears framework `fw` down unless it re-subscribes (its connection epoch moves past `epoch`) within
    /// `failover_timeout` seconds, as the Mesos master does with a disconnected framework.
    fn tear_down_after(self: &Arc<Self>, fw: String, epoch: u64, failover_timeout: f64) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(failover_timeout)).await;
            let still_gone = me
                .lock()
                .frameworks
                .get(&fw)
                .is_some_and(|f| f.epoch == epoch && f.sender.is_none() && f.record.active);
            if still_gone {
                tracing::info!(framework = %fw, "failover timeout passed; tearing the framework down");
                let _ = me.teardown(&fw).await;
            }
        });
    }

    fn check_subscribed(&self, fw: &str) -> Result<(), Status> {
        let inner = self.lock();
        match inner.frameworks.get(fw) {
            Some(f) if f.sender.is_some() => Ok(()),
            Some(f) if !f.record.active => Err(Status::failed_precondition(format!(
                "framework {fw} was torn down"
            ))),
            _ => Err(Status::failed_precondition(format!(
                "framework '{fw}' is not subscribed: SUBSCRIBE first"
            ))),
        }
    }

    /// Checks that every offer exists and belongs to `fw`; returns their agent and summed resources.
    fn check_offers(&self, fw: &str, offer_ids: &[String]) -> Result<(String, Resources), Status> {
        if offer_ids.is_empty() {
            return Err(Status::invalid_argument("no offer_ids given"));
        }
        let inner = self.lock();
        let mut agent: Option<String> = None;
        let mut total = Resources::new();
        let mut seen = HashSet::new();
        for id in offer_ids {
            if !seen.insert(id) {
                return Err(Status::invalid_argument(format!(
                    "offer {id} is named twice"
                )));
            }
            let o = find_offer(&inner, fw, id)?;
            match &agent {
                Some(a) if *a != o.offer.agent_id => {
                    return Err(Status::invalid_argument(
                        "offers from different agents cannot be accepted together",
                    ));
                }
                _ => agent = Some(o.offer.agent_id.clone()),
            }
            total.add(&o.resources);
        }
        Ok((agent.expect("at least one offer"), total))
    }

    /// ACCEPT with LAUNCH operations.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` if the framework is not subscribed; `NOT_FOUND` for an unknown or rescinded offer;
    /// `INVALID_ARGUMENT` for a bad launch (see [`validate_launch`]); `UNAVAILABLE` if etcd cannot persist the
    /// tasks. On any error nothing is launched and the offers stay outstanding.
    pub async fn accept(
        self: &Arc<Self>,
        fw: &str,
        offer_ids: Vec<String>,
        tasks: Vec<TaskInfo>,
        refuse_seconds: Option<f64>,
    ) -> Result<usize, Status> {
        let task_ids: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
        let span = tracing::info_span!(
            "accept",
            allot.framework.id = %fw,
            allot.offers = offer_ids.len(),
            allot.offer.ids = %offer_ids.join(","),
            allot.tasks = tasks.len(),
            allot.task.ids = %task_ids.join(","),
            allot.agent.id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let result = self
            .accept_traced(fw, offer_ids, tasks, refuse_seconds)
            .instrument(span.clone())
            .await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn accept_traced(
        self: &Arc<Self>,
        fw: &str,
        offer_ids: Vec<String>,
        tasks: Vec<TaskInfo>,
        refuse_seconds: Option<f64>,
    ) -> Result<usize, Status> {
        self.check_subscribed(fw)?;
        let refuse = refuse_of(refuse_seconds)?;
        let (agent_id, offered) = self.check_offers(fw, &offer_ids)?;
        tracing::Span::current().record("allot.agent.id", agent_id.as_str());
        let mut valid = {
            let inner = self.lock();
            validate_launch(&agent_id, &offered, tasks, |id| {
                inner
                    .tasks
                    .get(&(fw.to_string(), id.to_string()))
                    .and_then(|t| t.status.as_ref())
                    .is_some_and(|s| !s.state().is_terminal())
            })?
        };
        // Take the offers; a concurrent rescind wins.
        let taken: Vec<OfferEntry> = {
            let mut inner = self.lock();
            if offer_ids.iter().any(|id| !inner.offers.contains_key(id)) {
                return Err(Status::not_found(
                    "an offer was rescinded while the accept was in flight",
                ));
            }
            offer_ids
                .iter()
                .filter_map(|id| inner.offers.remove(id))
                .collect()
        };
        // The ACCEPT's trace names the offers it used, and through them the allocation cycle that made them.
        let span = tracing::Span::current();
        for o in &taken {
            propagation::link(&span, &o.span);
        }
        M.accepted.inc_by(taken.len() as u64);
        // Tasks use the offers' reservation for the framework's role first, then unreserved resources; their
        // resources are tagged accordingly, so that the allocator's books (and a restarted allocator, from etcd)
        // know which part of the agent they hold.
        let mut pools: BTreeMap<String, Resources> = BTreeMap::new();
        for o in &taken {
            let (_, reserved) = pieces_from_proto(&o.offer.resources).unwrap_or_default();
            for (role, r) in reserved {
                pools.entry(role).or_default().add(&r);
            }
        }
        for v in valid.iter_mut() {
            let mut tagged = Vec::new();
            let mut rest = v.resources.clone();
            for (role, pool) in pools.iter_mut() {
                let (left, took) = take_from(&rest, pool);
                tagged.extend(piece_to_proto(&Resources::new(), &took, role));
                rest = left;
            }
            tagged.extend(resources_to_proto(&rest));
            v.info.resources = tagged;
        }
        let now = allot_common::now_secs();
        let records: Vec<(String, TaskRecord)> = valid
            .iter()
            .map(|v| {
                let rec = TaskRecord {
                    framework_id: fw.to_string(),
                    task: Some(v.info.clone()),
                    status: Some(TaskStatus {
                        task_id: v.info.task_id.clone(),
                        state: TaskState::TaskStaging as i32,
                        source: StatusSource::SourceMaster as i32,
                        agent_id: agent_id.clone(),
                        framework_id: fw.to_string(),
                        timestamp: now,
                        ..Default::default()
                    }),
                    acknowledged: true,
                    sandbox: String::new(),
                };
                (self.store.task_key(fw, &v.info.task_id), rec)
            })
            .collect();
        let encoded = records
            .iter()
            .map(|(k, r)| (k.clone(), prost::Message::encode_to_vec(r)))
            .collect();
        if let Err(e) = self.staging.put_all(encoded).await {
            tracing::warn!(error = %e, "cannot persist launched tasks; the offers are restored");
            // Restore nothing we cannot vouch for: the offers go back to the allocator unfiltered.
            self.recover(offer_ids, 0.0, Vec::new()).await;
            return Err(e.into());
        }
        {
            let mut inner = self.lock();
            for (_, rec) in records {
                let key = task_key(&rec);
                inner.launching.insert(key.clone());
                inner.tasks.insert(key, rec);
            }
        }
        let launched: Vec<LaunchedTask> = valid
            .iter()
            .map(|v| LaunchedTask {
                framework_id: fw.to_string(),
                task_id: v.info.task_id.clone(),
                agent_id: agent_id.clone(),
                resources: v.info.resources.clone(),
            })
            .collect();
        self.recover(offer_ids, refuse, launched).await;
        let n = valid.len();
        M.launched.inc_by(n as u64);
        if n > 0 {
            let me = self.clone();
            let fw = fw.to_string();
            let span = tracing::info_span!(
                "launch",
                allot.framework.id = %fw,
                allot.agent.id = %agent_id,
                allot.tasks = n,
                otel.status_code = tracing::field::Empty,
            );
            tokio::spawn(async move { me.launch(&fw, &agent_id, valid).await }.instrument(span));
        }
        Ok(n)
    }

    /// The gRPC address of agent `agent_id`, from the cached record or, when the cache has not caught up, from
    /// etcd.
    async fn agent_address(&self, agent_id: &str) -> Option<String> {
        let cached = self
            .lock()
            .agents
            .get(agent_id)
            .and_then(|a| a.info.as_ref().map(|i| i.address.clone()));
        match cached {
            Some(a) => Some(a),
            None => {
                let key = self.store.key(Kind::Agents, agent_id);
                let (rec, _) = self.store.get::<AgentRecord>(&key).await.ok()??;
                Some(rec.info?.address)
            }
        }
    }

    /// Groups `items`, each with its agent, by the agent's address (a simulator serves many agents at one
    /// address): one pass over the cached agent records, then one etcd read per agent the cache has not seen
    /// yet. Items of agents unknown to both come back apart, by agent.
    async fn by_address<T>(
        &self,
        items: Vec<(String, T)>,
    ) -> (HashMap<String, Vec<T>>, HashMap<String, Vec<T>>) {
        let mut grouped: HashMap<String, Vec<T>> = HashMap::new();
        let mut missing: HashMap<String, Vec<T>> = HashMap::new();
        {
            let inner = self.lock();
            for (agent, item) in items {
                match inner.agents.get(&agent).and_then(|a| a.info.as_ref()) {
                    Some(info) => grouped.entry(info.address.clone()).or_default().push(item),
                    None => missing.entry(agent).or_default().push(item),
                }
            }
        }
        let mut unknown = HashMap::new();
        for (agent, items) in missing {
            match self.agent_address(&agent).await {
                Some(addr) => grouped.entry(addr).or_default().extend(items),
                None => {
                    unknown.insert(agent, items);
                }
            }
        }
        (grouped, unknown)
    }

    /// A client for agent `agent_id` (see [`Broker::agent_address`]).
    async fn agent_client(&self, agent_id: &str) -> Option<AgentClient<Channel>> {
        let addr = self.agent_address(agent_id).await?;
        self.client_at(addr)
    }

    /// A client for the agent (or simulator) at `addr`, made once and cached.
    fn client_at(&self, addr: String) -> Option<AgentClient<Channel>> {
        let mut clients = self.agent_clients.lock().expect("agent clients poisoned");
        if let Some(c) = clients.get(&addr) {
            return Some(c.clone());
        }
        let c = AgentClient::new(allot_common::grpc::channel(&addr).ok()?)
            .max_decoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES);
        clients.insert(addr, c.clone());
        Some(c)
    }

    async fn launch(self: Arc<Self>, fw: &str, agent_id: &str, tasks: Vec<ValidTask>) {
        let info = self
            .lock()
            .frameworks
            .get(fw)
            .and_then(|f| f.record.info.clone());
        let keys: Vec<TaskKey> = tasks
            .iter()
            .map(|t| (fw.to_string(), t.info.task_id.clone()))
            .collect();
        let req = LaunchTasksRequest {
            framework_id: fw.to_string(),
            framework_info: info,
            tasks: tasks.into_iter().map(|t| t.info).collect(),
        };
        let result = match self.agent_client(agent_id).await {
            Some(mut c) => tokio::time::timeout(LAUNCH_TIMEOUT, c.launch_tasks(req))
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("the agent did not answer")))
                .map(|_| ()),
            None => Err(Status::unavailable(format!("agent {agent_id} is unknown"))),
        };
        if let Err(e) = result {
            tracing::Span::current().record("otel.status_code", "ERROR");
            tracing::warn!(agent = %agent_id, error = %e.message(), "launch failed");
            self.master_updates(
                &keys,
                TaskState::TaskLost,
                "REASON_AGENT_UNREACHABLE",
                &format!("launch on agent {agent_id} failed: {}", e.message()),
            )
            .await;
        }
        let mut inner = self.lock();
        for k in &keys {
            inner.launching.remove(k);
        }
    }

    /// Status updates that the broker itself generates (source MASTER): `state` for every `(framework, task)`
    /// of `tasks`, recorded in one etcd transaction, retried until etcd takes it: a decision that cannot be
    /// recorded is not made yet (meanwhile etcd keeps the tasks' earlier states, which a restarted broker
    /// reconciles with their agents).
    async fn master_updates(
        &self,
        tasks: &[(String, String)],
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
            tracing::warn!(tasks = tasks.len(), error = %e.message(), ?delay, "cannot record status updates; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The updates [`Broker::master_updates`] records.
    fn master_statuses(
        &self,
        tasks: &[(String, String)],
        state: TaskState,
        reason: &str,
        message: &str,
    ) -> Vec<TaskStatus> {
        let inner = self.lock();
        tasks
            .iter()
            .map(|(fw, task)| {
                let agent_id = inner
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
                    timestamp: allot_common::now_secs(),
                    uuid: allot_common::new_status_uuid(),
                    exit_code: None,
                }
            })
            .collect()
    }

    /// A status update from an agent: forwarded to its framework at once and written to etcd lazily (see
    /// [`FLUSH_INTERVAL`]). A repeat of an update already recorded as acknowledged is acknowledged to the agent
    /// again; a repeat of an unacknowledged one is dropped (the broker's heartbeats re-send unacknowledged
    /// updates to the framework); an update for an unknown task or after a terminal state is acknowledged to
    /// the agent and dropped (with a warning for unknown tasks).
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for an update without IDs.
    pub fn status_update(&self, status: TaskStatus, sandbox: Option<String>) -> Result<(), Status> {
        if status.task_id.is_empty() || status.framework_id.is_empty() {
            return Err(Status::invalid_argument(
                "a status update needs task_id and framework_id",
            ));
        }
        let span = allot_common::status_update_span(&status, "internal");
        let _entered = span.enter();
        self.receive_updates(vec![(status, sandbox)]);
        Ok(())
    }

    /// A batch of status updates (each with its sandbox) from one agent, in order, each handled as by
    /// [`Broker::status_update`]. Updates without IDs are dropped with a warning.
    pub fn status_updates(&self, updates: Vec<(TaskStatus, String)>) {
        let updates: Vec<(TaskStatus, Option<String>)> = updates
            .into_iter()
            .filter(|(s, _)| {
                let ok = !s.task_id.is_empty() && !s.framework_id.is_empty();
                if !ok {
                    tracing::warn!(task = %s.task_id, framework = %s.framework_id, "status update without task_id or framework_id dropped");
                }
                ok
            })
            .map(|(s, sandbox)| (s, Some(sandbox)))
            .collect();
        let span = tracing::info_span!("status updates", allot.updates = updates.len());
        let _entered = span.enter();
        self.receive_updates(updates);
    }

    /// Applies agents' `updates` in memory, marks their tasks for the next flush and forwards them.
    fn receive_updates(&self, updates: Vec<(TaskStatus, Option<String>)>) {
        let mut forward: Vec<TaskStatus> = Vec::with_capacity(updates.len());
        let mut ended: Vec<EndedTask> = Vec::new();
        let mut fresh = 0usize;
        {
            let mut inner = self.lock();
            let inner = &mut *inner;
            for (mut status, sandbox) in updates {
                if status.uuid.is_empty() {
                    // Nothing can acknowledge it to its sender; it still reaches the framework once.
                    status.uuid = allot_common::new_status_uuid();
                }
                let key = (status.framework_id.clone(), status.task_id.clone());
                let Some(rec) = inner.tasks.get_mut(&key) else {
                    tracing::warn!(framework = %key.0, task = %key.1, "status update for an unknown task dropped");
                    inner.agent_acks.extend(agent_ack(&status));
                    continue;
                };
                if let Some(cur) = &rec.status {
                    if cur.uuid == status.uuid {
                        // Unacknowledged, it is re-sent to the framework on heartbeats; acknowledged but not
                        // yet written, the flush acknowledges it to the agent.
                        if rec.acknowledged && !inner.dirty.contains_key(&key) {
                            inner.agent_acks.extend(agent_ack(&status));
                        }
                        continue;
                    }
                    if cur.state().is_terminal() {
                        inner.agent_acks.extend(agent_ack(&status));
                        continue;
                    }
                }
                let state = status.state();
                if rec.status.as_ref().map(|c| c.state()) == Some(TaskState::TaskUnreachable)
                    && !state.is_terminal()
                {
                    inner.must_write.insert(key.clone());
                }
                if state.is_terminal() || state == TaskState::TaskUnreachable {
                    ended.push(EndedTask {
                        framework_id: key.0.clone(),
                        task_id: key.1.clone(),
                    });
                }
                rec.status = Some(status.clone());
                // A torn-down framework acknowledges nothing any more: the broker acknowledges for it (the
                // agent can then forget the update, as a Mesos agent does when its framework is shut down).
                let torn_down = inner
                    .frameworks
                    .get(&key.0)
                    .is_some_and(|f| !f.record.active);
                rec.acknowledged = torn_down;
                if let Some(s) = sandbox.filter(|s| !s.is_empty()) {
                    rec.sandbox = s;
                }
                inner.dirty.insert(key, inner.flushes);
                if torn_down {
                    continue;
                }
                M.updates
                    .with_label_values(&[status.state().as_str_name()])
                    .inc();
                tracing::debug!(framework = %status.framework_id, task = %status.task_id,
                    state = status.state().as_str_name(), "status update");
                fresh += 1;
                forward.push(status);
            }
        }
        tracing::debug!(
            updates = forward.len(),
            new = fresh,
            "status updates received"
        );
        self.send_updates(forward);
        self.tell_ended(ended);
    }

    /// Tells the allocator that these tasks ended (their resources are free), without waiting: they join the
    /// next `TasksEnded` call (see [`start_telling_ended`]). Should the call be lost, the allocator still
    /// learns it from etcd when the records are written.
    fn tell_ended(&self, ended: Vec<EndedTask>) {
        if !ended.is_empty() {
            let _ = self.ended.send(ended);
        }
    }

    /// Records `updates` that the broker makes itself (each from the task's record in memory) in etcd, then
    /// forwards each to its framework. Updates for unknown tasks and after a terminal state are dropped.
    ///
    /// # Errors
    /// `UNAVAILABLE` if etcd cannot persist them; nothing is recorded or forwarded then.
    async fn record_updates(&self, updates: Vec<TaskStatus>) -> Result<(), Status> {
        let _writes = self.task_writes.lock().await;
        let mut records: Vec<(String, TaskRecord)> = Vec::with_capacity(updates.len());
        let mut statuses: Vec<TaskStatus> = Vec::with_capacity(updates.len());
        {
            let inner = self.lock();
            let mut seen: HashSet<(String, String)> = HashSet::new();
            for status in updates {
                let key = (status.framework_id.clone(), status.task_id.clone());
                let Some(current) = inner.tasks.get(&key) else {
                    tracing::warn!(framework = %key.0, task = %key.1, "status update for an unknown task dropped");
                    continue;
                };
                if current
                    .status
                    .as_ref()
                    .is_some_and(|c| c.state().is_terminal())
                    || !seen.insert(key.clone())
                {
                    continue;
                }
                let mut rec = current.clone();
                rec.status = Some(status.clone());
                rec.acknowledged = false;
                records.push((self.store.task_key(&key.0, &key.1), rec));
                statuses.push(status);
            }
        }
        self.store.put_chunked(&records).await?;
        {
            let mut inner = self.lock();
            for (_, rec) in records {
                inner.tasks.insert(task_key(&rec), rec);
            }
        }
        for status in &statuses {
            M.updates
                .with_label_values(&[status.state().as_str_name()])
                .inc();
        }
        self.send_updates(statuses);
        Ok(())
    }

    /// ACKNOWLEDGE: the framework has seen the updates `(task_id, uuid)` of `acks`. Takes effect in memory at
    /// once and reaches etcd, then the agent, with the next flush (see [`FLUSH_INTERVAL`]). An acknowledgement
    /// of an update that is not the task's latest is ignored.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` if not subscribed; `NOT_FOUND` if any task is unknown (nothing is acknowledged
    /// then).
    pub fn acknowledge(&self, fw: &str, acks: Vec<(String, Vec<u8>)>) -> Result<(), Status> {
        self.check_subscribed(fw)?;
        let acks: Vec<((String, String), Vec<u8>)> = acks
            .into_iter()
            .map(|(task, uuid)| ((fw.to_string(), task), uuid))
            .collect();
        let mut inner = self.lock();
        if let Some(((_, task), _)) = acks.iter().find(|(key, _)| !inner.tasks.contains_key(key)) {
            return Err(Status::not_found(format!("task {task} is unknown")));
        }
        let flushes = inner.flushes;
        for (key, uuid) in acks {
            if let Some(rec) = inner.tasks.get_mut(&key)
                && !rec.acknowledged
                && rec.status.as_ref().map(|s| &s.uuid) == Some(&uuid)
            {
                rec.acknowledged = true;
                inner.dirty.entry(key).or_insert(flushes);
            }
        }
        Ok(())
    }

    /// Flushes every [`FLUSH_INTERVAL`] until the broker is dropped.
    async fn flush(self: Arc<Self>) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_once().await;
        }
    }

    /// Writes the tasks that are due (see [`FLUSH_INTERVAL`]) in as few transactions as fit, then passes the
    /// acknowledgements now recorded in etcd on to their agents. On an etcd error the tasks stay due for the
    /// next flush and their agents hear nothing (they re-send).
    pub async fn flush_once(&self) {
        let writes = self.task_writes.lock().await;
        // Each record due is encoded where it lies (no clone of the record), with the task's key and, when the
        // framework has acknowledged it, the acknowledgement to pass on once it is written.
        let mut encoded: allot_server::store::Encoded = Vec::new();
        let mut written: Vec<(TaskKey, Option<StatusUpdateAcknowledgement>)> = Vec::new();
        let mut acks = {
            let mut inner = self.lock();
            inner.flushes += 1;
            let now = inner.flushes;
            let inner = &mut *inner;
            let tasks = &inner.tasks;
            let wait = (UNACKNOWLEDGED_WRITE_DELAY.as_millis() / FLUSH_INTERVAL.as_millis()) as u64;
            let mut acks = std::mem::take(&mut inner.agent_acks);
            let must_write = std::mem::take(&mut inner.must_write);
            let mut write = |k: &TaskKey, rec: &TaskRecord| {
                encoded.push((
                    self.store.task_key(&k.0, &k.1),
                    prost::Message::encode_to_vec(rec),
                ));
                let ack = rec
                    .acknowledged
                    .then(|| rec.status.as_ref().and_then(agent_ack))
                    .flatten();
                written.push((k.clone(), ack));
            };
            inner.dirty.retain(|k, since| {
                let Some(rec) = tasks.get(k) else {
                    return false;
                };
                let terminal = rec.status.as_ref().is_some_and(|s| s.state().is_terminal());
                if must_write.contains(k) {
                    write(k, rec);
                    return false;
                }
                if rec.acknowledged && !terminal {
                    // An acknowledged intermediate state is not written: the agent keeps it and tells a
                    // restarted broker (ReconcileTasks).
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
        };
        let mut written = written.into_iter();
        for (n, result) in self.store.put_chunks(encoded).await {
            let tasks = written.by_ref().take(n);
            match result {
                Ok(_) => acks.extend(tasks.filter_map(|(_, ack)| ack)),
                Err(e) => {
                    tracing::warn!(tasks = n, error = %e, "cannot persist task status; retrying");
                    let mut inner = self.lock();
                    for (key, _) in tasks {
                        inner.dirty.insert(key.clone(), 0);
                        inner.must_write.insert(key);
                    }
                }
            }
        }
        // The records are written: passing the acknowledgements on need not hold up other writers.
        drop(writes);
        self.send_agent_acks(acks).await;
    }

    /// Passes acknowledgements on to agents: one call per agent address (a simulator holds many agents). A
    /// call that fails is not retried: the agent re-sends the update and hears the acknowledgement again.
    async fn send_agent_acks(&self, acks: Vec<StatusUpdateAcknowledgement>) {
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
            let Some(mut client) = self.client_at(addr.clone()) else {
                continue;
            };
            tokio::spawn(async move {
                let n = acknowledgements.len();
                if let Err(e) = client
                    .acknowledge_status_updates(AcknowledgeStatusUpdatesRequest {
                        acknowledgements,
                    })
                    .await
                {
                    tracing::debug!(agent = %addr, acknowledgements = n, error = %e.message(), "cannot pass acknowledgements on; the agent will re-send");
                }
            });
        }
    }

    /// DECLINE.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` if not subscribed; `NOT_FOUND` for an unknown offer; `INVALID_ARGUMENT` for a bad
    /// filter.
    pub async fn decline(
        &self,
        fw: &str,
        offer_ids: Vec<String>,
        refuse_seconds: Option<f64>,
    ) -> Result<(), Status> {
        self.check_subscribed(fw)?;
        let refuse = refuse_of(refuse_seconds)?;
        self.check_offers_owned(fw, &offer_ids)?;
        let taken = self.take_offers(offer_ids.into_iter());
        M.declined.inc_by(taken.len() as u64);
        self.recover(taken, refuse, Vec::new()).await;
        Ok(())
    }

    fn check_offers_owned(&self, fw: &str, offer_ids: &[String]) -> Result<(), Status> {
        if offer_ids.is_empty() {
            return Err(Status::invalid_argument("no offer_ids given"));
        }
        let inner = self.lock();
        for id in offer_ids {
            find_offer(&inner, fw, id)?;
        }
        Ok(())
    }

    /// REVIVE or SUPPRESS.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` if not subscribed.
    pub async fn set_suppressed(&self, fw: &str, suppressed: bool) -> Result<(), Status> {
        self.check_subscribed(fw)?;
        if let Some(f) = self.lock().frameworks.get_mut(fw) {
            f.suppressed = suppressed;
        }
        let r = on_allocator(&self.allocators, fw.to_string(), |mut a, fw| async move {
            if suppressed {
                a.suppress(SuppressRequest { framework_id: fw })
                    .await
                    .map(|_| ())
            } else {
                a.revive(ReviveRequest { framework_id: fw })
                    .await
                    .map(|_| ())
            }
        })
        .await;
        r.map_err(|e| Status::unavailable(format!("allocator: {}", e.message())))
    }

    /// KILL.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` if not subscribed; `NOT_FOUND` for an unknown task; `UNAVAILABLE` if its agent
    /// cannot be reached.
    pub async fn kill(&self, fw: &str, task: &str) -> Result<(), Status> {
        self.check_subscribed(fw)?;
        let rec = self
            .lock()
            .tasks
            .get(&(fw.to_string(), task.to_string()))
            .cloned()
            .ok_or_else(|| Status::not_found(format!("task {task} is unknown")))?;
        let status = rec.status.clone().unwrap_or_default();
        if status.state().is_terminal() {
            self.send_updates([status]);
            return Ok(());
        }
        let agent_id = rec
            .task
            .as_ref()
            .map(|t| t.agent_id.clone())
            .unwrap_or_default();
        let mut client = self
            .agent_client(&agent_id)
            .await
            .ok_or_else(|| Status::unavailable(format!("agent {agent_id} is unknown")))?;
        match client
            .kill_task(KillTaskRequest {
                framework_id: fw.to_string(),
                task_id: task.to_string(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => {
                let lost = self.master_statuses(
                    &[(fw.to_string(), task.to_string())],
                    TaskState::TaskLost,
                    "REASON_TASK_UNKNOWN",
                    e.message(),
                );
                self.record_updates(lost).await
            }
            Err(e) => Err(Status::unavailable(format!(
                "agent {agent_id}: {}",
                e.message()
            ))),
        }
    }

    /// RECONCILE: sends the latest state of the named tasks, or of every non-terminal task when none are named,
    /// as UPDATE events with no uuid (nothing to acknowledge). Unknown tasks are reported TASK_UNKNOWN.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` if not subscribed.
    pub fn reconcile(&self, fw: &str, tasks: Vec<pb::ReconcileTask>) -> Result<(), Status> {
        self.check_subscribed(fw)?;
        let statuses: Vec<TaskStatus> = {
            let inner = self.lock();
            let latest = |t: &TaskRecord| {
                let mut s = t.status.clone().unwrap_or_default();
                s.uuid.clear();
                s.reason = "REASON_RECONCILIATION".into();
                s
            };
            if tasks.is_empty() {
                inner
                    .tasks
                    .values()
                    .filter(|t| t.framework_id == fw)
                    .filter(|t| t.status.as_ref().is_some_and(|s| !s.state().is_terminal()))
                    .map(latest)
                    .collect()
            } else {
                tasks
                    .iter()
                    .map(
                        |rt| match inner.tasks.get(&(fw.to_string(), rt.task_id.clone())) {
                            Some(t) => latest(t),
                            None => TaskStatus {
                                task_id: rt.task_id.clone(),
                                state: TaskState::TaskUnknown as i32,
                                source: StatusSource::SourceMaster as i32,
                                reason: "REASON_RECONCILIATION".into(),
                                agent_id: rt.agent_id.clone(),
                                framework_id: fw.to_string(),
                                timestamp: allot_common::now_secs(),
                                ..Default::default()
                            },
                        },
                    )
                    .collect()
            }
        };
        self.send_updates(statuses);
        Ok(())
    }

    /// TEARDOWN: kills every live task of the framework, returns its offers and marks it removed.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown framework; `UNAVAILABLE` if etcd cannot record the removal.
    pub async fn teardown(&self, fw: &str) -> Result<(), Status> {
        let mut record = self
            .lock()
            .frameworks
            .get(fw)
            .map(|f| f.record.clone())
            .ok_or_else(|| Status::not_found(format!("framework {fw} is unknown")))?;
        record.active = false;
        self.store
            .put(&self.store.key(Kind::Frameworks, fw), &record, None)
            .await?;
        let (offers, live) = {
            let mut inner = self.lock();
            if let Some(f) = inner.frameworks.get_mut(fw) {
                f.record = record;
                f.sender = None;
            }
            let offers = inner.take_framework_offers(fw);
            let live: Vec<(String, String)> = inner
                .tasks
                .values()
                .filter(|t| t.framework_id == fw)
                .filter(|t| t.status.as_ref().is_some_and(|s| !s.state().is_terminal()))
                .filter_map(|t| {
                    t.task
                        .as_ref()
                        .map(|i| (i.task_id.clone(), i.agent_id.clone()))
                })
                .collect();
            (offers, live)
        };
        self.deactivate(fw, offers).await;
        for (task, agent) in live {
            if let Some(mut c) = self.agent_client(&agent).await {
                let _ = c
                    .kill_task(KillTaskRequest {
                        framework_id: fw.into(),
                        task_id: task,
                    })
                    .await;
            }
        }
        tracing::info!(framework = %fw, "framework torn down");
        Ok(())
    }

    /// An agent is reachable (again): its tasks that were made TASK_UNREACHABLE are reconciled with it (see
    /// [`Broker::reconcile_at`]); those it still runs are reported in their state again, those it never heard
    /// of TASK_LOST. Updates it could not deliver meanwhile arrive from its status update manager on their own.
    async fn agent_returned(&self, agent_id: &str) {
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
    /// process, before it wrote the task down) becomes TASK_LOST; tasks it knows report their latest state.
    /// Launches still on their way to the agent are waited for first (at most [`LAUNCH_TIMEOUT`]), for the new
    /// process may be the one they reach; a launch made later is not reconciled here (see
    /// [`Broker::reconcile_agent`]). TASK_UNREACHABLE tasks are [`Broker::agent_returned`]'s.
    async fn agent_reregistered(&self, agent_id: &str) {
        let in_flight: Vec<TaskKey> = {
            let inner = self.lock();
            inner
                .launching
                .iter()
                .filter(|k| {
                    inner
                        .tasks
                        .get(*k)
                        .and_then(|t| t.task.as_ref())
                        .is_some_and(|t| t.agent_id == agent_id)
                })
                .cloned()
                .collect()
        };
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
    /// but those whose launch is on its way to the agent: the agent may not know them yet.
    async fn reconcile_agent(
        &self,
        agent_id: &str,
        pick: impl Fn(&TaskStatus) -> bool,
        returned: bool,
        what: &'static str,
    ) {
        let tasks: Vec<Recorded> = {
            let inner = self.lock();
            inner
                .tasks
                .iter()
                .filter(|(k, t)| {
                    t.task.as_ref().is_some_and(|i| i.agent_id == agent_id)
                        && !inner.launching.contains(*k)
                })
                .filter_map(|(k, t)| {
                    let s = t.status.as_ref()?;
                    pick(s).then(|| (k.clone(), s.uuid.clone()))
                })
                .collect()
        };
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
        let live: Vec<(String, String)> = self
            .lock()
            .tasks
            .values()
            .filter(|t| t.task.as_ref().is_some_and(|i| i.agent_id == agent_id))
            .filter(|t| {
                t.status.as_ref().is_some_and(|s| {
                    !s.state().is_terminal() && s.state() != TaskState::TaskUnreachable
                })
            })
            .filter_map(|t| Some((t.framework_id.clone(), t.task.as_ref()?.task_id.clone())))
            .collect();
        tracing::warn!(agent = %agent_id, tasks = live.len(), "agent unreachable");
        self.master_updates(
            &live,
            TaskState::TaskUnreachable,
            "REASON_AGENT_UNREACHABLE",
            &format!("agent {agent_id} stopped heartbeating"),
        )
        .await;
    }

    // ---------------------------------------------------------------- operator views

    /// Every framework with its connection state and resources.
    pub fn frameworks(&self) -> Vec<allot_proto::operator::FrameworkState> {
        let inner = self.lock();
        let mut used: HashMap<&str, Resources> = HashMap::new();
        for t in inner.tasks.values() {
            if t.status.as_ref().is_some_and(|s| !s.state().is_terminal()) {
                let r = t
                    .task
                    .as_ref()
                    .map(|i| resources_from_proto(&i.resources).unwrap_or_default());
                used.entry(&t.framework_id)
                    .or_default()
                    .add(&r.unwrap_or_default());
            }
        }
        let mut offered: HashMap<&str, Resources> = HashMap::new();
        for o in inner.offers.values() {
            offered
                .entry(&o.offer.framework_id)
                .or_default()
                .add(&o.resources);
        }
        let mut out: Vec<_> = inner
            .frameworks
            .iter()
            .map(|(id, f)| allot_proto::operator::FrameworkState {
                record: Some(f.record.clone()),
                connected: f.sender.is_some(),
                suppressed: f.suppressed,
                used: resources_to_proto(&used.get(id.as_str()).cloned().unwrap_or_default()),
                offered: resources_to_proto(&offered.get(id.as_str()).cloned().unwrap_or_default()),
            })
            .collect();
        out.sort_by_key(|f| f.record.as_ref().map(|r| r.registered_at_ms).unwrap_or(0));
        out
    }

    /// Every task, or those of `fw` when it is not empty.
    pub fn tasks(&self, fw: &str) -> Vec<TaskRecord> {
        let inner = self.lock();
        let mut out: Vec<TaskRecord> = inner
            .tasks
            .values()
            .filter(|t| fw.is_empty() || t.framework_id == fw)
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            (&a.framework_id, a.task.as_ref().map(|t| &t.task_id))
                .cmp(&(&b.framework_id, b.task.as_ref().map(|t| &t.task_id)))
        });
        out
    }

    /// Every outstanding offer.
    pub fn offers(&self) -> Vec<pb::Offer> {
        self.lock()
            .offers
            .values()
            .map(|o| o.offer.clone())
            .collect()
    }
}

/// The outstanding offer `id` of framework `fw`.
fn find_offer<'a>(inner: &'a Inner, fw: &str, id: &str) -> Result<&'a OfferEntry, Status> {
    inner
        .offers
        .get(id)
        .filter(|o| o.offer.framework_id == fw)
        .ok_or_else(|| {
            Status::not_found(format!(
                "offer {id} is unknown, was rescinded, or was already used"
            ))
        })
}

fn refuse_of(refuse_seconds: Option<f64>) -> Result<f64, Status> {
    let r = refuse_seconds.unwrap_or(DEFAULT_REFUSE_SECONDS);
    if r.is_finite() && r >= 0.0 {
        Ok(r)
    } else {
        Err(Status::invalid_argument(format!(
            "filters.refuse_seconds must be a finite number >= 0, got {r}"
        )))
    }
}
