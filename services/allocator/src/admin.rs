//! The operator's policy flows (`allot policy ...`): load an artifact (checked, tried on the current
//! snapshot, stored by sha256), list, activate, roll back, shadow, and the status of the running policy.
//!
//! Activation writes the active-policy record in etcd; every allocator replica follows that record and swaps
//! policies between two cycles (see [`crate::engine`]).

use crate::engine::{Command, Engine};
use crate::error::{Error, TrialError};
use crate::policy::{self, Loaded};
use allot_proto::allocator::*;
use allot_server::Store;

/// The policy administration of one allocator: its store, its engine and its artifact cache.
#[derive(Debug, Clone)]
pub struct PolicyAdmin {
    store: Store,
    engine: Engine,
    cache_dir: std::path::PathBuf,
}

impl PolicyAdmin {
    /// Policy administration over `store` and `engine`, caching artifacts in `cache_dir`.
    pub fn new(store: Store, engine: Engine, cache_dir: std::path::PathBuf) -> Self {
        Self {
            store,
            engine,
            cache_dir,
        }
    }

    fn record_key(&self) -> String {
        self.store.key(allot_server::store::Kind::Policy, "active")
    }

    /// The active-policy record; before the first activation, the engine's (its configured default).
    ///
    /// # Errors
    /// [`Error::Store`] if etcd cannot be read; [`Error::EngineStopped`].
    pub async fn record(&self) -> Result<PolicyRecord, Error> {
        if let Some((r, _)) = self.store.get::<PolicyRecord>(&self.record_key()).await? {
            return Ok(r);
        }
        Ok(self.status().await?.record.unwrap_or_default())
    }

    /// The engine's policy status: what runs, the last good policy, cycles, failures, fallbacks.
    ///
    /// # Errors
    /// [`Error::EngineStopped`].
    pub async fn status(&self) -> Result<PolicyStatusResponse, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.send(Command::Status(tx));
        rx.await.map_err(|_| Error::EngineStopped)
    }

    /// Runs `policy` once on the current snapshot without applying its grants: `(grants, microseconds)`.
    async fn trial(&self, policy: Loaded) -> Result<(u32, u64), Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.send(Command::Trial { policy, reply: tx });
        let tried: Result<_, TrialError> = rx.await.map_err(|_| Error::EngineStopped)?;
        Ok(tried?)
    }

    /// Every stored artifact's metadata, oldest first.
    ///
    /// # Errors
    /// [`Error::Store`] if etcd cannot be read.
    pub async fn artifacts(&self) -> Result<Vec<PolicyArtifact>, Error> {
        let (metas, _) = self
            .store
            .list::<PolicyArtifact>(&policy::meta_prefix(&self.store))
            .await?;
        let mut out: Vec<PolicyArtifact> = metas.into_iter().map(|(_, m)| m).collect();
        out.sort_by_key(|a| a.loaded_at_ms);
        Ok(out)
    }

    /// The policy `reference` names: a built-in by name, or a stored artifact by its name or a prefix of its
    /// sha256.
    ///
    /// # Errors
    /// [`Error::NoMatch`], [`Error::Ambiguous`], [`Error::Store`].
    pub async fn resolve_reference(&self, reference: &str) -> Result<PolicyRef, Error> {
        if policy::BUILTINS.contains(&reference) {
            return Ok(policy::builtin_ref(reference));
        }
        let wanted = reference.to_ascii_lowercase();
        let matches: Vec<PolicyRef> = self
            .artifacts()
            .await?
            .into_iter()
            .filter_map(|a| a.r#ref)
            .filter(|r| {
                !wanted.is_empty() && (r.sha256.starts_with(&wanted) || r.name == reference)
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::NoMatch {
                reference: reference.to_string(),
                builtins: policy::BUILTINS.join(", "),
            }),
            _ => Err(Error::Ambiguous {
                reference: reference.to_string(),
                matches: matches.len(),
            }),
        }
    }

    /// Loads `reference` on this replica, tries it, and records it as the active policy.
    async fn activate_ref(&self, reference: PolicyRef) -> Result<PolicyRecord, Error> {
        let loaded = crate::engine::resolve(&self.store, Some(&reference), &self.cache_dir)
            .await
            .map_err(Error::Unloadable)?;
        self.trial(loaded).await?;
        self.record_active(reference).await
    }

    /// Records `reference`, loaded and tried already, as the active policy (the current one becomes the
    /// previous).
    async fn record_active(&self, reference: PolicyRef) -> Result<PolicyRecord, Error> {
        let current = self.record().await?;
        let record = PolicyRecord {
            previous: current.active,
            active: Some(reference),
            activated_at_ms: allot_common::now_ms(),
        };
        self.store.put(&self.record_key(), &record, None).await?;
        Ok(record)
    }

    /// Loads a policy `artifact` (a native library or a WASM component), pinned by `sha256` when it is not
    /// empty: checks it, runs it once on the current snapshot, stores it in etcd, and with `activate` makes it
    /// the active policy. Returns its metadata and the trial's grants and duration in microseconds.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty artifact or a sha256 that does not match; [`Error::BadArtifact`] for
    /// bytes that are not a loadable policy; [`Error::Cache`] if the cache cannot be written;
    /// [`Error::Trial`] if the trial run fails or returns invalid grants; [`Error::Store`].
    pub async fn load(
        &self,
        artifact: &[u8],
        sha256: &str,
        activate: bool,
    ) -> Result<(PolicyArtifact, u32, u64), Error> {
        if artifact.is_empty() {
            return Err(Error::Invalid("the artifact is empty".into()));
        }
        let sha = policy::sha256_hex(artifact);
        if !sha256.is_empty() && !sha256.eq_ignore_ascii_case(&sha) {
            return Err(Error::Invalid(format!(
                "sha256 mismatch: the artifact is {sha}, the pin says {sha256}"
            )));
        }
        policy::artifact_kind(artifact).map_err(Error::BadArtifact)?;
        let path = policy::write_cached(&self.cache_dir, &sha, artifact).map_err(Error::Cache)?;
        let loaded = Loaded::from_file(&path, &sha).map_err(Error::BadArtifact)?;
        let (grants, micros) = self.trial(loaded.clone()).await?;
        let meta = policy::store_artifact(&self.store, &loaded.reference, artifact).await?;
        tracing::info!(policy = %loaded.reference.name, sha256 = %sha, size = artifact.len(), "policy artifact loaded");
        if activate {
            // Loaded and tried just above: record it without compiling and trying it again.
            self.record_active(loaded.reference).await?;
        }
        Ok((meta, grants, micros))
    }

    /// Activates the policy `reference` names (see [`PolicyAdmin::resolve_reference`]).
    ///
    /// # Errors
    /// As [`PolicyAdmin::resolve_reference`]; [`Error::Unloadable`] and [`Error::Trial`] if it cannot be
    /// loaded or tried here.
    pub async fn activate(&self, reference: &str) -> Result<PolicyRecord, Error> {
        let reference = self.resolve_reference(reference).await?;
        self.activate_ref(reference).await
    }

    /// Activates the previous policy again.
    ///
    /// # Errors
    /// [`Error::NoPrevious`]; as [`PolicyAdmin::activate`].
    pub async fn rollback(&self) -> Result<PolicyRecord, Error> {
        let previous = self.record().await?.previous.ok_or(Error::NoPrevious)?;
        self.activate_ref(previous).await
    }

    /// Runs the policy `reference` names as a shadow beside the active one (compared, never applied), or with
    /// `None` stops the shadow. Returns the shadow's reference.
    ///
    /// # Errors
    /// As [`PolicyAdmin::resolve_reference`]; [`Error::Unloadable`].
    pub async fn shadow(&self, reference: Option<&str>) -> Result<Option<PolicyRef>, Error> {
        let Some(reference) = reference else {
            self.engine.send(Command::Shadow(None));
            return Ok(None);
        };
        let reference = self.resolve_reference(reference).await?;
        let loaded = crate::engine::resolve(&self.store, Some(&reference), &self.cache_dir)
            .await
            .map_err(Error::Unloadable)?;
        self.engine.send(Command::Shadow(Some(loaded)));
        Ok(Some(reference))
    }
}
