//! The WebAssembly policy host: components of the `allot:policy@0.1.0` world (`plugins/wit/policy.wit`),
//! compiled and run with wasmtime.
//!
//! Every call runs in a fresh store, so a policy keeps no state between cycles and a trap cannot poison the
//! next call. The sandbox:
//! - no imports at all: a component that imports anything (WASI, a clock, a socket) fails to load;
//! - an epoch deadline per call: a ticker thread advances the engine's epoch every [`TICK`], and a call still
//!   running at its deadline traps with an interrupt ([`WasmError::Timeout`]);
//! - a memory cap per store ([`Limits::memory_bytes`]): growing past it traps ([`WasmError::Trap`]).
//!
//! The snapshot goes in and the grants come out in the index form of [`allot_policy::indexed`]; every grant's
//! indices and amounts are checked on the way back ([`WasmError::BadGrant`]). The allocator then validates
//! grants against its books like those of any policy.

use allot_policy::{Grant, Snapshot, indexed};
use std::sync::OnceLock;
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
    });
}

use bindings::allot::policy::types as wit;

/// How often the epoch ticker advances the engine's epoch: the resolution of call deadlines.
pub const TICK: Duration = Duration::from_millis(5);

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
    /// The component does not target `allot:policy@0.1.0`'s `policy` world, or imports something.
    #[error(
        "the component does not implement allot:policy@0.1.0 (world `policy`) without imports: {0}"
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
}

/// The process-wide engine, with epoch interruption on and its ticker thread running.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
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

/// A compiled WASM policy, ready to be instantiated for each call. Cheap to clone.
#[derive(Clone)]
pub struct WasmPolicy {
    pre: bindings::PolicyPre<State>,
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
    /// Compiles the component in `bytes`, checks that it targets the `policy` world with no imports, and
    /// asks its name (within `deadline`).
    ///
    /// # Errors
    /// [`WasmError::Compile`] for bytes that are not a component, [`WasmError::Interface`] for another world
    /// or any import, and the errors of a call for a `name` that traps or loops.
    pub fn load(bytes: &[u8], limits: Limits, deadline: Duration) -> Result<Self, WasmError> {
        let engine = engine();
        let component =
            Component::new(engine, bytes).map_err(|e| WasmError::Compile(format!("{e:#}")))?;
        let linker: Linker<State> = Linker::new(engine);
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| WasmError::Interface(format!("{e:#}")))?;
        let pre =
            bindings::PolicyPre::new(pre).map_err(|e| WasmError::Interface(format!("{e:#}")))?;
        let mut policy = Self {
            pre,
            limits,
            name: String::new(),
        };
        let (mut store, instance) = policy.instantiate(deadline)?;
        policy.name = instance
            .allot_policy_allocator()
            .call_name(&mut store)
            .map_err(|e| describe(e, deadline))?;
        Ok(policy)
    }

    fn instantiate(
        &self,
        deadline: Duration,
    ) -> Result<(Store<State>, bindings::Policy), WasmError> {
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
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| describe(e, deadline))?;
        Ok((store, instance))
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
        let input = to_wit(snap, &layout);
        let (mut store, instance) = self.instantiate(deadline)?;
        let grants = instance
            .allot_policy_allocator()
            .call_allocate(&mut store, &input)
            .map_err(|e| describe(e, deadline))?
            .map_err(WasmError::Error)?;
        let mut reader = indexed::GrantReader::new(snap, &layout.kinds);
        grants
            .iter()
            .enumerate()
            .map(|(i, g)| reader.read(i, g.framework, g.agent, &g.resources, &g.reserved))
            .collect::<Result<_, _>>()
            .map_err(WasmError::BadGrant)
    }
}

fn to_wit(snap: &Snapshot, l: &indexed::Layout) -> wit::Snapshot {
    let amounts = |at: usize| l.amounts(at).to_vec();
    wit::Snapshot {
        kinds: l.kinds.clone(),
        total: amounts(l.total),
        agents: snap
            .agents
            .iter()
            .zip(&l.agents)
            .map(|(a, (total, available, res))| wit::Agent {
                id: a.id.clone(),
                total: amounts(*total),
                available: amounts(*available),
                reserved: l.reservations[res.clone()]
                    .iter()
                    .map(|&(role, at)| wit::Reservation {
                        role,
                        available: amounts(at),
                    })
                    .collect(),
            })
            .collect(),
        roles: l
            .roles
            .iter()
            .map(|(name, weight, limit, allocation)| wit::Role {
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
            .map(|(f, (role, allocation, filtered))| wit::Framework {
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
