//! `allot.allocator.v1.Allocator` (the offer-broker's view of the allocator) and
//! `allot.allocator.v1.PolicyAdmin` (the operator's): thin translations between protobuf calls and the
//! [`Engine`] or [`PolicyAdmin`], and the one mapping of the allocator's [`Error`] to gRPC status codes.

use crate::admin::PolicyAdmin;
use crate::engine::{Command, Engine};
use crate::error::Error;
use allot_proto::allocator::{allocator_server::Allocator, *};
use tonic::{Request, Response, Status};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let text = e.to_string();
        match e {
            Error::Invalid(_) | Error::BadArtifact(_) | Error::Ambiguous { .. } => {
                Status::invalid_argument(text)
            }
            Error::Unloadable(_) | Error::Trial(_) | Error::NoPrevious | Error::Conflict(_) => {
                Status::failed_precondition(text)
            }
            Error::NoMatch { .. } => Status::not_found(text),
            Error::Cache(_) => Status::internal(text),
            Error::EngineStopped => Status::unavailable(text),
            Error::Store(e) if e.is_corrupt() => Status::internal(text),
            Error::Store(_) => Status::unavailable(text),
        }
    }
}

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

fn need(id: &str, what: &str) -> Result<(), Error> {
    if id.is_empty() {
        Err(Error::Invalid(format!("{what} is empty")))
    } else {
        Ok(())
    }
}

/// The engine commands of a RecoverOffers call, each recovery (the first and those in `more`) in order.
///
/// # Errors
/// [`Error::Invalid`] for a nested `more`, a bad `refuse_seconds` or malformed task resources: every
/// recovery is checked before any is applied, so a malformed call changes nothing.
fn recoveries(mut r: RecoverOffersRequest) -> Result<Vec<Command>, Error> {
    let more = std::mem::take(&mut r.more);
    let mut commands = Vec::with_capacity(1 + more.len());
    for r in std::iter::once(r).chain(more) {
        if !r.more.is_empty() {
            return Err(Error::Invalid(
                "a recovery in `more` cannot carry `more` of its own".into(),
            ));
        }
        if !(r.refuse_seconds.is_finite() && r.refuse_seconds >= 0.0) {
            return Err(Error::Invalid(format!(
                "refuse_seconds must be a finite number >= 0, got {}",
                r.refuse_seconds
            )));
        }
        let mut launched = Vec::with_capacity(r.launched.len());
        for t in r.launched {
            let piece = crate::engine::try_piece_of(&t.resources)
                .map_err(|e| Error::Invalid(format!("task {}: {e}", t.task_id)))?;
            launched.push((t.framework_id, t.task_id, t.agent_id, piece));
        }
        commands.push(Command::Recover {
            offer_ids: r.offer_ids,
            refuse_seconds: r.refuse_seconds,
            launched,
        });
    }
    Ok(commands)
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
        for command in recoveries(request.into_inner())? {
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

/// The interceptor of the allocator's `Allocator` service (offers, activation, recovered resources): only the
/// offer-broker (a `service` principal) may call it (on an `--insecure` allocator every caller passes).
///
/// # Errors
/// PERMISSION_DENIED (see `allot_server::authz::denied`).
pub fn broker_only(request: Request<()>) -> Result<Request<()>, Status> {
    allot_server::authz::caller(&request).require(&["service"], "call_allocator", "(offers)")?;
    Ok(request)
}

/// `allot.allocator.v1.PolicyAdmin`: load, list, activate, roll back and shadow policies; with the ACL file,
/// if there is one, and the audit trail every policy action is recorded in.
#[derive(Debug, Clone)]
pub struct PolicyAdminService(
    pub PolicyAdmin,
    pub Option<std::sync::Arc<allot_server::acl::Acls>>,
    pub allot_server::audit::Audit,
);

impl PolicyAdminService {
    /// Runs policy action `action` on `policies` (described by `object`) for `caller` when an operator (or,
    /// on an `--insecure` allocator, anyone) asks and the ACL file, if there is one, allows it: a policy runs
    /// inside the allocator. The outcome, allowed or not, goes to the audit trail.
    ///
    /// # Errors
    /// PERMISSION_DENIED (see `allot_server::authz::denied`), or the action's own error.
    async fn audited<T>(
        &self,
        caller: &allot_server::authz::Caller,
        (action, policies, object): (&str, &[&str], &str),
        run: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let result = async {
            caller.require(&["operator"], action, object)?;
            allot_server::authz::check_acl(self.1.as_deref(), caller, action, policies, object)?;
            run.await
        }
        .await;
        self.2.record(caller, action, object, &result);
        result
    }
}

#[tonic::async_trait]
impl policy_admin_server::PolicyAdmin for PolicyAdminService {
    async fn load(
        &self,
        request: Request<LoadPolicyRequest>,
    ) -> Result<Response<LoadPolicyResponse>, Status> {
        let caller = allot_server::authz::caller(&request);
        let r = request.into_inner();
        let object = format!("a policy artifact ({} bytes)", r.artifact.len());
        let run = async {
            let (meta, grants, micros) = self.0.load(&r.artifact, &r.sha256, r.activate).await?;
            Ok(LoadPolicyResponse {
                artifact: Some(meta),
                trial_grants: grants,
                trial_micros: micros,
            })
        };
        self.audited(&caller, ("load_policies", &[], &object), run)
            .await
            .map(Response::new)
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
            artifacts: self.0.artifacts().await?,
            record: Some(self.0.record().await?),
        }))
    }

    async fn activate(
        &self,
        request: Request<ActivatePolicyRequest>,
    ) -> Result<Response<ActivatePolicyResponse>, Status> {
        let caller = allot_server::authz::caller(&request);
        let reference = request.into_inner().reference.trim().to_string();
        let object = format!("policy '{reference}'");
        let run = async {
            Ok(ActivatePolicyResponse {
                record: Some(self.0.activate(&reference).await?),
            })
        };
        self.audited(&caller, ("activate_policies", &[&reference], &object), run)
            .await
            .map(Response::new)
    }

    async fn rollback(
        &self,
        request: Request<RollbackPolicyRequest>,
    ) -> Result<Response<RollbackPolicyResponse>, Status> {
        let caller = allot_server::authz::caller(&request);
        let run = async {
            Ok(RollbackPolicyResponse {
                record: Some(self.0.rollback().await?),
            })
        };
        let what = (
            "activate_policies",
            &[][..],
            "the previous policy (rollback)",
        );
        self.audited(&caller, what, run).await.map(Response::new)
    }

    async fn shadow(
        &self,
        request: Request<ShadowPolicyRequest>,
    ) -> Result<Response<ShadowPolicyResponse>, Status> {
        let caller = allot_server::authz::caller(&request);
        let r = request.into_inner();
        let reference = r.reference.trim().to_string();
        let object = match r.off {
            true => "shadow off".to_string(),
            false => format!("policy '{reference}' (shadow)"),
        };
        let run = async {
            let shadowed = (!r.off).then_some(reference.as_str());
            Ok(ShadowPolicyResponse {
                shadow: self.0.shadow(shadowed).await?,
            })
        };
        self.audited(&caller, ("shadow_policies", &[&reference], &object), run)
            .await
            .map(Response::new)
    }

    async fn status(
        &self,
        _: Request<PolicyStatusRequest>,
    ) -> Result<Response<PolicyStatusResponse>, Status> {
        Ok(Response::new(self.0.status().await?))
    }
}

/// `allot.allocator.v1.Reservations`: the operator's dynamic reservations, allowed to operators (and, on an
/// `--insecure` allocator, anyone) that the ACL file, if there is one, lets reserve or unreserve for the
/// role; every change, allowed or not, goes to the audit trail.
#[derive(Debug, Clone)]
pub struct ReservationsService(
    pub crate::reservations::ReservationAdmin,
    pub Option<std::sync::Arc<allot_server::acl::Acls>>,
    pub allot_server::audit::Audit,
);

impl ReservationsService {
    async fn change(
        &self,
        request: Request<ReserveRequest>,
        reserve: bool,
    ) -> Result<Response<ReservationsResponse>, Status> {
        let caller = allot_server::authz::caller(&request);
        let r = request.into_inner();
        let action = if reserve {
            "reserve_resources"
        } else {
            "unreserve_resources"
        };
        let mut object = format!(
            "{} on agent {} for role {}",
            allot_common::convert::pieces_from_proto(&r.resources)
                .map(|(u, _)| u.to_string())
                .unwrap_or_else(|e| format!("<{e}>")),
            r.agent_id,
            r.role
        );
        if !r.principal.is_empty() {
            object.push_str(&format!(" (framework principal {})", r.principal));
        }
        let result = async {
            // An operator, or the offer-broker for a framework's RESERVE or UNRESERVE, which it authorized
            // against the ACL file for the framework's principal.
            caller.require(&["operator", "service"], action, &object)?;
            if !caller.is(&["service"]) {
                allot_server::authz::check_acl(
                    self.1.as_deref(),
                    &caller,
                    action,
                    &[&r.role],
                    &object,
                )?;
            }
            let reservations = self
                .0
                .change(&r.agent_id, &r.role, &r.resources, reserve)
                .await?;
            Ok(ReservationsResponse {
                reservations: Some(reservations),
            })
        }
        .await;
        self.2.record(&caller, action, &object, &result);
        result.map(Response::new)
    }
}

#[tonic::async_trait]
impl reservations_server::Reservations for ReservationsService {
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReservationsResponse>, Status> {
        self.change(request, true).await
    }

    async fn unreserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReservationsResponse>, Status> {
        self.change(request, false).await
    }

    async fn list(
        &self,
        _: Request<ListReservationsRequest>,
    ) -> Result<Response<ListReservationsResponse>, Status> {
        Ok(Response::new(ListReservationsResponse {
            agents: self.0.list().await?,
        }))
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
