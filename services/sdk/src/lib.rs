//! Write an Allot framework the way Mesos frameworks are written: implement [`Scheduler`], hand it to
//! [`run`], and answer offers through the [`Driver`].
//!
//! The driver subscribes to the offer-broker, dispatches events to the scheduler's callbacks, acknowledges
//! every status update after `status_update` returns (implicit acknowledgements, Mesos' default), re-subscribes
//! with the same FrameworkID when the connection drops or heartbeats stop, and makes the scheduler's calls
//! (accept, decline, kill, ...) in the order they were made: ACCEPT, DECLINE and ACKNOWLEDGE, which name their
//! own offers or updates, up to four at once without waiting for one another; every other call (REVIVE,
//! SUPPRESS, KILL, RECONCILE, TEARDOWN) only after all calls made before it are answered. A call that fails is
//! reported to [`Scheduler::error`].
//!
//! No launch is left without an answer. The broker answers every task of an ACCEPT it refuses with a status
//! update (TASK_ERROR for an invalid launch, TASK_DROPPED otherwise); and when an ACCEPT fails in a way that
//! leaves its outcome unknown (the call timed out, the connection broke, the broker changed), the driver
//! reconciles exactly its tasks, after 1 s and then backing off to 30 s (at once after a re-subscription),
//! until an update names each of them: the task's state, or TASK_UNKNOWN for a launch that never took effect.
//! A framework that does nothing special therefore hears of every task it launched.
//!
//! ```no_run
//! use allot_sdk::{Driver, DriverConfig, Scheduler, Offer, TaskStatus};
//! struct Hello;
//! impl Scheduler for Hello {
//!     fn resource_offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
//!         driver.decline(offers.iter().map(|o| o.offer_id.clone()).collect(), Some(5.0));
//!     }
//!     fn status_update(&mut self, _driver: &Driver, status: &TaskStatus) {
//!         println!("{} is {}", status.task_id, status.state().as_str_name());
//!     }
//! }
//! # async fn go() -> Result<(), allot_sdk::SdkError> {
//! let config = DriverConfig::new("127.0.0.1:5052", allot_sdk::framework_info("hello", "*"));
//! allot_sdk::run(config, Hello).await?;
//! # Ok(()) }
//! ```

pub mod executor;

pub use allot_proto::common::{
    CommandInfo, ExecutorInfo, FrameworkInfo, Resource, TaskInfo, TaskState, TaskStatus,
};
pub use allot_proto::scheduler::Offer;

use allot_proto::scheduler::{
    self as pb, Filters, Launch, Operation, event, operation, scheduler_client::SchedulerClient,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// A framework scheduler's callbacks. Each runs on the driver's task; keep them quick and make calls through
/// the [`Driver`], which queues them.
pub trait Scheduler: Send {
    /// SUBSCRIBED: the framework is registered (again, after a reconnect) under `framework_id`.
    fn registered(&mut self, _driver: &Driver, _framework_id: &str) {}
    /// OFFERS: resources to accept (launch tasks) or decline.
    fn resource_offers(&mut self, driver: &Driver, offers: Vec<Offer>);
    /// RESCIND: an offer is no longer valid.
    fn offer_rescinded(&mut self, _driver: &Driver, _offer_id: &str) {}
    /// UPDATE: a task changed state. The driver acknowledges it after this returns.
    fn status_update(&mut self, driver: &Driver, status: &TaskStatus);
    /// ERROR from the broker, or a call that failed.
    fn error(&mut self, _driver: &Driver, _message: &str) {}
    /// The connection to the broker dropped; the driver is re-subscribing.
    fn disconnected(&mut self, _driver: &Driver) {}
    /// MESSAGE: `data` from the framework's executor `executor_id` on agent `agent_id` (best effort, as in
    /// Mesos' `frameworkMessage`).
    fn framework_message(
        &mut self,
        _driver: &Driver,
        _executor_id: &str,
        _agent_id: &str,
        _data: &[u8],
    ) {
    }
    /// FAILURE with an executor: executor `executor_id` on agent `agent_id` exited, with wait `status` (exit
    /// code << 8, or the signal number) when the agent saw it (Mesos' `executorLost`). Its tasks' final
    /// updates come as status updates (REASON_EXECUTOR_TERMINATED).
    fn executor_lost(
        &mut self,
        _driver: &Driver,
        _executor_id: &str,
        _agent_id: &str,
        _status: Option<i32>,
    ) {
    }
    /// FAILURE without an executor: agent `agent_id` was lost (Mesos' `slaveLost`).
    fn agent_lost(&mut self, _driver: &Driver, _agent_id: &str) {}
    /// Called about once a second while subscribed, for the framework's own timers (for example, giving up on
    /// a task that has stayed TASK_UNREACHABLE too long). Not a Mesos callback.
    fn tick(&mut self, _driver: &Driver) {}
}

/// A failure that ends [`run`].
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The broker refused the subscription (bad FrameworkInfo, or a FrameworkID that was torn down).
    #[error("subscription refused: {0}")]
    Subscribe(String),
    /// The broker address is invalid.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The framework's TLS material is missing or does not load (see [`DriverConfig::dialer`]).
    #[error(transparent)]
    Tls(#[from] allot_common::tls::TlsError),
}

/// The principal a framework presents when the environment names none (`ALLOT_TLS_NAME`): the one
/// `allot certs init` issues by default.
pub const DEFAULT_FRAMEWORK_PRINCIPAL: &str = "framework-default";

/// Where to subscribe and as what.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The offer-broker's address (`host:port`); for replicated brokers, every replica's, comma-separated: the
    /// driver follows the leader (a standby names it; an unreachable replica is skipped).
    pub broker: String,
    /// The framework's description; set `framework_id` to re-subscribe as an existing framework.
    pub info: FrameworkInfo,
    /// How the driver connects to the broker. `None` (the default): as the environment says, when [`run`]
    /// starts: mutual TLS with the certificate of principal `ALLOT_TLS_NAME` (default
    /// [`DEFAULT_FRAMEWORK_PRINCIPAL`]) in `ALLOT_TLS_DIR` (default `.allot/tls`), or plaintext if
    /// `ALLOT_INSECURE` is set (see `allot_common::tls::from_env`).
    pub dialer: Option<allot_common::grpc::Dialer>,
}

impl DriverConfig {
    /// A config for `info` at `broker`, secured as the environment says (see [`DriverConfig::dialer`]).
    pub fn new(broker: &str, info: FrameworkInfo) -> Self {
        Self {
            broker: broker.to_string(),
            info,
            dialer: None,
        }
    }

    /// Connects through `dialer` (mutual TLS with material of the caller's choosing, or plaintext) instead of
    /// what the environment says.
    pub fn with_dialer(mut self, dialer: allot_common::grpc::Dialer) -> Self {
        self.dialer = Some(dialer);
        self
    }
}

/// A `FrameworkInfo` named `name` in `role`, run as the current user, with no failover timeout.
pub fn framework_info(name: &str, role: &str) -> FrameworkInfo {
    FrameworkInfo {
        name: name.to_string(),
        user: std::env::var("USER").unwrap_or_else(|_| "root".into()),
        roles: vec![role.to_string()],
        ..Default::default()
    }
}

/// A shell command task named `task_id` with `resources` (Mesos resource text, e.g. `cpus:0.5;mem:64`).
///
/// # Errors
/// The resource text is invalid.
pub fn shell_task(
    task_id: &str,
    command: &str,
    resources: &str,
) -> Result<TaskInfo, allot_resources::ResourcesError> {
    let r: allot_resources::Resources = resources.parse()?;
    Ok(TaskInfo {
        name: task_id.to_string(),
        task_id: task_id.to_string(),
        resources: allot_common::convert::resources_to_proto(&r),
        command: Some(CommandInfo {
            value: command.to_string(),
            shell: true,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The most pipelined calls (ACCEPT, DECLINE, ACKNOWLEDGE) one driver has in flight at once. One at a time,
/// a framework launching 800 tasks a second spent half of each second waiting on its own ACCEPTs, and every
/// ACCEPT queued behind the previous one.
const MAX_CALLS_IN_FLIGHT: usize = 4;

/// The most acknowledgements one ACKNOWLEDGE call carries.
const MAX_ACKS_PER_CALL: usize = 1024;

#[derive(Debug)]
enum Call {
    Accept(Vec<String>, Vec<TaskInfo>, Option<f64>),
    /// An ACCEPT with RESERVE (`true`) or UNRESERVE operations: `(offer_ids, reserve, resources tagged with
    /// the role)`.
    Reservation(Vec<String>, bool, Vec<Resource>),
    Decline(Vec<String>, Option<f64>),
    Revive,
    Suppress,
    Kill(String, String),
    /// `(agent_id, task_id, uuid)`, and more gathered from the queue when it is sent.
    Acknowledge(String, String, Vec<u8>, Vec<pb::Acknowledgement>),
    Reconcile(Vec<(String, String)>),
    /// `(agent_id, executor_id, data)`.
    Message(String, String, Vec<u8>),
    /// `(agent_id, executor_id)`.
    Shutdown(String, String),
    Teardown,
}

impl Call {
    /// Whether the call may be made while earlier ones are still in flight: ACCEPT, DECLINE and ACKNOWLEDGE
    /// each name their own offers or updates, so their order does not matter. Every other call waits for
    /// those before it to be answered.
    fn pipelined(&self) -> bool {
        matches!(
            self,
            Call::Accept(..) | Call::Reservation(..) | Call::Decline(..) | Call::Acknowledge(..)
        )
    }

    /// The call's name in the scheduler API (`ACCEPT`, `ACKNOWLEDGE`, ...).
    fn name(&self) -> &'static str {
        match self {
            Call::Accept(..) | Call::Reservation(..) => "ACCEPT",
            Call::Decline(..) => "DECLINE",
            Call::Revive => "REVIVE",
            Call::Suppress => "SUPPRESS",
            Call::Kill(..) => "KILL",
            Call::Acknowledge(..) => "ACKNOWLEDGE",
            Call::Reconcile(..) => "RECONCILE",
            Call::Message(..) => "MESSAGE",
            Call::Shutdown(..) => "SHUTDOWN",
            Call::Teardown => "TEARDOWN",
        }
    }
}

/// The scheduler's handle on the cluster. Cheap to clone; calls are queued and run in order.
#[derive(Clone, Debug)]
pub struct Driver {
    /// Each call with the span it was made in (its trace continues there).
    calls: mpsc::UnboundedSender<(Call, tracing::Span)>,
    framework_id: Arc<Mutex<String>>,
    stop: CancellationToken,
    teardown: Arc<tokio::sync::Notify>,
}

impl Driver {
    fn call(&self, c: Call) {
        let _ = self.calls.send((c, tracing::Span::current()));
    }

    /// The FrameworkID (empty before the first SUBSCRIBED).
    pub fn framework_id(&self) -> String {
        self.framework_id
            .lock()
            .expect("framework id poisoned")
            .clone()
    }

    /// ACCEPT `offer_ids` (all on one agent) by launching `tasks`; unused resources are filtered for
    /// `refuse_seconds` (default 5).
    pub fn accept(
        &self,
        offer_ids: Vec<String>,
        tasks: Vec<TaskInfo>,
        refuse_seconds: Option<f64>,
    ) {
        self.call(Call::Accept(offer_ids, tasks, refuse_seconds));
    }

    /// ACCEPT `offer_ids` (all on one agent) with a RESERVE (`reserve`) or UNRESERVE of `resources` for `role`
    /// (Mesos' dynamic reservation, one of the framework's roles; `resources` as `cpus:1;mem:512`, scalars,
    /// mem in MiB). The offers are used up; the agent comes back in later offers with the resources reserved
    /// for the role (or no longer). A refusal (resources the offers do not hold, another role, the ACL file)
    /// is reported to [`Scheduler::error`].
    ///
    /// # Errors
    /// `resources` that do not parse (nothing is sent).
    pub fn reserve(
        &self,
        offer_ids: Vec<String>,
        reserve: bool,
        role: &str,
        resources: &str,
    ) -> Result<(), allot_resources::ResourcesError> {
        let amount: allot_resources::Resources = resources.parse()?;
        let tagged = allot_common::convert::piece_to_proto(&Default::default(), &amount, role);
        self.call(Call::Reservation(offer_ids, reserve, tagged));
        Ok(())
    }

    /// DECLINE `offer_ids`, filtering their agents for `refuse_seconds` (default 5; 0 for no filter).
    pub fn decline(&self, offer_ids: Vec<String>, refuse_seconds: Option<f64>) {
        self.call(Call::Decline(offer_ids, refuse_seconds));
    }

    /// REVIVE: clear filters, end suppression.
    pub fn revive(&self) {
        self.call(Call::Revive);
    }

    /// SUPPRESS: no more offers until [`Driver::revive`].
    pub fn suppress(&self) {
        self.call(Call::Suppress);
    }

    /// KILL a task.
    pub fn kill(&self, task_id: &str, agent_id: &str) {
        self.call(Call::Kill(task_id.into(), agent_id.into()));
    }

    /// RECONCILE `(task_id, agent_id)` pairs, or every task when empty.
    pub fn reconcile(&self, tasks: Vec<(String, String)>) {
        self.call(Call::Reconcile(tasks));
    }

    /// MESSAGE: sends `data` to the framework's executor `executor_id` on agent `agent_id` (its MESSAGE event).
    /// Best effort, as in Mesos: a message to an executor that is not running is reported to
    /// [`Scheduler::error`], one lost later is not reported.
    pub fn send_framework_message(&self, executor_id: &str, agent_id: &str, data: Vec<u8>) {
        self.call(Call::Message(agent_id.into(), executor_id.into(), data));
    }

    /// SHUTDOWN: executor `executor_id` on agent `agent_id` gets its SHUTDOWN event and is killed after its
    /// grace period; its live tasks end.
    pub fn shutdown_executor(&self, executor_id: &str, agent_id: &str) {
        self.call(Call::Shutdown(agent_id.into(), executor_id.into()));
    }

    /// TEARDOWN the framework (kills its tasks), then stop the driver. Acknowledgements of updates already
    /// delivered go out first.
    pub fn teardown(&self) {
        self.teardown.notify_one();
    }

    /// Stops the driver without tearing the framework down (its tasks keep running for `failover_timeout`).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// A client of the broker replica calls go to now, taking messages as large as Allot's servers send.
fn scheduler_client(
    brokers: &allot_common::grpc::Replicas,
) -> SchedulerClient<allot_common::grpc::Channel> {
    SchedulerClient::new(brokers.channel())
        .max_decoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES)
}

/// A call that failed: what to tell [`Scheduler::error`], and for an ACCEPT its tasks `(task_id, agent_id)`,
/// whose fate the driver then reconciles.
struct CallFailed {
    message: String,
    launching: Vec<(String, String)>,
}

/// The first wait before the driver reconciles tasks of a failed ACCEPT; it doubles up to
/// [`MAX_RECONCILE_DELAY`] while the broker has not answered for every one of them.
const FIRST_RECONCILE_DELAY: Duration = Duration::from_secs(1);

/// The longest wait between two reconciliations of tasks of failed ACCEPTs.
const MAX_RECONCILE_DELAY: Duration = Duration::from_secs(30);

/// Tasks of ACCEPTs that failed, whose fate the framework has not heard yet: the driver reconciles them with
/// backoff (at once after a re-subscription) until an update names each of them. An ACCEPT that failed may
/// have launched its tasks (the answer was lost, the broker died after recording them) or not (refused, or
/// never received); the broker answers a reconciliation with the task's state, or TASK_UNKNOWN for a task it
/// never recorded, so a framework never waits for ever on a launch it cannot know the outcome of.
#[derive(Default)]
struct Unsure {
    /// `task_id -> agent_id`.
    tasks: HashMap<String, String>,
    /// When to reconcile next, and the wait after that.
    next: Option<(tokio::time::Instant, Duration)>,
}

impl Unsure {
    fn add(&mut self, tasks: Vec<(String, String)>) {
        if tasks.is_empty() {
            return;
        }
        self.tasks.extend(tasks);
        if self.next.is_none() {
            self.next = Some((
                tokio::time::Instant::now() + FIRST_RECONCILE_DELAY,
                FIRST_RECONCILE_DELAY,
            ));
        }
    }

    /// An update named `task`: its fate is known.
    fn heard(&mut self, task: &str) {
        if self.tasks.remove(task).is_some() && self.tasks.is_empty() {
            self.next = None;
        }
    }

    /// The tasks to reconcile now, and the next time (backing off).
    fn due(&mut self) -> Vec<(String, String)> {
        let Some((_, wait)) = self.next else {
            return Vec::new();
        };
        let wait = (wait * 2).min(MAX_RECONCILE_DELAY);
        self.next = Some((tokio::time::Instant::now() + wait, wait));
        self.tasks
            .iter()
            .map(|(t, a)| (t.clone(), a.clone()))
            .collect()
    }

    /// When [`Unsure::due`] should run; far away when nothing is unsure.
    fn deadline(&self) -> tokio::time::Instant {
        self.next.map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            |(at, _)| at,
        )
    }
}

async fn run_calls(
    brokers: allot_common::grpc::Replicas,
    mut calls: mpsc::UnboundedReceiver<(Call, tracing::Span)>,
    framework_id: Arc<Mutex<String>>,
    errors: mpsc::UnboundedSender<CallFailed>,
    stop: CancellationToken,
) {
    // Calls taken off the channel and not made yet, in order.
    let mut queued: VecDeque<(Call, tracing::Span)> = VecDeque::new();
    // Pipelined calls in flight (see `Call::pipelined`); finished ones are joined when the next needs room.
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        // Once stopped, drain what is queued (a last acknowledgement, the teardown) and end.
        if queued.is_empty() {
            let first = tokio::select! {
                biased;
                c = calls.recv() => c,
                _ = stop.cancelled() => calls.try_recv().ok(),
            };
            queued.extend(first);
        }
        while let Ok(c) = calls.try_recv() {
            queued.push_back(c);
        }
        let Some((mut call, caller)) = queued.pop_front() else {
            while in_flight.join_next().await.is_some() {}
            return;
        };
        // Acknowledgements that queued up while the previous call was in flight go out in one ACKNOWLEDGE,
        // ahead of the other calls queued between them (an acknowledgement is independent of them).
        if let Call::Acknowledge(_, _, _, more) = &mut call {
            queued.retain_mut(|(c, _)| match c {
                Call::Acknowledge(agent_id, task_id, uuid, _) if more.len() < MAX_ACKS_PER_CALL => {
                    more.push(pb::Acknowledgement {
                        agent_id: std::mem::take(agent_id),
                        task_id: std::mem::take(task_id),
                        uuid: std::mem::take(uuid),
                    });
                    false
                }
                _ => true,
            });
        }
        let fw = framework_id.lock().expect("framework id poisoned").clone();
        let filters = |r: Option<f64>| Some(Filters { refuse_seconds: r });
        let what = call.name();
        // One span per call (ACCEPT, ACKNOWLEDGE, ...), in the trace of the span the call was made in; an
        // ACCEPT made from `resource_offers` starts a new trace, the task's.
        let span = tracing::info_span!(
            parent: &caller,
            "scheduler call",
            otel.name = %what,
            otel.status_code = tracing::field::Empty,
            allot.framework.id = %fw,
            allot.offer.ids = tracing::field::Empty,
            allot.task.ids = tracing::field::Empty,
        );
        // The tasks of an ACCEPT, to reconcile should the call fail (its outcome is then unknown).
        let mut launching: Vec<(String, String)> = Vec::new();
        if let Call::Accept(offers, tasks, _) = &call {
            span.record("allot.offer.ids", offers.join(","));
            let ids: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
            span.record("allot.task.ids", ids.join(","));
            launching = tasks
                .iter()
                .map(|t| (t.task_id.clone(), t.agent_id.clone()))
                .collect();
        }
        let call_span = span.clone();
        // The broker the subscription is on (only the subscription loop moves to another replica).
        let mut client = scheduler_client(&brokers);
        let pipelined = call.pipelined();
        let stop = stop.clone();
        let result = async move {
            match call {
                Call::Accept(offer_ids, tasks, r) => client
                    .accept(pb::AcceptRequest {
                        framework_id: fw,
                        offer_ids,
                        operations: vec![Operation {
                            operation: Some(operation::Operation::Launch(Launch {
                                task_infos: tasks,
                            })),
                        }],
                        filters: filters(r),
                    })
                    .await
                    .map(|_| ()),
                Call::Reservation(offer_ids, reserve, resources) => client
                    .accept(pb::AcceptRequest {
                        framework_id: fw,
                        offer_ids,
                        operations: vec![Operation {
                            operation: Some(match reserve {
                                true => operation::Operation::Reserve(pb::Reserve { resources }),
                                false => {
                                    operation::Operation::Unreserve(pb::Unreserve { resources })
                                }
                            }),
                        }],
                        filters: None,
                    })
                    .await
                    .map(|_| ()),
                Call::Decline(offer_ids, r) => client
                    .decline(pb::DeclineRequest {
                        framework_id: fw,
                        offer_ids,
                        filters: filters(r),
                    })
                    .await
                    .map(|_| ()),
                Call::Revive => client
                    .revive(pb::ReviveRequest { framework_id: fw })
                    .await
                    .map(|_| ()),
                Call::Suppress => client
                    .suppress(pb::SuppressRequest { framework_id: fw })
                    .await
                    .map(|_| ()),
                Call::Kill(task_id, agent_id) => client
                    .kill(pb::KillRequest {
                        framework_id: fw,
                        task_id,
                        agent_id,
                    })
                    .await
                    .map(|_| ()),
                Call::Acknowledge(agent_id, task_id, uuid, more) => client
                    .acknowledge(pb::AcknowledgeRequest {
                        framework_id: fw,
                        agent_id,
                        task_id,
                        uuid,
                        more,
                    })
                    .await
                    .map(|_| ()),
                Call::Reconcile(tasks) => client
                    .reconcile(pb::ReconcileRequest {
                        framework_id: fw,
                        tasks: tasks
                            .into_iter()
                            .map(|(task_id, agent_id)| pb::ReconcileTask { task_id, agent_id })
                            .collect(),
                    })
                    .await
                    .map(|_| ()),
                Call::Message(agent_id, executor_id, data) => client
                    .message(pb::MessageRequest {
                        framework_id: fw,
                        agent_id,
                        executor_id,
                        data,
                    })
                    .await
                    .map(|_| ()),
                Call::Shutdown(agent_id, executor_id) => client
                    .shutdown(pb::ShutdownRequest {
                        framework_id: fw,
                        agent_id,
                        executor_id,
                    })
                    .await
                    .map(|_| ()),
                Call::Teardown => {
                    let r = client
                        .teardown(pb::TeardownRequest { framework_id: fw })
                        .await
                        .map(|_| ());
                    stop.cancel();
                    r
                }
            }
        }
        .instrument(call_span);
        let errors = errors.clone();
        let made = async move {
            if let Err(e) = result.await {
                span.record("otel.status_code", "ERROR");
                let _ = errors.send(CallFailed {
                    message: format!("{what} failed: {} ({:?})", e.message(), e.code()),
                    launching,
                });
            }
        };
        if pipelined {
            while in_flight.len() >= MAX_CALLS_IN_FLIGHT {
                in_flight.join_next().await;
            }
            in_flight.spawn(made);
        } else {
            // Every call made before it is answered first: SUPPRESS after REVIVE stays suppressed, TEARDOWN
            // comes last.
            while in_flight.join_next().await.is_some() {}
            made.await;
        }
    }
}

/// Runs `scheduler` until it calls [`Driver::teardown`] or [`Driver::stop`]; returns the scheduler so the
/// caller can read what it collected.
///
/// # Errors
/// [`SdkError::Subscribe`] when the broker refuses the subscription for good (invalid FrameworkInfo, or the
/// framework was torn down); [`SdkError::Transport`] for an invalid broker address; [`SdkError::Tls`] when
/// the TLS material is missing or does not load. A broker that cannot be reached is retried with backoff, not
/// an error.
pub async fn run<S: Scheduler>(config: DriverConfig, mut scheduler: S) -> Result<S, SdkError> {
    let dialer = match config.dialer {
        Some(d) => d,
        None => allot_common::grpc::Dialer::new(allot_common::tls::from_env(
            DEFAULT_FRAMEWORK_PRINCIPAL,
        )?),
    };
    let brokers = dialer.replicas(&config.broker)?;
    let (call_tx, call_rx) = mpsc::unbounded_channel();
    let (err_tx, mut err_rx) = mpsc::unbounded_channel();
    let framework_id = Arc::new(Mutex::new(config.info.framework_id.clone()));
    let stop = CancellationToken::new();
    let teardown = Arc::new(tokio::sync::Notify::new());
    let driver = Driver {
        calls: call_tx,
        framework_id: framework_id.clone(),
        stop: stop.clone(),
        teardown: teardown.clone(),
    };
    let runner = tokio::spawn(run_calls(
        brokers.clone(),
        call_rx,
        framework_id.clone(),
        err_tx,
        stop.clone(),
    ));
    let mut info = config.info;
    let mut unsure = Unsure::default();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = Duration::from_millis(200);
    let mut delays = allot_common::retry_delays(first);
    let result = 'outer: loop {
        info.framework_id = driver.framework_id();
        let mut c = scheduler_client(&brokers);
        let subscribed = tokio::select! {
            r = c.subscribe(pb::SubscribeRequest { framework_info: Some(info.clone()) }) => r,
            _ = stop.cancelled() => break 'outer Ok(()),
        };
        let mut stream = match subscribed {
            Ok(s) => s.into_inner(),
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::NotFound
                        | tonic::Code::FailedPrecondition
                ) =>
            {
                break 'outer Err(SdkError::Subscribe(e.message().to_string()));
            }
            Err(e) => {
                // A standby broker names the leader, an unreachable one is skipped: the next try goes there,
                // soon (backing off is for a broker that answers and cannot serve).
                let delay = if brokers.failed(&e) {
                    first
                } else {
                    delays.next().unwrap_or(Duration::from_secs(5))
                };
                tracing::warn!(error = %e.message(), ?delay, broker = %brokers.current(), "cannot subscribe; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => break 'outer Ok(()),
                }
                continue;
            }
        };
        delays = allot_common::retry_delays(first);
        let mut patience = Duration::from_secs(45);
        let mut last_event = tokio::time::Instant::now();
        loop {
            let msg = tokio::select! {
                m = tokio::time::timeout_at(last_event + patience, stream.message()) => m,
                Some(e) = err_rx.recv() => {
                    unsure.add(e.launching);
                    scheduler.error(&driver, &e.message);
                    continue;
                }
                _ = tokio::time::sleep_until(unsure.deadline()), if unsure.next.is_some() => {
                    driver.call(Call::Reconcile(unsure.due()));
                    continue;
                }
                _ = teardown.notified() => { driver.call(Call::Teardown); continue; }
                _ = ticks.tick() => { scheduler.tick(&driver); continue; }
                _ = stop.cancelled() => break 'outer Ok(()),
            };
            last_event = tokio::time::Instant::now();
            let ev = match msg {
                Ok(Ok(Some(ev))) => ev,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e.message(), "event stream failed");
                    break;
                }
                Err(_) => {
                    tracing::warn!("no event within three heartbeat intervals; reconnecting");
                    break;
                }
            };
            let trace_context = ev.trace_context;
            match ev.event {
                Some(event::Event::Subscribed(s)) => {
                    *framework_id.lock().expect("framework id poisoned") = s.framework_id.clone();
                    patience =
                        Duration::from_secs_f64((s.heartbeat_interval_seconds * 3.0).max(1.0));
                    scheduler.registered(&driver, &s.framework_id);
                    if !unsure.tasks.is_empty() {
                        driver.call(Call::Reconcile(unsure.due()));
                    }
                }
                Some(event::Event::Offers(o)) => scheduler.resource_offers(&driver, o.offers),
                Some(event::Event::Rescind(r)) => scheduler.offer_rescinded(&driver, &r.offer_id),
                Some(event::Event::Update(u)) => {
                    if let Some(status) = u.status {
                        // The update continues the task's trace (the broker sent its context); the
                        // acknowledgement is made inside it.
                        let span = allot_common::status_update_span(&status, "consumer");
                        allot_telemetry::propagation::set_parent_from_map(&span, &trace_context);
                        let _entered = span.enter();
                        unsure.heard(&status.task_id);
                        scheduler.status_update(&driver, &status);
                        if !status.uuid.is_empty() {
                            driver.call(Call::Acknowledge(
                                status.agent_id.clone(),
                                status.task_id.clone(),
                                status.uuid,
                                Vec::new(),
                            ));
                        }
                    }
                }
                Some(event::Event::Error(e)) => scheduler.error(&driver, &e.message),
                Some(event::Event::Message(m)) => {
                    scheduler.framework_message(&driver, &m.executor_id, &m.agent_id, &m.data)
                }
                Some(event::Event::Failure(f)) if f.executor_id.is_empty() => {
                    scheduler.agent_lost(&driver, &f.agent_id)
                }
                Some(event::Event::Failure(f)) => {
                    scheduler.executor_lost(&driver, &f.executor_id, &f.agent_id, f.status)
                }
                Some(event::Event::Heartbeat(_)) | None => {}
            }
        }
        scheduler.disconnected(&driver);
        tokio::select! {
            _ = tokio::time::sleep(first) => {}
            _ = stop.cancelled() => break 'outer Ok(()),
        }
    };
    // Let queued calls (a final acknowledgement, the teardown) go out before returning.
    drop(driver);
    let _ = tokio::time::timeout(Duration::from_secs(5), runner).await;
    result.map(|_| scheduler)
}

#[cfg(test)]
mod tests {
    //! The driver against a recording scheduler server on a real loopback socket (no broker behind it): which
    //! calls it makes, how many at once, and in what order.
    use super::*;
    use allot_proto::scheduler::Event;
    use allot_proto::scheduler::scheduler_server::{Scheduler as SchedulerApi, SchedulerServer};
    use tokio::sync::Semaphore;
    use tonic::{Request, Response, Status};

    /// Where the recording server's SUBSCRIBE stream takes its events from.
    type EventSender = mpsc::Sender<Result<Event, Status>>;

    /// What the recording server saw.
    #[derive(Default)]
    struct Seen {
        /// Every call by name, in arrival order; an ACKNOWLEDGE as `ACKNOWLEDGE xN` (N acknowledgements).
        calls: Vec<String>,
        /// ACCEPTs arrived and not yet answered, and the most there were at once.
        accepts_open: usize,
        most_accepts_open: usize,
        /// ACCEPTs open when the SUPPRESS arrived.
        open_at_suppress: Option<usize>,
    }

    /// A scheduler server that records calls and holds every ACCEPT until `gate` has a permit for it.
    struct Recorder {
        seen: Arc<Mutex<Seen>>,
        gate: Arc<Semaphore>,
        events: Arc<Mutex<Option<EventSender>>>,
        /// Answer every ACCEPT `UNAVAILABLE` (as a broker that lost leadership).
        fail_accepts: bool,
    }

    impl Recorder {
        /// Records `call` and answers OK.
        fn note<T: Default>(&self, call: String) -> Result<Response<T>, Status> {
            self.seen.lock().unwrap().calls.push(call);
            Ok(Response::new(T::default()))
        }
    }

    #[tonic::async_trait]
    impl SchedulerApi for Recorder {
        type SubscribeStream = tokio_stream::wrappers::ReceiverStream<Result<Event, Status>>;

        async fn subscribe(
            &self,
            _: Request<pb::SubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            let (tx, rx) = mpsc::channel(64);
            let subscribed = event::Event::Subscribed(pb::Subscribed {
                framework_id: "fw".into(),
                heartbeat_interval_seconds: 15.0,
            });
            let _ = tx.try_send(Ok(Event {
                event: Some(subscribed),
                trace_context: Default::default(),
            }));
            *self.events.lock().unwrap() = Some(tx);
            Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
                rx,
            )))
        }

        async fn accept(
            &self,
            r: Request<pb::AcceptRequest>,
        ) -> Result<Response<pb::AcceptResponse>, Status> {
            {
                let mut seen = self.seen.lock().unwrap();
                let mut note = format!("ACCEPT {}", r.get_ref().offer_ids.join(","));
                for op in &r.get_ref().operations {
                    let (kind, resources) = match &op.operation {
                        Some(operation::Operation::Reserve(x)) => ("RESERVE", &x.resources),
                        Some(operation::Operation::Unreserve(x)) => ("UNRESERVE", &x.resources),
                        _ => continue,
                    };
                    for r in resources {
                        note.push_str(&format!(" {kind} {}:{}({})", r.name, r.scalar, r.role));
                    }
                }
                seen.calls.push(note);
                seen.accepts_open += 1;
                seen.most_accepts_open = seen.most_accepts_open.max(seen.accepts_open);
            }
            self.gate.acquire().await.expect("gate open").forget();
            self.seen.lock().unwrap().accepts_open -= 1;
            if self.fail_accepts {
                return Err(Status::unavailable("not the leader any more"));
            }
            Ok(Response::new(Default::default()))
        }

        async fn message(
            &self,
            _: Request<pb::MessageRequest>,
        ) -> Result<Response<pb::MessageResponse>, Status> {
            Ok(Response::new(Default::default()))
        }

        async fn shutdown(
            &self,
            _: Request<pb::ShutdownRequest>,
        ) -> Result<Response<pb::ShutdownResponse>, Status> {
            Ok(Response::new(Default::default()))
        }

        async fn decline(
            &self,
            _: Request<pb::DeclineRequest>,
        ) -> Result<Response<pb::DeclineResponse>, Status> {
            self.note("DECLINE".into())
        }

        async fn revive(
            &self,
            _: Request<pb::ReviveRequest>,
        ) -> Result<Response<pb::ReviveResponse>, Status> {
            self.note("REVIVE".into())
        }

        async fn suppress(
            &self,
            _: Request<pb::SuppressRequest>,
        ) -> Result<Response<pb::SuppressResponse>, Status> {
            let mut seen = self.seen.lock().unwrap();
            seen.open_at_suppress = Some(seen.accepts_open);
            seen.calls.push("SUPPRESS".into());
            Ok(Response::new(Default::default()))
        }

        async fn kill(
            &self,
            _: Request<pb::KillRequest>,
        ) -> Result<Response<pb::KillResponse>, Status> {
            self.note("KILL".into())
        }

        async fn acknowledge(
            &self,
            r: Request<pb::AcknowledgeRequest>,
        ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
            self.note(format!("ACKNOWLEDGE x{}", 1 + r.get_ref().more.len()))
        }

        async fn reconcile(
            &self,
            r: Request<pb::ReconcileRequest>,
        ) -> Result<Response<pb::ReconcileResponse>, Status> {
            let ids: Vec<&str> = r
                .get_ref()
                .tasks
                .iter()
                .map(|t| t.task_id.as_str())
                .collect();
            self.note(
                format!("RECONCILE {}", ids.join(","))
                    .trim_end()
                    .to_string(),
            )
        }

        async fn teardown(
            &self,
            _: Request<pb::TeardownRequest>,
        ) -> Result<Response<pb::TeardownResponse>, Status> {
            self.note("TEARDOWN".into())
        }
    }

    /// Accepts each offer of the first OFFERS event in its own call, then suppresses; tears down at the
    /// second status update.
    struct EachOffer {
        updates: usize,
    }

    impl Scheduler for EachOffer {
        fn resource_offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
            for o in offers {
                driver.accept(vec![o.offer_id], Vec::new(), None);
            }
            driver.suppress();
        }

        fn status_update(&mut self, driver: &Driver, _status: &TaskStatus) {
            self.updates += 1;
            if self.updates == 2 {
                driver.teardown();
            }
        }
    }

    /// Polls `f` every 10 ms until it is true (at most 10 s).
    async fn until(mut f: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not met in 10 s");
    }

    /// Sends `ev` on the event stream of the subscribed driver (`events` holds its sender).
    fn push(
        events: &Arc<Mutex<Option<EventSender>>>,
        ev: event::Event,
    ) -> impl std::future::Future<Output = ()> + use<> {
        let tx = events.lock().unwrap().clone().expect("subscribed");
        async move {
            tx.send(Ok(Event {
                event: Some(ev),
                trace_context: Default::default(),
            }))
            .await
            .unwrap()
        }
    }

    /// Serves `recorder` as a broker on a free loopback port; returns its address and the server's task.
    async fn serve(
        recorder: Recorder,
    ) -> (
        String,
        tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SchedulerServer::new(recorder))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (addr, server)
    }

    #[tokio::test]
    async fn accepts_are_pipelined_and_other_calls_wait_for_them() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let gate = Arc::new(Semaphore::new(0));
        let events = Arc::new(Mutex::new(None));
        let (addr, server) = serve(Recorder {
            seen: seen.clone(),
            gate: gate.clone(),
            events: events.clone(),
            fail_accepts: false,
        })
        .await;
        let driver = tokio::spawn(run(
            DriverConfig::new(&addr, framework_info("each-offer", "test"))
                .with_dialer(allot_common::grpc::Dialer::plaintext()),
            EachOffer { updates: 0 },
        ));
        until(|| events.lock().unwrap().is_some()).await;
        let send = |ev: event::Event| push(&events, ev);
        let offers = (1..=6)
            .map(|i| Offer {
                offer_id: format!("o{i}"),
                agent_id: format!("a{i}"),
                ..Default::default()
            })
            .collect();
        send(event::Event::Offers(pb::Offers { offers })).await;
        // Four ACCEPTs go out without waiting for one another, and no more.
        until(|| seen.lock().unwrap().accepts_open == MAX_CALLS_IN_FLIGHT).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(seen.lock().unwrap().accepts_open, MAX_CALLS_IN_FLIGHT);
        // Two updates while the ACCEPTs are held: their acknowledgements wait, and go out together.
        for task in ["t1", "t2"] {
            let status = TaskStatus {
                task_id: task.into(),
                agent_id: "a1".into(),
                uuid: vec![1, 2, 3],
                ..Default::default()
            };
            send(event::Event::Update(pb::Update {
                status: Some(status),
            }))
            .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.add_permits(6);
        let scheduler = tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .expect("the driver ends after TEARDOWN")
            .unwrap()
            .unwrap();
        assert_eq!(scheduler.updates, 2);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.most_accepts_open, MAX_CALLS_IN_FLIGHT);
        // SUPPRESS came after every ACCEPT was answered, TEARDOWN last, and one ACKNOWLEDGE carried both.
        assert_eq!(seen.open_at_suppress, Some(0));
        // (ACCEPTs in flight together may arrive in any order.)
        let mut accepts = seen.calls[..6].to_vec();
        accepts.sort();
        let expected: Vec<String> = (1..=6).map(|i| format!("ACCEPT o{i}")).collect();
        assert_eq!(accepts, expected);
        assert_eq!(seen.calls[6..], ["SUPPRESS", "ACKNOWLEDGE x2", "TEARDOWN"]);
        server.abort();
    }

    /// Reserves a CPU of the first offer for role `db`, then tears down.
    struct ReserveOne;

    impl Scheduler for ReserveOne {
        fn resource_offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
            assert!(
                driver
                    .reserve(vec![offers[0].offer_id.clone()], true, "db", "cpus:x")
                    .is_err(),
                "resources that do not parse are refused before anything is sent"
            );
            driver
                .reserve(vec![offers[0].offer_id.clone()], true, "db", "cpus:1")
                .expect("resources");
            driver.teardown();
        }

        fn status_update(&mut self, _: &Driver, _: &TaskStatus) {}
    }

    #[tokio::test]
    async fn a_reservation_is_an_accept_with_a_reserve_operation_tagged_with_the_role() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let events = Arc::new(Mutex::new(None));
        let (addr, server) = serve(Recorder {
            seen: seen.clone(),
            gate: Arc::new(Semaphore::new(100)),
            events: events.clone(),
            fail_accepts: false,
        })
        .await;
        let driver = tokio::spawn(run(
            DriverConfig::new(&addr, framework_info("reserve-one", "db"))
                .with_dialer(allot_common::grpc::Dialer::plaintext()),
            ReserveOne,
        ));
        until(|| events.lock().unwrap().is_some()).await;
        let offer = Offer {
            offer_id: "o1".into(),
            agent_id: "a1".into(),
            ..Default::default()
        };
        push(
            &events,
            event::Event::Offers(pb::Offers {
                offers: vec![offer],
            }),
        )
        .await;
        tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .expect("the driver ends after TEARDOWN")
            .unwrap()
            .unwrap();
        assert_eq!(
            seen.lock().unwrap().calls,
            ["ACCEPT o1 RESERVE cpus:1(db)", "TEARDOWN"]
        );
        server.abort();
    }

    /// Launches task `t1` on the first offer; records every update.
    #[derive(Default)]
    struct LaunchOne {
        heard: Vec<(String, TaskState)>,
    }

    impl Scheduler for LaunchOne {
        fn resource_offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
            let task = shell_task("t1", "true", "cpus:0.1").expect("task");
            driver.accept(vec![offers[0].offer_id.clone()], vec![task], None);
        }

        fn status_update(&mut self, driver: &Driver, status: &TaskStatus) {
            self.heard.push((status.task_id.clone(), status.state()));
            driver.stop();
        }
    }

    #[tokio::test]
    async fn the_tasks_of_a_failed_accept_are_reconciled_until_an_update_names_them() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let events = Arc::new(Mutex::new(None));
        let (addr, server) = serve(Recorder {
            seen: seen.clone(),
            gate: Arc::new(Semaphore::new(100)),
            events: events.clone(),
            fail_accepts: true,
        })
        .await;
        let driver = tokio::spawn(run(
            DriverConfig::new(&addr, framework_info("launch-one", "test"))
                .with_dialer(allot_common::grpc::Dialer::plaintext()),
            LaunchOne::default(),
        ));
        until(|| events.lock().unwrap().is_some()).await;
        let send = |ev: event::Event| push(&events, ev);
        let offer = Offer {
            offer_id: "o1".into(),
            agent_id: "a1".into(),
            ..Default::default()
        };
        send(event::Event::Offers(pb::Offers {
            offers: vec![offer],
        }))
        .await;
        // The ACCEPT fails: its outcome is unknown, so the driver asks about its task after a second, and
        // again (backing off) while no update names it.
        let reconciles = || {
            seen.lock()
                .unwrap()
                .calls
                .iter()
                .filter(|c| *c == "RECONCILE t1")
                .count()
        };
        until(|| reconciles() == 2).await;
        // The broker's answer (TASK_UNKNOWN: the launch never took effect) ends the reconciliation.
        let unknown = TaskStatus {
            task_id: "t1".into(),
            state: TaskState::TaskUnknown as i32,
            ..Default::default()
        };
        send(event::Event::Update(pb::Update {
            status: Some(unknown),
        }))
        .await;
        let scheduler = tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .expect("the driver stops")
            .unwrap()
            .unwrap();
        assert_eq!(
            scheduler.heard,
            [("t1".to_string(), TaskState::TaskUnknown)]
        );
        let calls = seen.lock().unwrap().calls.clone();
        assert_eq!(calls[0], "ACCEPT o1");
        assert_eq!(reconciles(), 2, "{calls:?}");
        server.abort();
    }
}
