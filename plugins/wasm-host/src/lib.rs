//! The WebAssembly policy host: components of the `allot:policy` world, compiled and run with wasmtime.
//!
//! Every released version of the interface keeps loading ([`INTERFACES`]): each lives frozen in its own
//! folder of `plugins/wit/` (`0.1.0/policy.wit`, `0.2.0/policy.wit`, `0.3.0/policy.wit`), the host has
//! bindings for each, and a component is run through the bindings of the version it exports
//! (`allot:policy/allocator@<version>`). A new version sits beside the older ones; none is ever edited in
//! place. Only 0.3.0 has `revoke` (preemption): a component of an older version never preempts.
//!
//! Every call runs in a fresh store and instance (its linear memory zeroed, taken from a pool of slots kept
//! mapped between calls, see [`KEEP_RESIDENT`]), so a policy keeps no state between cycles and a trap cannot
//! poison the next call. The sandbox:
//! - no imports at all: a component that imports anything (WASI, a clock, a socket) fails to load;
//! - an epoch deadline per call: a ticker thread advances the engine's epoch every [`TICK`], and a call still
//!   running at its deadline traps with an interrupt ([`WasmError::Timeout`]);
//! - a memory cap per store ([`Limits::memory_bytes`]): growing past it traps ([`WasmError::Trap`]).
//!
//! The snapshot goes in and the grants come out in the index form of [`allot_policy::indexed`], flat: the
//! [`indexed::Layout`]'s one vector of amounts moves into the WIT record as it is, and records point into it
//! by offset. Every grant's indices and amounts are checked on the way back ([`WasmError::BadGrant`]). The
//! allocator then validates grants against its books like those of any policy.

use allot_policy::{Grant, Revocation, Snapshot, indexed};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, Trap,
};

/// Bindings of `allot:policy@0.1.0` (frozen): a list per amount vector, a string per ID.
mod v0_1_0 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "policy",
    });
}

/// Bindings of `allot:policy@0.2.0` (frozen): the flat layout.
mod v0_2_0 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "policy",
    });
}

/// Bindings of `allot:policy@0.3.0`: the flat layout, guarantees, tasks and `revoke`.
mod v0_3_0 {
    wasmtime::component::bindgen!({
        path: "../wit/0.3.0",
        world: "policy",
    });
}

use v0_3_0::allot::policy::types as wit;

/// The interface versions this host loads, oldest first. A component exports the `allocator` interface of
/// exactly one of them.
pub const INTERFACES: [&str; 3] = [
    "allot:policy@0.1.0",
    "allot:policy@0.2.0",
    "allot:policy@0.3.0",
];

/// How often the epoch ticker advances the engine's epoch: the resolution of call deadlines.
pub const TICK: Duration = Duration::from_millis(5);

/// How many policy calls (and loads) may run at once in this process; more wait for one to end, within their
/// deadline. An allocator runs at most three (the active policy, a shadow, an activation trial).
pub const CONCURRENT_CALLS: usize = 8;

/// How much of an instance's linear memory stays mapped for the next call, in bytes (16 MiB; `drf` at
/// 50,000 agents x 1,000 frameworks peaks under 10 MiB): it is zeroed with memset instead of being unmapped,
/// so calls do not pay a page fault per 4 KiB touched. At most `2 * CONCURRENT_CALLS` such slots exist.
pub const KEEP_RESIDENT: usize = 16 << 20;

/// The sandbox limits of one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most linear memory a call may use, in bytes (default 512 MiB).
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
        }
    }
}

/// Why a WASM policy could not be loaded or called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WasmError {
    /// The bytes are not a valid component.
    #[error("not a loadable WASM component: {0}")]
    Compile(String),
    /// The component does not target the `policy` world of a version in [`INTERFACES`], or imports
    /// something.
    #[error(
        "the component does not implement allot:policy@0.1.0, 0.2.0 or 0.3.0 (world `policy`) without imports: {0}"
    )]
    Interface(String),
    /// The policy trapped (unreachable, out of bounds, out of memory, ...).
    #[error("the policy trapped: {0}")]
    Trap(String),
    /// The policy did not return before its deadline.
    #[error("the policy did not answer within {0:?}")]
    Timeout(Duration),
    /// The policy returned an error.
    #[error("the policy returned an error: {0}")]
    Error(String),
    /// The policy returned a grant that names no framework or agent of the snapshot, or bad amounts.
    #[error("the policy returned a malformed grant: {0}")]
    BadGrant(String),
    /// The policy revoked a task index the snapshot does not have.
    #[error("the policy returned a malformed revocation: {0}")]
    BadRevocation(String),
}

/// The process-wide engine, with epoch interruption on and its ticker thread running.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // Instances come from a pool of slots whose memory stays mapped between calls (reset with memset up
        // to KEEP_RESIDENT): a fresh mapping per call cost about 1 ms of page faults at 10,000 agents. Two
        // slots of each kind per permit (a component may hold more than one core instance or memory).
        let mut pool = PoolingAllocationConfig::new();
        let slots = 2 * CONCURRENT_CALLS as u32;
        pool.total_component_instances(slots)
            .total_core_instances(4 * slots)
            .total_memories(slots)
            .total_tables(slots)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).expect("a wasmtime engine with default settings");
        let ticker = engine.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    ticker.increment_epoch();
                }
            })
            .expect("start the epoch ticker thread");
        engine
    })
}

struct State {
    limits: StoreLimits,
}

/// The permits of [`CONCURRENT_CALLS`]: a call waits for one (within its deadline) before it instantiates.
static PERMITS: (Mutex<usize>, Condvar) = (Mutex::new(CONCURRENT_CALLS), Condvar::new());

/// One of the [`CONCURRENT_CALLS`] permits, given back when dropped.
struct Permit;

impl Permit {
    fn acquire(deadline: Duration) -> Result<Self, WasmError> {
        let (lock, freed) = &PERMITS;
        let free = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (mut free, waited) = freed
            .wait_timeout_while(free, deadline, |free| *free == 0)
            .unwrap_or_else(|e| e.into_inner());
        if waited.timed_out() && *free == 0 {
            return Err(WasmError::Timeout(deadline));
        }
        *free -= 1;
        Ok(Permit)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let (lock, freed) = &PERMITS;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        freed.notify_one();
    }
}

/// A component ready to instantiate, through the bindings of its interface version.
#[derive(Clone)]
enum Pre {
    V0_1(v0_1_0::PolicyPre<State>),
    V0_2(v0_2_0::PolicyPre<State>),
    V0_3(v0_3_0::PolicyPre<State>),
}

/// A live instance of either version.
enum Instance {
    V0_1(v0_1_0::Policy),
    V0_2(v0_2_0::Policy),
    V0_3(v0_3_0::Policy),
}

/// A live instance: its store, dropped (giving the pool slot back) before the permit.
struct Call {
    store: Store<State>,
    instance: Instance,
    _permit: Permit,
}

impl Call {
    /// The policy's `name`.
    fn name(&mut self) -> wasmtime::Result<String> {
        match &self.instance {
            Instance::V0_1(i) => i.allot_policy_allocator().call_name(&mut self.store),
            Instance::V0_2(i) => i.allot_policy_allocator().call_name(&mut self.store),
            Instance::V0_3(i) => i.allot_policy_allocator().call_name(&mut self.store),
        }
    }
}

/// A compiled WASM policy, ready to be instantiated for each call. Cheap to clone.
#[derive(Clone)]
pub struct WasmPolicy {
    pre: Pre,
    limits: Limits,
    name: String,
}

impl std::fmt::Debug for WasmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPolicy")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish()
    }
}

fn describe(e: wasmtime::Error, deadline: Duration) -> WasmError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => WasmError::Timeout(deadline),
        Some(t) => WasmError::Trap(t.to_string()),
        None => WasmError::Trap(format!("{e:#}")),
    }
}

impl WasmPolicy {
    /// Compiles the component in `bytes`, checks that it targets the `policy` world of a version in
    /// [`INTERFACES`] with no imports, and asks its name (within `deadline`).
    ///
    /// # Errors
    /// [`WasmError::Compile`] for bytes that are not a component, [`WasmError::Interface`] for another world
    /// or version, or any import, and the errors of a call for a `name` that traps or loops.
    pub fn load(bytes: &[u8], limits: Limits, deadline: Duration) -> Result<Self, WasmError> {
        let engine = engine();
        let component =
            Component::new(engine, bytes).map_err(|e| WasmError::Compile(format!("{e:#}")))?;
        let version = exported_version(engine, &component)?;
        let linker: Linker<State> = Linker::new(engine);
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| WasmError::Interface(format!("{e:#}")))?;
        let interface = |e: wasmtime::Error| WasmError::Interface(format!("{e:#}"));
        let pre = match version.as_str() {
            "0.1.0" => Pre::V0_1(v0_1_0::PolicyPre::new(pre).map_err(interface)?),
            "0.2.0" => Pre::V0_2(v0_2_0::PolicyPre::new(pre).map_err(interface)?),
            _ => Pre::V0_3(v0_3_0::PolicyPre::new(pre).map_err(interface)?),
        };
        let mut policy = Self {
            pre,
            limits,
            name: String::new(),
        };
        let mut call = policy.instantiate(deadline)?;
        policy.name = call.name().map_err(|e| describe(e, deadline))?;
        Ok(policy)
    }

    /// The interface version the component implements, one of [`INTERFACES`] (e.g. `allot:policy@0.1.0`).
    pub fn interface(&self) -> &'static str {
        match self.pre {
            Pre::V0_1(_) => INTERFACES[0],
            Pre::V0_2(_) => INTERFACES[1],
            Pre::V0_3(_) => INTERFACES[2],
        }
    }

    /// Whether the component can preempt: its interface version has `revoke` (0.3.0 and later).
    pub fn revokes(&self) -> bool {
        matches!(self.pre, Pre::V0_3(_))
    }

    fn instantiate(&self, deadline: Duration) -> Result<Call, WasmError> {
        let permit = Permit::acquire(deadline)?;
        let mut store = Store::new(
            engine(),
            State {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.limits.memory_bytes)
                    .trap_on_grow_failure(true)
                    .build(),
            },
        );
        store.limiter(|s| &mut s.limits);
        // The ticker's phase is arbitrary: its first tick may come right after this call starts, so one tick
        // more than the deadline holds keeps the call from being interrupted before its deadline.
        let ticks = deadline.as_nanos().div_ceil(TICK.as_nanos()) as u64 + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let instance = match &self.pre {
            Pre::V0_1(pre) => pre.instantiate(&mut store).map(Instance::V0_1),
            Pre::V0_2(pre) => pre.instantiate(&mut store).map(Instance::V0_2),
            Pre::V0_3(pre) => pre.instantiate(&mut store).map(Instance::V0_3),
        }
        .map_err(|e| describe(e, deadline))?;
        Ok(Call {
            store,
            instance,
            _permit: permit,
        })
    }

    /// The name the component reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs one cycle over `snap` in a fresh instance, trapping it at `deadline`.
    ///
    /// # Errors
    /// [`WasmError::Trap`], [`WasmError::Timeout`], [`WasmError::Error`] (the policy's own `err`) and
    /// [`WasmError::BadGrant`].
    pub fn allocate(&self, snap: &Snapshot, deadline: Duration) -> Result<Vec<Grant>, WasmError> {
        let layout = indexed::Layout::new(snap);
        if let Pre::V0_1(_) = &self.pre {
            return self.allocate_v0_1(snap, layout, deadline);
        }
        let n = layout.kinds.len();
        let (input, kinds) = to_wit(snap, layout);
        let mut call = self.instantiate(deadline)?;
        let out = match &call.instance {
            Instance::V0_3(i) => i
                .allot_policy_allocator()
                .call_allocate(&mut call.store, &input)
                .map(|r| r.map(|g| (g.framework, g.agent, g.amounts))),
            Instance::V0_2(i) => i
                .allot_policy_allocator()
                .call_allocate(&mut call.store, &to_wit_v0_2(input))
                .map(|r| r.map(|g| (g.framework, g.agent, g.amounts))),
            Instance::V0_1(_) => unreachable!("a 0.1.0 component was called above"),
        };
        let (framework, agent, amounts) = out
            .map_err(|e| describe(e, deadline))?
            .map_err(WasmError::Error)?;
        indexed::IndexedGrants::from_columns(n, framework, agent, amounts)
            .and_then(|grants| grants.to_grants(snap, &kinds))
            .map_err(|e| WasmError::BadGrant(e.to_string()))
    }

    /// The tasks the policy revokes on `snap` (preemption) in a fresh instance, trapping it at `deadline`:
    /// nothing when the snapshot has no preemption settings or the component's interface has no `revoke`
    /// (versions before 0.3.0). Each revocation's task index is checked against `snap.tasks`; the allocator
    /// then checks them against its books like those of any policy.
    ///
    /// # Errors
    /// [`WasmError::Trap`], [`WasmError::Timeout`], [`WasmError::Error`] (the policy's own `err`) and
    /// [`WasmError::BadRevocation`] for a task index beyond the snapshot's tasks.
    pub fn revoke(
        &self,
        snap: &Snapshot,
        deadline: Duration,
    ) -> Result<Vec<Revocation>, WasmError> {
        if snap.preemption.is_none() || !self.revokes() {
            return Ok(Vec::new());
        }
        let (input, _) = to_wit(snap, indexed::Layout::new(snap));
        let mut call = self.instantiate(deadline)?;
        let Instance::V0_3(instance) = &call.instance else {
            unreachable!("only a 0.3.0 component revokes");
        };
        let out = instance
            .allot_policy_allocator()
            .call_revoke(&mut call.store, &input)
            .map_err(|e| describe(e, deadline))?
            .map_err(WasmError::Error)?;
        out.into_iter()
            .enumerate()
            .map(|(i, r)| indexed::read_revocation(i, r.task, r.message, snap.tasks.len()))
            .collect::<Result<_, _>>()
            .map_err(|e| WasmError::BadRevocation(e.to_string()))
    }

    fn allocate_v0_1(
        &self,
        snap: &Snapshot,
        layout: indexed::Layout,
        deadline: Duration,
    ) -> Result<Vec<Grant>, WasmError> {
        let input = to_wit_v0_1(snap, &layout);
        let mut call = self.instantiate(deadline)?;
        let Instance::V0_1(instance) = &call.instance else {
            unreachable!("a 0.1.0 component instantiates as 0.1.0");
        };
        let grants = instance
            .allot_policy_allocator()
            .call_allocate(&mut call.store, &input)
            .map_err(|e| describe(e, deadline))?
            .map_err(WasmError::Error)?;
        let mut reader = indexed::GrantReader::new(snap, &layout.kinds);
        grants
            .iter()
            .enumerate()
            .map(|(i, g)| reader.read(i, g.framework, g.agent, &g.resources, &g.reserved))
            .collect::<Result<_, _>>()
            .map_err(|e| WasmError::BadGrant(e.to_string()))
    }
}

/// The version of `allot:policy` whose `allocator` interface `component` exports (`0.1.0`, `0.2.0`,
/// `0.3.0`).
///
/// # Errors
/// [`WasmError::Interface`] when it exports none, or one of a version this host does not know.
fn exported_version(engine: &Engine, component: &Component) -> Result<String, WasmError> {
    const PREFIX: &str = "allot:policy/allocator@";
    let ty = component.component_type();
    let exported: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let Some(version) = exported.iter().find_map(|e| e.strip_prefix(PREFIX)) else {
        return Err(WasmError::Interface(format!(
            "it exports no {PREFIX}<version> (exports: {})",
            exported.join(", ")
        )));
    };
    if !INTERFACES.contains(&format!("allot:policy@{version}").as_str()) {
        return Err(WasmError::Interface(format!(
            "it exports {PREFIX}{version}; this host loads {}",
            INTERFACES.join(", ")
        )));
    }
    Ok(version.to_string())
}

/// `snap`, laid out in `l`, as the nested records of `allot:policy@0.1.0`: a list per amount vector and a
/// string per ID.
fn to_wit_v0_1(snap: &Snapshot, l: &indexed::Layout) -> v0_1_0::allot::policy::types::Snapshot {
    use v0_1_0::allot::policy::types as old;
    let amounts = |at: usize| l.amounts(at).to_vec();
    old::Snapshot {
        kinds: l.kinds.clone(),
        total: amounts(l.total),
        agents: snap
            .agents
            .iter()
            .zip(&l.agents)
            .map(|(a, (total, available, res))| old::Agent {
                id: a.id.clone(),
                total: amounts(*total),
                available: amounts(*available),
                reserved: l.reservations[res.clone()]
                    .iter()
                    .map(|&(role, at)| old::Reservation {
                        role,
                        available: amounts(at),
                    })
                    .collect(),
            })
            .collect(),
        roles: l
            .roles
            .iter()
            .map(|(name, weight, limit, allocation)| old::Role {
                name: name.clone(),
                weight: *weight,
                quota_limit: limit.map(amounts),
                allocation: amounts(*allocation),
            })
            .collect(),
        frameworks: snap
            .frameworks
            .iter()
            .zip(&l.frameworks)
            .map(|(f, (role, allocation, filtered))| old::Framework {
                id: f.id.clone(),
                role: *role,
                priority: f.priority,
                allocations: f.allocations,
                allocation: amounts(*allocation),
                filtered: l.filtered[filtered.clone()].to_vec(),
            })
            .collect(),
    }
}

/// `snap`, laid out in `l`, as the flat WIT record (the layout's amounts move into it), and its kinds.
fn to_wit(snap: &Snapshot, l: indexed::Layout) -> (wit::Snapshot, Vec<String>) {
    // Offsets beyond u32 (a snapshot of billions of amounts) saturate; the guest then finds them out of range.
    let at = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    let span = |r: std::ops::Range<usize>| wit::Span {
        start: at(r.start),
        end: at(r.end),
    };
    let mut names = String::new();
    let mut id = Vec::with_capacity(snap.agents.len() + 1);
    id.push(0);
    let mut reservations = Vec::with_capacity(snap.agents.len() + 1);
    reservations.push(0);
    let (mut total, mut available) = (
        Vec::with_capacity(snap.agents.len()),
        Vec::with_capacity(snap.agents.len()),
    );
    for (a, (t, av, res)) in snap.agents.iter().zip(&l.agents) {
        names.push_str(&a.id);
        id.push(at(names.len()));
        total.push(at(*t));
        available.push(at(*av));
        reservations.push(at(res.end));
    }
    let agents = wit::Agents {
        id,
        total,
        available,
        reservations,
        reservation_role: l.reservations.iter().map(|r| r.0).collect(),
        reservation_available: l.reservations.iter().map(|r| at(r.1)).collect(),
    };
    let mut name = |s: &str| {
        let start = names.len();
        names.push_str(s);
        span(start..names.len())
    };
    let roles = l
        .roles
        .iter()
        .zip(&l.guarantees)
        .map(|((role, weight, limit, allocation), guarantee)| wit::Role {
            name: name(role),
            weight: *weight,
            quota_limit: limit.map(at),
            quota_guarantee: guarantee.map(at),
            allocation: at(*allocation),
        })
        .collect();
    let frameworks = snap
        .frameworks
        .iter()
        .zip(&l.frameworks)
        .map(|(f, (role, allocation, filtered))| wit::Framework {
            id: name(&f.id),
            role: *role,
            priority: f.priority,
            allocations: f.allocations,
            allocation: at(*allocation),
            filtered: span(filtered.clone()),
            starved_seconds: f.starved_seconds,
        })
        .collect();
    let tasks = snap
        .tasks
        .iter()
        .zip(&l.tasks)
        .map(|(t, &(role, resources))| wit::Task {
            id: name(&t.id),
            framework: name(&t.framework),
            agent: name(&t.agent),
            role,
            priority: t.priority,
            resources: at(resources),
            running_seconds: t.running_seconds,
        })
        .collect();
    let input = wit::Snapshot {
        kinds: l.kinds.clone(),
        amounts: l.flat,
        names,
        total: at(l.total),
        agents,
        roles,
        frameworks,
        filtered: l.filtered,
        preemption: snap.preemption.map(|p| wit::Preemption {
            grace_seconds: p.grace_seconds,
            min_runtime_seconds: p.min_runtime_seconds,
        }),
        tasks,
    };
    (input, l.kinds)
}

/// A 0.3.0 snapshot as the frozen 0.2.0 record: the same flat layout without guarantees, starvation,
/// preemption settings and tasks (every column moves as it is).
fn to_wit_v0_2(s: wit::Snapshot) -> v0_2_0::allot::policy::types::Snapshot {
    use v0_2_0::allot::policy::types as old;
    let span = |r: wit::Span| old::Span {
        start: r.start,
        end: r.end,
    };
    let a = s.agents;
    old::Snapshot {
        kinds: s.kinds,
        amounts: s.amounts,
        names: s.names,
        total: s.total,
        agents: old::Agents {
            id: a.id,
            total: a.total,
            available: a.available,
            reservations: a.reservations,
            reservation_role: a.reservation_role,
            reservation_available: a.reservation_available,
        },
        roles: s
            .roles
            .into_iter()
            .map(|r| old::Role {
                name: span(r.name),
                weight: r.weight,
                quota_limit: r.quota_limit,
                allocation: r.allocation,
            })
            .collect(),
        frameworks: s
            .frameworks
            .into_iter()
            .map(|f| old::Framework {
                id: span(f.id),
                role: f.role,
                priority: f.priority,
                allocations: f.allocations,
                allocation: f.allocation,
                filtered: span(f.filtered),
            })
            .collect(),
        filtered: s.filtered,
    }
}
