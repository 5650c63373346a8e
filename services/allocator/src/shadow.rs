//! Shadow mode: a candidate policy decides every cycle beside the active one, on the same snapshot, and its
//! decisions are compared with the active policy's without being applied.

use allot_policy::{Grant, Resources, Snapshot, dominant_share};
use std::collections::{BTreeMap, BTreeSet};

/// How one cycle's decisions of two policies compare.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    /// Grants of the active policy.
    pub active_grants: u64,
    /// Grants of the candidate.
    pub shadow_grants: u64,
    /// `(framework, agent)` pairs granted by one policy and not the other.
    pub differing: u64,
    /// Candidate grants the host would refuse (unknown framework or agent, more than is free).
    pub invalid: u64,
    /// Each role's dominant share after the active policy's grants.
    pub active_share: BTreeMap<String, f64>,
    /// Each role's dominant share after the candidate's valid grants.
    pub shadow_share: BTreeMap<String, f64>,
}

/// Role shares after `grants` on `s`, and how many grants do not fit what the snapshot has free.
fn apply(s: &Snapshot, grants: &[Grant]) -> (BTreeMap<String, f64>, u64) {
    let mut free: Vec<(Resources, BTreeMap<String, Resources>)> = s
        .agents
        .iter()
        .map(|a| (a.available.clone(), a.reserved.clone()))
        .collect();
    let mut alloc: BTreeMap<String, Resources> = s
        .roles
        .iter()
        .map(|r| (r.name.clone(), r.allocation.clone()))
        .collect();
    // Every role with a framework is reported, a starved one too; one missing from `roles` holds what its
    // frameworks hold.
    for f in &s.frameworks {
        if !s.roles.iter().any(|r| r.name == f.role) {
            alloc.entry(f.role.clone()).or_default().add(&f.allocation);
        }
    }
    let mut invalid = 0;
    for g in grants {
        let (Some(role), Some((unreserved, reserved))) = (
            s.frameworks.get(g.framework).map(|f| &f.role),
            free.get_mut(g.agent),
        ) else {
            invalid += 1;
            continue;
        };
        let own = reserved.entry(role.clone()).or_default();
        if !unreserved.contains(&g.resources) || !own.contains(&g.reserved) {
            invalid += 1;
            continue;
        }
        unreserved.subtract(&g.resources);
        own.subtract(&g.reserved);
        alloc.entry(role.clone()).or_default().add(&g.total());
    }
    let shares = alloc
        .iter()
        .map(|(r, a)| (r.clone(), dominant_share(a, &s.total)))
        .collect();
    (shares, invalid)
}

/// Compares the active policy's `active` grants with the candidate's `shadow` grants on snapshot `s`.
pub fn compare(s: &Snapshot, active: &[Grant], shadow: &[Grant]) -> Comparison {
    let pairs = |g: &[Grant]| -> BTreeSet<(usize, usize)> {
        g.iter().map(|g| (g.framework, g.agent)).collect()
    };
    let (a, b) = (pairs(active), pairs(shadow));
    let (active_share, _) = apply(s, active);
    let (shadow_share, invalid) = apply(s, shadow);
    Comparison {
        active_grants: active.len() as u64,
        shadow_grants: shadow.len() as u64,
        differing: a.symmetric_difference(&b).count() as u64,
        invalid,
        active_share,
        shadow_share,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_policy::{AgentView, FrameworkView, Policy};

    fn snapshot() -> Snapshot {
        let a = |id: &str| AgentView::idle(id, "cpus:4;mem:1024".parse().unwrap());
        let f = |id: &str, role: &str, priority| FrameworkView {
            priority,
            ..FrameworkView::new(id, role)
        };
        Snapshot {
            total: "cpus:8;mem:2048".parse().unwrap(),
            agents: vec![a("a1"), a("a2")],
            frameworks: vec![f("low", "batch", 0), f("high", "service", 10)],
            roles: vec![],
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_same_policy_differs_in_nothing() {
        let s = snapshot();
        let g = allot_drf::Drf.allocate(&s);
        let c = compare(&s, &g, &g);
        assert_eq!((c.differing, c.invalid), (0, 0));
        assert_eq!(c.active_share, c.shadow_share);
    }

    #[test]
    fn priority_against_drf_moves_the_share_to_the_high_class() {
        let s = snapshot();
        let c = compare(
            &s,
            &allot_drf::Drf.allocate(&s),
            &allot_drf::Priority.allocate(&s),
        );
        assert_eq!((c.active_grants, c.shadow_grants), (2, 2));
        assert_eq!(c.differing, 2, "{c:?}");
        assert_eq!(c.active_share["service"], 0.5);
        assert_eq!(c.shadow_share["service"], 1.0);
        assert_eq!(c.shadow_share["batch"], 0.0);
    }

    #[test]
    fn overcommitting_candidate_grants_are_counted_not_applied() {
        let s = snapshot();
        let greedy = vec![Grant {
            framework: 0,
            agent: 0,
            resources: "cpus:8".parse().unwrap(),
            reserved: Resources::new(),
        }];
        let c = compare(&s, &[], &greedy);
        assert_eq!(c.invalid, 1);
        assert_eq!(c.shadow_share.get("batch").copied().unwrap_or(0.0), 0.0);
    }
}
