//! The allocation engine: one task owns the [`Books`], applies commands from the broker and changes from
//! etcd in arrival order, and runs allocation cycles.
//!
//! A cycle runs every allocation interval, and soon after a batch of commands that added supply or demand
//! (an agent came, a framework activated or revived, tasks ended, offers came back unused): commands are
//! drained in batches, so at most one cycle is pending however many events arrive, and cycles that events
//! bring forward are at least the minimum cycle gap apart (`--min-cycle-gap`; by default
//! [`MIN_GAP_FRACTION`] of the interval). Freed resources are so offered again within a few milliseconds
//! instead of at the next tick, which is what short tasks wait on (issue 24); Mesos' allocator waits for its
//! interval there.

use crate::books::{Books, Piece, RoleConfig};
use crate::metrics::M;
use crate::policy::{Failure, Loaded};
use allot_common::convert::{limits_from_proto, piece_to_proto, pieces_from_proto};
use allot_policy::Resources;
use allot_proto::allocator::{
    AgentReservations, AllocatorEvent, Grant as PbGrant, Grants, PolicyRecord, PolicyRef,
    PolicyStatusResponse, RescindOffers, RevokeTasks, RevokedTask, ShadowReport, allocator_event,
};
use allot_proto::common::{AgentRecord, FrameworkRecord, Role, TaskState};
use allot_server::Store;
use allot_server::store::{Kind, decode};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::sync::oneshot;

/// The sender half of the broker's decision stream.
pub type Subscriber = mpsc::UnboundedSender<Result<AllocatorEvent, tonic::Status>>;

/// A change for the engine to apply.
#[derive(Debug)]
pub enum Command {
    /// A broker subscribed; it replaces any previous one and the session starts from nothing.
    Subscribe(Subscriber),
    /// A framework's scheduler connected.
    Activate {
        /// Framework ID.
        framework: String,
        /// Whether it starts suppressed.
        suppressed: bool,
    },
    /// A framework's scheduler went away.
    Deactivate(String),
    /// SUPPRESS.
    Suppress(String),
    /// REVIVE.
    Revive(String),
    /// Offers came back.
    Recover {
        /// Offer IDs.
        offer_ids: Vec<String>,
        /// Filter length in seconds; 0 for none.
        refuse_seconds: f64,
        /// `(framework, task, agent, resources)` launched from them.
        launched: Vec<(String, String, String, Piece)>,
    },
    /// An agent record was written: its total resources and its reservations by role.
    AgentPut(
        String,
        Resources,
        std::collections::BTreeMap<String, Resources>,
    ),
    /// An agent record was deleted.
    AgentDelete(String),
    /// An agent became reachable (its `alive` key appeared) or unreachable (the key went away).
    Alive(String, bool),
    /// A framework record was written.
    FrameworkPut {
        /// Framework ID.
        id: String,
        /// Its role.
        role: String,
        /// Its priority class.
        priority: i32,
        /// False once torn down.
        active: bool,
    },
    /// A role was configured or removed.
    Role(String, Option<RoleConfig>),
    /// A task record was written.
    TaskPut {
        /// Framework ID.
        framework: String,
        /// Task ID.
        task: String,
        /// Agent ID.
        agent: String,
        /// The task's resources.
        piece: Piece,
        /// Whether its latest state is terminal.
        terminal: bool,
    },
    /// A task record was deleted.
    TaskDelete(String, String),
    /// The broker saw these `(framework, task)` end (ahead of their records in etcd).
    TasksEnded(Vec<(String, String)>),
    /// The active-policy record changed and this replica loaded the policy it names (or failed to). `seq`
    /// orders the loads: an older one is ignored.
    SwapPolicy {
        /// Order of the record change.
        seq: u64,
        /// The record.
        record: PolicyRecord,
        /// The loaded policy, or why it could not be loaded here.
        loaded: Result<Loaded, crate::error::LoadError>,
    },
    /// Runs `policy` once on the current snapshot without applying its grants; answers with the number of
    /// grants and the call's duration in microseconds, or what was wrong.
    Trial {
        /// The candidate.
        policy: Loaded,
        /// Where to answer.
        reply: oneshot::Sender<Result<(u32, u64), crate::error::TrialError>>,
    },
    /// Reports the policy status.
    Status(oneshot::Sender<PolicyStatusResponse>),
    /// Starts (or, with `None`, stops) a shadow policy.
    Shadow(Option<Loaded>),
    /// An agent's dynamic reservations record was written (by role) or deleted (`None`).
    Reservations(String, Option<BTreeMap<String, Resources>>),
    /// An operator's change of an agent's dynamic reservations, checked against the books first
    /// (`Books::set_dynamic_reservations`); answers with the reservations before the change (to restore if
    /// the record cannot be written), or why the change is refused.
    Reserve {
        /// The agent.
        agent: String,
        /// Its dynamic reservations after the change, by role.
        reserved: BTreeMap<String, Resources>,
        /// Where to answer.
        reply: oneshot::Sender<Result<BTreeMap<String, Resources>, String>>,
    },
    /// Asks for an agent's dynamic reservations, by role.
    DynamicReservations(String, oneshot::Sender<BTreeMap<String, Resources>>),
    /// Sets the preemption settings (`None`: off).
    SetPreemption(Option<allot_policy::Preemption>),
}

/// A handle on the running engine. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Command>,
    tasks: std::sync::Arc<Vec<tokio::task::AbortHandle>>,
}

impl Engine {
    /// Starts the engine and its etcd followers. `default_policy` runs until an active-policy record says
    /// otherwise; cycles run every `cycles.interval` and, brought forward by events, at least
    /// `cycles.min_gap` apart; a policy call gets at most `deadline`; artifacts are cached in `cache_dir`.
    pub fn start(
        store: Store,
        default_policy: Loaded,
        cycles: Cycles,
        deadline: Duration,
        cache_dir: std::path::PathBuf,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut handles = Vec::new();
        handles
            .push(tokio::spawn(run(rx, default_policy.clone(), cycles, deadline)).abort_handle());
        let policy_tx = tx.clone();
        let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let policy_store = store.clone();
        handles.push(
            tokio::spawn(allot_server::store::follow_prefix(
                store.clone(),
                store.prefix(Kind::Policy),
                Duration::from_secs(1),
                move |id, value| {
                    if id != "active" {
                        return;
                    }
                    let record = value
                        .and_then(|v| decode::<PolicyRecord>(id.as_bytes(), v).ok())
                        .unwrap_or_else(|| PolicyRecord {
                            active: Some(default_policy.reference.clone()),
                            ..PolicyRecord::default()
                        });
                    let n = seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    let (tx, store, dir) =
                        (policy_tx.clone(), policy_store.clone(), cache_dir.clone());
                    tokio::spawn(async move {
                        let loaded = resolve(&store, record.active.as_ref(), &dir).await;
                        let _ = tx.send(Command::SwapPolicy {
                            seq: n,
                            record,
                            loaded,
                        });
                    });
                },
            ))
            .abort_handle(),
        );
        for kind in [
            Kind::Agents,
            Kind::Alive,
            Kind::Frameworks,
            Kind::Tasks,
            Kind::Roles,
            Kind::Reservations,
        ] {
            let tx = tx.clone();
            let prefix = store.prefix(kind);
            handles.push(
                tokio::spawn(allot_server::store::follow_prefix(
                    store.clone(),
                    prefix,
                    Duration::from_secs(1),
                    move |id, value| {
                        if let Some(cmd) = to_command(kind, id, value) {
                            let _ = tx.send(cmd);
                        }
                    },
                ))
                .abort_handle(),
            );
        }
        Self {
            tx,
            tasks: std::sync::Arc::new(handles),
        }
    }

    /// A handle whose commands go to the returned receiver instead of an engine (for tests of the services
    /// in front of it).
    #[cfg(test)]
    pub(crate) fn detached() -> (Self, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = Self {
            tx,
            tasks: std::sync::Arc::new(Vec::new()),
        };
        (engine, rx)
    }

    /// Sends a command to the engine.
    pub fn send(&self, cmd: Command) {
        let _ = self.tx.send(cmd);
    }

    /// Stops the engine and its followers.
    pub fn stop(&self) {
        for t in self.tasks.iter() {
            t.abort();
        }
    }
}

/// Loads the policy `reference` names on this replica: a built-in, or an artifact fetched from etcd into
/// `cache_dir`.
///
/// # Errors
/// [`LoadError`](crate::error::LoadError) when it cannot be loaded here.
pub async fn resolve(
    store: &Store,
    reference: Option<&PolicyRef>,
    cache_dir: &std::path::Path,
) -> Result<Loaded, crate::error::LoadError> {
    use crate::error::LoadError;
    let r = reference.ok_or(LoadError::NoReference)?;
    if r.kind == "builtin" {
        return Loaded::builtin(&r.name).ok_or_else(|| LoadError::NoBuiltin(r.name.clone()));
    }
    let path = crate::policy::materialize(store, &r.sha256, cache_dir).await?;
    Loaded::from_file(&path, &r.sha256)
}

/// The fields of an `allot.common.v1.TaskRecord` the allocator uses (same field numbers). Every task write
/// reaches the allocator through its etcd watch, two per task; decoding only these skips the allocations of
/// the task's command, name, labels and status message and uuid (prost steps over the other fields).
#[derive(Clone, PartialEq, prost::Message)]
struct TaskRecordView {
    #[prost(string, tag = "1")]
    framework_id: String,
    #[prost(message, optional, tag = "2")]
    task: Option<TaskInfoView>,
    #[prost(message, optional, tag = "3")]
    status: Option<TaskStatusView>,
}

/// The fields of an `allot.common.v1.TaskInfo` the allocator uses.
#[derive(Clone, PartialEq, prost::Message)]
struct TaskInfoView {
    #[prost(string, tag = "2")]
    task_id: String,
    #[prost(string, tag = "3")]
    agent_id: String,
    #[prost(message, repeated, tag = "4")]
    resources: Vec<allot_proto::common::Resource>,
}

/// The field of an `allot.common.v1.TaskStatus` the allocator uses: its state.
#[derive(Clone, PartialEq, prost::Message)]
struct TaskStatusView {
    #[prost(enumeration = "TaskState", tag = "2")]
    state: i32,
}

fn to_command(kind: Kind, id: &str, value: Option<&[u8]>) -> Option<Command> {
    match (kind, value) {
        (Kind::Agents, Some(v)) => {
            let rec: AgentRecord = decode(id.as_bytes(), v).ok()?;
            let (unreserved, reserved) =
                pieces_from_proto(&rec.info.unwrap_or_default().resources).ok()?;
            let mut total = unreserved;
            for r in reserved.values() {
                total.add(r);
            }
            Some(Command::AgentPut(id.to_string(), total, reserved))
        }
        (Kind::Agents, None) => Some(Command::AgentDelete(id.to_string())),
        (Kind::Alive, v) => Some(Command::Alive(id.to_string(), v.is_some())),
        (Kind::Frameworks, Some(v)) => {
            let rec: FrameworkRecord = decode(id.as_bytes(), v).ok()?;
            let info = rec.info.unwrap_or_default();
            Some(Command::FrameworkPut {
                id: id.to_string(),
                role: info
                    .roles
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "*".to_string()),
                priority: info.priority,
                active: rec.active,
            })
        }
        (Kind::Frameworks, None) => Some(Command::FrameworkPut {
            id: id.to_string(),
            role: String::new(),
            priority: 0,
            active: false,
        }),
        (Kind::Roles, Some(v)) => {
            let role: Role = decode(id.as_bytes(), v).ok()?;
            let limit = limits_from_proto(&role.quota_limit).ok()?;
            let (guarantee, _) = pieces_from_proto(&role.quota_guarantee).ok()?;
            Some(Command::Role(
                id.to_string(),
                Some(RoleConfig {
                    weight: if role.weight > 0.0 { role.weight } else { 1.0 },
                    quota_limit: (!limit.is_empty()).then_some(limit),
                    preemptible: !role.no_preemption,
                    quota_guarantee: (!guarantee.is_empty()).then_some(guarantee),
                }),
            ))
        }
        (Kind::Roles, None) => Some(Command::Role(id.to_string(), None)),
        (Kind::Tasks, Some(v)) => {
            let rec: TaskRecordView = decode(id.as_bytes(), v).ok()?;
            let task = rec.task.unwrap_or_default();
            let terminal = rec
                .status
                .map(|s| {
                    let state = TaskState::try_from(s.state).unwrap_or_default();
                    state.is_terminal() || state == TaskState::TaskUnreachable
                })
                .unwrap_or(false);
            Some(Command::TaskPut {
                framework: rec.framework_id,
                piece: piece_of(&task.resources),
                task: task.task_id,
                agent: task.agent_id,
                terminal,
            })
        }
        (Kind::Tasks, None) => {
            let (fw, task) = id.split_once('/')?;
            Some(Command::TaskDelete(fw.to_string(), task.to_string()))
        }
        (Kind::Reservations, Some(v)) => {
            let rec: AgentReservations = decode(id.as_bytes(), v).ok()?;
            let (_, reserved) = pieces_from_proto(&rec.resources).ok()?;
            Some(Command::Reservations(id.to_string(), Some(reserved)))
        }
        (Kind::Reservations, None) => Some(Command::Reservations(id.to_string(), None)),
        (Kind::Policy | Kind::Artifacts | Kind::Audit | Kind::MesosEndpoints, _) => None,
    }
}

/// The [`Piece`] of role-tagged protocol resources (one role at most: the framework's); nothing for resources
/// that do not convert (see [`try_piece_of`]).
pub fn piece_of(list: &[allot_proto::common::Resource]) -> Piece {
    try_piece_of(list).unwrap_or_default()
}

/// The [`Piece`] of role-tagged protocol resources (one role at most: the framework's).
///
/// # Errors
/// As [`allot_common::convert::resources_from_proto`]: a resource without a name, a bad amount.
pub fn try_piece_of(
    list: &[allot_proto::common::Resource],
) -> Result<Piece, allot_policy::ResourcesError> {
    let (unreserved, reserved) = pieces_from_proto(list)?;
    let (role, reserved) = reserved.into_iter().next().unwrap_or_default();
    Ok(Piece {
        unreserved,
        reserved,
        role: role.into(),
    })
}

/// Counters of the policy host.
#[derive(Debug, Default)]
struct PolicyStats {
    cycles: u64,
    failures: u64,
    fallbacks: u64,
    dropped_grants: u64,
    last_error: String,
    last_error_at_ms: i64,
    by_reason: BTreeMap<String, u64>,
}

/// A candidate policy run beside the active one.
struct Shadow {
    policy: Loaded,
    report: ShadowReport,
    /// Per role, the sum of per-cycle share deltas (shadow - active) over the `compared` cycles.
    delta_sums: BTreeMap<String, f64>,
    compared: u64,
}

struct State {
    books: Books,
    running: Loaded,
    last_good: Loaded,
    record: PolicyRecord,
    record_seq: u64,
    load_error: String,
    deadline: Duration,
    stats: PolicyStats,
    shadow: Option<Shadow>,
    subscriber: Option<Subscriber>,
    interval: Duration,
    start: Instant,
    cycle: u64,
    /// Per framework wanting offers: consecutive cycles without any, and its role.
    starved: HashMap<String, (u64, String)>,
    /// When the resource, offer and share gauges were last refreshed without a cycle (see
    /// [`State::refresh_idle_gauges`]).
    idle_gauges_at: Option<Instant>,
    /// Every (role, resource) whose `allot_role_allocated` (and role whose `allot_role_dominant_share`) has been
    /// set: a role that leaves the books is set to 0, not left at its last figure.
    gauge_roles: std::collections::BTreeSet<(String, String)>,
}

impl State {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn emit(&mut self, event: allocator_event::Event) {
        if let Some(s) = &self.subscriber
            && s.send(Ok(AllocatorEvent { event: Some(event) })).is_err()
        {
            tracing::warn!("offer-broker went away; resetting the session");
            self.subscriber = None;
            self.books.reset_session();
        }
    }

    fn rescind(&mut self, offers: Vec<Arc<crate::books::Offer>>) {
        if offers.is_empty() {
            return;
        }
        let offer_ids = offers.into_iter().map(|o| o.id.to_string()).collect();
        self.emit(allocator_event::Event::Rescind(RescindOffers { offer_ids }));
    }

    /// Applies one command; returns whether it added supply or demand.
    fn apply(&mut self, cmd: Command) -> bool {
        let now = self.now();
        match cmd {
            Command::Subscribe(s) => {
                tracing::info!("offer-broker subscribed; new session");
                self.books.reset_session();
                self.subscriber = Some(s);
                false
            }
            Command::Activate {
                framework,
                suppressed,
            } => {
                self.books.activate(&framework, suppressed);
                !suppressed
            }
            Command::Deactivate(fw) => {
                self.books.deactivate(&fw);
                false
            }
            Command::Suppress(fw) => {
                self.books.suppress(&fw);
                false
            }
            Command::Revive(fw) => {
                self.books.revive(&fw);
                true
            }
            Command::Recover {
                offer_ids,
                refuse_seconds,
                launched,
            } => {
                let min = self.interval.as_secs_f64();
                self.books
                    .recover_offers(&offer_ids, refuse_seconds, min, &launched, now);
                // What came back unused may go to another framework (the one that declined it is filtered).
                !offer_ids.is_empty()
            }
            Command::AgentPut(id, total, reserved) => {
                let r = self.books.set_agent(&id, total, reserved);
                self.rescind(r);
                true
            }
            Command::AgentDelete(id) => {
                let r = self.books.remove_agent(&id);
                self.rescind(r);
                false
            }
            Command::Alive(id, alive) => {
                if !alive {
                    tracing::info!(agent = %id, "agent unreachable; rescinding its offers");
                }
                let r = self.books.set_reachable(&id, alive);
                self.rescind(r);
                alive
            }
            Command::FrameworkPut {
                id,
                role,
                priority,
                active,
            } => {
                if active {
                    self.books.add_framework(&id, &role, priority);
                } else {
                    let r = self.books.remove_framework(&id);
                    self.rescind(r);
                }
                active
            }
            Command::Role(name, cfg) => {
                match cfg {
                    Some(c) => self.books.set_role(&name, c),
                    None => self.books.remove_role(&name),
                }
                false
            }
            Command::TaskPut {
                framework,
                task,
                agent,
                piece,
                terminal,
            } => {
                if terminal {
                    self.books.remove_task(&framework, &task);
                } else {
                    self.books.add_task(&framework, &task, &agent, piece);
                }
                false
            }
            Command::TaskDelete(fw, task) => {
                self.books.remove_task(&fw, &task);
                false
            }
            Command::TasksEnded(tasks) => {
                let freed = !tasks.is_empty();
                for (fw, task) in tasks {
                    self.books.remove_task(&fw, &task);
                }
                freed
            }
            Command::SwapPolicy {
                seq,
                record,
                loaded,
            } => {
                if seq < self.record_seq {
                    return false;
                }
                self.record_seq = seq;
                self.record = record;
                match loaded {
                    Ok(p) => {
                        tracing::info!(policy = %p.reference.name, kind = %p.reference.kind,
                            sha256 = %p.reference.sha256, "policy activated");
                        // The policy that ran until now becomes the fallback, unless it had broken down.
                        let old = std::mem::replace(&mut self.running, p);
                        set_active(Some(&old.reference), &self.running.reference);
                        if !old.broken && old.reference != self.running.reference {
                            self.last_good = old;
                        }
                        self.load_error.clear();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot load the recorded policy; keeping the running one");
                        self.load_error = e.to_string();
                    }
                }
                true
            }
            Command::Reservations(agent, reserved) => {
                match self.books.set_dynamic_reservations(
                    &agent,
                    reserved.unwrap_or_default(),
                    false,
                ) {
                    Ok(r) => {
                        let changed = !r.is_empty();
                        self.rescind(r);
                        changed
                    }
                    Err(why) => {
                        tracing::warn!(agent = %agent, %why, "dynamic reservations not applied");
                        false
                    }
                }
            }
            Command::Reserve {
                agent,
                reserved,
                reply,
            } => {
                let before = self.books.dynamic_reservations(&agent);
                let done = self.books.set_dynamic_reservations(&agent, reserved, true);
                let changed = done.as_ref().is_ok_and(|r| !r.is_empty());
                let answer = done.map(|r| {
                    self.rescind(r);
                    before
                });
                let _ = reply.send(answer);
                changed
            }
            Command::SetPreemption(p) => {
                self.books.set_preemption(p);
                false
            }
            Command::DynamicReservations(agent, reply) => {
                let _ = reply.send(self.books.dynamic_reservations(&agent));
                false
            }
            Command::Trial { policy, reply } => {
                let _ = reply.send(self.trial(&policy, now));
                false
            }
            Command::Status(reply) => {
                let s = &self.stats;
                let _ = reply.send(PolicyStatusResponse {
                    record: Some(self.record.clone()),
                    running: Some(self.running.reference.clone()),
                    last_good: Some(self.last_good.reference.clone()),
                    cycles: s.cycles,
                    failures: s.failures,
                    fallbacks: s.fallbacks,
                    dropped_grants: s.dropped_grants,
                    last_error: s.last_error.clone(),
                    last_error_at_ms: s.last_error_at_ms,
                    failures_by_reason: s.by_reason.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    load_error: self.load_error.clone(),
                    shadow: self.shadow.as_ref().map(|s| s.report.clone()),
                });
                false
            }
            Command::Shadow(candidate) => {
                self.shadow = candidate.map(|p| {
                    tracing::info!(policy = %p.reference.name, "shadow policy started");
                    Shadow {
                        report: ShadowReport {
                            policy: Some(p.reference.clone()),
                            ..ShadowReport::default()
                        },
                        policy: p,
                        delta_sums: BTreeMap::new(),
                        compared: 0,
                    }
                });
                false
            }
        }
    }

    fn trial(&mut self, policy: &Loaded, now: f64) -> Result<(u32, u64), crate::error::TrialError> {
        let snapshot = Arc::new(self.books.snapshot(now));
        let started = Instant::now();
        let grants = policy.call(&snapshot, self.deadline)?;
        let micros = started.elapsed().as_micros() as u64;
        let n = grants.len() as u32;
        let (_, rejected) = self.books.clone().apply_grants(&snapshot, grants, now);
        if let Some((g, why)) = rejected.first() {
            let (framework, agent) = snapshot.names(g).unwrap_or(("?", "?"));
            return Err(crate::error::TrialError::InvalidGrants {
                invalid: rejected.len(),
                grants: n,
                framework: framework.to_string(),
                agent: agent.to_string(),
                why: why.as_str(),
            });
        }
        Ok((n, micros))
    }

    /// Runs the shadow policy, if any, on this cycle's snapshot and compares it with the active `grants`.
    fn run_shadow(
        &mut self,
        snapshot: &Arc<allot_policy::Snapshot>,
        grants: &[allot_policy::Grant],
    ) {
        let Some(Shadow {
            policy: candidate,
            report,
            delta_sums: sums,
            compared: n,
        }) = self.shadow.as_mut()
        else {
            return;
        };
        if candidate.broken {
            return;
        }
        report.cycles += 1;
        match candidate.call(snapshot, self.deadline) {
            Ok(theirs) => {
                let c = crate::shadow::compare(snapshot, grants, &theirs);
                report.active_grants += c.active_grants;
                report.shadow_grants += c.shadow_grants;
                report.differing_grants += c.differing;
                report.invalid_grants += c.invalid;
                *n += 1;
                for (role, b) in &c.shadow_share {
                    let a = c.active_share.get(role).copied().unwrap_or(0.0);
                    *sums.entry(role.clone()).or_default() += b - a;
                }
                for (role, a) in &c.active_share {
                    if !c.shadow_share.contains_key(role) {
                        *sums.entry(role.clone()).or_default() -= a;
                    }
                }
                report.mean_share_delta = sums
                    .iter()
                    .map(|(r, d)| (r.clone(), d / *n as f64))
                    .collect();
                report.active_share = c.active_share.into_iter().collect();
                report.shadow_share = c.shadow_share.into_iter().collect();
            }
            Err(f) => {
                report.failures += 1;
                report.last_error = f.to_string();
                if matches!(f, Failure::Timeout(_)) {
                    candidate.broken = true;
                }
            }
        }
    }

    fn fail(&mut self, f: &Failure) {
        self.count_failure(f);
        tracing::warn!(policy = %self.running.reference.name, reason = f.reason(), error = %f,
            fallback = %self.last_good.reference.name, "policy failed; this cycle uses the last good policy");
    }

    /// Counts a failed call of the running policy (status, `allot_policy_failures_total`); a timeout marks it
    /// broken.
    fn count_failure(&mut self, f: &Failure) {
        self.stats.failures += 1;
        M.policy_failures
            .with_label_values(&[&self.running.reference.name, f.reason()])
            .inc();
        *self
            .stats
            .by_reason
            .entry(f.reason().to_string())
            .or_default() += 1;
        self.stats.last_error = format!("{}: {f}", self.running.reference.name);
        self.stats.last_error_at_ms = allot_common::now_ms();
        if matches!(f, Failure::Timeout(_)) {
            self.running.broken = true;
        }
    }

    fn allocate(&mut self) {
        M.agents.set(self.books.reachable_agents() as f64);
        M.agents_unreachable
            .set(self.books.unreachable_agents() as f64);
        if self.subscriber.is_none() {
            self.refresh_idle_gauges();
            return;
        }
        if !self.books.wants_offers() {
            // Nobody to offer to (say, while thousands of agents register): skip the snapshot of every agent.
            M.frameworks.set(0.0);
            self.refresh_idle_gauges();
            return;
        }
        let now = self.now();
        let started = Instant::now();
        let snapshot = Arc::new(self.books.snapshot(now));
        M.frameworks.set(snapshot.frameworks.len() as f64);
        if snapshot.frameworks.is_empty() {
            self.refresh_idle_gauges();
            return;
        }
        self.idle_gauges_at = None;
        if snapshot.agents.is_empty() {
            // Nothing to offer: every framework holding no offer goes one more cycle without.
            self.count_starved(&snapshot);
            self.preempt(&snapshot, now);
            return;
        }
        self.cycle += 1;
        self.stats.cycles += 1;
        let policy = &self.running.reference;
        let span = tracing::info_span!(
            "allocation cycle",
            allot.cycle = self.cycle,
            allot.agents = snapshot.agents.len(),
            allot.frameworks = snapshot.frameworks.len(),
            allot.grants = tracing::field::Empty,
            allot.grants.dropped = tracing::field::Empty,
            allot.frameworks.starved = tracing::field::Empty,
            allot.policy.name = %policy.name,
            allot.policy.kind = %policy.kind,
            allot.policy.version = self.running.interface_version(),
            allot.policy.sha256 = %policy.sha256,
            allot.policy.fallback = tracing::field::Empty,
            allot.cycle.duration_ms = tracing::field::Empty,
        );
        let _entered = span.enter();
        let grants = match self.running.call(&snapshot, self.deadline) {
            Ok(g) => g,
            Err(f) => {
                if !self.running.broken || matches!(f, Failure::Timeout(_)) {
                    self.fail(&f);
                }
                self.stats.fallbacks += 1;
                M.fallbacks.inc();
                span.record(
                    "allot.policy.fallback",
                    tracing::field::display(&self.last_good.reference.name),
                );
                match self.last_good.call(&snapshot, self.deadline) {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!(error = %e, "the last good policy failed too; using built-in drf");
                        self.last_good = Loaded::builtin("drf").expect("drf is built in");
                        self.last_good
                            .call(&snapshot, self.deadline)
                            .unwrap_or_default()
                    }
                }
            }
        };
        self.run_shadow(&snapshot, &grants);
        let (offers, rejected) = self.books.apply_grants(&snapshot, grants, now);
        self.stats.dropped_grants += rejected.len() as u64;
        for (g, why) in &rejected {
            M.grants_dropped
                .with_label_values(&[&self.running.reference.name, why.as_str()])
                .inc();
            let (framework, agent) = snapshot.names(g).unwrap_or(("?", "?"));
            tracing::warn!(policy = %self.running.reference.name, framework, agent,
                framework_index = g.framework, agent_index = g.agent, reason = why.as_str(), "grant rejected");
        }
        let starved = self.count_starved(&snapshot);
        self.preempt(&snapshot, now);
        self.record_shares(&snapshot, &offers);
        let elapsed = started.elapsed();
        M.cycles.inc();
        M.cycle_seconds.observe(elapsed.as_secs_f64());
        M.grants.inc_by(offers.len() as u64);
        M.offers_outstanding.set(self.books.offers().count() as f64);
        span.record("allot.grants", offers.len());
        span.record("allot.grants.dropped", rejected.len());
        span.record("allot.frameworks.starved", starved);
        span.record("allot.cycle.duration_ms", elapsed.as_secs_f64() * 1e3);
        tracing::debug!(
            cycle = self.cycle,
            agents = snapshot.agents.len(),
            frameworks = snapshot.frameworks.len(),
            grants = offers.len(),
            rejected = rejected.len(),
            micros = elapsed.as_micros() as u64,
            "allocation cycle"
        );
        if !offers.is_empty() {
            let trace_context = allot_telemetry::propagation::to_map(&span);
            let grants = offers
                .into_iter()
                .map(|o| PbGrant {
                    resources: piece_to_proto(
                        &o.piece.unreserved,
                        &o.piece.reserved,
                        &o.piece.role,
                    ),
                    offer_id: o.id.to_string(),
                    framework_id: o.framework.to_string(),
                    agent_id: o.agent.to_string(),
                    cycle: self.cycle,
                    trace_context: trace_context.clone(),
                })
                .collect();
            self.emit(allocator_event::Event::Grants(Grants { grants }));
        }
    }

    /// Runs the policy's revocations on `snapshot` (which carries preemption settings only when preemption is
    /// on and some framework has been starved past the grace), checks them (`Books::apply_revocations`) and
    /// sends the accepted ones to the broker, which kills each task: it ends TASK_KILLED with
    /// REASON_PREEMPTED. Counted in `allot_preemptions_total` and `allot_revocations_refused_total`.
    fn preempt(&mut self, snapshot: &Arc<allot_policy::Snapshot>, now: f64) {
        if snapshot.preemption.is_none() {
            return;
        }
        let revocations = match self.running.revoke(snapshot, self.deadline) {
            Ok(r) => r,
            Err(f) => {
                self.count_failure(&f);
                tracing::warn!(policy = %self.running.reference.name, reason = f.reason(), error = %f,
                    "policy revoke failed; nothing is revoked this cycle");
                return;
            }
        };
        if revocations.is_empty() {
            return;
        }
        let (accepted, refused) = self.books.apply_revocations(
            snapshot,
            revocations,
            now,
            REVOCATION_PENDING.as_secs_f64(),
        );
        for (r, why) in &refused {
            M.revocations_refused.with_label_values(&[why]).inc();
            tracing::warn!(policy = %self.running.reference.name, task = r.task, reason = why, "revocation refused");
        }
        if accepted.is_empty() {
            return;
        }
        let tasks = accepted
            .into_iter()
            .map(|(t, message)| {
                M.preemptions.with_label_values(&[&t.role]).inc();
                tracing::info!(framework = %t.framework, task = %t.id, agent = %t.agent, role = %t.role,
                    %message, "task preempted");
                RevokedTask {
                    framework_id: t.framework,
                    task_id: t.id,
                    agent_id: t.agent,
                    message,
                }
            })
            .collect();
        self.emit(allocator_event::Event::Revoke(RevokeTasks { tasks }));
    }

    /// Updates each wanting framework's count of cycles in which it held no CPUs it could use (reset when it
    /// does), and the `allot_framework_starved_cycles` series; returns how many frameworks are starved now.
    /// CPUs in use by its tasks count; offered CPUs count unless it has declined an offer holding CPUs and
    /// launched nothing since (such offers are not ones it can use). Offers of memory and disk alone never
    /// count: no task runs on them. So a framework declining memory-only offers while another role holds every
    /// CPU, or declining every offer it gets, is starving (issue 27).
    fn count_starved(&mut self, snapshot: &allot_policy::Snapshot) -> usize {
        let mut offered: HashMap<&str, f64> = HashMap::new();
        for o in self.books.offers() {
            *offered.entry(&*o.framework).or_default() += o.piece.total().scalar("cpus");
        }
        let holding: HashSet<&str> = self
            .books
            .allocations()
            .filter(|(id, _, held)| {
                let cpus = held.scalar("cpus");
                let in_use = cpus - offered.get(id).copied().unwrap_or(0.0);
                in_use > 1e-9 || (cpus > 0.0 && !self.books.declined_cpus(id))
            })
            .map(|(id, _, _)| id)
            .collect();
        let mut next = HashMap::with_capacity(snapshot.frameworks.len());
        for f in &snapshot.frameworks {
            let n = if holding.contains(f.id.as_str()) {
                0
            } else {
                self.starved.get(&f.id).map_or(1, |(n, _)| n + 1)
            };
            M.starved.with_label_values(&[&f.id, &f.role]).set(n as f64);
            next.insert(f.id.clone(), (n, f.role.clone()));
        }
        // Series of frameworks that stopped wanting offers, or changed role, go.
        for (id, (_, role)) in &self.starved {
            if next.get(id).is_none_or(|(_, now)| now != role) {
                let _ = M.starved.remove_label_values(&[id, role]);
            }
        }
        self.starved = next;
        self.starved.values().filter(|(n, _)| *n > 0).count()
    }

    /// Sets the per-role and cluster series from the cycle's snapshot plus the offers it made.
    /// No cycle runs (no framework wants offers, or no broker is subscribed): the gauges a cycle sets
    /// (cluster resources, role shares and allocations, outstanding offers) are set from the books anyway, so
    /// that an idle cluster does not go on showing the last busy cycle's figures. At most once every
    /// [`IDLE_GAUGES_EVERY`], since it snapshots every agent.
    fn refresh_idle_gauges(&mut self) {
        if self
            .idle_gauges_at
            .is_some_and(|at| at.elapsed() < IDLE_GAUGES_EVERY)
        {
            return;
        }
        self.idle_gauges_at = Some(Instant::now());
        let snapshot = self.books.snapshot(self.now());
        self.record_shares(&snapshot, &[]);
        M.offers_outstanding.set(self.books.offers().count() as f64);
    }

    fn record_shares(
        &mut self,
        snapshot: &allot_policy::Snapshot,
        offers: &[Arc<crate::books::Offer>],
    ) {
        let role_of: HashMap<&str, &str> = snapshot
            .frameworks
            .iter()
            .map(|f| (f.id.as_str(), f.role.as_str()))
            .collect();
        let mut by_role: BTreeMap<&str, Resources> = snapshot
            .roles
            .iter()
            .map(|r| (r.name.as_str(), r.allocation.clone()))
            .collect();
        for o in offers {
            if let Some(role) = role_of.get(&*o.framework) {
                by_role.entry(role).or_default().add(&o.piece.total());
            }
        }
        let mut allocated = Resources::new();
        let mut now_set = std::collections::BTreeSet::new();
        for (role, r) in &by_role {
            M.role_share
                .with_label_values(&[role])
                .set(allot_policy::dominant_share(r, &snapshot.total));
            now_set.insert((role.to_string(), String::new()));
            for (name, milli) in r.scalars() {
                M.role_allocated
                    .with_label_values(&[role, name])
                    .set(milli as f64 / 1000.0);
                now_set.insert((role.to_string(), name.to_string()));
            }
            allocated.add(r);
        }
        // What was set before and is not now (a role gone from the books, a resource it no longer holds): 0.
        for (role, name) in self.gauge_roles.difference(&now_set) {
            if name.is_empty() {
                M.role_share.with_label_values(&[role]).set(0.0);
            } else {
                M.role_allocated.with_label_values(&[role, name]).set(0.0);
            }
        }
        self.gauge_roles.extend(now_set);
        for (name, milli) in snapshot.total.scalars() {
            M.cluster
                .with_label_values(&[name, "total"])
                .set(milli as f64 / 1000.0);
            M.cluster
                .with_label_values(&[name, "allocated"])
                .set(allocated.scalar_milli(name) as f64 / 1000.0);
        }
    }
}

/// How often, at most, an allocator with no cycle to run refreshes its resource, offer and share gauges.
const IDLE_GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Moves `allot_policy_active` from `old` to `new`.
fn set_active(old: Option<&PolicyRef>, new: &PolicyRef) {
    if let Some(old) = old {
        let _ = M
            .policy_active
            .remove_label_values(&[&old.name, &old.kind, &old.sha256]);
    }
    M.policy_active
        .with_label_values(&[&new.name, &new.kind, &new.sha256])
        .set(1.0);
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Command>,
    policy: Loaded,
    cycles: Cycles,
    deadline: Duration,
) {
    let Cycles { interval, min_gap } = cycles;
    let mut state = State {
        books: Books::new(&allot_common::new_id("offer")),
        last_good: policy.clone(),
        record: PolicyRecord {
            active: Some(policy.reference.clone()),
            ..PolicyRecord::default()
        },
        running: policy,
        record_seq: 0,
        load_error: String::new(),
        deadline,
        stats: PolicyStats::default(),
        shadow: None,
        subscriber: None,
        interval,
        start: Instant::now(),
        cycle: 0,
        starved: HashMap::new(),
        idle_gauges_at: None,
        gauge_roles: Default::default(),
    };
    set_active(None, &state.running.reference);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cycle = tokio::time::Instant::now();
    // A cycle that events asked for within `min_gap` of the last one: run when the gap has passed.
    let mut pending = false;
    loop {
        let mut want = false;
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                want |= state.apply(cmd);
                while let Ok(cmd) = rx.try_recv() {
                    want |= state.apply(cmd);
                }
            }
            _ = ticker.tick() => want = true,
            _ = tokio::time::sleep_until(last_cycle + min_gap), if pending => want = true,
        }
        M.heartbeat.set(allot_common::now_secs());
        if want {
            if last_cycle.elapsed() < min_gap {
                pending = true;
                continue;
            }
            pending = false;
            last_cycle = tokio::time::Instant::now();
            state.allocate();
        }
    }
}

/// When allocation cycles run (Mesos' `--allocation_interval`, plus event-driven cycles, which Mesos has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycles {
    /// Time between periodic cycles.
    pub interval: Duration,
    /// The least time between the start of one cycle and the start of a cycle that events brought forward.
    /// A shorter gap offers freed resources sooner (what a framework running many short tasks waits on);
    /// a longer one batches more of them into each cycle, offer and ACCEPT, which costs less CPU.
    pub min_gap: Duration,
}

impl Cycles {
    /// Cycles every `interval`, and brought forward at least `min_gap` apart; without `min_gap`,
    /// [`MIN_GAP_FRACTION`] of the interval.
    ///
    /// # Errors
    /// A message naming both flags if `interval` is zero or `min_gap` is longer than `interval` (cycles could
    /// then not run every interval).
    pub fn new(interval: Duration, min_gap: Option<Duration>) -> Result<Cycles, String> {
        if interval.is_zero() {
            return Err("--allocation-interval must be more than 0".into());
        }
        let min_gap = min_gap.unwrap_or_else(|| interval.mul_f64(MIN_GAP_FRACTION));
        if min_gap > interval {
            return Err(format!(
                "--min-cycle-gap ({min_gap:?}) must not be longer than --allocation-interval ({interval:?})"
            ));
        }
        Ok(Cycles { interval, min_gap })
    }
}

/// Without `--min-cycle-gap`, cycles that events bring forward run at least this fraction of the allocation
/// interval apart (100 ms at the default 1 s), so that a stream of ended tasks costs at most ten cycles per
/// interval.
pub const MIN_GAP_FRACTION: f64 = 0.1;

/// How long a revoked task is not offered to the policy for revocation again: time for the broker to kill it
/// (kill grace periods included) and for its end to come back. A task still running after that (the kill was
/// lost with a crashed broker) may be revoked again.
pub const REVOCATION_PENDING: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use allot_proto::common::{CommandInfo, TaskInfo, TaskRecord, TaskStatus};

    #[test]
    fn the_minimum_cycle_gap_defaults_to_a_tenth_of_the_interval_and_may_not_exceed_it() {
        let ms = Duration::from_millis;
        assert_eq!(
            Cycles::new(ms(250), None),
            Ok(Cycles {
                interval: ms(250),
                min_gap: ms(25)
            })
        );
        assert_eq!(Cycles::new(ms(250), Some(ms(10))).unwrap().min_gap, ms(10));
        assert_eq!(
            Cycles::new(ms(250), Some(ms(250))).unwrap().min_gap,
            ms(250)
        );
        assert_eq!(
            Cycles::new(ms(250), Some(Duration::ZERO)).unwrap().min_gap,
            Duration::ZERO
        );
        let e = Cycles::new(ms(250), Some(ms(251))).unwrap_err();
        assert!(
            e.contains("--min-cycle-gap") && e.contains("--allocation-interval"),
            "{e}"
        );
        assert!(Cycles::new(Duration::ZERO, None).is_err());
    }

    fn resources() -> Vec<allot_proto::common::Resource> {
        allot_common::convert::resources_to_proto(
            &"cpus:1.5;mem:128".parse::<Resources>().expect("valid"),
        )
    }

    fn written(state: TaskState) -> Vec<u8> {
        let rec = TaskRecord {
            framework_id: "fw".into(),
            task: Some(TaskInfo {
                name: "a task".into(),
                task_id: "t1".into(),
                agent_id: "a1".into(),
                resources: resources(),
                command: Some(CommandInfo {
                    value: "sleep 1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(TaskStatus {
                task_id: "t1".into(),
                state: state as i32,
                message: "a message".into(),
                uuid: vec![7; 16],
                ..Default::default()
            }),
            acknowledged: true,
            sandbox: "/tmp/x".into(),
        };
        prost::Message::encode_to_vec(&rec)
    }

    #[test]
    fn a_task_record_is_read_through_its_view() {
        for (state, terminal) in [
            (TaskState::TaskStaging, false),
            (TaskState::TaskRunning, false),
            (TaskState::TaskFinished, true),
            (TaskState::TaskUnreachable, true),
        ] {
            let Some(Command::TaskPut {
                framework,
                task,
                agent,
                piece,
                terminal: t,
            }) = to_command(Kind::Tasks, "fw/t1", Some(&written(state)))
            else {
                panic!("a task record makes a TaskPut");
            };
            assert_eq!(
                (framework.as_str(), task.as_str(), agent.as_str()),
                ("fw", "t1", "a1")
            );
            assert_eq!(t, terminal, "{state:?}");
            assert_eq!(piece, piece_of(&resources()));
        }
    }
}
