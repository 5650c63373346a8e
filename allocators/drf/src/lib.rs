//! Hierarchical Dominant Resource Fairness, as Mesos' allocator does it, and its priority variant.
//!
//! Source: DRF, Ghodsi et al., "Dominant Resource Fairness: Fair Allocation of Multiple Resource Types",
//! NSDI 2011; Mesos' `HierarchicalAllocatorProcess` (roles sorted first, then frameworks within a role; weights
//! divide a role's dominant share, Mesos `docs/weights.md`).
//!
//! One cycle, agent by agent in snapshot order:
//! 1. (`priority` only) frameworks are grouped into priority classes, highest first; each class in turn
//!    gets what the classes above left on the agent;
//! 2. roles (with a framework in the class) are ordered by weighted dominant share (`share / weight`), ties by
//!    name;
//! 3. each role in that order is offered its reservation on the agent (or, without one, its nearest
//!    ancestor's: Mesos offers a role's reservation to its descendants, `docs/reservation.md`) plus all the
//!    unreserved resources still there (whole-agent offers), cut down where the role's quota limit requires; inside the role the framework
//!    with the lowest dominant share gets it, ties to fewer allocations so far, then to the lower ID; frameworks
//!    with an offer filter on the agent are skipped;
//! 4. shares are updated before the next role and agent.
//!
//! Offers below Mesos' minimum allocatable amount (0.01 cpus or 32 MiB mem) are not made, so fragments are not
//! offered.

use allot_policy::indexed::{IndexedGrants, IndexedPolicy, Layout, View};
use allot_policy::{Grant, Policy, Revocation, Snapshot};
use std::collections::{BTreeMap, BTreeSet};

/// Mesos' `MIN_CPUS`: an offer must have at least this many cores, or [`MIN_MEM_MIB`] of memory.
pub const MIN_CPUS: f64 = 0.01;
/// Mesos' `MIN_MEM` in MiB.
pub const MIN_MEM_MIB: f64 = 32.0;

/// The DRF policy. Stateless: everything it needs is in the snapshot.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drf;

/// The priority policy: priority classes first (higher first), hierarchical DRF inside a class.
#[derive(Debug, Default, Clone, Copy)]
pub struct Priority;

impl Policy for Drf {
    fn name(&self) -> &str {
        "drf"
    }

    fn allocate(&mut self, snapshot: &Snapshot) -> Vec<Grant> {
        hierarchical(snapshot, false)
    }

    fn revoke(&mut self, snapshot: &Snapshot) -> Vec<Revocation> {
        revocations(snapshot, false)
    }
}

/// [`revocations`] on the [`Snapshot`] of index-form `view` (preemption is rare: the IDs and bags are built
/// only then); nothing for a view whose indices do not hold.
pub fn revocations_of_view(view: &View<'_>, by_priority: bool) -> Vec<Revocation> {
    view.to_snapshot()
        .map(|s| revocations(&s, by_priority))
        .unwrap_or_default()
}

/// Preemption for weighted DRF and its priority variant: which running tasks to end so that starved roles get
/// back to what they are entitled to: their weighted fair share or their quota guarantee, whichever is more
/// ([`allot_policy::entitled_shares`]).
///
/// A role is starved when one of its frameworks has wanted offers and been offered nothing for at least the
/// grace, and its subtree's dominant share is below its entitled share. For each starved role, most starved
/// first (lowest share / entitled share), tasks are taken from roles above theirs, neither the starved
/// role nor one of its ancestors or descendants, youngest first (the least work lost; with `by_priority`, the
/// lowest priority class first, and never a class above the starved framework's), until the dominant shares
/// freed cover the starved role's deficit; a victim role stops giving once it is at or below its entitled share
/// (so it goes at most one task below it). Tasks younger than the minimum runtime are not in the snapshot.
/// Source of the idea: YARN's fair scheduler preemption (`fairSharePreemptionTimeout`); Mesos never preempted.
pub fn revocations(s: &Snapshot, by_priority: bool) -> Vec<Revocation> {
    let Some(p) = s.preemption else {
        return Vec::new();
    };
    // Roles by index (every role of the snapshot and every ancestor), with shares, fair shares and ancestors.
    let entitled = allot_policy::entitled_shares(s);
    let shares = allot_policy::subtree_shares(s);
    let names: Vec<&str> = shares.keys().map(String::as_str).collect();
    let index: std::collections::HashMap<&str, usize> =
        names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let fair: Vec<f64> = names.iter().map(|n| entitled[*n]).collect();
    let mut share: Vec<f64> = shares.values().copied().collect();
    let ancestors: Vec<Vec<usize>> = names
        .iter()
        .map(|n| {
            allot_policy::role_ancestors(n)
                .filter_map(|a| index.get(a).copied())
                .collect()
        })
        .collect();
    let related =
        |a: usize, b: usize| a == b || ancestors[a].contains(&b) || ancestors[b].contains(&a);
    // Starved roles, each with its starved frameworks' highest priority class and longest wait.
    let mut starved: Vec<(usize, i32, f64)> = Vec::new();
    for f in s
        .frameworks
        .iter()
        .filter(|f| f.starved_seconds >= p.grace_seconds)
    {
        let Some(&r) = index.get(f.role.as_str()) else {
            continue;
        };
        if share[r] >= fair[r] {
            continue;
        }
        match starved.iter_mut().find(|e| e.0 == r) {
            Some(e) => {
                e.1 = e.1.max(f.priority);
                e.2 = e.2.max(f.starved_seconds);
            }
            None => starved.push((r, f.priority, f.starved_seconds)),
        }
    }
    // Most starved first (lowest share / fair share), ties by name.
    starved.sort_by(|a, b| {
        let ratio = |r: usize| share[r] / fair[r];
        ratio(a.0).total_cmp(&ratio(b.0)).then(a.0.cmp(&b.0))
    });
    let task_role: Vec<Option<usize>> = s
        .tasks
        .iter()
        .map(|t| index.get(t.role.as_str()).copied())
        .collect();
    let task_share: Vec<f64> = s
        .tasks
        .iter()
        .map(|t| allot_policy::dominant_share(&t.resources, &s.total))
        .collect();
    // Candidates, in the order they are taken.
    let class = |t: &allot_policy::TaskView| if by_priority { t.priority } else { 0 };
    let mut order: Vec<usize> = (0..s.tasks.len()).collect();
    order.sort_by(|&a, &b| {
        let (ta, tb) = (&s.tasks[a], &s.tasks[b]);
        class(ta)
            .cmp(&class(tb))
            .then(ta.running_seconds.total_cmp(&tb.running_seconds))
            .then(ta.framework.cmp(&tb.framework))
            .then(ta.id.cmp(&tb.id))
    });
    let mut taken = vec![false; s.tasks.len()];
    // Every candidate before `first` is taken.
    let mut first = 0;
    let mut out = Vec::new();
    for (role, top_class, waited) in starved {
        let mut need = fair[role] - share[role];
        for &i in &order[first..] {
            if need <= 0.0 {
                break;
            }
            let Some(v) = task_role[i] else {
                continue;
            };
            if taken[i]
                || share[v] <= fair[v]
                || related(v, role)
                || (by_priority && s.tasks[i].priority > top_class)
            {
                continue;
            }
            let freed = task_share[i];
            taken[i] = true;
            need -= freed;
            let before = share[v];
            share[v] -= freed;
            for &a in &ancestors[v] {
                share[a] -= freed;
            }
            out.push(Revocation {
                task: i,
                message: format!(
                    "preempted for role {}: below its share of {:.1}% (weighted fair share or guarantee) for \
                     {waited:.0} s; role {} held {:.1}%, over its {:.1}%",
                    names[role],
                    fair[role] * 100.0,
                    names[v],
                    before * 100.0,
                    fair[v] * 100.0
                ),
            });
        }
        while first < order.len() && taken[order[first]] {
            first += 1;
        }
    }
    out
}

impl IndexedPolicy for Drf {
    fn name(&self) -> &str {
        "drf"
    }

    fn allocate_indexed(&mut self, view: &View<'_>) -> IndexedGrants {
        hierarchical_indexed(view, false)
    }

    /// [`revocations`] on the view's [`Snapshot`] ([`revocations_of_view`]).
    fn revoke_indexed(&mut self, view: &View<'_>) -> Vec<Revocation> {
        revocations_of_view(view, false)
    }
}

impl Policy for Priority {
    fn name(&self) -> &str {
        "priority"
    }

    fn allocate(&mut self, snapshot: &Snapshot) -> Vec<Grant> {
        hierarchical(snapshot, true)
    }

    fn revoke(&mut self, snapshot: &Snapshot) -> Vec<Revocation> {
        revocations(snapshot, true)
    }
}

impl IndexedPolicy for Priority {
    fn name(&self) -> &str {
        "priority"
    }

    fn allocate_indexed(&mut self, view: &View<'_>) -> IndexedGrants {
        hierarchical_indexed(view, true)
    }

    /// [`revocations`] on the view's [`Snapshot`] ([`revocations_of_view`]).
    fn revoke_indexed(&mut self, view: &View<'_>) -> Vec<Revocation> {
        revocations_of_view(view, true)
    }
}

/// Whether amounts `v` (thousandths in kind order) are worth offering, given the positions of `cpus` and `mem`
/// among the kinds (Mesos' `allocatable()`: at least [`MIN_CPUS`] or [`MIN_MEM_MIB`]).
fn allocatable(v: &[i64], cpus: Option<usize>, mem: Option<usize>) -> bool {
    let milli = |k: Option<usize>| k.map_or(0, |k| v[k]);
    milli(cpus) as f64 >= MIN_CPUS * 1000.0 || milli(mem) as f64 >= MIN_MEM_MIB * 1000.0
}

/// The dominant share of `allocation` in `total` (both in kind order): the largest fraction of any kind the
/// total has.
fn share(allocation: &[i64], total: &[i64]) -> f64 {
    allocation
        .iter()
        .zip(total)
        .filter(|(_, t)| **t > 0)
        .map(|(a, t)| *a as f64 / *t as f64)
        .fold(0.0, f64::max)
}

/// A framework's place in its role's queue: lowest dominant share first, then fewer allocations, then ID
/// (`rank`: its position among the frameworks sorted by ID).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key {
    share: f64,
    allocations: u64,
    rank: u32,
}

impl Eq for Key {}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.share
            .total_cmp(&other.share)
            .then(self.allocations.cmp(&other.allocations))
            .then(self.rank.cmp(&other.rank))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

struct RoleState {
    /// The role's frameworks by priority class, each class a queue in DRF order.
    queues: BTreeMap<i32, BTreeSet<Key>>,
}

struct FrameworkState {
    allocation: Vec<i64>,
    key: Key,
}

impl FrameworkState {
    /// Adds `granted` (amounts in kind order) to the framework's allocation and moves it to its new place in
    /// its role's `queue` (one more allocation, its new dominant share of `total`).
    fn take(&mut self, granted: &[i64], total: &[i64], queue: &mut BTreeSet<Key>) {
        for (a, g) in self.allocation.iter_mut().zip(granted) {
            *a += g;
        }
        queue.remove(&self.key);
        self.key = Key {
            share: share(&self.allocation, total),
            allocations: self.key.allocations + 1,
            ..self.key
        };
        queue.insert(self.key);
    }
}

/// A node of the role tree (Mesos 1.6+ hierarchical roles, `/` between components): a role of the view, an
/// inner role that only its descendants name, or the virtual leaf that holds an inner role's own frameworks
/// (Mesos' sorter's `a/.`), a sibling of the role's children.
struct Node<'a> {
    /// The node's parent, `None` for a top-level role.
    parent: Option<usize>,
    /// Weight among its siblings (a virtual leaf has its role's).
    weight: f64,
    /// The role's quota limit (-1 where a kind is not limited), capping its subtree; none on a virtual leaf.
    limit: Option<&'a [i64]>,
    /// Its quota guarantee (0 where it names no amount of a kind).
    guarantee: Option<&'a [i64]>,
    /// What of its guarantee the subtree still lacks (0 where none), while it has a guarantee.
    unsatisfied: Option<Vec<i64>>,
    /// What the subtree holds (the role's own allocation for a virtual leaf).
    allocation: Vec<i64>,
    /// Dominant share of `allocation`.
    share: f64,
    /// Position among the nodes sorted by name (DRF's tie-breaker among siblings).
    rank: u32,
}

/// The role tree of a view: a node per role (at the role's index), per inner role no role names itself, and
/// per virtual leaf; and the node each role's frameworks hang from (`leaf`).
struct Tree<'a> {
    nodes: Vec<Node<'a>>,
    leaf: Vec<usize>,
}

impl<'a> Tree<'a> {
    fn new(v: &View<'a>) -> Tree<'a> {
        let n = v.kinds.len();
        let mut names: Vec<&'a str> = v.roles.iter().map(|r| r.name).collect();
        let mut index: std::collections::HashMap<&'a str, usize> =
            names.iter().enumerate().map(|(i, &r)| (r, i)).collect();
        let mut nodes: Vec<Node<'a>> = v
            .roles
            .iter()
            .map(|r| Node {
                parent: None,
                weight: if r.weight > 0.0 { r.weight } else { 1.0 },
                limit: r.quota_limit,
                guarantee: r.quota_guarantee,
                unsatisfied: r.quota_guarantee.map(<[i64]>::to_vec),
                allocation: r.allocation.to_vec(),
                share: 0.0,
                rank: 0,
            })
            .collect();
        // Inner roles that no role of the view names: weight 1, no limit.
        for r in v.roles.iter() {
            for anc in allot_policy::role_ancestors(r.name) {
                if !index.contains_key(anc) {
                    index.insert(anc, nodes.len());
                    names.push(anc);
                    nodes.push(Node {
                        parent: None,
                        weight: 1.0,
                        limit: None,
                        guarantee: None,
                        unsatisfied: None,
                        allocation: vec![0; n],
                        share: 0.0,
                        rank: 0,
                    });
                }
            }
        }
        let mut inner = vec![false; nodes.len()];
        for (i, name) in names.iter().enumerate() {
            if let Some((parent, _)) = name.rsplit_once('/') {
                let p = index[parent];
                nodes[i].parent = Some(p);
                inner[p] = true;
            }
        }
        // A role with children has its own frameworks and allocation in a virtual leaf under it.
        let mut leaf: Vec<usize> = (0..v.roles.len()).collect();
        for (ri, r) in v.roles.iter().enumerate() {
            if inner[ri] {
                leaf[ri] = nodes.len();
                names.push(r.name);
                nodes.push(Node {
                    parent: Some(ri),
                    weight: nodes[ri].weight,
                    limit: None,
                    guarantee: None,
                    unsatisfied: None,
                    allocation: r.allocation.to_vec(),
                    share: 0.0,
                    rank: 0,
                });
            }
        }
        // Subtree allocations: every role's own allocation is charged to its ancestors.
        for (ri, r) in v.roles.iter().enumerate() {
            let mut up = nodes[ri].parent;
            while let Some(p) = up {
                for (a, x) in nodes[p].allocation.iter_mut().zip(r.allocation) {
                    *a += x;
                }
                up = nodes[p].parent;
            }
        }
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.sort_by(|&a, &b| names[a].cmp(names[b]).then(a.cmp(&b)));
        for (rank, i) in order.into_iter().enumerate() {
            nodes[i].rank = rank as u32;
        }
        for node in &mut nodes {
            node.share = share(&node.allocation, v.total);
            if let Some(u) = &mut node.unsatisfied {
                for (u, a) in u.iter_mut().zip(&node.allocation) {
                    *u = (*u - a).max(0);
                }
            }
        }
        Tree { nodes, leaf }
    }

    /// How much more of each kind role `ri` may be granted under its own quota limit and its ancestors', less
    /// `own` (its reservation granted with it, which counts too); `None` where nothing limits a kind.
    fn room(&self, ri: usize, own: &[i64], k: usize) -> Option<i64> {
        let mut room: Option<i64> = None;
        let mut at = Some(ri);
        while let Some(i) = at {
            let node = &self.nodes[i];
            if let Some(limit) = node.limit
                && limit[k] >= 0
            {
                let r = (limit[k] - node.allocation[k] - own[k]).max(0);
                room = Some(room.map_or(r, |x| x.min(r)));
            }
            at = node.parent;
        }
        room
    }

    /// Orders nodes `a` and `b` as siblings: lower weighted dominant share of the subtree first, then name.
    fn cmp(&self, a: usize, b: usize) -> std::cmp::Ordering {
        let key = |n: usize| {
            let node = &self.nodes[n];
            (node.share / node.weight, node.rank)
        };
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
    }

    /// The tree cut down to the leaves of `roles`: each node's children that lead to one of them, the top
    /// level's at index `nodes.len()`.
    fn children(&self, roles: &[usize]) -> Vec<Vec<usize>> {
        let top = self.nodes.len();
        let mut kids = vec![Vec::new(); top + 1];
        let mut seen = vec![false; top];
        for &ri in roles {
            let mut at = self.leaf[ri];
            while !seen[at] {
                seen[at] = true;
                let parent = self.nodes[at].parent.unwrap_or(top);
                kids[parent].push(at);
                if parent == top {
                    break;
                }
                at = parent;
            }
        }
        kids
    }

    /// Charges `granted` to role `ri`'s leaf and every node above it (their unsatisfied guarantees shrink).
    fn charge(&mut self, ri: usize, granted: &[i64], total: &[i64]) {
        let mut at = Some(self.leaf[ri]);
        while let Some(i) = at {
            let node = &mut self.nodes[i];
            for (a, g) in node.allocation.iter_mut().zip(granted) {
                *a += g;
            }
            if let Some(u) = &mut node.unsatisfied {
                for (u, g) in u.iter_mut().zip(granted) {
                    *u = (*u - g).max(0);
                }
            }
            node.share = share(&node.allocation, total);
            at = node.parent;
        }
    }

    /// How much of kind `k` role `ri` is still owed by the guarantees of its own role and its ancestors (the
    /// least of them: a child's guarantee is contained in its parent's); `None` when none guarantees `k`.
    fn owed(&self, ri: usize, k: usize) -> Option<i64> {
        let mut owed: Option<i64> = None;
        let mut at = Some(ri);
        while let Some(i) = at {
            let node = &self.nodes[i];
            if let (Some(u), Some(g)) = (&node.unsatisfied, node.guarantee)
                && g[k] > 0
            {
                owed = Some(owed.map_or(u[k], |o| o.min(u[k])));
            }
            at = node.parent;
        }
        owed
    }

    /// What every top-most guaranteed role with demand (a framework in `wanting`, by role) still lacks, kind by
    /// kind: the resources held back from everyone else (Mesos' required quota headroom).
    fn required_headroom(&self, wanting: &[bool], n: usize) -> Vec<i64> {
        let mut demand = vec![false; self.nodes.len()];
        for (ri, w) in wanting.iter().enumerate() {
            if *w {
                let mut at = Some(self.leaf[ri]);
                while let Some(i) = at {
                    demand[i] = true;
                    at = self.nodes[i].parent;
                }
            }
        }
        let mut out = vec![0; n];
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(u) = &node.unsatisfied else {
                continue;
            };
            let mut up = node.parent;
            let mut covered = false;
            while let Some(p) = up {
                covered |= self.nodes[p].unsatisfied.is_some();
                up = self.nodes[p].parent;
            }
            if demand[i] && !covered {
                for (o, x) in out.iter_mut().zip(u) {
                    *o += x;
                }
            }
        }
        out
    }
}

/// One cycle of hierarchical DRF over `s`; with `by_priority`, priority classes come first. Lays the
/// snapshot out in index form and runs [`hierarchical_indexed`].
pub fn hierarchical(s: &Snapshot, by_priority: bool) -> Vec<Grant> {
    let layout = Layout::for_allocation(s);
    let grants = hierarchical_indexed(&layout.view(s), by_priority);
    grants
        .to_grants(s, &layout.kinds)
        .expect("DRF grants stay within the snapshot")
}

/// One cycle of hierarchical DRF over the index form `v`; with `by_priority`, priority classes come first.
///
/// Roles form trees by name (`eng`, `eng/web`, `eng/batch`; Mesos 1.6+ hierarchical roles): at every level
/// siblings are ordered by the weighted dominant share of their subtree, ties by name, and an agent goes to
/// the first role in that depth-first order that can use it; a role's quota limit caps its subtree; a role
/// with children keeps its own frameworks in a virtual leaf beside them (Mesos' sorter does the same).
///
/// Cost: per agent, re-sorting the children of the nodes its depth-first walk reaches (kept in order from agent
/// to agent, so close to linear; most agents go to the first leaf) plus `O(log F)` to pick a framework (more
/// only when frameworks at the head of a role's queue filtered the agent), all on vectors of amounts: no
/// resource bag or ID is built.
pub fn hierarchical_indexed(v: &View<'_>, by_priority: bool) -> IndexedGrants {
    let n = v.kinds.len();
    let kind = |name: &str| v.kinds.iter().position(|k| *k == name);
    let (cpus, mem) = (kind("cpus"), kind("mem"));
    let ranks = |keys: Vec<&str>| -> Vec<u32> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[a].cmp(keys[b]).then(a.cmp(&b)));
        let mut rank = vec![0; keys.len()];
        for (r, i) in order.into_iter().enumerate() {
            rank[i] = r as u32;
        }
        rank
    };
    let fw_ranks = ranks(v.frameworks.iter().map(|f| f.id).collect());
    let mut tree = Tree::new(v);
    let mut roles: Vec<RoleState> = v
        .roles
        .iter()
        .map(|_| RoleState {
            queues: BTreeMap::new(),
        })
        .collect();
    let class_of = |i: usize| {
        if by_priority {
            v.frameworks[i].priority
        } else {
            0
        }
    };
    let mut fws: Vec<FrameworkState> = Vec::with_capacity(v.frameworks.len());
    // Framework index by rank.
    let mut index_of = vec![0usize; v.frameworks.len()];
    for (i, f) in v.frameworks.iter().enumerate() {
        let key = Key {
            share: share(f.allocation, v.total),
            allocations: f.allocations,
            rank: fw_ranks[i],
        };
        roles[f.role as usize]
            .queues
            .entry(class_of(i))
            .or_default()
            .insert(key);
        index_of[key.rank as usize] = i;
        fws.push(FrameworkState {
            allocation: f.allocation.to_vec(),
            key,
        });
    }
    let mut classes: Vec<i32> = (0..v.frameworks.len()).map(class_of).collect();
    classes.sort_unstable_by(|a, b| b.cmp(a));
    classes.dedup();
    // Each class's part of the role tree (the nodes leading to a role with a framework in the class), each
    // node's children kept in DRF order from agent to agent: between two agents only the nodes granted to
    // moved, so re-sorting them is close to linear, and only the nodes an agent's walk reaches are sorted.
    let mut kids: Vec<Vec<Vec<usize>>> = classes
        .iter()
        .map(|c| {
            let members: Vec<usize> = (0..roles.len())
                .filter(|&r| roles[r].queues.contains_key(c))
                .collect();
            tree.children(&members)
        })
        .collect();
    // Which role's frameworks hang from a node, if any.
    let mut client_of: Vec<Option<usize>> = vec![None; tree.nodes.len()];
    for (ri, &leaf) in tree.leaf.iter().enumerate() {
        client_of[leaf] = Some(ri);
    }
    let top = tree.nodes.len();

    let mut grants = IndexedGrants::new(n, v.agents.len());
    let (mut unreserved, mut free, mut granted) = (vec![0; n], vec![0; n], vec![0; n]);
    let zero = vec![0; n];
    let mut reserved: Vec<(u32, &[i64])> = Vec::new();
    // The depth-first walk: (node, position of the next child to visit).
    let mut stack: Vec<(usize, usize)> = Vec::new();
    // Quota guarantees (Mesos 1.8 `docs/quota.md`): roles still owed part of their guarantee are served first
    // on every agent, and what they are owed (the required headroom) is held back from everyone else while
    // they have demand: other roles are offered only what the cluster has free beyond it.
    let guaranteed = tree.nodes.iter().any(|node| node.unsatisfied.is_some());
    let wanting: Vec<bool> = roles.iter().map(|r| !r.queues.is_empty()).collect();
    let mut required = vec![0; n];
    let mut available = vec![0; n];
    let mut owed_roles: Vec<usize> = Vec::new();
    if guaranteed {
        required = tree.required_headroom(&wanting, n);
        for a in &v.agents {
            for (x, y) in available.iter_mut().zip(a.available) {
                *x += y;
            }
        }
        owed_roles = (0..roles.len())
            .filter(|&ri| wanting[ri] && (0..n).any(|k| tree.owed(ri, k).is_some_and(|o| o > 0)))
            .collect();
    }
    for (ai, agent) in v.agents.iter().enumerate() {
        unreserved.copy_from_slice(agent.available);
        reserved.clear();
        reserved.extend_from_slice(&agent.reserved);
        if !owed_roles.is_empty() {
            // Most owed first: lowest weighted share, ties by name.
            owed_roles.sort_by(|&a, &b| tree.cmp(a, b));
            for &ri in &owed_roles {
                // What it is owed of each guaranteed kind, and of the others what the surplus allows.
                let mut owed_here = false;
                for k in 0..n {
                    let surplus = (available[k] - required[k]).max(0);
                    free[k] = match tree.owed(ri, k) {
                        Some(o) => {
                            let g = unreserved[k].min(o);
                            owed_here |= g > 0;
                            g
                        }
                        None => unreserved[k].min(surplus),
                    };
                    if let Some(room) = tree.room(ri, &zero, k) {
                        free[k] = free[k].min(room);
                    }
                    granted[k] = free[k];
                }
                if !owed_here || !allocatable(&granted, cpus, mem) {
                    continue;
                }
                let found = roles[ri].queues.iter().rev().find_map(|(class, q)| {
                    q.iter()
                        .find(|k| {
                            let f = &v.frameworks[index_of[k.rank as usize]];
                            f.filtered.binary_search(&(ai as u32)).is_err()
                        })
                        .map(|key| (*class, *key))
                });
                let Some((class, key)) = found else {
                    continue;
                };
                let i = index_of[key.rank as usize];
                let queue = roles[ri].queues.get_mut(&class).expect("class queue");
                fws[i].take(&granted, v.total, queue);
                for k in 0..n {
                    unreserved[k] -= free[k];
                    available[k] -= free[k];
                }
                tree.charge(ri, &granted, v.total);
                grants.push(i as u32, ai as u32, &free, &zero);
                required = tree.required_headroom(&wanting, n);
            }
            owed_roles.retain(|&ri| (0..n).any(|k| tree.owed(ri, k).is_some_and(|o| o > 0)));
        }
        'classes: for (&class, kids) in classes.iter().zip(&mut kids) {
            // Depth first, lowest weighted dominant share first at every level of the tree, ties by name; a
            // node's children are ordered when the walk reaches it.
            stack.clear();
            stack.push((top, 0));
            kids[top].sort_by(|&a, &b| tree.cmp(a, b));
            while let Some((at, next)) = stack.last_mut() {
                let Some(&child) = kids[*at].get(*next) else {
                    stack.pop();
                    continue;
                };
                *next += 1;
                let Some(ri) = client_of[child] else {
                    kids[child].sort_by(|&a, &b| tree.cmp(a, b));
                    stack.push((child, 0));
                    continue;
                };
                if reserved.is_empty() && !allocatable(&unreserved, cpus, mem) {
                    break 'classes;
                }
                // The role's own reservation on the agent, else its nearest ancestor's (Mesos offers a role's
                // reservation to its descendants too, `docs/reservation.md`).
                let own_at = std::iter::successors(Some(ri), |&i| tree.nodes[i].parent)
                    .find_map(|i| reserved.iter().position(|&(r, _)| r as usize == i));
                let own: &[i64] = own_at.map_or(&zero, |i| reserved[i].1);
                // The unreserved part, cut down to what the quota limits of the role and its ancestors leave
                // and, while guarantees are owed, to what the cluster has free beyond them.
                for k in 0..n {
                    free[k] = unreserved[k];
                    if let Some(room) = tree.room(ri, own, k) {
                        free[k] = free[k].min(room);
                    }
                    if guaranteed {
                        free[k] = free[k].min((available[k] - required[k]).max(0));
                    }
                    granted[k] = free[k] + own[k];
                }
                if !allocatable(&granted, cpus, mem) {
                    continue;
                }
                let queue = roles[ri].queues.get_mut(&class).expect("class queue");
                let Some(key) = queue
                    .iter()
                    .find(|k| {
                        let f = &v.frameworks[index_of[k.rank as usize]];
                        f.filtered.binary_search(&(ai as u32)).is_err()
                    })
                    .copied()
                else {
                    continue;
                };
                let i = index_of[key.rank as usize];
                fws[i].take(&granted, v.total, queue);
                for k in 0..n {
                    unreserved[k] -= free[k];
                    available[k] -= free[k];
                }
                tree.charge(ri, &granted, v.total);
                grants.push(i as u32, ai as u32, &free, own);
                if let Some(at) = own_at {
                    reserved.remove(at);
                }
            }
        }
    }
    grants
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_policy::{AgentView, FrameworkView, Resources, RoleView};

    fn r(s: &str) -> Resources {
        s.parse().unwrap()
    }

    fn agent(id: &str, res: &str) -> AgentView {
        AgentView::idle(id, r(res))
    }

    fn fw(id: &str, role: &str, alloc: &str) -> FrameworkView {
        FrameworkView {
            allocation: r(alloc),
            ..FrameworkView::new(id, role)
        }
    }

    fn snapshot(
        agents: Vec<AgentView>,
        frameworks: Vec<FrameworkView>,
        roles: Vec<RoleView>,
    ) -> Snapshot {
        let mut total = Resources::new();
        for a in &agents {
            total.add(&a.total);
        }
        Snapshot {
            total,
            agents,
            frameworks,
            roles,
            ..Snapshot::default()
        }
    }

    fn role(name: &str, weight: f64, alloc: &str) -> RoleView {
        RoleView {
            name: name.into(),
            weight,
            quota_limit: None,
            quota_guarantee: None,
            allocation: r(alloc),
        }
    }

    #[test]
    fn whole_agents_go_to_the_lowest_dominant_share() {
        // a holds 1/3 of cpus; b holds 4/9 of mem: a goes first.
        let s = snapshot(
            vec![agent("ag1", "cpus:9;mem:18")],
            vec![fw("a", "r1", "cpus:3;mem:2"), fw("b", "r2", "cpus:1;mem:8")],
            vec![
                role("r1", 1.0, "cpus:3;mem:2"),
                role("r2", 1.0, "cpus:1;mem:8"),
            ],
        );
        let g = Drf.allocate(&s);
        assert_eq!(g.len(), 1);
        assert_eq!(s.frameworks[g[0].framework].id, "a");
        assert_eq!(g[0].resources, r("cpus:9;mem:18"));
    }

    #[test]
    fn shares_update_between_agents() {
        let s = snapshot(
            vec![
                agent("ag1", "cpus:4;mem:4096"),
                agent("ag2", "cpus:4;mem:4096"),
            ],
            vec![fw("a", "*", ""), fw("b", "*", "")],
            vec![],
        );
        let g = Drf.allocate(&s);
        let who: Vec<_> = g.iter().map(|g| s.names(g).unwrap().0).collect();
        assert_eq!(who, ["a", "b"]);
    }

    #[test]
    fn ties_go_to_fewer_allocations_then_name() {
        let mut a = fw("a", "*", "");
        a.allocations = 3;
        let s = snapshot(
            vec![agent("ag1", "cpus:1;mem:64")],
            vec![a, fw("b", "*", "")],
            vec![],
        );
        assert_eq!(s.frameworks[Drf.allocate(&s)[0].framework].id, "b");
    }

    #[test]
    fn weights_scale_role_shares() {
        // r1 holds twice r2's share but has weight 3: r1's weighted share is lower.
        let s = snapshot(
            vec![
                agent("ag1", "cpus:10;mem:1000"),
                agent("ag2", "cpus:10;mem:1000"),
            ],
            vec![fw("a", "r1", "cpus:2"), fw("b", "r2", "cpus:1")],
            vec![role("r1", 3.0, "cpus:2"), role("r2", 1.0, "cpus:1")],
        );
        // total cpus 20: r1 share 0.1/3, r2 share 0.05.
        assert_eq!(s.frameworks[Drf.allocate(&s)[0].framework].id, "a");
    }

    #[test]
    fn filters_skip_a_framework_for_an_agent() {
        let mut a = fw("a", "*", "");
        a.filtered_agents = vec!["ag1".into()];
        let s = snapshot(
            vec![agent("ag1", "cpus:1;mem:64")],
            vec![a, fw("b", "*", "cpus:1")],
            vec![],
        );
        assert_eq!(s.frameworks[Drf.allocate(&s)[0].framework].id, "b");
    }

    #[test]
    fn quota_limit_splits_the_agent() {
        let mut lim = role("r1", 1.0, "");
        lim.quota_limit = Some("cpus:2".parse().unwrap());
        let s = snapshot(
            vec![agent("ag1", "cpus:8;mem:1024")],
            vec![fw("a", "r1", "")],
            vec![lim],
        );
        let g = Drf.allocate(&s);
        assert_eq!(g[0].resources, r("cpus:2;mem:1024"));
    }

    #[test]
    fn quota_leftovers_go_to_the_next_role() {
        let mut lim = role("r1", 1.0, "");
        lim.quota_limit = Some("cpus:2".parse().unwrap());
        let s = snapshot(
            vec![agent("ag1", "cpus:8;mem:1024")],
            vec![fw("a", "r1", ""), fw("b", "r2", "")],
            vec![lim],
        );
        let g = Drf.allocate(&s);
        assert_eq!(g.len(), 2);
        assert_eq!(
            (s.names(&g[0]).unwrap().0, &g[0].resources),
            ("a", &r("cpus:2;mem:1024"))
        );
        assert_eq!(
            (s.names(&g[1]).unwrap().0, &g[1].resources),
            ("b", &r("cpus:6"))
        );
    }

    #[test]
    fn reserved_resources_go_only_to_their_role() {
        let mut a = agent("ag1", "cpus:4;mem:1024");
        a.available = r("cpus:2;mem:512");
        a.reserved.insert("db".into(), r("cpus:2;mem:512"));
        // "web" has the lower share and takes the unreserved part; "db" still gets its reservation.
        let s = snapshot(
            vec![a],
            vec![fw("w", "web", ""), fw("d", "db", "cpus:1")],
            vec![],
        );
        let g = Drf.allocate(&s);
        assert_eq!(g.len(), 2, "{g:?}");
        assert_eq!(s.frameworks[g[0].framework].id, "w");
        assert_eq!(g[0].resources, r("cpus:2;mem:512"));
        assert!(g[0].reserved.is_empty());
        assert_eq!(s.frameworks[g[1].framework].id, "d");
        assert!(g[1].resources.is_empty());
        assert_eq!(g[1].reserved, r("cpus:2;mem:512"));
    }

    /// Mesos offers a role's reservation to its descendant roles too (`docs/reservation.md`), never to a
    /// sibling's or to an unrelated role.
    #[test]
    fn a_reservation_of_a_role_goes_to_its_descendants_not_to_siblings() {
        let mut a = agent("ag1", "cpus:4;mem:1024");
        a.available = Resources::new();
        a.reserved.insert("eng".into(), r("cpus:2;mem:512"));
        a.reserved.insert("ops/batch".into(), r("cpus:2;mem:512"));
        let s = snapshot(
            vec![a],
            vec![
                fw("o", "other", ""),
                fw("s", "ops/web", ""),
                fw("w", "eng/web", ""),
            ],
            vec![],
        );
        let g = Drf.allocate(&s);
        assert_eq!(g.len(), 1, "only eng's reservation has a taker: {g:?}");
        assert_eq!(s.frameworks[g[0].framework].id, "w");
        assert!(g[0].resources.is_empty());
        assert_eq!(g[0].reserved, r("cpus:2;mem:512"));
    }

    #[test]
    fn priority_classes_go_first_then_drf() {
        let mut high = fw("z-high", "r", "cpus:3");
        high.priority = 10;
        let s = snapshot(
            vec![agent("ag1", "cpus:1;mem:64"), agent("ag2", "cpus:1;mem:64")],
            vec![fw("a-low", "r", ""), high],
            vec![],
        );
        // DRF alone prefers the empty framework; priority gives both agents to the high class.
        assert_eq!(s.frameworks[Drf.allocate(&s)[0].framework].id, "a-low");
        let g = Priority.allocate(&s);
        assert!(
            g.iter().all(|g| s.frameworks[g.framework].id == "z-high"),
            "{g:?}"
        );
    }

    /// Who got each agent, in agent order.
    fn winners(s: &Snapshot) -> Vec<String> {
        let mut g = Drf.allocate(s);
        g.sort_by_key(|g| g.agent);
        g.iter()
            .map(|g| s.frameworks[g.framework].role.clone())
            .collect()
    }

    /// `n` agents of cpus 1 / mem 256.
    fn small_agents(n: usize) -> Vec<AgentView> {
        (1..=n)
            .map(|i| agent(&format!("ag{i}"), "cpus:1;mem:256"))
            .collect()
    }

    /// One framework in each of `roles` (IDs: their first letters).
    fn one_each(roles: &[&str]) -> Vec<FrameworkView> {
        let mut fws: Vec<FrameworkView> = roles
            .iter()
            .map(|r| fw(&r.rsplit('/').next().unwrap_or(r)[..1], r, ""))
            .collect();
        fws.sort_by(|a, b| a.id.cmp(&b.id));
        fws
    }

    #[test]
    fn siblings_share_their_parent_s_part_of_a_role_tree() {
        // Flat, three roles would get a third each; as a tree, ops gets half and eng's two children split the
        // other half (Mesos' hierarchical DRF: shares compared among siblings, a parent's share is its
        // subtree's).
        let s = snapshot(
            small_agents(4),
            one_each(&["eng/batch", "ops", "eng/web"]),
            vec![],
        );
        assert_eq!(winners(&s), ["eng/batch", "ops", "eng/web", "ops"]);
    }

    #[test]
    fn weights_apply_among_siblings_at_every_level() {
        let mut roles = vec![role("eng", 3.0, ""), role("eng/web", 2.0, "")];
        roles.push(role("ops", 1.0, ""));
        let s = snapshot(
            small_agents(8),
            one_each(&["eng/batch", "ops", "eng/web"]),
            roles,
        );
        let won = winners(&s);
        let count = |r: &str| won.iter().filter(|w| *w == r).count();
        // eng (weight 3) takes 6 of 8 agents, ops 2; inside eng, web (weight 2) takes 4, batch 2.
        assert_eq!(
            (count("ops"), count("eng/web"), count("eng/batch")),
            (2, 4, 2),
            "{won:?}"
        );
    }

    #[test]
    fn an_inner_role_s_own_frameworks_are_a_sibling_of_its_children() {
        let s = snapshot(
            small_agents(4),
            one_each(&["eng", "ops", "eng/web"]),
            vec![],
        );
        // eng's own framework and eng/web split eng's half.
        assert_eq!(winners(&s), ["eng", "ops", "eng/web", "ops"]);
    }

    #[test]
    fn a_parent_s_quota_limit_caps_its_subtree() {
        let mut eng = role("eng", 1.0, "");
        eng.quota_limit = Some("cpus:2".parse().unwrap());
        let s = snapshot(
            (1..=6)
                .map(|i| agent(&format!("ag{i}"), "cpus:1"))
                .collect(),
            vec![
                fw("b", "eng/batch", ""),
                fw("o", "ops", "cpus:5"),
                fw("w", "eng/web", ""),
            ],
            vec![eng, role("ops", 1.0, "cpus:5")],
        );
        // eng's subtree stops at 2 cpus though ops holds far more; the rest goes to ops.
        assert_eq!(
            winners(&s),
            ["eng/batch", "eng/web", "ops", "ops", "ops", "ops"]
        );
    }

    /// Role `a` runs four 1-cpu tasks (started 10, 20, 30, 40 s ago) on the whole 4-cpu cluster; a
    /// framework of role `b` has been starved for `starved` seconds; the grace is 5 s.
    fn full_cluster(starved: f64, b_priority: i32) -> Snapshot {
        let mut b = fw("fb", "b", "");
        b.starved_seconds = starved;
        b.priority = b_priority;
        let mut s = snapshot(
            vec![agent("ag1", "cpus:4;mem:1024")],
            vec![b],
            vec![role("a", 1.0, "cpus:4;mem:512"), role("b", 1.0, "")],
        );
        s.agents.clear();
        s.preemption = Some(allot_policy::Preemption {
            grace_seconds: 5.0,
            min_runtime_seconds: 0.0,
        });
        s.tasks = (1..=4)
            .map(|i| allot_policy::TaskView {
                framework: "fa".into(),
                id: format!("t{i}"),
                agent: "ag1".into(),
                role: "a".into(),
                priority: 1,
                resources: r("cpus:1;mem:128"),
                running_seconds: 10.0 * i as f64,
            })
            .collect();
        s
    }

    #[test]
    fn a_starved_role_gets_its_fair_share_back_from_the_youngest_tasks() {
        let s = full_cluster(6.0, 0);
        let revoked: Vec<&str> = Drf
            .revoke(&s)
            .iter()
            .map(|r| s.tasks[r.task].id.as_str())
            .collect();
        // b's fair share is half the cluster: two of a's four tasks, the two youngest.
        assert_eq!(revoked, ["t1", "t2"]);
        assert!(Drf.revoke(&s)[0].message.contains("role b"));
    }

    #[test]
    fn a_guarantee_above_the_fair_share_is_restored_too() {
        // b weighs as much as a (fair share half) but is guaranteed three of the four cpus.
        let mut s = full_cluster(6.0, 0);
        s.roles[1].quota_guarantee = Some(r("cpus:3"));
        assert_eq!(Drf.revoke(&s).len(), 3);
    }

    #[test]
    fn nothing_is_revoked_within_the_grace_or_without_preemption() {
        assert!(Drf.revoke(&full_cluster(4.0, 0)).is_empty());
        let mut off = full_cluster(60.0, 0);
        off.preemption = None;
        assert!(Drf.revoke(&off).is_empty());
    }

    #[test]
    fn priority_never_revokes_a_higher_class_for_a_lower_one() {
        // a's tasks are of class 1: b in class 0 gets nothing back under priority, but does under drf.
        assert!(Priority.revoke(&full_cluster(60.0, 0)).is_empty());
        assert_eq!(Priority.revoke(&full_cluster(60.0, 1)).len(), 2);
        assert_eq!(Drf.revoke(&full_cluster(60.0, 0)).len(), 2);
    }

    /// Four agents of 4 cpus; role prod (weight 1) is guaranteed 8 cpus, batch weighs 3.
    fn guaranteed(prod_filtered: bool) -> Snapshot {
        let mut prod = role("prod", 1.0, "");
        prod.quota_guarantee = Some(r("cpus:8"));
        let mut p = fw("p", "prod", "");
        if prod_filtered {
            p.filtered_agents = (1..=4).map(|i| format!("ag{i}")).collect();
        }
        snapshot(
            (1..=4)
                .map(|i| agent(&format!("ag{i}"), "cpus:4;mem:1024"))
                .collect(),
            vec![fw("b", "batch", ""), p],
            vec![role("batch", 3.0, ""), prod],
        )
    }

    fn cpus_of(s: &Snapshot, g: &[Grant], framework: &str) -> f64 {
        g.iter()
            .filter(|g| s.frameworks[g.framework].id == framework)
            .map(|g| g.resources.scalar("cpus"))
            .sum()
    }

    #[test]
    fn a_guarantee_is_met_before_weights_divide_the_rest() {
        // By weight alone batch would take three agents of four; prod's guarantee of 8 cpus comes first.
        let s = guaranteed(false);
        let g = Drf.allocate(&s);
        assert_eq!(
            (cpus_of(&s, &g, "p"), cpus_of(&s, &g, "b")),
            (8.0, 8.0),
            "{g:?}"
        );
        let mut none = guaranteed(false);
        none.roles[1].quota_guarantee = None;
        let g = Drf.allocate(&none);
        assert_eq!(
            (cpus_of(&none, &g, "p"), cpus_of(&none, &g, "b")),
            (4.0, 12.0)
        );
    }

    #[test]
    fn what_a_role_is_owed_is_held_back_while_it_has_demand() {
        // prod declined every agent (filters): its 8 cpus are laid away, not offered to batch.
        let s = guaranteed(true);
        let g = Drf.allocate(&s);
        assert_eq!(
            (cpus_of(&s, &g, "p"), cpus_of(&s, &g, "b")),
            (0.0, 8.0),
            "{g:?}"
        );
        // Without demand (prod wants no offers), nothing is held back.
        let mut idle = guaranteed(false);
        idle.frameworks.retain(|f| f.id != "p");
        let g = Drf.allocate(&idle);
        assert_eq!(cpus_of(&idle, &g, "b"), 16.0);
    }

    #[test]
    fn fragments_are_not_offered() {
        let s = snapshot(
            vec![agent("ag1", "cpus:0.001;mem:8")],
            vec![fw("a", "*", "")],
            vec![],
        );
        assert!(Drf.allocate(&s).is_empty());
    }
}
