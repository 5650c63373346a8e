//! The broker's gRPC services: thin translations between protobuf calls and [`Broker`] flows, and the one
//! mapping of the broker's [`Error`] to gRPC status codes.

use crate::broker::Broker;
use crate::error::Error;
use allot_proto::agent::{
    ExecutorToFrameworkRequest, ExecutorToFrameworkResponse, ExitedExecutorRequest,
    ExitedExecutorResponse, StatusUpdateAcknowledgements, StatusUpdateBatchRequest,
    StatusUpdateRequest, StatusUpdateResponse, StatusUpdateStreamRequest,
    status_updates_server::StatusUpdates,
};
use allot_proto::operator::{self as op, operator_server::Operator};
use allot_proto::scheduler::{self as pb, operation, scheduler_server::Scheduler};
use allot_server::authz::{self, Caller};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let text = e.to_string();
        match e {
            Error::Invalid(_) => Status::invalid_argument(text),
            Error::NotSubscribed(_) | Error::TornDown(_) => Status::failed_precondition(text),
            Error::Removed(_)
            | Error::UnknownFramework(_)
            | Error::UnknownOffer(_)
            | Error::Rescinded
            | Error::UnknownTask(_)
            | Error::UnknownExecutor { .. } => Status::not_found(text),
            Error::UnknownAgent(_)
            | Error::Agent { .. }
            | Error::AgentUnreachable { .. }
            | Error::Allocator(_) => Status::unavailable(text),
            Error::Store(e) if e.is_corrupt() => Status::internal(text),
            Error::Store(_) => Status::unavailable(text),
        }
    }
}

/// A framework's event stream. When the scheduler goes away (the stream is dropped), the broker is told.
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<pb::Event>,
    broker: Arc<Broker>,
    framework: String,
    epoch: u64,
}

impl futures::Stream for EventStream {
    type Item = Result<pb::Event, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|ev| ev.map(Ok))
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let broker = self.broker.clone();
        let fw = std::mem::take(&mut self.framework);
        let epoch = self.epoch;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(broker.disconnected(fw, epoch));
        }
    }
}

/// `allot.scheduler.v1.Scheduler`: the broker, the ACL file if there is one, and the audit trail (TEARDOWN is
/// recorded there).
pub struct SchedulerService(
    pub Arc<Broker>,
    pub Option<Arc<allot_server::acl::Acls>>,
    pub allot_server::audit::Audit,
);

/// Principal kinds that may act as a framework (subscribe, and act on the frameworks they subscribed).
const FRAMEWORK_KINDS: [&str; 2] = ["framework", "service"];

impl SchedulerService {
    /// Allows `caller` to do `action` to framework `fw`: an anonymous caller (an `--insecure` broker), the
    /// principal the framework subscribed as, or (for `teardown_frameworks`) an operator. An unknown framework
    /// passes, so that the call itself answers NOT_FOUND; so does one subscribed without a principal (on an
    /// insecure broker, before identities).
    ///
    /// # Errors
    /// PERMISSION_DENIED (see `allot_server::authz::denied`).
    fn authorize(&self, caller: &Caller, fw: &str, action: &str) -> Result<(), Status> {
        let Some(p) = caller.principal() else {
            return Ok(());
        };
        let owner = self.0.framework_principal(fw);
        let object = format!("framework {fw}");
        if action == "teardown_frameworks" && p.kind == "operator" {
            let owner = owner.as_deref().unwrap_or_default();
            return authz::check_acl(self.1.as_deref(), caller, action, &[owner], &object);
        }
        caller.require_owner(owner.as_deref(), action, &object)
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = authz::caller(&request);
        let mut info = request
            .into_inner()
            .framework_info
            .ok_or_else(|| Status::invalid_argument("SUBSCRIBE needs framework_info"))?;
        let object = format!("framework '{}'", info.name);
        caller.require(&FRAMEWORK_KINDS, "register_frameworks", &object)?;
        let roles: Vec<&str> = match info.roles.is_empty() {
            true => vec!["*"],
            false => info.roles.iter().map(String::as_str).collect(),
        };
        authz::check_acl(
            self.1.as_deref(),
            &caller,
            "register_frameworks",
            &roles,
            &format!("{object} in roles {}", roles.join(", ")),
        )?;
        if let Some(p) = caller.principal() {
            // The certificate names the framework's principal (Mesos: FrameworkInfo.principal must match the
            // authenticated one); a re-subscription must come from the principal that subscribed first.
            if !info.principal.is_empty() && info.principal != p.name {
                return Err(caller.deny(
                    "register_frameworks",
                    &format!("{object} as principal '{}'", info.principal),
                ));
            }
            if !info.framework_id.is_empty() {
                self.authorize(&caller, &info.framework_id, "register_frameworks")?;
            }
            info.principal = p.name.clone();
        }
        let (framework, epoch, rx) = self.0.subscribe(info).await?;
        Ok(Response::new(EventStream {
            rx,
            broker: self.0.clone(),
            framework,
            epoch,
        }))
    }

    async fn accept(
        &self,
        request: Request<pb::AcceptRequest>,
    ) -> Result<Response<pb::AcceptResponse>, Status> {
        let caller = authz::caller(&request);
        let r = request.into_inner();
        self.authorize(&caller, &r.framework_id, "run_tasks")?;
        let mut tasks = Vec::new();
        let mut reservations = Vec::new();
        for op in r.operations {
            match op.operation {
                Some(operation::Operation::Launch(l)) => tasks.extend(l.task_infos),
                Some(operation::Operation::Reserve(x)) => reservations.push((true, x.resources)),
                Some(operation::Operation::Unreserve(x)) => reservations.push((false, x.resources)),
                None => {
                    return Err(Status::invalid_argument(
                        "an operation has no type (expected LAUNCH, RESERVE or UNRESERVE)",
                    ));
                }
            }
        }
        if !reservations.is_empty() {
            if !tasks.is_empty() {
                return Err(Status::invalid_argument(
                    "RESERVE and UNRESERVE cannot share an ACCEPT with LAUNCH: reserve first, then launch on the \
                     offers that follow (they carry the reservation)",
                ));
            }
            // reserve_resources / unreserve_resources for each role named, as for an operator's reservation.
            for (reserve, resources) in &reservations {
                let action = match reserve {
                    true => "reserve_resources",
                    false => "unreserve_resources",
                };
                let roles: std::collections::BTreeSet<&str> = resources
                    .iter()
                    .map(|r| r.role.as_str())
                    .filter(|r| !r.is_empty())
                    .collect();
                let roles: Vec<&str> = roles.into_iter().collect();
                authz::check_acl(
                    self.1.as_deref(),
                    &caller,
                    action,
                    &roles,
                    &format!("for role(s) {}", roles.join(", ")),
                )?;
            }
            let principal = caller
                .principal()
                .map(|p| p.name.clone())
                .unwrap_or_default();
            let refuse = r.filters.and_then(|f| f.refuse_seconds);
            self.0
                .accept_reservations(
                    &r.framework_id,
                    r.offer_ids,
                    reservations,
                    refuse,
                    &principal,
                )
                .await?;
            return Ok(Response::new(pb::AcceptResponse {}));
        }
        if self.1.is_some() && caller.principal().is_some() {
            // run_tasks: every task's user (its command's, or its executor's command's for a task of a framework's
            // own executor, else its framework's) must be allowed.
            let framework_user = self.0.framework_user(&r.framework_id).unwrap_or_default();
            let distinct: Vec<&str> = tasks
                .iter()
                .map(|t| {
                    let command = t
                        .command
                        .as_ref()
                        .or_else(|| t.executor.as_ref().and_then(|e| e.command.as_ref()));
                    match command.map(|c| c.user.as_str()) {
                        Some(u) if !u.is_empty() => u,
                        _ => framework_user.as_str(),
                    }
                })
                .collect::<std::collections::BTreeSet<&str>>()
                .into_iter()
                .collect();
            authz::check_acl(
                self.1.as_deref(),
                &caller,
                "run_tasks",
                &distinct,
                &format!("as user(s) {}", distinct.join(", ")),
            )?;
        }
        let refuse = r.filters.and_then(|f| f.refuse_seconds);
        self.0
            .accept(&r.framework_id, r.offer_ids, tasks, refuse)
            .await?;
        Ok(Response::new(pb::AcceptResponse {}))
    }

    async fn decline(
        &self,
        request: Request<pb::DeclineRequest>,
    ) -> Result<Response<pb::DeclineResponse>, Status> {
        let caller = authz::caller(&request);
        let r = request.into_inner();
        self.authorize(&caller, &r.framework_id, "decline")?;
        let refuse = r.filters.and_then(|f| f.refuse_seconds);
        self.0.decline(&r.framework_id, r.offer_ids, refuse).await?;
        Ok(Response::new(pb::DeclineResponse {}))
    }

    async fn revive(
        &self,
        request: Request<pb::ReviveRequest>,
    ) -> Result<Response<pb::ReviveResponse>, Status> {
        let caller = authz::caller(&request);
        let fw = request.into_inner().framework_id;
        self.authorize(&caller, &fw, "revive")?;
        self.0.set_suppressed(&fw, false).await?;
        Ok(Response::new(pb::ReviveResponse {}))
    }

    async fn suppress(
        &self,
        request: Request<pb::SuppressRequest>,
    ) -> Result<Response<pb::SuppressResponse>, Status> {
        let caller = authz::caller(&request);
        let fw = request.into_inner().framework_id;
        self.authorize(&caller, &fw, "suppress")?;
        self.0.set_suppressed(&fw, true).await?;
        Ok(Response::new(pb::SuppressResponse {}))
    }

    async fn kill(
        &self,
        request: Request<pb::KillRequest>,
    ) -> Result<Response<pb::KillResponse>, Status> {
        let caller = authz::caller(&request);
        let r = request.into_inner();
        self.authorize(&caller, &r.framework_id, "kill_tasks")?;
        self.0.kill(&r.framework_id, &r.task_id).await?;
        Ok(Response::new(pb::KillResponse {}))
    }

    async fn message(
        &self,
        request: Request<pb::MessageRequest>,
    ) -> Result<Response<pb::MessageResponse>, Status> {
        let caller = authz::caller(&request);
        let r = request.into_inner();
        self.authorize(&caller, &r.framework_id, "send_messages")?;
        self.0
            .message(&r.framework_id, &r.agent_id, &r.executor_id, r.data)
            .await?;
        Ok(Response::new(pb::MessageResponse {}))
    }

    async fn shutdown(
        &self,
        request: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        let caller = authz::caller(&request);
        let r = request.into_inner();
        self.authorize(&caller, &r.framework_id, "shutdown_executors")?;
        self.0
            .shutdown_executor(&r.framework_id, &r.agent_id, &r.executor_id)
            .await?;
        Ok(Response::new(pb::ShutdownResponse {}))
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        let caller = authz::caller(&request);
        let r = request.into_inner();
        self.authorize(&caller, &r.framework_id, "acknowledge")?;
        let mut acks = Vec::with_capacity(1 + r.more.len());
        if !r.task_id.is_empty() {
            acks.push((r.task_id, r.uuid));
        }
        acks.extend(r.more.into_iter().map(|a| (a.task_id, a.uuid)));
        if acks.is_empty() {
            return Err(Status::invalid_argument(
                "ACKNOWLEDGE needs a task_id and uuid (or acknowledgements in `more`)",
            ));
        }
        self.0.acknowledge(&r.framework_id, acks)?;
        Ok(Response::new(pb::AcknowledgeResponse {}))
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let caller = authz::caller(&request);
        let r = request.into_inner();
        self.authorize(&caller, &r.framework_id, "reconcile")?;
        self.0.reconcile(&r.framework_id, r.tasks)?;
        Ok(Response::new(pb::ReconcileResponse {}))
    }

    async fn teardown(
        &self,
        request: Request<pb::TeardownRequest>,
    ) -> Result<Response<pb::TeardownResponse>, Status> {
        let caller = authz::caller(&request);
        let fw = request.into_inner().framework_id;
        let result = async {
            self.authorize(&caller, &fw, "teardown_frameworks")?;
            self.0.teardown_call(&fw).await.map_err(Status::from)
        }
        .await;
        let object = format!("framework {fw}");
        self.2
            .record(&caller, "teardown_frameworks", &object, &result);
        result?;
        Ok(Response::new(pb::TeardownResponse {}))
    }
}

/// `allot.agent.v1.StatusUpdates`: agents deliver status updates here.
pub struct StatusService(pub Arc<Broker>);

impl StatusService {
    /// Allows `caller` to report the tasks of the agents `agent_ids`: an anonymous caller (an `--insecure`
    /// broker), a service, or for each agent the principal that registered it (an agent the broker has not
    /// seen, or one registered without a principal, passes). The broker's state is read once for all.
    ///
    /// # Errors
    /// PERMISSION_DENIED (see `allot_server::authz::denied`) for the first agent of another principal.
    fn own_agents<'a>(
        &self,
        caller: &Caller,
        agent_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Status> {
        if caller.is(&["service"]) {
            return Ok(());
        }
        let mut ids: Vec<&str> = agent_ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        for (id, owner) in self.0.agent_principals(&ids) {
            caller.require_owner(
                owner.as_deref(),
                "update_status",
                &format!("agent {id}'s tasks"),
            )?;
        }
        Ok(())
    }
}

/// Principal kinds that may deliver status updates.
const AGENT_KINDS: [&str; 2] = ["agent", "service"];

/// How often the broker sends an empty message down an agent's status update stream, so that the agent can
/// tell a live stream from a dead connection (it gives a stream up after three silent intervals).
pub const STREAM_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// What goes down an agent's status update stream: its acknowledgements and heartbeats.
pub type AckStream = tokio_stream::wrappers::ReceiverStream<crate::link::agents::StreamItem>;

/// The updates of one stream message that are agent `agent`'s, as [`Broker::status_updates`] takes them;
/// the others are dropped with a warning (a stream carries one agent's updates).
fn own_updates(
    agent: &str,
    message: StatusUpdateStreamRequest,
) -> Vec<(
    allot_proto::common::TaskStatus,
    String,
    std::collections::HashMap<String, String>,
)> {
    message
        .updates
        .into_iter()
        .filter_map(|u| {
            let status = u.status?;
            if status.agent_id != agent {
                tracing::warn!(stream = %agent, agent = %status.agent_id, task = %status.task_id,
                    "a status update for another agent on an agent's stream; dropped");
                return None;
            }
            Some((status, u.sandbox, u.trace_context))
        })
        .collect()
}

/// Serves one agent's status update stream until the agent ends it or the connection breaks: its updates
/// go to the broker as they come, and a heartbeat goes down every [`STREAM_HEARTBEAT`] beside the
/// acknowledgements ([`crate::link::agents::AckStreams`]).
async fn serve_stream(
    broker: Arc<Broker>,
    agent: String,
    n: u64,
    mut inbound: tonic::Streaming<StatusUpdateStreamRequest>,
) {
    let Some(heartbeats) = broker.agents.streams.sender(&agent) else {
        return;
    };
    let mut tick = tokio::time::interval(STREAM_HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopping = broker.agents.streams.stopping.clone();
    loop {
        tokio::select! {
            _ = stopping.cancelled() => break,
            m = inbound.message() => match m {
                Ok(Some(message)) => {
                    let updates = own_updates(&agent, message);
                    if !updates.is_empty() {
                        broker.status_updates(updates);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%agent, error = %e.message(), "an agent's status update stream broke");
                    break;
                }
            },
            _ = tick.tick() => {
                // A full stream needs no heartbeat (what is queued will do); a closed one has ended.
                use tokio::sync::mpsc::error::TrySendError;
                if let Err(TrySendError::Closed(_)) =
                    heartbeats.try_send(Ok(StatusUpdateAcknowledgements::default()))
                {
                    break;
                }
            }
        }
    }
    broker.agents.streams.close(&agent, n);
    tracing::debug!(%agent, "an agent's status update stream ended");
}

#[tonic::async_trait]
impl StatusUpdates for StatusService {
    type StreamStream = AckStream;

    async fn stream(
        &self,
        request: Request<tonic::Streaming<StatusUpdateStreamRequest>>,
    ) -> Result<Response<AckStream>, Status> {
        let caller = authz::caller(&request);
        caller.require(&AGENT_KINDS, "update_status", "of tasks")?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("a status update stream ended before its first message")
        })?;
        if first.agent_id.is_empty() {
            return Err(Status::invalid_argument(
                "the first message of a status update stream names its agent (agent_id)",
            ));
        }
        self.own_agents(&caller, [first.agent_id.as_str()])?;
        if self.0.agents.streams.stopping.is_cancelled() {
            return Err(Status::unavailable("the broker is stopping"));
        }
        let agent = first.agent_id.clone();
        let (n, rx) = self.0.agents.streams.open(&agent);
        tracing::debug!(%agent, "an agent opened its status update stream");
        let updates = own_updates(&agent, first);
        if !updates.is_empty() {
            self.0.status_updates(updates);
        }
        tokio::spawn(serve_stream(self.0.clone(), agent, n, inbound));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn update(
        &self,
        request: Request<StatusUpdateRequest>,
    ) -> Result<Response<StatusUpdateResponse>, Status> {
        let caller = authz::caller(&request);
        caller.require(&AGENT_KINDS, "update_status", "of tasks")?;
        let r = request.into_inner();
        let status = r
            .status
            .ok_or_else(|| Status::invalid_argument("an update needs a status"))?;
        self.own_agents(&caller, [status.agent_id.as_str()])?;
        self.0.status_update(status, Some(r.sandbox))?;
        Ok(Response::new(StatusUpdateResponse {}))
    }

    async fn update_batch(
        &self,
        request: Request<StatusUpdateBatchRequest>,
    ) -> Result<Response<StatusUpdateResponse>, Status> {
        let caller = authz::caller(&request);
        caller.require(&AGENT_KINDS, "update_status", "of tasks")?;
        let updates: Vec<_> = request
            .into_inner()
            .updates
            .into_iter()
            .filter_map(|u| Some((u.status?, u.sandbox, u.trace_context)))
            .collect();
        self.own_agents(&caller, updates.iter().map(|(s, _, _)| s.agent_id.as_str()))?;
        self.0.status_updates(updates);
        Ok(Response::new(StatusUpdateResponse {}))
    }

    async fn executor_to_framework(
        &self,
        request: Request<ExecutorToFrameworkRequest>,
    ) -> Result<Response<ExecutorToFrameworkResponse>, Status> {
        let caller = authz::caller(&request);
        caller.require(&AGENT_KINDS, "update_status", "(an executor's message)")?;
        let r = request.into_inner();
        self.own_agents(&caller, [r.agent_id.as_str()])?;
        self.0.executor_message(r);
        Ok(Response::new(ExecutorToFrameworkResponse {}))
    }

    async fn exited_executor(
        &self,
        request: Request<ExitedExecutorRequest>,
    ) -> Result<Response<ExitedExecutorResponse>, Status> {
        let caller = authz::caller(&request);
        caller.require(&AGENT_KINDS, "update_status", "(an executor's exit)")?;
        let r = request.into_inner();
        self.own_agents(&caller, [r.agent_id.as_str()])?;
        self.0.executor_exited(r);
        Ok(Response::new(ExitedExecutorResponse {}))
    }
}

/// `allot.operator.v1.Operator`: read-only views for the `allot` CLI.
pub struct OperatorService(pub Arc<Broker>);

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn list_frameworks(
        &self,
        _: Request<op::ListFrameworksRequest>,
    ) -> Result<Response<op::ListFrameworksResponse>, Status> {
        Ok(Response::new(op::ListFrameworksResponse {
            frameworks: self.0.frameworks(),
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<op::ListTasksRequest>,
    ) -> Result<Response<op::ListTasksResponse>, Status> {
        Ok(Response::new(op::ListTasksResponse {
            tasks: self.0.tasks(&request.into_inner().framework_id),
        }))
    }

    async fn list_offers(
        &self,
        _: Request<op::ListOffersRequest>,
    ) -> Result<Response<op::ListOffersResponse>, Status> {
        Ok(Response::new(op::ListOffersResponse {
            offers: self.0.offers(),
        }))
    }
}
