//! `allot.registry.v1.Registry`: thin translations between protobuf calls and [`Registry`] flows, and the
//! one mapping of the registry's [`Error`] to gRPC status codes.

use crate::error::Error;
use crate::registry::Registry;
use allot_proto::registry::{registry_server, *};
use allot_server::authz;
use tonic::{Request, Response, Status};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(m) => Status::invalid_argument(m),
            e @ Error::NotRegistered(_) => Status::not_found(e.to_string()),
            Error::Store(e) if e.is_corrupt() => Status::internal(e.to_string()),
            Error::Store(e) => Status::unavailable(e.to_string()),
        }
    }
}

/// The registry's gRPC service: the [`Registry`] once this replica leads (a standby's calls are answered by
/// `allot_server::grpc::replicated_server` before they reach it).
pub struct RegistryService(
    pub std::sync::Arc<std::sync::OnceLock<Registry>>,
    pub Option<std::sync::Arc<allot_server::acl::Acls>>,
    pub allot_server::audit::Audit,
);

impl RegistryService {
    fn registry(&self) -> Result<&Registry, Status> {
        self.0.get().ok_or_else(|| {
            Status::unavailable("this registry replica has not loaded its state yet")
        })
    }
}

/// Allows `caller` to act for agent `agent_id`: an anonymous caller (an `--insecure` registry), a new or
/// unknown agent, or the principal that registered it (an agent registered without a principal, on an
/// insecure registry, may be taken over by the first principal that registers it).
///
/// # Errors
/// PERMISSION_DENIED (see `allot_server::authz::denied`).
fn as_itself(registry: &Registry, caller: &authz::Caller, agent_id: &str) -> Result<(), Status> {
    if caller.principal().is_none() {
        return Ok(());
    }
    let owner = registry.principal_of(agent_id);
    caller.require_owner(
        owner.as_deref(),
        "register_agents",
        &format!("as agent {agent_id}"),
    )
}

/// Principal kinds that may register agents and heartbeat for them.
const AGENT_KINDS: [&str; 1] = ["agent"];

#[tonic::async_trait]
impl registry_server::Registry for RegistryService {
    async fn register_agent(
        &self,
        request: Request<RegisterAgentRequest>,
    ) -> Result<Response<RegisterAgentResponse>, Status> {
        let caller = authz::caller(&request);
        caller.require(&AGENT_KINDS, "register_agents", "an agent")?;
        let req = request.into_inner();
        let info = req
            .info
            .ok_or_else(|| Status::invalid_argument("RegisterAgent needs `info` (AgentInfo)"))?;
        let registry = self.registry()?;
        as_itself(registry, &caller, &req.agent_id)?;
        let principal = caller
            .principal()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let r = registry
            .register_agent(info, req.agent_id, &principal)
            .await?;
        Ok(Response::new(RegisterAgentResponse {
            agent_id: r.agent_id,
            heartbeat_interval: r.heartbeat_interval,
            agent_timeout: r.agent_timeout,
            registration: r.registration,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let caller = authz::caller(&request);
        caller.require(&AGENT_KINDS, "register_agents", "(heartbeat)")?;
        let agent_id = request.into_inner().agent_id;
        let registry = self.registry()?;
        as_itself(registry, &caller, &agent_id)?;
        registry.heartbeat(&agent_id)?;
        Ok(Response::new(HeartbeatResponse {}))
    }

    async fn unregister_agent(
        &self,
        request: Request<UnregisterAgentRequest>,
    ) -> Result<Response<UnregisterAgentResponse>, Status> {
        let caller = authz::caller(&request);
        caller.require(&AGENT_KINDS, "register_agents", "(unregister)")?;
        let agent_id = request.into_inner().agent_id;
        let registry = self.registry()?;
        as_itself(registry, &caller, &agent_id)?;
        registry.unregister_agent(&agent_id).await?;
        Ok(Response::new(UnregisterAgentResponse {}))
    }

    async fn list_agents(
        &self,
        _: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let agents = self
            .registry()?
            .agents()
            .await?
            .into_iter()
            .map(|(record, reachable)| AgentState {
                reachable,
                record: Some(record),
            })
            .collect();
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    async fn set_role(
        &self,
        request: Request<SetRoleRequest>,
    ) -> Result<Response<SetRoleResponse>, Status> {
        let caller = authz::caller(&request);
        let role = request
            .into_inner()
            .role
            .ok_or_else(|| Status::invalid_argument("SetRole needs `role`"))?;
        let object = format!("role '{}' (weight {})", role.name, role.weight);
        let quota = !role.quota_limit.is_empty() || !role.quota_guarantee.is_empty();
        let action = match quota {
            true => "update_quotas",
            false => "update_weights",
        };
        let result = async {
            caller.require(&["operator"], "update_weights", &object)?;
            let acls = self.1.as_deref();
            authz::check_acl(acls, &caller, "update_weights", &[&role.name], &object)?;
            if quota {
                authz::check_acl(acls, &caller, "update_quotas", &[&role.name], &object)?;
            }
            self.registry()?.set_role(role).await?;
            Ok::<_, Status>(())
        }
        .await;
        self.2.record(&caller, action, &object, &result);
        result?;
        Ok(Response::new(SetRoleResponse {}))
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        authz::caller(&request).require(
            &["operator", "service"],
            "view_audit",
            "the audit trail",
        )?;
        let limit = match request.into_inner().limit {
            0 => 100,
            n => n as usize,
        };
        let records = allot_server::audit::recent(self.registry()?.store(), limit)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(ListAuditResponse { records }))
    }

    async fn list_roles(
        &self,
        _: Request<ListRolesRequest>,
    ) -> Result<Response<ListRolesResponse>, Status> {
        Ok(Response::new(ListRolesResponse {
            roles: self.registry()?.roles().await?,
        }))
    }
}
