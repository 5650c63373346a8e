//! A cluster of real service processes: the binaries `cargo build --bins` puts next to the test executable,
//! each on its own loopback ports with a `/metrics` endpoint, started against a real etcd and stopped with
//! SIGTERM (so that they flush their spans) when dropped.

use crate::{Etcd, PATIENCE, free_port};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One service process.
pub struct Proc {
    /// Its name (`registry`, `allocator`, `broker`, `agent0`, ...).
    pub name: String,
    /// Its gRPC address, `127.0.0.1:PORT`.
    pub addr: String,
    /// Its `/metrics` address, `127.0.0.1:PORT`.
    pub metrics: String,
    child: Child,
}

impl Proc {
    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most 10 s, then SIGKILL) for it to exit.
    pub fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `bash plugins/wasm/build.sh` (which `tests/run.sh` runs) puts WASM policy component `name`:
/// `target/wasm/<name>.wasm`, beside the profile directory of [`bin_dir`]. It may not be there (the Rust
/// components need the wasm32 target).
///
/// # Panics
/// As [`bin_dir`].
pub fn wasm_path(name: &str) -> PathBuf {
    let bin = bin_dir();
    let target = bin.parent().expect("target/<profile> is in target/");
    target.join("wasm").join(format!("{name}.wasm"))
}

/// The directory holding the service binaries (`target/<profile>`), found from this executable's path.
///
/// # Panics
/// When `allot-registry` is not there: run `cargo build --bins` first (`tests/run.sh` does).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // A test runs from target/<profile>/deps, a binary (allot-bench) from target/<profile>.
    let here = exe.parent().expect("target/<profile>");
    let dir = if here.join("allot-registry").exists() {
        here.to_path_buf()
    } else {
        here.parent().expect("target/<profile>/deps").to_path_buf()
    };
    assert!(
        dir.join("allot-registry").exists(),
        "service binaries missing in {}: run `cargo build --bins` first",
        dir.display()
    );
    dir
}

/// etcd, registry, allocator, offer-broker and agents, each a real process.
pub struct ProcessCluster {
    /// Agents (stopped first).
    pub agents: Vec<Proc>,
    /// The offer-broker.
    pub broker: Proc,
    /// The allocator.
    pub allocator: Proc,
    /// The registry.
    pub registry: Proc,
    /// etcd.
    pub etcd: Etcd,
    /// Work directories and logs (`<name>.log`).
    pub dir: tempfile::TempDir,
}

/// Starts `program` from `bin` as service `name` on fresh loopback ports (`--listen`, `--metrics-listen`)
/// with `args` and `env`, its stderr in `logs/<name>.log`.
///
/// # Panics
/// When the program cannot be started.
pub fn spawn(
    bin: &std::path::Path,
    name: &str,
    program: &str,
    args: &[String],
    env: &[(String, String)],
    logs: &std::path::Path,
) -> Proc {
    let port = free_port();
    let metrics_port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let log = std::fs::File::create(logs.join(format!("{name}.log"))).expect("log file");
    let child = Command::new(bin.join(program))
        .args(["--listen", &addr, "--metrics-listen", &metrics])
        .args(args)
        .env("ALLOT_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    Proc {
        name: name.to_string(),
        addr,
        metrics,
        child,
    }
}

impl ProcessCluster {
    /// Starts etcd, the three control-plane services and `agents` agents (each `cpus:4;mem:4096`), with
    /// `env` added to every service's environment, and waits until every agent is registered.
    pub async fn start(agents: usize, env: &[(String, String)]) -> ProcessCluster {
        let bin = bin_dir();
        let etcd = Etcd::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = dir.path();
        let etcd_args = vec!["--etcd-endpoints".to_string(), etcd.endpoint.clone()];
        let with = |name: &str, extra: &[&str]| -> Vec<String> {
            let mut a = etcd_args.clone();
            a.extend(etcd.tls_flags(name));
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        let registry = spawn(
            &bin,
            "registry",
            "allot-registry",
            &with("registry", &["--agent-timeout", "5s"]),
            env,
            logs,
        );
        let allocator = spawn(
            &bin,
            "allocator",
            "allot-allocator",
            &with("allocator", &["--allocation-interval", "200ms"]),
            env,
            logs,
        );
        let broker = spawn(
            &bin,
            "broker",
            "allot-offer-broker",
            &with(
                "offer-broker",
                &["--allocator", &allocator.addr, "--heartbeat-interval", "1s"],
            ),
            env,
            logs,
        );
        let mut procs = Vec::new();
        for i in 0..agents {
            let work = dir.path().join(format!("agent{i}"));
            let mut args = etcd.tls_flags(&format!("agent-agent{i}"));
            args.extend([
                "--registry".to_string(),
                registry.addr.clone(),
                "--broker".to_string(),
                broker.addr.clone(),
                "--work-dir".to_string(),
                work.display().to_string(),
                "--resources".to_string(),
                "cpus:4;mem:4096;disk:1024".to_string(),
                "--hostname".to_string(),
                format!("agent{i}"),
                "--kill-tasks-on-stop".to_string(),
            ]);
            procs.push(spawn(
                &bin,
                &format!("agent{i}"),
                "allot-agent",
                &args,
                env,
                logs,
            ));
        }
        let cluster = ProcessCluster {
            agents: procs,
            broker,
            allocator,
            registry,
            etcd,
            dir,
        };
        let operator = cluster.etcd.operator();
        crate::await_leader(&operator, &cluster.allocator.addr).await;
        crate::await_leader(&operator, &cluster.broker.addr).await;
        cluster.wait_for_agents(agents).await;
        cluster
    }

    async fn wait_for_agents(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if crate::reachable_agents(&self.etcd.operator(), &self.registry.addr).await >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} agents did not register; logs in {}: {}",
                self.dir.path().display(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["registry", "allocator", "broker"]
            .into_iter()
            .map(String::from)
            .chain(self.agents.iter().map(|a| a.name.clone()))
        {
            let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("\n--- {name} (last lines)\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Stops every service with SIGTERM (agents first), so each flushes its telemetry.
    pub fn stop(&mut self) {
        for a in &mut self.agents {
            a.stop();
        }
        self.broker.stop();
        self.allocator.stop();
        self.registry.stop();
    }
}

/// Fetches `http://{addr}/metrics` (HTTP/1.1 over a plain socket) and returns the body.
///
/// # Panics
/// When the endpoint does not answer 200.
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("metrics endpoint {addr}: {e}"));
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let (head, body) = buf.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{addr}/metrics: {head}");
    body.to_string()
}

/// The value of the series `name{labels}` in a Prometheus text exposition, where `labels` lists
/// `key="value"` pairs that must all appear (in any order); the sum when several series match; `None` when
/// none does.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            let v: f64 = value.parse().unwrap_or(f64::NAN);
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}
