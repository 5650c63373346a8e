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
//! policy's grants back into indices, through the same [`View`] as the native ABI's guest side;
//! [`ExportIndexed`] hands an [`IndexedPolicy`] the [`View`] itself.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
    pub_export_macro: true,
    export_macro_name: "export_policy",
    default_bindings_module: "allot_policy_guest",
});

use allot::policy::types as wit;
use allot_policy::Policy;
use allot_policy::indexed::{AgentRow, FrameworkRow, IndexedGrants, IndexedPolicy, RoleRow, View};
use exports::allot::policy::allocator::Guest;
use std::marker::PhantomData;

/// Exports policy `P` through the WIT world: name it with a type alias and pass that to
/// [`export_policy!`].
pub struct Export<P>(PhantomData<P>);

impl<P: Policy + Default> Guest for Export<P> {
    fn name() -> String {
        P::default().name().to_string()
    }

    fn allocate(s: wit::Snapshot) -> Result<Vec<wit::Grant>, String> {
        let snap = view_of(&s).to_snapshot()?;
        let grants = P::default().allocate(&snap);
        if let Some(g) = grants.iter().find(|g| snap.names(g).is_none()) {
            return Err(format!(
                "the policy granted to framework index {} on agent index {}, beyond the snapshot",
                g.framework, g.agent
            ));
        }
        Ok(wit_grants(&IndexedGrants::from_grants(&grants, &s.kinds)))
    }
}

/// Exports index-form policy `P` through the WIT world: it decides on a [`View`] of the WIT snapshot's
/// vectors, and no [`allot_policy::Snapshot`] is built.
pub struct ExportIndexed<P>(PhantomData<P>);

impl<P: IndexedPolicy + Default> Guest for ExportIndexed<P> {
    fn name() -> String {
        P::default().name().to_string()
    }

    fn allocate(s: wit::Snapshot) -> Result<Vec<wit::Grant>, String> {
        let view = view_of(&s);
        view.check()?;
        Ok(wit_grants(&P::default().allocate_indexed(&view)))
    }
}

/// A [`View`] of a WIT snapshot, borrowing its vectors.
pub fn view_of(s: &wit::Snapshot) -> View<'_> {
    View {
        kinds: s.kinds.iter().map(String::as_str).collect(),
        total: &s.total,
        agents: s
            .agents
            .iter()
            .map(|a| AgentRow {
                id: &a.id,
                total: &a.total,
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
    }
}

/// Index-form grants as WIT grants.
fn wit_grants(grants: &IndexedGrants) -> Vec<wit::Grant> {
    grants
        .iter()
        .map(|(framework, agent, resources, reserved)| wit::Grant {
            framework,
            agent,
            resources: resources.to_vec(),
            reserved: reserved.to_vec(),
        })
        .collect()
}
