//! `allot.allocator.v1.Allocator` (the offer-broker's view of the allocator) and
//! `allot.allocator.v1.PolicyAdmin` (the operator's).

use crate::engine::{Command, Engine};
use allot_proto::allocator::{allocator_server::Allocator, *};
use tonic::{Request, Response, Status};

/// The allocator's gRPC service: validates each call and hands it to the [`Engine`].
#[derive(Debug, Clone)]
pub struct AllocatorService {
    engine: Engine,
}

impl AllocatorService {
    /// A service in front of `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

fn need(id: &str, what: &str) -> Result<(), Status> {
    if id.is_empty() {
        Err(Status::invalid_argument(format!("{what} is empty")))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl Allocator for AllocatorService {
    type SubscribeStream =
        tokio_stream::wrappers::UnboundedReceiverStream<Result<AllocatorEvent, Status>>;

    async fn subscribe(
        &self,
        _: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.engine.send(Command::Subscribe(tx));
        Ok(Response::new(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ))
    }

    async fn activate_framework(
        &self,
        request: Request<ActivateFrameworkRequest>,
    ) -> Result<Response<ActivateFrameworkResponse>, Status> {
        let r = request.into_inner();
        need(&r.framework_id, "framework_id")?;
        self.engine.send(Command::Activate {
            framework: r.framework_id,
            suppressed: r.suppressed,
        });
        Ok(Response::new(ActivateFrameworkResponse {}))
    }

    async fn deactivate_framework(
        &self,
        request: Request<DeactivateFrameworkRequest>,
    ) -> Result<Response<DeactivateFrameworkResponse>, Status> {
        let r = request.into_inner();
        need(&r.framework_id, "framework_id")?;
        self.engine.send(Command::Deactivate(r.framework_id));
        Ok(Response::new(DeactivateFrameworkResponse {}))
    }

    async fn suppress(
        &self,
        request: Request<SuppressRequest>,
    ) -> Result<Response<SuppressResponse>, Status> {
        let r = request.into_inner();
        need(&r.framework_id, "framework_id")?;
        self.engine.send(Command::Suppress(r.framework_id));
        Ok(Response::new(SuppressResponse {}))
    }

    async fn revive(
        &self,
        request: Request<ReviveRequest>,
    ) -> Result<Response<ReviveResponse>, Status> {
        let r = request.into_inner();
        need(&r.framework_id, "framework_id")?;
        self.engine.send(Command::Revive(r.framework_id));
        Ok(Response::new(ReviveResponse {}))
    }

    async fn recover_offers(
        &self,
        request: Request<RecoverOffersRequest>,
    ) -> Result<Response<RecoverOffersResponse>, Status> {
        let mut r = request.into_inner();
        let more = std::mem::take(&mut r.more);
        // Every recovery is checked before any is applied: a malformed call changes nothing.
        let mut commands = Vec::with_capacity(1 + more.len());
        for r in std::iter::once(r).chain(more) {
            if !r.more.is_empty() {
                return Err(Status::invalid_argument(
                    "a recovery in `more` cannot carry `more` of its own",
                ));
            }
            if !(r.refuse_seconds.is_finite() && r.refuse_seconds >= 0.0) {
                return Err(Status::invalid_argument(format!(
                    "refuse_seconds must be a finite number >= 0, got {}",
                    r.refuse_seconds
                )));
            }
            let mut launched = Vec::with_capacity(r.launched.len());
            for t in r.launched {
                let piece = crate::engine::try_piece_of(&t.resources)
                    .map_err(|e| Status::invalid_argument(format!("task {}: {e}", t.task_id)))?;
                launched.push((t.framework_id, t.task_id, t.agent_id, piece));
            }
            commands.push(Command::Recover {
                offer_ids: r.offer_ids,
                refuse_seconds: r.refuse_seconds,
                launched,
            });
        }
        for command in commands {
            self.engine.send(command);
        }
        Ok(Response::new(RecoverOffersResponse {}))
    }

    async fn tasks_ended(
        &self,
        request: Request<TasksEndedRequest>,
    ) -> Result<Response<TasksEndedResponse>, Status> {
        let tasks = request
            .into_inner()
            .tasks
            .into_iter()
            .map(|t| (t.framework_id, t.task_id))
            .collect();
        self.engine.send(Command::TasksEnded(tasks));
        Ok(Response::new(TasksEndedResponse {}))
    }
}

/// `allot.allocator.v1.PolicyAdmin`: load, list, activate and roll back policies.
#[derive(Debug, Clone)]
pub struct PolicyAdminService {
    store: allot_server::Store,
    engine: Engine,
    cache_dir: std::path::PathBuf,
}

impl PolicyAdminService {
    /// A service over `store` and `engine`, caching artifacts in `cache_dir`.
    pub fn new(store: allot_server::Store, engine: Engine, cache_dir: std::path::PathBuf) -> Self {
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
    async fn record(&self) -> Result<PolicyRecord, Status> {
        if let Some((r, _)) = self.store.get::<PolicyRecord>(&self.record_key()).await? {
            return Ok(r);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.send(Command::Status(tx));
        let status = rx
            .await
            .map_err(|_| Status::unavailable("the allocation engine stopped"))?;
        Ok(status.record.unwrap_or_default())
    }

    async fn trial(&self, policy: crate::policy::Loaded) -> Result<(u32, u64), Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.send(Command::Trial { policy, reply: tx });
        rx.await
            .map_err(|_| Status::unavailable("the allocation engine stopped"))?
            .map_err(|e| Status::failed_precondition(format!("trial run failed: {e}")))
    }

    async fn artifacts(&self) -> Result<Vec<PolicyArtifact>, Status> {
        let (metas, _) = self
            .store
            .list::<PolicyArtifact>(&crate::policy::meta_prefix(&self.store))
            .await?;
        let mut out: Vec<PolicyArtifact> = metas.into_iter().map(|(_, m)| m).collect();
        out.sort_by_key(|a| a.loaded_at_ms);
        Ok(out)
    }

    async fn resolve_reference(&self, reference: &str) -> Result<PolicyRef, Status> {
        if crate::policy::BUILTINS.contains(&reference) {
            return Ok(crate::policy::builtin_ref(reference));
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
            [] => Err(Status::not_found(format!(
                "no built-in policy or loaded artifact matches '{reference}' (built in: {})",
                crate::policy::BUILTINS.join(", ")
            ))),
            _ => Err(Status::invalid_argument(format!(
                "'{reference}' matches {} artifacts: give more of the sha256",
                matches.len()
            ))),
        }
    }

    async fn activate_ref(&self, reference: PolicyRef) -> Result<PolicyRecord, Status> {
        let loaded = crate::engine::resolve(&self.store, Some(&reference), &self.cache_dir)
            .await
            .map_err(Status::failed_precondition)?;
        self.trial(loaded).await?;
        self.record_active(reference).await
    }

    /// Records `reference`, loaded and tried already, as the active policy (the current one becomes the
    /// previous).
    async fn record_active(&self, reference: PolicyRef) -> Result<PolicyRecord, Status> {
        let current = self.record().await?;
        let record = PolicyRecord {
            previous: current.active,
            active: Some(reference),
            activated_at_ms: allot_common::now_ms(),
        };
        self.store.put(&self.record_key(), &record, None).await?;
        Ok(record)
    }
}

#[tonic::async_trait]
impl policy_admin_server::PolicyAdmin for PolicyAdminService {
    async fn load(
        &self,
        request: Request<LoadPolicyRequest>,
    ) -> Result<Response<LoadPolicyResponse>, Status> {
        let r = request.into_inner();
        if r.artifact.is_empty() {
            return Err(Status::invalid_argument("the artifact is empty"));
        }
        let sha = crate::policy::sha256_hex(&r.artifact);
        if !r.sha256.is_empty() && !r.sha256.eq_ignore_ascii_case(&sha) {
            return Err(Status::invalid_argument(format!(
                "sha256 mismatch: the artifact is {sha}, the pin says {}",
                r.sha256
            )));
        }
        crate::policy::artifact_kind(&r.artifact).map_err(Status::invalid_argument)?;
        let path = crate::policy::write_cached(&self.cache_dir, &sha, &r.artifact)
            .map_err(Status::internal)?;
        let loaded =
            crate::policy::Loaded::from_file(&path, &sha).map_err(Status::invalid_argument)?;
        let (grants, micros) = self.trial(loaded.clone()).await?;
        let meta =
            crate::policy::store_artifact(&self.store, &loaded.reference, &r.artifact).await?;
        tracing::info!(policy = %loaded.reference.name, sha256 = %sha, size = r.artifact.len(), "policy artifact loaded");
        if r.activate {
            // Loaded and tried just above: record it without compiling and trying it again.
            self.record_active(loaded.reference).await?;
        }
        Ok(Response::new(LoadPolicyResponse {
            artifact: Some(meta),
            trial_grants: grants,
            trial_micros: micros,
        }))
    }

    async fn list(
        &self,
        _: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        Ok(Response::new(ListPoliciesResponse {
            builtins: crate::policy::BUILTINS
                .iter()
                .map(|b| b.to_string())
                .collect(),
            artifacts: self.artifacts().await?,
            record: Some(self.record().await?),
        }))
    }

    async fn activate(
        &self,
        request: Request<ActivatePolicyRequest>,
    ) -> Result<Response<ActivatePolicyResponse>, Status> {
        let reference = self
            .resolve_reference(request.into_inner().reference.trim())
            .await?;
        let record = self.activate_ref(reference).await?;
        Ok(Response::new(ActivatePolicyResponse {
            record: Some(record),
        }))
    }

    async fn rollback(
        &self,
        _: Request<RollbackPolicyRequest>,
    ) -> Result<Response<RollbackPolicyResponse>, Status> {
        let previous = self.record().await?.previous.ok_or_else(|| {
            Status::failed_precondition("there is no previous policy to roll back to")
        })?;
        let record = self.activate_ref(previous).await?;
        Ok(Response::new(RollbackPolicyResponse {
            record: Some(record),
        }))
    }

    async fn shadow(
        &self,
        request: Request<ShadowPolicyRequest>,
    ) -> Result<Response<ShadowPolicyResponse>, Status> {
        let r = request.into_inner();
        if r.off {
            self.engine.send(Command::Shadow(None));
            return Ok(Response::new(ShadowPolicyResponse { shadow: None }));
        }
        let reference = self.resolve_reference(r.reference.trim()).await?;
        let loaded = crate::engine::resolve(&self.store, Some(&reference), &self.cache_dir)
            .await
            .map_err(Status::failed_precondition)?;
        self.engine.send(Command::Shadow(Some(loaded)));
        Ok(Response::new(ShadowPolicyResponse {
            shadow: Some(reference),
        }))
    }

    async fn status(
        &self,
        _: Request<PolicyStatusRequest>,
    ) -> Result<Response<PolicyStatusResponse>, Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.send(Command::Status(tx));
        let status = rx
            .await
            .map_err(|_| Status::unavailable("the allocation engine stopped"))?;
        Ok(Response::new(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recovery(offer: &str, refuse_seconds: f64) -> RecoverOffersRequest {
        RecoverOffersRequest {
            offer_ids: vec![offer.to_string()],
            refuse_seconds,
            ..Default::default()
        }
    }

    fn recovered(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Command>,
    ) -> Vec<(Vec<String>, f64)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| match c {
                Command::Recover {
                    offer_ids,
                    refuse_seconds,
                    ..
                } => (offer_ids, refuse_seconds),
                other => panic!("unexpected command {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_of_recoveries_is_applied_in_order_each_with_its_filter() {
        let (engine, mut rx) = Engine::detached();
        let service = AllocatorService::new(engine);
        let mut req = recovery("o1", 5.0);
        req.more = vec![recovery("o2", 0.0), recovery("o3", 60.0)];
        service.recover_offers(Request::new(req)).await.unwrap();
        assert_eq!(
            recovered(&mut rx),
            [
                (vec!["o1".to_string()], 5.0),
                (vec!["o2".to_string()], 0.0),
                (vec!["o3".to_string()], 60.0)
            ]
        );
    }

    #[tokio::test]
    async fn one_malformed_recovery_refuses_the_whole_batch() {
        let (engine, mut rx) = Engine::detached();
        let service = AllocatorService::new(engine);
        let mut req = recovery("o1", 5.0);
        req.more = vec![recovery("o2", f64::NAN), recovery("o3", 0.0)];
        let e = service.recover_offers(Request::new(req)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let mut nested = recovery("o1", 0.0);
        nested.more = vec![RecoverOffersRequest {
            more: vec![recovery("o2", 0.0)],
            ..recovery("o3", 0.0)
        }];
        let e = service
            .recover_offers(Request::new(nested))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(recovered(&mut rx).is_empty(), "nothing applied");
    }
}
