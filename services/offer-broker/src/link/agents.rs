//! The broker's link to agents: launches, kills, reconciliation and acknowledgements, each to an agent's (or
//! a simulator's) address, over one cached channel per address; acknowledgements go down an agent's own
//! status update stream (`StatusUpdates.Stream`, [`AckStreams`]) while it has one open.

use crate::error::Error;
use crate::metrics::M;
use allot_common::grpc::Channel;
use allot_proto::agent::{
    AcknowledgeStatusUpdatesRequest, FrameworkToExecutorRequest, KillTaskRequest,
    LaunchTasksRequest, ReconcileTasksRequest, ReconcileTasksResponse, ShutdownExecutorRequest,
    StatusUpdateAcknowledgement, StatusUpdateAcknowledgements, agent_client::AgentClient,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How long the broker waits for an agent to answer a launch (`Agent.LaunchTasks`); an agent that has not
/// answered by then is treated like one that could not be reached: the tasks become TASK_LOST.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a failed call's `status` says the agent may not have been reached or did not answer: the call
/// may be made again (a launch the agent already took is not started twice).
fn unreachable(status: &tonic::Status) -> bool {
    // FAILED_PRECONDITION: the agent refused a launch for a registration it no longer has, or while the
    // registry has not confirmed it lately (allot_agent::fence): sent again once the broker sees its liveness
    // change.
    allot_common::grpc::transient(status.code()) || status.code() == tonic::Code::FailedPrecondition
}

/// The error of a call to `agent` that failed with `status`.
fn failed(agent: &str, status: &tonic::Status) -> Error {
    let (agent, message) = (agent.to_string(), status.message().to_string());
    if unreachable(status) {
        Error::AgentUnreachable { agent, message }
    } else {
        Error::Agent { agent, message }
    }
}

/// How a KILL ended at the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Killed {
    /// The agent is killing the task (its updates follow).
    Killing,
    /// The agent does not know the task (its message says why): the broker reports it TASK_LOST.
    Unknown(String),
}

/// How many messages an agent's stream holds unsent before acknowledgements for it go by call instead.
pub const STREAM_BUFFER: usize = 256;

/// What goes down an agent's status update stream.
pub type StreamItem = Result<StatusUpdateAcknowledgements, tonic::Status>;

/// The agents' open status update streams (`StatusUpdates.Stream`), by agent ID: acknowledgements for an
/// agent go down its stream as one message, without a call (issue 24). An agent has at most one stream; a
/// newer one replaces the older.
#[derive(Default)]
pub struct AckStreams {
    /// Each agent's stream: the number it was opened with and its sender.
    open: Mutex<HashMap<String, (u64, tokio::sync::mpsc::Sender<StreamItem>)>>,
    next: std::sync::atomic::AtomicU64,
    /// Cancelled when the broker stops: every stream ends (see [`AckStreams::close_all`]).
    pub stopping: tokio_util::sync::CancellationToken,
}

impl AckStreams {
    /// Ends every stream and refuses new ones, for a graceful shutdown (the server waits for open streams, up
    /// to its drain timeout; their agents re-send what is unacknowledged to the next leader).
    pub fn close_all(&self) {
        self.stopping.cancel();
        self.streams().clear();
        M.agent_streams.set(0.0);
    }

    /// Registers a stream for `agent_id` (replacing any older one): its number, for [`AckStreams::close`],
    /// and the receiver of what goes down it.
    pub fn open(&self, agent_id: &str) -> (u64, tokio::sync::mpsc::Receiver<StreamItem>) {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let mut open = self.streams();
        open.insert(agent_id.to_string(), (n, tx));
        M.agent_streams.set(open.len() as f64);
        (n, rx)
    }

    /// Forgets stream `n` of `agent_id`, unless a newer one has replaced it.
    pub fn close(&self, agent_id: &str, n: u64) {
        let mut open = self.streams();
        if open.get(agent_id).is_some_and(|(m, _)| *m == n) {
            open.remove(agent_id);
        }
        M.agent_streams.set(open.len() as f64);
    }

    /// The sender of `agent_id`'s stream, if open.
    pub fn sender(&self, agent_id: &str) -> Option<tokio::sync::mpsc::Sender<StreamItem>> {
        self.streams().get(agent_id).map(|(_, tx)| tx.clone())
    }

    /// Sends each of `acks` down its agent's stream, one message per agent; returns those whose agent has
    /// no open stream, or one too full or closed to take them, for the caller to pass on by call.
    pub fn send(&self, acks: Vec<StatusUpdateAcknowledgement>) -> Vec<StatusUpdateAcknowledgement> {
        let mut by_agent: HashMap<String, Vec<StatusUpdateAcknowledgement>> = HashMap::new();
        for a in acks {
            by_agent.entry(a.agent_id.clone()).or_default().push(a);
        }
        let mut rest = Vec::new();
        let mut open = self.streams();
        for (agent, acknowledgements) in by_agent {
            let Some((_, tx)) = open.get(&agent) else {
                rest.extend(acknowledgements);
                continue;
            };
            use tokio::sync::mpsc::error::TrySendError;
            match tx.try_send(Ok(StatusUpdateAcknowledgements { acknowledgements })) {
                Ok(()) => {}
                Err(TrySendError::Full(Ok(m))) => rest.extend(m.acknowledgements),
                Err(TrySendError::Closed(Ok(m))) => {
                    open.remove(&agent);
                    M.agent_streams.set(open.len() as f64);
                    rest.extend(m.acknowledgements);
                }
                Err(_) => {}
            }
        }
        rest
    }

    fn streams(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, tokio::sync::mpsc::Sender<StreamItem>)>>
    {
        self.open.lock().expect("ack streams poisoned")
    }
}

/// Clients of the agents, one per address, made on first use, and the agents' open status update streams.
#[derive(Default)]
pub struct AgentLink {
    clients: Mutex<HashMap<String, AgentClient<Channel>>>,
    /// How channels are made: mutual TLS with the broker's certificate, or plaintext (`--insecure`).
    dialer: allot_common::grpc::Dialer,
    /// The agents' status update streams, down which their acknowledgements go.
    pub streams: AckStreams,
}

impl AgentLink {
    /// A link whose channels `dialer` makes.
    pub fn new(dialer: allot_common::grpc::Dialer) -> Self {
        Self {
            clients: Mutex::default(),
            dialer,
            streams: AckStreams::default(),
        }
    }

    /// A client for the agent (or simulator) at `addr`, made once and cached; `None` for an address that
    /// is not a valid URI.
    pub fn client(&self, addr: &str) -> Option<AgentClient<Channel>> {
        let mut clients = self.clients.lock().expect("agent clients poisoned");
        if let Some(c) = clients.get(addr) {
            return Some(c.clone());
        }
        let c = AgentClient::new(self.dialer.channel(addr).ok()?)
            .max_decoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES);
        clients.insert(addr.to_string(), c.clone());
        Some(c)
    }

    /// Launches `req` on agent `agent_id` at `addr`, waiting at most [`LAUNCH_TIMEOUT`] for its answer.
    ///
    /// # Errors
    /// [`Error::UnknownAgent`] without an address; [`Error::AgentUnreachable`] if the agent cannot be reached
    /// or does not answer in time (the launch may be sent again); [`Error::Agent`] if it refuses.
    pub async fn launch(
        &self,
        agent_id: &str,
        addr: Option<&str>,
        req: LaunchTasksRequest,
    ) -> Result<(), Error> {
        let mut c = addr
            .and_then(|a| self.client(a))
            .ok_or_else(|| Error::UnknownAgent(agent_id.to_string()))?;
        match tokio::time::timeout(LAUNCH_TIMEOUT, c.launch_tasks(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(failed(agent_id, &s)),
            Err(_) => Err(Error::AgentUnreachable {
                agent: agent_id.to_string(),
                message: "the agent did not answer".into(),
            }),
        }
    }

    /// Asks agent `agent_id` at `addr` to kill task `task` of `fw`; `(reason, message)` go into its final
    /// status (empty: `REASON_TASK_KILLED`).
    ///
    /// # Errors
    /// [`Error::UnknownAgent`] without an address; [`Error::AgentUnreachable`] if the agent cannot be reached;
    /// [`Error::Agent`] if it fails.
    pub async fn kill(
        &self,
        agent_id: &str,
        addr: Option<&str>,
        (fw, task): (&str, &str),
        (reason, message): (&str, &str),
    ) -> Result<Killed, Error> {
        let mut c = addr
            .and_then(|a| self.client(a))
            .ok_or_else(|| Error::UnknownAgent(agent_id.to_string()))?;
        let req = KillTaskRequest {
            framework_id: fw.to_string(),
            task_id: task.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
        };
        match c.kill_task(req).await {
            Ok(_) => Ok(Killed::Killing),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(Killed::Unknown(e.message().into())),
            Err(e) => Err(failed(agent_id, &e)),
        }
    }

    /// Passes a framework's message to its executor on agent `agent_id` at `addr`.
    ///
    /// # Errors
    /// [`Error::UnknownAgent`] without an address; [`Error::UnknownExecutor`] when the agent does not run that
    /// executor; [`Error::AgentUnreachable`] or [`Error::Agent`] when the call fails.
    pub async fn framework_to_executor(
        &self,
        agent_id: &str,
        addr: Option<&str>,
        req: FrameworkToExecutorRequest,
    ) -> Result<(), Error> {
        let mut c = addr
            .and_then(|a| self.client(a))
            .ok_or_else(|| Error::UnknownAgent(agent_id.to_string()))?;
        let executor = req.executor_id.clone();
        match c.framework_to_executor(req).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => Err(Error::UnknownExecutor {
                executor,
                agent: agent_id.to_string(),
            }),
            Err(e) => Err(failed(agent_id, &e)),
        }
    }

    /// Shuts down `req`'s executor (or every executor of its framework) on the agent at `addr`.
    ///
    /// # Errors
    /// [`Error::UnknownAgent`] without an address; [`Error::UnknownExecutor`] when the agent does not run that
    /// executor; [`Error::AgentUnreachable`] or [`Error::Agent`] when the call fails.
    pub async fn shutdown_executor(
        &self,
        agent_id: &str,
        addr: Option<&str>,
        req: ShutdownExecutorRequest,
    ) -> Result<(), Error> {
        let mut c = addr
            .and_then(|a| self.client(a))
            .ok_or_else(|| Error::UnknownAgent(agent_id.to_string()))?;
        let executor = req.executor_id.clone();
        match c.shutdown_executor(req).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::NotFound => Err(Error::UnknownExecutor {
                executor,
                agent: agent_id.to_string(),
            }),
            Err(e) => Err(failed(agent_id, &e)),
        }
    }

    /// Asks the agent (or simulator) at `addr` what it knows of the tasks of `req`, trying up to six times
    /// with backoff; `None` if it never answered.
    pub async fn reconcile(
        &self,
        addr: &str,
        req: ReconcileTasksRequest,
    ) -> Option<ReconcileTasksResponse> {
        let client = self.client(addr)?;
        let mut delays = allot_common::retry_delays(Duration::from_millis(200));
        for _ in 0..6 {
            match client.clone().reconcile_tasks(req.clone()).await {
                Ok(r) => return Some(r.into_inner()),
                Err(e) => {
                    tracing::debug!(agent = %addr, error = %e.message(), "reconciliation failed; retrying");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
                }
            }
        }
        None
    }

    /// Passes `acknowledgements` on to the agent (or simulator) at `addr`, without waiting. A call that fails
    /// is not retried: the agent re-sends the update and hears the acknowledgement again.
    pub fn acknowledge(&self, addr: &str, acknowledgements: Vec<StatusUpdateAcknowledgement>) {
        let Some(mut client) = self.client(addr) else {
            return;
        };
        let addr = addr.to_string();
        tokio::spawn(async move {
            let n = acknowledgements.len();
            if let Err(e) = client
                .acknowledge_status_updates(AcknowledgeStatusUpdatesRequest { acknowledgements })
                .await
            {
                tracing::debug!(agent = %addr, acknowledgements = n, error = %e.message(), "cannot pass acknowledgements on; the agent will re-send");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(agent: &str, task: &str) -> StatusUpdateAcknowledgement {
        StatusUpdateAcknowledgement {
            agent_id: agent.into(),
            framework_id: "fw".into(),
            task_id: task.into(),
            uuid: vec![1],
        }
    }

    #[tokio::test]
    async fn acknowledgements_go_down_their_agents_stream_and_the_rest_come_back() {
        let streams = AckStreams::default();
        let (n1, mut rx1) = streams.open("a1");
        let rest = streams.send(vec![ack("a1", "t1"), ack("a2", "t2"), ack("a1", "t3")]);
        // a2 has no stream: its acknowledgement goes by call.
        assert_eq!(rest, vec![ack("a2", "t2")]);
        let m = rx1.recv().await.unwrap().unwrap();
        assert_eq!(m.acknowledgements, vec![ack("a1", "t1"), ack("a1", "t3")]);
        // A newer stream replaces the older; closing the older leaves the newer.
        let (n2, mut rx2) = streams.open("a1");
        streams.close("a1", n1);
        assert!(streams.send(vec![ack("a1", "t4")]).is_empty());
        assert_eq!(rx2.recv().await.unwrap().unwrap().acknowledgements.len(), 1);
        // A stream whose receiver went (the agent's connection ended) gives its acknowledgements back.
        drop(rx2);
        assert_eq!(streams.send(vec![ack("a1", "t5")]), vec![ack("a1", "t5")]);
        assert!(streams.sender("a1").is_none());
        streams.close("a1", n2);
        // A full stream gives them back too (the agent is not reading).
        let (_, _rx3) = streams.open("a3");
        for i in 0..STREAM_BUFFER {
            assert!(streams.send(vec![ack("a3", &i.to_string())]).is_empty());
        }
        assert_eq!(streams.send(vec![ack("a3", "x")]), vec![ack("a3", "x")]);
    }
}
