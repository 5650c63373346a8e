//! The offer-broker's errors, typed once. `grpc.rs` maps each to a gRPC status code, and nothing else builds
//! a status: flows return [`Error`], and a status received from the allocator or an agent is kept as text.

use allot_server::StoreError;

/// Why a broker call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed request: a bad `FrameworkInfo`, filter, launch or update (`INVALID_ARGUMENT`).
    #[error("{0}")]
    Invalid(String),
    /// A call from a framework that has no open event stream (`FAILED_PRECONDITION`).
    #[error("framework '{0}' is not subscribed: SUBSCRIBE first")]
    NotSubscribed(String),
    /// A call from a framework that was torn down (`FAILED_PRECONDITION`).
    #[error("framework {0} was torn down")]
    TornDown(String),
    /// A re-subscription with the ID of a framework that was torn down: it cannot come back
    /// (`NOT_FOUND`, as Mesos answers a removed framework).
    #[error("framework {0} was torn down")]
    Removed(String),
    /// A re-subscription or teardown naming a framework the broker does not know (`NOT_FOUND`).
    #[error("framework {0} is unknown")]
    UnknownFramework(String),
    /// An offer that does not exist, was rescinded, was already used, or is another framework's
    /// (`NOT_FOUND`).
    #[error("offer {0} is unknown, was rescinded, or was already used")]
    UnknownOffer(String),
    /// An offer of the ACCEPT was rescinded between its checks and the launch (`NOT_FOUND`).
    #[error("an offer was rescinded while the accept was in flight")]
    Rescinded,
    /// A task the framework does not have (`NOT_FOUND`).
    #[error("task {0} is unknown")]
    UnknownTask(String),
    /// An agent whose address the broker cannot find (`UNAVAILABLE`).
    #[error("agent {0} is unknown")]
    UnknownAgent(String),
    /// The agent does not run (or has not yet subscribed) that executor of the framework (`NOT_FOUND`).
    #[error("executor {executor} is not running on agent {agent}")]
    UnknownExecutor {
        /// The executor ID.
        executor: String,
        /// The agent ID.
        agent: String,
    },
    /// An agent that could not be reached or did not answer in time: the call may be made again
    /// (`UNAVAILABLE`).
    #[error("agent {agent} is unreachable: {message}")]
    AgentUnreachable {
        /// The agent.
        agent: String,
        /// What went wrong.
        message: String,
    },
    /// An agent that refused the call (`UNAVAILABLE`).
    #[error("agent {agent}: {message}")]
    Agent {
        /// The agent.
        agent: String,
        /// What went wrong, e.g. the agent's own status message.
        message: String,
    },
    /// The allocator could not be reached or refused the call (`UNAVAILABLE`).
    #[error("allocator: {0}")]
    Allocator(String),
    /// etcd could not be reached or refused the write, or this replica was fenced off (`UNAVAILABLE`; a
    /// corrupt value is `INTERNAL`).
    #[error(transparent)]
    Store(#[from] StoreError),
}
