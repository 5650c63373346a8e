//! The offer-broker: the scheduler-facing API.
//!
//! Layout:
//! - [`broker`]: the shared state (subscribed frameworks, outstanding offers, the task cache) and every flow:
//!   subscribe, accept, decline, kill, status updates, reconciliation, teardown, agent loss;
//! - [`validate`]: pure validation of LAUNCH operations;
//! - [`grpc`]: the tonic services `allot.scheduler.v1.Scheduler` (frameworks), `allot.agent.v1.StatusUpdates`
//!   (agents) and `allot.operator.v1.Operator` (operators).
//!
//! Durable state lives in etcd: framework records and task records (each task's latest status and whether the
//! framework acknowledged it). Offers are soft: they come from the allocator's decision stream, and when that
//! stream restarts every outstanding offer is rescinded.

pub mod broker;
pub mod grpc;
mod metrics;
pub mod validate;

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
    pub metrics: allot_common::config::MetricsArgs,
    /// Where etcd is.
    #[command(flatten)]
    pub etcd: allot_common::config::EtcdArgs,
    /// The allocator's gRPC address.
    #[arg(long, env = "ALLOT_ALLOCATOR", default_value = "127.0.0.1:5051")]
    pub allocator: String,
    /// Time between HEARTBEAT events on each framework's stream; unacknowledged updates are re-sent as often.
    #[arg(long, env = "ALLOT_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = allot_common::config::parse_duration)]
    pub heartbeat_interval: Duration,
}

/// A failure that stops the service.
pub use allot_common::ServiceError as Error;

/// Runs the offer-broker on `listener` until `shutdown` resolves.
///
/// # Errors
/// [`Error::Store`] if etcd cannot be reached at start; [`Error::Transport`] if the server fails.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let store = config.etcd.connect().await?;
    let _metrics = config.metrics.serve().await?;
    let allocator = allot_common::grpc::channel(&config.allocator)?;
    let broker = Arc::new(broker::Broker::new(
        store,
        allocator,
        config.heartbeat_interval,
    ));
    // Aborted when `run` returns or is dropped.
    let _background: Vec<allot_common::AbortOnDrop> = broker
        .clone()
        .start()
        .await?
        .into_iter()
        .map(allot_common::AbortOnDrop)
        .collect();
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        allocator = %config.allocator,
        "offer-broker serving"
    );
    use allot_proto::{
        agent::status_updates_server::StatusUpdatesServer,
        operator::operator_server::OperatorServer, scheduler::scheduler_server::SchedulerServer,
    };
    let max = allot_common::grpc::MAX_MESSAGE_BYTES;
    let router = allot_common::grpc::server()
        .add_service(allot_common::grpc::health().await)
        .add_service(
            SchedulerServer::new(grpc::SchedulerService(broker.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            StatusUpdatesServer::new(grpc::StatusService(broker.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            OperatorServer::new(grpc::OperatorService(broker.clone()))
                .max_decoding_message_size(max),
        );
    allot_common::grpc::serve(router, listener, shutdown).await?;
    Ok(())
}
