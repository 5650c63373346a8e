//! The allocation policy seam.
//!
//! Layout:
//! - [`resources`]: [`Resources`], a fixed-point bag of scalars (`cpus`, `mem`, ...) and ranges (`ports`),
//!   re-exported from the `allot-resources` crate;
//! - this module: the [`Snapshot`] a policy sees, the [`Grant`]s it returns, and the [`Policy`] trait.
//!
//! A policy is a pure function: snapshot in, grants out. The host (the allocator service) builds the
//! snapshot, keeps the books (offers, filters, suppression) and validates every grant before it becomes an
//! offer, so a policy cannot overcommit an agent even if it tries.

pub mod indexed;

/// The resource arithmetic, re-exported from `allot-resources` so that a policy needs only this crate.
pub use allot_resources as resources;
pub use allot_resources::{Kind, Limits, Resources, ResourcesError};

use std::collections::BTreeMap;

/// An agent as a policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    /// The agent's ID.
    pub id: String,
    /// Everything the agent has.
    pub total: Resources,
    /// Unreserved resources neither offered nor used by a task.
    pub available: Resources,
    /// Reserved resources neither offered nor used, by role: offered only to frameworks of that role.
    pub reserved: BTreeMap<String, Resources>,
}

impl AgentView {
    /// An agent `id` with nothing offered, used or reserved: all of `total` is available.
    pub fn idle(id: &str, total: Resources) -> AgentView {
        AgentView {
            id: id.to_string(),
            available: total.clone(),
            total,
            reserved: BTreeMap::new(),
        }
    }
}

/// A framework that wants offers in this cycle (active and not suppressed).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameworkView {
    /// The framework's ID.
    pub id: String,
    /// The role it receives offers for.
    pub role: String,
    /// What it holds now, offered and used, across all agents.
    pub allocation: Resources,
    /// How many offers it has received so far (DRF's tie-breaker: fewer goes first).
    pub allocations: u64,
    /// Agents it must not be offered now (offer filters from DECLINE with `refuse_seconds`), sorted.
    pub filtered_agents: Vec<String>,
    /// Priority class: higher goes first under the `priority` policy; ignored by `drf`. Default 0.
    pub priority: i32,
}

impl FrameworkView {
    /// A framework `id` in `role` that holds nothing, has had no offers, has no filters and priority 0.
    pub fn new(id: &str, role: &str) -> FrameworkView {
        FrameworkView {
            id: id.to_string(),
            role: role.to_string(),
            allocation: Resources::new(),
            allocations: 0,
            filtered_agents: Vec::new(),
            priority: 0,
        }
    }

    /// Whether an offer filter keeps `agent` away from this framework.
    pub fn is_filtered(&self, agent: &str) -> bool {
        self.filtered_agents
            .binary_search_by(|a| a.as_str().cmp(agent))
            .is_ok()
    }
}

/// A role as a policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleView {
    /// The role's name.
    pub name: String,
    /// Its weight (default 1.0): DRF compares `dominant share / weight`.
    pub weight: f64,
    /// Its quota limit: the role may not hold (offered and used) more than this of any scalar the limit
    /// names; a limit of 0 allows none, a scalar the limit does not name is not limited. `None` (or an empty
    /// limit) means no limit at all.
    pub quota_limit: Option<Limits>,
    /// What the role holds now, offered and used, across all its own frameworks (not its descendants': a
    /// subtree's allocation is the sum over the role and every role below it).
    pub allocation: Resources,
}

/// Everything a policy may look at in one allocation cycle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The sum of every reachable agent's total resources: the denominator of every share.
    pub total: Resources,
    /// Agents with something available, sorted by ID.
    pub agents: Vec<AgentView>,
    /// Frameworks that want offers, sorted by ID.
    pub frameworks: Vec<FrameworkView>,
    /// Every role that has a framework or a configured weight or quota, and every ancestor of one in its role
    /// tree ([`role_ancestors`]), sorted by name.
    pub roles: Vec<RoleView>,
}

/// A policy's decision: offer `resources` of agent `agents[agent]` to framework `frameworks[framework]` of the
/// snapshot it was made on. Agents and frameworks are named by their index in the snapshot, as in the C ABI
/// and the WIT interface: a policy never copies an ID, and the host finds both without a lookup by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Index of the framework in [`Snapshot::frameworks`].
    pub framework: usize,
    /// Index of the agent in [`Snapshot::agents`].
    pub agent: usize,
    /// Unreserved resources: must be within the agent's available resources (less earlier grants on it in
    /// the same cycle).
    pub resources: Resources,
    /// Resources reserved for the framework's role: must be within the agent's `reserved[role]` (less earlier
    /// grants). Empty when the agent has no reservation for the role.
    pub reserved: Resources,
}

impl Grant {
    /// Everything granted, unreserved and reserved.
    pub fn total(&self) -> Resources {
        self.resources.plus(&self.reserved)
    }
}

impl Snapshot {
    /// The framework and agent `g` names, as `(framework ID, agent ID)`; `None` when either index is out of
    /// range.
    pub fn names(&self, g: &Grant) -> Option<(&str, &str)> {
        Some((
            self.frameworks.get(g.framework)?.id.as_str(),
            self.agents.get(g.agent)?.id.as_str(),
        ))
    }
}

/// An allocation policy: decides which framework is offered which resources.
///
/// Implementations must be deterministic: the same snapshot gives the same grants. The host validates every
/// grant, drops invalid ones and counts them.
pub trait Policy: Send {
    /// A short name, e.g. `drf`.
    fn name(&self) -> &str;
    /// Runs one allocation cycle over `snapshot`.
    fn allocate(&mut self, snapshot: &Snapshot) -> Vec<Grant>;
}

/// The ancestors of role `name` in its role tree (Mesos 1.6+ hierarchical roles: `/` separates a role's
/// components), nearest first: `eng/web/canary` gives `eng/web`, then `eng`; a top-level role or `*` has none.
/// A quota limit on a role caps its whole subtree, and weights apply among siblings.
pub fn role_ancestors(name: &str) -> impl Iterator<Item = &str> {
    let mut rest = name;
    std::iter::from_fn(move || {
        let (parent, _) = rest.rsplit_once('/')?;
        rest = parent;
        Some(parent)
    })
}

/// The dominant share of `allocation` in `total` (DRF, Ghodsi et al., NSDI 2011): the largest fraction of
/// any one resource kind, in `[0, ∞)`. Kinds absent from `total` are ignored.
pub fn dominant_share(allocation: &Resources, total: &Resources) -> f64 {
    let mut share = 0.0_f64;
    for (name, total_milli) in total.scalars() {
        if total_milli <= 0 {
            continue;
        }
        let used = allocation.scalar_milli(name);
        share = share.max(used as f64 / total_milli as f64);
    }
    share
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_s_ancestors_come_nearest_first() {
        fn of(r: &str) -> Vec<&str> {
            role_ancestors(r).collect()
        }
        assert_eq!(of("eng/web/canary"), ["eng/web", "eng"]);
        assert!(of("eng").is_empty());
        assert!(of("*").is_empty());
    }

    #[test]
    fn dominant_share_is_the_largest_fraction() {
        let total: Resources = "cpus:9;mem:18".parse().unwrap();
        let a: Resources = "cpus:3;mem:2".parse().unwrap();
        let b: Resources = "cpus:1;mem:8".parse().unwrap();
        assert!((dominant_share(&a, &total) - 1.0 / 3.0).abs() < 1e-9);
        assert!((dominant_share(&b, &total) - 4.0 / 9.0).abs() < 1e-9);
        assert_eq!(dominant_share(&Resources::default(), &total), 0.0);
    }
}
