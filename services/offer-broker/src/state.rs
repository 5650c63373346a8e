//! The broker's state and its decisions. Pure: no I/O, no clock, no lock (the caller holds the broker's lock
//! and passes the time); every decision a flow makes about frameworks, offers and tasks is a method here, unit
//! tested in `state/tests.rs`.
//!
//! - frameworks: subscription (connection epochs), disconnection, teardown;
//! - offers: which grants become offers, taking offers for an ACCEPT or a DECLINE, rescinds;
//! - tasks: the records of every task (TaskInfo with role-tagged resources, latest status, acknowledgement),
//!   agents' status updates applied in memory ([`State::apply_updates`]), acknowledgements, the choice of
//!   what each flush writes ([`State::take_due`]), the broker's own updates, and the answers of agents to
//!   reconciliation ([`State::apply_reconciliation`]).

use crate::error::Error;
use crate::validate::ValidTask;
use allot_common::convert::{piece_to_proto, pieces_from_proto, resources_to_proto, take_from};
use allot_proto::agent::{ReconcileTasksResponse, StatusUpdateAcknowledgement};
use allot_proto::allocator::EndedTask;
use allot_proto::common::{
    AgentInfo, AgentRecord, FrameworkRecord, StatusSource, TaskInfo, TaskRecord, TaskState,
    TaskStatus,
};
use allot_proto::scheduler::{self as pb, Event, event};
use allot_resources::Resources;
use allot_telemetry::propagation::SpanContext;
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio::sync::mpsc;

mod agents;
mod tasks;
#[cfg(test)]
mod tests;

/// The sender of a framework's event stream.
pub type EventSender = mpsc::UnboundedSender<Event>;

/// A task's key in the broker's maps: `(framework_id, task_id)`.
pub type TaskKey = (String, String);

/// The maps keyed by task or offer, touched several times for every task: hashed with foldhash (the keys are
/// IDs the control plane made or checked, and SipHash was 3-4% of the broker's CPU at 6,000 tasks/s).
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// See [`FastMap`].
pub type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// A task to reconcile with its agent, with the uuid of its recorded status.
pub type Recorded = (TaskKey, Vec<u8>);

/// A framework the broker knows: its record, and its event stream while it is connected.
pub struct Framework {
    /// The record etcd holds.
    pub record: FrameworkRecord,
    /// The event stream of its current connection; `None` while disconnected.
    pub sender: Option<EventSender>,
    /// Incremented on every (re-)subscription; a disconnect only counts for the connection it belongs to.
    pub epoch: u64,
    /// Whether it asked for no offers (SUPPRESS).
    pub suppressed: bool,
}

/// An outstanding offer.
pub struct OfferEntry {
    /// The offer as the framework saw it.
    pub offer: pb::Offer,
    /// Its resources, parsed.
    pub resources: Resources,
    /// The offer's span, which the ACCEPT that uses the offer links to.
    pub span: SpanContext,
}

/// What the agents' status updates of one batch did (see [`State::apply_updates`]).
#[derive(Debug, Default)]
pub struct Applied {
    /// Updates to forward to their frameworks, in order.
    pub forward: Vec<TaskStatus>,
    /// Tasks that ended (or became unreachable): the allocator frees their resources.
    pub ended: Vec<EndedTask>,
    /// Tasks an agent reports live that the broker holds ended or does not know, as (framework, task,
    /// agent): the agent is told to kill them (see [`State::apply_updates`]).
    pub kill: Vec<(String, String, String)>,
}

/// What an agent's answer to reconciliation decided (see [`State::apply_reconciliation`]).
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Tasks recorded TASK_STAGING that the agent has never heard of: their launch did not reach it, and is
    /// sent again.
    pub relaunch: Vec<TaskKey>,
    /// Tasks past TASK_STAGING that the agent has no record of: TASK_LOST.
    pub lost: Vec<TaskKey>,
    /// Tasks of an agent back from unreachable that it still runs, by their state: reported again.
    pub revived: BTreeMap<TaskState, Vec<TaskKey>>,
    /// Tasks that ended while the broker did not know: the allocator frees their resources.
    pub ended: Vec<EndedTask>,
}

/// A change of an agent's liveness (its `alive` key), see [`State::set_alive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It was alive and its key is gone: its tasks become TASK_UNREACHABLE.
    Lost,
    /// Its key is back: its TASK_UNREACHABLE tasks are reconciled.
    Returned,
    /// Nothing changed.
    Same,
}

/// Everything the broker holds in memory. Durable parts (framework and task records) are also in etcd;
/// offers and connections are soft.
#[derive(Default)]
pub struct State {
    /// Every framework etcd records, connected or not.
    pub frameworks: HashMap<String, Framework>,
    /// Outstanding offers by ID.
    pub offers: FastMap<String, OfferEntry>,
    /// Every task etcd records, with its latest state in memory.
    pub tasks: FastMap<TaskKey, TaskRecord>,
    /// Agent records (addresses), followed from etcd.
    pub agents: HashMap<String, AgentRecord>,
    /// Agents whose liveness key is present, with the registration it names (the key's value; 0 if it is
    /// not a number): launches are stamped with it (see `allot_agent::fence`).
    pub alive: HashMap<String, u64>,
    /// Tasks whose record in memory is newer than in etcd, with the flush count when they changed (see
    /// `updates.rs`).
    pub dirty: FastMap<TaskKey, u64>,
    /// Flushes so far.
    pub flushes: u64,
    /// Dirty tasks whose next write may not be skipped even if it is an acknowledged intermediate state: tasks
    /// back from TASK_UNREACHABLE, which etcd (and the allocator, through it) still counts as gone.
    pub must_write: FastSet<TaskKey>,
    /// Acknowledgements that need no write, to pass on to agents at once (`Broker::pass_acks`, or the next
    /// flush if it comes first): acknowledged intermediate states, repeats of updates already recorded as
    /// acknowledged, and updates dropped (unknown task, after a terminal state).
    pub agent_acks: Vec<StatusUpdateAcknowledgement>,
    /// Tasks whose launch is on its way to their agent: accepted, and the agent has not answered the launch
    /// yet. Until it has, the agent may not know the task, so asking it (`Agent.ReconcileTasks`) would call a
    /// launch in flight TASK_LOST.
    pub launching: FastSet<TaskKey>,
}

/// The acknowledgement for the agent of `status` (`None` for an update the broker made itself).
pub fn agent_ack(status: &TaskStatus) -> Option<StatusUpdateAcknowledgement> {
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
pub fn plain(ev: event::Event) -> Event {
    Event {
        event: Some(ev),
        trace_context: Default::default(),
    }
}

/// An UPDATE event carrying `trace_context` (the span that recorded it, or nothing for a re-send).
pub fn update_event(status: TaskStatus, trace_context: HashMap<String, String>) -> Event {
    Event {
        event: Some(event::Event::Update(pb::Update {
            status: Some(status),
        })),
        trace_context,
    }
}

/// The `(framework, task)` key of a task record.
pub fn task_key(rec: &TaskRecord) -> TaskKey {
    let task = rec
        .task
        .as_ref()
        .map(|t| t.task_id.clone())
        .unwrap_or_default();
    (rec.framework_id.clone(), task)
}

/// Tags the resources of the `valid` tasks of an ACCEPT with the role they draw from: first the offers'
/// reservations (for the framework's role), then unreserved resources; so that the allocator's books (and a
/// restarted allocator, from etcd) know which part of the agent each task holds.
pub fn tag_reservations(taken: &[OfferEntry], valid: &mut [ValidTask]) {
    let mut pools: BTreeMap<String, Resources> = BTreeMap::new();
    for o in taken {
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
}

/// The TASK_STAGING record of `task`, launched by framework `fw` on `agent_id` at `now` (Unix seconds).
pub fn staging_record(fw: &str, agent_id: &str, task: TaskInfo, now: f64) -> TaskRecord {
    TaskRecord {
        framework_id: fw.to_string(),
        status: Some(TaskStatus {
            task_id: task.task_id.clone(),
            state: TaskState::TaskStaging as i32,
            source: StatusSource::SourceMaster as i32,
            agent_id: agent_id.to_string(),
            framework_id: fw.to_string(),
            timestamp: now,
            ..Default::default()
        }),
        task: Some(task),
        acknowledged: true,
        sandbox: String::new(),
    }
}

/// `refuse_seconds` of a DECLINE or ACCEPT, or `default` when it carries no filters.
///
/// # Errors
/// [`Error::Invalid`] for a value that is not a finite number >= 0.
pub fn refuse_of(refuse_seconds: Option<f64>, default: f64) -> Result<f64, Error> {
    let r = refuse_seconds.unwrap_or(default);
    if r.is_finite() && r >= 0.0 {
        Ok(r)
    } else {
        Err(Error::Invalid(format!(
            "filters.refuse_seconds must be a finite number >= 0, got {r}"
        )))
    }
}

fn is_live(status: &TaskStatus) -> bool {
    !status.state().is_terminal()
}

/// Frameworks: subscription, disconnection, teardown, and their event streams.
impl State {
    /// Checks that `fw` may make a call: it is subscribed.
    ///
    /// # Errors
    /// [`Error::TornDown`] or [`Error::NotSubscribed`].
    pub fn check_subscribed(&self, fw: &str) -> Result<(), Error> {
        match self.frameworks.get(fw) {
            Some(f) if f.sender.is_some() => Ok(()),
            Some(f) if !f.record.active => Err(Error::TornDown(fw.to_string())),
            _ => Err(Error::NotSubscribed(fw.to_string())),
        }
    }

    /// Whether `fw` may re-subscribe with its ID.
    ///
    /// # Errors
    /// [`Error::Removed`] for a framework that was torn down, [`Error::UnknownFramework`] for one never seen.
    pub fn check_resubscribe(&self, fw: &str) -> Result<(), Error> {
        match self.frameworks.get(fw).map(|f| f.record.active) {
            Some(true) => Ok(()),
            Some(false) => Err(Error::Removed(fw.to_string())),
            None => Err(Error::UnknownFramework(fw.to_string())),
        }
    }

    /// Records a (re-)subscription of `record`'s framework on the stream `tx`: a new connection epoch, not
    /// suppressed. Returns the epoch, the sender of the connection it replaces (told that it failed over), and
    /// the framework's unacknowledged updates (sent again on the new stream).
    pub fn subscribe(
        &mut self,
        record: FrameworkRecord,
        tx: EventSender,
    ) -> (u64, Option<EventSender>, Vec<TaskStatus>) {
        let id = record.framework_id.clone();
        let entry = self
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
        let old = entry.sender.replace(tx);
        let epoch = entry.epoch;
        (epoch, old, self.unacknowledged(&id))
    }

    /// The latest statuses of `fw`'s tasks that it has not acknowledged.
    pub fn unacknowledged(&self, fw: &str) -> Vec<TaskStatus> {
        self.tasks
            .values()
            .filter(|t| t.framework_id == fw && !t.acknowledged)
            .filter_map(|t| t.status.clone())
            .collect()
    }

    /// The event stream of connection `epoch` of `fw` closed: if that is still its connection, it is
    /// disconnected and loses its offers. Returns those offers and its failover timeout (seconds), or `None`
    /// when a newer connection exists or it was already disconnected.
    pub fn disconnect(&mut self, fw: &str, epoch: u64) -> Option<(Vec<String>, f64)> {
        let f = self.frameworks.get_mut(fw)?;
        if f.epoch != epoch || f.sender.is_none() {
            return None;
        }
        f.sender = None;
        let timeout = f.record.info.as_ref().map_or(0.0, |i| i.failover_timeout);
        Some((self.take_framework_offers(fw), timeout))
    }

    /// Whether `fw` is still disconnected since connection `epoch` and not torn down: its failover timeout
    /// counts.
    pub fn still_gone(&self, fw: &str, epoch: u64) -> bool {
        self.frameworks
            .get(fw)
            .is_some_and(|f| f.epoch == epoch && f.sender.is_none() && f.record.active)
    }

    /// Records `fw` as torn down (`record`, inactive): disconnected, without offers. Returns the offers it
    /// had and its live tasks as `(task, agent)`, to kill.
    pub fn tear_down(
        &mut self,
        fw: &str,
        record: FrameworkRecord,
    ) -> (Vec<String>, Vec<(String, String)>) {
        if let Some(f) = self.frameworks.get_mut(fw) {
            f.record = record;
            f.sender = None;
        }
        let offers = self.take_framework_offers(fw);
        let live = self
            .tasks
            .values()
            .filter(|t| t.framework_id == fw && t.status.as_ref().is_some_and(is_live))
            .filter_map(|t| {
                t.task
                    .as_ref()
                    .map(|i| (i.task_id.clone(), i.agent_id.clone()))
            })
            .collect();
        (offers, live)
    }

    /// Frameworks with an open event stream, with whether each is suppressed.
    pub fn connected(&self) -> Vec<(String, bool)> {
        self.frameworks
            .iter()
            .filter(|(_, f)| f.sender.is_some())
            .map(|(id, f)| (id.clone(), f.suppressed))
            .collect()
    }

    /// Frameworks etcd records as active, each with the time it has to re-subscribe after a broker start:
    /// its failover timeout, but no less than `grace` seconds (a broker failover is no scheduler's fault).
    pub fn recovered_frameworks(&self, grace: f64) -> Vec<(String, f64)> {
        self.frameworks
            .iter()
            .filter(|(_, f)| f.record.active)
            .map(|(id, f)| {
                let timeout = f.record.info.as_ref().map_or(0.0, |i| i.failover_timeout);
                (id.clone(), timeout.max(grace))
            })
            .collect()
    }

    /// Sends `ev` to framework `fw` if it is connected. Returns whether it was sent.
    pub fn send(&self, fw: &str, ev: event::Event) -> bool {
        match self.frameworks.get(fw).and_then(|f| f.sender.as_ref()) {
            Some(tx) => tx.send(plain(ev)).is_ok(),
            None => false,
        }
    }

    /// Sends each status as an UPDATE carrying `trace_context` to its framework, if connected.
    pub fn send_updates(
        &self,
        statuses: impl IntoIterator<Item = TaskStatus>,
        trace_context: &HashMap<String, String>,
    ) {
        self.send_traced_updates(statuses.into_iter().map(|s| (s, trace_context.clone())));
    }

    /// Like [`State::send_updates`], each status with its own trace context.
    pub fn send_traced_updates(
        &self,
        statuses: impl IntoIterator<Item = (TaskStatus, HashMap<String, String>)>,
    ) {
        for (status, trace_context) in statuses {
            if let Some(tx) = self
                .frameworks
                .get(&status.framework_id)
                .and_then(|f| f.sender.as_ref())
            {
                let _ = tx.send(update_event(status, trace_context));
            }
        }
    }

    /// A HEARTBEAT to every connected framework, and every unacknowledged update again to its framework's
    /// current connection.
    pub fn heartbeat(&self) {
        for f in self.frameworks.values() {
            if let Some(tx) = &f.sender {
                let _ = tx.send(plain(event::Event::Heartbeat(pb::Heartbeat {})));
            }
        }
        for t in self.tasks.values().filter(|t| !t.acknowledged) {
            if let (Some(status), Some(tx)) = (
                &t.status,
                self.frameworks
                    .get(&t.framework_id)
                    .and_then(|f| f.sender.as_ref()),
            ) {
                let _ = tx.send(update_event(status.clone(), HashMap::new()));
            }
        }
    }
}

/// Offers: which grants become offers, and taking offers for an ACCEPT or a DECLINE.
impl State {
    /// Where a grant of `agent_id` to `fw` can become an offer: the framework is connected, and the agent is
    /// alive with its record (address) known. Returns the agent's info (hostname, attributes), or `None`
    /// when the grant must go back to the allocator.
    pub fn offer_target(&self, fw: &str, agent_id: &str) -> Option<AgentInfo> {
        let connected = self.frameworks.get(fw).is_some_and(|f| f.sender.is_some());
        let record = self.agents.get(agent_id)?;
        (connected && self.alive.contains_key(agent_id))
            .then(|| record.info.clone().unwrap_or_default())
    }

    /// Removes every outstanding offer of framework `fw`; returns their IDs.
    pub fn take_framework_offers(&mut self, fw: &str) -> Vec<String> {
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

    /// Removes the offers of `ids` that are outstanding; returns their IDs.
    pub fn take_offers(&mut self, ids: impl IntoIterator<Item = String>) -> Vec<String> {
        ids.into_iter()
            .filter(|id| self.offers.remove(id).is_some())
            .collect()
    }

    /// Removes the offers of `ids` that are outstanding; returns each with its framework, for a RESCIND.
    pub fn rescind(&mut self, ids: impl IntoIterator<Item = String>) -> Vec<(String, String)> {
        ids.into_iter()
            .filter_map(|id| self.offers.remove(&id).map(|o| (o.offer.framework_id, id)))
            .collect()
    }

    /// Removes every outstanding offer (a new allocator session knows none); returns each with its framework.
    pub fn rescind_all(&mut self) -> Vec<(String, String)> {
        self.offers
            .drain()
            .map(|(id, o)| (o.offer.framework_id, id))
            .collect()
    }

    /// The outstanding offer `id` of framework `fw`.
    ///
    /// # Errors
    /// [`Error::UnknownOffer`] if it is not outstanding or is another framework's.
    pub(crate) fn offer(&self, fw: &str, id: &str) -> Result<&OfferEntry, Error> {
        self.offers
            .get(id)
            .filter(|o| o.offer.framework_id == fw)
            .ok_or_else(|| Error::UnknownOffer(id.to_string()))
    }

    /// Takes the offers of a DECLINE: removes those of `offer_ids` that are outstanding and belong to `fw`, and
    /// returns their IDs, with the first ID that is neither (gone: accepted, declined, rescinded; or another
    /// framework's, which stays untouched). As Mesos' master, a DECLINE still declines its valid offers when
    /// it also names one no longer valid: a framework declining a whole OFFERS event at once must not leave
    /// the rest outstanding because one of them was rescinded meanwhile.
    ///
    /// # Errors
    /// [`Error::Invalid`] for no offers (nothing is taken).
    pub fn take_declined_offers(
        &mut self,
        fw: &str,
        offer_ids: Vec<String>,
    ) -> Result<(Vec<String>, Option<String>), Error> {
        if offer_ids.is_empty() {
            return Err(Error::Invalid("no offer_ids given".into()));
        }
        let (own, unknown): (Vec<String>, Vec<String>) = offer_ids
            .into_iter()
            .partition(|id| self.offer(fw, id).is_ok());
        Ok((self.take_offers(own), unknown.into_iter().next()))
    }

    /// Checks the offers of an ACCEPT: each exists, belongs to `fw` and is named once, and all are of one
    /// agent. Returns that agent and the offers' summed resources.
    ///
    /// # Errors
    /// [`Error::Invalid`] for no offers, an offer named twice, or offers of different agents;
    /// [`Error::UnknownOffer`].
    pub fn check_offers(
        &self,
        fw: &str,
        offer_ids: &[String],
    ) -> Result<(String, Resources), Error> {
        let Some(first) = offer_ids.first() else {
            return Err(Error::Invalid("no offer_ids given".into()));
        };
        let agent = self.offer(fw, first)?.offer.agent_id.clone();
        let mut total = Resources::new();
        let mut seen = HashSet::new();
        for id in offer_ids {
            if !seen.insert(id) {
                return Err(Error::Invalid(format!("offer {id} is named twice")));
            }
            let o = self.offer(fw, id)?;
            if o.offer.agent_id != agent {
                return Err(Error::Invalid(
                    "offers from different agents cannot be accepted together".into(),
                ));
            }
            total.add(&o.resources);
        }
        Ok((agent, total))
    }

    /// Whether framework `fw` has a task `task` that has not ended (a task ID may be used again only after
    /// its task ended).
    pub fn is_live_task(&self, fw: &str, task: &str) -> bool {
        self.tasks
            .get(&(fw.to_string(), task.to_string()))
            .and_then(|t| t.status.as_ref())
            .is_some_and(is_live)
    }

    /// Whether task `task` of `fw` is still recorded TASK_STAGING: no update from its agent has been heard, so
    /// its launch may not have reached the agent. A launch is sent again only for such tasks: one that any
    /// update names has reached its agent.
    pub fn is_staging(&self, fw: &str, task: &str) -> bool {
        self.tasks
            .get(&(fw.to_string(), task.to_string()))
            .and_then(|t| t.status.as_ref())
            .is_some_and(|s| s.state() == TaskState::TaskStaging)
    }

    /// Takes every offer of `ids` for an ACCEPT, all or none.
    ///
    /// # Errors
    /// [`Error::Rescinded`] if any is no longer outstanding (a rescind won the race); nothing is taken then.
    pub fn take_offers_for_accept(&mut self, ids: &[String]) -> Result<Vec<OfferEntry>, Error> {
        if ids.iter().any(|id| !self.offers.contains_key(id)) {
            return Err(Error::Rescinded);
        }
        Ok(ids.iter().filter_map(|id| self.offers.remove(id)).collect())
    }
}
