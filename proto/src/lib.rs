//! Allot's wire protocol: prost messages and tonic clients and servers for every `allot.<area>.v1` package.
//!
//! Layout: one module per proto package, named after it (`common`, `registry`, `scheduler`, `allocator`,
//! `agent`, `operator`). The `.proto` files under `proto/allot/` are the source of truth; their comments give
//! units and semantics.
#![allow(missing_docs, clippy::all)]

/// `allot.common.v1`: resources, agents, frameworks, tasks and their states.
pub mod common {
    tonic::include_proto!("allot.common.v1");
}
/// `allot.registry.v1`: agent admission, liveness and roles.
pub mod registry {
    tonic::include_proto!("allot.registry.v1");
}
/// `allot.scheduler.v1`: the framework-facing scheduler API.
pub mod scheduler {
    tonic::include_proto!("allot.scheduler.v1");
}
/// `allot.allocator.v1`: the allocator's API for the offer-broker.
pub mod allocator {
    tonic::include_proto!("allot.allocator.v1");
}
/// `allot.agent.v1`: launching and killing tasks, and status updates.
pub mod agent {
    tonic::include_proto!("allot.agent.v1");
}
/// `allot.operator.v1`: read-only operator views.
pub mod operator {
    tonic::include_proto!("allot.operator.v1");
}

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
