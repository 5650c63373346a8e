//! The operator's read-only views (`allot frameworks`, `allot tasks`, `allot offers`), read under the lock
//! from the broker's state.

use crate::broker::Broker;
use allot_common::convert::{resources_from_proto, resources_to_proto};
use allot_proto::common::TaskRecord;
use allot_proto::operator::FrameworkState;
use allot_proto::scheduler as pb;
use allot_resources::Resources;
use std::collections::HashMap;

impl Broker {
    /// The principal framework `fw` subscribed as (`FrameworkInfo.principal` as recorded: the name of its
    /// certificate, or what an insecure broker was told); `None` for an unknown framework.
    pub fn framework_principal(&self, fw: &str) -> Option<String> {
        self.recorded_info(fw, |i| i.principal.clone())
    }

    /// The Unix user framework `fw` subscribed with (`FrameworkInfo.user` as recorded); `None` for an unknown
    /// framework.
    pub fn framework_user(&self, fw: &str) -> Option<String> {
        self.recorded_info(fw, |i| i.user.clone())
    }

    /// `read` of framework `fw`'s recorded `FrameworkInfo` (an empty one if the record has none), under the
    /// lock; `None` for an unknown framework.
    fn recorded_info<T>(
        &self,
        fw: &str,
        read: impl FnOnce(&allot_proto::common::FrameworkInfo) -> T,
    ) -> Option<T> {
        let state = self.lock();
        let f = state.frameworks.get(fw)?;
        Some(read(f.record.info.as_ref().unwrap_or(&Default::default())))
    }

    /// For each of `agent_ids`, the principal that registered it (`AgentRecord.principal`; empty when
    /// registered on an insecure registry), `None` for an agent the broker has not seen; under one lock.
    pub fn agent_principals<'a>(&self, agent_ids: &[&'a str]) -> Vec<(&'a str, Option<String>)> {
        let state = self.lock();
        agent_ids
            .iter()
            .map(|id| (*id, state.agents.get(*id).map(|a| a.principal.clone())))
            .collect()
    }

    /// Every framework with its connection state and resources (used by its live tasks, offered), oldest
    /// registration first.
    pub fn frameworks(&self) -> Vec<FrameworkState> {
        let state = self.lock();
        let mut used: HashMap<&str, Resources> = HashMap::new();
        for t in state.tasks.values() {
            if t.status.as_ref().is_some_and(|s| !s.state().is_terminal()) {
                let r = t
                    .task
                    .as_ref()
                    .map(|i| resources_from_proto(&i.resources).unwrap_or_default());
                used.entry(&t.framework_id)
                    .or_default()
                    .add(&r.unwrap_or_default());
            }
        }
        let mut offered: HashMap<&str, Resources> = HashMap::new();
        for o in state.offers.values() {
            offered
                .entry(&o.offer.framework_id)
                .or_default()
                .add(&o.resources);
        }
        let mut out: Vec<_> = state
            .frameworks
            .iter()
            .map(|(id, f)| FrameworkState {
                record: Some(f.record.clone()),
                connected: f.sender.is_some(),
                suppressed: f.suppressed,
                used: resources_to_proto(&used.get(id.as_str()).cloned().unwrap_or_default()),
                offered: resources_to_proto(&offered.get(id.as_str()).cloned().unwrap_or_default()),
            })
            .collect();
        out.sort_by_key(|f| f.record.as_ref().map(|r| r.registered_at_ms).unwrap_or(0));
        out
    }

    /// Every task, or those of `fw` when it is not empty, sorted by framework and task ID.
    pub fn tasks(&self, fw: &str) -> Vec<TaskRecord> {
        let state = self.lock();
        let mut out: Vec<TaskRecord> = state
            .tasks
            .values()
            .filter(|t| fw.is_empty() || t.framework_id == fw)
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            (&a.framework_id, a.task.as_ref().map(|t| &t.task_id))
                .cmp(&(&b.framework_id, b.task.as_ref().map(|t| &t.task_id)))
        });
        out
    }

    /// Every agent the broker knows, with whether it is alive (its `alive` key present), by agent ID.
    pub fn agents(&self) -> Vec<(allot_proto::common::AgentRecord, bool)> {
        let state = self.lock();
        let mut out: Vec<_> = state
            .agents
            .values()
            .map(|a| (a.clone(), state.alive.contains_key(&a.agent_id)))
            .collect();
        out.sort_by(|a, b| a.0.agent_id.cmp(&b.0.agent_id));
        out
    }

    /// Every outstanding offer.
    pub fn offers(&self) -> Vec<pb::Offer> {
        self.lock()
            .offers
            .values()
            .map(|o| o.offer.clone())
            .collect()
    }
}
