//! `allot.agent.v1.Agent`: the offer-broker launches and kills tasks here.

use crate::Agent;
use crate::executor::run_task;
use allot_common::valid_id;
use allot_proto::agent::{agent_server, *};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The interceptor of the agent's gRPC service: only the offer-broker (a `service` principal) may launch,
/// kill, acknowledge or reconcile on an agent, so that a framework's certificate cannot start tasks behind the
/// broker's back (on an `--insecure` agent every caller passes).
///
/// # Errors
/// PERMISSION_DENIED (see `allot_server::authz::denied`).
pub(crate) fn broker_only(request: Request<()>) -> Result<Request<()>, Status> {
    allot_server::authz::caller(&request).require(
        &["service"],
        "call_agents",
        "(launch, kill, acknowledge or reconcile tasks on an agent)",
    )?;
    Ok(request)
}

/// Checks a LaunchTasks request before anything starts: a valid `framework_id` and task IDs, and every task
/// for an agent that `runs` accepts (`this` names the receiver in the error).
///
/// # Errors
/// `INVALID_ARGUMENT` naming the first offending field or task.
pub(crate) fn check_launch(
    r: &LaunchTasksRequest,
    runs: impl Fn(&str) -> bool,
    this: &str,
) -> Result<(), Status> {
    if !valid_id(&r.framework_id) {
        return Err(Status::invalid_argument("framework_id is invalid"));
    }
    for t in &r.tasks {
        if !valid_id(&t.task_id) {
            return Err(Status::invalid_argument(format!(
                "task_id '{}' is invalid",
                t.task_id
            )));
        }
        if !runs(&t.agent_id) {
            return Err(Status::invalid_argument(format!(
                "task {} is for agent {}, this is {this}",
                t.task_id, t.agent_id
            )));
        }
    }
    Ok(())
}

/// Answers a ReconcileTasks call from what `updates` holds and whether `launched` knows a task (launched, no
/// update made yet).
pub(crate) fn reconcile(
    updates: &crate::status::StatusUpdateManager,
    launched: impl Fn(&(String, String)) -> bool,
    tasks: Vec<AgentTask>,
) -> ReconcileTasksResponse {
    let mut out = ReconcileTasksResponse::default();
    for t in tasks {
        let key = (t.framework_id.clone(), t.task_id.clone());
        match updates.known(&key) {
            Some(Some((status, acknowledged))) => out.tasks.push(ReconciledTask {
                status: Some(status),
                acknowledged,
            }),
            Some(None) => {}
            None if launched(&key) => {}
            None => out.unknown.push(t),
        }
    }
    out
}

/// The agent's gRPC service.
pub struct AgentService(pub Arc<Agent>);

#[tonic::async_trait]
impl agent_server::Agent for AgentService {
    async fn launch_tasks(
        &self,
        request: Request<LaunchTasksRequest>,
    ) -> Result<Response<LaunchTasksResponse>, Status> {
        let r = request.into_inner();
        let agent = &self.0;
        let agent_id = agent.id();
        check_launch(&r, |a| a.is_empty() || a == agent_id, &agent_id)?;
        if let Err(refusal) = agent
            .fence
            .admits(r.agent_registration, std::time::Instant::now())
        {
            tracing::warn!(framework = %r.framework_id, tasks = r.tasks.len(), %refusal, "launch refused");
            return Err(Status::failed_precondition(format!(
                "launch refused: {refusal}"
            )));
        }
        let framework_info = r.framework_info.clone().unwrap_or_default();
        let framework_user = framework_info.user.clone();
        for mut task in r.tasks {
            let task_id = task.task_id.clone();
            // The task runs as its command's user, else its framework's (Mesos); recorded in the task, so that
            // its checkpoint names the user it runs as. A task of an executor runs as its executor does.
            if task.executor.is_none() {
                let command = task.command.get_or_insert_with(Default::default);
                if command.user.is_empty() {
                    command.user = framework_user.clone();
                }
            }
            // A launch sent again (the broker did not hear the first answered) of a task that has run and
            // ended, or has updates waiting: it is not run twice. Its updates reach the broker on their own.
            if agent
                .updates
                .has_seen(&(r.framework_id.clone(), task_id.clone()))
            {
                tracing::warn!(task = %task_id, "launch of a known task ignored");
                continue;
            }
            let launch = agent.launch(&r.framework_id, &agent_id, task);
            // The launch of this task, in the caller's trace; its status updates are children of it.
            let span = tracing::info_span!(
                "launch task",
                allot.framework.id = %r.framework_id,
                allot.task.id = %task_id,
                allot.agent.id = %agent_id,
                allot.sandbox = %launch.sandbox.display(),
            );
            let context = allot_telemetry::propagation::to_map(&span);
            let isolator = agent.isolator.clone();
            // The task's life in this agent, its start-up steps as children (`sandbox`, `isolate`, `spawn`).
            let run_span = tracing::info_span!(parent: &span, "run task", allot.task.id = %task_id);
            let supervised = match launch.task.executor.is_some() {
                true => {
                    let (me, framework) = (agent.clone(), framework_info.clone());
                    agent.supervise(launch, context, |l, kill, tx| {
                        tracing::Instrument::instrument(
                            me.run_executor_task(l, framework, kill, tx),
                            run_span,
                        )
                    })
                }
                false => agent.supervise(launch, context, |l, kill, tx| {
                    tracing::Instrument::instrument(run_task(l, isolator, kill, tx), run_span)
                }),
            };
            if !supervised {
                tracing::warn!(task = %task_id, "launch of a known task ignored");
            }
            drop(span);
        }
        Ok(Response::new(LaunchTasksResponse {}))
    }

    async fn acknowledge_status_updates(
        &self,
        request: Request<AcknowledgeStatusUpdatesRequest>,
    ) -> Result<Response<AcknowledgeStatusUpdatesResponse>, Status> {
        self.0.acknowledged(request.into_inner().acknowledgements);
        Ok(Response::new(AcknowledgeStatusUpdatesResponse {}))
    }

    async fn reconcile_tasks(
        &self,
        request: Request<ReconcileTasksRequest>,
    ) -> Result<Response<ReconcileTasksResponse>, Status> {
        let agent = &self.0;
        let tasks = agent.tasks.lock().expect("tasks poisoned");
        Ok(Response::new(reconcile(
            &agent.updates,
            |k| tasks.contains_key(k),
            request.into_inner().tasks,
        )))
    }

    async fn framework_to_executor(
        &self,
        request: Request<FrameworkToExecutorRequest>,
    ) -> Result<Response<FrameworkToExecutorResponse>, Status> {
        let r = request.into_inner();
        let sent = self
            .0
            .executors
            .get(&(r.framework_id.clone(), r.executor_id.clone()))
            .is_some_and(|c| c.send(allot_mesos::executor::Event::message(r.data)));
        match sent {
            true => Ok(Response::new(FrameworkToExecutorResponse {})),
            false => Err(Status::not_found(format!(
                "executor {} of framework {} is not running (or not subscribed) on this agent",
                r.executor_id, r.framework_id
            ))),
        }
    }

    async fn shutdown_executor(
        &self,
        request: Request<ShutdownExecutorRequest>,
    ) -> Result<Response<ShutdownExecutorResponse>, Status> {
        let r = request.into_inner();
        let found = self.0.executors.of(&r.framework_id, &r.executor_id);
        if found.is_empty() && !r.executor_id.is_empty() {
            return Err(Status::not_found(format!(
                "executor {} of framework {} is not running on this agent",
                r.executor_id, r.framework_id
            )));
        }
        for c in found {
            c.shutdown("asked by the framework or the broker");
        }
        Ok(Response::new(ShutdownExecutorResponse {}))
    }

    async fn kill_task(
        &self,
        request: Request<KillTaskRequest>,
    ) -> Result<Response<KillTaskResponse>, Status> {
        let r = request.into_inner();
        let tasks = self.0.tasks.lock().expect("tasks poisoned");
        match tasks.get(&(r.framework_id.clone(), r.task_id.clone())) {
            Some(t) => {
                if !r.reason.is_empty() {
                    let _ = t.kill_reason.set((r.reason, r.message));
                }
                t.kill.cancel();
                Ok(Response::new(KillTaskResponse {}))
            }
            None => Err(Status::not_found(format!(
                "task {} is not running on this agent",
                r.task_id
            ))),
        }
    }
}
