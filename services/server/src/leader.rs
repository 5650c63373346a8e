//! Leader election through etcd for the services that run one active replica: the allocator and the
//! offer-broker.
//!
//! Every replica campaigns in the election `<root>/leader/<service>` with etcd's v3 election API: each
//! candidate writes a key bound to its own lease, and the candidate whose key was created first leads. The
//! value is the replica's advertised gRPC address. Until it leads, a replica is a *standby*: its server
//! answers every call (but `grpc.health.v1`) with `UNAVAILABLE` and the leader's address in the
//! `allot-leader` metadata ([`crate::standby`]), so that callers (`allot_common::grpc::Replicas`) move to the leader
//! by themselves.
//!
//! The leader renews its lease every third of the lease time (at least once a second), each renewal running
//! for as long as the lease allows beside the next, so that a slow etcd keeps the term. A leader that cannot
//! renew it for a whole lease time (etcd unreachable, the process stalled) steps down before etcd can hand
//! leadership to a standby ([`Term::lost`]), revoking its lease if etcd still answers; the service then stops, as a Mesos master stops
//! when it loses its ZooKeeper session, and a supervisor (systemd `Restart=always`, `deploy/local/run.sh`)
//! starts it again as a candidate.
//! A leader that stops gracefully revokes its lease, so a standby takes over at once. A leader killed with
//! `kill -9` is replaced within about a second and a half, long before its lease expires: each standby
//! watches for a dead leader ([`leader_looks_dead`]) and revokes its lease when the leader's address
//! refuses connections [`REFUSALS`] times in a row (or is the standby's own address: the standby is that
//! leader's restarted process) *and* etcd says the lease has not been renewed for over a second. Both must
//! hold, so a slow etcd or a leader that is alive but unreachable from the standby (a partition, a wrong
//! `--advertise`) is not deposed: the lease decides then, and it can stay long enough to ride out an etcd
//! stall. A wrong guess is safe all the same: every write of a deposed leader is fenced off.

use crate::standby::{LEADER, Leadership};
use crate::store::{Store, StoreError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// `allot_leader_terms_total{service}`: terms this replica won.
static TERMS: std::sync::LazyLock<allot_telemetry::metrics::prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        allot_telemetry::metrics::counter_vec(
            "allot_leader_terms_total",
            "Elections this replica won",
            &["service"],
        )
    });

/// How many connection attempts in a row a leader's address must refuse before a standby revokes the lease
/// of a leader that has also stopped renewing it (see [`leader_looks_dead`]).
pub const REFUSALS: u32 = 3;

/// The wait between two probes of the leader's address by a standby.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Election flags of a replicated service (allocator, offer-broker).
#[derive(Debug, Clone, clap::Args)]
pub struct ElectionArgs {
    /// The address other processes reach this replica at, published as the leader's address while it leads
    /// (default: the address it listens on).
    #[arg(long = "advertise", env = "ALLOT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Lease time of the leadership: a leader that cannot renew its lease for this long steps down, and a
    /// killed leader is replaced after at most this long. etcd raises values under about 2 s to its minimum.
    #[arg(long, env = "ALLOT_LEADER_LEASE", default_value = "10s", value_parser = crate::config::parse_duration)]
    pub leader_lease: Duration,
}

impl Default for ElectionArgs {
    fn default() -> Self {
        Self {
            advertise: None,
            leader_lease: Duration::from_secs(10),
        }
    }
}

/// One term of leadership, from winning the election to losing or resigning it.
pub struct Term {
    store: Store,
    lease: i64,
    lost: watch::Receiver<bool>,
    _keeper: allot_common::AbortOnDrop,
}

impl Term {
    /// Resolves when the lease could not be renewed for a whole lease time (or etcd says it expired), or a
    /// write of the term's store was fenced off (see [`Store::fence`]): from then on this replica must make
    /// no decision, for a standby may already lead.
    pub async fn lost(&mut self) {
        tokio::select! {
            _ = self.lost.wait_for(|lost| *lost) => {}
            _ = self.store.fenced_out() => {}
        }
    }

    /// Gives leadership up at once by revoking the lease (its election key goes with it), so that a standby
    /// takes over without waiting for the lease to expire. Errors are ignored: the lease expires anyway.
    pub async fn resign(self) {
        revoke(&self.store, self.lease).await;
    }
}

/// Revokes `lease` (and so deletes the election key bound to it), waiting at most 2 s; errors are ignored, for
/// the lease expires anyway.
async fn revoke(store: &Store, lease: i64) {
    let mut client = store.client();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
}

/// Campaigns for leadership of `service` with `advertise` as this replica's address and leases of `ttl`;
/// returns once elected, with `store` (and its clones) fenced by the new term ([`Store::fence`]). Meanwhile
/// `leadership` follows who leads (for the standby's answers); etcd errors are retried with backoff, so this
/// waits for etcd to come back rather than fail. The caller marks itself leader ([`Leadership::set_leader`])
/// once it is ready to serve as one.
pub async fn campaign(
    store: &Store,
    service: &str,
    advertise: &str,
    ttl: Duration,
    leadership: &Leadership,
) -> Term {
    LEADER.with_label_values(&[service]).set(0.0);
    let name = format!("{}/leader/{service}", store.root());
    let (current_tx, current) = watch::channel(None);
    let observer = allot_common::AbortOnDrop(tokio::spawn(observe(
        store.clone(),
        name.clone(),
        leadership.clone(),
        current_tx,
    )));
    let (own_lease, own_lease_rx) = watch::channel(0);
    let _prober = allot_common::AbortOnDrop(tokio::spawn(watch_for_a_dead_leader(
        store.clone(),
        current,
        advertise.to_string(),
        own_lease_rx,
    )));
    let mut delays = allot_common::retry_delays(Duration::from_millis(200));
    loop {
        match try_campaign(store, &name, advertise, ttl, &own_lease).await {
            Ok(term) => {
                // The observer may be reporting the deleted leader's successor (this replica) as a standby's
                // view at this very moment: it must be stopped before the caller marks this replica leader,
                // or its late `set_standby` would demote the new leader for good.
                observer.stop().await;
                TERMS.with_label_values(&[service]).inc();
                tracing::info!(service, advertise, lease = term.lease, "elected leader");
                return term;
            }
            Err(e) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(service, error = %e, ?delay, "campaign failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn try_campaign(
    store: &Store,
    name: &str,
    advertise: &str,
    ttl: Duration,
    own_lease: &watch::Sender<i64>,
) -> Result<Term, StoreError> {
    let mut client = store.client();
    let secs = ttl.as_secs().max(1) as i64;
    let lease = crate::store::traced("lease_grant", client.lease_grant(secs, None))
        .await?
        .id();
    own_lease.send_replace(lease);
    let (lost_tx, mut lost) = watch::channel(false);
    // Renewals start before the campaign, which blocks for as long as another replica leads.
    let keeper =
        allot_common::AbortOnDrop(tokio::spawn(keep_alive(store.clone(), lease, ttl, lost_tx)));
    tracing::info!(%name, advertise, lease, "campaigning for leadership");
    let elected = tokio::select! {
        r = client.campaign(name, advertise, lease) => r,
        _ = lost.wait_for(|l| *l) => Err(etcd_client::Error::LeaseKeepAliveError(
            "the lease expired while campaigning".into(),
        )),
    };
    let elected = match elected {
        Ok(e) => e,
        Err(e) => {
            // A failed attempt's key would stand in front of the next attempt's until its lease expired.
            drop(keeper);
            revoke(store, lease).await;
            return Err(e.into());
        }
    };
    // From now on every write of this store and its clones is fenced by the term.
    if let Some(k) = elected.leader() {
        store.fence(k.key().to_vec(), k.rev());
    }
    Ok(Term {
        store: store.clone(),
        lease,
        lost,
        _keeper: keeper,
    })
}

/// Renews `lease` every `ttl / 3` (at least once a second). Sets `lost` once no renewal has succeeded for
/// `ttl` less a margin, counted from when the last successful renewal was *sent* (etcd restarts the lease no
/// earlier than that), or when etcd answers that the lease is gone.
///
/// Renewals overlap: each runs on its own (for at most `ttl`) while the next is sent on time, so a slow etcd
/// (a loaded disk, a long round trip) keeps the term as long as some renewal gets through within the lease
/// time, and one renewal stuck on a dead connection does not hold back the next.
async fn keep_alive(store: Store, lease: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let margin = (ttl / 4).min(Duration::from_secs(1));
    let mut deadline = Instant::now() + ttl - margin;
    // At least once a second: a renewal that succeeds just before etcd becomes unreachable (a restart) leaves
    // the most of the lease to ride the outage out.
    let mut tick = tokio::time::interval((ttl / 3).min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewals = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (store, sent) = (store.clone(), Instant::now());
                renewals.spawn(async move {
                    (sent, tokio::time::timeout(ttl, renew(&store, lease)).await)
                });
            }
            Some(Ok((sent, renewed))) = renewals.join_next() => match renewed {
                Ok(Ok(true)) => deadline = deadline.max(sent + ttl - margin),
                Ok(Ok(false)) => {
                    tracing::error!(lease, "etcd says the leadership lease expired");
                    lost.send_replace(true);
                    return;
                }
                Ok(Err(e)) => tracing::warn!(lease, error = %e, "cannot renew the leadership lease"),
                Err(_) => tracing::warn!(lease, "renewing the leadership lease timed out"),
            },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::error!(
                    lease,
                    "leadership lease not renewed for a whole lease time; stepping down"
                );
                lost.send_replace(true);
                return;
            }
        }
    }
}

/// One renewal of `lease`, one round trip: opening etcd's keep-alive stream sends the first renewal and reads
/// its answer. `Ok(false)`: etcd answered that the lease no longer exists.
async fn renew(store: &Store, lease: i64) -> Result<bool, etcd_client::Error> {
    let mut client = store.client();
    // The stream could carry more renewals; dropping it after the first is what `keep_alive` wants.
    match client.lease_keep_alive(lease).await {
        Ok(_) => Ok(true),
        // etcd-client's words for an answer with TTL 0.
        Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => Ok(false),
        Err(e) => Err(e),
    }
}

/// The election's leader as a standby sees it: its advertised address and the lease its key is bound to.
#[derive(Debug, Clone, PartialEq)]
struct Current {
    address: String,
    lease: i64,
}

/// Follows the election's leader into `leadership` (for a standby's answers) and `current` until aborted
/// ([`campaign`] aborts it once elected).
async fn observe(
    store: Store,
    name: String,
    leadership: Leadership,
    current: watch::Sender<Option<Current>>,
) {
    loop {
        let mut client = store.client();
        if let Ok(mut stream) = client.observe(name.as_str()).await {
            while let Ok(Some(resp)) = stream.message().await {
                let leader = resp.kv().and_then(|kv| {
                    Some(Current {
                        address: kv.value_str().ok()?.to_string(),
                        lease: kv.lease(),
                    })
                });
                leadership.set_standby(leader.as_ref().map(|c| c.address.clone()));
                current.send_replace(leader);
            }
        }
        current.send_replace(None);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether a standby may depose the leader: its address refused [`REFUSALS`] connections in a row, or is the
/// standby's own (`own_address`: the standby is the dead leader's restarted process), and etcd reports its
/// lease at `remaining` of `granted` seconds (whole seconds, rounded down), that is, not renewed for over a
/// second (a leader renews at least once a second). A lease under 3 s is left to expire.
pub fn leader_looks_dead(refusals: u32, own_address: bool, remaining: i64, granted: i64) -> bool {
    (refusals >= REFUSALS || own_address) && granted >= 3 && remaining <= granted - 2
}

/// Watches for a dead leader while this replica is a standby (see the module documentation): probes the
/// current leader's address every [`PROBE_INTERVAL`] and revokes the leader's lease once
/// [`leader_looks_dead`] says so. `own_lease` is this replica's own campaign lease, never revoked here.
async fn watch_for_a_dead_leader(
    store: Store,
    mut current: watch::Receiver<Option<Current>>,
    advertise: String,
    own_lease: watch::Receiver<i64>,
) {
    let mut refusals = 0u32;
    let mut watched: Option<Current> = None;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leader = current.borrow_and_update().clone();
        if leader != watched {
            refusals = 0;
            watched = leader.clone();
        }
        let Some(leader) = leader else { continue };
        if leader.lease == *own_lease.borrow() {
            continue;
        }
        let own_address = leader.address == advertise;
        if !own_address {
            let probe = tokio::time::timeout(
                PROBE_INTERVAL,
                tokio::net::TcpStream::connect(leader.address.as_str()),
            )
            .await;
            match probe {
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => refusals += 1,
                // Accepted, timed out (a partition, a stalled host) or any other failure: not plainly dead.
                _ => refusals = 0,
            }
            if refusals < REFUSALS {
                continue;
            }
        }
        let mut client = store.client();
        let Ok(Ok(ttl)) = tokio::time::timeout(
            PROBE_INTERVAL,
            client.lease_time_to_live(leader.lease, None),
        )
        .await
        else {
            continue;
        };
        if leader_looks_dead(refusals, own_address, ttl.ttl(), ttl.granted_ttl()) {
            tracing::warn!(
                leader = %leader.address,
                lease = leader.lease,
                refusals,
                remaining = ttl.ttl(),
                "the leader is gone (its address refuses connections and its lease is not renewed): revoking its lease"
            );
            revoke(&store, leader.lease).await;
            refusals = 0;
        }
    }
}

/// Serves `router` (built on [`crate::grpc::replicated_server`] with `leadership`) on `listener` (over mutual
/// TLS with `tls` when given, see [`crate::grpc::serve`]) as a
/// replica of `service`: a standby until elected, then `on_elected` runs (it loads state and starts the
/// leader's background work, which lives as long as what it returns) and the replica leads until `shutdown`
/// resolves (it then resigns, so that a standby takes over at once) or its leadership is lost.
///
/// # Errors
/// [`crate::ServiceError::LeadershipLost`] when the lease could not be renewed or a write was fenced off;
/// `on_elected`'s error; the transport error if the server fails.
pub async fn serve_replicated<T, Fut>(
    router: crate::grpc::Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    (store, service, args): (&Store, &str, &ElectionArgs),
    tls: Option<&std::sync::Arc<allot_common::tls::Tls>>,
    leadership: &Leadership,
    on_elected: impl FnOnce() -> Fut,
) -> Result<(), crate::ServiceError>
where
    Fut: std::future::Future<Output = Result<T, crate::ServiceError>>,
{
    let advertise = match &args.advertise {
        Some(a) => a.clone(),
        None => listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    };
    let serving = crate::grpc::serve(router, listener, shutdown, tls);
    tokio::pin!(serving);
    let mut term = tokio::select! {
        t = campaign(store, service, &advertise, args.leader_lease, leadership) => t,
        r = &mut serving => return Ok(r?),
    };
    // Calls are still refused while the new leader loads its state: none may see it half built.
    let leading = tokio::select! {
        held = on_elected() => held?,
        _ = term.lost() => { term.resign().await; return Err(crate::ServiceError::LeadershipLost); }
        r = &mut serving => { term.resign().await; return Ok(r?); }
    };
    leadership.set_leader(service);
    let ended = tokio::select! {
        _ = term.lost() => Err(crate::ServiceError::LeadershipLost),
        r = &mut serving => r.map_err(crate::ServiceError::from),
    };
    LEADER.with_label_values(&[service]).set(0.0);
    // The leader's work stops before the key goes, so that no decision overlaps the next term. The key is
    // revoked however the term ended (after a lost term, when etcd answers): a slow etcd may still hold it, and
    // the next leader, this replica restarted or a standby, would wait for it to expire.
    drop(leading);
    term.resign().await;
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_is_deposed_only_when_its_address_refuses_and_its_lease_is_not_renewed() {
        // Dead: refused three times, and the 10 s lease not renewed for over a second.
        assert!(leader_looks_dead(3, false, 8, 10));
        // Alive but unreachable from here (a partition, a wrong --advertise): it keeps renewing.
        assert!(!leader_looks_dead(9, false, 9, 10));
        // Not renewed (a slow etcd), but its address answers: the lease decides.
        assert!(!leader_looks_dead(0, false, 3, 10));
        assert!(!leader_looks_dead(2, false, 3, 10));
        // The standby's own address: it is the leader's restarted process.
        assert!(leader_looks_dead(0, true, 7, 10));
        assert!(!leader_looks_dead(0, true, 9, 10));
        // A lease under 3 s is left to expire.
        assert!(!leader_looks_dead(5, false, 0, 2));
    }
}
