//! The framework's side of the scheduler API, but offers and updates: SUBSCRIBE (and the failover timeout of
//! a framework that goes away), SUPPRESS and REVIVE, KILL, RECONCILE, TEARDOWN, and the heartbeats on every
//! event stream.
//!
//! A framework is connected while its event stream is open. SUBSCRIBE with no framework ID registers a new
//! framework; with one, the framework re-subscribes (fails over): the new stream replaces the old, which is
//! told so, and every update the framework has not acknowledged is sent again. When the stream closes, the
//! framework's offers go back and it is torn down unless it re-subscribes within its `failover_timeout`, as the
//! Mesos master does. TEARDOWN kills its live tasks and marks it removed; it cannot come back.

use crate::broker::Broker;
use crate::error::Error;
use crate::link::agents::Killed;
use crate::state::plain;
use allot_proto::common::{FrameworkInfo, FrameworkRecord, TaskState};
use allot_proto::scheduler::{self as pb, Event, event};
use allot_server::store::Kind;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

impl Broker {
    /// SUBSCRIBE: registers (or re-registers) a framework; returns its ID, the connection's epoch and the
    /// receiver of its event stream (SUBSCRIBED first).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad `FrameworkInfo`; [`Error::Removed`] or [`Error::UnknownFramework`] for a
    /// re-subscription with a torn-down or unknown framework ID; [`Error::Store`] if etcd cannot record it.
    pub async fn subscribe(
        self: &Arc<Self>,
        mut info: FrameworkInfo,
    ) -> Result<(String, u64, mpsc::UnboundedReceiver<Event>), Error> {
        if info.name.trim().is_empty() {
            return Err(Error::Invalid("FrameworkInfo.name is empty".into()));
        }
        if !(info.failover_timeout.is_finite() && info.failover_timeout >= 0.0) {
            return Err(Error::Invalid(
                "FrameworkInfo.failover_timeout must be a finite number of seconds >= 0".into(),
            ));
        }
        if info.roles.is_empty() {
            info.roles.push("*".to_string());
        }
        for r in &info.roles {
            allot_common::check_role(r).map_err(Error::Invalid)?;
        }
        if info.user.is_empty() {
            info.user = "nobody".to_string();
        }
        let resubscribe = !info.framework_id.is_empty();
        let id = if resubscribe {
            self.lock().check_resubscribe(&info.framework_id)?;
            info.framework_id.clone()
        } else {
            allot_common::new_id("fw")
        };
        info.framework_id = id.clone();
        let record = FrameworkRecord {
            framework_id: id.clone(),
            info: Some(info.clone()),
            registered_at_ms: allot_common::now_ms(),
            active: true,
        };
        self.store
            .put(&self.store.key(Kind::Frameworks, &id), &record, None)
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(plain(event::Event::Subscribed(pb::Subscribed {
            framework_id: id.clone(),
            heartbeat_interval_seconds: self.heartbeat_interval.as_secs_f64(),
        })));
        let (epoch, old, pending) = self.lock().subscribe(record, tx.clone());
        if let Some(old) = old {
            let _ = old.send(plain(event::Event::Error(pb::Error {
                message: "framework failed over: a newer subscription replaced this one".into(),
            })));
        }
        for status in pending {
            let _ = tx.send(crate::state::update_event(status, Default::default()));
        }
        if let Err(e) = self.allocator.activate(id.clone(), false).await {
            // The next allocator session activates every connected framework.
            tracing::warn!(framework = %id, error = %e, "cannot activate the framework at the allocator");
        }
        tracing::info!(framework = %id, name = %info.name, roles = ?info.roles, resubscribe, "framework subscribed");
        Ok((id, epoch, rx))
    }

    /// The event stream of connection `epoch` of framework `fw` closed: unless a newer connection exists, its
    /// offers go back and its failover timeout starts.
    pub async fn disconnected(self: Arc<Self>, fw: String, epoch: u64) {
        let Some((offers, timeout)) = self.lock().disconnect(&fw, epoch) else {
            return;
        };
        tracing::info!(framework = %fw, failover_timeout = timeout, "framework disconnected");
        self.allocator.deactivate(&fw).await;
        self.allocator.recover(offers, 0.0, Vec::new()).await;
        self.tear_down_after(fw, epoch, timeout);
    }

    /// Tears framework `fw` down unless it re-subscribes (its connection epoch moves past `epoch`) within
    /// `failover_timeout` seconds, as the Mesos master does with a disconnected framework.
    pub(crate) fn tear_down_after(self: &Arc<Self>, fw: String, epoch: u64, failover_timeout: f64) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(failover_timeout)).await;
            if me.lock().still_gone(&fw, epoch) {
                tracing::info!(framework = %fw, "failover timeout passed; tearing the framework down");
                let _ = me.teardown(&fw).await;
            }
        });
    }

    /// REVIVE (`suppressed` false) or SUPPRESS.
    ///
    /// # Errors
    /// [`Error::NotSubscribed`] or [`Error::TornDown`]; [`Error::Allocator`] if the allocator cannot be told.
    pub async fn set_suppressed(&self, fw: &str, suppressed: bool) -> Result<(), Error> {
        {
            let mut state = self.lock();
            state.check_subscribed(fw)?;
            if let Some(f) = state.frameworks.get_mut(fw) {
                f.suppressed = suppressed;
            }
        }
        self.allocator.set_suppressed(fw, suppressed).await
    }

    /// KILL of task `task` of `fw`. A task that ended already gets its terminal update again; a task its agent
    /// does not know becomes TASK_LOST.
    ///
    /// # Errors
    /// [`Error::NotSubscribed`] or [`Error::TornDown`]; [`Error::UnknownTask`]; [`Error::UnknownAgent`] or
    /// [`Error::Agent`] if its agent cannot be reached; [`Error::Store`] if a TASK_LOST cannot be recorded.
    pub async fn kill(&self, fw: &str, task: &str) -> Result<(), Error> {
        let rec = {
            let state = self.lock();
            state.check_subscribed(fw)?;
            state
                .tasks
                .get(&(fw.to_string(), task.to_string()))
                .cloned()
                .ok_or_else(|| Error::UnknownTask(task.to_string()))?
        };
        let status = rec.status.clone().unwrap_or_default();
        if status.state().is_terminal() {
            self.send_updates([status]);
            return Ok(());
        }
        let agent_id = rec.task.as_ref().map_or("", |t| t.agent_id.as_str());
        match self.kill_on_agent(agent_id, (fw, task), ("", "")).await? {
            Killed::Killing => Ok(()),
            Killed::Unknown(why) => {
                let lost = self.master_statuses(
                    &[(fw.to_string(), task.to_string())],
                    TaskState::TaskLost,
                    "REASON_TASK_UNKNOWN",
                    &why,
                );
                self.record_updates(lost).await
            }
        }
    }

    /// RECONCILE: sends the latest state of the named tasks, or of every non-terminal task when none are named,
    /// as UPDATE events with no uuid (nothing to acknowledge). Unknown tasks are reported TASK_UNKNOWN.
    ///
    /// # Errors
    /// [`Error::NotSubscribed`] or [`Error::TornDown`].
    pub fn reconcile(&self, fw: &str, tasks: Vec<pb::ReconcileTask>) -> Result<(), Error> {
        let statuses = {
            let state = self.lock();
            state.check_subscribed(fw)?;
            state.reconcile(fw, &tasks, allot_common::now_secs())
        };
        self.send_updates(statuses);
        Ok(())
    }

    /// TEARDOWN called by framework `fw` itself: as [`Broker::teardown`], for a framework that is registered
    /// and not torn down (connected or not).
    ///
    /// # Errors
    /// [`Error::NotSubscribed`] for an unknown or torn-down framework; as [`Broker::teardown`].
    pub async fn teardown_call(&self, fw: &str) -> Result<(), Error> {
        let active = self
            .lock()
            .frameworks
            .get(fw)
            .is_some_and(|f| f.record.active);
        if !active {
            return Err(Error::NotSubscribed(fw.to_string()));
        }
        self.teardown(fw).await
    }

    /// TEARDOWN: kills every live task of the framework, shuts its executors down, returns its offers and
    /// marks it removed.
    ///
    /// # Errors
    /// [`Error::UnknownFramework`]; [`Error::Store`] if etcd cannot record the removal.
    pub async fn teardown(&self, fw: &str) -> Result<(), Error> {
        let mut record = self
            .lock()
            .frameworks
            .get(fw)
            .map(|f| f.record.clone())
            .ok_or_else(|| Error::UnknownFramework(fw.to_string()))?;
        record.active = false;
        self.store
            .put(&self.store.key(Kind::Frameworks, fw), &record, None)
            .await?;
        let (offers, live) = self.lock().tear_down(fw, record);
        self.allocator.deactivate(fw).await;
        self.allocator.recover(offers, 0.0, Vec::new()).await;
        for (task, agent) in live {
            let _ = self.kill_on_agent(&agent, (fw, &task), ("", "")).await;
        }
        self.shutdown_executors_of(fw);
        tracing::info!(framework = %fw, "framework torn down");
        Ok(())
    }

    /// Every heartbeat interval until aborted: refreshes the gauges, sends HEARTBEAT on every event stream and
    /// every unacknowledged update again to its framework.
    pub(crate) async fn heartbeats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.heartbeat_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.refresh_gauges();
            self.lock().heartbeat();
        }
    }
}
