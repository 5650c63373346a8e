//! Rust guest bindings of the `allot:policy@0.3.0` world (`plugins/wit/0.3.0/policy.wit`).
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
//! [`ExportIndexed`] hands an [`IndexedPolicy`] the [`View`] itself. Both export `revoke` (preemption, new in
//! 0.3.0) from the policy's own [`Policy::revoke`] or [`IndexedPolicy::revoke_indexed`]: a policy that does not
//! implement it revokes nothing.

wit_bindgen::generate!({
    path: "../../wit/0.3.0",
    world: "policy",
    pub_export_macro: true,
    export_macro_name: "export_policy",
    default_bindings_module: "allot_policy_guest",
});

use allot::policy::types as wit;
use allot_policy::Policy;
use allot_policy::indexed::{
    AgentRow, FrameworkRow, IndexedGrants, IndexedPolicy, RoleRow, TaskRow, View,
};
use allot_policy::{Preemption, Revocation};
use exports::allot::policy::allocator::Guest;
use std::marker::PhantomData;

/// Exports policy `P` through the WIT world: name it with a type alias and pass that to
/// [`export_policy!`].
pub struct Export<P>(PhantomData<P>);

impl<P: Policy + Default> Guest for Export<P> {
    fn name() -> String {
        P::default().name().to_string()
    }

    fn allocate(s: wit::Snapshot) -> Result<wit::Grants, String> {
        let snap = view_of(&s)?.to_snapshot().map_err(|e| e.to_string())?;
        let grants = P::default().allocate(&snap);
        if let Some(g) = grants.iter().find(|g| snap.names(g).is_none()) {
            return Err(format!(
                "the policy granted to framework index {} on agent index {}, beyond the snapshot",
                g.framework, g.agent
            ));
        }
        Ok(wit_grants(IndexedGrants::from_grants(&grants, &s.kinds)))
    }

    fn revoke(s: wit::Snapshot) -> Result<Vec<wit::Revocation>, String> {
        let snap = view_of(&s)?.to_snapshot().map_err(|e| e.to_string())?;
        Ok(wit_revocations(P::default().revoke(&snap)))
    }
}

/// Exports index-form policy `P` through the WIT world: it decides on a [`View`] of the WIT snapshot's
/// vectors, and no [`allot_policy::Snapshot`] is built.
pub struct ExportIndexed<P>(PhantomData<P>);

impl<P: IndexedPolicy + Default> Guest for ExportIndexed<P> {
    fn name() -> String {
        P::default().name().to_string()
    }

    fn allocate(s: wit::Snapshot) -> Result<wit::Grants, String> {
        let view = view_of(&s)?;
        view.check().map_err(|e| e.to_string())?;
        Ok(wit_grants(P::default().allocate_indexed(&view)))
    }

    fn revoke(s: wit::Snapshot) -> Result<Vec<wit::Revocation>, String> {
        let view = view_of(&s)?;
        view.check().map_err(|e| e.to_string())?;
        Ok(wit_revocations(P::default().revoke_indexed(&view)))
    }
}

/// A [`View`] of a WIT snapshot, borrowing its amounts and names.
///
/// # Errors
/// A message for an offset, span or name range beyond the snapshot's lists.
pub fn view_of(s: &wit::Snapshot) -> Result<View<'_>, String> {
    let n = s.kinds.len();
    let amounts = |at: u32, what: &dyn Fn() -> String| {
        s.amounts
            .get(at as usize..at as usize + n)
            .ok_or_else(|| format!("{} points beyond the amounts", what()))
    };
    let name = |r: wit::Span, what: &dyn Fn() -> String| {
        s.names
            .get(r.start as usize..r.end as usize)
            .ok_or_else(|| format!("{} is not a range of the names", what()))
    };
    fn range<'a, T>(
        v: &'a [T],
        r: wit::Span,
        what: &dyn Fn() -> String,
    ) -> Result<&'a [T], String> {
        v.get(r.start as usize..r.end as usize)
            .ok_or_else(|| format!("{} is not a range of its list", what()))
    }
    let c = &s.agents;
    let na = c.total.len();
    if c.available.len() != na || c.id.len() != na + 1 || c.reservations.len() != na + 1 {
        return Err(format!(
            "the agent columns disagree: {na} totals, {} available, {} ID bounds, {} reservation bounds",
            c.available.len(),
            c.id.len(),
            c.reservations.len()
        ));
    }
    let agents = (0..na)
        .map(|i| {
            let what = || format!("agent {i}");
            let bounds = |col: &[u32]| wit::Span {
                start: col[i],
                end: col[i + 1],
            };
            let res = bounds(&c.reservations);
            let roles = range(&c.reservation_role, res, &what)?;
            let available = range(&c.reservation_available, res, &what)?;
            Ok(AgentRow {
                id: name(bounds(&c.id), &what)?,
                total: amounts(c.total[i], &what)?,
                available: amounts(c.available[i], &what)?,
                reserved: roles
                    .iter()
                    .zip(available)
                    .map(|(&role, &at)| Ok((role, amounts(at, &what)?)))
                    .collect::<Result<_, String>>()?,
            })
        })
        .collect::<Result<_, String>>()?;
    let roles = s
        .roles
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let what = || format!("role {i}");
            Ok(RoleRow {
                name: name(r.name, &what)?,
                weight: r.weight,
                quota_limit: r.quota_limit.map(|at| amounts(at, &what)).transpose()?,
                quota_guarantee: r
                    .quota_guarantee
                    .map(|at| amounts(at, &what))
                    .transpose()?,
                allocation: amounts(r.allocation, &what)?,
            })
        })
        .collect::<Result<_, String>>()?;
    let frameworks = s
        .frameworks
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let what = || format!("framework {i}");
            Ok(FrameworkRow {
                id: name(f.id, &what)?,
                role: f.role,
                priority: f.priority,
                allocations: f.allocations,
                allocation: amounts(f.allocation, &what)?,
                filtered: range(&s.filtered, f.filtered, &what)?,
                starved_seconds: f.starved_seconds,
            })
        })
        .collect::<Result<_, String>>()?;
    let tasks = s
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let what = || format!("task {i}");
            Ok(TaskRow {
                id: name(t.id, &what)?,
                framework: name(t.framework, &what)?,
                agent: name(t.agent, &what)?,
                role: t.role,
                priority: t.priority,
                resources: amounts(t.resources, &what)?,
                running_seconds: t.running_seconds,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(View {
        kinds: s.kinds.iter().map(String::as_str).collect(),
        total: amounts(s.total, &|| "the total".into())?,
        agents,
        roles,
        frameworks,
        preemption: s.preemption.map(|p| Preemption {
            grace_seconds: p.grace_seconds,
            min_runtime_seconds: p.min_runtime_seconds,
        }),
        tasks,
    })
}

/// Revocations as the WIT answer.
fn wit_revocations(revocations: Vec<Revocation>) -> Vec<wit::Revocation> {
    revocations
        .into_iter()
        .map(|r| wit::Revocation {
            task: u32::try_from(r.task).unwrap_or(u32::MAX),
            message: r.message,
        })
        .collect()
}

/// Index-form grants as the WIT answer: the amounts move as they are.
fn wit_grants(grants: IndexedGrants) -> wit::Grants {
    let (framework, agent, amounts) = grants.into_columns();
    wit::Grants {
        framework,
        agent,
        amounts,
    }
}
