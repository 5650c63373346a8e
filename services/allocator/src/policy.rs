//! Policy hosting: built-in, native and WASM policies behind one interface, each call bounded by a deadline,
//! and artifacts stored in etcd pinned by their sha256.
//!
//! A call that fails (an error code, a panic, a trap, malformed grants, or no answer before the deadline) is
//! a [`Failure`]; the engine then decides the cycle with the last good policy. A policy that missed its
//! deadline is marked broken and not called again: a native one is abandoned on its worker thread, a WASM one
//! is interrupted by its epoch deadline (allot-policy-wasm).

use allot_policy::{Grant, Policy, Snapshot};
use allot_policy_abi::host::{AbiError, NativePolicy};
use allot_policy_wasm::{Limits, WasmError, WasmPolicy};
use allot_proto::allocator::{PolicyArtifact, PolicyRef};
use allot_server::Store;
use allot_server::store::Kind;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The built-in policies, by name, and how to make each. The one list of them.
type MakePolicy = fn() -> Box<dyn Policy>;

const BUILTIN_POLICIES: [(&str, MakePolicy); 2] = [
    ("drf", || Box::new(allot_drf::Drf)),
    ("priority", || Box::new(allot_drf::Priority)),
];

/// The names of the built-in policies: `drf`, `priority`.
pub const BUILTINS: [&str; 2] = [BUILTIN_POLICIES[0].0, BUILTIN_POLICIES[1].0];

/// A built-in policy by name.
pub fn builtin_policy(name: &str) -> Option<Box<dyn Policy>> {
    BUILTIN_POLICIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, make)| make())
}

/// How long a WASM component's `name` may take when it is loaded (compiling it is not counted).
pub const LOAD_DEADLINE: Duration = Duration::from_secs(2);

/// Size of one stored chunk of an artifact, in bytes (etcd refuses requests over 1.5 MiB by default).
pub const CHUNK_BYTES: usize = 1024 * 1024;

pub use crate::error::{Failure, LoadError};

#[derive(Clone)]
enum Implementation {
    Builtin(&'static str),
    Native(Arc<NativePolicy>),
    Wasm(Arc<WasmPolicy>),
}

/// A policy ready to be called.
#[derive(Clone)]
pub struct Loaded {
    /// What it is.
    pub reference: PolicyRef,
    imp: Implementation,
    /// Set after it missed a deadline: it is not called again.
    pub broken: bool,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("reference", &self.reference)
            .field("broken", &self.broken)
            .finish()
    }
}

/// The `PolicyRef` of built-in policy `name`.
pub fn builtin_ref(name: &str) -> PolicyRef {
    PolicyRef {
        name: name.to_string(),
        kind: "builtin".into(),
        sha256: String::new(),
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The kind of an artifact from its first bytes: `native` (ELF) or `wasm`.
///
/// # Errors
/// [`LoadError::NotAnArtifact`] when it is neither.
pub fn artifact_kind(bytes: &[u8]) -> Result<&'static str, LoadError> {
    if bytes.starts_with(b"\x7fELF") {
        Ok("native")
    } else if bytes.starts_with(b"\0asm") {
        Ok("wasm")
    } else {
        Err(LoadError::NotAnArtifact)
    }
}

impl Loaded {
    /// Built-in policy `name`, if there is one.
    pub fn builtin(name: &str) -> Option<Loaded> {
        let name = *BUILTINS.iter().find(|b| **b == name)?;
        Some(Loaded {
            reference: builtin_ref(name),
            imp: Implementation::Builtin(name),
            broken: false,
        })
    }

    /// Loads the artifact in file `path` whose sha256 is `sha256`.
    ///
    /// # Errors
    /// [`LoadError`] when the file cannot be read or is not a policy this allocator can load: a library with
    /// another ABI version or missing symbols ([`LoadError::Native`]); a WASM component for an interface
    /// version this host does not know, with imports, or whose `name` traps or does not answer within
    /// [`LOAD_DEADLINE`] ([`LoadError::Wasm`]).
    pub fn from_file(path: &Path, sha256: &str) -> Result<Loaded, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        match artifact_kind(&bytes)? {
            "native" => {
                let p = NativePolicy::load(path)?;
                Ok(Loaded {
                    reference: PolicyRef {
                        name: p.name().to_string(),
                        kind: "native".into(),
                        sha256: sha256.to_string(),
                    },
                    imp: Implementation::Native(Arc::new(p)),
                    broken: false,
                })
            }
            _ => {
                let p = WasmPolicy::load(&bytes, Limits::default(), LOAD_DEADLINE)?;
                Ok(Loaded {
                    reference: PolicyRef {
                        name: p.name().to_string(),
                        kind: "wasm".into(),
                        sha256: sha256.to_string(),
                    },
                    imp: Implementation::Wasm(Arc::new(p)),
                    broken: false,
                })
            }
        }
    }

    /// The version of the interface the policy is called through: the allocator's own version for a
    /// built-in, `abi-v1` or `abi-v2` (C ABI) for a native library, the WIT package the component exports
    /// for WASM (`allot:policy@0.1.0`, `@0.2.0` or `@0.3.0`).
    pub fn interface_version(&self) -> &'static str {
        match &self.imp {
            Implementation::Builtin(_) => env!("CARGO_PKG_VERSION"),
            Implementation::Native(p) if p.abi_version() == 1 => "abi-v1",
            Implementation::Native(_) => "abi-v2",
            Implementation::Wasm(p) => p.interface(),
        }
    }

    /// Runs one cycle over `snapshot`, giving a native or WASM policy at most `deadline`, inside a
    /// `policy allocate` span (policy name, kind, version, sha256; grants or the failure) and timed in
    /// `allot_policy_call_duration_seconds`.
    ///
    /// # Errors
    /// [`Failure`] as described in the module documentation.
    pub fn call(
        &self,
        snapshot: &Arc<Snapshot>,
        deadline: Duration,
    ) -> Result<Vec<Grant>, Failure> {
        let r = &self.reference;
        let span = tracing::info_span!(
            "policy allocate",
            allot.policy.name = %r.name,
            allot.policy.kind = %r.kind,
            allot.policy.version = self.interface_version(),
            allot.policy.sha256 = %r.sha256,
            allot.grants = tracing::field::Empty,
            allot.policy.failure = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let result = self.call_untraced(snapshot, deadline);
        crate::metrics::M
            .policy_seconds
            .with_label_values(&[&r.name, &r.kind])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(grants) => {
                span.record("allot.grants", grants.len());
            }
            Err(f) => {
                span.record("allot.policy.failure", tracing::field::display(f));
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }

    /// Whether the policy can preempt: a built-in, a WASM component of `allot:policy@0.3.0` (which has
    /// `revoke`) or a native library of C ABI v2 that exports `allot_policy_revoke`. C ABI v1 and WASM
    /// `allot:policy@0.1.0` and `@0.2.0` carry no revocations, so such a policy never preempts.
    pub fn revokes(&self) -> bool {
        match &self.imp {
            Implementation::Builtin(_) => true,
            Implementation::Wasm(p) => p.revokes(),
            Implementation::Native(p) => p.revokes(),
        }
    }

    /// The tasks the policy revokes on `snapshot` (preemption), inside a `policy revoke` span, giving a native
    /// or WASM policy at most `deadline`; nothing when the snapshot has no preemption settings, the policy
    /// cannot preempt ([`Loaded::revokes`]) or it is broken.
    ///
    /// # Errors
    /// [`Failure::Panic`] when the built-in panics; [`Failure::Trap`], [`Failure::Timeout`],
    /// [`Failure::Error`] and [`Failure::Malformed`] (a task index beyond the snapshot's) from a plugin.
    pub fn revoke(
        &self,
        snapshot: &Arc<Snapshot>,
        deadline: Duration,
    ) -> Result<Vec<allot_policy::Revocation>, Failure> {
        if snapshot.preemption.is_none() || !self.revokes() || self.broken {
            return Ok(Vec::new());
        }
        let r = &self.reference;
        let span = tracing::info_span!(
            "policy revoke",
            allot.policy.name = %r.name,
            allot.policy.kind = %r.kind,
            allot.policy.version = self.interface_version(),
            allot.tasks = snapshot.tasks.len(),
            allot.revocations = tracing::field::Empty,
            allot.policy.failure = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let _entered = span.enter();
        let out = match &self.imp {
            Implementation::Builtin(name) => {
                let mut policy = builtin_policy(name).expect("built-in exists");
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| policy.revoke(snapshot)))
                    .map_err(|p| Failure::Panic(panic_text(&p)))
            }
            Implementation::Wasm(p) => p.revoke(snapshot, deadline).map_err(wasm_failure),
            Implementation::Native(p) => {
                let (p, snap) = (p.clone(), snapshot.clone());
                self.on_thread(deadline, move || p.revoke(&snap))
            }
        };
        match &out {
            Ok(revocations) => {
                span.record("allot.revocations", revocations.len());
            }
            Err(f) => {
                span.record("allot.policy.failure", tracing::field::display(f));
                span.record("otel.status_code", "ERROR");
            }
        }
        out
    }

    fn call_untraced(
        &self,
        snapshot: &Arc<Snapshot>,
        deadline: Duration,
    ) -> Result<Vec<Grant>, Failure> {
        if self.broken {
            return Err(Failure::Error(
                "the policy is broken (it missed a deadline) and is not called".into(),
            ));
        }
        match &self.imp {
            Implementation::Builtin(name) => {
                let mut policy = builtin_policy(name).expect("built-in exists");
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| policy.allocate(snapshot)))
                    .map_err(|p| Failure::Panic(panic_text(&p)))
            }
            Implementation::Wasm(p) => p.allocate(snapshot, deadline).map_err(wasm_failure),
            Implementation::Native(p) => {
                let (p, snap) = (p.clone(), snapshot.clone());
                self.on_thread(deadline, move || p.allocate(&snap))
            }
        }
    }

    /// Runs a native library's call `f` on a thread of its own and waits at most `deadline` for it (a call
    /// that does not answer is abandoned on its thread: native code cannot be interrupted).
    fn on_thread<T: Send + 'static>(
        &self,
        deadline: Duration,
        f: impl FnOnce() -> Result<T, AbiError> + Send + 'static,
    ) -> Result<T, Failure> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("policy-{}", self.reference.name))
            .spawn(move || {
                let _ = tx.send(f());
            })
            .map_err(|e| Failure::Error(format!("cannot start the policy thread: {e}")))?;
        match rx.recv_timeout(deadline) {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(AbiError::BadGrant(m) | AbiError::BadRevocation(m))) => {
                Err(Failure::Malformed(m))
            }
            Ok(Err(e)) => Err(Failure::Error(e.to_string())),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Failure::Timeout(deadline)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Failure::Panic(
                "the policy thread ended without an answer".into(),
            )),
        }
    }
}

/// A WASM policy's error as the [`Failure`] of a call.
fn wasm_failure(e: WasmError) -> Failure {
    match e {
        WasmError::Timeout(d) => Failure::Timeout(d),
        WasmError::Trap(m) => Failure::Trap(m),
        WasmError::Error(m) => Failure::Error(m),
        WasmError::BadGrant(m) | WasmError::BadRevocation(m) => Failure::Malformed(m),
        other => Failure::Error(other.to_string()),
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The key of an artifact's metadata.
pub fn meta_key(store: &Store, sha256: &str) -> String {
    store.key(Kind::Artifacts, &format!("meta/{sha256}"))
}

/// The prefix of every artifact's metadata: one range read lists them all.
pub fn meta_prefix(store: &Store) -> String {
    store.key(Kind::Artifacts, "meta/")
}

/// The prefix of an artifact's chunks: one range read returns them in order.
fn chunk_prefix(store: &Store, sha256: &str) -> String {
    store.key(Kind::Artifacts, &format!("chunk/{sha256}/"))
}

fn chunk_key(store: &Store, sha256: &str, i: u32) -> String {
    format!("{}{i:05}", chunk_prefix(store, sha256))
}

/// Stores `bytes` as artifact `reference` in etcd: the chunks first, the metadata last (its presence means
/// the artifact is complete).
///
/// # Errors
/// A store error.
pub async fn store_artifact(
    store: &Store,
    reference: &PolicyRef,
    bytes: &[u8],
) -> Result<PolicyArtifact, allot_server::StoreError> {
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
    for (i, c) in chunks.iter().enumerate() {
        store
            .put_bytes(&chunk_key(store, &reference.sha256, i as u32), c.to_vec())
            .await?;
    }
    let meta = PolicyArtifact {
        r#ref: Some(reference.clone()),
        size: bytes.len() as u64,
        chunks: chunks.len() as u32,
        loaded_at_ms: allot_common::now_ms(),
    };
    store
        .put(&meta_key(store, &reference.sha256), &meta, None)
        .await?;
    Ok(meta)
}

/// The file of artifact `sha256` in `cache_dir`, fetched from etcd and checked against its sha256 if it is
/// not there yet.
///
/// # Errors
/// [`LoadError::Unknown`], [`LoadError::Incomplete`] or [`LoadError::Mismatch`] when the artifact is unknown,
/// incomplete, or its bytes do not match its sha256; [`LoadError::Store`] if etcd cannot be read;
/// [`LoadError::Io`] if the cache cannot be written.
pub async fn materialize(
    store: &Store,
    sha256: &str,
    cache_dir: &Path,
) -> Result<PathBuf, LoadError> {
    let path = cache_dir.join(format!("{sha256}.policy"));
    if let Ok(bytes) = std::fs::read(&path)
        && sha256_hex(&bytes) == sha256
    {
        return Ok(path);
    }
    let (meta, _) = store
        .get::<PolicyArtifact>(&meta_key(store, sha256))
        .await?
        .ok_or_else(|| LoadError::Unknown(sha256.to_string()))?;
    let chunks = store.list_bytes(&chunk_prefix(store, sha256)).await?;
    if chunks.len() != meta.chunks as usize {
        return Err(LoadError::Incomplete {
            sha256: sha256.to_string(),
            have: chunks.len(),
            chunks: meta.chunks,
        });
    }
    let mut bytes = Vec::with_capacity(meta.size as usize);
    for (_, chunk) in chunks {
        bytes.extend(chunk);
    }
    if sha256_hex(&bytes) != sha256 {
        return Err(LoadError::Mismatch(sha256.to_string()));
    }
    write_cached(cache_dir, sha256, &bytes)
}

/// Writes `bytes` as the cached file of artifact `sha256` (atomically: a temporary file, then a rename).
///
/// # Errors
/// [`LoadError::Io`] for an I/O failure.
pub fn write_cached(cache_dir: &Path, sha256: &str, bytes: &[u8]) -> Result<PathBuf, LoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Io { path, source }
    };
    std::fs::create_dir_all(cache_dir).map_err(io(cache_dir))?;
    let path = cache_dir.join(format!("{sha256}.policy"));
    let tmp = cache_dir.join(format!(".{sha256}.{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}
