//! The plumbing of an Allot service process (registry, allocator, offer-broker, agent): configuration, the
//! etcd store, leader election and serving gRPC. Frameworks and other clients never need it; what they share
//! with the services is `allot-common`.
//!
//! Layout, each module importing only those above it:
//! - [`store`]: the etcd store: the key layout under `/allot/v1/`, protobuf values, fenced writes, group
//!   commits, `follow_prefix`;
//! - [`config`]: flags, `ALLOT_*` environment variables and an optional TOML file, in that precedence;
//!   `--metrics-listen` and the etcd flags every service takes;
//! - [`standby`]: what a replica knows of who leads, and the standby's answer to every call;
//! - [`grpc`]: the server builder with health, tracing and metrics layers, and graceful shutdown;
//! - [`leader`]: leader election through etcd for the allocator and the offer-broker, and
//!   [`leader::serve_replicated`];
//! - [`shutdown`]: SIGINT/SIGTERM as a future.

pub mod acl;
pub mod audit;
pub mod authz;
pub mod certs;
pub mod config;
pub mod credentials;
pub mod grpc;
pub mod leader;
pub mod memory;
pub mod shutdown;
pub mod standby;
pub mod store;

pub use store::{Store, StoreError};

/// A failure that stops a control-plane service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// etcd could not be reached at start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC server failed, or an address is invalid.
    #[error("gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The `/metrics` endpoint could not start.
    #[error("{0}")]
    Metrics(String),
    /// Another listener (e.g. `--mesos-listen`) could not be bound.
    #[error("{0}")]
    Listen(String),
    /// Flags that are valid one by one but not together (e.g. the allocator's `--min-cycle-gap` longer than
    /// its `--allocation-interval`).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The TLS material is missing or does not load (and `--insecure` was not given).
    #[error(transparent)]
    Tls(#[from] allot_common::tls::TlsError),
    /// The ACL file cannot be read or parsed.
    #[error(transparent)]
    Acl(#[from] crate::acl::AclError),
    /// The credentials file cannot be read or parsed.
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialsError),
    /// This replica led, and could not renew its leadership lease for a whole lease time, or found a write
    /// fenced off: a standby may lead now. The process should exit and be restarted (it then campaigns again).
    #[error(
        "lost leadership: the leadership lease could not be renewed, or a write was fenced off"
    )]
    LeadershipLost,
}
