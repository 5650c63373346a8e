//! `allot.registry.v1.Registry`.

use crate::liveness::Liveness;
use allot_common::convert::resources_from_proto;
use allot_proto::common::{AgentRecord, Role};
use allot_proto::registry::{registry_server::Registry, *};
use allot_server::Store;
use allot_server::store::{Kind, StoreError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// Compare-and-delete transactions of the sweeper hold this many agents each (≤ etcd's `--max-txn-ops`).
const SWEEP_CHUNK: usize = 64;

/// The registry's gRPC service. Agent liveness is a [`Liveness`] table in memory; etcd holds only its
/// transitions (the `alive/<agent_id>` keys), written by registration and deleted by a sweeper task that runs
/// as long as the service exists.
pub struct RegistryService {
    store: Store,
    agent_timeout: Duration,
    liveness: Arc<Mutex<Liveness>>,
    _sweeper: allot_common::AbortOnDrop,
}

/// The registry's series: `allot_registry_agents_reachable` (set on every sweep) and
/// `allot_registry_agent_timeouts_total`.
struct Metrics {
    reachable: allot_telemetry::metrics::prometheus::Gauge,
    timeouts: allot_telemetry::metrics::prometheus::IntCounter,
}

static M: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(|| Metrics {
    reachable: allot_telemetry::metrics::gauge(
        "allot_registry_agents_reachable",
        "Registered agents whose heartbeats arrive in time",
    ),
    timeouts: allot_telemetry::metrics::counter(
        "allot_registry_agent_timeouts_total",
        "Agents declared unreachable after agent_timeout without a heartbeat",
    ),
});

impl RegistryService {
    /// A service over `store` whose agents time out after `agent_timeout` without a heartbeat. Every agent
    /// that etcd lists as alive is admitted with a full timeout from now (a restarted registry does not judge
    /// agents by heartbeats it never saw). Starts the sweeper on the current Tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Etcd`] if the `alive` keys cannot be read.
    pub async fn start(store: Store, agent_timeout: Duration) -> Result<Self, StoreError> {
        let mut liveness = Liveness::new(agent_timeout);
        let now = Instant::now();
        for (key, revision) in store.keys(&store.prefix(Kind::Alive)).await? {
            liveness.admit(store.id_of(Kind::Alive, &key).to_string(), revision, now);
        }
        if !liveness.is_empty() {
            tracing::info!(
                agents = liveness.len(),
                ?agent_timeout,
                "agents found alive; each gets a full timeout"
            );
        }
        M.reachable.set(liveness.len() as f64);
        let liveness = Arc::new(Mutex::new(liveness));
        let period = (agent_timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let sweeper = tokio::spawn(sweep_forever(store.clone(), liveness.clone(), period));
        Ok(Self {
            store,
            agent_timeout,
            liveness,
            _sweeper: allot_common::AbortOnDrop(sweeper),
        })
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().expect("liveness poisoned")
    }
}

/// Every `period`, deletes the `alive` keys of agents past their deadline.
async fn sweep_forever(store: Store, liveness: Arc<Mutex<Liveness>>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweep(&store, &liveness).await;
    }
}

/// One sweep: takes the expired agents out of `liveness` and deletes their `alive` keys, each only if it is
/// still at the revision the registry admitted (an agent that registered again since keeps its new key). Keys
/// that cannot be deleted (etcd unavailable) go back into the table for the next sweep.
async fn sweep(store: &Store, liveness: &Mutex<Liveness>) {
    let expired = liveness
        .lock()
        .expect("liveness poisoned")
        .expire(Instant::now());
    let mut timed_out = 0usize;
    for chunk in expired.chunks(SWEEP_CHUNK) {
        let items: Vec<(String, i64)> = chunk
            .iter()
            .map(|(id, rev)| (store.key(Kind::Alive, id), *rev))
            .collect();
        match store.delete_if_unchanged(&items).await {
            Ok(deleted) => {
                for ((id, _), gone) in chunk.iter().zip(deleted) {
                    if !gone {
                        tracing::debug!(agent_id = %id, "alive key changed since; left alone");
                        continue;
                    }
                    timed_out += 1;
                    if timed_out <= 10 {
                        tracing::warn!(agent_id = %id, "agent missed its heartbeats past agent_timeout; unreachable");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(agents = chunk.len(), error = %e, "cannot mark agents unreachable; retrying");
                let mut liveness = liveness.lock().expect("liveness poisoned");
                for (id, rev) in chunk {
                    liveness.retry(id.clone(), *rev, Instant::now());
                }
            }
        }
    }
    if timed_out > 10 {
        tracing::warn!(agents = timed_out, "agents timed out in one sweep");
    }
    M.timeouts.inc_by(timed_out as u64);
    M.reachable
        .set(liveness.lock().expect("liveness poisoned").len() as f64);
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
        let record = AgentRecord {
            agent_id: agent_id.clone(),
            info: Some(info),
            registered_at_ms: allot_common::now_ms(),
        };
        // The record and the liveness key in one transaction: watchers see both at one revision, which is
        // the revision the sweeper later deletes the liveness key at. A re-registration rewrites both.
        let revision = self
            .store
            .put_all_encoded(vec![
                (
                    self.store.key(Kind::Agents, &agent_id),
                    prost::Message::encode_to_vec(&record),
                ),
                (
                    self.store.key(Kind::Alive, &agent_id),
                    record.registered_at_ms.to_string().into_bytes(),
                ),
            ])
            .await?;
        self.liveness()
            .admit(agent_id.clone(), revision, Instant::now());
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
        if self.liveness().heartbeat(&agent_id, Instant::now()) {
            Ok(Response::new(HeartbeatResponse {}))
        } else {
            Err(Status::not_found(format!(
                "agent {agent_id} is not registered or missed its heartbeats past agent_timeout; re-register"
            )))
        }
    }

    async fn unregister_agent(
        &self,
        request: Request<UnregisterAgentRequest>,
    ) -> Result<Response<UnregisterAgentResponse>, Status> {
        let agent_id = request.into_inner().agent_id;
        // The key first: if etcd cannot delete it, the agent stays in the table and times out like any other.
        self.store
            .delete(&self.store.key(Kind::Alive, &agent_id))
            .await?;
        self.liveness().forget(&agent_id);
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
        // Reachability is the registry's own judgement, which the `alive` keys publish.
        let liveness = self.liveness();
        let agents = records
            .into_iter()
            .map(|(_, record)| AgentState {
                reachable: liveness.is_admitted(&record.agent_id),
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
