//! Allot's wire protocol: prost messages and tonic clients and servers for every `allot.<area>.v1` package.
//!
//! Layout: one module per proto package, named after it (`common`, `registry`, `scheduler`, `allocator`,
//! `agent`, `operator`, `leader`). The `.proto` files under `proto/allot/` are the source of truth; their comments give
//! units and semantics.
#![allow(missing_docs, clippy::all)]

mod generated {
    include!(concat!(env!("OUT_DIR"), "/allot.rs"));
}

/// `allot.agent.v1`: launching and killing tasks, and status updates.
pub use generated::allot::agent::v1 as agent;
/// `allot.allocator.v1`: the allocator's API for the offer-broker.
pub use generated::allot::allocator::v1 as allocator;
/// `allot.common.v1`: resources, agents, frameworks, tasks and their states.
pub use generated::allot::common::v1 as common;
/// `allot.leader.v1`: the probe that finds a replicated service's leader.
pub use generated::allot::leader::v1 as leader;
/// `allot.operator.v1`: read-only operator views.
pub use generated::allot::operator::v1 as operator;
/// `allot.registry.v1`: agent admission, liveness and roles.
pub use generated::allot::registry::v1 as registry;
/// `allot.scheduler.v1`: the framework-facing scheduler API.
pub use generated::allot::scheduler::v1 as scheduler;

pub use common::{TaskState, TaskStatus};

impl TaskState {
    /// Whether the state is terminal: the task will never change state again (Mesos' `protobuf::isTerminalState`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::TaskFinished
                | TaskState::TaskFailed
                | TaskState::TaskKilled
                | TaskState::TaskError
                | TaskState::TaskLost
                | TaskState::TaskDropped
                | TaskState::TaskGone
                | TaskState::TaskGoneByOperator
        )
    }
}
