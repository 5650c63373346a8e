//! `allot.registry.v1.Registry`.

use allot_common::Store;
use allot_common::convert::resources_from_proto;
use allot_common::store::{Kind, StoreError};
use allot_proto::common::{AgentRecord, Role};
use allot_proto::registry::{registry_server::Registry, *};
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The lease of one agent and the open keep-alive stream that renews it.
struct Lease {
    id: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

/// The registry's gRPC service.
pub struct RegistryService {
    store: Store,
    agent_timeout: Duration,
    leases: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Lease>>>>,
}

impl RegistryService {
    /// A service over `store` whose agents time out after `agent_timeout` without a heartbeat.
    pub fn new(store: Store, agent_timeout: Duration) -> Self {
        Self {
            store,
            agent_timeout,
            leases: Mutex::new(HashMap::new()),
        }
    }

    fn ttl_seconds(&self) -> i64 {
        (self.agent_timeout.as_secs_f64().ceil() as i64).max(1)
    }

    async fn open_lease(
        &self,
        agent_id: &str,
        lease_id: i64,
    ) -> Result<Arc<tokio::sync::Mutex<Lease>>, Status> {
        let (keeper, stream) = allot_common::store::traced(
            "lease_keep_alive",
            self.store.client().lease_keep_alive(lease_id),
        )
        .await
        .map_err(StoreError::from)?;
        let lease = Arc::new(tokio::sync::Mutex::new(Lease {
            id: lease_id,
            keeper,
            stream,
        }));
        self.leases
            .lock()
            .expect("lease map poisoned")
            .insert(agent_id.to_string(), lease.clone());
        Ok(lease)
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register_agent(
        &self,
        request: Request<RegisterAgentRequest>,
    ) -> Result<Response<RegisterAgentResponse>, Status> {
        let req = request.into_inner();
        let mut info = req
            .info
            .ok_or_else(|| Status::invalid_argument("RegisterAgent needs `info` (AgentInfo)"))?;
        if info.address.is_empty() {
            return Err(Status::invalid_argument(
                "AgentInfo.address (host:port) is empty",
            ));
        }
        let resources = resources_from_proto(&info.resources)
            .map_err(|e| Status::invalid_argument(format!("AgentInfo.resources: {e}")))?;
        if resources.is_empty() {
            return Err(Status::invalid_argument("AgentInfo.resources is empty"));
        }
        if info.hostname.is_empty() {
            info.hostname = info
                .address
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string();
        }
        let agent_id = if req.agent_id.is_empty() {
            allot_common::new_id("agent")
        } else if allot_common::valid_id(&req.agent_id) {
            req.agent_id
        } else {
            return Err(Status::invalid_argument(format!(
                "agent_id '{}' must be 1-128 characters of [A-Za-z0-9._-]",
                req.agent_id
            )));
        };
        // A re-registration replaces the previous lease.
        let previous = self
            .leases
            .lock()
            .expect("lease map poisoned")
            .remove(&agent_id);
        if let Some(old) = previous {
            let id = old.lock().await.id;
            let _ =
                allot_common::store::traced("lease_revoke", self.store.client().lease_revoke(id))
                    .await;
        }
        let lease = allot_common::store::traced(
            "lease_grant",
            self.store.client().lease_grant(self.ttl_seconds(), None),
        )
        .await
        .map_err(StoreError::from)?;
        let record = AgentRecord {
            agent_id: agent_id.clone(),
            info: Some(info),
            registered_at_ms: allot_common::now_ms(),
        };
        // The record and the lease-bound liveness key in one transaction: watchers see both at one revision.
        let txn = etcd_client::Txn::new().and_then([
            etcd_client::TxnOp::put(
                self.store.key(Kind::Agents, &agent_id),
                prost::Message::encode_to_vec(&record),
                None,
            ),
            etcd_client::TxnOp::put(
                self.store.key(Kind::Alive, &agent_id),
                lease.id().to_string(),
                Some(etcd_client::PutOptions::new().with_lease(lease.id())),
            ),
        ]);
        allot_common::store::traced("txn", self.store.client().txn(txn))
            .await
            .map_err(StoreError::from)?;
        self.open_lease(&agent_id, lease.id()).await?;
        tracing::info!(%agent_id, address = %record.info.as_ref().map(|i| i.address.as_str()).unwrap_or(""), %resources, "agent registered");
        Ok(Response::new(RegisterAgentResponse {
            agent_id,
            heartbeat_interval: (self.agent_timeout.as_secs_f64() / 3.0).max(0.2),
            agent_timeout: self.agent_timeout.as_secs_f64(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let agent_id = request.into_inner().agent_id;
        let lease = self
            .leases
            .lock()
            .expect("lease map poisoned")
            .get(&agent_id)
            .cloned();
        let lease = match lease {
            Some(l) => l,
            None => {
                // After a registry restart: find the lease again from the agent's alive key.
                let resp = allot_common::store::traced(
                    "get",
                    self.store
                        .client()
                        .get(self.store.key(Kind::Alive, &agent_id), None),
                )
                .await
                .map_err(StoreError::from)?;
                let lease_id = resp
                    .kvs()
                    .first()
                    .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse::<i64>().ok())
                    .ok_or_else(|| {
                        Status::not_found(format!(
                            "agent {agent_id} is not registered or its lease lapsed; re-register"
                        ))
                    })?;
                self.open_lease(&agent_id, lease_id).await?
            }
        };
        let mut lease = lease.lock().await;
        let Lease { keeper, stream, .. } = &mut *lease;
        let answer = allot_common::store::traced("lease_keep_alive", async {
            keeper.keep_alive().await?;
            stream.message().await
        })
        .await
        .map_err(StoreError::from)?;
        match answer {
            Some(r) if r.ttl() > 0 => Ok(Response::new(HeartbeatResponse {})),
            _ => {
                drop(lease);
                self.leases
                    .lock()
                    .expect("lease map poisoned")
                    .remove(&agent_id);
                Err(Status::not_found(format!(
                    "agent {agent_id}'s lease lapsed; re-register"
                )))
            }
        }
    }

    async fn unregister_agent(
        &self,
        request: Request<UnregisterAgentRequest>,
    ) -> Result<Response<UnregisterAgentResponse>, Status> {
        let agent_id = request.into_inner().agent_id;
        let lease = self
            .leases
            .lock()
            .expect("lease map poisoned")
            .remove(&agent_id);
        // Revoking the lease deletes the alive key; without a lease here (say, after a restart), delete it.
        let revoked = match lease {
            Some(lease) => {
                let id = lease.lock().await.id;
                allot_common::store::traced("lease_revoke", self.store.client().lease_revoke(id))
                    .await
                    .is_ok()
            }
            None => false,
        };
        if !revoked {
            self.store
                .delete(&self.store.key(Kind::Alive, &agent_id))
                .await?;
        }
        tracing::info!(%agent_id, "agent unregistered");
        Ok(Response::new(UnregisterAgentResponse {}))
    }

    async fn list_agents(
        &self,
        _: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let (records, _) = self
            .store
            .list::<AgentRecord>(&self.store.prefix(Kind::Agents))
            .await?;
        let alive: std::collections::HashSet<String> = self
            .store
            .keys(&self.store.prefix(Kind::Alive))
            .await?
            .into_iter()
            .map(|k| self.store.id_of(Kind::Alive, &k).to_string())
            .collect();
        let agents = records
            .into_iter()
            .map(|(_, record)| AgentState {
                reachable: alive.contains(&record.agent_id),
                record: Some(record),
            })
            .collect();
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    async fn set_role(
        &self,
        request: Request<SetRoleRequest>,
    ) -> Result<Response<SetRoleResponse>, Status> {
        let role = request
            .into_inner()
            .role
            .ok_or_else(|| Status::invalid_argument("SetRole needs `role`"))?;
        if !allot_common::valid_role(&role.name) {
            return Err(Status::invalid_argument(format!(
                "role name '{}' is invalid",
                role.name
            )));
        }
        if !(role.weight.is_finite() && role.weight > 0.0) {
            return Err(Status::invalid_argument(format!(
                "role weight must be a positive number, got {}",
                role.weight
            )));
        }
        resources_from_proto(&role.quota_limit)
            .map_err(|e| Status::invalid_argument(format!("quota_limit: {e}")))?;
        self.store
            .put(&self.store.key(Kind::Roles, &role.name), &role, None)
            .await?;
        tracing::info!(role = %role.name, weight = role.weight, "role set");
        Ok(Response::new(SetRoleResponse {}))
    }

    async fn list_roles(
        &self,
        _: Request<ListRolesRequest>,
    ) -> Result<Response<ListRolesResponse>, Status> {
        let (roles, _) = self
            .store
            .list::<Role>(&self.store.prefix(Kind::Roles))
            .await?;
        Ok(Response::new(ListRolesResponse {
            roles: roles.into_iter().map(|(_, r)| r).collect(),
        }))
    }
}
