//! The standby's side of leader election: [`Leadership`] (what a replica knows of who leads) and
//! [`StandbyLayer`], which answers every call of a standby with `UNAVAILABLE` naming the leader in
//! [`LEADER_METADATA`], so that callers (`allot_common::grpc::Replicas`) move to the leader by themselves.
//! The election itself is [`crate::leader`].

use allot_common::grpc::LEADER_METADATA;
use std::sync::Arc;
use std::task::{Context, Poll};

/// `allot_leader{service}`: 1 while this replica leads `service`, 0 while it is a standby.
pub(crate) static LEADER: std::sync::LazyLock<allot_telemetry::metrics::prometheus::GaugeVec> =
    std::sync::LazyLock::new(|| {
        allot_telemetry::metrics::gauge_vec(
            "allot_leader",
            "1 while this replica leads its service (allocator, offer-broker), 0 while it is a standby",
            &["service"],
        )
    });

/// What a replica knows of the election. Cheap to clone; every clone sees the same state.
#[derive(Debug, Clone)]
pub struct Leadership {
    state: Arc<std::sync::RwLock<Role>>,
}

/// A replica's role.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// Not leading; the leader's address if one is known.
    Standby(Option<String>),
    /// Leading.
    Leader,
}

impl Default for Leadership {
    fn default() -> Self {
        Self::new()
    }
}

impl Leadership {
    /// A standby that knows of no leader yet.
    pub fn new() -> Self {
        Self {
            state: Arc::new(std::sync::RwLock::new(Role::Standby(None))),
        }
    }

    fn set(&self, role: Role) {
        *self.state.write().expect("leadership poisoned") = role;
    }

    /// From now on this replica serves calls as the leader of `service`.
    pub fn set_leader(&self, service: &str) {
        self.set(Role::Leader);
        LEADER.with_label_values(&[service]).set(1.0);
    }

    /// The answer a standby gives every call: `UNAVAILABLE` naming the leader in [`LEADER_METADATA`];
    /// `None` while this replica leads.
    pub fn rejection(&self) -> Option<tonic::Status> {
        let leader = match &*self.state.read().expect("leadership poisoned") {
            Role::Leader => return None,
            Role::Standby(leader) => leader.clone().unwrap_or_default(),
        };
        let message = if leader.is_empty() {
            "not the leader, and no leader is elected yet; retry".to_string()
        } else {
            format!("not the leader; the leader is at {leader}")
        };
        let mut status = tonic::Status::unavailable(message);
        // Always present on a standby's answer (empty when no leader is known): callers tell a standby by it.
        let value = leader
            .parse()
            .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static(""));
        status.metadata_mut().insert(LEADER_METADATA, value);
        Some(status)
    }

    /// `None` while this replica leads; otherwise the leader's advertised address, when one is known
    /// (`Some(None)`: no leader elected yet).
    pub fn leader_if_standby(&self) -> Option<Option<String>> {
        match &*self.state.read().expect("leadership poisoned") {
            Role::Leader => None,
            Role::Standby(leader) => Some(leader.clone()),
        }
    }

    /// This replica is a standby, and `leader` leads (if known).
    pub(crate) fn set_standby(&self, leader: Option<String>) {
        self.set(Role::Standby(leader));
    }
}

/// A `tower::Layer` for a replicated service's server: while [`Leadership`] says standby, every call but the
/// health service is answered with [`Leadership::rejection`] and never reaches the service. Without a
/// leadership (`StandbyLayer::default()`), it passes every call through.
#[derive(Debug, Clone, Default)]
pub struct StandbyLayer(pub Option<Leadership>);

impl<S> tower::Layer<S> for StandbyLayer {
    type Service = Standby<S>;

    fn layer(&self, inner: S) -> Standby<S> {
        Standby {
            inner,
            leadership: self.0.clone(),
        }
    }
}

/// The service [`StandbyLayer`] wraps around a server.
#[derive(Debug, Clone)]
pub struct Standby<S> {
    inner: S,
    leadership: Option<Leadership>,
}

impl<S, B> tower::Service<http::Request<B>> for Standby<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<futures::future::Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(l) = &self.leadership
            && !request.uri().path().starts_with("/grpc.health.")
            && let Some(status) = l.rejection()
        {
            return futures::future::Either::Left(futures::future::ready(Ok(status.into_http())));
        }
        futures::future::Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_names_the_leader_and_a_leader_rejects_nothing() {
        let l = Leadership::new();
        let s = l.rejection().expect("a new replica is a standby");
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            s.metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("")
        );
        l.set(Role::Standby(Some("10.0.0.7:5052".into())));
        let s = l.rejection().expect("still a standby");
        assert_eq!(
            s.metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("10.0.0.7:5052")
        );
        assert!(s.message().contains("10.0.0.7:5052"));
        // The caller's side reads the same answer.
        assert_eq!(allot_common::grpc::standby_names(&s), Some("10.0.0.7:5052"));
        l.set_leader("test");
        assert!(l.clone().rejection().is_none(), "clones share the state");
    }
}
