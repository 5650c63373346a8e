//! The allocator's books: agents, frameworks, roles, outstanding offers and running tasks, and the offer
//! filters. Pure bookkeeping, no I/O; time is passed in (seconds on any monotonic clock) so the same code
//! runs on a wall clock in the service and on a simulated clock in the simulator.
//!
//! An agent's resources are unreserved or reserved for a role. Every offer and task holds a [`Piece`]: some
//! unreserved resources and some of its framework's role's reservation.
//!
//! Invariant: for every agent, the unreserved pieces of its offers and tasks sum to `allocated`, which never
//! exceeds its unreserved total; per role, the reserved pieces sum to `allocated_reserved[role]`, which never
//! exceeds the reservation. Every grant is validated against this before it becomes an offer.

use allot_policy::{
    AgentView, FrameworkView, Grant, Limits, Policy, Preemption, Resources, Revocation, RoleView,
    Snapshot, TaskView, role_ancestors,
};
use slab::Slab;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// An ID (of an agent, framework, role or offer) shared between the books and the offers made from them:
/// copying one counts a reference and allocates nothing.
pub type Id = Arc<str>;

/// Entries by ID: iterated in ID order, and each also reachable in O(1) through the slot it keeps while it
/// lives. A snapshot remembers the slots of its agents and frameworks, so that validating a cycle's grants
/// looks nothing up by name.
#[derive(Debug, Clone)]
struct Table<V> {
    by_id: BTreeMap<Id, usize>,
    slots: Slab<(Id, V)>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Self {
            by_id: BTreeMap::new(),
            slots: Slab::new(),
        }
    }
}

impl<V: Default> Table<V> {
    fn get(&self, id: &str) -> Option<&V> {
        let s = *self.by_id.get(id)?;
        Some(&self.slots[s].1)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut V> {
        let s = *self.by_id.get(id)?;
        Some(&mut self.slots[s].1)
    }

    /// `id`'s entry, made with `V::default()` when absent.
    fn entry(&mut self, id: &str) -> &mut V {
        let s = match self.by_id.get(id) {
            Some(&s) => s,
            None => {
                let id: Id = id.into();
                let s = self.slots.insert((id.clone(), V::default()));
                self.by_id.insert(id, s);
                s
            }
        };
        &mut self.slots[s].1
    }

    fn remove(&mut self, id: &str) -> Option<V> {
        let s = self.by_id.remove(id)?;
        Some(self.slots.remove(s).1)
    }

    /// `(slot, id, entry)` in ID order.
    fn iter(&self) -> impl Iterator<Item = (usize, &str, &V)> {
        self.by_id
            .iter()
            .map(|(id, &s)| (s, &**id, &self.slots[s].1))
    }

    /// Every entry, in no particular order.
    fn values(&self) -> impl Iterator<Item = &V> {
        self.slots.iter().map(|(_, (_, v))| v)
    }

    /// Every entry, in no particular order.
    fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.slots.iter_mut().map(|(_, (_, v))| v)
    }

    /// The shared ID and the entry in `slot` when it is still `id`'s, else `id`'s wherever it is.
    fn at_mut(&mut self, slot: Option<usize>, id: &str) -> Option<(&Id, &mut V)> {
        let s = match slot {
            Some(s) if self.slots.get(s).is_some_and(|(k, _)| **k == *id) => s,
            _ => *self.by_id.get(id)?,
        };
        let (k, v) = &mut self.slots[s];
        Some((&*k, v))
    }
}

/// Resources held by an offer or a task: an unreserved part and a part of `role`'s reservation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Piece {
    /// Unreserved resources.
    pub unreserved: Resources,
    /// Resources reserved for `role`.
    pub reserved: Resources,
    /// The role the reserved part belongs to: the framework's role, or the ancestor of it whose reservation
    /// was offered (Mesos offers a role's reservation to its descendant roles too).
    pub role: Id,
}

impl Piece {
    /// An unreserved piece.
    pub fn unreserved(r: Resources) -> Self {
        Self {
            unreserved: r,
            ..Self::default()
        }
    }

    /// Both parts together.
    pub fn total(&self) -> Resources {
        self.unreserved.plus(&self.reserved)
    }
}

/// An offer the allocator has made and not yet recovered. The books keep a copy; the IDs are shared.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Offer ID.
    pub id: Id,
    /// The framework it was made to.
    pub framework: Id,
    /// The agent whose resources it holds.
    pub agent: Id,
    /// The resources.
    pub piece: Piece,
}

#[derive(Debug, Clone, Default)]
struct Agent {
    /// Everything, reserved included.
    total: Resources,
    /// Reservations by role (part of `total`): the static ones plus the dynamic ones of [`Books`].
    reserved: BTreeMap<String, Resources>,
    /// The reservations the agent declares itself (`cpus(db):2` in its resources), by role.
    static_reserved: BTreeMap<String, Resources>,
    /// Unreserved resources held by offers and tasks.
    allocated: Resources,
    /// Unreserved resources held by nothing: `unreserved_total() - allocated` (saturating), kept up to date so
    /// that a cycle computes it for no agent.
    free: Resources,
    /// Reserved resources held by offers and tasks, by role.
    allocated_reserved: BTreeMap<String, Resources>,
    /// The agent has a record and an `alive` key (its heartbeats arrive in time).
    registered: bool,
    reachable: bool,
}

impl Agent {
    /// Everything but the static reservations: what dynamic reservations are carved from.
    fn statically_unreserved(&self) -> Resources {
        let mut r = self.total.clone();
        for v in self.static_reserved.values() {
            r.subtract(v);
        }
        r
    }

    fn unreserved_total(&self) -> Resources {
        let mut r = self.total.clone();
        for v in self.reserved.values() {
            r.subtract(v);
        }
        r
    }

    /// Recomputes `free` from the totals.
    fn refresh(&mut self) {
        self.free = self.unreserved_total().minus(&self.allocated);
    }

    fn hold(&mut self, p: &Piece) {
        self.allocated.add(&p.unreserved);
        // Saturating subtraction composes: this equals a refresh.
        self.free.subtract(&p.unreserved);
        if !p.reserved.is_empty() {
            self.allocated_reserved
                .entry(p.role.to_string())
                .or_default()
                .add(&p.reserved);
        }
    }

    fn release(&mut self, p: &Piece) {
        self.allocated.subtract(&p.unreserved);
        self.refresh();
        if let Some(r) = self.allocated_reserved.get_mut(&*p.role) {
            r.subtract(&p.reserved);
            if r.is_empty() {
                self.allocated_reserved.remove(&*p.role);
            }
        }
    }

    fn reserved_available(&self, role: &str) -> Resources {
        let mut r = self.reserved.get(role).cloned().unwrap_or_default();
        if let Some(used) = self.allocated_reserved.get(role) {
            r.subtract(used);
        }
        r
    }
}

#[derive(Debug, Clone, Default)]
struct Framework {
    role: Id,
    priority: i32,
    /// Known from etcd (subscribed at some point and not torn down).
    known: bool,
    /// Its scheduler is connected through the broker.
    active: bool,
    suppressed: bool,
    allocation: Resources,
    allocations: u64,
    /// Agent ID -> time (seconds) until which the agent is filtered.
    filters: HashMap<String, f64>,
    /// It returned an offer holding CPUs unused (declined it) and has launched nothing since: the offers it
    /// holds are not ones it can use (issue 27: starvation that users feel).
    declined_cpus: bool,
    /// Since when (books' clock) it has wanted offers and been offered no CPUs; `None` while it does not
    /// want offers or right after an offer with CPUs.
    starved_since: Option<f64>,
}

impl Framework {
    /// Whether it may be offered resources: known, connected and not suppressed.
    fn wants_offers(&self) -> bool {
        self.known && self.active && !self.suppressed
    }
}

#[derive(Debug, Clone)]
struct Task {
    framework: String,
    agent: String,
    piece: Piece,
    /// When it was added (the books' clock at the last snapshot before, seconds). A restarted allocator
    /// starts its tasks' clocks again.
    started: f64,
    /// Until when a revocation of it is in flight (its kill not yet seen): not offered for revocation again
    /// before then.
    revoked_until: f64,
}

/// Role configuration: weight and quota limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleConfig {
    /// DRF weight, > 0.
    pub weight: f64,
    /// Quota limit, if any: a scalar at 0 allows none of it, one not named is not limited.
    pub quota_limit: Option<Limits>,
    /// Quota guarantee, if any (scalars): served first, and held back from other roles while the role has
    /// demand.
    pub quota_guarantee: Option<Resources>,
    /// Whether preemption may revoke tasks of this role (and of the roles below it: any ancestor that says
    /// no protects its subtree). True by default.
    pub preemptible: bool,
}

/// A revocation the host refused, and why (see [`Books::apply_revocations`]).
pub type RefusedRevocation = (Revocation, &'static str);

/// Why a policy's grant was refused by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantRejection {
    /// The framework is unknown, inactive or suppressed.
    Framework,
    /// The agent is unknown or unreachable.
    Agent,
    /// The grant asks for more than the agent has available (or reserved for the role).
    Overcommit,
    /// An offer filter keeps the agent from the framework.
    Filtered,
    /// The grant would take the role past its quota limit.
    Quota,
    /// The grant is empty.
    Empty,
}

impl GrantRejection {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantRejection::Framework => "framework",
            GrantRejection::Agent => "agent",
            GrantRejection::Overcommit => "overcommit",
            GrantRejection::Filtered => "filtered",
            GrantRejection::Quota => "quota",
            GrantRejection::Empty => "empty",
        }
    }
}

/// What one allocation cycle did.
#[derive(Debug, Default)]
pub struct Cycle {
    /// Offers made.
    pub offers: Vec<Arc<Offer>>,
    /// Grants the host refused, with the reason.
    pub rejected: Vec<(Grant, GrantRejection)>,
    /// Agents in the snapshot.
    pub agents: usize,
    /// Frameworks in the snapshot.
    pub frameworks: usize,
}

/// A broken invariant of the books, described (see [`Books::check_invariants`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

/// The allocator's books.
#[derive(Debug, Default, Clone)]
pub struct Books {
    agents: Table<Agent>,
    frameworks: Table<Framework>,
    /// The table slots of the last snapshot's agents, in snapshot order.
    agent_slots: Vec<usize>,
    /// The table slots of the last snapshot's frameworks, in snapshot order.
    framework_slots: Vec<usize>,
    roles: BTreeMap<String, RoleConfig>,
    /// Preemption settings; `None`: off (the default).
    preemption: Option<Preemption>,
    /// The time of the last snapshot (books' clock, seconds): when a task added since started, near enough.
    clock: f64,
    /// Until when some revocation may still be in flight (the latest `Task::revoked_until`): before then a
    /// snapshot looks for in-flight tasks, after it does not.
    revoking_until: f64,
    /// Dynamic reservations (operator `allot reserve`), by agent then role: carved out of the agent's
    /// unreserved resources. Kept apart from the agents so that they outlive an agent's record.
    dynamic: BTreeMap<String, BTreeMap<String, Resources>>,
    /// Outstanding offers by ID (hashed with foldhash: the IDs are ours, and SipHash showed in profiles).
    offers: HashMap<Id, Arc<Offer>, foldhash::fast::RandomState>,
    tasks: HashMap<(String, String), Task>,
    next_offer: u64,
    offer_prefix: String,
    /// Where the next offer ID is written (one allocation per ID, for its `Id`).
    offer_id_buf: String,
    /// When set, the state of a SplitMix64 generator that shuffles the agents of each snapshot (Mesos shuffles
    /// agents every cycle so that no agent is always considered first).
    shuffle: Option<u64>,
}

impl Books {
    /// Shuffles the agents of every snapshot in an order drawn from `seed` (deterministic per seed).
    pub fn shuffle_agents(&mut self, seed: u64) {
        self.shuffle = Some(seed);
    }

    fn next_random(&mut self) -> u64 {
        // SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014).
        let state = self.shuffle.as_mut().expect("shuffling enabled");
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Empty books whose offer IDs start with `offer_prefix` (unique per allocator session).
    pub fn new(offer_prefix: &str) -> Self {
        Self {
            offer_prefix: offer_prefix.to_string(),
            ..Self::default()
        }
    }

    /// Adds or updates an agent: `total` resources, of which `reserved` (by role) are reserved. Returns the
    /// offers rescinded because the agent shrank below what is allocated.
    pub fn set_agent(
        &mut self,
        id: &str,
        total: Resources,
        reserved: BTreeMap<String, Resources>,
    ) -> Vec<Arc<Offer>> {
        let a = self.agents.entry(id);
        a.total = total;
        a.static_reserved = reserved;
        a.registered = true;
        self.apply_reservations(id)
    }

    /// Recomputes agent `id`'s reservations (static plus dynamic; the dynamic ones only while they fit in its
    /// unreserved resources: an agent that came back smaller keeps its static ones alone) and rescinds its
    /// offers if what they and its tasks hold no longer fits. Returns the rescinded offers.
    fn apply_reservations(&mut self, id: &str) -> Vec<Arc<Offer>> {
        let dynamic = self.dynamic.get(id);
        let a = self.agents.entry(id);
        a.reserved = a.static_reserved.clone();
        if let Some(dynamic) = dynamic {
            let mut sum = Resources::new();
            for r in dynamic.values() {
                sum.add(r);
            }
            if a.statically_unreserved().contains(&sum) {
                for (role, r) in dynamic {
                    a.reserved.entry(role.clone()).or_default().add(r);
                }
            }
        }
        a.refresh();
        let fits = a.unreserved_total().contains(&a.allocated)
            && a.allocated_reserved
                .iter()
                .all(|(role, used)| a.reserved.get(role).is_some_and(|r| r.contains(used)));
        if fits {
            Vec::new()
        } else {
            self.rescind_agent_offers(id)
        }
    }

    /// Agent `id`'s dynamic reservations (operator `allot reserve`; Mesos' `RESERVE_RESOURCES`), by role.
    pub fn dynamic_reservations(&self, id: &str) -> BTreeMap<String, Resources> {
        self.dynamic.get(id).cloned().unwrap_or_default()
    }

    /// Sets agent `id`'s dynamic reservations to `reserved` (by role; empty: none), rescinding the agent's
    /// outstanding offers that no longer fit. With `check` (an operator's call on the leader), the change is
    /// refused unless the agent is registered, the reservations fit in its unreserved resources, and its
    /// running tasks keep what they hold: unreserved resources a task uses cannot be reserved, a reservation a
    /// task uses cannot be released (Mesos refuses both); outstanding offers do not count, they are
    /// rescinded. Without `check` (the record read back from etcd) the change is applied as far as it fits.
    ///
    /// # Errors
    /// What is in the way, in words (only with `check`); the books are unchanged.
    pub fn set_dynamic_reservations(
        &mut self,
        id: &str,
        reserved: BTreeMap<String, Resources>,
        check: bool,
    ) -> Result<Vec<Arc<Offer>>, String> {
        let reserved: BTreeMap<String, Resources> = reserved
            .into_iter()
            .filter(|(_, r)| !r.is_empty())
            .collect();
        if self
            .dynamic
            .get(id)
            .map_or(reserved.is_empty(), |d| *d == reserved)
        {
            return Ok(Vec::new());
        }
        if check {
            let a = match self.agents.get(id) {
                Some(a) if a.registered => a,
                _ => return Err(format!("agent {id} is not registered")),
            };
            let mut wanted = Resources::new();
            for r in reserved.values() {
                wanted.add(r);
            }
            let mut unreserved = a.statically_unreserved();
            if !unreserved.contains(&wanted) {
                return Err(format!(
                    "agent {id} has {unreserved} unreserved, not the {wanted} these reservations need"
                ));
            }
            // What its tasks hold: everything allocated on it less its outstanding offers.
            let mut tasks = a.allocated.clone();
            let mut tasks_reserved = a.allocated_reserved.clone();
            for o in self.offers.values().filter(|o| *o.agent == *id) {
                tasks.subtract(&o.piece.unreserved);
                if let Some(r) = tasks_reserved.get_mut(&*o.piece.role) {
                    r.subtract(&o.piece.reserved);
                }
            }
            unreserved.subtract(&wanted);
            if !unreserved.contains(&tasks) {
                return Err(format!(
                    "agent {id}'s tasks use {tasks} of its unreserved resources: reserving {wanted} would leave \
                     them {unreserved}"
                ));
            }
            for (role, used) in &tasks_reserved {
                let mut after = a.static_reserved.get(role).cloned().unwrap_or_default();
                if let Some(r) = reserved.get(role) {
                    after.add(r);
                }
                if !after.contains(used) {
                    return Err(format!(
                        "agent {id}'s tasks of role {role} use {used} of its reservation, which would \
                         shrink to {after}"
                    ));
                }
            }
        }
        if reserved.is_empty() {
            self.dynamic.remove(id);
        } else {
            self.dynamic.insert(id.to_string(), reserved);
        }
        // Offers on the agent are rescinded when the reservations change at all: an offer of unreserved
        // resources may hold what is now reserved.
        let rescinded = self.rescind_agent_offers(id);
        let more = self.apply_reservations(id);
        Ok(rescinded.into_iter().chain(more).collect())
    }

    /// Marks an agent reachable (its `alive` key exists) or not. Going unreachable rescinds its offers and
    /// forgets its tasks' allocations: the resources leave the pool. Returns the rescinded offers.
    pub fn set_reachable(&mut self, id: &str, reachable: bool) -> Vec<Arc<Offer>> {
        let a = self.agents.entry(id);
        a.reachable = reachable;
        if reachable {
            return Vec::new();
        }
        let rescinded = self.rescind_agent_offers(id);
        let gone: Vec<(String, String)> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.agent == id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.remove_task(&k.0, &k.1);
        }
        rescinded
    }

    /// Removes an agent's record entirely. Returns its rescinded offers.
    pub fn remove_agent(&mut self, id: &str) -> Vec<Arc<Offer>> {
        let out = self.set_reachable(id, false);
        self.agents.remove(id);
        out
    }

    fn rescind_agent_offers(&mut self, agent: &str) -> Vec<Arc<Offer>> {
        let ids: Vec<Id> = self
            .offers
            .values()
            .filter(|o| *o.agent == *agent)
            .map(|o| o.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.take_offer(id)).collect()
    }

    /// Adds a framework known from etcd, in `role`, with priority class `priority` (0 by default).
    pub fn add_framework(&mut self, id: &str, role: &str, priority: i32) {
        let f = self.frameworks.entry(id);
        f.known = true;
        if *f.role != *role {
            f.role = role.into();
        }
        f.priority = priority;
    }

    /// Removes a framework (torn down). Returns its rescinded offers.
    pub fn remove_framework(&mut self, id: &str) -> Vec<Arc<Offer>> {
        let out = self.deactivate(id);
        if let Some(f) = self.frameworks.get_mut(id) {
            f.known = false;
            if f.allocation.is_empty() {
                self.frameworks.remove(id);
            }
        }
        out
    }

    /// A framework's scheduler connected: it wants offers (unless `suppressed`).
    pub fn activate(&mut self, id: &str, suppressed: bool) {
        let f = self.frameworks.entry(id);
        f.active = true;
        f.suppressed = suppressed;
    }

    /// A framework's scheduler went away: no more offers; its outstanding offers are recovered.
    pub fn deactivate(&mut self, id: &str) -> Vec<Arc<Offer>> {
        if let Some(f) = self.frameworks.get_mut(id) {
            f.active = false;
        }
        let ids: Vec<Id> = self
            .offers
            .values()
            .filter(|o| *o.framework == *id)
            .map(|o| o.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.take_offer(id)).collect()
    }

    /// Deactivates every framework and recovers every offer (a new broker session starts from nothing).
    pub fn reset_session(&mut self) {
        let ids: Vec<Id> = self.offers.keys().cloned().collect();
        for id in ids {
            self.take_offer(&id);
        }
        for f in self.frameworks.values_mut() {
            f.active = false;
        }
    }

    /// SUPPRESS: no offers until revived.
    pub fn suppress(&mut self, id: &str) {
        if let Some(f) = self.frameworks.get_mut(id) {
            f.suppressed = true;
        }
    }

    /// REVIVE: ends suppression and clears every offer filter of the framework.
    pub fn revive(&mut self, id: &str) {
        if let Some(f) = self.frameworks.get_mut(id) {
            f.suppressed = false;
            f.filters.clear();
        }
    }

    /// Sets a role's weight and quota limit.
    pub fn set_role(&mut self, name: &str, config: RoleConfig) {
        self.roles.insert(name.to_string(), config);
    }

    /// Forgets a role's configuration (it goes back to weight 1, no limit).
    pub fn remove_role(&mut self, name: &str) {
        self.roles.remove(name);
    }

    /// A role's configuration (weight 1 and no limit when none is set).
    pub fn role_config(&self, name: &str) -> RoleConfig {
        self.roles.get(name).cloned().unwrap_or(RoleConfig {
            preemptible: true,
            quota_guarantee: None,
            weight: 1.0,
            quota_limit: None,
        })
    }

    fn take_offer(&mut self, id: &str) -> Option<Arc<Offer>> {
        let o = self.offers.remove(id)?;
        if let Some(a) = self.agents.get_mut(&o.agent) {
            a.release(&o.piece);
        }
        if let Some(f) = self.frameworks.get_mut(&o.framework) {
            f.allocation.subtract(&o.piece.total());
        }
        Some(o)
    }

    /// An outstanding offer.
    pub fn offer(&self, id: &str) -> Option<&Offer> {
        self.offers.get(id).map(|o| &**o)
    }

    /// Adds an offer filter: `agent` is not offered to `framework` before `until` (seconds).
    pub fn filter(&mut self, framework: &str, agent: &str, until: f64) {
        if let Some(f) = self.frameworks.get_mut(framework) {
            f.filters.insert(agent.to_string(), until);
        }
    }

    /// Offers come back (declined, rescinded by the broker, or accepted). Tasks launched from them keep their
    /// resources allocated; the rest returns to the pool, filtered from the framework on that agent for
    /// `refuse_seconds` (at least `min_filter`, the allocation interval, as in Mesos) when `refuse_seconds > 0`.
    /// Unknown offer IDs are ignored (already rescinded). Returns how many offers were recovered.
    pub fn recover_offers<S: AsRef<str>>(
        &mut self,
        offer_ids: &[S],
        refuse_seconds: f64,
        min_filter: f64,
        launched: &[(String, String, String, Piece)],
        now: f64,
    ) -> usize {
        let mut n = 0;
        for id in offer_ids {
            let Some(o) = self.take_offer(id.as_ref()) else {
                continue;
            };
            n += 1;
            if refuse_seconds > 0.0 {
                self.filter(&o.framework, &o.agent, now + refuse_seconds.max(min_filter));
            }
            if o.piece.total().scalar("cpus") > 0.0
                && !launched.iter().any(|(f, ..)| **f == *o.framework)
                && let Some(f) = self.frameworks.get_mut(&o.framework)
            {
                f.declined_cpus = true;
            }
        }
        for (framework, task, agent, piece) in launched {
            self.add_task(framework, task, agent, piece.clone());
            if let Some(f) = self.frameworks.get_mut(framework) {
                f.declined_cpus = false;
            }
        }
        n
    }

    /// Whether `framework` returned an offer holding CPUs unused and has launched nothing since (see
    /// [`Books::recover_offers`]).
    pub fn declined_cpus(&self, framework: &str) -> bool {
        self.frameworks
            .get(framework)
            .is_some_and(|f| f.declined_cpus)
    }

    /// A non-terminal task holds `piece` of `agent` for `framework`. Idempotent.
    pub fn add_task(&mut self, framework: &str, task: &str, agent: &str, piece: Piece) {
        let key = (framework.to_string(), task.to_string());
        if self.tasks.contains_key(&key) {
            return;
        }
        if let Some(a) = self.agents.get_mut(agent) {
            if !a.reachable && a.registered {
                return;
            }
            a.hold(&piece);
        }
        let f = self.frameworks.entry(framework);
        f.allocation.add(&piece.total());
        self.tasks.insert(
            key,
            Task {
                framework: framework.to_string(),
                agent: agent.to_string(),
                piece,
                started: self.clock,
                revoked_until: 0.0,
            },
        );
    }

    /// A task reached a terminal state: its resources return to the pool. Idempotent.
    pub fn remove_task(&mut self, framework: &str, task: &str) {
        let Some(t) = self
            .tasks
            .remove(&(framework.to_string(), task.to_string()))
        else {
            return;
        };
        if let Some(a) = self.agents.get_mut(&t.agent) {
            a.release(&t.piece);
        }
        if let Some(f) = self.frameworks.get_mut(&t.framework) {
            f.allocation.subtract(&t.piece.total());
            if !f.known && f.allocation.is_empty() {
                self.frameworks.remove(&t.framework);
            }
        }
    }

    /// Whether any framework would be in a snapshot now: known, active and not suppressed. O(frameworks), so
    /// that an allocation with nobody to offer to costs no snapshot of every agent.
    pub fn wants_offers(&self) -> bool {
        self.frameworks.values().any(Framework::wants_offers)
    }

    /// How many agents are registered and reachable.
    pub fn reachable_agents(&self) -> usize {
        self.agents
            .values()
            .filter(|a| a.registered && a.reachable)
            .count()
    }

    /// How many agents are registered (their record is in etcd) but unreachable: lost, not removed.
    pub fn unreachable_agents(&self) -> usize {
        self.agents
            .values()
            .filter(|a| a.registered && !a.reachable)
            .count()
    }

    /// The snapshot a policy sees at time `now`: reachable agents with resources available, active unsuppressed
    /// frameworks with their unexpired filters, and roles.
    pub fn snapshot(&mut self, now: f64) -> Snapshot {
        self.clock = now;
        let mut total = Resources::new();
        let mut agents = Vec::new();
        let mut agent_slots = Vec::new();
        for (slot, id, a) in self.agents.iter() {
            if !(a.registered && a.reachable) {
                continue;
            }
            total.add(&a.total);
            let available = a.free.clone();
            let reserved: BTreeMap<String, Resources> = a
                .reserved
                .keys()
                .map(|role| (role.clone(), a.reserved_available(role)))
                .filter(|(_, r)| !r.is_empty())
                .collect();
            if !available.is_empty() || !reserved.is_empty() {
                agents.push(AgentView {
                    id: id.to_string(),
                    total: a.total.clone(),
                    available,
                    reserved,
                });
                agent_slots.push(slot);
            }
        }
        let mut role_alloc: BTreeMap<String, Resources> = BTreeMap::new();
        let mut frameworks = Vec::new();
        let mut framework_slots = Vec::new();
        for f in self.frameworks.values_mut() {
            f.filters.retain(|_, until| *until > now);
            if !f.wants_offers() {
                f.starved_since = None;
            } else if f.starved_since.is_none() {
                f.starved_since = Some(now);
            }
        }
        let mut starved_longest = 0.0_f64;
        for (slot, id, f) in self.frameworks.iter() {
            role_alloc
                .entry(f.role.to_string())
                .or_default()
                .add(&f.allocation);
            if !f.wants_offers() {
                continue;
            }
            let starved_seconds = f.starved_since.map_or(0.0, |t| now - t);
            starved_longest = starved_longest.max(starved_seconds);
            let mut filtered: Vec<String> = f.filters.keys().cloned().collect();
            filtered.sort();
            frameworks.push(FrameworkView {
                id: id.to_string(),
                role: f.role.to_string(),
                allocation: f.allocation.clone(),
                allocations: f.allocations,
                filtered_agents: filtered,
                priority: f.priority,
                starved_seconds,
            });
            framework_slots.push(slot);
        }
        if self.preemption.is_some() && self.revoking_until > now {
            // Tasks whose revocation is in flight are as good as ended for fairness: their roles' shares leave
            // them out, so that neither the policy nor the host revokes again for what they will free.
            for t in self.tasks.values().filter(|t| t.revoked_until > now) {
                if let Some(f) = self.frameworks.get(&t.framework)
                    && let Some(r) = role_alloc.get_mut(&*f.role)
                {
                    r.subtract(&t.piece.total());
                }
            }
        }
        for name in self.roles.keys() {
            role_alloc.entry(name.clone()).or_default();
        }
        // Every ancestor of a role is in the snapshot too (weight 1 and no limit unless configured), so that a
        // policy sees whole role trees.
        let inner: Vec<String> = role_alloc
            .keys()
            .flat_map(|r| role_ancestors(r))
            .map(str::to_string)
            .collect();
        for name in inner {
            role_alloc.entry(name).or_default();
        }
        let roles = role_alloc
            .into_iter()
            .map(|(name, allocation)| {
                let cfg = self.roles.get(&name);
                RoleView {
                    weight: cfg.map(|c| c.weight).unwrap_or(1.0),
                    quota_limit: cfg.and_then(|c| c.quota_limit.clone()),
                    quota_guarantee: cfg.and_then(|c| c.quota_guarantee.clone()),
                    name,
                    allocation,
                }
            })
            .collect();
        if self.shuffle.is_some() {
            for i in (1..agents.len()).rev() {
                let j = (self.next_random() % (i as u64 + 1)) as usize;
                agents.swap(i, j);
                agent_slots.swap(i, j);
            }
        }
        self.agent_slots = agent_slots;
        self.framework_slots = framework_slots;
        let (preemption, tasks) = match self.preemption {
            Some(p) if starved_longest >= p.grace_seconds => {
                (Some(p), self.revocable_tasks(p, now))
            }
            _ => (None, Vec::new()),
        };
        Snapshot {
            total,
            agents,
            frameworks,
            roles,
            preemption,
            tasks,
        }
    }

    /// Sets the preemption settings (`None`: off).
    pub fn set_preemption(&mut self, preemption: Option<Preemption>) {
        self.preemption = preemption;
    }

    /// The tasks a policy may revoke at `now`: running for at least the minimum runtime, not already being
    /// revoked, and of a role that neither it nor an ancestor protects from preemption; sorted by framework
    /// then task ID.
    fn revocable_tasks(&self, p: Preemption, now: f64) -> Vec<TaskView> {
        let mut out = Vec::new();
        for ((fw, id), t) in self.tasks.iter() {
            let running = now - t.started;
            if running < p.min_runtime_seconds || t.revoked_until > now {
                continue;
            }
            let Some(f) = self.frameworks.get(fw) else {
                continue;
            };
            let protected = std::iter::once(&*f.role)
                .chain(role_ancestors(&f.role))
                .any(|r| self.roles.get(r).is_some_and(|c| !c.preemptible));
            if protected {
                continue;
            }
            out.push(TaskView {
                framework: fw.clone(),
                id: id.clone(),
                agent: t.agent.clone(),
                role: f.role.to_string(),
                priority: f.priority,
                resources: t.piece.total(),
                running_seconds: running,
            });
        }
        out.sort_by(|a, b| a.framework.cmp(&b.framework).then(a.id.cmp(&b.id)));
        out
    }

    /// Checks a policy's revocations, made on `snapshot` (the last this book took) at `now`, and marks the
    /// accepted ones as in flight for `pending` seconds (not offered for revocation again meanwhile). A
    /// revocation is refused when it names no task of the snapshot, names one twice, a task that ended or is
    /// younger than the minimum runtime, a task of a role at or below its weighted fair share
    /// or guarantee ([`allot_policy::entitled_shares`]), or once the shares already revoked cover what the
    /// starved roles lack:
    /// whatever the policy, preemption never takes more than restores the shares. The starved frameworks'
    /// offer filters on the agents of accepted revocations are cleared, so that what is freed reaches them.
    pub fn apply_revocations(
        &mut self,
        snapshot: &Snapshot,
        revocations: Vec<Revocation>,
        now: f64,
        pending: f64,
    ) -> (Vec<(TaskView, String)>, Vec<RefusedRevocation>) {
        let (mut accepted, mut refused) = (Vec::new(), Vec::new());
        let Some(p) = snapshot.preemption else {
            refused.extend(revocations.into_iter().map(|r| (r, "preemption is off")));
            return (accepted, refused);
        };
        let fair = allot_policy::entitled_shares(snapshot);
        let mut share = allot_policy::subtree_shares(snapshot);
        // The roles preempted for: of a framework starved past the grace, and below what they are entitled to.
        let starved: std::collections::BTreeSet<&str> = snapshot
            .frameworks
            .iter()
            .filter(|f| {
                f.starved_seconds >= p.grace_seconds && fair[&f.role] > share[&f.role] + 1e-9
            })
            .map(|f| f.role.as_str())
            .collect();
        let mut lacking: f64 = starved.iter().map(|r| fair[*r] - share[*r]).sum();
        let mut seen = std::collections::BTreeSet::new();
        for r in revocations {
            let Some(t) = snapshot.tasks.get(r.task) else {
                refused.push((r, "no such task in the snapshot"));
                continue;
            };
            if !seen.insert(r.task) {
                refused.push((r, "task revoked twice"));
                continue;
            }
            let Some(task) = self.tasks.get_mut(&(t.framework.clone(), t.id.clone())) else {
                refused.push((r, "task ended"));
                continue;
            };
            if t.running_seconds < p.min_runtime_seconds || task.revoked_until > now {
                refused.push((r, "task too young or already being revoked"));
                continue;
            }
            if lacking <= 1e-9 {
                refused.push((r, "the starved roles' shares are already restored"));
                continue;
            }
            if share.get(&t.role).copied().unwrap_or(0.0)
                <= fair.get(&t.role).copied().unwrap_or(0.0)
            {
                refused.push((r, "the task's role is not above its fair share"));
                continue;
            }
            let freed = allot_policy::dominant_share(&t.resources, &snapshot.total);
            lacking -= freed;
            for role in std::iter::once(t.role.as_str()).chain(role_ancestors(&t.role)) {
                if let Some(x) = share.get_mut(role) {
                    *x -= freed;
                }
            }
            task.revoked_until = now + pending;
            self.revoking_until = self.revoking_until.max(task.revoked_until);
            accepted.push((t.clone(), r.message));
        }
        // What is revoked is for the starved frameworks: their offer filters on those agents (from declining
        // what they could not use) no longer keep it from them.
        let agents: std::collections::HashSet<&str> =
            accepted.iter().map(|(t, _)| t.agent.as_str()).collect();
        // Only the frameworks preempted for: starved, of a role below its share (a framework that filtered an
        // agent itself, as a role at its share does after taking what it wanted, keeps its filters).
        for f in snapshot
            .frameworks
            .iter()
            .filter(|f| f.starved_seconds >= p.grace_seconds && starved.contains(f.role.as_str()))
        {
            if let Some(fw) = self.frameworks.get_mut(&f.id) {
                fw.filters
                    .retain(|agent, _| !agents.contains(agent.as_str()));
            }
        }
        (accepted, refused)
    }

    /// Validates one grant, made on `snapshot` (the last this book took), against the books at `now` and, if
    /// valid, records it as an offer.
    ///
    /// # Errors
    /// The [`GrantRejection`] that names what is wrong; the books are unchanged.
    pub fn apply_grant(
        &mut self,
        snapshot: &Snapshot,
        g: &Grant,
        now: f64,
    ) -> Result<Arc<Offer>, GrantRejection> {
        let mut quotas = self.role_allocations();
        self.apply_grant_with(snapshot, g.clone(), now, &mut quotas)
            .map_err(|(_, why)| why)
    }

    /// What every role with a quota limit holds now (offered and used), summed over the frameworks of its
    /// subtree (the role and every role below it in its role tree: a limit caps the subtree, as Mesos charges
    /// a role's consumption to its ancestors): what validation checks limits against. Roles without a limit
    /// are not summed.
    /// Also resolves, once per call, the chain of limits over every framework's role, so that validating a
    /// grant looks its role up once instead of the role and each ancestor by name.
    fn role_allocations(&self) -> Quotas {
        let mut out = Quotas::default();
        if self.roles.values().all(|r| r.quota_limit.is_none()) {
            return out;
        }
        // Each limited role's place in `out.held`.
        let mut place: HashMap<&str, usize> = HashMap::new();
        for f in self.frameworks.values() {
            let chain = out.chains.entry(f.role.clone()).or_insert_with(|| {
                limits_over(&self.roles, &f.role)
                    .map(|(r, l)| {
                        let i = *place.entry(r).or_insert_with(|| {
                            out.held.push(Resources::new());
                            out.held.len() - 1
                        });
                        (i, l.clone())
                    })
                    .collect()
            });
            for (i, _) in chain.iter() {
                out.held[*i].add(&f.allocation);
            }
        }
        out
    }

    /// [`Books::apply_grant`] with the roles' allocations computed once by the caller and kept up to date here.
    /// Takes the grant by value so that a valid one moves into its offer; a refused one comes back. The
    /// grant's framework and agent are found through the slots the snapshot remembered (checked against their
    /// IDs, looked up by ID when `snapshot` is not the last one taken).
    // Both variants are a few hundred bytes (the Ok one as much as the Err one): boxing would only add an
    // allocation.
    #[allow(clippy::result_large_err)]
    fn apply_grant_with(
        &mut self,
        snapshot: &Snapshot,
        g: Grant,
        now: f64,
        quotas: &mut Quotas,
    ) -> Result<Arc<Offer>, (Grant, GrantRejection)> {
        if g.resources.is_empty() && g.reserved.is_empty() {
            return Err((g, GrantRejection::Empty));
        }
        let Some(fw_id) = snapshot.frameworks.get(g.framework).map(|f| f.id.as_str()) else {
            return Err((g, GrantRejection::Framework));
        };
        let Some(agent_id) = snapshot.agents.get(g.agent).map(|a| a.id.as_str()) else {
            return Err((g, GrantRejection::Agent));
        };
        let Some((fw_id, f)) = self
            .frameworks
            .at_mut(self.framework_slots.get(g.framework).copied(), fw_id)
        else {
            return Err((g, GrantRejection::Framework));
        };
        if !f.wants_offers() {
            return Err((g, GrantRejection::Framework));
        }
        if f.filters.get(agent_id).is_some_and(|until| *until > now) {
            return Err((g, GrantRejection::Filtered));
        }
        let role = f.role.clone();
        let Some((agent_id, a)) = self
            .agents
            .at_mut(self.agent_slots.get(g.agent).copied(), agent_id)
        else {
            return Err((g, GrantRejection::Agent));
        };
        if !(a.registered && a.reachable) {
            return Err((g, GrantRejection::Agent));
        }
        // The reserved part comes from the reservation of the framework's role, or else of its nearest
        // ancestor that has it available: Mesos offers a role's reservation to its descendants too
        // (`docs/reservation.md`, hierarchical roles), and the offer says whose reservation it is.
        if !a.free.contains(&g.resources) {
            return Err((g, GrantRejection::Overcommit));
        }
        let reservation_role = if g.reserved.is_empty() {
            f.role.clone()
        } else {
            let found = std::iter::once(&*f.role)
                .chain(allot_policy::role_ancestors(&f.role))
                .find(|r| a.reserved_available(r).contains(&g.reserved));
            match found {
                Some(r) => Id::from(r),
                None => return Err((g, GrantRejection::Overcommit)),
            }
        };
        // The role's quota limit and its ancestors' (each caps its subtree).
        // Every framework's role has its chain when any role has a limit (`role_allocations`).
        if let Some(chain) = quotas.chains.get(&role).cloned() {
            if chain
                .iter()
                .any(|(i, limit)| !limit.allows_sum(&[&quotas.held[*i], &g.resources, &g.reserved]))
            {
                return Err((g, GrantRejection::Quota));
            }
            for (i, _) in chain.iter() {
                let held = &mut quotas.held[*i];
                held.add(&g.resources);
                held.add(&g.reserved);
            }
        }
        self.next_offer += 1;
        let mut number = itoa::Buffer::new();
        let buf = &mut self.offer_id_buf;
        buf.clear();
        buf.push_str(&self.offer_prefix);
        buf.push('-');
        buf.push_str(number.format(self.next_offer));
        let offer = Arc::new(Offer {
            id: Id::from(buf.as_str()),
            framework: fw_id.clone(),
            agent: agent_id.clone(),
            piece: Piece {
                unreserved: g.resources,
                reserved: g.reserved,
                role: reservation_role,
            },
        });
        a.hold(&offer.piece);
        // An offer with CPUs ends the framework's starvation; one of memory alone (what is left beside tasks
        // that use every CPU) runs nothing, and does not.
        if offer.piece.unreserved.scalar_milli("cpus") + offer.piece.reserved.scalar_milli("cpus")
            > 0
        {
            f.starved_since = None;
        }
        f.allocation.add(&offer.piece.unreserved);
        f.allocation.add(&offer.piece.reserved);
        f.allocations += 1;
        self.offers.insert(offer.id.clone(), offer.clone());
        Ok(offer)
    }

    /// Validates `grants`, made on `snapshot` (the last this book took), in order at `now`, recording the
    /// valid ones as offers.
    pub fn apply_grants(
        &mut self,
        snapshot: &Snapshot,
        grants: Vec<Grant>,
        now: f64,
    ) -> (Vec<Arc<Offer>>, Vec<(Grant, GrantRejection)>) {
        let mut offers = Vec::with_capacity(grants.len());
        let mut rejected = Vec::new();
        let mut quotas = self.role_allocations();
        self.offers.reserve(grants.len());
        for g in grants {
            match self.apply_grant_with(snapshot, g, now, &mut quotas) {
                Ok(o) => offers.push(o),
                Err(refused) => rejected.push(refused),
            }
        }
        (offers, rejected)
    }

    /// Runs one allocation cycle at `now`: snapshot, `policy`, then every grant validated into an offer.
    pub fn run_cycle(&mut self, policy: &mut dyn Policy, now: f64) -> Cycle {
        let snapshot = self.snapshot(now);
        let mut cycle = Cycle {
            agents: snapshot.agents.len(),
            frameworks: snapshot.frameworks.len(),
            ..Cycle::default()
        };
        if snapshot.agents.is_empty() || snapshot.frameworks.is_empty() {
            return cycle;
        }
        let grants = policy.allocate(&snapshot);
        let (offers, rejected) = self.apply_grants(&snapshot, grants, now);
        cycle.offers = offers;
        cycle.rejected = rejected;
        cycle
    }

    /// Outstanding offers.
    pub fn offers(&self) -> impl Iterator<Item = &Offer> {
        self.offers.values().map(|o| &**o)
    }

    /// Each framework's allocation (offered and used), role and priority, by framework ID.
    pub fn allocations(&self) -> impl Iterator<Item = (&str, &str, &Resources)> {
        self.frameworks
            .iter()
            .map(|(_, id, f)| (id, &*f.role, &f.allocation))
    }

    /// The total of every reachable agent.
    pub fn cluster_total(&self) -> Resources {
        let mut t = Resources::new();
        for a in self.agents.values().filter(|a| a.registered && a.reachable) {
            t.add(&a.total);
        }
        t
    }

    /// Checks the books' invariant; returns the first violation found. Used by tests.
    ///
    /// # Errors
    /// The first [`Violation`] found.
    pub fn check_invariants(&self) -> Result<(), Violation> {
        let mut unres: HashMap<&str, Resources> = HashMap::new();
        let mut res: HashMap<(&str, &str), Resources> = HashMap::new();
        let pieces = self
            .offers
            .values()
            .map(|o| (&*o.agent, &o.piece))
            .chain(self.tasks.values().map(|t| (t.agent.as_str(), &t.piece)));
        for (agent, p) in pieces {
            unres.entry(agent).or_default().add(&p.unreserved);
            if !p.reserved.is_empty() {
                res.entry((agent, &*p.role)).or_default().add(&p.reserved);
            }
        }
        for (_, id, a) in self.agents.iter() {
            let sum = unres.remove(id).unwrap_or_default();
            if sum != a.allocated {
                return Err(Violation(format!(
                    "agent {id}: allocated {} but offers+tasks {}",
                    a.allocated, sum
                )));
            }
            if a.free != a.unreserved_total().minus(&a.allocated) {
                return Err(Violation(format!(
                    "agent {id}: free {} but unreserved {} less allocated {}",
                    a.free,
                    a.unreserved_total(),
                    a.allocated
                )));
            }
            if !a.unreserved_total().contains(&a.allocated) {
                return Err(Violation(format!(
                    "agent {id}: allocated {} exceeds unreserved {}",
                    a.allocated,
                    a.unreserved_total()
                )));
            }
            for (role, used) in &a.allocated_reserved {
                let sum = res.remove(&(id, role.as_str())).unwrap_or_default();
                if &sum != used {
                    return Err(Violation(format!(
                        "agent {id} role {role}: reserved allocated {used} but pieces {sum}"
                    )));
                }
                if !a.reserved.get(role).is_some_and(|r| r.contains(used)) {
                    return Err(Violation(format!(
                        "agent {id} role {role}: {used} exceeds the reservation"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// What validation checks quota limits with: what every limited role's subtree holds, and the chain of limits
/// (the role's own and its ancestors') over each framework role, resolved once per batch of grants, each
/// naming its roles by their place in `held`, so that validating a grant hashes no role name but its own.
#[derive(Debug, Default)]
struct Quotas {
    held: Vec<Resources>,
    chains: HashMap<Id, std::rc::Rc<[(usize, Limits)]>>,
}

/// Applies one change to agent `agent`'s dynamic reservations `reserved` (by role): `amount` reserved for
/// `role` (`reserve`), or released from it (an empty `amount` releases all of the role's); a role left with
/// nothing is dropped. The operator's `allot reserve` / `allot unreserve` and the simulator's `reserve` /
/// `unreserve` events change reservations so; whether the agent allows the result is for
/// [`Books::set_dynamic_reservations`] to say.
///
/// # Errors
/// Releasing more than the role has reserved there, in words; `reserved` then holds what it held.
pub fn change_reservation(
    reserved: &mut BTreeMap<String, Resources>,
    agent: &str,
    role: &str,
    amount: &Resources,
    reserve: bool,
) -> Result<(), String> {
    let held = reserved.entry(role.to_string()).or_default();
    let changed = if reserve {
        held.add(amount);
        Ok(())
    } else if amount.is_empty() {
        *held = Resources::new();
        Ok(())
    } else if held.contains(amount) {
        held.subtract(amount);
        Ok(())
    } else {
        Err(format!(
            "role {role} has {held} reserved on agent {agent}, not {amount}"
        ))
    };
    reserved.retain(|_, r| !r.is_empty());
    changed
}

/// The quota limits that apply to a framework of `role` (configurations `roles`): its own and its ancestors',
/// as `(role, limit)`.
fn limits_over<'a>(
    roles: &'a BTreeMap<String, RoleConfig>,
    role: &'a str,
) -> impl Iterator<Item = (&'a str, &'a Limits)> + 'a {
    std::iter::once(role)
        .chain(role_ancestors(role))
        .filter_map(|r| Some((r, roles.get(r)?.quota_limit.as_ref()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Resources {
        s.parse().unwrap()
    }

    fn books() -> Books {
        let mut b = Books::new("o");
        b.set_agent("a1", r("cpus:4;mem:1024"), Default::default());
        b.set_reachable("a1", true);
        b.add_framework("f1", "*", 0);
        b.activate("f1", false);
        b
    }

    fn cycle(b: &mut Books, now: f64) -> Vec<Arc<Offer>> {
        let c = b.run_cycle(&mut allot_drf::Drf, now);
        assert!(c.rejected.is_empty(), "{:?}", c.rejected);
        c.offers
    }

    #[test]
    fn offered_resources_are_not_offered_twice() {
        let mut b = books();
        assert_eq!(cycle(&mut b, 0.0).len(), 1);
        assert!(cycle(&mut b, 1.0).is_empty());
        b.check_invariants().unwrap();
    }

    #[test]
    fn accept_keeps_used_and_returns_the_rest_with_a_filter() {
        let mut b = books();
        let o = cycle(&mut b, 0.0).remove(0);
        let launched = vec![(
            "f1".into(),
            "t1".into(),
            "a1".into(),
            Piece::unreserved(r("cpus:1;mem:128")),
        )];
        b.recover_offers(std::slice::from_ref(&o.id), 5.0, 1.0, &launched, 0.0);
        b.check_invariants().unwrap();
        // Filtered for 5 s: nothing offered at t=1, the rest offered at t=6.
        assert!(cycle(&mut b, 1.0).is_empty());
        let again = cycle(&mut b, 6.0);
        assert_eq!(again[0].piece.unreserved, r("cpus:3;mem:896"));
        b.remove_task("f1", "t1");
        b.check_invariants().unwrap();
    }

    #[test]
    fn filter_lasts_at_least_the_allocation_interval() {
        let mut b = books();
        let o = cycle(&mut b, 0.0).remove(0);
        b.recover_offers(std::slice::from_ref(&o.id), 0.1, 1.0, &[], 0.0);
        assert!(cycle(&mut b, 0.5).is_empty());
        assert_eq!(cycle(&mut b, 1.5).len(), 1);
    }

    #[test]
    fn revive_clears_filters_and_suppress_stops_offers() {
        let mut b = books();
        let o = cycle(&mut b, 0.0).remove(0);
        b.recover_offers(std::slice::from_ref(&o.id), 100.0, 1.0, &[], 0.0);
        b.revive("f1");
        let o = cycle(&mut b, 1.0).remove(0);
        b.recover_offers(std::slice::from_ref(&o.id), 0.0, 1.0, &[], 1.0);
        assert!(b.wants_offers());
        b.suppress("f1");
        assert!(!b.wants_offers(), "a suppressed framework wants no offers");
        assert!(cycle(&mut b, 2.0).is_empty());
    }

    #[test]
    fn unreachable_agent_rescinds_offers_and_leaves_the_pool() {
        let mut b = books();
        let o = cycle(&mut b, 0.0).remove(0);
        let rescinded = b.set_reachable("a1", false);
        assert_eq!(rescinded, vec![o]);
        assert!(b.snapshot(1.0).agents.is_empty());
        b.check_invariants().unwrap();
    }

    fn grant(framework: usize, agent: usize, resources: &str) -> Grant {
        Grant {
            framework,
            agent,
            resources: r(resources),
            reserved: Resources::new(),
        }
    }

    /// Mesos offers a role's reservation to its descendant roles: a grant of it to a framework of `eng/web` is
    /// valid and its offer names `eng` as the reservation's role; an unrelated role's framework cannot have it.
    #[test]
    fn a_grant_of_an_ancestor_roles_reservation_is_offered_as_that_roles() {
        let mut b = Books::new("o");
        let reserved = [("eng".to_string(), r("cpus:2;mem:512"))]
            .into_iter()
            .collect();
        b.set_agent("a1", r("cpus:4;mem:1024"), reserved);
        b.set_reachable("a1", true);
        for (id, role) in [("f1", "eng/web"), ("f2", "ops")] {
            b.add_framework(id, role, 0);
            b.activate(id, false);
        }
        let s = b.snapshot(0.0);
        let of = |id: &str| s.frameworks.iter().position(|f| f.id == id).unwrap();
        let take = |framework, resources: &str| Grant {
            framework,
            agent: 0,
            resources: r(resources),
            reserved: r("cpus:2;mem:512"),
        };
        assert_eq!(
            b.apply_grant(&s, &take(of("f2"), ""), 0.0).unwrap_err(),
            GrantRejection::Overcommit
        );
        let offer = b.apply_grant(&s, &take(of("f1"), "cpus:1"), 0.0).unwrap();
        assert_eq!(offer.piece.role.to_string(), "eng");
        b.check_invariants().unwrap();
    }

    #[test]
    fn invalid_grants_are_refused() {
        let mut b = books();
        let s = b.snapshot(0.0);
        let refused = |b: &mut Books, g: Grant| b.apply_grant(&s, &g, 0.0).unwrap_err();
        assert_eq!(
            refused(&mut b, grant(0, 0, "cpus:5")),
            GrantRejection::Overcommit
        );
        assert_eq!(
            refused(&mut b, grant(1, 0, "cpus:1")),
            GrantRejection::Framework
        );
        assert_eq!(
            refused(&mut b, grant(0, 1, "cpus:1")),
            GrantRejection::Agent
        );
        assert_eq!(refused(&mut b, grant(0, 0, "")), GrantRejection::Empty);
        b.check_invariants().unwrap();
    }

    #[test]
    fn a_quota_limit_on_an_inner_role_caps_its_whole_subtree() {
        let mut b = books();
        b.set_agent("a1", r("cpus:8;mem:4096"), Default::default());
        b.add_framework("web", "eng/web", 0);
        b.add_framework("batch", "eng/batch/nightly", 0);
        b.activate("web", false);
        b.activate("batch", false);
        b.set_role(
            "eng",
            RoleConfig {
                weight: 1.0,
                quota_limit: Some("cpus:3".parse().unwrap()),
                preemptible: true,
                quota_guarantee: None,
            },
        );
        let s = b.snapshot(0.0);
        // The snapshot names every inner role of a tree, unconfigured ones (eng/batch) included.
        let names: Vec<&str> = s.roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["*", "eng", "eng/batch", "eng/batch/nightly", "eng/web"]
        );
        let fw = |id: &str| s.frameworks.iter().position(|f| f.id == id).unwrap();
        // A policy that ignores the tree cannot take eng past 3 cpus through its two subtrees.
        b.apply_grant(&s, &grant(fw("web"), 0, "cpus:2"), 0.0)
            .unwrap();
        assert_eq!(
            b.apply_grant(&s, &grant(fw("batch"), 0, "cpus:2"), 0.0),
            Err(GrantRejection::Quota)
        );
        b.apply_grant(&s, &grant(fw("batch"), 0, "cpus:1"), 0.0)
            .unwrap();
        // A role outside the tree is not charged.
        b.apply_grant(&s, &grant(fw("f1"), 0, "cpus:4"), 0.0)
            .unwrap();
        b.check_invariants().unwrap();
    }

    fn by_role(role: &str, res: &str) -> BTreeMap<String, Resources> {
        BTreeMap::from([(role.to_string(), r(res))])
    }

    #[test]
    fn dynamic_reservations_are_checked_then_offered_only_to_their_role() {
        let mut b = books();
        b.add_framework("d1", "db", 0);
        b.activate("d1", false);
        // f1 holds an offer of the whole agent and runs a task of 1 cpu from it.
        let o = cycle(&mut b, 0.0).remove(0);
        let task = Piece::unreserved(r("cpus:1;mem:128"));
        let launched = vec![("f1".into(), "t1".into(), "a1".into(), task)];
        b.recover_offers(std::slice::from_ref(&o.id), 0.0, 1.0, &launched, 0.0);
        let o = cycle(&mut b, 1.0);
        assert_eq!(o.len(), 1, "{o:?}");
        // More than the agent has, or what the task uses, cannot be reserved.
        let refused = b
            .set_dynamic_reservations("a1", by_role("db", "cpus:5"), true)
            .unwrap_err();
        assert!(refused.contains("unreserved"), "{refused}");
        let refused = b
            .set_dynamic_reservations("a1", by_role("db", "cpus:3.5"), true)
            .unwrap_err();
        assert!(refused.contains("tasks use"), "{refused}");
        assert!(
            b.set_dynamic_reservations("nowhere", by_role("db", "cpus:1"), true)
                .is_err()
        );
        // Three cpus can: the outstanding offer on them is rescinded, and they go to db alone.
        let rescinded = b
            .set_dynamic_reservations("a1", by_role("db", "cpus:3;mem:512"), true)
            .unwrap();
        assert_eq!(rescinded.len(), 1);
        b.check_invariants().unwrap();
        let offers = cycle(&mut b, 2.0);
        let db: Vec<_> = offers.iter().filter(|o| &*o.framework == "d1").collect();
        assert_eq!(db.len(), 1, "{offers:?}");
        assert_eq!(db[0].piece.reserved, r("cpus:3;mem:512"));
        assert!(
            offers
                .iter()
                .filter(|o| &*o.framework == "f1")
                .all(|o| o.piece.reserved.is_empty() && !o.piece.unreserved.contains(&r("cpus:1")))
        );
        // The same reservations read back from etcd change nothing (no offer rescinded).
        assert!(
            b.set_dynamic_reservations("a1", by_role("db", "cpus:3;mem:512"), false)
                .unwrap()
                .is_empty()
        );
        // A reservation a task of its role holds cannot be released; once the task ends, it can.
        let d = db[0].id.clone();
        let task = Piece {
            unreserved: Resources::new(),
            reserved: r("cpus:2;mem:256"),
            role: "db".into(),
        };
        let launched = vec![("d1".into(), "t2".into(), "a1".into(), task)];
        b.recover_offers(std::slice::from_ref(&d), 0.0, 1.0, &launched, 2.0);
        let refused = b
            .set_dynamic_reservations("a1", BTreeMap::new(), true)
            .unwrap_err();
        assert!(refused.contains("role db"), "{refused}");
        b.remove_task("d1", "t2");
        b.set_dynamic_reservations("a1", BTreeMap::new(), true)
            .unwrap();
        b.check_invariants().unwrap();
        // The reservations outlive the agent's record: they apply again when it comes back.
        b.set_dynamic_reservations("a1", by_role("db", "cpus:1"), true)
            .unwrap();
        b.remove_agent("a1");
        b.set_agent("a1", r("cpus:4;mem:1024"), Default::default());
        b.set_reachable("a1", true);
        assert_eq!(b.dynamic_reservations("a1"), by_role("db", "cpus:1"));
        assert_eq!(
            b.snapshot(3.0).agents[0].reserved.get("db"),
            Some(&r("cpus:1"))
        );
    }

    #[test]
    fn revocations_are_checked_and_never_take_more_than_restores_the_shares() {
        let mut b = books();
        b.set_preemption(Some(Preemption {
            grace_seconds: 2.0,
            min_runtime_seconds: 1.0,
        }));
        // f1 (role *) runs four 1-cpu tasks on the whole cluster from t=0.
        let o = cycle(&mut b, 0.0).remove(0);
        let launched: Vec<_> = (0..4)
            .map(|i| {
                let piece = Piece::unreserved(r("cpus:1;mem:256"));
                ("f1".to_string(), format!("t{i}"), "a1".to_string(), piece)
            })
            .collect();
        b.recover_offers(std::slice::from_ref(&o.id), 0.0, 1.0, &launched, 0.0);
        b.add_framework("g", "web", 0);
        b.activate("g", false);
        // Not starved long enough: no preemption in the snapshot.
        let s = b.snapshot(1.0);
        assert!(s.preemption.is_none() && s.tasks.is_empty());
        let s = b.snapshot(3.5);
        assert!(s.preemption.is_some());
        assert_eq!(s.tasks.len(), 4);
        let rev = |task: usize| Revocation {
            task,
            message: "test".into(),
        };
        // web's fair share is half: two tasks restore it; the third is refused, as are a duplicate and an
        // index out of range.
        let (accepted, refused) =
            b.apply_revocations(&s, vec![rev(0), rev(0), rev(9), rev(1), rev(2)], 3.5, 30.0);
        let ids: Vec<&str> = accepted.iter().map(|(t, _)| t.id.as_str()).collect();
        assert_eq!(ids, ["t0", "t1"]);
        let why: Vec<&str> = refused.iter().map(|(_, w)| *w).collect();
        assert_eq!(
            why,
            [
                "task revoked twice",
                "no such task in the snapshot",
                "the starved roles' shares are already restored"
            ]
        );
        // Revoked tasks are not offered for revocation again while their kill is in flight.
        let s = b.snapshot(4.0);
        assert_eq!(s.tasks.len(), 2);
        // A role protected from preemption has no revocable task.
        b.set_role(
            "*",
            RoleConfig {
                preemptible: false,
                quota_guarantee: None,
                ..b.role_config("*")
            },
        );
        let s = b.snapshot(4.5);
        assert!(s.preemption.is_some() && s.tasks.is_empty());
    }

    #[test]
    fn grants_made_on_a_snapshot_follow_agents_and_frameworks_by_id() {
        let mut b = books();
        let s = b.snapshot(0.0);
        // a1 goes and a2 takes its table slot: a grant on a1 must not land on a2.
        b.remove_agent("a1");
        b.set_agent("a2", r("cpus:4;mem:1024"), Default::default());
        b.set_reachable("a2", true);
        assert_eq!(
            b.apply_grant(&s, &grant(0, 0, "cpus:1"), 0.0),
            Err(GrantRejection::Agent)
        );
        // a1 comes back in another slot: found by ID.
        b.set_agent("a1", r("cpus:4;mem:1024"), Default::default());
        b.set_reachable("a1", true);
        let o = b.apply_grant(&s, &grant(0, 0, "cpus:1"), 0.0).unwrap();
        assert_eq!((&*o.framework, &*o.agent), ("f1", "a1"));
        b.remove_framework("f1");
        assert_eq!(
            b.apply_grant(&s, &grant(0, 0, "cpus:1"), 0.0),
            Err(GrantRejection::Framework)
        );
        b.check_invariants().unwrap();
    }

    #[test]
    fn reservations_are_held_and_released_per_role() {
        let mut b = Books::new("o");
        let mut res = BTreeMap::new();
        res.insert("db".to_string(), r("cpus:2;mem:256"));
        b.set_agent("a1", r("cpus:4;mem:1024"), res);
        b.set_reachable("a1", true);
        b.add_framework("web", "analytics", 0);
        b.activate("web", false);
        b.add_framework("db", "db", 0);
        b.activate("db", false);
        let before = b.snapshot(0.0);
        let offers = cycle(&mut b, 0.0);
        assert_eq!(offers.len(), 2, "{offers:?}");
        let db = offers.iter().find(|o| &*o.framework == "db").unwrap();
        assert_eq!(db.piece.reserved, r("cpus:2;mem:256"));
        b.check_invariants().unwrap();
        // "analytics" sorts first (equal shares): it takes the unreserved part, "db" its reservation.
        let web = offers.iter().find(|o| &*o.framework == "web").unwrap();
        assert!(web.piece.reserved.is_empty());
        // A grant of reserved resources to another role is refused.
        let steal = Grant {
            reserved: r("cpus:1"),
            ..grant(1, 0, "")
        };
        assert_eq!(before.frameworks[1].id, "web");
        assert_eq!(
            b.apply_grant(&before, &steal, 0.0),
            Err(GrantRejection::Overcommit)
        );
        b.recover_offers(std::slice::from_ref(&db.id), 0.0, 1.0, &[], 0.0);
        b.check_invariants().unwrap();
        assert_eq!(
            b.snapshot(0.0).agents[0].reserved["db"],
            r("cpus:2;mem:256")
        );
    }

    #[test]
    fn deactivated_frameworks_get_nothing_and_lose_their_offers() {
        let mut b = books();
        cycle(&mut b, 0.0);
        assert_eq!(b.deactivate("f1").len(), 1);
        assert!(cycle(&mut b, 1.0).is_empty());
        b.check_invariants().unwrap();
    }
}
