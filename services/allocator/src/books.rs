//! The allocator's books: agents, frameworks, roles, outstanding offers and running tasks, and the offer
//! filters. Pure bookkeeping, no I/O; time is passed in (seconds on any monotonic clock) so the same code
//! runs on a wall clock in the service and on a simulated clock in tests.
//!
//! Invariant: for every agent, `allocated` equals the sum of its outstanding offers and its non-terminal
//! tasks, and never exceeds `total`. Every grant is validated against this before it becomes an offer.

use allot_policy::{AgentView, FrameworkView, Grant, Resources, RoleView, Snapshot};
use std::collections::{BTreeMap, HashMap};

/// An offer the allocator has made and not yet recovered.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Offer ID.
    pub id: String,
    /// The framework it was made to.
    pub framework: String,
    /// The agent whose resources it holds.
    pub agent: String,
    /// The resources.
    pub resources: Resources,
}

#[derive(Debug, Clone, Default)]
struct Agent {
    total: Resources,
    allocated: Resources,
    /// The agent has a record and a live lease.
    registered: bool,
    reachable: bool,
}

#[derive(Debug, Clone, Default)]
struct Framework {
    role: String,
    /// Known from etcd (subscribed at some point and not torn down).
    known: bool,
    /// Its scheduler is connected through the broker.
    active: bool,
    suppressed: bool,
    allocation: Resources,
    allocations: u64,
    /// Agent ID -> time (seconds) until which the agent is filtered.
    filters: HashMap<String, f64>,
}

#[derive(Debug, Clone)]
struct Task {
    framework: String,
    agent: String,
    resources: Resources,
}

/// Role configuration: weight and quota limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleConfig {
    /// DRF weight, > 0.
    pub weight: f64,
    /// Quota limit, if any.
    pub quota_limit: Option<Resources>,
}

/// Why a policy's grant was refused by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantRejection {
    /// The framework is unknown, inactive or suppressed.
    Framework,
    /// The agent is unknown or unreachable.
    Agent,
    /// The grant asks for more than the agent has available.
    Overcommit,
    /// An offer filter keeps the agent from the framework.
    Filtered,
    /// The grant would take the role past its quota limit.
    Quota,
    /// The grant is empty.
    Empty,
}

/// The allocator's books.
#[derive(Debug, Default)]
pub struct Books {
    agents: BTreeMap<String, Agent>,
    frameworks: BTreeMap<String, Framework>,
    roles: BTreeMap<String, RoleConfig>,
    offers: HashMap<String, Offer>,
    tasks: HashMap<(String, String), Task>,
    next_offer: u64,
    offer_prefix: String,
}

impl Books {
    /// Empty books whose offer IDs start with `offer_prefix` (unique per allocator session).
    pub fn new(offer_prefix: &str) -> Self {
        Self {
            offer_prefix: offer_prefix.to_string(),
            ..Self::default()
        }
    }

    /// Adds or updates an agent's record (its total resources). Returns the offers rescinded because the
    /// total shrank below what is allocated.
    pub fn set_agent(&mut self, id: &str, total: Resources) -> Vec<Offer> {
        let a = self.agents.entry(id.to_string()).or_default();
        a.total = total;
        a.registered = true;
        if a.total.contains(&a.allocated) {
            Vec::new()
        } else {
            self.rescind_agent_offers(id)
        }
    }

    /// Marks an agent reachable (its lease is alive) or not. Going unreachable rescinds its offers and
    /// forgets its tasks' allocations: the resources leave the pool. Returns the rescinded offers.
    pub fn set_reachable(&mut self, id: &str, reachable: bool) -> Vec<Offer> {
        let a = self.agents.entry(id.to_string()).or_default();
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
    pub fn remove_agent(&mut self, id: &str) -> Vec<Offer> {
        let out = self.set_reachable(id, false);
        self.agents.remove(id);
        out
    }

    fn rescind_agent_offers(&mut self, agent: &str) -> Vec<Offer> {
        let ids: Vec<String> = self
            .offers
            .values()
            .filter(|o| o.agent == agent)
            .map(|o| o.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.take_offer(id)).collect()
    }

    /// Adds a framework known from etcd, in `role`.
    pub fn add_framework(&mut self, id: &str, role: &str) {
        let f = self.frameworks.entry(id.to_string()).or_default();
        f.known = true;
        f.role = role.to_string();
    }

    /// Removes a framework (torn down). Returns its rescinded offers.
    pub fn remove_framework(&mut self, id: &str) -> Vec<Offer> {
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
        let f = self.frameworks.entry(id.to_string()).or_default();
        f.active = true;
        f.suppressed = suppressed;
    }

    /// A framework's scheduler went away: no more offers; its outstanding offers are recovered.
    pub fn deactivate(&mut self, id: &str) -> Vec<Offer> {
        if let Some(f) = self.frameworks.get_mut(id) {
            f.active = false;
        }
        let ids: Vec<String> = self
            .offers
            .values()
            .filter(|o| o.framework == id)
            .map(|o| o.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.take_offer(id)).collect()
    }

    /// Deactivates every framework and recovers every offer (a new broker session starts from nothing).
    pub fn reset_session(&mut self) {
        let ids: Vec<String> = self.offers.keys().cloned().collect();
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

    fn take_offer(&mut self, id: &str) -> Option<Offer> {
        let o = self.offers.remove(id)?;
        if let Some(a) = self.agents.get_mut(&o.agent) {
            a.allocated.subtract(&o.resources);
        }
        if let Some(f) = self.frameworks.get_mut(&o.framework) {
            f.allocation.subtract(&o.resources);
        }
        Some(o)
    }

    /// Offers come back (declined, rescinded by the broker, or accepted). Tasks launched from them keep their
    /// resources allocated; the rest returns to the pool, filtered from the framework on that agent for
    /// `refuse_seconds` (at least `min_filter`, the allocation interval, as in Mesos) when `refuse_seconds > 0`.
    /// Unknown offer IDs are ignored (already rescinded). Returns how many offers were recovered.
    pub fn recover_offers(
        &mut self,
        offer_ids: &[String],
        refuse_seconds: f64,
        min_filter: f64,
        launched: &[(String, String, String, Resources)],
        now: f64,
    ) -> usize {
        let mut n = 0;
        for id in offer_ids {
            let Some(o) = self.take_offer(id) else {
                continue;
            };
            n += 1;
            if refuse_seconds > 0.0
                && let Some(f) = self.frameworks.get_mut(&o.framework)
            {
                f.filters
                    .insert(o.agent.clone(), now + refuse_seconds.max(min_filter));
            }
        }
        for (framework, task, agent, resources) in launched {
            self.add_task(framework, task, agent, resources.clone());
        }
        n
    }

    /// A non-terminal task holds `resources` of `agent` for `framework`. Idempotent.
    pub fn add_task(&mut self, framework: &str, task: &str, agent: &str, resources: Resources) {
        let key = (framework.to_string(), task.to_string());
        if self.tasks.contains_key(&key) {
            return;
        }
        if let Some(a) = self.agents.get_mut(agent) {
            if !a.reachable && a.registered {
                return;
            }
            a.allocated.add(&resources);
        }
        let f = self.frameworks.entry(framework.to_string()).or_default();
        f.allocation.add(&resources);
        self.tasks.insert(
            key,
            Task {
                framework: framework.to_string(),
                agent: agent.to_string(),
                resources,
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
            a.allocated.subtract(&t.resources);
        }
        if let Some(f) = self.frameworks.get_mut(&t.framework) {
            f.allocation.subtract(&t.resources);
            if !f.known && f.allocation.is_empty() {
                self.frameworks.remove(&t.framework);
            }
        }
    }

    /// The snapshot a policy sees at time `now`: reachable agents with resources available, active unsuppressed
    /// frameworks with their unexpired filters, and roles.
    pub fn snapshot(&mut self, now: f64) -> Snapshot {
        let mut total = Resources::new();
        let mut agents = Vec::new();
        for (id, a) in &self.agents {
            if !(a.registered && a.reachable) {
                continue;
            }
            total.add(&a.total);
            let available = a.total.minus(&a.allocated);
            if !available.is_empty() {
                agents.push(AgentView {
                    id: id.clone(),
                    total: a.total.clone(),
                    available,
                });
            }
        }
        let mut role_alloc: BTreeMap<String, Resources> = BTreeMap::new();
        let mut frameworks = Vec::new();
        for (id, f) in self.frameworks.iter_mut() {
            role_alloc
                .entry(f.role.clone())
                .or_default()
                .add(&f.allocation);
            f.filters.retain(|_, until| *until > now);
            if !(f.known && f.active) || f.suppressed {
                continue;
            }
            let mut filtered: Vec<String> = f.filters.keys().cloned().collect();
            filtered.sort();
            frameworks.push(FrameworkView {
                id: id.clone(),
                role: f.role.clone(),
                allocation: f.allocation.clone(),
                allocations: f.allocations,
                filtered_agents: filtered,
            });
        }
        for name in self.roles.keys() {
            role_alloc.entry(name.clone()).or_default();
        }
        let roles = role_alloc
            .into_iter()
            .map(|(name, allocation)| {
                let cfg = self.roles.get(&name);
                RoleView {
                    weight: cfg.map(|c| c.weight).unwrap_or(1.0),
                    quota_limit: cfg.and_then(|c| c.quota_limit.clone()),
                    name,
                    allocation,
                }
            })
            .collect();
        Snapshot {
            total,
            agents,
            frameworks,
            roles,
        }
    }

    /// Validates one grant against the books at `now` and, if valid, records it as an offer.
    ///
    /// # Errors
    /// The [`GrantRejection`] that names what is wrong; the books are unchanged.
    pub fn apply_grant(&mut self, g: &Grant, now: f64) -> Result<Offer, GrantRejection> {
        if g.resources.is_empty() {
            return Err(GrantRejection::Empty);
        }
        let f = self
            .frameworks
            .get(&g.framework)
            .ok_or(GrantRejection::Framework)?;
        if !(f.known && f.active) || f.suppressed {
            return Err(GrantRejection::Framework);
        }
        if f.filters.get(&g.agent).is_some_and(|until| *until > now) {
            return Err(GrantRejection::Filtered);
        }
        let role = f.role.clone();
        let a = self.agents.get(&g.agent).ok_or(GrantRejection::Agent)?;
        if !(a.registered && a.reachable) {
            return Err(GrantRejection::Agent);
        }
        if !a.total.minus(&a.allocated).contains(&g.resources)
            || !a.total.contains(&a.allocated.plus(&g.resources))
        {
            return Err(GrantRejection::Overcommit);
        }
        if let Some(limit) = self.roles.get(&role).and_then(|r| r.quota_limit.as_ref()) {
            let mut role_alloc = Resources::new();
            for fw in self.frameworks.values().filter(|x| x.role == role) {
                role_alloc.add(&fw.allocation);
            }
            role_alloc.add(&g.resources);
            if limit
                .scalars()
                .any(|(k, cap)| role_alloc.scalar_milli(k) > cap)
            {
                return Err(GrantRejection::Quota);
            }
        }
        self.next_offer += 1;
        let offer = Offer {
            id: format!("{}-{}", self.offer_prefix, self.next_offer),
            framework: g.framework.clone(),
            agent: g.agent.clone(),
            resources: g.resources.clone(),
        };
        self.agents
            .get_mut(&g.agent)
            .expect("checked")
            .allocated
            .add(&g.resources);
        let f = self.frameworks.get_mut(&g.framework).expect("checked");
        f.allocation.add(&g.resources);
        f.allocations += 1;
        self.offers.insert(offer.id.clone(), offer.clone());
        Ok(offer)
    }

    /// Outstanding offers.
    pub fn offers(&self) -> impl Iterator<Item = &Offer> {
        self.offers.values()
    }

    /// Checks the books' invariant; returns the first violation found. Used by tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut per_agent: HashMap<&str, Resources> = HashMap::new();
        for o in self.offers.values() {
            per_agent.entry(&o.agent).or_default().add(&o.resources);
        }
        for t in self.tasks.values() {
            per_agent.entry(&t.agent).or_default().add(&t.resources);
        }
        for (id, a) in &self.agents {
            let sum = per_agent.remove(id.as_str()).unwrap_or_default();
            if sum != a.allocated {
                return Err(format!(
                    "agent {id}: allocated {} but offers+tasks {}",
                    a.allocated, sum
                ));
            }
            if !a.total.contains(&a.allocated) {
                return Err(format!(
                    "agent {id}: allocated {} exceeds total {}",
                    a.allocated, a.total
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_policy::Policy;

    fn r(s: &str) -> Resources {
        s.parse().unwrap()
    }

    fn books() -> Books {
        let mut b = Books::new("o");
        b.set_agent("a1", r("cpus:4;mem:1024"));
        b.set_reachable("a1", true);
        b.add_framework("f1", "*");
        b.activate("f1", false);
        b
    }

    fn cycle(b: &mut Books, now: f64) -> Vec<Offer> {
        let snap = b.snapshot(now);
        allot_drf::Drf
            .allocate(&snap)
            .iter()
            .map(|g| b.apply_grant(g, now).unwrap())
            .collect()
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
        let launched = vec![("f1".into(), "t1".into(), "a1".into(), r("cpus:1;mem:128"))];
        b.recover_offers(&[o.id], 5.0, 1.0, &launched, 0.0);
        b.check_invariants().unwrap();
        // Filtered for 5 s: nothing offered at t=1, the rest offered at t=6.
        assert!(cycle(&mut b, 1.0).is_empty());
        let again = cycle(&mut b, 6.0);
        assert_eq!(again[0].resources, r("cpus:3;mem:896"));
        b.remove_task("f1", "t1");
        b.check_invariants().unwrap();
    }

    #[test]
    fn filter_lasts_at_least_the_allocation_interval() {
        let mut b = books();
        let o = cycle(&mut b, 0.0).remove(0);
        b.recover_offers(&[o.id], 0.1, 1.0, &[], 0.0);
        assert!(cycle(&mut b, 0.5).is_empty());
        assert_eq!(cycle(&mut b, 1.5).len(), 1);
    }

    #[test]
    fn revive_clears_filters_and_suppress_stops_offers() {
        let mut b = books();
        let o = cycle(&mut b, 0.0).remove(0);
        b.recover_offers(&[o.id], 100.0, 1.0, &[], 0.0);
        b.revive("f1");
        let o = cycle(&mut b, 1.0).remove(0);
        b.recover_offers(&[o.id], 0.0, 1.0, &[], 1.0);
        b.suppress("f1");
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

    #[test]
    fn invalid_grants_are_refused() {
        let mut b = books();
        let over = Grant {
            framework: "f1".into(),
            agent: "a1".into(),
            resources: r("cpus:5"),
        };
        assert_eq!(b.apply_grant(&over, 0.0), Err(GrantRejection::Overcommit));
        let ghost = Grant {
            framework: "nope".into(),
            agent: "a1".into(),
            resources: r("cpus:1"),
        };
        assert_eq!(b.apply_grant(&ghost, 0.0), Err(GrantRejection::Framework));
        let noagent = Grant {
            framework: "f1".into(),
            agent: "zz".into(),
            resources: r("cpus:1"),
        };
        assert_eq!(b.apply_grant(&noagent, 0.0), Err(GrantRejection::Agent));
        b.check_invariants().unwrap();
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
