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
//! 3. each role in that order is offered its reservation on the agent plus all the unreserved resources still
//!    there (whole-agent offers), cut down where the role's quota limit requires; inside the role the framework
//!    with the lowest dominant share gets it, ties to fewer allocations so far, then to the lower ID; frameworks
//!    with an offer filter on the agent are skipped;
//! 4. shares are updated before the next role and agent.
//!
//! Offers below Mesos' minimum allocatable amount (0.01 cpus or 32 MiB mem) are not made, so fragments are not
//! offered.

use allot_policy::{Grant, Policy, Resources, Snapshot, dominant_share};
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
}

impl Policy for Priority {
    fn name(&self) -> &str {
        "priority"
    }

    fn allocate(&mut self, snapshot: &Snapshot) -> Vec<Grant> {
        hierarchical(snapshot, true)
    }
}

/// Whether `r` is worth offering (Mesos' `allocatable()`).
pub fn is_allocatable(r: &Resources) -> bool {
    r.scalar("cpus") >= MIN_CPUS || r.scalar("mem") >= MIN_MEM_MIB
}

/// A framework's place in its role's queue: lowest dominant share first, then fewer allocations, then ID.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key<'a> {
    share: f64,
    allocations: u64,
    id: &'a str,
    index: usize,
}

impl Eq for Key<'_> {}

impl Ord for Key<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.share
            .total_cmp(&other.share)
            .then(self.allocations.cmp(&other.allocations))
            .then_with(|| self.id.cmp(other.id))
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Key<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

struct RoleState<'a> {
    weight: f64,
    limit: Option<&'a Resources>,
    allocation: Resources,
    share: f64,
    /// The role's frameworks by priority class, each class a queue in DRF order.
    queues: BTreeMap<i32, BTreeSet<Key<'a>>>,
}

struct FrameworkState {
    allocation: Resources,
    allocations: u64,
    share: f64,
}

/// One cycle of hierarchical DRF over `s`; with `by_priority`, priority classes come first.
///
/// Cost: per agent, sorting the roles of each class plus `O(log F)` to pick a framework (more only when
/// frameworks at the head of a role's queue filtered the agent), so `O(A · (R log R + log F))`.
pub fn hierarchical(s: &Snapshot, by_priority: bool) -> Vec<Grant> {
    // Roles by name: those of the snapshot and those its frameworks name.
    let mut names: Vec<&str> = s
        .roles
        .iter()
        .map(|r| r.name.as_str())
        .chain(s.frameworks.iter().map(|f| f.role.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let index = |name: &str| names.binary_search(&name).expect("every role is named");
    let mut roles: Vec<RoleState<'_>> = names
        .iter()
        .map(|_| RoleState {
            weight: 1.0,
            limit: None,
            allocation: Resources::new(),
            share: 0.0,
            queues: BTreeMap::new(),
        })
        .collect();
    let mut listed = vec![false; names.len()];
    for r in &s.roles {
        let i = index(&r.name);
        listed[i] = true;
        roles[i] = RoleState {
            weight: if r.weight > 0.0 { r.weight } else { 1.0 },
            limit: r.quota_limit.as_ref(),
            allocation: r.allocation.clone(),
            share: dominant_share(&r.allocation, &s.total),
            queues: BTreeMap::new(),
        };
    }
    let class_of = |i: usize| {
        if by_priority {
            s.frameworks[i].priority
        } else {
            0
        }
    };
    let mut fws: Vec<FrameworkState> = Vec::with_capacity(s.frameworks.len());
    for (i, f) in s.frameworks.iter().enumerate() {
        let ri = index(&f.role);
        let role = &mut roles[ri];
        // A role missing from `Snapshot::roles` holds what its frameworks hold.
        if !listed[ri] {
            role.allocation.add(&f.allocation);
            role.share = dominant_share(&role.allocation, &s.total);
        }
        let share = dominant_share(&f.allocation, &s.total);
        role.queues.entry(class_of(i)).or_default().insert(Key {
            share,
            allocations: f.allocations,
            id: &f.id,
            index: i,
        });
        fws.push(FrameworkState {
            allocation: f.allocation.clone(),
            allocations: f.allocations,
            share,
        });
    }
    let mut classes: Vec<i32> = (0..s.frameworks.len()).map(class_of).collect();
    classes.sort_unstable_by(|a, b| b.cmp(a));
    classes.dedup();
    // The roles with a framework in each class, by index (= by name).
    let members: Vec<Vec<usize>> = classes
        .iter()
        .map(|c| {
            (0..roles.len())
                .filter(|&r| roles[r].queues.contains_key(c))
                .collect()
        })
        .collect();

    let mut grants = Vec::with_capacity(s.agents.len());
    let mut order: Vec<(f64, usize)> = Vec::new();
    for (ai, agent) in s.agents.iter().enumerate() {
        let mut unreserved = agent.available.clone();
        let mut reserved = agent.reserved.clone();
        'classes: for (&class, members) in classes.iter().zip(&members) {
            // Lowest weighted dominant share first, ties by name.
            order.clear();
            order.extend(
                members
                    .iter()
                    .map(|&r| (roles[r].share / roles[r].weight, r)),
            );
            order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for &(_, ri) in &order {
                if reserved.is_empty() && !is_allocatable(&unreserved) {
                    break 'classes;
                }
                let role_name = names[ri];
                let role = &mut roles[ri];
                let own = if reserved.is_empty() {
                    Resources::new()
                } else {
                    reserved.get(role_name).cloned().unwrap_or_default()
                };
                let free = match role.limit {
                    Some(limit) => headroom_cap(&unreserved, limit, &role.allocation.plus(&own)),
                    None => unreserved.clone(),
                };
                let granted = free.plus(&own);
                if !is_allocatable(&granted) {
                    continue;
                }
                let queue = role.queues.get_mut(&class).expect("class queue");
                let Some(key) = queue
                    .iter()
                    .find(|k| !s.frameworks[k.index].is_filtered(&agent.id))
                    .copied()
                else {
                    continue;
                };
                let i = key.index;
                let fw = &mut fws[i];
                fw.allocation.add(&granted);
                fw.allocations += 1;
                fw.share = dominant_share(&fw.allocation, &s.total);
                queue.remove(&key);
                queue.insert(Key {
                    share: fw.share,
                    allocations: fw.allocations,
                    ..key
                });
                role.allocation.add(&granted);
                role.share = dominant_share(&role.allocation, &s.total);
                unreserved.subtract(&free);
                if !own.is_empty() {
                    reserved.remove(role_name);
                }
                grants.push(Grant {
                    framework: i,
                    agent: ai,
                    resources: free,
                    reserved: own,
                });
            }
        }
    }
    grants
}

/// `available` with every scalar named in `limit` cut down to what the role may still receive.
fn headroom_cap(available: &Resources, limit: &Resources, allocation: &Resources) -> Resources {
    let mut out = available.clone();
    for (name, cap) in limit.scalars() {
        let room = (cap - allocation.scalar_milli(name)).max(0);
        out.set_scalar_milli(name, out.scalar_milli(name).min(room));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_policy::{AgentView, FrameworkView, RoleView};

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
        }
    }

    fn role(name: &str, weight: f64, alloc: &str) -> RoleView {
        RoleView {
            name: name.into(),
            weight,
            quota_limit: None,
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
        lim.quota_limit = Some(r("cpus:2"));
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
        lim.quota_limit = Some(r("cpus:2"));
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
