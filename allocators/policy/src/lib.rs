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
    /// Seconds it has wanted offers and been offered no CPUs (0 after an offer with CPUs; memory left beside
    /// tasks that use every CPU runs nothing): how long it has been starved, which preemption compares with
    /// [`Preemption::grace_seconds`].
    pub starved_seconds: f64,
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
            starved_seconds: 0.0,
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
    /// Its quota guarantee (scalars): what the role's subtree is owed while it has demand; unallocated
    /// resources are held back from other roles until it has them (Mesos' quota guarantees and headroom,
    /// `docs/quota.md` of Mesos 1.8). `None`: no guarantee.
    pub quota_guarantee: Option<Resources>,
    /// What the role holds now, offered and used, across all its own frameworks (not its descendants': a
    /// subtree's allocation is the sum over the role and every role below it). With preemption on, tasks whose
    /// revocation is in flight are left out: they are as good as ended.
    pub allocation: Resources,
}

/// A running task, as a policy that may preempt sees it (only when [`Snapshot::preemption`] is set).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    /// Its framework's ID.
    pub framework: String,
    /// The task's ID.
    pub id: String,
    /// The agent it runs on.
    pub agent: String,
    /// Its framework's role.
    pub role: String,
    /// Its framework's priority class.
    pub priority: i32,
    /// What it holds (unreserved and reserved).
    pub resources: Resources,
    /// Seconds since it was launched.
    pub running_seconds: f64,
}

/// The preemption settings the host runs with (allocator flags `--preemption-grace`,
/// `--preemption-min-runtime`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preemption {
    /// How long a framework must have been starved (wanting offers, offered nothing) before a policy may
    /// revoke tasks for it, in seconds (YARN fair scheduler's `fairSharePreemptionTimeout` idea).
    pub grace_seconds: f64,
    /// Tasks younger than this are never revoked, in seconds.
    pub min_runtime_seconds: f64,
}

/// A policy's decision to end a running task so that another framework gets its share (preemption, which
/// Mesos' allocator never had). The host checks it (a running task, old enough, of a role above its fair
/// share) and the broker kills the task after its kill grace period; it ends `TASK_KILLED` with
/// `REASON_PREEMPTED`.
#[derive(Debug, Clone, PartialEq)]
pub struct Revocation {
    /// Index of the task in [`Snapshot::tasks`].
    pub task: usize,
    /// Why, in words, for the framework and the operator (e.g. which role it restores, below what share).
    pub message: String,
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
    /// Set when the host runs with preemption on and some framework has been starved for longer than the
    /// grace: then [`Policy::revoke`] is called after [`Policy::allocate`]. `None` otherwise.
    pub preemption: Option<Preemption>,
    /// Running tasks that may be revoked (those older than the minimum runtime, not already being
    /// revoked), sorted by framework then task ID; empty unless `preemption` is set.
    pub tasks: Vec<TaskView>,
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

    /// Tasks to end so that starved frameworks get their share back (preemption). The host calls it after
    /// [`Policy::allocate`], on the same snapshot, only when [`Snapshot::preemption`] is set. The default
    /// revokes nothing: a policy that does not implement it never preempts.
    fn revoke(&mut self, snapshot: &Snapshot) -> Vec<Revocation> {
        let _ = snapshot;
        Vec::new()
    }
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

/// What each role's subtree holds (the role's allocation plus every descendant's), by role name: every role
/// of the snapshot and every ancestor of one.
pub fn subtree_allocations(s: &Snapshot) -> BTreeMap<String, Resources> {
    let mut out: BTreeMap<String, Resources> = BTreeMap::new();
    for r in &s.roles {
        out.entry(r.name.clone()).or_default().add(&r.allocation);
        for a in role_ancestors(&r.name) {
            out.entry(a.to_string()).or_default().add(&r.allocation);
        }
    }
    out
}

/// The dominant share of what each role's subtree holds ([`subtree_allocations`]) in the snapshot's total, by
/// role name.
pub fn subtree_shares(s: &Snapshot) -> BTreeMap<String, f64> {
    subtree_allocations(s)
        .into_iter()
        .map(|(r, a)| (r, dominant_share(&a, &s.total)))
        .collect()
}

/// Each role's weighted fair share of the cluster, in `[0, 1]` of its dominant resource, as hierarchical
/// weighted DRF entitles it: at each level of the role tree, the roles that are active (in their subtree, a
/// framework wants offers or something is held) split their parent's share in proportion to their weights
/// (the top level splits 1); an inactive role's fair share is 0. Sources: DRF (Ghodsi et al., NSDI 2011);
/// weights as in Mesos' `docs/weights.md`; role trees as in Mesos 1.6+.
pub fn fair_shares(s: &Snapshot) -> BTreeMap<String, f64> {
    let held = subtree_allocations(s);
    let mut active: std::collections::BTreeSet<&str> = held
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(n, _)| n.as_str())
        .collect();
    for f in &s.frameworks {
        active.insert(&f.role);
        active.extend(role_ancestors(&f.role));
    }
    let weight = |name: &str| {
        s.roles
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .map(|i| s.roles[i].weight)
            .filter(|w| *w > 0.0)
            .unwrap_or(1.0)
    };
    // Siblings' weights summed, by parent ("" for the top level).
    let mut sums: BTreeMap<&str, f64> = BTreeMap::new();
    for &name in &active {
        let parent = role_ancestors(name).next().unwrap_or("");
        *sums.entry(parent).or_default() += weight(name);
    }
    let mut out = BTreeMap::new();
    for name in held.keys() {
        let fair = if active.contains(name.as_str()) {
            // Down from the top: each level's part of its parent's.
            let mut path: Vec<&str> = role_ancestors(name).collect();
            path.reverse();
            path.push(name);
            path.iter()
                .map(|n| {
                    let parent = role_ancestors(n).next().unwrap_or("");
                    weight(n) / sums[parent]
                })
                .product()
        } else {
            0.0
        };
        out.insert(name.clone(), fair);
    }
    out
}

/// What each role is entitled to hold, in `[0, 1]` of the cluster's dominant resource, quota guarantees first
/// and weighted fair shares of the rest (as Mesos serves quota before DRF): an active role with a guarantee is
/// entitled to the larger of its fair share ([`fair_shares`]) and its guarantee's dominant share; every other
/// role to its fair share of what those guarantees leave (its fair share scaled down by the guarantees' excess
/// over their own fair shares). What preemption restores, and never takes a role below. Nested guarantees
/// are summed as if they were siblings (an approximation: a child's guarantee is inside its parent's).
pub fn entitled_shares(s: &Snapshot) -> BTreeMap<String, f64> {
    let fair = fair_shares(s);
    let guaranteed: BTreeMap<&str, f64> = s
        .roles
        .iter()
        .filter(|r| fair.get(&r.name).is_some_and(|f| *f > 0.0))
        .filter_map(|r| {
            Some((
                r.name.as_str(),
                dominant_share(r.quota_guarantee.as_ref()?, &s.total).min(1.0),
            ))
        })
        .collect();
    let excess: f64 = guaranteed
        .iter()
        .map(|(r, g)| (g - fair[*r]).max(0.0))
        .sum::<f64>()
        .min(1.0);
    fair.iter()
        .map(|(r, f)| {
            let e = match guaranteed.get(r.as_str()) {
                Some(g) => f.max(*g),
                None => f * (1.0 - excess),
            };
            (r.clone(), e)
        })
        .collect()
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
    fn fair_shares_split_by_weight_among_active_siblings() {
        let mut s = Snapshot {
            total: "cpus:10".parse().unwrap(),
            ..Snapshot::default()
        };
        let role = |name: &str, weight: f64, alloc: &str| RoleView {
            name: name.into(),
            weight,
            quota_limit: None,
            quota_guarantee: None,
            allocation: alloc.parse().unwrap(),
        };
        s.roles = vec![
            role("eng", 3.0, ""),
            role("eng/batch", 1.0, "cpus:2"),
            role("eng/web", 1.0, ""),
            role("idle", 5.0, ""),
            role("ops", 1.0, "cpus:1"),
        ];
        s.frameworks = vec![FrameworkView::new("w", "eng/web")];
        let fair = fair_shares(&s);
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // eng (weight 3) against ops (1): 3/4 and 1/4; eng's children split its 3/4; idle has no demand.
        assert!(
            near(fair["eng"], 0.75) && near(fair["ops"], 0.25),
            "{fair:?}"
        );
        assert!(near(fair["eng/web"], 0.375) && near(fair["eng/batch"], 0.375));
        assert_eq!(fair["idle"], 0.0);
        assert_eq!(subtree_allocations(&s)["eng"], "cpus:2".parse().unwrap());
        // ops guaranteed half the cluster, over its quarter: ops is entitled to half, eng to 3/4 of the other
        // half's worth of its fair share (the guarantee's excess, 1/4, comes out of everyone else's).
        s.roles[4].quota_guarantee = Some("cpus:5".parse().unwrap());
        let e = entitled_shares(&s);
        assert!(near(e["ops"], 0.5) && near(e["eng"], 0.75 * 0.75), "{e:?}");
        assert_eq!(e["idle"], 0.0);
    }

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
