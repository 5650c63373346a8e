//! The policy simulator: runs a scenario through the real allocator host ([`Books::snapshot`], the policy's
//! call, [`Books::apply_grants`]) on a simulated clock, and writes every offer and launch as a JSON line.
//! `allot sim` is its command line.
//!
//! Scenario format (YAML):
//!
//! ```yaml
//! name: two-roles
//! allocation_interval: 1      # seconds, default 1
//! policy: drf                 # built-in name; `--policy` overrides
//! preemption: {grace: 5, min_runtime: 0}   # optional, seconds: the policy may revoke tasks (see below)
//! events:
//!   - add_agent: {id: a1, resources: {cpus: 4, mem: 4096}, reserved: {db: {cpus: 1}}, used: {f1: {cpus: 1}}}
//!   - add_framework: {id: f1, role: batch, priority: 0, workload: {task: {cpus: 1, mem: 128}, count: 10, per_offer: 2, duration: 5}}
//!   - decline: {framework: f1, agent: a1, refuse_seconds: 0}
//!   - accept: {framework: f1, agent: a1, resources: {cpus: 1}, refuse_seconds: 5}
//!   - recover: {framework: f1, agent: a1, resources: {cpus: 1}}
//!   - suppress: {framework: f1}
//!   - revive: {framework: f1}
//!   - update_weights: {batch: 1, service: 3}
//!   - update_quota: {role: batch, limit: {cpus: 2, mem: 0}}   # 0: none of it; absent: unlimited
//!   - update_quota: {role: prod, guarantee: {cpus: 8}}         # served first, held back while prod has demand
//!   - update_preemption: {role: batch, preemptible: false}   # its tasks (and its subtree's) are never revoked
//!   - reserve: {agent: a1, role: db, resources: {cpus: 2, mem: 1024}}     # a dynamic reservation
//!   - unreserve: {agent: a1, role: db, resources: {cpus: 2, mem: 1024}}
//!   - remove_agent: {id: a1}
//!   - remove_framework: {id: f1}
//!   - advance: 10
//! ```
//!
//! Semantics, as in Mesos:
//! - an agent's `resources` are its unreserved resources; `reserved` adds resources reserved for a role;
//!   `used` marks resources already held by a framework's tasks;
//! - an allocation runs after `add_agent`, `add_framework` and `revive`, and at every multiple of
//!   `allocation_interval` that `advance` crosses; other events do not trigger one;
//! - `decline` returns all of the framework's outstanding offers (or those on one agent); `refuse_seconds`
//!   defaults to 5 and 0 means no filter; a filter lasts `max(refuse_seconds, allocation_interval)`;
//! - `accept` launches a task of `resources` from the framework's outstanding offer on the agent (its role's
//!   reservation is used first); the rest of the offer returns, filtered for `refuse_seconds` (default 5);
//! - a `workload` makes the framework accept by itself: from each offer it launches up to `per_offer` tasks
//!   that fit (while `count` lasts), returns the rest with no filter, and releases each task after `duration`
//!   seconds (never, if absent).
//!
//! - `reserve` and `unreserve` change an agent's dynamic reservations as the operator's `allot reserve` /
//!   `allot unreserve` (or a framework's RESERVE / UNRESERVE) do, through the same checks
//!   (`Books::set_dynamic_reservations`): resources a running task uses can be neither reserved nor released,
//!   and the agent's outstanding offers are rescinded; an event the checks refuse fails the scenario;
//! - with `preemption`, a framework that has wanted offers and been offered nothing for `grace` seconds may
//!   have the policy revoke other roles' tasks (running at least `min_runtime`) for it at the next cycle; the
//!   host checks every revocation (`Books::apply_revocations`) and a revoked task ends at once.
//!
//! Output, one JSON object per line: `{"type":"offer","t":..,"framework":..,"agent":..,"resources":{..},
//! "reserved":{role:{..}}}` (`reserved` only when some are), `{"type":"launch",...,"resources":{..}}`,
//! `{"type":"rescind","t":..,"framework":..,"agent":..}`, `{"type":"reserve"|"unreserve","t":..,"agent":..,
//! "role":..,"resources":{..}}`, `{"type":"preempt","t":..,"framework":..,"task":..,
//! "agent":..,"resources":{..},"message":..}` for a revoked task, `{"type":"revocation_refused",..,"reason":..}`
//! for a revocation the host refused, `{"type":"rejected",..,"reason":..}` for a grant the
//! host refused (overcommit, filtered, quota, ...), and with `--summary` a final `{"type":"summary",..}`
//! with offers and launches per framework, dominant shares per framework and role at the end, and Jain's
//! fairness index of the frameworks' weighted dominant shares (Jain, Chiu, Hawe, DEC-TR-301, 1984).

use crate::books::{Books, Offer, Piece, RoleConfig, change_reservation};
use crate::policy::Loaded;
use allot_policy::{Limits, Resources, dominant_share};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

/// Why a scenario could not be run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario is not valid YAML of the expected shape.
    #[error("scenario: {0}")]
    Parse(#[from] serde_norway::Error),
    /// An event cannot be applied.
    #[error("event {index} ({kind}): {message}")]
    Event {
        /// Position in `events`, from 0.
        index: usize,
        /// The event's kind, e.g. `accept`.
        kind: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The policy is unknown, or its file cannot be read.
    #[error("policy: {0}")]
    Policy(String),
    /// The policy's file is not a policy this allocator can load.
    #[error("policy: {0}")]
    Load(#[from] crate::error::LoadError),
    /// Writing the output failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
}

/// A resource value in a scenario: a number (scalar) or Mesos range text like `[31000-31009]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ResValue {
    Num(f64),
    Text(String),
}

type ResMap = BTreeMap<String, ResValue>;

/// Why one event of a scenario cannot be applied; [`run`] reports it as [`SimError::Event`] with the event's
/// position (or, for output that cannot be written, as the [`SimError`] itself).
#[derive(Debug, thiserror::Error)]
enum EventError {
    /// The event asks for something the simulated cluster cannot do, or holds a bad value.
    #[error("{0}")]
    Invalid(String),
    /// A resource amount or text is malformed.
    #[error(transparent)]
    Resources(#[from] allot_policy::ResourcesError),
    /// Writing the output failed.
    #[error(transparent)]
    Sim(#[from] SimError),
}

fn to_resources(m: &ResMap) -> Result<Resources, EventError> {
    let mut r = Resources::new();
    for (name, v) in m {
        match v {
            ResValue::Num(x) => r.add_scalar(name, *x)?,
            ResValue::Text(t) => r.add(&format!("{name}:{t}").parse::<Resources>()?),
        }
    }
    Ok(r)
}

/// A quota limit from its JSON form: numbers only, and a 0 is kept (none of that resource).
fn to_limits(m: &ResMap) -> Result<Limits, EventError> {
    let mut l = Limits::new();
    for (name, v) in m {
        match v {
            ResValue::Num(x) => l.set(name, *x)?,
            ResValue::Text(t) => {
                return Err(EventError::Invalid(format!(
                    "quota limit {name}: {t}: a limit is a number (ranges cannot be limited)"
                )));
            }
        }
    }
    Ok(l)
}

/// JSON form of resources: scalars as numbers (whole numbers without a fraction), ranges as Mesos text.
pub fn resources_json(r: &Resources) -> Value {
    let mut m = Map::new();
    for (name, milli) in r.scalars() {
        let v = if milli % allot_policy::resources::SCALE == 0 {
            json!(milli / allot_policy::resources::SCALE)
        } else {
            json!(milli as f64 / allot_policy::resources::SCALE as f64)
        };
        m.insert(name.to_string(), v);
    }
    for (name, set) in r.ranges() {
        let parts: Vec<String> = set.iter().map(|(b, e)| format!("{b}-{e}")).collect();
        m.insert(name.to_string(), json!(format!("[{}]", parts.join(","))));
    }
    Value::Object(m)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[serde(default)]
    name: String,
    #[serde(default = "one")]
    allocation_interval: f64,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    preemption: Option<PreemptionSpec>,
    events: Vec<Event>,
}

/// `preemption: {grace: 5, min_runtime: 0}` in a scenario: seconds, as the allocator's `--preemption-grace`
/// and `--preemption-min-runtime`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreemptionSpec {
    grace: f64,
    #[serde(default)]
    min_runtime: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Event {
    AddAgent {
        id: String,
        resources: ResMap,
        #[serde(default)]
        reserved: BTreeMap<String, ResMap>,
        #[serde(default)]
        used: BTreeMap<String, ResMap>,
        #[serde(default)]
        #[allow(dead_code)]
        attributes: BTreeMap<String, serde_norway::Value>,
    },
    RemoveAgent {
        id: String,
    },
    AddFramework {
        id: String,
        #[serde(default)]
        role: Option<String>,
        #[serde(default)]
        roles: Option<Vec<String>>,
        #[serde(default)]
        priority: i32,
        #[serde(default)]
        workload: Option<Workload>,
    },
    RemoveFramework {
        id: String,
    },
    Decline {
        framework: String,
        #[serde(default)]
        agent: Option<String>,
        #[serde(default)]
        refuse_seconds: Option<f64>,
    },
    Accept {
        framework: String,
        agent: String,
        resources: ResMap,
        #[serde(default)]
        refuse_seconds: Option<f64>,
    },
    Recover {
        framework: String,
        agent: String,
        resources: ResMap,
    },
    Suppress {
        framework: String,
    },
    Revive {
        framework: String,
    },
    UpdateWeights(BTreeMap<String, f64>),
    UpdateQuota {
        role: String,
        #[serde(default)]
        limit: Option<ResMap>,
        #[serde(default)]
        guarantee: Option<ResMap>,
    },
    UpdatePreemption {
        role: String,
        preemptible: bool,
    },
    Reserve {
        agent: String,
        role: String,
        resources: ResMap,
    },
    Unreserve {
        agent: String,
        role: String,
        resources: ResMap,
    },
    Advance(f64),
}

impl Event {
    fn kind(&self) -> &'static str {
        match self {
            Event::AddAgent { .. } => "add_agent",
            Event::RemoveAgent { .. } => "remove_agent",
            Event::AddFramework { .. } => "add_framework",
            Event::RemoveFramework { .. } => "remove_framework",
            Event::Decline { .. } => "decline",
            Event::Accept { .. } => "accept",
            Event::Recover { .. } => "recover",
            Event::Suppress { .. } => "suppress",
            Event::Revive { .. } => "revive",
            Event::UpdateWeights(_) => "update_weights",
            Event::UpdateQuota { .. } => "update_quota",
            Event::UpdatePreemption { .. } => "update_preemption",
            Event::Reserve { .. } => "reserve",
            Event::Unreserve { .. } => "unreserve",
            Event::Advance(_) => "advance",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Workload {
    task: ResMap,
    count: u64,
    per_offer: u64,
    #[serde(default)]
    duration: Option<f64>,
}

struct RunningWorkload {
    task: Resources,
    left: u64,
    per_offer: u64,
    duration_ms: Option<i64>,
}

struct SimTask {
    id: String,
    framework: String,
    agent: String,
    piece: Piece,
    ends_ms: Option<i64>,
}

#[derive(Default)]
struct Counts {
    offers: u64,
    launches: u64,
}

/// Options for one simulation.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Overrides the scenario's policy: a built-in name or the path of a policy library.
    pub policy: Option<String>,
    /// Shuffles agents every cycle in an order drawn from this seed; `None` keeps them sorted by ID.
    pub seed: Option<u64>,
    /// Adds a final summary line.
    pub summary: bool,
}

struct Sim<'w> {
    books: Books,
    policy: Loaded,
    now_ms: i64,
    interval_ms: i64,
    roles: BTreeMap<String, String>,
    workloads: BTreeMap<String, RunningWorkload>,
    tasks: Vec<SimTask>,
    next_task: u64,
    counts: BTreeMap<String, Counts>,
    out: &'w mut dyn Write,
}

fn secs(ms: i64) -> Value {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

fn to_ms(s: f64) -> Result<i64, EventError> {
    if s.is_finite() && (0.0..1e12).contains(&s) {
        Ok((s * 1000.0).round() as i64)
    } else {
        Err(EventError::Invalid(format!(
            "{s} is not a number of seconds >= 0"
        )))
    }
}

impl Sim<'_> {
    fn now(&self) -> f64 {
        self.now_ms as f64 / 1000.0
    }

    fn line(&mut self, v: Value) -> Result<(), SimError> {
        serde_json::to_writer(&mut *self.out, &v).map_err(std::io::Error::from)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    /// Reserves (`reserve`) or releases `amount` of agent `agent` for `role` as a dynamic reservation, through
    /// the allocator's own checks, and writes a `reserve` or `unreserve` line and the offers it rescinded.
    ///
    /// # Errors
    /// [`EventError::Invalid`] with the reason the checks refuse it (or, to release, that the role's dynamic
    /// reservation there does not hold `amount`: [`change_reservation`]).
    fn change_reservation(
        &mut self,
        agent: &str,
        role: &str,
        amount: &ResMap,
        reserve: bool,
    ) -> Result<(), EventError> {
        let amount = to_resources(amount)?;
        let mut dynamic = self.books.dynamic_reservations(agent);
        change_reservation(&mut dynamic, agent, role, &amount, reserve).map_err(|why| {
            EventError::Invalid(format!("unreserve of {amount} on {agent}: {why}"))
        })?;
        let rescinded = self
            .books
            .set_dynamic_reservations(agent, dynamic, true)
            .map_err(EventError::Invalid)?;
        let kind = if reserve { "reserve" } else { "unreserve" };
        let line = json!({"type": kind, "t": secs(self.now_ms), "agent": agent, "role": role,
                          "resources": resources_json(&amount)});
        self.line(line)?;
        self.rescinded(rescinded)?;
        Ok(())
    }

    /// Writes a `rescind` line per offer, sorted by framework then agent (the books hand them over in no set
    /// order), so that a scenario's output is the same on every run.
    fn rescinded(&mut self, mut offers: Vec<Arc<Offer>>) -> Result<(), SimError> {
        offers.sort_by(|a, b| (&a.framework, &a.agent).cmp(&(&b.framework, &b.agent)));
        for o in offers {
            self.line(json!({"type": "rescind", "t": secs(self.now_ms), "framework": &*o.framework, "agent": &*o.agent}))?;
        }
        Ok(())
    }

    fn launch(
        &mut self,
        framework: &str,
        agent: &str,
        piece: Piece,
        duration_ms: Option<i64>,
    ) -> Result<String, SimError> {
        self.next_task += 1;
        let id = format!("task-{}", self.next_task);
        self.line(
            json!({"type": "launch", "t": secs(self.now_ms), "framework": framework, "agent": agent,
                         "resources": resources_json(&piece.total())}),
        )?;
        self.counts
            .entry(framework.to_string())
            .or_default()
            .launches += 1;
        self.tasks.push(SimTask {
            id: id.clone(),
            framework: framework.to_string(),
            agent: agent.to_string(),
            piece,
            ends_ms: duration_ms.map(|d| self.now_ms + d),
        });
        Ok(id)
    }

    /// A piece for `want` taken from an offer: the framework's reservation first, then unreserved.
    fn piece_from_offer(&self, offer: &Offer, want: &Resources) -> Option<Piece> {
        if !offer.piece.total().contains(want) {
            return None;
        }
        let mut pool = offer.piece.reserved.clone();
        let (unreserved, reserved) = allot_common::convert::take_from(want, &mut pool);
        offer.piece.unreserved.contains(&unreserved).then(|| Piece {
            unreserved,
            reserved,
            role: offer.piece.role.clone(),
        })
    }

    /// Runs the policy's revocations on `snapshot` through the host's checks; each accepted one ends its
    /// task at once (as a kill would) and is written as a `preempt` line, each refused one as a
    /// `revocation_refused` line.
    fn preempt(&mut self, snapshot: &Arc<allot_policy::Snapshot>) -> Result<(), SimError> {
        let now = self.now();
        let revocations = self
            .policy
            .revoke(snapshot, std::time::Duration::from_secs(10))
            .map_err(|f| {
                SimError::Policy(format!(
                    "{} failed to revoke at t={now}: {f}",
                    self.policy.reference.name
                ))
            })?;
        let (accepted, refused) =
            self.books
                .apply_revocations(snapshot, revocations, now, f64::INFINITY);
        for (r, why) in refused {
            let task = snapshot.tasks.get(r.task).map_or("?", |t| t.id.as_str());
            self.line(json!({"type": "revocation_refused", "t": secs(self.now_ms), "task": task, "reason": why}))?;
        }
        for (t, message) in accepted {
            self.line(json!({"type": "preempt", "t": secs(self.now_ms), "framework": t.framework, "task": t.id,
                             "agent": t.agent, "resources": resources_json(&t.resources), "message": message}))?;
            self.tasks
                .retain(|x| !(x.framework == t.framework && x.id == t.id));
            self.books.remove_task(&t.framework, &t.id);
        }
        Ok(())
    }

    fn allocate(&mut self) -> Result<(), SimError> {
        let now = self.now();
        let snapshot = Arc::new(self.books.snapshot(now));
        if snapshot.agents.is_empty() || snapshot.frameworks.is_empty() {
            return self.preempt(&snapshot);
        }
        let grants = self
            .policy
            .call(&snapshot, std::time::Duration::from_secs(10))
            .map_err(|f| {
                SimError::Policy(format!(
                    "{} failed at t={now}: {f}",
                    self.policy.reference.name
                ))
            })?;
        let (offers, rejected) = self.books.apply_grants(&snapshot, grants, now);
        for (g, why) in rejected {
            let (framework, agent) = snapshot.names(&g).unwrap_or(("?", "?"));
            self.line(json!({"type": "rejected", "t": secs(self.now_ms), "framework": framework, "agent": agent,
                             "resources": resources_json(&g.total()), "reason": why.as_str()}))?;
        }
        for o in &offers {
            let mut line = json!({"type": "offer", "t": secs(self.now_ms), "framework": &*o.framework, "agent": &*o.agent,
                                  "resources": resources_json(&o.piece.total())});
            if !o.piece.reserved.is_empty() {
                line["reserved"] =
                    json!({ o.piece.role.to_string(): resources_json(&o.piece.reserved) });
            }
            self.line(line)?;
            self.counts
                .entry(o.framework.to_string())
                .or_default()
                .offers += 1;
        }
        for o in offers {
            let Some(w) = self.workloads.get(&*o.framework) else {
                continue;
            };
            let (task, per_offer, duration) = (w.task.clone(), w.per_offer, w.duration_ms);
            let mut left = w.left;
            let mut remaining = (*o).clone();
            let mut launched = Vec::new();
            while left > 0 && (launched.len() as u64) < per_offer {
                let Some(piece) = self.piece_from_offer(&remaining, &task) else {
                    break;
                };
                remaining.piece.unreserved.subtract(&piece.unreserved);
                remaining.piece.reserved.subtract(&piece.reserved);
                let id = self.launch(&o.framework, &o.agent, piece.clone(), duration)?;
                launched.push((o.framework.to_string(), id, o.agent.to_string(), piece));
                left -= 1;
            }
            if let Some(w) = self.workloads.get_mut(&*o.framework) {
                w.left = left;
            }
            let min_filter = self.interval_ms as f64 / 1000.0;
            self.books
                .recover_offers(std::slice::from_ref(&o.id), 0.0, min_filter, &launched, now);
        }
        self.preempt(&snapshot)
    }

    fn release_due(&mut self) {
        let now = self.now_ms;
        let (due, keep): (Vec<SimTask>, Vec<SimTask>) = std::mem::take(&mut self.tasks)
            .into_iter()
            .partition(|t| t.ends_ms.is_some_and(|e| e <= now));
        self.tasks = keep;
        for t in due {
            self.books.remove_task(&t.framework, &t.id);
        }
    }

    fn advance(&mut self, by_ms: i64) -> Result<(), SimError> {
        let target = self.now_ms + by_ms;
        loop {
            let next_tick = (self.now_ms / self.interval_ms + 1) * self.interval_ms;
            let next_end = self
                .tasks
                .iter()
                .filter_map(|t| t.ends_ms)
                .filter(|e| *e > self.now_ms)
                .min();
            let t = next_end.map_or(next_tick, |e| e.min(next_tick));
            if t > target {
                break;
            }
            self.now_ms = t;
            self.release_due();
            if t == next_tick {
                self.allocate()?;
            }
        }
        self.now_ms = target;
        self.release_due();
        Ok(())
    }

    fn outstanding(&self, framework: &str, agent: Option<&str>) -> Vec<Offer> {
        let mut v: Vec<Offer> = self
            .books
            .offers()
            .filter(|o| *o.framework == *framework && agent.is_none_or(|a| *a == *o.agent))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn apply(&mut self, ev: Event) -> Result<(), EventError> {
        let min_filter = self.interval_ms as f64 / 1000.0;
        let now = self.now();
        match ev {
            Event::AddAgent {
                id,
                resources,
                reserved,
                used,
                ..
            } => {
                let mut total = to_resources(&resources)?;
                let mut res = BTreeMap::new();
                for (role, m) in &reserved {
                    let r = to_resources(m)?;
                    total.add(&r);
                    res.insert(role.clone(), r);
                }
                let r = self.books.set_agent(&id, total, res.clone());
                self.rescinded(r)?;
                self.books.set_reachable(&id, true);
                for (fw, m) in &used {
                    let want = to_resources(m)?;
                    let role = self.roles.get(fw).cloned().unwrap_or_default();
                    let mut pool = res.get(&role).cloned().unwrap_or_default();
                    let (unreserved, reserved) = allot_common::convert::take_from(&want, &mut pool);
                    self.next_task += 1;
                    let task = format!("used-{}", self.next_task);
                    let piece = Piece {
                        unreserved,
                        reserved,
                        role: role.into(),
                    };
                    self.books.add_task(fw, &task, &id, piece.clone());
                    self.tasks.push(SimTask {
                        id: task,
                        framework: fw.clone(),
                        agent: id.clone(),
                        piece,
                        ends_ms: None,
                    });
                }
                self.allocate()?;
            }
            Event::RemoveAgent { id } => {
                let r = self.books.remove_agent(&id);
                self.tasks.retain(|t| t.agent != id);
                self.rescinded(r)?;
            }
            Event::AddFramework {
                id,
                role,
                roles,
                priority,
                workload,
            } => {
                let role = role
                    .or_else(|| roles.and_then(|r| r.into_iter().next()))
                    .unwrap_or_else(|| "*".to_string());
                if let Some(w) = workload {
                    if w.per_offer == 0 {
                        return Err(EventError::Invalid(
                            "workload.per_offer must be at least 1".into(),
                        ));
                    }
                    let task = to_resources(&w.task)?;
                    if task.is_empty() {
                        return Err(EventError::Invalid("workload.task is empty".into()));
                    }
                    self.workloads.insert(
                        id.clone(),
                        RunningWorkload {
                            task,
                            left: w.count,
                            per_offer: w.per_offer,
                            duration_ms: w.duration.map(to_ms).transpose()?,
                        },
                    );
                }
                self.roles.insert(id.clone(), role.clone());
                self.counts.entry(id.clone()).or_default();
                self.books.add_framework(&id, &role, priority);
                self.books.activate(&id, false);
                self.allocate()?;
            }
            Event::RemoveFramework { id } => {
                let r = self.books.remove_framework(&id);
                for t in self.tasks.iter().filter(|t| t.framework == id) {
                    self.books.remove_task(&t.framework, &t.id);
                }
                self.tasks.retain(|t| t.framework != id);
                self.workloads.remove(&id);
                self.rescinded(r)?;
            }
            Event::Decline {
                framework,
                agent,
                refuse_seconds,
            } => {
                let refuse = refuse_seconds.unwrap_or(5.0);
                to_ms(refuse)?;
                let ids: Vec<crate::books::Id> = self
                    .outstanding(&framework, agent.as_deref())
                    .into_iter()
                    .map(|o| o.id)
                    .collect();
                self.books
                    .recover_offers(&ids, refuse, min_filter, &[], now);
            }
            Event::Accept {
                framework,
                agent,
                resources,
                refuse_seconds,
            } => {
                let want = to_resources(&resources)?;
                let refuse = refuse_seconds.unwrap_or(5.0);
                to_ms(refuse)?;
                let offer = self
                    .outstanding(&framework, Some(&agent))
                    .into_iter()
                    .next()
                    .ok_or_else(|| {
                        EventError::Invalid(format!(
                            "{framework} has no outstanding offer on {agent}"
                        ))
                    })?;
                let piece = self.piece_from_offer(&offer, &want).ok_or_else(|| {
                    EventError::Invalid(format!(
                        "{want} does not fit the offer of {}",
                        offer.piece.total()
                    ))
                })?;
                let id = self.launch(&framework, &agent, piece.clone(), None)?;
                self.books.recover_offers(
                    &[offer.id],
                    refuse,
                    min_filter,
                    &[(framework, id, agent, piece)],
                    now,
                );
            }
            Event::Recover {
                framework,
                agent,
                resources,
            } => {
                let mut left = to_resources(&resources)?;
                let mut freed = Vec::new();
                for t in self
                    .tasks
                    .iter()
                    .filter(|t| t.framework == framework && t.agent == agent)
                {
                    if left.is_empty() {
                        break;
                    }
                    if left.contains(&t.piece.total()) {
                        left.subtract(&t.piece.total());
                        freed.push(t.id.clone());
                    }
                }
                if !left.is_empty() {
                    return Err(EventError::Invalid(format!(
                        "{framework} holds no tasks adding up to the rest ({left}) on {agent}"
                    )));
                }
                for id in &freed {
                    self.books.remove_task(&framework, id);
                }
                self.tasks.retain(|t| !freed.contains(&t.id));
            }
            Event::Suppress { framework } => self.books.suppress(&framework),
            Event::Revive { framework } => {
                self.books.revive(&framework);
                self.allocate()?;
            }
            Event::UpdateWeights(weights) => {
                for (role, weight) in weights {
                    if !(weight.is_finite() && weight > 0.0) {
                        return Err(EventError::Invalid(format!("weight of {role} must be > 0")));
                    }
                    let mut cfg = self.books.role_config(&role);
                    cfg.weight = weight;
                    self.books.set_role(&role, cfg);
                }
            }
            Event::UpdatePreemption { role, preemptible } => {
                let cfg = RoleConfig {
                    preemptible,
                    ..self.books.role_config(&role)
                };
                self.books.set_role(&role, cfg);
            }
            Event::UpdateQuota {
                role,
                limit,
                guarantee,
            } => {
                let mut cfg = self.books.role_config(&role);
                if let Some(limit) = limit {
                    cfg.quota_limit = Some(to_limits(&limit)?);
                }
                if let Some(g) = guarantee {
                    let g = to_resources(&g)?;
                    if g.ranges().next().is_some() {
                        return Err(EventError::Invalid(
                            "a quota guarantee is scalars (ranges cannot be guaranteed)".into(),
                        ));
                    }
                    cfg.quota_guarantee = (!g.is_empty()).then_some(g);
                }
                self.books.set_role(&role, cfg);
            }
            Event::Reserve {
                agent,
                role,
                resources,
            } => self.change_reservation(&agent, &role, &resources, true)?,
            Event::Unreserve {
                agent,
                role,
                resources,
            } => self.change_reservation(&agent, &role, &resources, false)?,
            Event::Advance(s) => {
                let ms = to_ms(s)?;
                self.advance(ms)?;
            }
        }
        Ok(())
    }

    fn summary(&mut self) -> Result<(), SimError> {
        let total = self.books.cluster_total();
        let mut frameworks = Map::new();
        let mut roles: BTreeMap<String, Resources> = BTreeMap::new();
        let mut weighted = Vec::new();
        let allocs: Vec<(String, String, Resources)> = self
            .books
            .allocations()
            .map(|(f, r, a)| (f.to_string(), r.to_string(), a.clone()))
            .collect();
        for (fw, role, alloc) in &allocs {
            let share = dominant_share(alloc, &total);
            let weight = self.books.role_config(role).weight;
            weighted.push(share / weight);
            let c = self.counts.get(fw.as_str());
            frameworks.insert(
                fw.clone(),
                json!({"role": role, "offers": c.map_or(0, |c| c.offers), "launches": c.map_or(0, |c| c.launches),
                       "allocation": resources_json(alloc), "dominant_share": share}),
            );
            roles.entry(role.clone()).or_default().add(alloc);
        }
        let roles: Map<String, Value> = roles
            .iter()
            .map(|(r, a)| {
                (r.clone(), json!({"allocation": resources_json(a), "dominant_share": dominant_share(a, &total),
                                   "weight": self.books.role_config(r).weight}))
            })
            .collect();
        let (sum, sq): (f64, f64) = weighted
            .iter()
            .fold((0.0, 0.0), |(s, q), x| (s + x, q + x * x));
        let jain = if sq > 0.0 {
            sum * sum / (weighted.len() as f64 * sq)
        } else {
            1.0
        };
        let line = json!({"type": "summary", "t": secs(self.now_ms), "total": resources_json(&total),
                          "frameworks": frameworks, "roles": roles, "jain_fairness": jain});
        self.line(line)
    }
}

/// Runs `scenario` (YAML text) and writes its JSON lines to `out`.
///
/// # Errors
/// [`SimError`] when the scenario does not parse, an event cannot be applied (with its position), the policy
/// is unknown, or the output cannot be written.
pub fn run(scenario: &str, opts: &SimOptions, out: &mut dyn Write) -> Result<(), SimError> {
    // Events are one-key maps (`- advance: 5`), not YAML tags: read enums as singleton maps.
    let sc: Scenario = serde_norway::with::singleton_map_recursive::deserialize(
        serde_norway::Deserializer::from_str(scenario),
    )?;
    let policy_name = opts
        .policy
        .clone()
        .or(sc.policy.clone())
        .unwrap_or_else(|| "drf".to_string());
    let policy = match Loaded::builtin(&policy_name) {
        Some(p) => p,
        None if std::path::Path::new(&policy_name).exists() => {
            let bytes = std::fs::read(&policy_name)
                .map_err(|e| SimError::Policy(format!("{policy_name}: {e}")))?;
            Loaded::from_file(
                std::path::Path::new(&policy_name),
                &crate::policy::sha256_hex(&bytes),
            )?
        }
        None => {
            return Err(SimError::Policy(format!(
                "unknown policy '{policy_name}' (built in: drf, priority; or a path to a policy library)"
            )));
        }
    };
    let interval_ms = to_ms(sc.allocation_interval)
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(|| SimError::Event {
            index: 0,
            kind: "allocation_interval",
            message: format!("{} must be > 0 seconds", sc.allocation_interval),
        })?;
    let mut books = Books::new(&format!(
        "{}-offer",
        if sc.name.is_empty() { "sim" } else { &sc.name }
    ));
    if let Some(seed) = opts.seed {
        books.shuffle_agents(seed);
    }
    if let Some(p) = &sc.preemption {
        books.set_preemption(Some(allot_policy::Preemption {
            grace_seconds: p.grace,
            min_runtime_seconds: p.min_runtime,
        }));
    }
    let mut sim = Sim {
        books,
        policy,
        now_ms: 0,
        interval_ms,
        roles: BTreeMap::new(),
        workloads: BTreeMap::new(),
        tasks: Vec::new(),
        next_task: 0,
        counts: BTreeMap::new(),
        out,
    };
    for (index, ev) in sc.events.into_iter().enumerate() {
        let kind = ev.kind();
        sim.apply(ev).map_err(|e| match e {
            EventError::Sim(e) => e,
            e => SimError::Event {
                index,
                kind,
                message: e.to_string(),
            },
        })?;
        debug_assert!(
            sim.books.check_invariants().is_ok(),
            "{:?}",
            sim.books.check_invariants()
        );
    }
    if opts.summary {
        sim.summary()?;
    }
    Ok(())
}
