//! The registry's errors. `grpc.rs` maps each to a gRPC status code, and nothing else builds a status.

use allot_server::StoreError;

/// Why a registry call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed request: a missing field, a bad ID, role name, weight or resource list
    /// (`INVALID_ARGUMENT`).
    #[error("{0}")]
    Invalid(String),
    /// A heartbeat from an agent that is not registered or already timed out; it must register again
    /// (`NOT_FOUND`).
    #[error("agent {0} is not registered or missed its heartbeats past agent_timeout; re-register")]
    NotRegistered(String),
    /// etcd could not be reached or refused the write (`UNAVAILABLE`; a corrupt value is `INTERNAL`).
    #[error(transparent)]
    Store(#[from] StoreError),
}
