//! The index form of a snapshot, shared by both plugin interfaces (the native C ABI in `plugins/abi` and the
//! WIT world in `plugins/wit`): resource kinds are named once, sorted; amounts are vectors of thousandths in
//! kind order; agents, roles and frameworks are referred to by their index in the snapshot.
//!
//! Hosts use [`Layout`] (or [`kinds`], [`limit_amounts`], [`filtered`]) to lay a [`Snapshot`]
//! out and a [`GrantReader`] to read a plugin's grants back; guests use [`resources`] and
//! [`limit_resources`] for the way back ([`Grant`]s already name agents and frameworks by index).
//!
//! A policy that implements [`IndexedPolicy`] decides on a [`View`] of the index form directly: its native
//! and WASM builds read the host's buffers as they are, and neither side builds a [`Snapshot`] of bags and
//! IDs on the way (the built-in `drf` and `priority` do this).

use crate::{
    AgentView, FrameworkView, Grant, Kind, Limits, Preemption, Resources, RoleView, Snapshot,
    TaskView,
};
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

/// What is wrong with a snapshot or an answer in index form: the first malformed part found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// An amount vector without one entry per resource kind.
    #[error("{what} has {len} amounts for {kinds} kinds")]
    Length {
        /// Which vector, e.g. `agent 3` or `grant 0's reserved vector`.
        what: String,
        /// Its length.
        len: usize,
        /// The number of kinds.
        kinds: usize,
    },
    /// A reference to a role, agent or framework that the snapshot does not have.
    #[error("{what} names {of} index {index}")]
    Index {
        /// Who names it, e.g. `grant 2`.
        what: String,
        /// What kind of thing: `role`, `agent` or `framework`.
        of: &'static str,
        /// The index named.
        index: usize,
    },
    /// A framework's filtered agents are unsorted or name agents out of range.
    #[error("framework {0}'s filtered agents are unsorted or out of range")]
    Filtered(usize),
    /// Grant columns of mismatched lengths.
    #[error(
        "{grants} grants over {kinds} kinds need {grants} agents and {} amounts, not {agents} and {amounts}",
        2 * kinds * grants
    )]
    Columns {
        /// Grants (the length of the framework column).
        grants: usize,
        /// Resource kinds.
        kinds: usize,
        /// The length of the agent column.
        agents: usize,
        /// The length of the amounts column.
        amounts: usize,
    },
    /// A grant's amount vector without one entry per resource kind.
    #[error("grant {grant} has {len} {what} amounts for {kinds} resource kinds")]
    GrantLength {
        /// The grant's position in the answer.
        grant: usize,
        /// Which vector: `unreserved` or `reserved`.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The number of kinds.
        kinds: usize,
    },
    /// A revocation naming a task the snapshot does not list.
    #[error("revocation {revocation} names task index {task} of {tasks}")]
    Revocation {
        /// The revocation's position in the answer.
        revocation: usize,
        /// The task index it names.
        task: usize,
        /// How many revocable tasks the snapshot lists.
        tasks: usize,
    },
    /// A negative amount in a grant.
    #[error("grant {grant} has a negative amount of {kind}")]
    Negative {
        /// The grant's position in the answer.
        grant: usize,
        /// The resource kind.
        kind: String,
    },
}

/// One agent of a [`View`].
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow<'a> {
    /// The agent's ID.
    pub id: &'a str,
    /// Everything it has, reserved included.
    pub total: &'a [i64],
    /// Unreserved resources neither offered nor used, one amount per kind.
    pub available: &'a [i64],
    /// Its reservations still free: `(role index, amounts)`.
    pub reserved: Vec<(u32, &'a [i64])>,
}

/// One role of a [`View`].
#[derive(Debug, Clone, PartialEq)]
pub struct RoleRow<'a> {
    /// The role's name.
    pub name: &'a str,
    /// Its weight (> 0 to count; DRF treats anything else as 1).
    pub weight: f64,
    /// Its quota limit, one amount per kind, -1 where the kind is not limited; `None`: no limit at all.
    pub quota_limit: Option<&'a [i64]>,
    /// Its quota guarantee, one amount per kind (0 where none); `None`: no guarantee (always `None` from the
    /// interfaces older than WIT `allot:policy@0.3.0`, which do not carry guarantees).
    pub quota_guarantee: Option<&'a [i64]>,
    /// What the role holds now.
    pub allocation: &'a [i64],
}

/// One framework of a [`View`].
#[derive(Debug, Clone, PartialEq)]
pub struct FrameworkRow<'a> {
    /// The framework's ID.
    pub id: &'a str,
    /// Index of its role.
    pub role: u32,
    /// Priority class (higher first under `priority`).
    pub priority: i32,
    /// Offers received so far.
    pub allocations: u64,
    /// What it holds now.
    pub allocation: &'a [i64],
    /// Indices of the agents it is filtered from, sorted.
    pub filtered: &'a [u32],
    /// Seconds it has been starved ([`FrameworkView::starved_seconds`]); 0 from the interfaces older than
    /// WIT `allot:policy@0.3.0`.
    pub starved_seconds: f64,
}

/// One running task of a [`View`] that a policy may revoke ([`TaskView`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow<'a> {
    /// The task's ID.
    pub id: &'a str,
    /// Its framework's ID.
    pub framework: &'a str,
    /// The ID of the agent it runs on.
    pub agent: &'a str,
    /// Index of its framework's role.
    pub role: u32,
    /// Its framework's priority class.
    pub priority: i32,
    /// What it holds, reserved included, one amount per kind.
    pub resources: &'a [i64],
    /// Seconds since it was launched.
    pub running_seconds: f64,
}

/// A snapshot in index form, borrowed from wherever its numbers live: a [`Layout`] of a [`Snapshot`], the
/// host's C buffers, or a WIT record. Every amount vector has one entry per kind; indices are checked by
/// [`View::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct View<'a> {
    /// Scalar kind names, sorted.
    pub kinds: Vec<&'a str>,
    /// The cluster's total.
    pub total: &'a [i64],
    /// Agents with something available.
    pub agents: Vec<AgentRow<'a>>,
    /// Roles, sorted by name: every role a framework names is here.
    pub roles: Vec<RoleRow<'a>>,
    /// Frameworks that want offers, sorted by ID.
    pub frameworks: Vec<FrameworkRow<'a>>,
    /// The host's preemption settings, when a policy may revoke in this cycle ([`Snapshot::preemption`]).
    pub preemption: Option<Preemption>,
    /// The running tasks a policy may revoke, sorted by framework then task ID; empty unless `preemption`
    /// is set.
    pub tasks: Vec<TaskRow<'a>>,
}

impl View<'_> {
    /// Checks that every vector has one amount per kind, every role index is in range and every filter list
    /// is sorted and in range.
    ///
    /// # Errors
    /// The first violation, as an [`IndexError`].
    pub fn check(&self) -> Result<(), IndexError> {
        let n = self.kinds.len();
        let (na, nr) = (self.agents.len(), self.roles.len());
        let len = |v: &[i64], what: &dyn Fn() -> String| {
            if v.len() == n {
                Ok(())
            } else {
                Err(IndexError::Length {
                    what: what(),
                    len: v.len(),
                    kinds: n,
                })
            }
        };
        let role = |r: u32, what: &dyn Fn() -> String| {
            if (r as usize) < nr {
                Ok(())
            } else {
                Err(IndexError::Index {
                    what: what(),
                    of: "role",
                    index: r as usize,
                })
            }
        };
        len(self.total, &|| "the total".into())?;
        for (i, a) in self.agents.iter().enumerate() {
            len(a.available, &|| format!("agent {i}"))?;
            for &(r, v) in &a.reserved {
                role(r, &|| format!("agent {i}'s reservation"))?;
                len(v, &|| format!("agent {i}'s reservation"))?;
            }
        }
        for (i, r) in self.roles.iter().enumerate() {
            len(r.allocation, &|| format!("role {i}"))?;
            if let Some(l) = r.quota_limit {
                len(l, &|| format!("role {i}'s quota limit"))?;
            }
        }
        for (i, f) in self.frameworks.iter().enumerate() {
            len(f.allocation, &|| format!("framework {i}"))?;
            role(f.role, &|| format!("framework {i}"))?;
            if !f.filtered.is_sorted() || f.filtered.last().is_some_and(|&a| a as usize >= na) {
                return Err(IndexError::Filtered(i));
            }
        }
        for (i, t) in self.tasks.iter().enumerate() {
            len(t.resources, &|| format!("task {i}"))?;
            role(t.role, &|| format!("task {i}"))?;
        }
        Ok(())
    }

    /// The [`Snapshot`] of this view: IDs and resource bags, for a [`crate::Policy`] (what a guest does for
    /// a policy that does not decide on the index form). Amount vectors are read kind by kind.
    ///
    /// # Errors
    /// [`IndexError::Index`] for a role or agent index out of range.
    pub fn to_snapshot(&self) -> Result<Snapshot, IndexError> {
        let kinds = interned(&self.kinds);
        let bag = |v: &[i64]| resources(&kinds, v);
        let role = |i: u32| {
            self.roles
                .get(i as usize)
                .map(|r| r.name.to_string())
                .ok_or_else(|| IndexError::Index {
                    what: "the view".into(),
                    of: "role",
                    index: i as usize,
                })
        };
        let roles = self
            .roles
            .iter()
            .map(|r| RoleView {
                name: r.name.to_string(),
                weight: r.weight,
                quota_limit: r.quota_limit.map(|l| limit_resources(&kinds, l)),
                quota_guarantee: r.quota_guarantee.map(bag),
                allocation: bag(r.allocation),
            })
            .collect();
        let mut agents = Vec::with_capacity(self.agents.len());
        for a in &self.agents {
            let mut reserved = std::collections::BTreeMap::new();
            for &(r, v) in &a.reserved {
                reserved.insert(role(r)?, bag(v));
            }
            agents.push(AgentView {
                id: a.id.to_string(),
                total: bag(a.total),
                available: bag(a.available),
                reserved,
            });
        }
        let mut frameworks = Vec::with_capacity(self.frameworks.len());
        for f in &self.frameworks {
            let mut filtered_agents = Vec::with_capacity(f.filtered.len());
            for &i in f.filtered {
                let a = self
                    .agents
                    .get(i as usize)
                    .ok_or_else(|| IndexError::Index {
                        what: format!("framework {}'s filter", f.id),
                        of: "agent",
                        index: i as usize,
                    })?;
                filtered_agents.push(a.id.to_string());
            }
            filtered_agents.sort();
            frameworks.push(FrameworkView {
                id: f.id.to_string(),
                role: role(f.role)?,
                allocation: bag(f.allocation),
                allocations: f.allocations,
                filtered_agents,
                priority: f.priority,
                starved_seconds: f.starved_seconds,
            });
        }
        let tasks = self
            .tasks
            .iter()
            .map(|t| {
                Ok(TaskView {
                    framework: t.framework.to_string(),
                    id: t.id.to_string(),
                    agent: t.agent.to_string(),
                    role: role(t.role)?,
                    priority: t.priority,
                    resources: bag(t.resources),
                    running_seconds: t.running_seconds,
                })
            })
            .collect::<Result<_, IndexError>>()?;
        Ok(Snapshot {
            total: bag(self.total),
            agents,
            frameworks,
            roles,
            preemption: self.preemption,
            tasks,
        })
    }
}

/// Grants in index form, in columns as the WIT answer carries them: grant i names framework `framework[i]`
/// and agent `agent[i]` and has two amount vectors (unreserved, then reserved for the framework's role) at
/// `amounts[2 * n_kinds * i ..]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexedGrants {
    n_kinds: usize,
    framework: Vec<u32>,
    agent: Vec<u32>,
    amounts: Vec<i64>,
}

impl IndexedGrants {
    /// No grants yet, over `n_kinds` kinds; room for `capacity`.
    pub fn new(n_kinds: usize, capacity: usize) -> Self {
        Self {
            n_kinds,
            framework: Vec::with_capacity(capacity),
            agent: Vec::with_capacity(capacity),
            amounts: Vec::with_capacity(capacity * 2 * n_kinds),
        }
    }

    /// Adds a grant of `unreserved` and `reserved` (one amount per kind each) of agent `agent` to framework
    /// `framework`.
    pub fn push(&mut self, framework: u32, agent: u32, unreserved: &[i64], reserved: &[i64]) {
        debug_assert_eq!(
            (unreserved.len(), reserved.len()),
            (self.n_kinds, self.n_kinds)
        );
        self.framework.push(framework);
        self.agent.push(agent);
        self.amounts.extend_from_slice(unreserved);
        self.amounts.extend_from_slice(reserved);
    }

    /// `grants` in index form over `kinds` (each bag read kind by kind; port ranges are dropped, as plugins see
    /// scalars only).
    pub fn from_grants<K: AsRef<str>>(grants: &[Grant], kinds: &[K]) -> Self {
        let mut out = Self::new(kinds.len(), grants.len());
        for g in grants {
            let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
            out.framework.push(index(g.framework));
            out.agent.push(index(g.agent));
            for bag in [&g.resources, &g.reserved] {
                out.amounts
                    .extend(kinds.iter().map(|k| bag.scalar_milli(k.as_ref())));
            }
        }
        out
    }

    /// The grants' columns: framework indices, agent indices and the amounts, two vectors (unreserved, then
    /// reserved) of `n_kinds` per grant, in grant order.
    pub fn into_columns(self) -> (Vec<u32>, Vec<u32>, Vec<i64>) {
        (self.framework, self.agent, self.amounts)
    }

    /// Grants over `n_kinds` kinds from their columns (see [`IndexedGrants::into_columns`]).
    ///
    /// # Errors
    /// A message when the columns disagree: not one agent per framework index, or not `2 * n_kinds` amounts
    /// per grant.
    pub fn from_columns(
        n_kinds: usize,
        framework: Vec<u32>,
        agent: Vec<u32>,
        amounts: Vec<i64>,
    ) -> Result<Self, IndexError> {
        let count = framework.len();
        if agent.len() != count || amounts.len() != 2 * n_kinds * count {
            return Err(IndexError::Columns {
                grants: count,
                kinds: n_kinds,
                agents: agent.len(),
                amounts: amounts.len(),
            });
        }
        Ok(Self {
            n_kinds,
            framework,
            agent,
            amounts,
        })
    }

    /// How many grants.
    pub fn len(&self) -> usize {
        self.framework.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.framework.is_empty()
    }

    /// Every grant as `(framework, agent, unreserved, reserved)`.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32, &[i64], &[i64])> {
        let n = self.n_kinds;
        let rows = self.framework.iter().zip(&self.agent);
        rows.enumerate().map(move |(i, (&f, &a))| {
            let at = 2 * n * i;
            (
                f,
                a,
                &self.amounts[at..at + n],
                &self.amounts[at + n..at + 2 * n],
            )
        })
    }

    /// The grants as [`Grant`]s over `snap`, laid out with `kinds`; each agent's free port ranges go with its
    /// first grant of unreserved resources.
    ///
    /// # Errors
    /// An [`IndexError`] for an index out of range, a vector of the wrong length or a negative amount.
    pub fn to_grants(&self, snap: &Snapshot, kinds: &[String]) -> Result<Vec<Grant>, IndexError> {
        let mut reader = GrantReader::new(snap, kinds);
        let mut out = Vec::with_capacity(self.len());
        for (i, (f, a, r, v)) in self.iter().enumerate() {
            out.push(reader.read(i, f, a, r, v)?);
        }
        Ok(out)
    }
}

/// The `i`-th revocation of a plugin's answer, naming task index `task` with `message`, checked against a
/// snapshot of `n_tasks` revocable tasks: the way back of revocations, as [`GrantReader`] is of grants.
///
/// # Errors
/// [`IndexError::Revocation`] for a task index beyond them.
pub fn read_revocation(
    i: usize,
    task: u32,
    message: String,
    n_tasks: usize,
) -> Result<crate::Revocation, IndexError> {
    let task = task as usize;
    if task >= n_tasks {
        return Err(IndexError::Revocation {
            revocation: i,
            task,
            tasks: n_tasks,
        });
    }
    Ok(crate::Revocation { task, message })
}

/// A policy that decides on the index form. Implementations must be deterministic and may assume a view
/// that passed [`View::check`].
pub trait IndexedPolicy: Send {
    /// A short name, e.g. `drf`.
    fn name(&self) -> &str;
    /// Runs one allocation cycle over `view`.
    fn allocate_indexed(&mut self, view: &View<'_>) -> IndexedGrants;

    /// Tasks to end so that starved frameworks get their share back, by index into `view.tasks`
    /// ([`crate::Policy::revoke`] on the index form): called after [`IndexedPolicy::allocate_indexed`], on
    /// the same view, only when `view.preemption` is set. The default revokes nothing.
    fn revoke_indexed(&mut self, view: &View<'_>) -> Vec<crate::Revocation> {
        let _ = view;
        Vec::new()
    }
}

/// A [`Snapshot`] laid out in index form: every amount in one flat vector. [`Layout::view`] borrows it as a
/// [`View`]; the C host points its ABI structs into it.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// The snapshot's kinds, sorted.
    pub kinds: Vec<String>,
    /// Every amount vector, one after another.
    pub flat: Vec<i64>,
    /// Offset of the total in `flat`.
    pub total: usize,
    /// Per agent: offsets of its total and available amounts, and its range of `reservations`.
    pub agents: Vec<(usize, usize, Range<usize>)>,
    /// `(role index, offset)` of every agent's free reservations.
    pub reservations: Vec<(u32, usize)>,
    /// Per role (the snapshot's, plus any a framework names that it lacks, sorted by name): name, weight,
    /// offset of the quota limit (-1 for unlimited kinds) and of the allocation.
    pub roles: Vec<(String, f64, Option<usize>, usize)>,
    /// Per framework: role index, offset of its allocation, range of `filtered`.
    pub frameworks: Vec<(u32, usize, Range<usize>)>,
    /// Every framework's filtered agent indices, sorted per framework.
    pub filtered: Vec<u32>,
    /// Per role (as `roles`): offset of its quota guarantee, if it has one.
    pub guarantees: Vec<Option<usize>>,
    /// Per task of the snapshot's revocable tasks, in order: its role's index and the offset of its
    /// resources (none from [`Layout::for_allocation`]).
    pub tasks: Vec<(u32, usize)>,
}

impl Layout {
    /// Lays `snap` out. A role a framework names but `snap.roles` lacks is added with weight 1, no limit and
    /// the sum of its frameworks' allocations (and one only a revocable task names, with nothing).
    pub fn new(snap: &Snapshot) -> Self {
        Self::build(snap, true)
    }

    /// [`Layout::new`] without the revocable tasks (its [`View`] lists none): for an allocation that does not
    /// read them, such as the built-in `drf`'s, which then lays out nothing more in a cycle with preemption.
    pub fn for_allocation(snap: &Snapshot) -> Self {
        Self::build(snap, false)
    }

    fn build(snap: &Snapshot, with_tasks: bool) -> Self {
        let tasks: &[TaskView] = if with_tasks { &snap.tasks } else { &[] };
        let interned = interned_kinds(snap);
        let kinds: Vec<String> = interned.iter().map(|k| k.name().to_string()).collect();
        let mut flat =
            Vec::with_capacity((2 * snap.agents.len() + 2 * snap.frameworks.len()) * kinds.len());
        let put = |r: &Resources, flat: &mut Vec<i64>| {
            let at = flat.len();
            flat.extend(interned.iter().map(|&k| r.kind_milli(k)));
            at
        };
        let total = put(&snap.total, &mut flat);
        // Roles: the snapshot's and the missing ones its frameworks name, by name.
        let mut roles: Vec<(&str, f64, Option<&Limits>, Resources)> = snap
            .roles
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.weight,
                    r.quota_limit.as_ref(),
                    r.allocation.clone(),
                )
            })
            .collect();
        let guaranteed: HashMap<&str, &Resources> = snap
            .roles
            .iter()
            .filter_map(|r| Some((r.name.as_str(), r.quota_guarantee.as_ref()?)))
            .collect();
        let listed: BTreeSet<&str> = roles.iter().map(|r| r.0).collect();
        let mut missing: HashMap<&str, Resources> = HashMap::new();
        for f in &snap.frameworks {
            if !listed.contains(f.role.as_str()) {
                missing.entry(&f.role).or_default().add(&f.allocation);
            }
        }
        // And a role that holds a reservation and is an ancestor of a framework's role: its reservation may
        // go to the descendant (Mesos offers a role's reservation to its descendants too).
        let ancestors: BTreeSet<&str> = snap
            .frameworks
            .iter()
            .flat_map(|f| crate::role_ancestors(&f.role))
            .collect();
        for a in &snap.agents {
            for role in a.reserved.keys() {
                if ancestors.contains(role.as_str()) && !listed.contains(role.as_str()) {
                    missing.entry(role).or_default();
                }
            }
        }
        for t in tasks {
            if !listed.contains(t.role.as_str()) {
                missing.entry(&t.role).or_default();
            }
        }
        roles.extend(missing.into_iter().map(|(n, a)| (n, 1.0, None, a)));
        roles.sort_by(|a, b| a.0.cmp(b.0));
        let role_index: HashMap<&str, u32> = roles
            .iter()
            .enumerate()
            .map(|(i, r)| (r.0, i as u32))
            .collect();
        let mut agents = Vec::with_capacity(snap.agents.len());
        let mut reservations = Vec::new();
        for a in &snap.agents {
            let t = put(&a.total, &mut flat);
            let av = put(&a.available, &mut flat);
            let start = reservations.len();
            for (role, r) in &a.reserved {
                if let Some(&ri) = role_index.get(role.as_str()) {
                    reservations.push((ri, put(r, &mut flat)));
                }
            }
            agents.push((t, av, start..reservations.len()));
        }
        let guarantees = roles
            .iter()
            .map(|r| guaranteed.get(r.0).map(|g| put(g, &mut flat)))
            .collect();
        let roles = roles
            .into_iter()
            .map(|(name, weight, limit, allocation)| {
                let lim = limit.map(|l| {
                    let at = flat.len();
                    flat.extend(limit_amounts(l, &kinds));
                    at
                });
                (name.to_string(), weight, lim, put(&allocation, &mut flat))
            })
            .collect();
        let mut filtered_all = Vec::new();
        let frameworks = snap
            .frameworks
            .iter()
            .zip(filtered(snap))
            .map(|(f, idx)| {
                let start = filtered_all.len();
                filtered_all.extend(idx);
                (
                    role_index[f.role.as_str()],
                    put(&f.allocation, &mut flat),
                    start..filtered_all.len(),
                )
            })
            .collect();
        let tasks = tasks
            .iter()
            .map(|t| (role_index[t.role.as_str()], put(&t.resources, &mut flat)))
            .collect();
        Self {
            kinds,
            flat,
            total,
            agents,
            reservations,
            roles,
            frameworks,
            filtered: filtered_all,
            guarantees,
            tasks,
        }
    }

    /// The amounts at `at`.
    pub fn amounts(&self, at: usize) -> &[i64] {
        &self.flat[at..at + self.kinds.len()]
    }

    /// A view of the layout of `snap` (the snapshot it was made from, for the framework IDs).
    pub fn view<'a>(&'a self, snap: &'a Snapshot) -> View<'a> {
        View {
            kinds: self.kinds.iter().map(String::as_str).collect(),
            total: self.amounts(self.total),
            agents: self
                .agents
                .iter()
                .zip(&snap.agents)
                .map(|((total, av, res), a)| AgentRow {
                    id: &a.id,
                    total: self.amounts(*total),
                    available: self.amounts(*av),
                    reserved: self.reservations[res.clone()]
                        .iter()
                        .map(|&(r, at)| (r, self.amounts(at)))
                        .collect(),
                })
                .collect(),
            roles: self
                .roles
                .iter()
                .zip(&self.guarantees)
                .map(|((name, weight, lim, alloc), g)| RoleRow {
                    name,
                    weight: *weight,
                    quota_limit: lim.map(|at| self.amounts(at)),
                    quota_guarantee: g.map(|at| self.amounts(at)),
                    allocation: self.amounts(*alloc),
                })
                .collect(),
            frameworks: snap
                .frameworks
                .iter()
                .zip(&self.frameworks)
                .map(|(f, (role, alloc, filtered))| FrameworkRow {
                    id: &f.id,
                    role: *role,
                    priority: f.priority,
                    allocations: f.allocations,
                    allocation: self.amounts(*alloc),
                    filtered: &self.filtered[filtered.clone()],
                    starved_seconds: f.starved_seconds,
                })
                .collect(),
            preemption: snap.preemption,
            tasks: snap
                .tasks
                .iter()
                .zip(&self.tasks)
                .map(|(t, &(role, at))| TaskRow {
                    id: &t.id,
                    framework: &t.framework,
                    agent: &t.agent,
                    role,
                    priority: t.priority,
                    resources: self.amounts(at),
                    running_seconds: t.running_seconds,
                })
                .collect(),
        }
    }
}

/// The scalar resource kinds of `snap` (of its total and of every agent), sorted by name.
pub fn kinds(snap: &Snapshot) -> Vec<String> {
    interned_kinds(snap)
        .into_iter()
        .map(|k| k.name().to_string())
        .collect()
}

/// [`kinds`] as interned [`Kind`]s. Names are told apart by pointer while collecting: a handful of kinds over
/// tens of thousands of agents costs no string comparison.
pub fn interned_kinds(snap: &Snapshot) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = Vec::new();
    for r in std::iter::once(&snap.total).chain(snap.agents.iter().map(|a| &a.total)) {
        for (k, _) in r.kinds() {
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
    }
    kinds.sort_by(|a, b| a.name().cmp(b.name()));
    kinds
}

/// A quota limit in thousandths, one per kind of `kinds`: -1 where the limit does not name the kind, 0 where
/// it allows none of it.
pub fn limit_amounts(limit: &Limits, kinds: &[String]) -> Vec<i64> {
    kinds
        .iter()
        .map(|k| limit.get_milli(k).unwrap_or(-1))
        .collect()
}

/// For every framework of `snap`, in order, the sorted indices of the agents it is filtered from.
pub fn filtered(snap: &Snapshot) -> Vec<Vec<u32>> {
    if snap.frameworks.iter().all(|f| f.filtered_agents.is_empty()) {
        return vec![Vec::new(); snap.frameworks.len()];
    }
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

/// `names` interned, in order.
pub fn interned<K: AsRef<str>>(names: &[K]) -> Vec<Kind> {
    names.iter().map(|k| Kind::new(k.as_ref())).collect()
}

/// Resources from thousandths in kind order (entries of 0 or less are dropped).
pub fn resources(kinds: &[Kind], v: &[i64]) -> Resources {
    let mut r = Resources::new();
    for (&k, &milli) in kinds.iter().zip(v) {
        r.set_kind_milli(k, milli);
    }
    r
}

/// A quota limit from thousandths in kind order: kinds at -1 (any negative amount) are not limited, kinds at
/// 0 are limited to none.
pub fn limit_resources(kinds: &[Kind], v: &[i64]) -> Limits {
    let mut l = Limits::new();
    for (&k, &milli) in kinds.iter().zip(v) {
        l.set_kind_milli(k, milli);
    }
    l
}

/// Reads grants given by index back into [`Grant`]s over a snapshot, checking indices and amounts, and
/// attaching each agent's free port ranges to its first grant with unreserved resources (plugins see scalars
/// only).
pub struct GrantReader<'a> {
    snap: &'a Snapshot,
    kinds: &'a [String],
    interned: Vec<Kind>,
    ranges_given: Vec<bool>,
}

impl<'a> GrantReader<'a> {
    /// A reader for grants over `snap` laid out with `kinds`.
    pub fn new(snap: &'a Snapshot, kinds: &'a [String]) -> Self {
        Self {
            snap,
            kinds,
            interned: interned(kinds),
            ranges_given: vec![false; snap.agents.len()],
        }
    }

    /// Grant number `i`: `resources` and `reserved` of agent index `agent` to framework index `framework`.
    /// Each amount vector has one entry per kind, or none at all (nothing).
    ///
    /// # Errors
    /// An [`IndexError`] for an index out of range, a vector of the wrong length or a negative amount.
    pub fn read(
        &mut self,
        i: usize,
        framework: u32,
        agent: u32,
        resources: &[i64],
        reserved: &[i64],
    ) -> Result<Grant, IndexError> {
        let (framework, agent) = (framework as usize, agent as usize);
        let grant = || format!("grant {i}");
        if framework >= self.snap.frameworks.len() {
            return Err(IndexError::Index {
                what: grant(),
                of: "framework",
                index: framework,
            });
        }
        let ag = self
            .snap
            .agents
            .get(agent)
            .ok_or_else(|| IndexError::Index {
                what: grant(),
                of: "agent",
                index: agent,
            })?;
        let vector = |v: &[i64], what: &'static str| -> Result<Resources, IndexError> {
            if !v.is_empty() && v.len() != self.kinds.len() {
                return Err(IndexError::GrantLength {
                    grant: i,
                    what,
                    len: v.len(),
                    kinds: self.kinds.len(),
                });
            }
            if let Some(k) = v.iter().position(|&x| x < 0) {
                return Err(IndexError::Negative {
                    grant: i,
                    kind: self.kinds[k].clone(),
                });
            }
            Ok(self::resources(&self.interned, v))
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
            ..Snapshot::default()
        }
    }

    #[test]
    fn round_trip_through_indices() {
        let s = snap();
        let k = kinds(&s);
        assert_eq!(k, ["cpus", "mem"]);
        let l = Layout::new(&s);
        assert_eq!(l.amounts(l.total), [8000, 2048000]);
        assert_eq!(filtered(&s), [vec![1]]);
        let limit: Limits = "cpus:2".parse().unwrap();
        assert_eq!(limit_amounts(&limit, &k), [2000, -1]);
        assert_eq!(limit_resources(&interned(&k), &[2000, -1]), limit);
        let none: Limits = "cpus:0;mem:0".parse().unwrap();
        assert_eq!(limit_amounts(&none, &k), [0, 0]);
        assert_eq!(limit_resources(&interned(&k), &[0, 0]), none);

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
                .to_string()
                .contains("framework index 5")
        );
        assert!(
            reader
                .read(0, 0, 9, &[], &[])
                .unwrap_err()
                .to_string()
                .contains("agent index 9")
        );
        assert!(
            reader
                .read(0, 0, 0, &[1], &[])
                .unwrap_err()
                .to_string()
                .contains("1 unreserved amounts")
        );
        assert!(
            reader
                .read(0, 0, 0, &[-1, 0], &[])
                .unwrap_err()
                .to_string()
                .contains("negative amount of cpus")
        );
    }
}
