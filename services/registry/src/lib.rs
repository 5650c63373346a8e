//! The registry: admission and liveness of agents, and roles with weights and quota limits.
//!
//! Layout, each module importing only those above it:
//! - [`error`]: [`Error`], every way a call can be refused or fail;
//! - [`liveness`]: heartbeat deadlines in memory (pure);
//! - `metrics`: the registry's Prometheus series;
//! - [`sweeper`]: agents past their deadline become unreachable (their `alive` key is deleted);
//! - [`registry`]: [`Registry`], the flows: registration, heartbeats, the agent list, roles;
//! - [`grpc`]: the tonic service `allot.registry.v1.Registry` and the mapping of [`Error`] to status codes;
//! - here: [`Config`] and [`run`].
//!
//! An agent registers with its `AgentInfo` and gets an `AgentID`; the registry writes its `AgentRecord` and an
//! `alive/<agent_id>` key in one transaction. Heartbeats move the agent's deadline in memory ([`liveness`]) and
//! write nothing; when an agent misses its heartbeats for `agent_timeout`, the registry deletes its `alive` key
//! and every watcher (allocator, offer-broker) sees the agent become unreachable. A heartbeat therefore costs
//! no etcd round trip, which is what lets one registry hold 50,000 agents (docs/benchmarks.md). After a restart
//! the registry gives every agent whose `alive` key it finds a full timeout. Run one registry per cluster: two
//! would each judge only the heartbeats they receive.

pub mod error;
pub mod grpc;
pub mod liveness;
mod metrics;
pub mod registry;
pub mod sweeper;

pub use error::Error;
pub use registry::Registry;

use std::future::Future;
use std::time::Duration;

/// Registry configuration: flags, `ALLOT_*` environment variables, or a TOML file (`--config`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "allot-registry",
    version,
    about = "Allot registry: agents, their liveness, and roles"
)]
pub struct Config {
    /// TOML file with defaults for any of these flags.
    #[arg(long, env = "ALLOT_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Address to serve gRPC on.
    #[arg(long, env = "ALLOT_LISTEN", default_value = "127.0.0.1:5050")]
    pub listen: String,
    /// Where to serve Prometheus metrics.
    #[command(flatten)]
    pub metrics: allot_server::config::MetricsArgs,
    /// Where etcd is.
    #[command(flatten)]
    pub etcd: allot_server::config::EtcdArgs,
    /// How long an agent may go without a heartbeat before it is unreachable.
    #[arg(long, env = "ALLOT_AGENT_TIMEOUT", default_value = "15s", value_parser = allot_server::config::parse_duration)]
    pub agent_timeout: Duration,
}

/// Runs the registry on `listener` until `shutdown` resolves.
///
/// # Errors
/// [`allot_server::ServiceError::Store`] if etcd cannot be reached or read at start;
/// [`allot_server::ServiceError::Transport`] if the server fails.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), allot_server::ServiceError> {
    let store = config.etcd.connect().await?;
    let _metrics = config.metrics.serve().await?;
    let service = grpc::RegistryService(Registry::start(store, config.agent_timeout).await?);
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "registry serving");
    let router = allot_server::grpc::server()
        .add_service(allot_server::grpc::health().await)
        .add_service(
            allot_proto::registry::registry_server::RegistryServer::new(service)
                .max_decoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES),
        );
    allot_server::grpc::serve(router, listener, shutdown).await?;
    Ok(())
}
