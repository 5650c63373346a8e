//! Rust guest bindings of the `allot:policy@0.1.0` world (`plugins/wit/policy.wit`).
//!
//! A policy crate builds as a `cdylib` for `wasm32-unknown-unknown` and exports any
//! [`allot_policy::Policy`] that implements `Default` with:
//!
//! ```ignore
//! type Exported = allot_policy_guest::Export<my_crate::MyPolicy>;
//! allot_policy_guest::export_policy!(Exported);
//! ```
//!
//! then wraps the core module into a component (`allot-wasm-tool component`, see `plugins/wasm/build.sh`).
//! [`Export`] converts the index form of the WIT snapshot into an [`allot_policy::Snapshot`] and the
//! policy's grants back into indices, exactly like the native ABI's guest side.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
    pub_export_macro: true,
    export_macro_name: "export_policy",
    default_bindings_module: "allot_policy_guest",
});

use allot::policy::types as wit;
use allot_policy::indexed::{AgentRow, FrameworkRow, IndexedPolicy, RoleRow, View};
use allot_policy::{AgentView, FrameworkView, Policy, RoleView, Snapshot, indexed};
use exports::allot::policy::allocator::Guest;
use std::marker::PhantomData;

/// Exports policy `P` through the WIT world: name it with a type alias and pass that to
/// [`export_policy!`].
pub struct Export<P>(PhantomData<P>);

impl<P: Policy + Default> Guest for Export<P> {
    fn name() -> String {
        P::default().name().to_string()
    }

    fn allocate(snapshot: wit::Snapshot) -> Result<Vec<wit::Grant>, String> {
        let kinds = snapshot.kinds.clone();
        let snap = from_wit(snapshot)?;
        let grants = P::default().allocate(&snap);
        grants
            .iter()
            .map(|g| {
                if snap.names(g).is_none() {
                    return Err(format!(
                        "the policy granted to framework index {} on agent index {}, beyond the snapshot",
                        g.framework, g.agent
                    ));
                }
                Ok(wit::Grant {
                    framework: g.framework as u32,
                    agent: g.agent as u32,
                    resources: indexed::amounts(&g.resources, &kinds),
                    reserved: indexed::amounts(&g.reserved, &kinds),
                })
            })
            .collect()
    }
}

/// Exports index-form policy `P` through the WIT world: it decides on a [`View`] of the WIT snapshot's
/// vectors, and no [`Snapshot`] is built.
pub struct ExportIndexed<P>(PhantomData<P>);

impl<P: IndexedPolicy + Default> Guest for ExportIndexed<P> {
    fn name() -> String {
        P::default().name().to_string()
    }

    fn allocate(s: wit::Snapshot) -> Result<Vec<wit::Grant>, String> {
        let view = View {
            kinds: s.kinds.iter().map(String::as_str).collect(),
            total: &s.total,
            agents: s
                .agents
                .iter()
                .map(|a| AgentRow {
                    available: &a.available,
                    reserved: a
                        .reserved
                        .iter()
                        .map(|r| (r.role, &r.available[..]))
                        .collect(),
                })
                .collect(),
            roles: s
                .roles
                .iter()
                .map(|r| RoleRow {
                    name: &r.name,
                    weight: r.weight,
                    quota_limit: r.quota_limit.as_deref(),
                    allocation: &r.allocation,
                })
                .collect(),
            frameworks: s
                .frameworks
                .iter()
                .map(|f| FrameworkRow {
                    id: &f.id,
                    role: f.role,
                    priority: f.priority,
                    allocations: f.allocations,
                    allocation: &f.allocation,
                    filtered: &f.filtered,
                })
                .collect(),
        };
        view.check()?;
        let grants = P::default().allocate_indexed(&view);
        Ok(grants
            .iter()
            .map(|(framework, agent, resources, reserved)| wit::Grant {
                framework,
                agent,
                resources: resources.to_vec(),
                reserved: reserved.to_vec(),
            })
            .collect())
    }
}

/// The [`Snapshot`] of a WIT snapshot.
///
/// # Errors
/// A message for a role or agent index out of range.
pub fn from_wit(s: wit::Snapshot) -> Result<Snapshot, String> {
    let kinds = indexed::interned(&s.kinds);
    let names: Vec<String> = s.roles.iter().map(|r| r.name.clone()).collect();
    let role = |i: u32| {
        names
            .get(i as usize)
            .cloned()
            .ok_or_else(|| format!("role index {i} out of range"))
    };
    let roles = s
        .roles
        .into_iter()
        .map(|r| RoleView {
            name: r.name,
            weight: r.weight,
            quota_limit: r
                .quota_limit
                .map(|l: Vec<i64>| indexed::limit_resources(&kinds, &l)),
            allocation: indexed::resources(&kinds, &r.allocation),
        })
        .collect();
    let mut agents = Vec::with_capacity(s.agents.len());
    for a in s.agents {
        let mut reserved = std::collections::BTreeMap::new();
        for r in a.reserved {
            reserved.insert(role(r.role)?, indexed::resources(&kinds, &r.available));
        }
        agents.push(AgentView {
            id: a.id,
            total: indexed::resources(&kinds, &a.total),
            available: indexed::resources(&kinds, &a.available),
            reserved,
        });
    }
    let mut frameworks = Vec::with_capacity(s.frameworks.len());
    for f in s.frameworks {
        let mut filtered_agents = Vec::with_capacity(f.filtered.len());
        for i in f.filtered {
            let a: &AgentView = agents
                .get(i as usize)
                .ok_or_else(|| format!("agent index {i} out of range"))?;
            filtered_agents.push(a.id.clone());
        }
        filtered_agents.sort();
        frameworks.push(FrameworkView {
            id: f.id,
            role: role(f.role)?,
            allocation: indexed::resources(&kinds, &f.allocation),
            allocations: f.allocations,
            filtered_agents,
            priority: f.priority,
        });
    }
    Ok(Snapshot {
        total: indexed::resources(&kinds, &s.total),
        agents,
        frameworks,
        roles,
    })
}
