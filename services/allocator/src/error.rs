//! The allocator's errors, typed once: [`Failure`] (a policy call that failed), [`LoadError`] (an artifact
//! that cannot be read, fetched or loaded), [`TrialError`] (a policy that failed its trial run) and
//! [`Error`], every way an allocator call can be refused. `grpc.rs` maps [`Error`] to gRPC status codes, and
//! nothing else builds a status.

use allot_policy_abi::host::AbiError;
use allot_policy_wasm::WasmError;
use allot_server::StoreError;
use std::path::PathBuf;
use std::time::Duration;

/// Why a policy call failed. The engine then decides the cycle with the last good policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The policy reported an error.
    Error(String),
    /// The policy did not answer before the deadline.
    Timeout(Duration),
    /// The policy panicked.
    Panic(String),
    /// A WASM policy trapped (unreachable, out-of-bounds access, memory cap reached, ...).
    Trap(String),
    /// The policy returned something that is not a list of grants over the snapshot.
    Malformed(String),
}

impl Failure {
    /// A short label for counters: `error`, `timeout`, `panic`, `trap`, `malformed`.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Error(_) => "error",
            Failure::Timeout(_) => "timeout",
            Failure::Panic(_) => "panic",
            Failure::Trap(_) => "trap",
            Failure::Malformed(_) => "malformed",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(m) => write!(f, "error: {m}"),
            Failure::Timeout(d) => write!(f, "no answer within {d:?}"),
            Failure::Panic(m) => write!(f, "panic: {m}"),
            Failure::Trap(m) => write!(f, "trap: {m}"),
            Failure::Malformed(m) => write!(f, "malformed output: {m}"),
        }
    }
}

impl std::error::Error for Failure {}

/// Why a policy artifact cannot be read, fetched from etcd, cached or loaded on this replica.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes start like neither an ELF shared library nor a WASM component.
    #[error("the artifact is neither an ELF shared library nor a WASM component")]
    NotAnArtifact,
    /// A file of the artifact cache (or the file given) cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A native library with another ABI version, missing symbols, or that cannot be opened.
    #[error(transparent)]
    Native(#[from] AbiError),
    /// A WASM component for another interface version, with imports, or whose `name` traps or loops.
    #[error(transparent)]
    Wasm(#[from] WasmError),
    /// The active-policy record names no policy.
    #[error("the record names no policy")]
    NoReference,
    /// A record names a built-in policy this allocator does not have.
    #[error("no built-in policy '{0}'")]
    NoBuiltin(String),
    /// No artifact with this sha256 is stored in etcd.
    #[error("no artifact with sha256 {0} is stored")]
    Unknown(String),
    /// Some of the artifact's chunks are missing from etcd.
    #[error("artifact {sha256} has {have} of its {chunks} chunks")]
    Incomplete {
        /// The artifact.
        sha256: String,
        /// Chunks found.
        have: usize,
        /// Chunks its metadata names.
        chunks: u32,
    },
    /// The stored bytes do not hash to the artifact's sha256 (tampered with or corrupt).
    #[error("artifact {0}: stored bytes do not match the sha256")]
    Mismatch(String),
    /// etcd could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a policy failed its trial run on the current snapshot (before it is stored or activated).
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    /// The call failed.
    #[error("{0}")]
    Failed(#[from] Failure),
    /// The call returned grants the books refuse.
    #[error(
        "{invalid} of {grants} grants are invalid (first: {framework} on {agent} refused: {why})"
    )]
    InvalidGrants {
        /// Grants refused.
        invalid: usize,
        /// Grants returned.
        grants: u32,
        /// The first refused grant's framework.
        framework: String,
        /// Its agent.
        agent: String,
        /// Why the books refused it.
        why: &'static str,
    },
}

/// Why an allocator call (from the offer-broker or an operator) was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed request: an empty ID, a bad `refuse_seconds`, malformed task resources, an empty artifact
    /// or a sha256 pin that does not match (`INVALID_ARGUMENT`).
    #[error("{0}")]
    Invalid(String),
    /// An artifact that cannot be loaded as a policy (`INVALID_ARGUMENT`).
    #[error(transparent)]
    BadArtifact(LoadError),
    /// A stored policy that this replica cannot load now (`FAILED_PRECONDITION`).
    #[error(transparent)]
    Unloadable(LoadError),
    /// The artifact cache cannot be written (`INTERNAL`).
    #[error(transparent)]
    Cache(LoadError),
    /// The candidate failed its trial run (`FAILED_PRECONDITION`).
    #[error("trial run failed: {0}")]
    Trial(#[from] TrialError),
    /// No built-in policy or stored artifact matches the reference (`NOT_FOUND`).
    #[error("no built-in policy or loaded artifact matches '{reference}' (built in: {builtins})")]
    NoMatch {
        /// What the operator named.
        reference: String,
        /// The built-in policies, comma-separated.
        builtins: String,
    },
    /// The reference matches several artifacts (`INVALID_ARGUMENT`).
    #[error("'{reference}' matches {matches} artifacts: give more of the sha256")]
    Ambiguous {
        /// What the operator named.
        reference: String,
        /// How many artifacts it matches.
        matches: usize,
    },
    /// A dynamic reservation that the agent's resources or its running tasks do not allow
    /// (`FAILED_PRECONDITION`; Mesos answers 409 Conflict).
    #[error("{0}")]
    Conflict(String),
    /// ROLLBACK with no previous policy recorded (`FAILED_PRECONDITION`).
    #[error("there is no previous policy to roll back to")]
    NoPrevious,
    /// The allocation engine is gone (the allocator is stopping) (`UNAVAILABLE`).
    #[error("the allocation engine stopped")]
    EngineStopped,
    /// etcd could not be reached or refused the write (`UNAVAILABLE`; a corrupt value is `INTERNAL`).
    #[error(transparent)]
    Store(#[from] StoreError),
}
