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
//! no etcd round trip, which is what lets one registry hold 50,000 agents (docs/benchmarks.md).
//!
//! The registry runs as replicas, like the allocator and the offer-broker: one leads (leader election through
//! etcd, [`allot_server::leader`]), the standbys answer every call with `UNAVAILABLE` naming the leader, and
//! agents and the CLI follow it. Only the leader judges heartbeats; a new leader (or a restarted registry)
//! gives every agent whose `alive` key it finds a full timeout, so no agent is declared lost for heartbeats
//! that went to the previous leader.

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
    /// Its async runtime's worker threads.
    #[command(flatten)]
    pub runtime: allot_server::config::RuntimeArgs,
    /// Where etcd is.
    #[command(flatten)]
    pub etcd: allot_server::config::EtcdArgs,
    /// Mutual TLS (default) or --insecure.
    #[command(flatten)]
    pub tls: allot_server::config::TlsArgs,
    /// The ACL file.
    #[command(flatten)]
    pub acls: allot_server::config::AclArgs,
    /// How long an agent may go without a heartbeat before it is unreachable.
    #[arg(long, env = "ALLOT_AGENT_TIMEOUT", default_value = "15s", value_parser = allot_server::config::parse_duration)]
    pub agent_timeout: Duration,
    /// Leader election among registry replicas (one leads; standbys point callers to it).
    #[command(flatten)]
    pub election: allot_server::leader::ElectionArgs,
}

/// Runs the registry on `listener` until `shutdown` resolves: a standby until it wins the election among
/// registry replicas, then the leader, which loads the `alive` keys (each agent gets a full timeout) and
/// sweeps for agents past their deadline.
///
/// # Errors
/// [`allot_server::ServiceError::Tls`] without TLS material (and no `--insecure`);
/// [`allot_server::ServiceError::Store`] if etcd cannot be reached or read when elected;
/// [`allot_server::ServiceError::Transport`] if the server fails;
/// [`allot_server::ServiceError::LeadershipLost`] if the leader could not renew its lease (restart the process:
/// it campaigns again).
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), allot_server::ServiceError> {
    let dialer = config.tls.open("registry")?;
    let acls = config.acls.open()?;
    let store = config.etcd.connect(&dialer).await?;
    let _metrics = config.metrics.serve().await?;
    let slot = std::sync::Arc::new(std::sync::OnceLock::new());
    let leadership = allot_server::standby::Leadership::new();
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "registry serving (a standby until elected)");
    let router = allot_server::grpc::replicated_server(&leadership)
        .add_service(allot_server::grpc::health().await)
        .add_service(allot_server::grpc::probe())
        .add_service(
            allot_proto::registry::registry_server::RegistryServer::new(grpc::RegistryService(
                slot.clone(),
                acls,
                allot_server::audit::Audit::new(store.clone(), "registry"),
            ))
            .max_decoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES),
        );
    // Elected: load the agents etcd lists as alive, and sweep for as long as the term lasts.
    let on_elected = || async {
        let registry = Registry::load(store.clone(), config.agent_timeout).await?;
        let sweeper = allot_common::AbortOnDrop(tokio::spawn(registry.sweep()));
        let _ = slot.set(registry);
        Ok(sweeper)
    };
    allot_server::leader::serve_replicated(
        router,
        listener,
        shutdown,
        (&store, "registry", &config.election),
        dialer.material(),
        &leadership,
        on_elected,
    )
    .await
}
