//! Frameworks' own executors, the broker's part (issue 26): framework messages both ways, SHUTDOWN, and an
//! executor's exit. Everything here is best effort, as in Mesos: a message to an executor that is not
//! running is refused (NOT_FOUND), one lost later (an agent restart, a dropped stream) is not reported, and
//! an executor's exit reaches the framework only while it is connected; the tasks' final states never depend
//! on it (the agent sends them as reliable status updates).

use crate::broker::Broker;
use crate::error::Error;
use allot_proto::agent::{
    ExecutorToFrameworkRequest, ExitedExecutorRequest, FrameworkToExecutorRequest,
    ShutdownExecutorRequest,
};
use allot_proto::scheduler::{self as pb, event};

impl Broker {
    /// MESSAGE: passes `data` from framework `fw` to its executor `executor_id` on `agent_id`.
    ///
    /// # Errors
    /// [`Error::NotSubscribed`] or [`Error::TornDown`]; [`Error::Invalid`] without an executor or agent ID;
    /// [`Error::UnknownAgent`]; [`Error::UnknownExecutor`] when the agent does not run it;
    /// [`Error::AgentUnreachable`] or [`Error::Agent`] when the agent cannot be reached.
    pub async fn message(
        &self,
        fw: &str,
        agent_id: &str,
        executor_id: &str,
        data: Vec<u8>,
    ) -> Result<(), Error> {
        self.lock().check_subscribed(fw)?;
        if agent_id.is_empty() || executor_id.is_empty() {
            return Err(Error::Invalid(
                "MESSAGE needs an agent_id and an executor_id".into(),
            ));
        }
        let addr = self.agent_address(agent_id).await;
        let req = FrameworkToExecutorRequest {
            framework_id: fw.to_string(),
            executor_id: executor_id.to_string(),
            data,
        };
        self.agents
            .framework_to_executor(agent_id, addr.as_deref(), req)
            .await
    }

    /// SHUTDOWN: executor `executor_id` of framework `fw` on `agent_id` gets its SHUTDOWN event; the agent
    /// kills it after its grace period and ends its live tasks.
    ///
    /// # Errors
    /// As [`Broker::message`].
    pub async fn shutdown_executor(
        &self,
        fw: &str,
        agent_id: &str,
        executor_id: &str,
    ) -> Result<(), Error> {
        self.lock().check_subscribed(fw)?;
        if agent_id.is_empty() || executor_id.is_empty() {
            return Err(Error::Invalid(
                "SHUTDOWN needs an agent_id and an executor_id".into(),
            ));
        }
        let addr = self.agent_address(agent_id).await;
        let req = ShutdownExecutorRequest {
            framework_id: fw.to_string(),
            executor_id: executor_id.to_string(),
        };
        self.agents
            .shutdown_executor(agent_id, addr.as_deref(), req)
            .await
    }

    /// Shuts down every executor of framework `fw` (torn down) on every agent the broker knows, in the
    /// background: agents that do not answer keep them until the framework's tasks there are gone and the
    /// executor exits, or until the agent is drained.
    pub(crate) fn shutdown_executors_of(&self, fw: &str) {
        let addresses: std::collections::BTreeSet<String> = self
            .lock()
            .agents
            .values()
            .filter_map(|a| a.info.as_ref().map(|i| i.address.clone()))
            .collect();
        for addr in addresses {
            let Some(mut client) = self.agents.client(&addr) else {
                continue;
            };
            let req = ShutdownExecutorRequest {
                framework_id: fw.to_string(),
                executor_id: String::new(),
            };
            tokio::spawn(async move {
                if let Err(e) = client.shutdown_executor(req).await
                    && e.code() != tonic::Code::NotFound
                {
                    tracing::debug!(agent = %addr, error = %e.message(), "cannot shut a torn-down framework's executors down");
                }
            });
        }
    }

    /// An executor's message for its framework: a MESSAGE event, if the framework is connected.
    pub(crate) fn executor_message(&self, r: ExecutorToFrameworkRequest) {
        let ev = event::Event::Message(pb::Message {
            agent_id: r.agent_id,
            executor_id: r.executor_id,
            data: r.data,
        });
        if !self.send(&r.framework_id, ev) {
            tracing::debug!(framework = %r.framework_id, "an executor's message for a framework that is not connected was dropped");
        }
    }

    /// An executor exited: a FAILURE event with its ID and wait status, if the framework is connected.
    pub(crate) fn executor_exited(&self, r: ExitedExecutorRequest) {
        tracing::info!(framework = %r.framework_id, executor = %r.executor_id, agent = %r.agent_id, status = ?r.status, "executor exited");
        let ev = event::Event::Failure(pb::Failure {
            agent_id: r.agent_id,
            executor_id: r.executor_id,
            status: r.status,
        });
        self.send(&r.framework_id, ev);
    }
}
