//! The offer-broker: the scheduler-facing API.
//!
//! Layout, in layers: each module imports only modules above it in this list.
//! - [`error`]: [`Error`], every way a call can be refused or fail, typed once;
//! - [`validate`]: pure validation of LAUNCH operations;
//! - [`state`]: the state (frameworks, offers, tasks) and every decision about it, pure and unit tested;
//! - [`link`]: the two outbound links, to the allocator and to agents;
//! - `metrics`: the broker's Prometheus series;
//! - [`broker`]: [`Broker`]: the state behind one lock, the links, the store, and what flows share;
//! - one module per flow, each `impl Broker` reading "lock, ask the state, do I/O, commit":
//!   [`updates`] (status updates and the acknowledgement protocol), [`offers`] (grants, ACCEPT, DECLINE),
//!   [`scheduler`] (SUBSCRIBE, failover timeouts, SUPPRESS/REVIVE, KILL, RECONCILE, TEARDOWN, heartbeats),
//!   [`recovery`] (the leader's start, reconciliation with agents, agents lost, back or restarted),
//!   [`views`] (operator views), [`executors`] (framework messages both ways, SHUTDOWN, executors' exits);
//! - [`grpc`]: the tonic services `allot.scheduler.v1.Scheduler` (frameworks), `allot.agent.v1.StatusUpdates`
//!   (agents) and `allot.operator.v1.Operator` (operators), and the mapping of [`Error`] to status codes;
//! - [`mesos_state`]: the read-only master views Mesos tools read (`/master/state`, ...), pure;
//! - [`mesos_api`]: Mesos' v1 scheduler HTTP API, translated onto the `Scheduler` service, and those views
//!   (`--mesos-listen`).
//!
//! Durable state lives in etcd: framework records and task records (each task's latest status and whether the
//! framework acknowledged it). Offers are soft: they come from the allocator's decision stream, and when that
//! stream restarts every outstanding offer is rescinded.

pub mod broker;
pub mod error;
pub mod executors;
pub mod grpc;
pub mod link;
pub mod mesos_api;
pub mod mesos_state;
mod metrics;
pub mod offers;
pub mod recovery;
pub mod scheduler;
pub mod state;
pub mod updates;
pub mod validate;
pub mod views;

pub use broker::Broker;
pub use error::Error;

use allot_server::ServiceError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Offer-broker configuration: flags, `ALLOT_*` environment variables, or a TOML file (`--config`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "allot-offer-broker",
    version,
    about = "Allot offer-broker: the scheduler API"
)]
pub struct Config {
    /// TOML file with defaults for any of these flags.
    #[arg(long, env = "ALLOT_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Address to serve gRPC on (schedulers, agents' status updates, operators).
    #[arg(long, env = "ALLOT_LISTEN", default_value = "127.0.0.1:5052")]
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
    /// The allocator's gRPC address; for replicated allocators, every replica's, comma-separated (calls
    /// follow the leader).
    #[arg(long, env = "ALLOT_ALLOCATOR", default_value = "127.0.0.1:5051")]
    pub allocator: String,
    /// Leader election among broker replicas (one leads; standbys point callers to it).
    #[command(flatten)]
    pub election: allot_server::leader::ElectionArgs,
    /// Address to serve Mesos' v1 scheduler HTTP API on (`POST /api/v1/scheduler`, the master views,
    /// `/version`, `/health`), for Mesos frameworks such as pymesos; off unless given (Mesos' master port is
    /// 5050). HTTPS and HTTP on the one port (unless --insecure: HTTP only); callers authenticate with a client
    /// certificate (HTTPS) or HTTP basic credentials from --credentials. Basic credentials over HTTP travel in
    /// the clear: bind it to a trusted network when clients use HTTP.
    #[arg(long, env = "ALLOT_MESOS_LISTEN")]
    pub mesos_listen: Option<String>,
    /// Credentials for the Mesos HTTP API.
    #[command(flatten)]
    pub credentials: allot_server::config::CredentialsArgs,
    /// Take Mesos HTTP API calls that carry no credentials as this framework principal (Mesos'
    /// `--authenticate_http_frameworks=false`, its default, for frameworks that cannot authenticate); the
    /// ACL file still applies to it. Off by default: such calls are `401`. Wrong credentials are `401`
    /// either way.
    #[arg(long, env = "ALLOT_MESOS_ANONYMOUS_PRINCIPAL")]
    pub mesos_anonymous_principal: Option<String>,
    /// Time between HEARTBEAT events on each framework's stream; unacknowledged updates are re-sent as often.
    #[arg(long, env = "ALLOT_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = allot_server::config::parse_duration)]
    pub heartbeat_interval: Duration,
}

/// Runs the offer-broker on `listener` until `shutdown` resolves: a standby until it wins the election among
/// broker replicas (see [`allot_server::leader`]), then the leader, which loads frameworks, tasks and agents
/// from etcd and reconciles tasks with their agents.
///
/// # Errors
/// [`ServiceError::Store`] if etcd cannot be reached at start or read when elected;
/// [`ServiceError::Transport`] if the server fails or an address is invalid; [`ServiceError::LeadershipLost`]
/// if the leader could not renew its lease (restart the process: it campaigns again).
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let dialer = config.tls.open("offer-broker")?;
    let acls = config.acls.open()?;
    let store = config.etcd.connect(&dialer).await?;
    let _metrics = config.metrics.serve().await?;
    let allocators = dialer.replicas(&config.allocator)?;
    let broker = Arc::new(broker::Broker::new(
        store.clone(),
        allocators,
        dialer.clone(),
        config.heartbeat_interval,
    ));
    let leadership = allot_server::standby::Leadership::new();
    let listener_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        allocator = %config.allocator,
        "offer-broker serving (a standby until elected)"
    );
    use allot_proto::{
        agent::status_updates_server::StatusUpdatesServer,
        operator::operator_server::OperatorServer, scheduler::scheduler_server::SchedulerServer,
    };
    let max = allot_common::grpc::MAX_MESSAGE_BYTES;
    let scheduler = Arc::new(grpc::SchedulerService(
        broker.clone(),
        acls,
        allot_server::audit::Audit::new(store.clone(), "offer-broker"),
    ));
    // Mesos' HTTP API, served until `run` returns (aborted with it).
    let _mesos_api = match &config.mesos_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                ServiceError::Listen(format!("cannot listen on --mesos-listen {addr}: {e}"))
            })?;
            let local = listener
                .local_addr()
                .map_err(|e| ServiceError::Listen(format!("--mesos-listen {addr}: {e}")))?;
            let api = Arc::new(mesos_api::MesosApi::new(
                scheduler.clone(),
                store.clone(),
                broker.clone(),
                leadership.clone(),
                config.credentials.open()?,
                !config.tls.insecure,
                config.mesos_anonymous_principal.clone(),
                local,
            ));
            tracing::info!(addr = %local, "serving Mesos' v1 scheduler HTTP API");
            let advertised = match &config.election.advertise {
                Some(a) => a.clone(),
                None => listener_addr.clone(),
            };
            api.announce(&advertised).await;
            let tls = dialer.material().cloned();
            Some(allot_common::AbortOnDrop(tokio::spawn(mesos_api::serve(
                listener,
                mesos_api::router(api),
                tls,
            ))))
        }
        None => None,
    };
    let router = allot_server::grpc::replicated_server(&leadership)
        .add_service(allot_server::grpc::health().await)
        .add_service(allot_server::grpc::probe())
        .add_service(SchedulerServer::from_arc(scheduler).max_decoding_message_size(max))
        .add_service(
            StatusUpdatesServer::new(grpc::StatusService(broker.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            OperatorServer::new(grpc::OperatorService(broker.clone()))
                .max_decoding_message_size(max),
        );
    // Elected: load the state from etcd and start the background work, aborted when `run` returns.
    let on_elected = || async {
        let background: Vec<allot_common::AbortOnDrop> = broker
            .clone()
            .start()
            .await?
            .into_iter()
            .map(allot_common::AbortOnDrop)
            .collect();
        Ok(background)
    };
    // A graceful shutdown waits for open streams (at most `allot_server::grpc::DRAIN_TIMEOUT`): the agents'
    // status update streams end at once, so that without frameworks connected the standby takes over at once.
    let shutdown = {
        let broker = broker.clone();
        async move {
            shutdown.await;
            broker.agents.streams.close_all();
        }
    };
    allot_server::leader::serve_replicated(
        router,
        listener,
        shutdown,
        (&store, "offer-broker", &config.election),
        dialer.material(),
        &leadership,
        on_elected,
    )
    .await
}
