//! The registry's flows: agent registration, heartbeats and unregistration, the agent list, and roles.
//!
//! Agent liveness is a [`Liveness`] table in memory; etcd holds only its transitions (the `alive/<agent_id>`
//! keys), written by registration and deleted by the [`sweeper`](crate::sweeper), which the leading replica
//! runs ([`Registry::sweep`]) for as long as its term lasts.

use crate::error::Error;
use crate::liveness::Liveness;
use crate::metrics::M;
use allot_common::convert::{limits_from_proto, resources_from_proto};
use allot_proto::common::{AgentInfo, AgentRecord, Role};
use allot_server::Store;
use allot_server::store::{Kind, StoreError, alive_value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An agent admitted by [`Registry::register_agent`].
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// Its AgentID: the one it asked for (a re-registration), or a new one.
    pub agent_id: String,
    /// How often it should heartbeat, in seconds: a third of the agent timeout, at least 0.2.
    pub heartbeat_interval: f64,
    /// How long it may go without a heartbeat before it is unreachable, in seconds.
    pub agent_timeout: f64,
    /// This registration: the time it was made (Unix milliseconds), which is also the value of the agent's
    /// `alive` key. A re-registration gets a new one; the offer-broker stamps launches with it (see
    /// `LaunchTasksRequest.agent_registration`).
    pub registration: u64,
}

/// The registry: agents, their liveness, and roles.
pub struct Registry {
    store: Store,
    agent_timeout: Duration,
    liveness: Arc<Mutex<Liveness>>,
    /// Each agent's registering principal (`AgentRecord.principal`), for the identity checks of every call.
    principals: Mutex<HashMap<String, String>>,
}

impl Registry {
    /// A registry over `store` whose agents time out after `agent_timeout` without a heartbeat. Every agent
    /// that etcd lists as alive is admitted with a full timeout from now (a restarted registry does not judge
    /// agents by heartbeats it never saw, and a new leader gives every agent a full timeout). Agents time out
    /// only while [`Registry::sweep`] runs.
    ///
    /// # Errors
    /// [`StoreError::Etcd`] if the `alive` keys cannot be read.
    pub async fn load(store: Store, agent_timeout: Duration) -> Result<Self, StoreError> {
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
        let (records, _) = store
            .list::<AgentRecord>(&store.prefix(Kind::Agents))
            .await?;
        let principals = records
            .into_iter()
            .map(|(_, r)| (r.agent_id, r.principal))
            .collect();
        Ok(Self {
            store,
            agent_timeout,
            liveness,
            principals: Mutex::new(principals),
        })
    }

    /// The sweeper of this registry: agents past their deadline become unreachable (see
    /// [`sweeper`](crate::sweeper)). Runs until dropped; spawn it for the term of the leading replica.
    pub fn sweep(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        crate::sweeper::sweep_forever(
            self.store.clone(),
            self.liveness.clone(),
            crate::sweeper::period(self.agent_timeout),
        )
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().expect("liveness poisoned")
    }

    /// The store this registry writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The principal that registered `agent_id` (empty: registered without one, on an insecure registry);
    /// `None` for an agent never registered.
    pub fn principal_of(&self, agent_id: &str) -> Option<String> {
        self.principals
            .lock()
            .expect("principals poisoned")
            .get(agent_id)
            .cloned()
    }

    /// Registers an agent described by `info`, registered by `principal` (empty on an insecure registry; see
    /// [`Registry::principal_of`]), as `agent_id` when it has one (a restarted agent re-registers with its
    /// checkpointed ID) or under a new ID. Its record and its `alive` key are written in one
    /// transaction, and its heartbeat deadline starts now.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty address, empty or malformed resources, or a malformed `agent_id`;
    /// [`Error::Store`] if etcd cannot record it.
    pub async fn register_agent(
        &self,
        mut info: AgentInfo,
        agent_id: String,
        principal: &str,
    ) -> Result<Registered, Error> {
        if info.address.is_empty() {
            return Err(Error::Invalid(
                "AgentInfo.address (host:port) is empty".into(),
            ));
        }
        let resources = resources_from_proto(&info.resources)
            .map_err(|e| Error::Invalid(format!("AgentInfo.resources: {e}")))?;
        if resources.is_empty() {
            return Err(Error::Invalid("AgentInfo.resources is empty".into()));
        }
        if info.hostname.is_empty() {
            info.hostname = info
                .address
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string();
        }
        let agent_id = if agent_id.is_empty() {
            allot_common::new_id("agent")
        } else if allot_common::valid_id(&agent_id) {
            agent_id
        } else {
            return Err(Error::Invalid(format!(
                "agent_id '{agent_id}' must be 1-128 characters of [A-Za-z0-9._-]"
            )));
        };
        let record = AgentRecord {
            agent_id: agent_id.clone(),
            info: Some(info),
            registered_at_ms: allot_common::now_ms(),
            principal: principal.to_string(),
        };
        // The record and the liveness key in one transaction: watchers see both at one revision, which is
        // the revision the sweeper later deletes the liveness key at. A re-registration rewrites both.
        let registration = u64::try_from(record.registered_at_ms).unwrap_or(0);
        let revision = self
            .store
            .put_all_encoded(vec![
                (
                    self.store.key(Kind::Agents, &agent_id),
                    prost::Message::encode_to_vec(&record),
                ),
                (
                    self.store.key(Kind::Alive, &agent_id),
                    alive_value(registration),
                ),
            ])
            .await?;
        self.liveness()
            .admit(agent_id.clone(), revision, Instant::now());
        self.principals
            .lock()
            .expect("principals poisoned")
            .insert(agent_id.clone(), principal.to_string());
        tracing::info!(%agent_id, %principal, address = %record.info.as_ref().map(|i| i.address.as_str()).unwrap_or(""), %resources, "agent registered");
        Ok(Registered {
            agent_id,
            heartbeat_interval: (self.agent_timeout.as_secs_f64() / 3.0).max(0.2),
            agent_timeout: self.agent_timeout.as_secs_f64(),
            registration,
        })
    }

    /// A heartbeat of `agent_id`: moves its deadline (in memory; no etcd write).
    ///
    /// # Errors
    /// [`Error::NotRegistered`] if the agent is not registered or already timed out.
    pub fn heartbeat(&self, agent_id: &str) -> Result<(), Error> {
        if self.liveness().heartbeat(agent_id, Instant::now()) {
            Ok(())
        } else {
            Err(Error::NotRegistered(agent_id.to_string()))
        }
    }

    /// Unregisters `agent_id` (an agent that stops for good): its `alive` key goes, then its deadline.
    ///
    /// # Errors
    /// [`Error::Store`] if etcd cannot delete the key; the agent then stays and times out like any other.
    pub async fn unregister_agent(&self, agent_id: &str) -> Result<(), Error> {
        self.store
            .delete(&self.store.key(Kind::Alive, agent_id))
            .await?;
        self.liveness().forget(agent_id);
        tracing::info!(%agent_id, "agent unregistered");
        Ok(())
    }

    /// Every registered agent with whether it is reachable (the registry's own judgement, which the `alive`
    /// keys publish).
    ///
    /// # Errors
    /// [`Error::Store`] if etcd cannot be read.
    pub async fn agents(&self) -> Result<Vec<(AgentRecord, bool)>, Error> {
        let (records, _) = self
            .store
            .list::<AgentRecord>(&self.store.prefix(Kind::Agents))
            .await?;
        let liveness = self.liveness();
        Ok(records
            .into_iter()
            .map(|(_, record)| {
                let reachable = liveness.is_admitted(&record.agent_id);
                (record, reachable)
            })
            .collect())
    }

    /// Creates or replaces `role` (weight, quota limit and guarantee, preemption).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad name, a weight that is not a positive number, a malformed quota, or
    /// guarantees that do not nest (a parent's guarantee must hold the sum of its children's);
    /// [`Error::Store`] if etcd cannot be read or cannot record it.
    pub async fn set_role(&self, role: Role) -> Result<(), Error> {
        check_role(&role)?;
        // Only a role with a guarantee can break the nesting (dropping one never does).
        if !role.quota_guarantee.is_empty() {
            let mut others = self.roles().await?;
            others.retain(|r| r.name != role.name);
            others.push(role.clone());
            check_guarantees_nest(&others)?;
        }
        self.store
            .put(&self.store.key(Kind::Roles, &role.name), &role, None)
            .await?;
        tracing::info!(role = %role.name, weight = role.weight, "role set");
        Ok(())
    }

    /// Every role etcd records.
    ///
    /// # Errors
    /// [`Error::Store`] if etcd cannot be read.
    pub async fn roles(&self) -> Result<Vec<Role>, Error> {
        let (roles, _) = self
            .store
            .list::<Role>(&self.store.prefix(Kind::Roles))
            .await?;
        Ok(roles.into_iter().map(|(_, r)| r).collect())
    }
}

/// Checks a role before it is stored.
///
/// # Errors
/// [`Error::Invalid`] naming what is wrong.
fn check_role(role: &Role) -> Result<(), Error> {
    allot_common::check_role(&role.name).map_err(Error::Invalid)?;
    if !(role.weight.is_finite() && role.weight > 0.0) {
        return Err(Error::Invalid(format!(
            "role weight must be a positive number, got {}",
            role.weight
        )));
    }
    let limit = limits_from_proto(&role.quota_limit)
        .map_err(|e| Error::Invalid(format!("quota_limit: {e}")))?;
    if role
        .quota_guarantee
        .iter()
        .any(|r| !r.role.is_empty() || !r.ranges.is_empty())
    {
        return Err(Error::Invalid(
            "quota_guarantee: scalars only, without a role tag".into(),
        ));
    }
    let guarantee = resources_from_proto(&role.quota_guarantee)
        .map_err(|e| Error::Invalid(format!("quota_guarantee: {e}")))?;
    // A guarantee above the limit could never be met (Mesos refuses it too).
    let scale = allot_resources::SCALE as f64;
    for (kind, amount) in guarantee.scalars() {
        if let Some(cap) = limit.get_milli(kind).filter(|cap| amount > *cap) {
            return Err(Error::Invalid(format!(
                "quota_guarantee: {kind} {} is above the limit {}",
                amount as f64 / scale,
                cap as f64 / scale
            )));
        }
    }
    Ok(())
}

/// Checks that the quota guarantees of a role tree nest, as Mesos' quota tree does: a role's guarantee holds
/// the sum of its children's (a guarantee is for the whole subtree, so children cannot be promised more than
/// their parent). Roles without a guarantee constrain nothing.
///
/// # Errors
/// [`Error::Invalid`] naming the parent whose guarantee is short.
fn check_guarantees_nest(roles: &[Role]) -> Result<(), Error> {
    let guarantee = |r: &Role| resources_from_proto(&r.quota_guarantee).unwrap_or_default();
    for parent in roles.iter().filter(|r| !r.quota_guarantee.is_empty()) {
        let mut children = allot_resources::Resources::new();
        for child in roles {
            if child
                .name
                .rsplit_once('/')
                .is_some_and(|(p, _)| p == parent.name)
            {
                children.add(&guarantee(child));
            }
        }
        let own = guarantee(parent);
        if !own.contains(&children) {
            return Err(Error::Invalid(format!(
                "quota_guarantee: role {}'s guarantee ({own}) does not hold the sum of its children's ({children})",
                parent.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_checked_before_they_are_stored() {
        let role = |name: &str, weight: f64| Role {
            name: name.into(),
            weight,
            ..Default::default()
        };
        assert!(check_role(&role("analytics", 2.0)).is_ok());
        for (bad, what) in [
            (role("", 1.0), "name"),
            (role("a//b", 1.0), "name"),
            (role("r", 0.0), "weight"),
            (role("r", f64::NAN), "weight"),
        ] {
            let e = check_role(&bad).unwrap_err();
            assert!(matches!(&e, Error::Invalid(m) if m.contains(what)), "{e}");
        }
        // A guarantee at most the limit is fine; above it, or with ranges, it is refused.
        let quota = |limit: &str, guarantee: &str| Role {
            quota_limit: allot_common::convert::limits_to_proto(&limit.parse().unwrap()),
            quota_guarantee: allot_common::convert::resources_to_proto(&guarantee.parse().unwrap()),
            ..role("prod", 1.0)
        };
        assert!(check_role(&quota("cpus:8", "cpus:8;mem:512")).is_ok());
        // Guarantees nest: eng's holds the sum of eng/web's and eng/batch's.
        let named = |name: &str, guarantee: &str| Role {
            name: name.into(),
            ..quota("", guarantee)
        };
        let tree = [
            named("eng", "cpus:4"),
            named("eng/web", "cpus:2"),
            named("eng/batch", "cpus:2"),
        ];
        assert!(check_guarantees_nest(&tree).is_ok());
        let e = check_guarantees_nest(&[named("eng", "cpus:3"), tree[1].clone(), tree[2].clone()])
            .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("role eng's guarantee")),
            "{e}"
        );
        for bad in [quota("cpus:4", "cpus:8"), quota("", "ports:[1-2]")] {
            let e = check_role(&bad).unwrap_err();
            assert!(
                matches!(&e, Error::Invalid(m) if m.contains("quota_guarantee")),
                "{e}"
            );
        }
    }
}
