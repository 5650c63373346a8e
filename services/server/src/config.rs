//! Configuration: command-line flags, then `ALLOT_*` environment variables, then a TOML file, then defaults.
//!
//! Every service's config is a `clap::Parser` whose flags carry `env = "ALLOT_..."` and which has a
//! `--config FILE` flag (env `ALLOT_CONFIG`). The file's keys are the flags' long names, with `-` or `_`:
//!
//! ```toml
//! listen = "127.0.0.1:5050"
//! etcd-endpoints = ["127.0.0.1:2379"]
//! allocation_interval = "1s"
//! ```
//!
//! A file key is used only when neither its flag nor its environment variable is given.

use std::ffi::OsString;
use std::path::Path;

/// Exit code for a usage error (`EX_USAGE` from sysexits.h).
pub const EX_USAGE: i32 = 64;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {source}")]
    Toml {
        /// The file.
        path: String,
        /// The parse error.
        source: Box<toml::de::Error>,
    },
    /// A value in the file has a type that cannot become a flag (a table).
    #[error("config file {path}: key '{key}' must be a string, number, boolean or array")]
    Value {
        /// The file.
        path: String,
        /// The key.
        key: String,
    },
    /// Flags or values are invalid.
    #[error("{0}")]
    Clap(#[from] clap::Error),
}

/// Parses the process's arguments into `C`, printing help or a clear error and exiting (0 for `--help` and
/// `--version`, [`EX_USAGE`] for anything wrong) when it cannot.
pub fn parse<C: clap::Parser>() -> C {
    match try_parse_from::<C>(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(ConfigError::Clap(e)) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { EX_USAGE } else { 0 });
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(EX_USAGE);
        }
    }
}

/// Parses `args` (with `argv[0]`) into `C`, merging the TOML file named by `--config` or `ALLOT_CONFIG`.
///
/// # Errors
/// [`ConfigError`] when the file cannot be read or parsed, or when clap refuses the result.
pub fn try_parse_from<C: clap::Parser>(args: Vec<OsString>) -> Result<C, ConfigError> {
    let file = config_path(&args).or_else(|| std::env::var_os("ALLOT_CONFIG"));
    let mut merged: Vec<OsString> = args.iter().take(1).cloned().collect();
    if let Some(path) = file {
        merged.extend(file_args(Path::new(&path), &args)?);
    }
    merged.extend(args.into_iter().skip(1));
    Ok(C::try_parse_from(merged)?)
}

fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(v.into());
        }
    }
    None
}

fn file_args(path: &Path, args: &[OsString]) -> Result<Vec<OsString>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigError::Toml {
        path: shown.clone(),
        source: Box::new(source),
    })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        let env = format!("ALLOT_{}", key.to_uppercase().replace('-', "_"));
        let given = args.iter().any(|a| {
            let a = a.to_string_lossy();
            a == flag || a.starts_with(&format!("{flag}="))
        });
        if given || std::env::var_os(&env).is_some() || key == "config" {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items,
            v => vec![v],
        };
        for v in values {
            match v {
                toml::Value::String(s) => out.push(format!("{flag}={s}").into()),
                toml::Value::Integer(i) => out.push(format!("{flag}={i}").into()),
                toml::Value::Float(f) => out.push(format!("{flag}={f}").into()),
                toml::Value::Boolean(true) => out.push(flag.clone().into()),
                toml::Value::Boolean(false) => {}
                _ => {
                    return Err(ConfigError::Value { path: shown, key });
                }
            }
        }
    }
    Ok(out)
}

/// Where a service serves its Prometheus metrics, flattened into every service's config.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// Address to serve Prometheus metrics on over HTTP (`GET /metrics`), e.g. `127.0.0.1:9050`; none when absent.
    #[arg(long, env = "ALLOT_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl MetricsArgs {
    /// Starts the `/metrics` endpoint when an address is given; it stops when the result is dropped.
    ///
    /// # Errors
    /// [`crate::ServiceError::Metrics`] when the address cannot be bound.
    pub async fn serve(
        &self,
    ) -> Result<Option<allot_telemetry::metrics::MetricsServer>, crate::ServiceError> {
        let Some(addr) = &self.metrics_listen else {
            return Ok(None);
        };
        allot_telemetry::metrics::serve(addr)
            .await
            .map(Some)
            .map_err(|e| {
                crate::ServiceError::Metrics(format!("cannot serve metrics on {addr}: {e}"))
            })
    }
}

/// How a process secures its links (issue 23, `docs/security.md`): the flags every service, agent and the
/// `allot` CLI share (`#[command(flatten)]`; global, so that a CLI takes them after its subcommand too). By default a process serves and calls over mutual TLS with the material
/// `allot certs init` wrote; plaintext needs `--insecure`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Directory of the cluster's TLS material as `allot certs init` writes it: `ca.pem` (the authority every
    /// peer must be signed by) and this process's `<name>.pem` and `<name>-key.pem`, re-read when they change.
    /// Default: `.allot/tls`.
    #[arg(long, global = true, env = "ALLOT_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
    /// The principal whose certificate this process presents (its files' stem in --tls-dir). Default: the
    /// service's name (`registry`, `allocator`, `offer-broker`); for an agent, `agent-<hostname>`; for the
    /// `allot` CLI, `operator`, or `framework-default` for `execute` and `batch`.
    #[arg(long, global = true, env = "ALLOT_TLS_NAME")]
    pub tls_name: Option<String>,
    /// Serve and call in plaintext: no TLS, no identities, anyone who reaches the process may act as anyone.
    /// For a test bench only; a warning is logged at every start. Wins over --tls-dir.
    #[arg(long, global = true, env = "ALLOT_INSECURE")]
    pub insecure: bool,
}

impl TlsArgs {
    /// Plaintext (`--insecure`).
    pub fn insecure() -> Self {
        Self {
            insecure: true,
            ..Self::default()
        }
    }

    /// The material of principal `name` in `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            tls_dir: Some(dir.to_path_buf()),
            tls_name: Some(name.to_string()),
            insecure: false,
        }
    }

    /// Opens the material (`default_name` unless --tls-name says otherwise) and returns the dialer every
    /// channel of the process is made with; its [`allot_common::grpc::Dialer::material`] is what the process
    /// serves with.
    ///
    /// # Errors
    /// [`crate::ServiceError::Tls`] when there is no material and --insecure was not given, or it does not
    /// load (naming the file and what is wrong).
    pub fn open(
        &self,
        default_name: &str,
    ) -> Result<allot_common::grpc::Dialer, crate::ServiceError> {
        let name = self.tls_name.as_deref().unwrap_or(default_name);
        allot_common::tls::open_or_insecure(self.tls_dir.as_deref(), name, self.insecure)
            .map(allot_common::grpc::Dialer::new)
            .map_err(crate::ServiceError::Tls)
    }
}

/// The ACL file (see [`crate::acl`]): flattened into the offer-broker's, the registry's and the allocator's
/// configs.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AclArgs {
    /// ACL file (TOML, Mesos' ACL vocabulary: register_frameworks, run_tasks, teardown_frameworks,
    /// update_weights, update_quotas, load/activate/shadow_policies), read again when it changes. Without it
    /// the built-in rules by principal kind apply (docs/security.md).
    #[arg(long, env = "ALLOT_ACLS")]
    pub acls: Option<std::path::PathBuf>,
}

impl AclArgs {
    /// Reads the file, if one is given.
    ///
    /// # Errors
    /// [`crate::ServiceError::Acl`] when it cannot be read or parsed.
    pub fn open(&self) -> Result<Option<std::sync::Arc<crate::acl::Acls>>, crate::ServiceError> {
        match &self.acls {
            Some(path) => Ok(Some(std::sync::Arc::new(crate::acl::Acls::open(path)?))),
            None => Ok(None),
        }
    }
}

/// The credentials file for HTTP basic authentication (see [`crate::credentials`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CredentialsArgs {
    /// Framework credentials for the Mesos v1 HTTP API (`principal secret` lines, or Mesos' JSON
    /// `{"credentials": [{"principal", "secret"}]}`), read again when it changes. Without it, a secured
    /// service accepts no HTTP basic authentication.
    #[arg(long, env = "ALLOT_CREDENTIALS")]
    pub credentials: Option<std::path::PathBuf>,
}

impl CredentialsArgs {
    /// Reads the file, if one is given.
    ///
    /// # Errors
    /// [`crate::ServiceError::Credentials`] when it cannot be read or parsed.
    pub fn open(
        &self,
    ) -> Result<Option<std::sync::Arc<crate::credentials::Credentials>>, crate::ServiceError> {
        match &self.credentials {
            Some(path) => Ok(Some(std::sync::Arc::new(
                crate::credentials::Credentials::open(path)?,
            ))),
            None => Ok(None),
        }
    }
}

/// Where etcd is: the flags every control-plane service shares (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints, `host:port` (comma-separated or repeated): reached over mutual TLS with this process's
    /// certificate, or in plaintext with --insecure. An explicit `https://` or `http://` must match the mode.
    #[arg(
        long,
        env = "ALLOT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key root in etcd.
    #[arg(long, env = "ALLOT_ETCD_ROOT", default_value = crate::store::DEFAULT_ROOT)]
    pub etcd_root: String,
}

impl EtcdArgs {
    /// Endpoints at `endpoint` (one, or several comma-separated) with the default key root.
    pub fn at(endpoint: &str) -> Self {
        Self {
            etcd_endpoints: endpoint.split(',').map(str::to_string).collect(),
            etcd_root: crate::store::DEFAULT_ROOT.to_string(),
        }
    }

    /// Connects to etcd, over mutual TLS when `dialer` has material (see [`crate::Store::connect`]).
    ///
    /// # Errors
    /// [`crate::StoreError::Etcd`] for an invalid endpoint (etcd itself is reached on first use).
    pub async fn connect(
        &self,
        dialer: &allot_common::grpc::Dialer,
    ) -> Result<crate::Store, crate::StoreError> {
        crate::Store::connect(&self.etcd_endpoints, &self.etcd_root, dialer.material()).await
    }
}

/// A duration flag that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("'{text}' is not a duration like 500ms, 5s or 2m: {source}")]
pub struct DurationError {
    /// What was given.
    pub text: String,
    /// humantime's reason.
    pub source: humantime::DurationError,
}

/// Parses a duration with units (`500ms`, `5s`, `2m`) for clap's `value_parser`.
///
/// # Errors
/// [`DurationError`], naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, DurationError> {
    humantime::parse_duration(s).map_err(|source| DurationError {
        text: s.to_string(),
        source,
    })
}

/// How many threads a service's async runtime runs on, flattened into the configs of the registry, the
/// allocator and the offer-broker.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RuntimeArgs {
    /// Async worker threads (tokio's multi-threaded runtime; blocking work still goes to its blocking pool).
    /// Default: one per CPU this process may use. A machine that also runs other services and tasks (the
    /// local deploy runs every service, etcd, the agents and their tasks on one machine) does better with 1:
    /// each extra worker is woken to steal work, and on 2 cores those context switches cost the tasks about a
    /// tenth of their throughput (issue 24, `docs/benchmarks.md`).
    #[arg(long, env = "ALLOT_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
}

impl RuntimeArgs {
    /// Builds the runtime a service's `main` blocks on: multi-threaded with `worker_threads` workers (or
    /// tokio's default), I/O and timers on.
    ///
    /// # Errors
    /// The I/O error when the runtime's threads or its I/O driver cannot be created.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = self.worker_threads {
            b.worker_threads(usize::from(n));
        }
        b.enable_all().build()
    }

    /// The body of a service's `main`: on the runtime of [`RuntimeArgs::runtime`], starts its telemetry
    /// (`allot_telemetry::init(service, version)`, kept until the service ends), binds `listen` and runs `run`
    /// with the listener until it returns.
    ///
    /// # Errors
    /// The runtime cannot start, `listen` cannot be bound ("cannot listen on ADDR: ..."), or `run`'s error.
    pub fn run_service<F, Fut, E>(
        &self,
        service: &'static str,
        version: &'static str,
        listen: &str,
        run: F,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let runtime = self
            .runtime()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        runtime.block_on(async {
            let _telemetry = allot_telemetry::init(service, version);
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            run(listener).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[arg(long)]
        config: Option<String>,
        #[arg(long, default_value = "a")]
        name: String,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: std::time::Duration,
        #[arg(long)]
        verbose: bool,
        #[arg(long)]
        endpoint: Vec<String>,
    }

    #[test]
    fn file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "name = 'file'\ninterval = '250ms'\nverbose = true\nendpoint = ['x', 'y']\n",
        )
        .unwrap();
        let args = |extra: &[&str]| {
            let mut v: Vec<OsString> = vec!["t".into(), "--config".into(), p.clone().into()];
            v.extend(extra.iter().map(OsString::from));
            v
        };
        let t: T = try_parse_from(args(&[])).unwrap();
        assert_eq!(t.name, "file");
        assert_eq!(t.interval, std::time::Duration::from_millis(250));
        assert!(t.verbose);
        assert_eq!(t.endpoint, ["x", "y"]);
        let t: T = try_parse_from(args(&["--name", "flag"])).unwrap();
        assert_eq!(t.name, "flag");
    }

    #[test]
    fn bad_duration_is_a_clear_error() {
        let e =
            try_parse_from::<T>(vec!["t".into(), "--interval".into(), "soon".into()]).unwrap_err();
        assert!(e.to_string().contains("not a duration"), "{e}");
    }

    #[test]
    fn worker_threads_sets_the_runtime_s_workers_and_zero_is_refused() {
        #[derive(Parser, Debug)]
        struct R {
            #[command(flatten)]
            runtime: RuntimeArgs,
        }
        let r = R::try_parse_from(["x", "--worker-threads", "1"]).unwrap();
        let rt = r.runtime.runtime().unwrap();
        assert_eq!(rt.metrics().num_workers(), 1);
        let e = R::try_parse_from(["x", "--worker-threads", "0"]).unwrap_err();
        assert!(e.to_string().contains("worker-threads"), "{e}");
        let d = R::try_parse_from(["x"]).unwrap();
        assert!(d.runtime.worker_threads.is_none());
        assert!(d.runtime.runtime().unwrap().metrics().num_workers() >= 1);
    }
}
