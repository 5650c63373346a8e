//! The etcd store: Allot's single source of durable truth.
//!
//! Key layout (one key per entity, protobuf values), under a root that defaults to `/allot/v1`:
//!
//! | key | value | written by |
//! |---|---|---|
//! | `agents/<agent_id>` | `AgentRecord` | registry |
//! | `alive/<agent_id>` | registration time (ms); present while the agent heartbeats | registry |
//! | `frameworks/<framework_id>` | `FrameworkRecord` | offer-broker |
//! | `tasks/<framework_id>/<task_id>` | `TaskRecord` (TASK_STAGING, then the acknowledged end) | offer-broker |
//! | `roles/<role>` | `Role` (a role tree's `eng/web` is `roles/eng/web`) | registry |
//! | `reservations/<agent_id>` | `AgentReservations`: the agent's dynamic reservations | allocator (reservations API) |
//! | `policy/active` | `PolicyRecord` | allocator (admin API) |
//! | `policies/meta/<sha256>`, `policies/chunk/<sha256>/<n>` | `PolicyArtifact`, raw bytes | allocator |
//! | `mesos_endpoints/<advertised gRPC address>` | raw `host:port` of that broker's Mesos HTTP API | offer-broker |

use etcd_client::{
    Client, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use prost::Message;

/// The most operations one etcd transaction may hold: etcd's `--max-txn-ops` default.
pub const MAX_TXN_OPS: usize = 128;

/// etcd request latency, by operation (`put`, `get`, `txn`, `delete`, `watch`, `lease_grant`, ...).
static ETCD_SECONDS: std::sync::LazyLock<allot_telemetry::metrics::prometheus::HistogramVec> =
    std::sync::LazyLock::new(|| {
        allot_telemetry::metrics::histogram_vec(
            "allot_etcd_request_duration_seconds",
            "Latency of etcd requests, in seconds, by operation",
            &["db_operation"],
        )
    });

/// etcd requests that failed, by operation.
static ETCD_ERRORS: std::sync::LazyLock<allot_telemetry::metrics::prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        allot_telemetry::metrics::counter_vec(
            "allot_etcd_request_errors_total",
            "etcd requests that failed, by operation",
            &["db_operation"],
        )
    });

/// Runs one etcd request `op` (e.g. `"txn"`) inside a client span `etcd <op>` (`db.system = "etcd"`,
/// `db.operation.name`) and records its latency in `allot_etcd_request_duration_seconds` and failures in
/// `allot_etcd_request_errors_total`.
///
/// # Errors
/// The request's own error.
pub async fn traced<T>(
    op: &'static str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        "etcd",
        otel.name = %format_args!("etcd {op}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system = "etcd",
        db.operation.name = op,
    );
    let start = std::time::Instant::now();
    let result = request.instrument(span.clone()).await;
    ETCD_SECONDS
        .with_label_values(&[op])
        .observe(start.elapsed().as_secs_f64());
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
        ETCD_ERRORS.with_label_values(&[op]).inc();
    }
    result
}

/// The default key root.
pub const DEFAULT_ROOT: &str = "/allot/v1";

/// How long a write waits for etcd before it fails with [`StoreError::TimedOut`] (1.5 s), sending it again
/// meanwhile after each attempt unanswered for [`WRITE_ATTEMPT_TIMEOUT`] or failed at once. etcd itself gives
/// a proposal up only after about 5 s plus two election timeouts, and a proposal sent through a follower
/// whose leader just died waits that long; a new leader is elected within about a second. Well above a
/// healthy etcd's write latency (milliseconds, docs/benchmarks.md).
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// How long one attempt of a write may go unanswered before it is sent again, within [`WRITE_TIMEOUT`]. etcd
/// 3.4 drops the proposals a follower forwards to a leader that has just died, and answers them only at its
/// own request timeout: a write sent in the moment between the leader's death and its followers noticing it
/// (one election timeout) would otherwise wait out the whole [`WRITE_TIMEOUT`] and fail, although a new leader
/// is elected well within it. Far above a healthy write's latency (milliseconds; docs/benchmarks.md).
pub const WRITE_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(400);

/// The pause before a write that failed at once (connection refused, no leader) is sent again.
const WRITE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether a failed etcd call may succeed if made again at once: the member was unreachable or had no leader.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => allot_common::grpc::transient(s.code()),
        _ => false,
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd could not be reached or refused the request.
    #[error("etcd unavailable: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A stored value is not the protobuf message expected at its key.
    #[error("corrupt value at {key}: {source}")]
    Decode {
        /// The key.
        key: String,
        /// The decode error.
        source: prost::DecodeError,
    },
    /// A transaction of a [`GroupCommit`] failed; every request in it gets the same error, as text.
    #[error("etcd unavailable: {0}")]
    Grouped(String),
    /// A write of a fenced store (see [`Store::fence`]) was refused: this replica is no longer the leader.
    #[error("not the leader any more: the write is fenced off (another replica was elected)")]
    Fenced,
    /// etcd did not answer a write within [`WRITE_TIMEOUT`]; it may still apply it.
    #[error("etcd did not answer a write within {0:?}; it may or may not have been applied")]
    TimedOut(std::time::Duration),
}

impl StoreError {
    /// Whether the value read is corrupt (a bug or a foreign writer), as opposed to etcd being unavailable or
    /// this replica fenced off, which a retry or another replica can cure. Services map the first to
    /// `INTERNAL` and the rest to `UNAVAILABLE`.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Decode { .. })
    }
}

/// The entity kinds, each a key prefix below the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `agents/`
    Agents,
    /// `alive/`
    Alive,
    /// `frameworks/`
    Frameworks,
    /// `tasks/`
    Tasks,
    /// `roles/`
    Roles,
    /// `policy/`: the active-policy record.
    Policy,
    /// `policies/`: stored policy artifacts.
    Artifacts,
    /// `audit/`: the audit trail of operator actions (`crate::audit`).
    Audit,
    /// `reservations/`: dynamic reservations by agent (the allocator's).
    Reservations,
    /// `mesos_endpoints/<advertised gRPC address>`: where that broker replica serves Mesos' HTTP API (raw
    /// `host:port`), so that a standby can redirect Mesos frameworks to the leader's.
    MesosEndpoints,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Agents => "agents",
            Kind::Alive => "alive",
            Kind::Frameworks => "frameworks",
            Kind::Tasks => "tasks",
            Kind::Roles => "roles",
            Kind::Policy => "policy",
            Kind::Artifacts => "policies",
            Kind::Audit => "audit",
            Kind::Reservations => "reservations",
            Kind::MesosEndpoints => "mesos_endpoints",
        }
    }
}

/// The value of an agent's `alive/<agent_id>` key: the number of its current registration, in decimal (the
/// registry writes it; the offer-broker stamps launches with it, see `allot_agent::fence`).
pub fn alive_value(registration: u64) -> Vec<u8> {
    registration.to_string().into_bytes()
}

/// The registration an `alive` key's value names ([`alive_value`]); 0 (any registration) if it is not one.
pub fn alive_registration(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A handle on etcd with Allot's key layout. Cheap to clone; clones share one [`Store::fence`].
#[derive(Clone)]
pub struct Store {
    client: Client,
    root: String,
    fence: std::sync::Arc<Fence>,
}

/// The leader's fence shared by a store's clones: the election key and its create revision, once elected,
/// and whether a write found it gone.
#[derive(Default)]
struct Fence {
    term: std::sync::RwLock<Option<(Vec<u8>, i64)>>,
    tripped: tokio::sync::watch::Sender<bool>,
}

/// How long connecting to one etcd member may take.
const ETCD_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// HTTP/2 keepalive to etcd: interval, and how long an answer may take before the connection is dropped.
const ETCD_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// A channel to the etcd members at `endpoints` over mutual TLS (see [`Store::connect`]), connecting on first
/// use.
fn tls_channel(
    endpoints: &[String],
    tls: std::sync::Arc<allot_common::tls::Tls>,
) -> Result<tonic::transport::Channel, etcd_client::Error> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let invalid = |m: String| etcd_client::Error::InvalidArgs(m);
    let uris = endpoints
        .iter()
        .map(|e| {
            if e.starts_with("http://") {
                return Err(invalid(format!(
                    "etcd endpoint {e} is plaintext, but this process has TLS material: use https://, or --insecure"
                )));
            }
            let bare = e.strip_prefix("https://").unwrap_or(e);
            format!("https://{bare}")
                .parse::<http::Uri>()
                .map_err(|err| invalid(format!("etcd endpoint {e}: {err}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = uris.first().cloned() else {
        return Err(invalid("no etcd endpoint".into()));
    };
    let (uris, next) = (
        std::sync::Arc::new(uris),
        std::sync::Arc::new(AtomicUsize::new(0)),
    );
    let connector = tower::service_fn(move |_: http::Uri| {
        let (uris, next, tls) = (uris.clone(), next.clone(), tls.clone());
        async move {
            let start = next.load(Ordering::Relaxed);
            let mut last = None;
            for i in 0..uris.len() {
                let k = (start + i) % uris.len();
                let attempt = tokio::time::timeout(
                    ETCD_CONNECT_TIMEOUT,
                    allot_common::tls::connect(&uris[k], &tls),
                );
                match attempt.await {
                    Ok(Ok(io)) => {
                        // When this connection breaks, the next one starts at the following member.
                        next.store(k + 1, Ordering::Relaxed);
                        return Ok(io);
                    }
                    Ok(Err(e)) => last = Some(e),
                    Err(_) => {
                        last = Some(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("{}: connect timed out", uris[k]),
                        ))
                    }
                }
            }
            Err(last.expect("at least one endpoint"))
        }
    });
    // The authority is the first member's; the connector decides where each connection goes and runs the TLS
    // handshake itself, so the channel's own scheme is `http` (tonic refuses `https` without its own TLS).
    let plain = format!("http://{}", first.authority().map_or("", |a| a.as_str()))
        .parse::<http::Uri>()
        .map_err(|e| invalid(format!("etcd endpoint {first}: {e}")))?;
    let endpoint = tonic::transport::Endpoint::from(plain)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(ETCD_KEEPALIVE)
        .keep_alive_timeout(ETCD_KEEPALIVE)
        .keep_alive_while_idle(true);
    // Lazy, as the plaintext client's balanced channel is: a service starts while etcd is down or stalled, and
    // each call waits for (and reports) the connection.
    Ok(endpoint.connect_with_connector_lazy(connector))
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// Connects to etcd at `endpoints` (`host:port`, or with `http://` / `https://`), using `root` as the
    /// key root: over mutual TLS with `tls`'s material when given (etcd run with `--client-cert-auth`), in
    /// plaintext otherwise.
    ///
    /// Over TLS the connection goes to one member at a time through [`allot_common::tls::connect`], so that
    /// rotated certificates are used by the next connection; when a connection breaks, the next one tries the
    /// following member first (the other members in turn if it cannot be reached).
    ///
    /// Connections are made on first use, in both modes: a service starts while etcd is down, and its calls
    /// fail (and are retried) until etcd answers.
    ///
    /// # Errors
    /// [`StoreError::Etcd`] for an invalid endpoint, or one whose scheme contradicts the mode (`http://` with
    /// TLS material, `https://` without).
    pub async fn connect(
        endpoints: &[String],
        root: &str,
        tls: Option<&std::sync::Arc<allot_common::tls::Tls>>,
    ) -> Result<Self, StoreError> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(ETCD_CONNECT_TIMEOUT)
            .with_keep_alive(ETCD_KEEPALIVE, ETCD_KEEPALIVE);
        let client = match tls {
            None => {
                if let Some(e) = endpoints.iter().find(|e| e.starts_with("https://")) {
                    return Err(etcd_client::Error::InvalidArgs(format!(
                        "etcd endpoint {e} is TLS, but this process runs --insecure (plaintext)"
                    ))
                    .into());
                }
                // etcd-client dials a bare `host:port` over http itself.
                Client::connect(endpoints, Some(opts)).await?
            }
            Some(tls) => {
                let channel = tls_channel(endpoints, tls.clone())?;
                Client::from_channel(etcd_client::Channel::Tonic(channel), Some(opts)).await?
            }
        };
        Ok(Self {
            client,
            root: root.trim_end_matches('/').to_string(),
            fence: Default::default(),
        })
    }

    /// Fences every later write of this store and its clones with a leader's election key: each write is a
    /// transaction that takes effect only while `key` still exists with create revision `revision`, i.e.
    /// while this replica's term lasts. A leader that stalled past its lease (a long pause, a frozen VM) and
    /// wakes up after a standby took over can then write nothing: its write fails with
    /// [`StoreError::Fenced`] and [`Store::fenced_out`] resolves, so that it steps down. (The fencing-token
    /// idea of Chubby, Burrows OSDI 2006; etcd's election API gives the key and revision.)
    pub fn fence(&self, key: Vec<u8>, revision: i64) {
        *self.fence.term.write().expect("fence poisoned") = Some((key, revision));
    }

    /// Resolves once a write was refused because the fence's key is gone (see [`Store::fence`]).
    pub async fn fenced_out(&self) {
        let _ = self.fence.tripped.subscribe().wait_for(|t| *t).await;
    }

    /// Runs `ops` in one transaction, guarded by the fence if there is one.
    async fn write(&self, what: &'static str, ops: Vec<TxnOp>) -> Result<i64, StoreError> {
        use etcd_client::{Compare, CompareOp};
        let fence = self
            .fence
            .term
            .read()
            .expect("fence poisoned")
            .as_ref()
            .map(|(key, rev)| Compare::create_revision(key.clone(), CompareOp::Equal, *rev));
        let txn = match fence {
            Some(compare) => Txn::new().when([compare]).and_then(ops),
            None => Txn::new().and_then(ops),
        };
        let resp = self.send_txn(what, txn).await?;
        if !resp.succeeded() {
            self.fence.tripped.send_replace(true);
            tracing::error!("a write was fenced off: another replica leads now");
            return Err(StoreError::Fenced);
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Sends `txn`, again after a transient failure or an attempt of more than [`WRITE_ATTEMPT_TIMEOUT`],
    /// until [`WRITE_TIMEOUT`] has passed. Every write Allot makes is idempotent (puts of whole values,
    /// deletes, guarded by the fence's compare, which a repeat passes as the first did), so a repeat of an
    /// attempt that etcd did apply after all changes nothing.
    async fn send_txn(
        &self,
        what: &'static str,
        txn: Txn,
    ) -> Result<etcd_client::TxnResponse, StoreError> {
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::TimedOut(WRITE_TIMEOUT));
            }
            let attempt = tokio::time::timeout(
                left.min(WRITE_ATTEMPT_TIMEOUT),
                traced(what, self.client.kv_client().txn(txn.clone())),
            )
            .await;
            match attempt {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) if transient(&e) => {
                    tracing::debug!(error = %e, "etcd write failed; sending it again");
                    tokio::time::sleep(WRITE_RETRY_DELAY.min(left)).await;
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => tracing::debug!("etcd write not answered in time; sending it again"),
            }
        }
    }

    /// The key root (e.g. `/allot/v1`), without a trailing `/`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The underlying etcd client, for leases and transactions beyond this API.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The key of entity `id` (which may contain `/`, e.g. `fw/task`) of `kind`.
    pub fn key(&self, kind: Kind, id: &str) -> String {
        format!("{}/{}/{}", self.root, kind.dir(), id)
    }

    /// The key of task `task` of framework `framework`.
    pub fn task_key(&self, framework: &str, task: &str) -> String {
        self.key(Kind::Tasks, &format!("{framework}/{task}"))
    }

    /// The prefix of every key of `kind`, ending in `/`.
    pub fn prefix(&self, kind: Kind) -> String {
        format!("{}/{}/", self.root, kind.dir())
    }

    /// The entity ID of `key` of `kind` (the key less its prefix).
    pub fn id_of<'a>(&self, kind: Kind, key: &'a str) -> &'a str {
        let p = self.prefix(kind);
        key.strip_prefix(p.as_str()).unwrap_or(key)
    }

    /// Writes `value` at `key`, bound to `lease` when given. Returns the new revision.
    ///
    /// # Errors
    /// [`StoreError::Etcd`]; [`StoreError::Fenced`] when this store is fenced and its term is over.
    pub async fn put<M: Message>(
        &self,
        key: &str,
        value: &M,
        lease: Option<i64>,
    ) -> Result<i64, StoreError> {
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        self.write("put", vec![TxnOp::put(key, value.encode_to_vec(), opts)])
            .await
    }

    /// Writes every `(key, encoded value)` in one transaction. Returns the new revision (0 for no items).
    ///
    /// # Errors
    /// [`StoreError::Etcd`]; [`StoreError::Fenced`] when this store is fenced and its term is over.
    pub async fn put_all_encoded(&self, items: Vec<(String, Vec<u8>)>) -> Result<i64, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        let ops: Vec<TxnOp> = items
            .into_iter()
            .map(|(k, v)| TxnOp::put(k, v, None))
            .collect();
        self.write("txn", ops).await
    }

    /// Writes independent encoded records in transactions of at most [`MAX_TXN_OPS`] puts each, sent
    /// concurrently; unlike [`Store::put_all_encoded`], the whole is not atomic (each chunk is). For batches whose
    /// records stand alone, such as status updates and acknowledgements of different tasks. Keys must be
    /// distinct (etcd refuses a transaction that names a key twice). Returns, in order, how many records each
    /// transaction held and its outcome, so that a caller can tell which records were written.
    pub async fn put_chunks(&self, items: Encoded) -> Vec<(usize, Result<i64, StoreError>)> {
        // Each record moves once (splitting chunks off the front would move the rest every time).
        let mut chunks: Vec<Encoded> = Vec::with_capacity(items.len().div_ceil(MAX_TXN_OPS));
        for (i, item) in items.into_iter().enumerate() {
            if i % MAX_TXN_OPS == 0 {
                chunks.push(Vec::with_capacity(MAX_TXN_OPS));
            }
            chunks.last_mut().expect("pushed above").push(item);
        }
        let puts = chunks
            .into_iter()
            .map(|chunk| async move { (chunk.len(), self.put_all_encoded(chunk).await) });
        futures::future::join_all(puts).await
    }

    /// [`Store::put_chunks`] of messages, for a caller that only needs to know whether everything was written.
    ///
    /// # Errors
    /// [`StoreError::Etcd`] if any chunk fails; the chunks that succeeded stay written.
    pub async fn put_chunked<M: Message>(&self, items: &[(String, M)]) -> Result<(), StoreError> {
        let encoded = items
            .iter()
            .map(|(k, v)| (k.clone(), v.encode_to_vec()))
            .collect();
        for (_, r) in self.put_chunks(encoded).await {
            r?;
        }
        Ok(())
    }

    /// Reads the message at `key` with its modification revision.
    ///
    /// # Errors
    /// [`StoreError::Etcd`], or [`StoreError::Decode`] if the value is not an `M`.
    pub async fn get<M: Message + Default>(
        &self,
        key: &str,
    ) -> Result<Option<(M, i64)>, StoreError> {
        let resp = self.range(key, None).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some((decode(kv.key(), kv.value())?, kv.mod_revision()))),
        }
    }

    /// One traced etcd range read (`etcd get`).
    async fn range(
        &self,
        key: &str,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, etcd_client::Error> {
        traced("get", self.client.kv_client().get(key, options)).await
    }

    /// Whether `key` exists.
    ///
    /// # Errors
    /// [`StoreError::Etcd`].
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let resp = self
            .range(key, Some(GetOptions::new().with_count_only()))
            .await?;
        Ok(resp.count() > 0)
    }

    /// Every entity under `prefix` (a full key prefix), with the store revision the read saw.
    ///
    /// # Errors
    /// [`StoreError::Etcd`], or [`StoreError::Decode`] for a value that is not an `M`.
    pub async fn list<M: Message + Default>(
        &self,
        prefix: &str,
    ) -> Result<(Vec<(String, M)>, i64), StoreError> {
        let resp = self
            .range(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            out.push((
                String::from_utf8_lossy(kv.key()).into_owned(),
                decode(kv.key(), kv.value())?,
            ));
        }
        Ok((out, rev))
    }

    /// Every key under `prefix` with its modification revision, values ignored.
    ///
    /// # Errors
    /// [`StoreError::Etcd`].
    pub async fn keys(&self, prefix: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let resp = self
            .range(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.mod_revision(),
                )
            })
            .collect())
    }

    /// Deletes each `(key, mod_revision)` item whose key is still at that revision, and returns, per item,
    /// whether it was deleted (a key rewritten since, or already gone, is left alone). At most [`MAX_TXN_OPS`]
    /// items. One transaction when nothing changed; otherwise its failure branch reads the keys' current
    /// revisions and the items still unchanged are deleted in the next one.
    ///
    /// # Errors
    /// [`StoreError::Etcd`]; items deleted before the error stay deleted.
    pub async fn delete_if_unchanged(
        &self,
        items: &[(String, i64)],
    ) -> Result<Vec<bool>, StoreError> {
        use etcd_client::{Compare, CompareOp, TxnOpResponse};
        let mut deleted = vec![false; items.len()];
        let mut pending: Vec<usize> = (0..items.len()).collect();
        while !pending.is_empty() {
            let compares: Vec<Compare> = pending
                .iter()
                .map(|&i| Compare::mod_revision(items[i].0.as_str(), CompareOp::Equal, items[i].1))
                .collect();
            let deletes: Vec<TxnOp> = pending
                .iter()
                .map(|&i| TxnOp::delete(items[i].0.as_str(), None))
                .collect();
            let reads: Vec<TxnOp> = pending
                .iter()
                .map(|&i| {
                    TxnOp::get(
                        items[i].0.as_str(),
                        Some(GetOptions::new().with_keys_only()),
                    )
                })
                .collect();
            let txn = Txn::new().when(compares).and_then(deletes).or_else(reads);
            let resp = traced("txn", self.client.kv_client().txn(txn)).await?;
            if resp.succeeded() {
                for &i in &pending {
                    deleted[i] = true;
                }
                break;
            }
            let before = pending.len();
            pending = pending
                .into_iter()
                .zip(resp.op_responses())
                .filter(|(i, read)| match read {
                    TxnOpResponse::Get(r) => {
                        r.kvs().first().map(|kv| kv.mod_revision()) == Some(items[*i].1)
                    }
                    _ => false,
                })
                .map(|(i, _)| i)
                .collect();
            if pending.len() == before {
                // Nothing changed between the compare and the read (cannot happen): do not loop.
                break;
            }
        }
        Ok(deleted)
    }

    /// Writes raw `bytes` at `key`.
    ///
    /// # Errors
    /// [`StoreError::Etcd`]; [`StoreError::Fenced`] when this store is fenced and its term is over.
    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.write("put", vec![TxnOp::put(key, bytes, None)])
            .await?;
        Ok(())
    }

    /// Every `(key, raw value)` under `prefix`, in key order.
    ///
    /// # Errors
    /// [`StoreError::Etcd`].
    pub async fn list_bytes(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let resp = self
            .range(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect())
    }

    /// Deletes `key`.
    ///
    /// # Errors
    /// [`StoreError::Etcd`]; [`StoreError::Fenced`] when this store is fenced and its term is over.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.write("delete", vec![TxnOp::delete(key, None)]).await?;
        Ok(())
    }

    /// Deletes every key of `keys` (in transactions of at most [`MAX_TXN_OPS`] keys; a key that does not exist
    /// is no error).
    ///
    /// # Errors
    /// [`StoreError::Etcd`]; [`StoreError::Fenced`] when this store is fenced and its term is over. Keys of the
    /// transactions before the failed one are deleted.
    pub async fn delete_all(&self, keys: &[String]) -> Result<(), StoreError> {
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let ops = chunk
                .iter()
                .map(|k| TxnOp::delete(k.as_str(), None))
                .collect();
            self.write("delete", ops).await?;
        }
        Ok(())
    }

    /// Deletes every key under `prefix`.
    ///
    /// # Errors
    /// [`StoreError::Etcd`]; [`StoreError::Fenced`] when this store is fenced and its term is over.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.write(
            "delete",
            vec![TxnOp::delete(
                prefix,
                Some(DeleteOptions::new().with_prefix()),
            )],
        )
        .await?;
        Ok(())
    }

    /// Watches every key under `prefix` from revision `from` (inclusive; 0 means now).
    ///
    /// # Errors
    /// [`StoreError::Etcd`].
    pub async fn watch(&self, prefix: &str, from: i64) -> Result<WatchStream, StoreError> {
        let mut opts = WatchOptions::new().with_prefix();
        if from > 0 {
            opts = opts.with_start_revision(from);
        }
        Ok(traced(
            "watch",
            self.client.watch_client().watch(prefix, Some(opts)),
        )
        .await?)
    }
}

/// Decodes a protobuf value read at `key`.
///
/// # Errors
/// [`StoreError::Decode`].
pub fn decode<M: Message + Default>(key: &[u8], value: &[u8]) -> Result<M, StoreError> {
    M::decode(value).map_err(|source| StoreError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// Follows every key under `prefix` for as long as the returned future runs: first a full listing, then a
/// watch from the listing's revision. `on_change(id, Some(value))` is called for each key present or put,
/// `on_change(id, None)` for each key deleted, where `id` is the key less `prefix`. When the watch fails (etcd
/// restarted, revision compacted), it lists again after `retry`, reporting deletions for keys that vanished
/// meanwhile, so the caller's view converges on etcd's.
pub async fn follow_prefix(
    store: Store,
    prefix: String,
    retry: std::time::Duration,
    mut on_change: impl FnMut(&str, Option<&[u8]>) + Send,
) {
    let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        if let Err(e) = follow_once(&store, &prefix, &mut known, &mut on_change).await {
            tracing::warn!(%prefix, error = %e, "etcd watch failed; listing again");
        }
        tokio::time::sleep(retry).await;
    }
}

async fn follow_once(
    store: &Store,
    prefix: &str,
    known: &mut std::collections::HashSet<String>,
    on_change: &mut (impl FnMut(&str, Option<&[u8]>) + Send),
) -> Result<(), StoreError> {
    let resp = store
        .range(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut present = std::collections::HashSet::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let id = key.strip_prefix(prefix).unwrap_or(&key).to_string();
        on_change(&id, Some(kv.value()));
        present.insert(id);
    }
    for gone in known.difference(&present) {
        on_change(gone, None);
    }
    *known = present;
    let mut stream = store.watch(prefix, rev + 1).await?;
    while let Some(resp) = stream.message().await? {
        if resp.canceled() {
            return Err(StoreError::Etcd(etcd_client::Error::WatchError(format!(
                "watch canceled: {}",
                resp.cancel_reason()
            ))));
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            let id = key.strip_prefix(prefix).unwrap_or(&key).to_string();
            match ev.event_type() {
                etcd_client::EventType::Put => {
                    on_change(&id, Some(kv.value()));
                    known.insert(id);
                }
                etcd_client::EventType::Delete => {
                    on_change(&id, None);
                    known.remove(&id);
                }
            }
        }
    }
    Ok(())
}

/// Records as a [`GroupCommit`] takes them: keys and encoded values.
pub type Encoded = Vec<(String, Vec<u8>)>;

/// One request to a [`GroupCommit`]: records to write atomically, where to answer, and the caller's span.
type GroupRequest = (
    Encoded,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    tracing::Span,
);

/// Group commit: concurrent writers' records go to etcd together. While one round of transactions is in
/// flight, new requests queue; the next round packs all of them into as few transactions as fit
/// ([`MAX_TXN_OPS`] puts each, a key at most once per transaction, each request whole in one transaction so
/// that it stays atomic; a request larger than a transaction is written alone in chunks). etcd's CPU cost is
/// mostly per transaction, so many small concurrent writes (one ACCEPT each) cost a fraction of what they
/// would alone, for at most one round trip of extra latency. Records come encoded, so that a caller keeps its
/// own copy without cloning it. A transaction's `etcd txn` span is a child of the first request's span in it.
/// The background task ends with the last handle.
pub struct GroupCommit {
    tx: tokio::sync::mpsc::UnboundedSender<GroupRequest>,
}

impl GroupCommit {
    /// Starts the committer on `store`.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(commit_rounds(store, rx));
        Self { tx }
    }

    /// Writes `items` in one transaction (several, not atomic as a whole, if more than [`MAX_TXN_OPS`]),
    /// together with whatever other requests queued meanwhile.
    ///
    /// # Errors
    /// [`StoreError::Grouped`] if the transaction failed (nothing of `items` is written then, unless they
    /// needed several transactions), [`StoreError::Etcd`] for a failed chunk of an oversized request.
    pub async fn put_all(&self, items: Encoded) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send((items, reply, tracing::Span::current()))
            .map_err(|_| StoreError::Grouped("the group committer stopped".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Grouped("the group committer stopped".into())))
    }
}

/// One transaction of a round: the records of whole requests, their answers, and the first caller's span
/// (the transaction's `etcd txn` span is its child).
type Group = (
    Encoded,
    Vec<tokio::sync::oneshot::Sender<Result<(), StoreError>>>,
    tracing::Span,
);

async fn commit_rounds(store: Store, mut rx: tokio::sync::mpsc::UnboundedReceiver<GroupRequest>) {
    use tracing::Instrument as _;
    while let Some(first) = rx.recv().await {
        let mut requests = vec![first];
        while let Ok(more) = rx.try_recv() {
            requests.push(more);
        }
        // Pack whole requests into groups of at most MAX_TXN_OPS distinct keys.
        let mut groups: Vec<Group> = Vec::new();
        let mut alone = Vec::new();
        let mut keys: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (items, reply, span) in requests {
            if items.len() > MAX_TXN_OPS {
                alone.push((items, reply, span));
                continue;
            }
            let fits = groups
                .last()
                .is_some_and(|(g, _, _)| g.len() + items.len() <= MAX_TXN_OPS)
                && items.iter().all(|(k, _)| !keys.contains(k));
            if !fits {
                groups.push((Vec::new(), Vec::new(), span));
                keys.clear();
            }
            let (g, replies, _) = groups.last_mut().expect("a group");
            keys.extend(items.iter().map(|(k, _)| k.clone()));
            g.extend(items);
            replies.push(reply);
        }
        let store = &store;
        let rounds = groups.into_iter().map(|(items, replies, span)| async move {
            let result = store.put_all_encoded(items).instrument(span).await;
            for r in replies {
                let _ = r.send(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| StoreError::Grouped(e.to_string())),
                );
            }
        });
        let singles = alone.into_iter().map(|(items, reply, span)| async move {
            let mut chunks = Vec::new();
            let mut rest = items.into_iter().peekable();
            while rest.peek().is_some() {
                chunks.push(rest.by_ref().take(MAX_TXN_OPS).collect::<Encoded>());
            }
            let written =
                futures::future::join_all(chunks.into_iter().map(|c| store.put_all_encoded(c)))
                    .instrument(span)
                    .await;
            let _ = reply.send(written.into_iter().try_for_each(|r| r.map(|_| ())));
        });
        futures::future::join(
            futures::future::join_all(rounds),
            futures::future::join_all(singles),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alive_value_names_its_registration() {
        assert_eq!(
            alive_registration(&alive_value(1_796_260_915_495)),
            1_796_260_915_495
        );
        assert_eq!(alive_registration(b"not a number"), 0);
    }

    #[test]
    fn only_failures_a_retry_can_cure_are_transient() {
        let status = |code| etcd_client::Error::GRpcStatus(tonic::Status::new(code, "x"));
        assert!(
            transient(&status(tonic::Code::Unavailable)),
            "no leader, member down"
        );
        assert!(transient(&status(tonic::Code::Unknown)), "transport error");
        assert!(!transient(&status(tonic::Code::InvalidArgument)));
        assert!(!transient(&status(tonic::Code::PermissionDenied)));
        assert!(!transient(&etcd_client::Error::InvalidArgs("x".into())));
    }
}
