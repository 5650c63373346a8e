//! The guest side: a policy written in Rust reads the host's C snapshot and writes grants back.

use crate::*;
use allot_policy::indexed::{
    AgentRow, FrameworkRow, IndexedGrants, IndexedPolicy, RoleRow, TaskRow, View,
};
use allot_policy::{Grant, Policy, Preemption, Revocation, Snapshot};

/// Reads `n` entries at `ptr` (an empty slice for a null pointer or `n == 0`).
///
/// # Safety
/// `ptr` must point to `n` valid `T`s for the lifetime `'a`.
unsafe fn slice<'a, T>(ptr: *const T, n: u32) -> &'a [T] {
    if ptr.is_null() || n == 0 {
        &[]
    } else {
        // SAFETY: the caller guarantees `n` valid entries.
        unsafe { std::slice::from_raw_parts(ptr, n as usize) }
    }
}

/// # Safety
/// `s` must point to `len` bytes valid for `'a`.
unsafe fn text<'a>(s: AllotStr) -> Result<&'a str, i32> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { slice(s.ptr, s.len) };
    std::str::from_utf8(bytes).map_err(|_| ERR_INPUT)
}

/// Borrows the host's C snapshot as a [`View`] (no amount is copied), without [`View::check`]. The fields
/// of version 2 (guarantees, starvation, preemption, tasks) are read when they are not null.
///
/// # Safety
/// `s` must be valid as `allot_policy.h` describes, for `'a`.
///
/// # Errors
/// [`ERR_INPUT`] for an ABI version other than [`ABI_VERSION`] or text that is not UTF-8.
unsafe fn borrow_view<'a>(s: &'a AllotSnapshot) -> Result<View<'a>, i32> {
    if s.abi_version != ABI_VERSION {
        return Err(ERR_INPUT);
    }
    let n = s.n_kinds;
    // SAFETY (every block below): pointers and lengths come from the host as the ABI requires.
    let kinds: Vec<&str> = unsafe { slice(s.kinds, n) }
        .iter()
        .map(|k| unsafe { text(*k) })
        .collect::<Result<_, _>>()?;
    let amounts = |p: *const i64| -> &'a [i64] { unsafe { slice(p, n) } };
    let agents = unsafe { slice(s.agents, s.n_agents) }
        .iter()
        .map(|a| {
            Ok(AgentRow {
                id: unsafe { text(a.id) }?,
                total: amounts(a.total),
                available: amounts(a.available),
                reserved: unsafe { slice(a.reserved, a.n_reserved) }
                    .iter()
                    .map(|r| (r.role, amounts(r.available)))
                    .collect(),
            })
        })
        .collect::<Result<_, i32>>()?;
    let guarantees = unsafe { slice(s.quota_guarantees, s.n_roles) };
    let roles = unsafe { slice(s.roles, s.n_roles) }
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let guarantee = guarantees.get(i).copied().unwrap_or(std::ptr::null());
            Ok(RoleRow {
                name: unsafe { text(r.name) }?,
                weight: r.weight,
                quota_limit: (!r.quota_limit.is_null()).then(|| amounts(r.quota_limit)),
                quota_guarantee: (!guarantee.is_null()).then(|| amounts(guarantee)),
                allocation: amounts(r.allocation),
            })
        })
        .collect::<Result<_, i32>>()?;
    let starved = unsafe { slice(s.starved_seconds, s.n_frameworks) };
    let frameworks = unsafe { slice(s.frameworks, s.n_frameworks) }
        .iter()
        .enumerate()
        .map(|(i, f)| {
            Ok(FrameworkRow {
                id: unsafe { text(f.id) }?,
                role: f.role,
                priority: f.priority,
                allocations: f.allocations,
                allocation: amounts(f.allocation),
                filtered: unsafe { slice(f.filtered, f.n_filtered) },
                starved_seconds: starved.get(i).copied().unwrap_or(0.0),
            })
        })
        .collect::<Result<_, i32>>()?;
    let tasks = unsafe { slice(s.tasks, s.n_tasks) }
        .iter()
        .map(|t| {
            Ok(TaskRow {
                id: unsafe { text(t.id) }?,
                framework: unsafe { text(t.framework) }?,
                agent: unsafe { text(t.agent) }?,
                role: t.role,
                priority: t.priority,
                resources: amounts(t.resources),
                running_seconds: t.running_seconds,
            })
        })
        .collect::<Result<_, i32>>()?;
    // SAFETY: null or a valid pointer, as the ABI requires.
    let preemption = unsafe { s.preemption.as_ref() }.map(|p| Preemption {
        grace_seconds: p.grace_seconds,
        min_runtime_seconds: p.min_runtime_seconds,
    });
    Ok(View {
        kinds,
        total: amounts(s.total),
        agents,
        roles,
        frameworks,
        preemption,
        tasks,
    })
}

/// Borrows the host's C snapshot as a [`View`] (no amount or ID is copied) and checks it.
///
/// # Safety
/// `s` must be valid as `allot_policy.h` describes, for `'a`.
///
/// # Errors
/// [`ERR_INPUT`] for a different ABI version, bad UTF-8, or a view [`View::check`] refuses.
pub unsafe fn read_view<'a>(s: &'a AllotSnapshot) -> Result<View<'a>, i32> {
    // SAFETY: forwarded from the caller.
    let view = unsafe { borrow_view(s) }?;
    view.check().map_err(|_| ERR_INPUT)?;
    Ok(view)
}

/// Converts the host's C snapshot into a [`Snapshot`], with the resource kind names in ABI order (the order
/// the grants are written in).
///
/// # Safety
/// `s` must be valid as `allot_policy.h` describes, for the duration of the call.
///
/// # Errors
/// [`ERR_INPUT`] for a different ABI version, bad UTF-8 or out-of-range indices.
pub unsafe fn read_snapshot(s: &AllotSnapshot) -> Result<(Snapshot, Vec<String>), i32> {
    // SAFETY: forwarded from the caller.
    let view = unsafe { borrow_view(s) }?;
    let snapshot = view.to_snapshot().map_err(|_| ERR_INPUT)?;
    Ok((snapshot, view.kinds.iter().map(|k| k.to_string()).collect()))
}

/// Writes index-form `grants` over a snapshot of `n_agents` agents and `n_frameworks` frameworks into `out`.
///
/// # Safety
/// `out` and the arrays it points to must be valid as `allot_policy.h` describes.
///
/// # Errors
/// [`ERR_CAPACITY`] when there are more grants than room; [`ERR_INPUT`] for an index beyond the snapshot.
pub unsafe fn write_indexed_grants(
    n_agents: usize,
    n_frameworks: usize,
    n_kinds: usize,
    grants: &IndexedGrants,
    out: &mut AllotGrants,
) -> Result<(), i32> {
    if grants.len() > out.capacity as usize {
        return Err(ERR_CAPACITY);
    }
    // SAFETY: the host made `capacity` entries, each pointing at `n_kinds` writable i64s.
    let slots = unsafe { std::slice::from_raw_parts_mut(out.grants, out.capacity as usize) };
    for (slot, (f, a, res, rsv)) in slots.iter_mut().zip(grants.iter()) {
        if f as usize >= n_frameworks || a as usize >= n_agents {
            return Err(ERR_INPUT);
        }
        (slot.framework, slot.agent) = (f, a);
        unsafe { std::slice::from_raw_parts_mut(slot.resources, n_kinds) }.copy_from_slice(res);
        unsafe { std::slice::from_raw_parts_mut(slot.reserved, n_kinds) }.copy_from_slice(rsv);
    }
    out.len = grants.len() as u32;
    Ok(())
}

/// Writes `grants` over `snapshot` into `out`, amounts in the order of `kinds`.
///
/// # Safety
/// `out` and the arrays it points to must be valid as `allot_policy.h` describes.
///
/// # Errors
/// As [`write_indexed_grants`].
pub unsafe fn write_grants(
    snapshot: &Snapshot,
    kinds: &[String],
    grants: &[Grant],
    out: &mut AllotGrants,
) -> Result<(), i32> {
    let indexed = IndexedGrants::from_grants(grants, kinds);
    let (na, nf) = (snapshot.agents.len(), snapshot.frameworks.len());
    // SAFETY: forwarded from the caller.
    unsafe { write_indexed_grants(na, nf, kinds.len(), &indexed, out) }
}

/// Runs `body` on the host's snapshot and answer buffer (grants or revocations), checking both pointers for
/// null and turning a panic into [`ERR_PANIC`]: the frame of every `allot_policy_allocate` and
/// `allot_policy_revoke`.
///
/// # Safety
/// `snapshot` and `out` must be valid as `allot_policy.h` describes.
unsafe fn guarded<O>(
    snapshot: *const AllotSnapshot,
    out: *mut O,
    body: impl FnOnce(&AllotSnapshot, &mut O) -> Result<(), i32>,
) -> i32 {
    if snapshot.is_null() || out.is_null() {
        return ERR_INPUT;
    }
    let run = std::panic::AssertUnwindSafe(|| {
        // SAFETY: checked non-null above; validity is the host's promise.
        let (s, out) = unsafe { (&*snapshot, &mut *out) };
        body(s, out)
    });
    match std::panic::catch_unwind(run) {
        Ok(Ok(())) => OK,
        Ok(Err(code)) => code,
        Err(_) => ERR_PANIC,
    }
}

/// Runs index-form `policy` on the host's snapshot, read in place, and writes its grants: the body of
/// `allot_policy_allocate` for an [`IndexedPolicy`]. A panic inside the policy is caught and reported as
/// [`ERR_PANIC`].
///
/// # Safety
/// `snapshot` and `out` must be valid as `allot_policy.h` describes.
pub unsafe fn allocate_indexed(
    policy: &mut dyn IndexedPolicy,
    snapshot: *const AllotSnapshot,
    out: *mut AllotGrants,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        guarded(snapshot, out, |s, out| {
            let view = read_view(s)?;
            let grants = policy.allocate_indexed(&view);
            let (na, nf, nk) = (view.agents.len(), view.frameworks.len(), view.kinds.len());
            write_indexed_grants(na, nf, nk, &grants, out)
        })
    }
}

/// Runs `policy` on the host's snapshot and writes its grants: the body of `allot_policy_allocate` for a
/// Rust policy. A panic inside the policy is caught and reported as [`ERR_PANIC`].
///
/// # Safety
/// `snapshot` and `out` must be valid as `allot_policy.h` describes.
pub unsafe fn allocate(
    policy: &mut dyn Policy,
    snapshot: *const AllotSnapshot,
    out: *mut AllotGrants,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        guarded(snapshot, out, |s, out| {
            let (snap, kinds) = read_snapshot(s)?;
            let grants = policy.allocate(&snap);
            write_grants(&snap, &kinds, &grants, out)
        })
    }
}

/// Writes `revocations` over a snapshot of `n_tasks` tasks into `out`, each message cut to fit
/// [`MESSAGE_BYTES`] (at a character boundary, its NUL included).
///
/// # Safety
/// `out` and the message buffers it points to must be valid as `allot_policy.h` describes.
///
/// # Errors
/// [`ERR_CAPACITY`] when there are more revocations than room; [`ERR_INPUT`] for a task index beyond the
/// snapshot's.
pub unsafe fn write_revocations(
    n_tasks: usize,
    revocations: &[Revocation],
    out: &mut AllotRevocations,
) -> Result<(), i32> {
    if revocations.len() > out.capacity as usize {
        return Err(ERR_CAPACITY);
    }
    // SAFETY: the host made `capacity` entries, each pointing at MESSAGE_BYTES writable bytes.
    let slots = unsafe { std::slice::from_raw_parts_mut(out.revocations, out.capacity as usize) };
    for (slot, r) in slots.iter_mut().zip(revocations) {
        if r.task >= n_tasks {
            return Err(ERR_INPUT);
        }
        slot.task = r.task as u32;
        let mut end = r.message.len().min(MESSAGE_BYTES as usize - 1);
        while !r.message.is_char_boundary(end) {
            end -= 1;
        }
        let buf = unsafe {
            std::slice::from_raw_parts_mut(slot.message.cast::<u8>(), MESSAGE_BYTES as usize)
        };
        buf[..end].copy_from_slice(&r.message.as_bytes()[..end]);
        buf[end] = 0;
    }
    out.len = revocations.len() as u32;
    Ok(())
}

/// Runs index-form `policy`'s [`IndexedPolicy::revoke_indexed`] on the host's snapshot, read in place, and
/// writes its revocations: the body of `allot_policy_revoke` for an [`IndexedPolicy`]. A panic is reported as
/// [`ERR_PANIC`].
///
/// # Safety
/// `snapshot` and `out` must be valid as `allot_policy.h` describes.
pub unsafe fn revoke_indexed(
    policy: &mut dyn IndexedPolicy,
    snapshot: *const AllotSnapshot,
    out: *mut AllotRevocations,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        guarded(snapshot, out, |s, out| {
            let view = read_view(s)?;
            write_revocations(view.tasks.len(), &policy.revoke_indexed(&view), out)
        })
    }
}

/// Runs `policy`'s [`Policy::revoke`] on the host's snapshot and writes its revocations: the body of
/// `allot_policy_revoke` for a Rust policy. A panic is reported as [`ERR_PANIC`].
///
/// # Safety
/// `snapshot` and `out` must be valid as `allot_policy.h` describes.
pub unsafe fn revoke(
    policy: &mut dyn Policy,
    snapshot: *const AllotSnapshot,
    out: *mut AllotRevocations,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        guarded(snapshot, out, |s, out| {
            let (snap, _) = read_snapshot(s)?;
            write_revocations(snap.tasks.len(), &policy.revoke(&snap), out)
        })
    }
}
