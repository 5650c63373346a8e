//! The operator's dynamic reservations (`allot reserve`, `allot unreserve`, `allot reservations`; Mesos'
//! `RESERVE_RESOURCES` and `UNRESERVE_RESOURCES` operator calls, `docs/reservation.md` there).
//!
//! A change is checked by the engine against its books first (`Books::set_dynamic_reservations`: the
//! resources must be unreserved and not used by a running task; outstanding offers on them are rescinded) and
//! applied there, then written to etcd (`reservations/<agent_id>`), which every allocator replica follows; if
//! the write fails, the books go back to what they were. One change at a time per leader, so that the records
//! are written in the order the books took them.

use crate::books::change_reservation;
use crate::engine::{Command, Engine};
use crate::error::Error;
use allot_common::convert::{piece_to_proto, pieces_from_proto};
use allot_policy::Resources;
use allot_proto::allocator::AgentReservations;
use allot_server::Store;
use allot_server::store::Kind;
use std::collections::BTreeMap;

/// The dynamic reservations of one allocator: its store and engine.
#[derive(Debug, Clone)]
pub struct ReservationAdmin {
    store: Store,
    engine: Engine,
    one_at_a_time: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// Agent `agent`'s dynamic reservations in protocol form, each resource tagged with its role.
fn to_proto(agent: &str, reserved: &BTreeMap<String, Resources>) -> AgentReservations {
    AgentReservations {
        agent_id: agent.to_string(),
        resources: reserved
            .iter()
            .flat_map(|(role, r)| piece_to_proto(&Resources::new(), r, role))
            .collect(),
    }
}

impl ReservationAdmin {
    /// Reservations over `store` and `engine`.
    pub fn new(store: Store, engine: Engine) -> Self {
        Self {
            store,
            engine,
            one_at_a_time: Default::default(),
        }
    }

    /// Adds `resources` to (`reserve`) or takes them from (`!reserve`; all of the role's when empty) `role`'s
    /// dynamic reservation on `agent`, and answers the agent's dynamic reservations after the change.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad role (`*`, or not a role name), resources that are not positive scalars
    /// without role tags, or unreserving more than is reserved; [`Error::Conflict`] when the agent's
    /// resources or its running tasks do not allow the change; [`Error::Store`] when etcd refuses the record
    /// (the change is then undone); [`Error::EngineStopped`].
    pub async fn change(
        &self,
        agent: &str,
        role: &str,
        resources: &[allot_proto::common::Resource],
        reserve: bool,
    ) -> Result<AgentReservations, Error> {
        allot_common::check_role(role).map_err(Error::Invalid)?;
        if role == "*" {
            return Err(Error::Invalid(
                "resources cannot be reserved for the default role '*'".into(),
            ));
        }
        let (amount, tagged) =
            pieces_from_proto(resources).map_err(|e| Error::Invalid(format!("resources: {e}")))?;
        if !tagged.is_empty() || amount.ranges().next().is_some() {
            return Err(Error::Invalid(
                "give scalar resources without a role tag (e.g. cpus:2;mem:1024): the role is --role".into(),
            ));
        }
        if reserve && amount.is_empty() {
            return Err(Error::Invalid("nothing to reserve".into()));
        }
        let _one = self.one_at_a_time.lock().await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine
            .send(Command::DynamicReservations(agent.to_string(), tx));
        let mut reserved = rx.await.map_err(|_| Error::EngineStopped)?;
        change_reservation(&mut reserved, agent, role, &amount, reserve).map_err(Error::Invalid)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.send(Command::Reserve {
            agent: agent.to_string(),
            reserved: reserved.clone(),
            reply: tx,
        });
        let before = rx
            .await
            .map_err(|_| Error::EngineStopped)?
            .map_err(Error::Conflict)?;
        let record = to_proto(agent, &reserved);
        let key = self.store.key(Kind::Reservations, agent);
        let written = if reserved.is_empty() {
            self.store.delete(&key).await
        } else {
            self.store.put(&key, &record, None).await.map(|_| ())
        };
        if let Err(e) = written {
            self.engine
                .send(Command::Reservations(agent.to_string(), Some(before)));
            return Err(e.into());
        }
        Ok(record)
    }

    /// Every agent's dynamic reservations, as recorded in etcd.
    ///
    /// # Errors
    /// [`Error::Store`] if etcd cannot be read.
    pub async fn list(&self) -> Result<Vec<AgentReservations>, Error> {
        let (records, _) = self
            .store
            .list::<AgentReservations>(&self.store.prefix(Kind::Reservations))
            .await?;
        Ok(records.into_iter().map(|(_, r)| r).collect())
    }
}
