//! Calling Allot's gRPC services, traced and measured (see `allot_telemetry::grpc`): lazy client channels and
//! [`Replicas`], which follows the leader of a replicated service. The standby's side of that protocol (the
//! answer naming the leader) is `allot_server::standby`; what both sides agree on is here:
//! [`LEADER_METADATA`] and [`standby_names`].

use std::future::Future;
use std::time::Duration;
use tonic::transport::Endpoint;

/// A client channel: every call is traced (W3C context in its metadata) and counted.
pub type Channel = allot_telemetry::grpc::TracedChannel;

/// Largest gRPC message accepted by Allot servers and clients, in bytes (16 MiB): large enough for an offer
/// burst to a framework on 10,000 agents, small enough that an oversized request is refused.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The gRPC metadata key in which a standby names the leader's address (`host:port`, empty when it knows
/// of no leader). Present on every standby's answer, and only there.
pub const LEADER_METADATA: &str = "allot-leader";

/// Whether a call that failed with `code` may succeed if made again: the peer was not reached, the
/// connection broke, or the peer could not answer yet (`UNAVAILABLE`, `UNKNOWN` for transport errors,
/// `DEADLINE_EXCEEDED`, `CANCELLED`, `ABORTED`). Only for calls that are safe to repeat.
pub fn transient(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
    )
}

/// What a standby's refusal says of the leader: `Some(address)` when `status` is a standby's answer (the
/// address is empty when it knows of no leader), `None` for any other status.
pub fn standby_names(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get(LEADER_METADATA)
        .map(|v| v.to_str().unwrap_or_default())
}

/// A channel to `addr` (`host:port` or a full `http://` URI) that connects on first use and reconnects
/// after failures.
///
/// # Errors
/// An error if `addr` is not a valid URI.
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Channel::new(raw_channel(addr)?))
}

/// Like [`channel`], over mutual TLS with `tls`'s client configuration (see [`crate::tls`]): every new
/// connection presents the current certificate and accepts only a server the authority signed for the
/// address's host (its subject alternative names).
///
/// # Errors
/// An error if `addr` is not a valid URI.
pub fn tls_channel(
    addr: &str,
    tls: std::sync::Arc<crate::tls::Tls>,
) -> Result<Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |uri: http::Uri| {
        let tls = tls.clone();
        async move { crate::tls::connect(&uri, &tls).await }
    });
    Ok(Channel::new(
        endpoint(addr)?.connect_with_connector_lazy(connector),
    ))
}

fn raw_channel(addr: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Ok(endpoint(addr)?.connect_lazy())
}

fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// How a process opens client connections: plaintext, or mutual TLS with its own material (see
/// [`crate::tls`]). Cheap to clone; a service keeps one and makes every channel through it.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    tls: Option<std::sync::Arc<crate::tls::Tls>>,
}

impl Dialer {
    /// Plaintext connections (`--insecure`).
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Mutual TLS with `tls` when given, plaintext otherwise (what [`crate::tls::open_or_insecure`] resolved).
    pub fn new(tls: Option<std::sync::Arc<crate::tls::Tls>>) -> Self {
        Self { tls }
    }

    /// The TLS material connections present, `None` for plaintext: a server beside this dialer serves with it.
    pub fn material(&self) -> Option<&std::sync::Arc<crate::tls::Tls>> {
        self.tls.as_ref()
    }

    /// A lazy channel to `addr` ([`channel`] or [`tls_channel`]).
    ///
    /// # Errors
    /// An error if `addr` is not a valid URI.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            Some(tls) => tls_channel(addr, tls.clone()),
            None => channel(addr),
        }
    }

    /// The replicas at `list`, dialed through this dialer (see [`Replicas::with_dialer`]).
    ///
    /// # Errors
    /// As [`Replicas::with_dialer`].
    pub fn replicas(&self, list: &str) -> Result<Replicas, tonic::transport::Error> {
        Replicas::with_dialer(list, self.clone())
    }
}

/// The replicas of a replicated service (allocator, offer-broker), from a comma-separated list of
/// `host:port` addresses. Calls go to the replica believed to lead; a standby's answer (`UNAVAILABLE` with
/// [`LEADER_METADATA`]) moves them to the leader it names, and a connection that cannot be
/// made moves them to the next address. Cheap to clone; clones share what they learn.
#[derive(Debug, Clone)]
pub struct Replicas {
    inner: std::sync::Arc<std::sync::Mutex<ReplicaSet>>,
}

#[derive(Debug)]
struct ReplicaSet {
    /// Each replica's address and channel, in the order given (a leader named by a standby is appended).
    replicas: Vec<(String, Channel)>,
    current: usize,
    /// How channels to newly named leaders are made.
    dialer: Dialer,
}

impl ReplicaSet {
    /// Moves calls to the next address; returns `true` (the call may go again there).
    fn next(&mut self) -> bool {
        self.current = (self.current + 1) % self.replicas.len();
        true
    }
}

impl Replicas {
    /// The replicas at `list` (`host:port[,host:port...]`; the first is tried first), every channel (to the
    /// listed replicas and to leaders they name) made by `dialer` (see [`Dialer::replicas`]).
    ///
    /// # Errors
    /// An error if an address is not a valid URI, or the list is empty.
    pub fn with_dialer(list: &str, dialer: Dialer) -> Result<Self, tonic::transport::Error> {
        let replicas = list
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| Ok((a.to_string(), dialer.channel(a)?)))
            .collect::<Result<Vec<_>, tonic::transport::Error>>()?;
        if replicas.is_empty() {
            // The same error an empty address gives.
            channel("")?;
        }
        Ok(Self {
            inner: std::sync::Arc::new(std::sync::Mutex::new(ReplicaSet {
                replicas,
                current: 0,
                dialer,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplicaSet> {
        self.inner.lock().expect("replica set poisoned")
    }

    /// The address calls go to now.
    pub fn current(&self) -> String {
        let set = self.lock();
        set.replicas[set.current].0.clone()
    }

    /// The channel to the replica calls go to now.
    pub fn channel(&self) -> Channel {
        let set = self.lock();
        set.replicas[set.current].1.clone()
    }

    /// Learns from a failed call: returns whether the call was certainly not served and may go again (to the
    /// leader a standby named, or to the next address after a standby that knows no leader or a connection
    /// failure). Any other error (including `UNAVAILABLE` from the leader itself, say when etcd is down)
    /// leaves the choice as it is. A standby is told by [`LEADER_METADATA`] on its answer.
    pub fn failed(&self, status: &tonic::Status) -> bool {
        let mut set = self.lock();
        let standby = standby_names(status).map(str::to_string);
        let unreachable = status.code() == tonic::Code::Unavailable
            && std::error::Error::source(status).is_some();
        match standby {
            Some(leader) if !leader.is_empty() => {
                if let Some(i) = set.replicas.iter().position(|(a, _)| *a == leader) {
                    set.current = i;
                } else if let Ok(ch) = set.dialer.channel(&leader) {
                    tracing::info!(%leader, "following a leader not in the configured list");
                    set.replicas.push((leader, ch));
                    set.current = set.replicas.len() - 1;
                }
                true
            }
            // A standby that knows no leader, or a replica that cannot be reached: the next address.
            Some(_) => set.next(),
            None if unreachable => set.next(),
            None => false,
        }
    }

    /// Runs `call` on the current replica; while it fails in a way [`Replicas::failed`] says was not served,
    /// runs it again on the replica that suggests (at most twice per replica, with a short pause between
    /// rounds).
    ///
    /// # Errors
    /// The last call's status.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let tries = 2 * self.lock().replicas.len() + 1;
        let mut attempt = 0;
        loop {
            match call(self.channel()).await {
                Err(s) if attempt + 1 < tries && self.failed(&s) => {
                    attempt += 1;
                    if attempt % self.lock().replicas.len() == 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                r => return r,
            }
        }
    }

    /// Finds the leader: probes the replicas (following a standby's answer, skipping the unreachable) until one
    /// answers as the leader, so that [`Replicas::channel`] then reaches it. The probe is
    /// `allot.leader.v1.Probe/Leader`: a standby answers it with its rejection, the leader with OK (a server
    /// from before the probe service existed, with `UNIMPLEMENTED`, also taken as the leader's answer).
    ///
    /// # Errors
    /// The last probe's status if no replica answered as the leader.
    pub async fn find_leader(&self) -> Result<(), tonic::Status> {
        let probe = self
            .call(|ch| async move {
                let mut grpc = tonic::client::Grpc::new(ch);
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
                grpc.unary::<(), (), _>(
                    tonic::Request::new(()),
                    http::uri::PathAndQuery::from_static("/allot.leader.v1.Probe/Leader"),
                    tonic_prost::ProstCodec::default(),
                )
                .await
                .map(|_| ())
            })
            .await;
        match probe {
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replicas_follow_the_named_leader_and_skip_the_unreachable() {
        let r = Dialer::plaintext()
            .replicas("10.0.0.1:1, 10.0.0.2:1")
            .expect("valid list");
        assert_eq!(r.current(), "10.0.0.1:1");
        // A standby that knows no leader (its answer carries the metadata, empty): next address.
        let mut standby =
            tonic::Status::unavailable("not the leader, and no leader is elected yet");
        standby.metadata_mut().insert(
            LEADER_METADATA,
            tonic::metadata::MetadataValue::from_static(""),
        );
        assert!(r.failed(&standby));
        assert_eq!(r.current(), "10.0.0.2:1");
        // An error from the leader itself is not a reason to move.
        assert!(!r.failed(&tonic::Status::unavailable("etcd unavailable: down")));
        assert_eq!(r.current(), "10.0.0.2:1");
        // A named leader, even one not in the list, is followed.
        let mut s = tonic::Status::unavailable("not the leader; the leader is at 10.0.0.3:1");
        s.metadata_mut()
            .insert(LEADER_METADATA, "10.0.0.3:1".parse().expect("ascii"));
        assert!(r.failed(&s));
        assert_eq!(r.current(), "10.0.0.3:1");
        assert!(Dialer::plaintext().replicas(" , ").is_err());
    }
}
