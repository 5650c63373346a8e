//! The integration test harness.
//!
//! - [`Etcd`]: a real `etcd` process (Debian's etcd-server) on free loopback ports, with its data in a
//!   temporary directory; killed on drop.
//! - [`Cluster`]: etcd plus the registry, allocator and offer-broker, each served by its library's `run` on
//!   its own `127.0.0.1:0` listener; agents are added with [`Cluster::add_agent`] and run real commands.
//! - [`TestFramework`]: a scheduler speaking the raw gRPC scheduler API, with waits on its event stream.
//! - [`eventually`]: polls a condition until it holds or the patience runs out.
//! - [`procs::ProcessCluster`]: the same services as real processes (the built binaries), with `/metrics`;
//!   [`otlp::OtlpReceiver`]: an in-process OTLP trace receiver, for telemetry tests.

pub mod faults;
pub mod fill;
pub mod fuzz;
pub mod otlp;
pub mod procs;

use allot_common::grpc::Channel;
use allot_proto::common::{CommandInfo, FrameworkInfo, Resource, TaskInfo, TaskState, TaskStatus};
use allot_proto::scheduler::{self as pb, event, scheduler_client::SchedulerClient};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long waits last before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Starts logging for a test once (`ALLOT_LOG` or `RUST_LOG` select the level; default warnings).
pub fn init_logging() {
    let filter = std::env::var("ALLOT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A free TCP port on 127.0.0.1 (bound and released; etcd binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A real etcd on loopback: one member, or a cluster of several ([`Etcd::start_cluster`]). By default it is
/// secured as `deploy/local/run.sh` runs it: mutual TLS for clients and peers (`--client-cert-auth`), with
/// a certificate authority made for it in its directory ([`Etcd::tls_dir`]), which the cluster's services
/// and clients use too.
pub struct Etcd {
    members: Vec<Member>,
    /// The first member's client URL, `https://127.0.0.1:PORT` (`http://` for [`Etcd::start_insecure`]).
    pub endpoint: String,
    /// Every member's client URL, comma-separated (what the services are given).
    pub endpoints: String,
    /// `--initial-cluster`: `name=peer_url,...`.
    initial_cluster: String,
    /// The TLS material's directory (`dir/tls`); `None` for a plaintext etcd.
    tls: Option<PathBuf>,
    dir: tempfile::TempDir,
}

/// One etcd member.
struct Member {
    name: String,
    client: String,
    peer: String,
    /// `/metrics` in plain HTTP, `127.0.0.1:PORT` (the client port requires a certificate).
    metrics: String,
    child: Option<Child>,
}

/// The etcd flag Allot runs etcd with (docs/operations.md, "Running etcd"): commit the backend every 10 ms
/// instead of 100 ms.
pub const ETCD_BACKEND_BATCH_INTERVAL: &str = "--backend-batch-interval=10ms";

/// The Raft timing Allot runs a local etcd with (docs/operations.md, "Running etcd"): heartbeats every 50 ms
/// and an election timeout of 500 ms instead of 100 ms and 1 s, so that losing the leading member stops writes
/// for 0.6-0.95 s instead of 1.25-2 s (etcd's tuning guide: heartbeat about the round trip between members,
/// election timeout ten times that or more; loopback's round trip is far below a millisecond).
pub const ETCD_RAFT_TIMING: [&str; 2] = ["--heartbeat-interval=50", "--election-timeout=500"];

/// Starts etcd member `m` of the cluster `initial_cluster`, with its data in `dir/<name>`, over mutual TLS
/// with the material in `tls` if given, with the flags in `$ALLOT_ETCD_FLAGS` (whitespace-separated) added. A
/// restarted member finds its data and rejoins.
fn spawn_etcd(
    dir: &std::path::Path,
    m: &Member,
    initial_cluster: &str,
    tls: Option<&std::path::Path>,
) -> Child {
    let mut tls_flags: Vec<std::ffi::OsString> = Vec::new();
    if let Some(t) = tls {
        let (ca, cert, key) = (t.join("ca.pem"), t.join("etcd.pem"), t.join("etcd-key.pem"));
        for (flag, path) in [
            ("--trusted-ca-file", &ca),
            ("--cert-file", &cert),
            ("--key-file", &key),
            ("--peer-trusted-ca-file", &ca),
            ("--peer-cert-file", &cert),
            ("--peer-key-file", &key),
        ] {
            tls_flags.push(flag.into());
            tls_flags.push(path.into());
        }
        tls_flags.push("--client-cert-auth".into());
        tls_flags.push("--peer-client-cert-auth".into());
    }
    Command::new("etcd")
        .args(tls_flags)
        .args(["--name", &m.name, "--data-dir"])
        .arg(dir.join(&m.name))
        .args([
            "--listen-client-urls",
            &m.client,
            "--advertise-client-urls",
            &m.client,
        ])
        .args([
            "--listen-peer-urls",
            &m.peer,
            "--initial-advertise-peer-urls",
            &m.peer,
        ])
        .args(["--initial-cluster", initial_cluster])
        .arg(format!("--listen-metrics-urls=http://{}", m.metrics))
        .args(["--initial-cluster-token", "allot-test"])
        // See docs/operations.md, "Running etcd": etcd 3.4 copies its uncommitted write buffer for every
        // transaction; a short batch interval keeps that buffer small.
        .arg(ETCD_BACKEND_BATCH_INTERVAL)
        .args(ETCD_RAFT_TIMING)
        // More flags for experiments (later ones win): `--enable-pprof` to profile etcd, other batch settings.
        .args(
            std::env::var("ALLOT_ETCD_FLAGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd is installed (apt-get install etcd-server)")
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    ///
    /// # Panics
    /// If `etcd` is not installed (`apt-get install etcd-server`) or does not answer within 15 seconds.
    pub async fn start() -> Etcd {
        Self::start_cluster(1).await
    }

    /// Starts a plaintext etcd (one member, no TLS), for services run `--insecure`.
    ///
    /// # Panics
    /// As [`Etcd::start`].
    pub async fn start_insecure() -> Etcd {
        Self::start_members(1, false).await
    }

    /// Starts an etcd cluster of `n` members on loopback and waits until it answers.
    ///
    /// # Panics
    /// As [`Etcd::start`].
    pub async fn start_cluster(n: usize) -> Etcd {
        Self::start_members(n, true).await
    }

    async fn start_members(n: usize, secure: bool) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = secure.then(|| {
            let tls = dir.path().join("tls");
            issue_cluster_pki(&tls);
            tls
        });
        let scheme = if secure { "https" } else { "http" };
        let mut members: Vec<Member> = (0..n.max(1))
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer: format!("{scheme}://127.0.0.1:{}", free_port()),
                metrics: format!("127.0.0.1:{}", free_port()),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.child = Some(spawn_etcd(dir.path(), m, &initial_cluster, tls.as_deref()));
        }
        let endpoints = members
            .iter()
            .map(|m| m.client.clone())
            .collect::<Vec<_>>()
            .join(",");
        let etcd = Etcd {
            endpoint: members[0].client.clone(),
            endpoints,
            members,
            initial_cluster,
            tls,
            dir,
        };
        etcd.await_answer().await;
        etcd
    }

    /// Every member's client URL.
    fn endpoint_list(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    async fn await_answer(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(store) = allot_server::Store::connect(
                &self.endpoint_list(),
                "/probe",
                self.dialer("registry").material(),
            )
            .await
                && store.exists("/probe").await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not start at {}",
                self.endpoints
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills every member with SIGKILL, leaves etcd down for `down`, and starts it again on the same ports and
    /// data; returns once it answers.
    pub async fn kill_and_restart(&mut self, down: Duration) {
        self.kill();
        tokio::time::sleep(down).await;
        self.restart().await;
    }

    /// Kills every member with SIGKILL and waits for them to exit; [`Etcd::restart`] brings them back.
    pub fn kill(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Starts every member again on the same ports and data after [`Etcd::kill`]; returns once etcd answers.
    pub async fn restart(&mut self) {
        for i in 0..self.members.len() {
            self.start_member(i);
        }
        self.await_answer().await;
    }

    /// Kills member `i` with SIGKILL and waits for it to exit.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again (it rejoins with its data) after [`Etcd::kill_member`]; returns once etcd
    /// answers.
    pub async fn restart_member(&mut self, i: usize) {
        self.start_member(i);
        self.await_answer().await;
    }

    fn start_member(&mut self, i: usize) {
        if self.members[i].child.is_none() {
            let child = spawn_etcd(
                self.dir.path(),
                &self.members[i],
                &self.initial_cluster,
                self.tls.as_deref(),
            );
            self.members[i].child = Some(child);
        }
    }

    /// The index of the member that is the Raft leader now, if a member that answers knows one.
    pub async fn leader_member(&self) -> Option<usize> {
        for m in &self.members {
            let Ok(mut c) = self.member_client(&m.client).await else {
                continue;
            };
            let Ok(status) = c.status().await else {
                continue;
            };
            let leader = status.leader();
            for (i, other) in self.members.iter().enumerate() {
                let Ok(mut c) = self.member_client(&other.client).await else {
                    continue;
                };
                if let Ok(s) = c.status().await
                    && s.header().map(|h| h.member_id()) == Some(leader)
                {
                    return Some(i);
                }
            }
        }
        None
    }
}

impl Etcd {
    /// The first member's process ID.
    pub fn pid(&self) -> u32 {
        self.members[0].child.as_ref().map_or(0, Child::id)
    }

    /// The first member's plain-HTTP metrics address (`GET /metrics`), `127.0.0.1:PORT`.
    pub fn metrics_addr(&self) -> &str {
        &self.members[0].metrics
    }

    /// The first member's client address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint
            .split("://")
            .last()
            .and_then(|a| a.parse().ok())
            .expect("etcd's endpoint is http(s)://IP:PORT")
    }

    /// A store on this etcd (every member), under the services' default root.
    pub async fn store(&self) -> allot_server::Store {
        allot_server::Store::connect(
            &self.endpoint_list(),
            allot_server::store::DEFAULT_ROOT,
            self.dialer("registry").material(),
        )
        .await
        .expect("etcd")
    }

    /// An etcd client of every member (as a service connects: over TLS when etcd is secured).
    pub async fn client(&self) -> etcd_client::Client {
        self.store().await.client()
    }

    /// A client of the one member at `url`.
    async fn member_client(
        &self,
        url: &str,
    ) -> Result<etcd_client::Client, allot_server::StoreError> {
        let store = allot_server::Store::connect(
            &[url.to_string()],
            "/",
            self.dialer("registry").material(),
        )
        .await?;
        Ok(store.client())
    }

    /// The directory of the TLS material etcd and the cluster's services use (`allot certs init`'s layout);
    /// `None` for [`Etcd::start_insecure`].
    pub fn tls_dir(&self) -> Option<&std::path::Path> {
        self.tls.as_deref()
    }

    /// How principal `name` connects: mutual TLS with its certificate (issued now from the authority if it
    /// has none yet; its kind from the name's prefix, `agent-`, `framework-`, `operator`, else service), or
    /// plaintext for an insecure etcd.
    ///
    /// # Panics
    /// If the certificate cannot be issued or loaded.
    pub fn dialer(&self, name: &str) -> allot_common::grpc::Dialer {
        dialer_in(self.tls_dir(), name)
    }

    /// The operator's dialer ([`Etcd::dialer`] of principal `operator`).
    pub fn operator(&self) -> allot_common::grpc::Dialer {
        self.dialer("operator")
    }

    /// A service binary's flags for principal `name`: `--tls-dir DIR --tls-name NAME` (issued on demand, as
    /// [`Etcd::dialer`]), or `--insecure`.
    pub fn tls_flags(&self, name: &str) -> Vec<String> {
        match self.tls_dir() {
            Some(dir) => {
                material(dir, name);
                vec![
                    "--tls-dir".into(),
                    dir.display().to_string(),
                    "--tls-name".into(),
                    name.into(),
                ]
            }
            None => vec!["--insecure".into()],
        }
    }

    /// `--tls-dir`/`--tls-name` for principal `name` (issued on demand, as [`Etcd::dialer`]), or `--insecure`.
    pub fn tls_args(&self, name: &str) -> allot_server::config::TlsArgs {
        tls_args(self.tls_dir(), name)
    }
}

/// Makes a cluster's authority and certificates in `dir`, as `allot certs init` does (agents and frameworks
/// are issued on demand by [`Etcd::dialer`]).
fn issue_cluster_pki(dir: &std::path::Path) {
    use allot_server::certs;
    let validity = certs::Validity::days(2);
    certs::init_authority(dir, validity, false).expect("a certificate authority");
    let principals = certs::cluster(&[], &["default".into()]).expect("principals");
    certs::issue(dir, &principals, &[], validity).expect("certificates");
}

/// `--tls-dir`/`--tls-name` for principal `name` in `dir` (issued on demand), or `--insecure` without a
/// directory.
fn tls_args(dir: Option<&std::path::Path>, name: &str) -> allot_server::config::TlsArgs {
    match dir {
        Some(dir) => {
            material(dir, name);
            allot_server::config::TlsArgs::in_dir(dir, name)
        }
        None => allot_server::config::TlsArgs::insecure(),
    }
}

/// How principal `name` connects with the material in `dir` (issued on demand), or in plaintext without one.
fn dialer_in(dir: Option<&std::path::Path>, name: &str) -> allot_common::grpc::Dialer {
    allot_common::grpc::Dialer::new(dir.map(|dir| material(dir, name)))
}

/// The TLS material of principal `name` in `dir`, issued first if it has none; loaded once per process (it
/// reloads itself when its files change), so that tests polling a service do not read the files every time.
fn material(dir: &std::path::Path, name: &str) -> Arc<allot_common::tls::Tls> {
    use allot_server::certs;
    // One issuer at a time (two writing the same principal could leave one's key beside the other's
    // certificate), and the loaded material by its certificate's path.
    static LOADED: std::sync::Mutex<Vec<(PathBuf, Arc<allot_common::tls::Tls>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let files = allot_common::tls::TlsFiles::in_dir(dir, name);
    if let Some((_, tls)) = loaded.iter().find(|(cert, _)| *cert == files.cert) {
        return tls.clone();
    }
    if !files.cert.exists() {
        certs::issue(
            dir,
            &[certs::Principal::new(name, certs::kind_of(name))],
            &[],
            certs::Validity::days(2),
        )
        .expect("a certificate");
    }
    let cert = files.cert.clone();
    let tls = allot_common::tls::Tls::open(files).expect("TLS material");
    loaded.push((cert, tls.clone()));
    tls
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Framework `fw` as etcd records it.
///
/// # Panics
/// If etcd cannot be read or has no such framework.
pub async fn recorded_framework(
    store: &allot_server::Store,
    fw: &str,
) -> allot_proto::common::FrameworkRecord {
    store
        .get::<allot_proto::common::FrameworkRecord>(
            &store.key(allot_server::store::Kind::Frameworks, fw),
        )
        .await
        .expect("read")
        .expect("the framework is in etcd")
        .0
}

/// Task `task` of framework `fw` as etcd records it.
///
/// # Panics
/// If etcd cannot be read or has no such task.
pub async fn recorded_task(
    store: &allot_server::Store,
    fw: &str,
    task: &str,
) -> allot_proto::common::TaskRecord {
    store
        .get::<allot_proto::common::TaskRecord>(&store.task_key(fw, task))
        .await
        .expect("read")
        .expect("the task is in etcd")
        .0
}

/// Resolves when `stop` is sent; a dropped sender leaves the service running until the test ends.
async fn stop_signal(rx: oneshot::Receiver<()>) {
    if rx.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What a service's stop signal is: a future every incarnation of the service shares.
pub type Stop = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

/// How long a crash of an in-process service waits for its incarnation's blocking work to end (`Service::shut_down`).
const CRASH_BLOCKING_WAIT: Duration = Duration::from_secs(15);

/// A service running in this process, each incarnation on a Tokio runtime of its own: its address and the
/// way to stop it.
///
/// Everything an incarnation spawns (its connections, background tasks, watches) runs on its runtime, so that
/// [`Service::crash`] ends all of it at once, as `kill -9` ends a process: no goodbye, no drain, every socket
/// closed. Processes it started (an agent's tasks) live on, as they would. A service whose `run` asks to be
/// restarted (a replica that lost its leadership exits for its supervisor to start it again) gets a fresh
/// runtime on the same address, as systemd's `Restart=always` would give it a fresh process.
pub struct Service {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    runtime: Arc<std::sync::Mutex<Option<tokio::runtime::Runtime>>>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Runs a service on `addr` (port 0 for any; or the address of a service that crashed, so its clients
    /// find it again). `start` runs one incarnation and returns whether to start another.
    async fn spawn_at<F, Fut>(addr: SocketAddr, start: F) -> Service
    where
        F: Fn(tokio::net::TcpListener, Stop) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        use futures::FutureExt as _;
        let first = bind_when_free(addr).await;
        let addr = first.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel();
        let stop: Stop = stop_signal(rx).boxed().shared();
        let runtime = Arc::new(std::sync::Mutex::new(None));
        let slot = runtime.clone();
        let supervisor = tokio::spawn(async move {
            let mut listener = Some(first);
            loop {
                let l = match listener.take() {
                    Some(l) => l,
                    None => bind_when_free(addr).await,
                };
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("service")
                    .enable_all()
                    .build()
                    .expect("a runtime");
                let (done_tx, done) = oneshot::channel();
                let incarnation = start(
                    {
                        let _in = rt.enter();
                        tokio::net::TcpListener::from_std(l).expect("listener")
                    },
                    stop.clone(),
                );
                rt.spawn(async move {
                    let _ = done_tx.send(incarnation.await);
                });
                *slot.lock().expect("runtime slot") = Some(rt);
                // Err: the runtime was shut down (a crash) or the service panicked.
                let again = done.await.unwrap_or(false);
                if !again {
                    return;
                }
                if let Some(rt) = slot.lock().expect("runtime slot").take() {
                    rt.shutdown_background();
                }
            }
        });
        Service {
            addr,
            stop: Some(tx),
            runtime,
            supervisor: Some(supervisor),
        }
    }

    /// Stops the supervisor and takes the current incarnation's runtime out of its slot.
    fn take_runtime(&mut self) -> Option<tokio::runtime::Runtime> {
        if let Some(s) = self.supervisor.take() {
            s.abort();
        }
        self.runtime.lock().expect("runtime slot").take()
    }

    /// Ends the current incarnation as `kill -9` ends a process. A process killed so loses its threads at once;
    /// a runtime shut down in place loses its async tasks but not the work on its blocking threads, which
    /// cannot be interrupted: an agent's task start-up there would go on (checkpoint its pid, open the
    /// command's gate) after the "crash", while the next incarnation recovers the same checkpoint, a mix no
    /// real crash makes. So this waits (up to [`CRASH_BLOCKING_WAIT`], on a thread of its own: a runtime
    /// cannot be shut down from inside another) for the blocking work to end: what it did is what a process
    /// killed just after it would have left.
    fn shut_down(&mut self) {
        if let Some(rt) = self.take_runtime() {
            let _ = std::thread::spawn(move || rt.shutdown_timeout(CRASH_BLOCKING_WAIT)).join();
        }
    }

    /// Stops gracefully and waits (at most 10 s) for the service to end.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(sup) = self.supervisor.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(10), sup).await;
        }
        self.shut_down();
    }

    /// Ends the service abruptly, as `kill -9` would: no goodbye, no drain (what its blocking threads were
    /// doing ends first, see `Service::shut_down`).
    pub fn crash(mut self) {
        self.shut_down();
    }

    /// Like [`Service::crash`], and waits until the service's address is free again; returns it.
    pub async fn crash_and_wait(mut self) -> SocketAddr {
        self.kill().await
    }

    /// Crashes the service in place (what is left is inert, see [`Service::crash`]) and waits until its
    /// address is free again.
    async fn kill(&mut self) -> SocketAddr {
        if let Some(rt) = self.take_runtime() {
            let _ =
                tokio::task::spawn_blocking(move || rt.shutdown_timeout(CRASH_BLOCKING_WAIT)).await;
        }
        drop(bind_when_free(self.addr).await);
        self.addr
    }
}

impl Drop for Service {
    /// A service handle dropped without [`Service::stop`] or [`Service::crash`] leaves the service running
    /// until the test process ends (as a detached task would).
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.lock().expect("runtime slot").take() {
            std::mem::forget(rt);
        }
    }
}

/// Whether a replicated service should be started again after `result`: yes when it stopped because it lost
/// its leadership (its supervisor restarts it; it campaigns again). Panics on any other error.
fn restart_after(what: &str, result: Result<(), allot_server::ServiceError>) -> bool {
    match result {
        Err(allot_server::ServiceError::LeadershipLost) => {
            tracing::warn!(service = what, "lost leadership; restarting it");
            true
        }
        r => {
            r.unwrap_or_else(|e| panic!("{what} runs: {e}"));
            false
        }
    }
}

/// A listener on `addr`, retried while a crashed service's runtime still holds the address.
async fn bind_when_free(addr: SocketAddr) -> std::net::TcpListener {
    loop {
        match bind_reuse(addr) {
            Ok(l) => return l,
            Err(e) if addr.port() != 0 => {
                tracing::debug!(%addr, error = %e, "address still held; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

/// A listener on `addr` with SO_REUSEADDR (as servers bind), so that connections of a crashed server in
/// TIME_WAIT do not hold the address; non-blocking, for a runtime to take over.
fn bind_reuse(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// A running agent.
pub struct AgentHandle {
    /// The agent's service.
    pub service: Service,
    /// Its work directory (checkpointed AgentID, sandboxes).
    pub work_dir: PathBuf,
}

/// An agent behind proxies (see [`Cluster::add_agent_behind_proxies`]).
pub struct CutAgent {
    /// The agent.
    pub agent: AgentHandle,
    proxies: Vec<faults::Proxy>,
}

impl CutAgent {
    /// Cuts the agent off: every connection to and from it is dropped, new ones refused.
    pub fn cut(&self) {
        self.proxies.iter().for_each(faults::Proxy::cut);
    }

    /// Ends the cut.
    pub fn heal(&self) {
        self.proxies.iter().for_each(faults::Proxy::heal);
    }
}

/// Options for a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Allocation interval.
    pub allocation_interval: Duration,
    /// Agent timeout: how long an agent may miss heartbeats before it is unreachable.
    pub agent_timeout: Duration,
    /// HEARTBEAT interval to frameworks.
    pub heartbeat_interval: Duration,
    /// How long a policy call may take.
    pub policy_timeout: Duration,
    /// Lease time of the allocator's and the broker's leadership.
    pub leader_lease: Duration,
    /// Replicas of the allocator and of the broker (the first of each leads; the others are standbys).
    pub replicas: usize,
    /// The services reach etcd through a [`faults::Proxy`] ([`Cluster::etcd_link`]).
    pub etcd_link: bool,
    /// Members of the etcd cluster (every service is given all of them; with `etcd_link`, only the first is
    /// behind the proxy).
    pub etcd_members: usize,
    /// The text of an ACL file the services are given (`--acls`); none by default.
    pub acls: Option<String>,
    /// The allocator's `--preemption-grace` (none: no preemption, the default); its minimum task runtime is 0.
    pub preemption_grace: Option<Duration>,
    /// Serve Mesos' v1 scheduler HTTP API on the leading broker ([`Cluster::mesos_addr`]), with a credentials
    /// file of this text (`principal secret` lines).
    pub mesos_credentials: Option<String>,
    /// The brokers' `--mesos-anonymous-principal`: Mesos HTTP calls without credentials act as it.
    pub mesos_anonymous_principal: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            allocation_interval: Duration::from_millis(100),
            agent_timeout: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(2),
            policy_timeout: Duration::from_millis(500),
            leader_lease: Duration::from_secs(2),
            replicas: 1,
            etcd_link: false,
            etcd_members: 1,
            acls: None,
            preemption_grace: None,
            mesos_credentials: None,
            mesos_anonymous_principal: None,
        }
    }
}

/// etcd and the three control-plane services.
pub struct Cluster {
    /// etcd.
    pub etcd: Etcd,
    /// The proxy between the control-plane services and etcd, with [`ClusterOptions::etcd_link`]: a test cuts or
    /// slows their path to etcd with it.
    pub etcd_link: Option<faults::Proxy>,
    /// The registry (the leading replica).
    pub registry: Service,
    /// Standby registry replicas.
    pub standby_registries: Vec<Service>,
    /// The allocator (the leading replica).
    pub allocator: Service,
    /// The offer-broker (the leading replica).
    pub broker: Service,
    /// Standby allocator replicas.
    pub standby_allocators: Vec<Service>,
    /// Standby broker replicas.
    pub standby_brokers: Vec<Service>,
    registry_addrs: String,
    allocator_addrs: String,
    broker_addrs: String,
    /// Where the leading broker serves Mesos' HTTP API (with [`ClusterOptions::mesos_credentials`]).
    pub mesos_addr: Option<SocketAddr>,
    /// Where the standby brokers serve it.
    pub mesos_standby_addrs: Vec<SocketAddr>,
    dir: tempfile::TempDir,
    agents: usize,
    opts: ClusterOptions,
}

/// What a test's control-plane services are given: the etcd endpoints and the TLS material.
#[derive(Debug, Clone)]
struct Wiring {
    /// `etcd`'s endpoints, or the address of the proxy in front of it.
    etcd: String,
    /// The TLS material's directory; `None`: `--insecure`.
    tls_dir: Option<PathBuf>,
    /// The ACL file, if any.
    acls: Option<PathBuf>,
}

impl Wiring {
    fn etcd(&self) -> allot_server::config::EtcdArgs {
        allot_server::config::EtcdArgs::at(&self.etcd)
    }

    fn tls(&self, name: &str) -> allot_server::config::TlsArgs {
        tls_args(self.tls_dir.as_deref(), name)
    }

    fn acls(&self) -> allot_server::config::AclArgs {
        allot_server::config::AclArgs {
            acls: self.acls.clone(),
        }
    }

    fn dialer(&self, name: &str) -> allot_common::grpc::Dialer {
        dialer_in(self.tls_dir.as_deref(), name)
    }
}

/// What the control-plane services are given: `etcd`'s endpoints, or `link`'s in front of it, and the ACL
/// file `acls` if any.
fn services_wiring(etcd: &Etcd, link: Option<&faults::Proxy>, acls: Option<PathBuf>) -> Wiring {
    Wiring {
        etcd: link.map_or(etcd.endpoints.clone(), |p| p.addr.to_string()),
        tls_dir: etcd.tls.clone(),
        acls,
    }
}

/// A registry against `etcd` on `addr`; returns once a registry leads (this one, unless another replica does).
async fn start_registry(etcd: &Wiring, opts: &ClusterOptions, addr: SocketAddr) -> Service {
    let service = start_standby_registry(etcd, opts, addr).await;
    await_leader(&etcd.dialer("operator"), &service.addr.to_string()).await;
    service
}

/// A registry against `etcd` on `addr`, not waiting for it to lead.
async fn start_standby_registry(etcd: &Wiring, opts: &ClusterOptions, addr: SocketAddr) -> Service {
    let cfg = allot_registry::Config {
        config: None,
        listen: String::new(),
        metrics: Default::default(),
        runtime: Default::default(),
        etcd: etcd.etcd(),
        tls: etcd.tls("registry"),
        acls: etcd.acls(),
        agent_timeout: opts.agent_timeout,
        election: election(opts),
    };
    Service::spawn_at(addr, move |l, stop| {
        let cfg = cfg.clone();
        async move { restart_after("registry", allot_registry::run(cfg, l, stop).await) }
    })
    .await
}

/// Election flags for a test's replicated services: a short lease, so that a crashed leader is replaced soon.
fn election(opts: &ClusterOptions) -> allot_server::leader::ElectionArgs {
    allot_server::leader::ElectionArgs {
        leader_lease: opts.leader_lease,
        ..Default::default()
    }
}

/// An offer-broker against `etcd` and the allocator replicas at `allocators` (comma-separated), on `addr`.
async fn start_broker(
    etcd: &Wiring,
    opts: &ClusterOptions,
    allocators: &str,
    addr: SocketAddr,
) -> Service {
    start_broker_with(etcd, opts, allocators, addr, None).await
}

/// [`start_broker`], serving Mesos' HTTP API at `mesos` (its address and credentials file) if given.
async fn start_broker_with(
    etcd: &Wiring,
    opts: &ClusterOptions,
    allocators: &str,
    addr: SocketAddr,
    mesos: Option<(SocketAddr, PathBuf)>,
) -> Service {
    let cfg = allot_offer_broker::Config {
        mesos_listen: mesos.as_ref().map(|(a, _)| a.to_string()),
        credentials: allot_server::config::CredentialsArgs {
            credentials: mesos.map(|(_, c)| c),
        },
        config: None,
        listen: String::new(),
        metrics: Default::default(),
        runtime: Default::default(),
        etcd: etcd.etcd(),
        tls: etcd.tls("offer-broker"),
        acls: etcd.acls(),
        allocator: allocators.to_string(),
        heartbeat_interval: opts.heartbeat_interval,
        election: election(opts),
        mesos_anonymous_principal: opts.mesos_anonymous_principal.clone(),
    };
    Service::spawn_at(addr, move |l, stop| {
        let cfg = cfg.clone();
        async move { restart_after("broker", allot_offer_broker::run(cfg, l, stop).await) }
    })
    .await
}

/// An allocator against `etcd`, caching policies in `dir`, on `addr`.
async fn start_allocator(
    etcd: &Wiring,
    opts: &ClusterOptions,
    dir: &std::path::Path,
    addr: SocketAddr,
) -> Service {
    let cfg = allot_allocator::Config {
        config: None,
        listen: String::new(),
        metrics: Default::default(),
        runtime: Default::default(),
        etcd: etcd.etcd(),
        tls: etcd.tls("allocator"),
        acls: etcd.acls(),
        allocation_interval: opts.allocation_interval,
        min_cycle_gap: None,
        policy: "drf".into(),
        policy_dir: dir.join("policies"),
        policy_timeout: opts.policy_timeout,
        election: election(opts),
        preemption_grace: opts.preemption_grace,
        preemption_min_runtime: Duration::ZERO,
    };
    Service::spawn_at(addr, move |l, stop| {
        let cfg = cfg.clone();
        async move { restart_after("allocator", allot_allocator::run(cfg, l, stop).await) }
    })
    .await
}

/// Runs an agent (or, with `cfg.simulate`, a simulator of agents) with `cfg` on `addr`.
async fn agent_service(cfg: allot_agent::Config, addr: SocketAddr) -> Service {
    Service::spawn_at(addr, move |l, stop| {
        let cfg = cfg.clone();
        async move {
            allot_agent::run(cfg, l, stop).await.expect("agent runs");
            false
        }
    })
    .await
}

/// Runs an agent with `cfg` on `addr` and waits until it is registered (its AgentID checkpointed).
async fn spawn_agent(cfg: allot_agent::Config, addr: SocketAddr) -> AgentHandle {
    let work_dir = cfg.work_dir.clone();
    let service = agent_service(cfg, addr).await;
    let id_file = work_dir.join("agent_id");
    eventually("the agent registers", || async { id_file.exists() }).await;
    AgentHandle { service, work_dir }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

fn join(addrs: impl Iterator<Item = SocketAddr>) -> String {
    addrs.map(|a| a.to_string()).collect::<Vec<_>>().join(",")
}

impl Cluster {
    /// Starts etcd and the control plane with default options.
    pub async fn start() -> Cluster {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Starts etcd and the control plane: `opts.replicas` allocators and brokers, the first of each elected
    /// before the standbys start.
    pub async fn start_with(opts: ClusterOptions) -> Cluster {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let etcd = Etcd::start_cluster(opts.etcd_members).await;
        let etcd_link = match opts.etcd_link {
            true => Some(faults::Proxy::start(etcd.addr()).await),
            false => None,
        };
        let acls = opts.acls.as_ref().map(|text| {
            let path = dir.path().join("acls.toml");
            std::fs::write(&path, text).expect("ACL file");
            path
        });
        let services_etcd = services_wiring(&etcd, etcd_link.as_ref(), acls);
        let mut registries = vec![start_registry(&services_etcd, &opts, any_port()).await];
        for _ in 1..opts.replicas.max(1) {
            registries.push(start_standby_registry(&services_etcd, &opts, any_port()).await);
        }
        let registry_addrs = join(registries.iter().map(|r| r.addr));
        let registry = registries.remove(0);
        let mut allocators = Vec::new();
        for _ in 0..opts.replicas.max(1) {
            let a = start_allocator(&services_etcd, &opts, dir.path(), any_port()).await;
            if allocators.is_empty() {
                await_leader(&services_etcd.dialer("operator"), &a.addr.to_string()).await;
            }
            allocators.push(a);
        }
        let allocator_addrs = join(allocators.iter().map(|a| a.addr));
        let mut brokers = Vec::new();
        let credentials = opts.mesos_credentials.as_ref().map(|text| {
            let path = dir.path().join("credentials");
            std::fs::write(&path, text).expect("credentials file");
            path
        });
        let mut mesos_addrs: Vec<SocketAddr> = Vec::new();
        for _ in 0..opts.replicas.max(1) {
            let mesos = credentials.clone().map(|path| {
                let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
                    .parse()
                    .expect("address");
                mesos_addrs.push(addr);
                (addr, path)
            });
            let b =
                start_broker_with(&services_etcd, &opts, &allocator_addrs, any_port(), mesos).await;
            if let Some(addr) = mesos_addrs.last().copied() {
                eventually("the broker serves the Mesos API", || async move {
                    tokio::net::TcpStream::connect(addr).await.is_ok()
                })
                .await;
            }
            if brokers.is_empty() {
                await_leader(&services_etcd.dialer("operator"), &b.addr.to_string()).await;
            }
            brokers.push(b);
        }
        let broker_addrs = join(brokers.iter().map(|b| b.addr));
        let allocator = allocators.remove(0);
        let broker = brokers.remove(0);
        Cluster {
            etcd,
            etcd_link,
            registry,
            standby_registries: registries,
            allocator,
            broker,
            standby_allocators: allocators,
            standby_brokers: brokers,
            registry_addrs,
            allocator_addrs,
            broker_addrs,
            mesos_addr: mesos_addrs.first().copied(),
            mesos_standby_addrs: mesos_addrs.into_iter().skip(1).collect(),
            dir,
            agents: 0,
            opts,
        }
    }

    /// The etcd endpoint the control-plane services are given (see [`ClusterOptions::etcd_link`]).
    fn services_etcd(&self) -> Wiring {
        let acls = self.opts.acls.as_ref().map(|_| self.acls_path());
        services_wiring(&self.etcd, self.etcd_link.as_ref(), acls)
    }

    /// Where the cluster's ACL file is (with [`ClusterOptions::acls`]): write it to change the rules.
    pub fn acls_path(&self) -> PathBuf {
        self.dir.path().join("acls.toml")
    }

    /// Every broker replica's address, comma-separated (what agents and the SDK are given).
    pub fn broker_addrs(&self) -> &str {
        &self.broker_addrs
    }

    /// Kills the leading allocator abruptly and waits until the first standby leads (once the crashed
    /// leader's lease expires); the crashed replica then starts again on its address as a standby, as its
    /// supervisor would restart it.
    ///
    /// # Panics
    /// If there is no standby.
    pub async fn fail_over_allocator(&mut self) {
        let next = self.standby_allocators.remove(0);
        let old = std::mem::replace(&mut self.allocator, next);
        let addr = old.crash_and_wait().await;
        await_leader(&self.operator(), &self.allocator.addr.to_string()).await;
        let again = start_allocator(&self.services_etcd(), &self.opts, self.dir.path(), addr).await;
        self.standby_allocators.push(again);
    }

    /// Kills the leading broker abruptly and waits until the first standby leads; the crashed replica starts
    /// again on its address as a standby.
    ///
    /// # Panics
    /// If there is no standby.
    pub async fn fail_over_broker(&mut self) {
        let next = self.standby_brokers.remove(0);
        let old = std::mem::replace(&mut self.broker, next);
        let addr = old.crash_and_wait().await;
        await_leader(&self.operator(), &self.broker.addr.to_string()).await;
        let again = start_broker(
            &self.services_etcd(),
            &self.opts,
            &self.allocator_addrs,
            addr,
        )
        .await;
        self.standby_brokers.push(again);
    }

    /// Every registry replica's address, comma-separated (what agents and the CLI are given).
    pub fn registry_addrs(&self) -> &str {
        &self.registry_addrs
    }

    /// Kills the leading registry abruptly and waits until the first standby leads; the crashed replica starts
    /// again on its address as a standby, as its supervisor would restart it.
    ///
    /// # Panics
    /// If there is no standby.
    pub async fn fail_over_registry(&mut self) {
        let next = self.standby_registries.remove(0);
        let old = std::mem::replace(&mut self.registry, next);
        let addr = old.crash_and_wait().await;
        await_leader(&self.operator(), &self.registry.addr.to_string()).await;
        let again = start_standby_registry(&self.services_etcd(), &self.opts, addr).await;
        self.standby_registries.push(again);
    }

    /// Kills the registry abruptly and starts a new one on the same address, as an operator restarting a
    /// crashed registry would; agents and their heartbeats find it there.
    pub async fn restart_registry(&mut self) {
        let addr = self.registry.kill().await;
        self.registry = start_registry(&self.services_etcd(), &self.opts, addr).await;
    }

    /// Kills the offer-broker abruptly (nothing it held in memory is written) and starts a new one on the same
    /// address; frameworks re-subscribe and agents re-send what is not acknowledged.
    pub async fn restart_broker(&mut self) {
        self.broker.kill().await;
        // It serves Mesos' HTTP API again where it did.
        let mesos = self
            .mesos_addr
            .map(|a| (a, self.dir.path().join("credentials")));
        self.broker = start_broker_with(
            &self.services_etcd(),
            &self.opts,
            &self.allocator_addrs,
            self.broker.addr,
            mesos,
        )
        .await;
        // The crashed broker's leadership lease lingers until it expires (`leader_lease`).
        await_leader(&self.operator(), &self.broker.addr.to_string()).await;
    }

    /// Starts an agent offering `resources` (Mesos text) with a fresh work directory, and waits until it is
    /// registered.
    pub async fn add_agent(&mut self, resources: &str) -> AgentHandle {
        self.agents += 1;
        let work_dir = self.dir.path().join(format!("agent{}", self.agents));
        self.start_agent(resources, work_dir).await
    }

    /// An agent's configuration against this cluster: `resources` (Mesos text), `work_dir`, `hostname`.
    fn agent_config(
        &self,
        resources: &str,
        work_dir: PathBuf,
        hostname: &str,
    ) -> allot_agent::Config {
        allot_agent::Config {
            config: None,
            listen: String::new(),
            metrics: Default::default(),
            tls: self.etcd.tls_args(&format!("agent-{hostname}")),
            advertise: None,
            registry: self.registry_addrs.clone(),
            broker: self.broker_addrs.clone(),
            work_dir,
            resources: Some(resources.to_string()),
            attributes: String::new(),
            hostname: Some(hostname.into()),
            isolation: allot_agent::isolation::Mode::Auto,
            simulate: None,
            sim_task_duration: Duration::from_secs(1),
            cgroup_root: "allot-test".into(),
            kill_grace_period: Duration::from_secs(2),
            // A stopped test agent leaves nothing running behind.
            kill_tasks_on_stop: true,
            // Short, so that tests which restart the broker see updates re-sent within a second.
            status_update_retry_interval: Duration::from_secs(1),
            switch_user: true,
            executor_listen: "127.0.0.1:0".into(),
            executor_registration_timeout: Duration::from_secs(20),
            gc_delay: Duration::from_secs(7 * 24 * 3600),
            gc_disk_headroom: 0.1,
            disk_watch_interval: Duration::from_secs(60),
            // The cluster's Mesos credentials (`ClusterOptions::mesos_credentials`) also read sandboxes.
            credentials: allot_server::config::CredentialsArgs {
                credentials: Some(self.dir.path().join("credentials")).filter(|p| p.exists()),
            },
        }
    }

    /// Starts an agent in `work_dir` (reusing a checkpointed AgentID there) and waits until it is registered.
    pub async fn start_agent(&self, resources: &str, work_dir: PathBuf) -> AgentHandle {
        self.start_agent_with(resources, work_dir, |_| {}).await
    }

    /// As [`Cluster::start_agent`], with the configuration changed by `edit` first.
    pub async fn start_agent_with(
        &self,
        resources: &str,
        work_dir: PathBuf,
        edit: impl FnOnce(&mut allot_agent::Config),
    ) -> AgentHandle {
        let mut cfg = self.agent_config(resources, work_dir, "localhost");
        edit(&mut cfg);
        spawn_agent(cfg, any_port()).await
    }

    /// Starts an agent whose every connection goes through a [`faults::Proxy`] (to the registry, to each
    /// broker replica, and from the brokers to it), so that the test can cut it off the network and heal it.
    pub async fn add_agent_behind_proxies(&mut self, resources: &str) -> CutAgent {
        self.agents += 1;
        let work_dir = self.dir.path().join(format!("agent{}", self.agents));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let inbound = faults::Proxy::start(addr).await;
        let mut registries = Vec::new();
        for r in self.registry_addrs.split(',') {
            registries.push(faults::Proxy::start(r.parse().expect("address")).await);
        }
        let mut brokers = Vec::new();
        for b in self.broker_addrs.split(',') {
            brokers.push(faults::Proxy::start(b.parse().expect("address")).await);
        }
        let cfg = allot_agent::Config {
            registry: join(registries.iter().map(|p| p.addr)),
            broker: join(brokers.iter().map(|p| p.addr)),
            advertise: Some(inbound.addr.to_string()),
            ..self.agent_config(resources, work_dir, "behind-proxies")
        };
        let mut proxies = vec![inbound];
        proxies.extend(registries);
        proxies.extend(brokers);
        CutAgent {
            agent: spawn_agent(cfg, addr).await,
            proxies,
        }
    }

    /// Starts `n` simulated agents (one `allot-agent --simulate n` in this process), each offering
    /// `resources`, whose tasks run `task_duration` unless their command is `sleep N`; waits until all are
    /// registered and reachable.
    pub async fn add_simulated_agents(
        &self,
        n: usize,
        resources: &str,
        task_duration: Duration,
    ) -> Service {
        self.add_simulated_agents_via(n, resources, task_duration, &self.broker_addrs)
            .await
    }

    /// Like [`Cluster::add_simulated_agents`], with the agents' status updates sent to `brokers`
    /// (comma-separated; a [`faults::Proxy`] in front of the broker, say). The agents' IDs depend only on `n`:
    /// a simulator started again after a crash registers the same agents again.
    pub async fn add_simulated_agents_via(
        &self,
        n: usize,
        resources: &str,
        task_duration: Duration,
        brokers: &str,
    ) -> Service {
        let cfg = allot_agent::Config {
            simulate: Some(n),
            sim_task_duration: task_duration,
            broker: brokers.to_string(),
            ..self.agent_config(resources, self.dir.path().join("sim"), "sim")
        };
        let service = agent_service(cfg, any_port()).await;
        let (registry, operator) = (self.registry_addrs.clone(), self.operator());
        eventually("the simulated agents register", || {
            let (registry, operator) = (registry.clone(), operator.clone());
            async move { reachable_agents(&operator, &registry).await == n }
        })
        .await;
        service
    }

    /// The broker's tasks of framework `framework_id` (every framework's when empty), from the operator API.
    pub async fn tasks(&self, framework_id: &str) -> Vec<allot_proto::common::TaskRecord> {
        use allot_proto::operator::{ListTasksRequest, operator_client::OperatorClient};
        OperatorClient::new(self.broker_channel())
            .list_tasks(ListTasksRequest {
                framework_id: framework_id.to_string(),
            })
            .await
            .expect("list tasks")
            .into_inner()
            .tasks
    }

    /// A channel to the broker, as the default framework principal (`framework-default`; mutual TLS unless the
    /// cluster's etcd is insecure).
    pub fn broker_channel(&self) -> Channel {
        self.dialer("framework-default")
            .channel(&self.broker.addr.to_string())
            .expect("channel")
    }

    /// How principal `name` connects to this cluster (see [`Etcd::dialer`]).
    pub fn dialer(&self, name: &str) -> allot_common::grpc::Dialer {
        self.etcd.dialer(name)
    }

    /// The `allot` CLI's flags that reach this cluster: its registry, broker and allocator addresses, and its
    /// TLS material (`--tls-dir`, or `--insecure`).
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = vec![
            "--registry".to_string(),
            self.registry_addrs.clone(),
            "--broker".into(),
            self.broker_addrs.clone(),
            "--allocator".into(),
            self.allocator_addrs.clone(),
        ];
        match self.etcd.tls_dir() {
            Some(dir) => args.extend(["--tls-dir".into(), dir.display().to_string()]),
            None => args.push("--insecure".into()),
        }
        args
    }

    /// Runs the `allot` CLI against this cluster with `args` and returns what it printed.
    ///
    /// # Panics
    /// When it cannot run or exits non-zero (the message has its output).
    pub fn allot(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(procs::bin_dir().join("allot"))
            .args(self.cli_args())
            .args(args)
            .output()
            .expect("allot runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "allot {args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// The operator's dialer: what the `allot` CLI's operator commands connect with.
    pub fn operator(&self) -> allot_common::grpc::Dialer {
        self.etcd.operator()
    }

    /// `allot_sdk::DriverConfig` for `info` at this cluster's brokers, connecting as `framework-default`.
    pub fn driver_config(&self, info: FrameworkInfo) -> allot_sdk::DriverConfig {
        allot_sdk::DriverConfig::new(self.broker_addrs(), info)
            .with_dialer(self.dialer("framework-default"))
    }
}

/// Waits until one of the replicas at `addrs` (comma-separated), dialed through `dialer`, answers as the
/// leader of its service.
pub async fn await_leader(dialer: &allot_common::grpc::Dialer, addrs: &str) {
    let replicas = dialer.replicas(addrs).expect("addresses");
    eventually(&format!("a leader among {addrs}"), || {
        let r = replicas.clone();
        async move { r.find_leader().await.is_ok() }
    })
    .await;
}

/// How many agents the leading registry among `registry` (host:port, comma-separated), dialed through
/// `dialer`, lists as reachable; 0 when it cannot be asked.
pub async fn reachable_agents(dialer: &allot_common::grpc::Dialer, registry: &str) -> usize {
    use allot_proto::registry::{ListAgentsRequest, registry_client::RegistryClient};
    let Ok(replicas) = dialer.replicas(registry) else {
        return 0;
    };
    replicas
        .call(|ch| async move {
            RegistryClient::new(ch)
                .list_agents(ListAgentsRequest {})
                .await
        })
        .await
        .map(|r| r.get_ref().agents.iter().filter(|a| a.reachable).count())
        .unwrap_or(0)
}

/// The name of the user this process runs as: what a test framework names as its `user`, so that tasks run
/// as the test's own user (agents switch to the task's user, as Mesos' `--switch_user` does).
pub fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map_or_else(|| "root".to_string(), |u| u.name)
}

/// Kills the task reaper of agent work directory `work_dir` (`allot_agent::reaper`), as a reboot would: the
/// tasks it started then leave no exit status when they die. Call it before killing the tasks.
pub fn kill_reaper(work_dir: &std::path::Path) {
    let dir = std::path::absolute(work_dir).expect("absolute work directory");
    let name = allot_agent::reaper::socket_name(&dir);
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &name])
        .status();
}

/// The pid an agent with `work_dir` checkpointed for task `task` (of whichever framework ran it): the pid record
/// of the task's update stream file (in its checkpoint slot, `<work_dir>/meta/slots/<n>/updates`): the process
/// that leads the task's process group (the command the task reaper started, or the wrapper).
pub fn checkpointed_pid(work_dir: &std::path::Path, task: &str) -> Option<i32> {
    allot_agent::status::slot_checkpoints(&work_dir.join("meta"))
        .into_iter()
        .find(|(_, r)| r.owner.as_ref().is_some_and(|o| o.task_id == task))
        .and_then(|(_, r)| i32::try_from(r.pid?).ok())
}

/// Waits until `cond` holds, checking every 50 ms, for at most [`PATIENCE`].
///
/// # Panics
/// When the patience runs out, naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An SDK scheduler that launches all its tasks on the first offer, declines every later offer for 60 s, and
/// tears the framework down once every task is TASK_FINISHED.
pub struct RunAll {
    left: Vec<TaskInfo>,
    total: usize,
    /// Tasks that reached TASK_FINISHED.
    pub finished: usize,
}

impl RunAll {
    /// A scheduler for `tasks`.
    pub fn new(tasks: Vec<TaskInfo>) -> RunAll {
        RunAll {
            total: tasks.len(),
            left: tasks,
            finished: 0,
        }
    }
}

impl allot_sdk::Scheduler for RunAll {
    fn resource_offers(&mut self, driver: &allot_sdk::Driver, offers: Vec<pb::Offer>) {
        for o in offers {
            let tasks: Vec<_> = self.left.drain(..).collect();
            if tasks.is_empty() {
                driver.decline(vec![o.offer_id], Some(60.0));
            } else {
                driver.accept(vec![o.offer_id], tasks, Some(1.0));
            }
        }
    }

    fn status_update(&mut self, driver: &allot_sdk::Driver, status: &TaskStatus) {
        if status.state() == TaskState::TaskFinished {
            self.finished += 1;
            if self.finished == self.total {
                driver.teardown();
            }
        }
    }
}

/// A framework speaking the raw scheduler API.
pub struct TestFramework {
    /// Its FrameworkID.
    pub id: String,
    /// What it subscribed with.
    info: FrameworkInfo,
    /// A client for calls.
    pub client: SchedulerClient<Channel>,
    events: mpsc::UnboundedReceiver<event::Event>,
    /// Events taken off the stream but not yet consumed by a wait.
    backlog: Vec<event::Event>,
}

impl TestFramework {
    /// Subscribes as `name` in `role` and waits for SUBSCRIBED.
    pub async fn subscribe(cluster: &Cluster, name: &str, role: &str) -> TestFramework {
        let info = FrameworkInfo {
            name: name.into(),
            user: current_user(),
            roles: vec![role.into()],
            ..Default::default()
        };
        Self::subscribe_with(cluster, info).await
    }

    /// Subscribes as `name` in `role`, presenting principal `principal`'s certificate (issued on demand), and
    /// waits for SUBSCRIBED.
    pub async fn subscribe_as(
        cluster: &Cluster,
        principal: &str,
        name: &str,
        role: &str,
    ) -> TestFramework {
        let info = FrameworkInfo {
            name: name.into(),
            user: current_user(),
            roles: vec![role.into()],
            ..Default::default()
        };
        let channel = cluster
            .dialer(principal)
            .channel(&cluster.broker.addr.to_string())
            .expect("channel");
        Self::subscribe_via(channel, info).await
    }

    /// Subscribes with `info` and waits for SUBSCRIBED.
    pub async fn subscribe_with(cluster: &Cluster, info: FrameworkInfo) -> TestFramework {
        Self::subscribe_via(cluster.broker_channel(), info).await
    }

    /// Subscribes with `info` over `channel` and waits for SUBSCRIBED.
    pub async fn subscribe_via(channel: Channel, info: FrameworkInfo) -> TestFramework {
        let mut client = SchedulerClient::new(channel);
        let mut stream = client
            .subscribe(pb::SubscribeRequest {
                framework_info: Some(info.clone()),
            })
            .await
            .expect("subscribe")
            .into_inner();
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(ev)) = stream.message().await {
                if let Some(e) = ev.event
                    && tx.send(e).is_err()
                {
                    return;
                }
            }
        });
        let id = match tokio::time::timeout(PATIENCE, rx.recv()).await {
            Ok(Some(event::Event::Subscribed(s))) => s.framework_id,
            other => panic!("expected SUBSCRIBED, got {other:?}"),
        };
        TestFramework {
            id,
            info,
            client,
            events: rx,
            backlog: Vec::new(),
        }
    }

    /// Subscribes again as this framework (its FrameworkID set), as a scheduler does after a failover or a
    /// broker restart; waits for SUBSCRIBED.
    pub async fn resubscribe(&self, cluster: &Cluster) -> TestFramework {
        let info = FrameworkInfo {
            framework_id: self.id.clone(),
            ..self.info.clone()
        };
        Self::subscribe_with(cluster, info).await
    }

    /// Takes the next offer and launches `task` on it (the rest of the offer filtered for 5 s); returns the
    /// offer.
    ///
    /// # Panics
    /// If no offer comes or the ACCEPT is refused.
    pub async fn launch(&mut self, task: TaskInfo) -> pb::Offer {
        let offer = self.offers().await.remove(0);
        self.accept(&offer.offer_id, vec![task], 5.0)
            .await
            .expect("accept");
        offer
    }

    /// Waits up to `within` for the first event that `pick` accepts; other events stay queued.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&event::Event) -> Option<T>,
    ) -> Option<T> {
        if let Some(i) = self.backlog.iter().position(|e| pick(e).is_some()) {
            let e = self.backlog.remove(i);
            return pick(&e);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => {
                    if let Some(t) = pick(&e) {
                        return Some(t);
                    }
                    self.backlog.push(e);
                }
                _ => return None,
            }
        }
    }

    /// The next offers, within [`PATIENCE`].
    ///
    /// # Panics
    /// If none come.
    pub async fn offers(&mut self) -> Vec<pb::Offer> {
        self.wait_for(PATIENCE, |e| match e {
            event::Event::Offers(o) => Some(o.offers.clone()),
            _ => None,
        })
        .await
        .expect("offers within patience")
    }

    /// Offers arriving within `within`, if any.
    pub async fn offers_within(&mut self, within: Duration) -> Option<Vec<pb::Offer>> {
        self.wait_for(within, |e| match e {
            event::Event::Offers(o) => Some(o.offers.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for an UPDATE of `task` to `state`, acknowledging every update of that task as it comes (as the
    /// SDK's implicit acknowledgements do: the agent sends a task's next update only after the previous one is
    /// acknowledged).
    ///
    /// # Panics
    /// If it does not come within [`PATIENCE`].
    pub async fn await_state(&mut self, task: &str, state: TaskState) -> TaskStatus {
        let mut seen: Vec<&'static str> = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let within = deadline.saturating_duration_since(tokio::time::Instant::now());
            let next = self
                .wait_for(within, |e| match e {
                    event::Event::Update(u) => u.status.clone().filter(|s| s.task_id == task),
                    _ => None,
                })
                .await;
            let Some(s) = next else {
                panic!(
                    "task {task} did not reach {} (saw {seen:?})",
                    state.as_str_name()
                )
            };
            self.ack(&s).await;
            seen.push(s.state().as_str_name());
            if s.state() == state {
                return s;
            }
        }
    }

    /// ACKNOWLEDGE `status` if it carries a uuid.
    pub async fn ack(&mut self, s: &TaskStatus) {
        if s.uuid.is_empty() {
            return;
        }
        self.client
            .acknowledge(pb::AcknowledgeRequest {
                framework_id: self.id.clone(),
                agent_id: s.agent_id.clone(),
                task_id: s.task_id.clone(),
                uuid: s.uuid.clone(),
                more: Vec::new(),
            })
            .await
            .expect("acknowledge");
    }

    /// ACCEPT `offer` launching `tasks`, with `refuse_seconds` for the unused rest.
    ///
    /// # Errors
    /// The broker's refusal.
    pub async fn accept(
        &mut self,
        offer: &str,
        tasks: Vec<TaskInfo>,
        refuse_seconds: f64,
    ) -> Result<(), tonic::Status> {
        self.client
            .accept(pb::AcceptRequest {
                framework_id: self.id.clone(),
                offer_ids: vec![offer.to_string()],
                operations: vec![pb::Operation {
                    operation: Some(pb::operation::Operation::Launch(pb::Launch {
                        task_infos: tasks,
                    })),
                }],
                filters: Some(pb::Filters {
                    refuse_seconds: Some(refuse_seconds),
                }),
            })
            .await
            .map(|_| ())
    }

    /// DECLINE `offer` with `refuse_seconds`.
    ///
    /// # Errors
    /// The broker's refusal.
    pub async fn decline(&mut self, offer: &str, refuse_seconds: f64) -> Result<(), tonic::Status> {
        self.client
            .decline(pb::DeclineRequest {
                framework_id: self.id.clone(),
                offer_ids: vec![offer.to_string()],
                filters: Some(pb::Filters {
                    refuse_seconds: Some(refuse_seconds),
                }),
            })
            .await
            .map(|_| ())
    }

    /// KILL `task`.
    ///
    /// # Errors
    /// The broker's refusal.
    pub async fn kill(&mut self, task: &str) -> Result<(), tonic::Status> {
        self.client
            .kill(pb::KillRequest {
                framework_id: self.id.clone(),
                task_id: task.into(),
                agent_id: String::new(),
            })
            .await
            .map(|_| ())
    }
}

/// `cpus` CPUs and `mem` MiB, as protocol resources.
pub fn cpus_mem(cpus: f64, mem: f64) -> Vec<Resource> {
    let scalar = |name: &str, scalar| Resource {
        name: name.into(),
        scalar,
        ..Default::default()
    };
    vec![scalar("cpus", cpus), scalar("mem", mem)]
}

/// Writes `request` (raw HTTP/1.1, ending the connection after the answer) on `stream` and reads the whole
/// answer, within [`PATIENCE`]: its status code (0 if none) and text.
pub async fn raw_exchange<S>(mut stream: S, request: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// A shell task `id` running `command` with `cpus` and `mem` (MiB).
pub fn task(id: &str, command: &str, cpus: f64, mem: f64) -> TaskInfo {
    TaskInfo {
        name: id.into(),
        task_id: id.into(),
        resources: cpus_mem(cpus, mem),
        command: Some(CommandInfo {
            value: command.into(),
            shell: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}
