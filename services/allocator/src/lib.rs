//! The allocator: keeps the allocation books, runs allocation cycles through the active policy, and streams
//! the resulting offers to the offer-broker.
//!
//! Layout, each module importing only those above it:
//! - [`error`]: the errors, typed once ([`error::Failure`], [`error::LoadError`], [`error::TrialError`],
//!   [`Error`]);
//! - [`books`]: pure bookkeeping of agents, frameworks, roles, offers, tasks and filters;
//! - [`shadow`]: comparing a candidate policy with the active one, cycle by cycle (pure);
//! - [`policy`]: hosting built-in, native and WASM policies, artifacts pinned by sha256, failure containment;
//! - [`engine`]: the actor that owns the books, follows etcd, and runs cycles;
//! - [`admin`]: the operator's policy flows (load, activate, roll back, shadow, status);
//! - [`reservations`]: the operator's dynamic reservations (reserve, unreserve, list), checked by the engine
//!   and kept in etcd;
//! - [`grpc`]: `allot.allocator.v1.Allocator` (the offer-broker's), `PolicyAdmin` and `Reservations` (the
//!   operator's), and
//!   the mapping of [`Error`] to status codes;
//! - [`sim`]: the policy simulator behind `allot sim`, on the same books and cycle.
//!
//! Its view of the cluster comes from etcd (agents, their liveness, frameworks, tasks, roles) through watches;
//! outstanding offers and filters are soft state that a new broker session resets.

pub mod admin;
pub mod books;
pub mod engine;
pub mod error;
pub mod grpc;
mod metrics;
pub mod policy;
pub mod reservations;
pub mod shadow;
pub mod sim;

pub use error::Error;

use allot_server::ServiceError;
use std::future::Future;
use std::time::Duration;

/// Allocator configuration: flags, `ALLOT_*` environment variables, or a TOML file (`--config`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "allot-allocator",
    version,
    about = "Allot allocator: allocation cycles through a policy"
)]
pub struct Config {
    /// TOML file with defaults for any of these flags.
    #[arg(long, env = "ALLOT_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Address to serve gRPC on.
    #[arg(long, env = "ALLOT_LISTEN", default_value = "127.0.0.1:5051")]
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
    /// Leader election among allocator replicas (one leads; standbys point callers to it).
    #[command(flatten)]
    pub election: allot_server::leader::ElectionArgs,
    /// Time between periodic allocation cycles; events that add supply or demand also trigger one.
    #[arg(long, env = "ALLOT_ALLOCATION_INTERVAL", default_value = "1s", value_parser = allot_server::config::parse_duration)]
    pub allocation_interval: Duration,
    /// The least time between cycles that events (ended tasks, revives, offers returned, new agents) bring
    /// forward: shorter offers freed resources sooner, longer batches more into each cycle and ACCEPT (less
    /// CPU per task). Default: a tenth of `--allocation-interval`.
    #[arg(long, env = "ALLOT_MIN_CYCLE_GAP", value_parser = allot_server::config::parse_duration)]
    pub min_cycle_gap: Option<Duration>,
    /// The allocation policy. Built in: `drf`, `priority`.
    #[arg(long, env = "ALLOT_POLICY", default_value = "drf", value_parser = clap::builder::PossibleValuesParser::new(policy::BUILTINS))]
    pub policy: String,
    /// Where loaded policy artifacts are cached on this machine.
    #[arg(long, env = "ALLOT_POLICY_DIR", default_value = ".allot/policies")]
    pub policy_dir: std::path::PathBuf,
    /// How long one policy call may take before the cycle falls back to the last good policy.
    #[arg(long, env = "ALLOT_POLICY_TIMEOUT", default_value = "1s", value_parser = allot_server::config::parse_duration)]
    pub policy_timeout: Duration,
    /// Preemption: once a framework has wanted offers and been offered no CPUs for this long, the policy may
    /// revoke tasks of roles above their weighted fair share for it (the built-in `drf` and `priority` do;
    /// policies of the released plugin interfaces never preempt). Unset: no preemption (Mesos' behaviour).
    #[arg(long, env = "ALLOT_PREEMPTION_GRACE", value_parser = allot_server::config::parse_duration)]
    pub preemption_grace: Option<Duration>,
    /// Preemption never revokes a task that has run less than this.
    #[arg(long, env = "ALLOT_PREEMPTION_MIN_RUNTIME", default_value = "10s", value_parser = allot_server::config::parse_duration)]
    pub preemption_min_runtime: Duration,
}

/// Runs the allocator on `listener` until `shutdown` resolves: a standby until it wins the election among
/// allocator replicas (see [`allot_server::leader`]), then the leader, whose cycles make offers to the
/// subscribed broker.
///
/// # Errors
/// [`ServiceError::Config`] if `--min-cycle-gap` is longer than `--allocation-interval` (or the interval is
/// zero); [`ServiceError::Store`] if etcd cannot be reached at start; [`ServiceError::Transport`] if the
/// server fails; [`ServiceError::LeadershipLost`] if the leader could not renew its lease (restart the process: it
/// campaigns again).
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let cycles = engine::Cycles::new(config.allocation_interval, config.min_cycle_gap)
        .map_err(ServiceError::Config)?;
    let dialer = config.tls.open("allocator")?;
    let acls = config.acls.open()?;
    let store = config.etcd.connect(&dialer).await?;
    let _metrics = config.metrics.serve().await?;
    let policy = policy::Loaded::builtin(&config.policy).expect("clap checked the policy name");
    let engine = engine::Engine::start(
        store.clone(),
        policy,
        cycles,
        config.policy_timeout,
        config.policy_dir.clone(),
    );
    engine.send(engine::Command::SetPreemption(config.preemption_grace.map(
        |grace| allot_policy::Preemption {
            grace_seconds: grace.as_secs_f64(),
            min_runtime_seconds: config.preemption_min_runtime.as_secs_f64(),
        },
    )));
    let admin = grpc::PolicyAdminService(
        admin::PolicyAdmin::new(store.clone(), engine.clone(), config.policy_dir.clone()),
        acls.clone(),
        allot_server::audit::Audit::new(store.clone(), "allocator"),
    );
    let reservations = grpc::ReservationsService(
        reservations::ReservationAdmin::new(store.clone(), engine.clone()),
        acls,
        allot_server::audit::Audit::new(store.clone(), "allocator"),
    );
    // A standby's engine follows etcd too (a hot standby), but allocates nothing: cycles run only for a
    // subscribed broker, and the standby answers no call.
    let leadership = allot_server::standby::Leadership::new();
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        policy = %config.policy,
        interval = ?config.allocation_interval,
        min_cycle_gap = ?cycles.min_gap,
        "allocator serving (a standby until elected)"
    );
    let router = allot_server::grpc::replicated_server(&leadership)
        .add_service(allot_server::grpc::health().await)
        .add_service(allot_server::grpc::probe())
        .add_service(tonic::service::interceptor::InterceptedService::new(
            allot_proto::allocator::allocator_server::AllocatorServer::new(
                grpc::AllocatorService::new(engine.clone()),
            )
            .max_decoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES),
            grpc::broker_only,
        ))
        .add_service(
            allot_proto::allocator::policy_admin_server::PolicyAdminServer::new(admin)
                .max_decoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES),
        )
        .add_service(
            allot_proto::allocator::reservations_server::ReservationsServer::new(reservations),
        );
    let result = allot_server::leader::serve_replicated(
        router,
        listener,
        shutdown,
        (&store, "allocator", &config.election),
        dialer.material(),
        &leadership,
        || async { Ok(()) },
    )
    .await;
    engine.stop();
    result
}
