//! The broker: its state behind one lock, its two links, the etcd store, and what every flow shares.
//!
//! Each flow (`offers.rs`, `updates.rs`, `scheduler.rs`, `recovery.rs`, `views.rs`) is an `impl Broker` block
//! that reads: lock, ask [`State`], do I/O (etcd, the allocator, agents) without the lock, and commit under
//! the lock again. The lock is a `std::sync::Mutex`, never held across an `.await`.

use crate::error::Error;
use crate::link::agents::{AgentLink, Killed};
use crate::link::allocator::AllocatorLink;
use crate::metrics::M;
use crate::state::State;
use allot_proto::common::{AgentRecord, TaskState, TaskStatus};
use allot_proto::scheduler::event;
use allot_server::Store;
use allot_server::store::Kind;
use allot_telemetry::propagation;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// The offer-broker. Shared behind an `Arc` by every gRPC service and background task.
pub struct Broker {
    pub(crate) store: Store,
    pub(crate) heartbeat_interval: Duration,
    state: Mutex<State>,
    /// The leading allocator replica's calls.
    pub(crate) allocator: AllocatorLink,
    /// Agents' calls.
    pub(crate) agents: AgentLink,
    /// Held by whoever writes task records from memory (the flush and the broker's own updates), so that an
    /// older snapshot of a task never overwrites a newer one in etcd. The ACCEPT's TASK_STAGING writes need
    /// not: they create keys that nothing else writes yet.
    pub(crate) task_writes: tokio::sync::Mutex<()>,
    /// The ACCEPTs' TASK_STAGING records, written together with those of concurrent ACCEPTs.
    pub(crate) staging: allot_server::store::GroupCommit,
    /// Woken when acknowledgements are ready for agents ([`Broker::pass_acks`]).
    pub(crate) acks_ready: tokio::sync::Notify,
}

impl Broker {
    /// A broker over `store` that takes decisions from the leading replica of `allocators`, reaches agents
    /// through `dialer` and sends a HEARTBEAT to each framework every `heartbeat_interval`. Must be called
    /// within a Tokio runtime (it starts the group committer of TASK_STAGING writes and the allocator link's
    /// senders).
    pub fn new(
        store: Store,
        allocators: allot_common::grpc::Replicas,
        dialer: allot_common::grpc::Dialer,
        heartbeat_interval: Duration,
    ) -> Self {
        Self {
            staging: allot_server::store::GroupCommit::start(store.clone()),
            store,
            heartbeat_interval,
            state: Mutex::new(State::default()),
            allocator: AllocatorLink::start(allocators),
            agents: AgentLink::new(dialer),
            task_writes: tokio::sync::Mutex::new(()),
            acks_ready: tokio::sync::Notify::new(),
        }
    }

    /// The state, locked. Never hold the guard across an `.await`.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("broker state poisoned")
    }

    /// Sends `ev` to framework `fw` if it is connected. Returns whether it was sent.
    pub(crate) fn send(&self, fw: &str, ev: event::Event) -> bool {
        self.lock().send(fw, ev)
    }

    /// Sends each status as an UPDATE to its framework, if connected, under one lock; each event carries the
    /// current span's trace context, so that the framework continues the task's trace.
    pub(crate) fn send_updates(&self, statuses: impl IntoIterator<Item = TaskStatus>) {
        let trace_context = propagation::current_map();
        self.lock().send_updates(statuses, &trace_context);
    }

    /// The gRPC address of agent `agent_id`, from the cached record or, when the cache has not caught up, from
    /// etcd.
    pub(crate) async fn agent_address(&self, agent_id: &str) -> Option<String> {
        let cached = self
            .lock()
            .agents
            .get(agent_id)
            .and_then(|a| a.info.as_ref().map(|i| i.address.clone()));
        match cached {
            Some(a) => Some(a),
            None => {
                let key = self.store.key(Kind::Agents, agent_id);
                let (rec, _) = self.store.get::<AgentRecord>(&key).await.ok()??;
                Some(rec.info?.address)
            }
        }
    }

    /// Asks agent `agent_id` (found by [`Broker::agent_address`]) to kill `(framework, task)`; `why` is the
    /// `(reason, message)` its final status carries (e.g. `REASON_PREEMPTED`; empty: `REASON_TASK_KILLED`).
    ///
    /// # Errors
    /// As [`AgentLink::kill`].
    pub(crate) async fn kill_on_agent(
        &self,
        agent_id: &str,
        task: (&str, &str),
        why: (&str, &str),
    ) -> Result<Killed, Error> {
        let addr = self.agent_address(agent_id).await;
        self.agents.kill(agent_id, addr.as_deref(), task, why).await
    }

    /// Groups `items`, each with its agent, by the agent's address (a simulator serves many agents at one
    /// address): one pass over the cached agent records, then one etcd read per agent the cache has not seen
    /// yet. Items of agents unknown to both come back apart, by agent.
    pub(crate) async fn by_address<T>(
        &self,
        items: Vec<(String, T)>,
    ) -> (HashMap<String, Vec<T>>, HashMap<String, Vec<T>>) {
        let mut grouped: HashMap<String, Vec<T>> = HashMap::new();
        let mut missing: HashMap<String, Vec<T>> = HashMap::new();
        {
            let state = self.lock();
            for (agent, item) in items {
                match state.agents.get(&agent).and_then(|a| a.info.as_ref()) {
                    Some(info) => grouped.entry(info.address.clone()).or_default().push(item),
                    None => missing.entry(agent).or_default().push(item),
                }
            }
        }
        let mut unknown = HashMap::new();
        for (agent, items) in missing {
            match self.agent_address(&agent).await {
                Some(addr) => grouped.entry(addr).or_default().extend(items),
                None => {
                    unknown.insert(agent, items);
                }
            }
        }
        (grouped, unknown)
    }

    /// Sets the gauges from the broker's state: offers outstanding, tasks by state, connections, agents.
    pub(crate) fn refresh_gauges(&self) {
        let state = self.lock();
        M.outstanding.set(state.offers.len() as f64);
        M.connected.set(
            state
                .frameworks
                .values()
                .filter(|f| f.sender.is_some())
                .count() as f64,
        );
        M.agents_alive.set(state.alive.len() as f64);
        let mut by_state: BTreeMap<&str, u64> = (0..32)
            .filter_map(|n| TaskState::try_from(n).ok())
            .map(|s| (s.as_str_name(), 0))
            .collect();
        for t in state.tasks.values() {
            if let Some(s) = &t.status {
                *by_state.entry(s.state().as_str_name()).or_default() += 1;
            }
        }
        for (state, n) in by_state {
            M.tasks.with_label_values(&[state]).set(n as f64);
        }
    }
}

/// Marks the current span failed (`otel.status_code = ERROR`): a flow calls it on the error it returns.
pub(crate) fn span_failed<E>(_: &E) {
    tracing::Span::current().record("otel.status_code", "ERROR");
}
