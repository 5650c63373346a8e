//! The index form of a snapshot, shared by both plugin interfaces (the native C ABI in `plugins/abi` and the
//! WIT world in `plugins/wit`): resource kinds are named once, sorted; amounts are vectors of thousandths in
//! kind order; agents, roles and frameworks are referred to by their index in the snapshot.
//!
//! Hosts use [`kinds`], [`amounts`], [`limit_amounts`], [`filtered`] to lay a [`Snapshot`] out and a
//! [`GrantReader`] to read a plugin's grants back; guests use [`resources`] and [`limit_resources`] for the way
//! back ([`Grant`]s already name agents and frameworks by index).

use crate::{Grant, Resources, Snapshot};
use std::collections::{BTreeSet, HashMap};

/// The scalar resource kinds of `snap` (of its total and of every agent), sorted by name.
pub fn kinds(snap: &Snapshot) -> Vec<String> {
    let mut kinds: BTreeSet<&str> = snap.total.scalars().map(|(k, _)| k).collect();
    for a in &snap.agents {
        kinds.extend(a.total.scalars().map(|(k, _)| k));
    }
    kinds.into_iter().map(str::to_string).collect()
}

/// `r`'s scalars in thousandths, one per kind of `kinds`, appended to `out`.
pub fn extend_amounts(r: &Resources, kinds: &[String], out: &mut Vec<i64>) {
    out.extend(kinds.iter().map(|k| r.scalar_milli(k)));
}

/// `r`'s scalars in thousandths, one per kind of `kinds` (0 when absent).
pub fn amounts(r: &Resources, kinds: &[String]) -> Vec<i64> {
    let mut out = Vec::with_capacity(kinds.len());
    extend_amounts(r, kinds, &mut out);
    out
}

/// A quota limit in thousandths, one per kind of `kinds`: -1 where the limit does not name the kind.
pub fn limit_amounts(limit: &Resources, kinds: &[String]) -> Vec<i64> {
    kinds
        .iter()
        .map(|k| {
            if limit.scalars().any(|(name, _)| name == k) {
                limit.scalar_milli(k)
            } else {
                -1
            }
        })
        .collect()
}

/// For every framework of `snap`, in order, the sorted indices of the agents it is filtered from.
pub fn filtered(snap: &Snapshot) -> Vec<Vec<u32>> {
    let index: HashMap<&str, u32> = snap
        .agents
        .iter()
        .enumerate()
        .map(|(i, a)| (a.id.as_str(), i as u32))
        .collect();
    snap.frameworks
        .iter()
        .map(|f| {
            let mut v: Vec<u32> = f
                .filtered_agents
                .iter()
                .filter_map(|a| index.get(a.as_str()).copied())
                .collect();
            v.sort_unstable();
            v
        })
        .collect()
}

/// Resources from thousandths in kind order (entries of 0 or less are dropped).
pub fn resources<K: AsRef<str>>(kinds: &[K], v: &[i64]) -> Resources {
    let mut r = Resources::new();
    for (k, &milli) in kinds.iter().zip(v) {
        r.set_scalar_milli(k.as_ref(), milli);
    }
    r
}

/// A quota limit from thousandths in kind order: kinds at -1 are not limited. A limit of exactly 0 reads as
/// no limit on that kind, as [`Resources`] does not keep zero entries.
pub fn limit_resources<K: AsRef<str>>(kinds: &[K], v: &[i64]) -> Resources {
    let mut r = Resources::new();
    for (k, &milli) in kinds.iter().zip(v) {
        if milli >= 0 {
            r.set_scalar_milli(k.as_ref(), milli);
        }
    }
    r
}

/// Reads grants given by index back into [`Grant`]s over a snapshot, checking indices and amounts, and
/// attaching each agent's free port ranges to its first grant with unreserved resources (plugins see scalars
/// only).
pub struct GrantReader<'a> {
    snap: &'a Snapshot,
    kinds: &'a [String],
    ranges_given: Vec<bool>,
}

impl<'a> GrantReader<'a> {
    /// A reader for grants over `snap` laid out with `kinds`.
    pub fn new(snap: &'a Snapshot, kinds: &'a [String]) -> Self {
        Self {
            snap,
            kinds,
            ranges_given: vec![false; snap.agents.len()],
        }
    }

    /// Grant number `i`: `resources` and `reserved` of agent index `agent` to framework index `framework`.
    /// Each amount vector has one entry per kind, or none at all (nothing).
    ///
    /// # Errors
    /// A message for an index out of range, a vector of the wrong length or a negative amount.
    pub fn read(
        &mut self,
        i: usize,
        framework: u32,
        agent: u32,
        resources: &[i64],
        reserved: &[i64],
    ) -> Result<Grant, String> {
        let (framework, agent) = (framework as usize, agent as usize);
        if framework >= self.snap.frameworks.len() {
            return Err(format!("grant {i} names framework index {framework}"));
        }
        let ag = self
            .snap
            .agents
            .get(agent)
            .ok_or_else(|| format!("grant {i} names agent index {agent}"))?;
        let vector = |v: &[i64], what: &str| -> Result<Resources, String> {
            if !v.is_empty() && v.len() != self.kinds.len() {
                return Err(format!(
                    "grant {i} has {} {what} amounts for {} resource kinds",
                    v.len(),
                    self.kinds.len()
                ));
            }
            if let Some(k) = v.iter().position(|&x| x < 0) {
                return Err(format!(
                    "grant {i} has a negative amount of {}",
                    self.kinds[k]
                ));
            }
            Ok(self::resources(self.kinds, v))
        };
        let mut resources = vector(resources, "unreserved")?;
        let reserved = vector(reserved, "reserved")?;
        let seen = &mut self.ranges_given[agent];
        if !resources.is_empty() && !*seen {
            *seen = true;
            for (name, set) in ag.available.ranges() {
                for &(b, e) in set {
                    let _ = resources.add_range(name, b, e);
                }
            }
        }
        Ok(Grant {
            framework,
            agent,
            resources,
            reserved,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentView, FrameworkView};

    fn snap() -> Snapshot {
        let agent =
            |id: &str| AgentView::idle(id, "cpus:4;mem:1024;ports:[31000-31009]".parse().unwrap());
        Snapshot {
            total: "cpus:8;mem:2048".parse().unwrap(),
            agents: vec![agent("a1"), agent("a2")],
            frameworks: vec![FrameworkView {
                filtered_agents: vec!["a2".into()],
                ..FrameworkView::new("f1", "r")
            }],
            roles: vec![],
        }
    }

    #[test]
    fn round_trip_through_indices() {
        let s = snap();
        let k = kinds(&s);
        assert_eq!(k, ["cpus", "mem"]);
        assert_eq!(amounts(&s.total, &k), [8000, 2048000]);
        assert_eq!(filtered(&s), [vec![1]]);
        let limit: Resources = "cpus:2".parse().unwrap();
        assert_eq!(limit_amounts(&limit, &k), [2000, -1]);
        assert_eq!(limit_resources(&k, &[2000, -1]), limit);

        let mut reader = GrantReader::new(&s, &k);
        let g = reader.read(0, 0, 1, &[1000, 0], &[]).unwrap();
        assert_eq!(s.names(&g), Some(("f1", "a2")));
        assert_eq!(g.resources.to_string(), "cpus:1;ports:[31000-31009]");
        // Ranges go with the first grant on the agent only.
        let g2 = reader.read(1, 0, 1, &[1000, 0], &[]).unwrap();
        assert_eq!(g2.resources.to_string(), "cpus:1");
    }

    #[test]
    fn bad_grants_are_refused() {
        let s = snap();
        let k = kinds(&s);
        let mut reader = GrantReader::new(&s, &k);
        assert!(
            reader
                .read(0, 5, 0, &[], &[])
                .unwrap_err()
                .contains("framework index 5")
        );
        assert!(
            reader
                .read(0, 0, 9, &[], &[])
                .unwrap_err()
                .contains("agent index 9")
        );
        assert!(
            reader
                .read(0, 0, 0, &[1], &[])
                .unwrap_err()
                .contains("1 unreserved amounts")
        );
        assert!(
            reader
                .read(0, 0, 0, &[-1, 0], &[])
                .unwrap_err()
                .contains("negative amount of cpus")
        );
    }
}
