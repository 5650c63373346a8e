//! Offers: from the allocator's grants to the frameworks' ACCEPT and DECLINE.
//!
//! The broker subscribes to the leading allocator's decision stream. A grant of an agent to a connected
//! framework becomes an offer on its event stream (OFFERS); a grant it cannot offer goes straight back. A
//! rescind from the allocator (the agent went away) withdraws the offer (RESCIND). A new allocator session
//! knows no offers: every outstanding one is rescinded and every connected framework activated again.
//!
//! ACCEPT with LAUNCH operations: validate everything (offers, agent, task IDs, commands, resources,
//! overcommit) before anything changes; take the offers (a concurrent rescind wins); write the tasks as
//! TASK_STAGING (one etcd transaction, shared with concurrent ACCEPTs by a group commit); return the unused
//! rest of the offers to the allocator with the framework's filter, together with the launched tasks, and wait
//! for its answer (so that it knows of a task before the task can end); then launch on the agent. A task is
//! launched at most once: the offers leave the book before the tasks are persisted, and a second ACCEPT of the
//! same offer is refused. DECLINE returns the offers with the filter (`refuse_seconds`, Mesos' default 5 s).

use crate::broker::{Broker, span_failed};
use crate::error::Error;
use crate::metrics::M;
use crate::state::{OfferEntry, TaskKey, refuse_of, staging_record, tag_reservations, task_key};
use crate::validate::{ValidTask, validate_launch};
use allot_common::convert::resources_from_proto;
use allot_proto::agent::LaunchTasksRequest;
use allot_proto::allocator::{LaunchedTask, allocator_event};
use allot_proto::common::{TaskInfo, TaskState};
use allot_proto::scheduler::{self as pb, event};
use allot_telemetry::propagation;
use allot_telemetry::propagation::SpanContext;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

/// Mesos' default `refuse_seconds` when a DECLINE or ACCEPT carries no filters.
pub const DEFAULT_REFUSE_SECONDS: f64 = 5.0;

impl Broker {
    /// Follows the leading allocator's decision stream for as long as the broker leads, subscribing again
    /// (to the leader, which a standby names) whenever it ends.
    pub(crate) async fn follow_allocator(self: Arc<Self>) {
        loop {
            match self.allocator.subscribe().await {
                Ok(mut stream) => {
                    tracing::info!("subscribed to the allocator");
                    self.new_allocator_session().await;
                    loop {
                        match stream.message().await {
                            Ok(Some(ev)) => self.on_allocator_event(ev.event).await,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "allocator stream failed");
                                self.allocator.replicas().failed(&e);
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    // A standby names the leader; a replica that cannot be reached is skipped.
                    self.allocator.replicas().failed(&e);
                    tracing::warn!(error = %e.message(), allocator = %self.allocator.replicas().current(),
                        "cannot subscribe to the allocator; retrying")
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A new allocator session knows no offers: rescind ours, then tell it who is connected.
    async fn new_allocator_session(&self) {
        let (rescinds, active) = {
            let mut state = self.lock();
            (state.rescind_all(), state.connected())
        };
        M.rescinded.inc_by(rescinds.len() as u64);
        for (fw, offer_id) in rescinds {
            self.send(&fw, event::Event::Rescind(pb::Rescind { offer_id }));
        }
        for (fw, suppressed) in active {
            let _ = self.allocator.activate(fw, suppressed).await;
        }
    }

    async fn on_allocator_event(self: &Arc<Self>, ev: Option<allocator_event::Event>) {
        match ev {
            Some(allocator_event::Event::Grants(g)) => self.offer(g.grants).await,
            Some(allocator_event::Event::Rescind(r)) => {
                let gone = self.lock().rescind(r.offer_ids);
                M.rescinded.inc_by(gone.len() as u64);
                for (fw, offer_id) in gone {
                    self.send(&fw, event::Event::Rescind(pb::Rescind { offer_id }));
                }
            }
            Some(allocator_event::Event::Revoke(r)) => self.revoke(r.tasks),
            None => {}
        }
    }

    /// Kills the tasks the allocator revoked (preemption), each after its kill grace period, without waiting:
    /// each ends TASK_KILLED with `REASON_PREEMPTED` and the allocator's message, through the usual status
    /// updates. A task that already ended is left alone; a kill that fails is logged (the allocator revokes
    /// again later if the task still runs).
    fn revoke(self: &Arc<Self>, tasks: Vec<allot_proto::allocator::RevokedTask>) {
        for t in tasks {
            let me = self.clone();
            tokio::spawn(async move {
                let span = tracing::info_span!("preempt task", allot.framework.id = %t.framework_id,
                    allot.task.id = %t.task_id, allot.agent.id = %t.agent_id);
                let killed = me
                    .kill_on_agent(
                        &t.agent_id,
                        (&t.framework_id, &t.task_id),
                        ("REASON_PREEMPTED", &t.message),
                    )
                    .instrument(span)
                    .await;
                match killed {
                    Ok(crate::link::agents::Killed::Unknown(why)) => {
                        tracing::debug!(framework = %t.framework_id, task = %t.task_id, %why,
                            "a preempted task had already ended")
                    }
                    Ok(crate::link::agents::Killed::Killing) => {
                        tracing::info!(framework = %t.framework_id, task = %t.task_id, message = %t.message,
                        "killing a preempted task")
                    }
                    Err(e) => {
                        tracing::warn!(framework = %t.framework_id, task = %t.task_id, error = %e,
                        "cannot kill a preempted task")
                    }
                }
            });
        }
    }

    /// Turns `grants` into offers on their frameworks' event streams; those that cannot be offered (the
    /// framework is gone, the agent is not alive or unknown, the resources are malformed) go back to the
    /// allocator unfiltered.
    async fn offer(&self, grants: Vec<allot_proto::allocator::Grant>) {
        let mut unwanted = Vec::new();
        let mut by_fw: HashMap<String, Vec<pb::Offer>> = HashMap::new();
        {
            let mut state = self.lock();
            for grant in grants {
                let (Ok(resources), Some(info)) = (
                    resources_from_proto(&grant.resources),
                    state.offer_target(&grant.framework_id, &grant.agent_id),
                ) else {
                    unwanted.push(grant.offer_id);
                    continue;
                };
                // The offer's span, a child of the allocation cycle that made it; made only when spans are
                // exported (thousands of offers a cycle would cost for nothing).
                let span = if allot_telemetry::exporting() {
                    let span = tracing::info_span!(
                        "offer",
                        allot.offer.id = %grant.offer_id,
                        allot.framework.id = %grant.framework_id,
                        allot.agent.id = %grant.agent_id,
                        allot.cycle = grant.cycle,
                    );
                    propagation::set_parent_from_map(&span, &grant.trace_context);
                    propagation::span_context_of(&span)
                } else {
                    SpanContext::empty_context()
                };
                let offer = pb::Offer {
                    offer_id: grant.offer_id.clone(),
                    framework_id: grant.framework_id.clone(),
                    agent_id: grant.agent_id,
                    hostname: info.hostname,
                    resources: grant.resources,
                    attributes: info.attributes,
                    agent_http_address: info.http_address,
                };
                state.offers.insert(
                    grant.offer_id,
                    OfferEntry {
                        offer: offer.clone(),
                        resources,
                        span,
                    },
                );
                by_fw.entry(grant.framework_id).or_default().push(offer);
            }
        }
        for (fw, offers) in by_fw {
            tracing::debug!(framework = %fw, offers = offers.len(), "sending offers");
            let n = offers.len() as u64;
            let ids: Vec<String> = offers.iter().map(|o| o.offer_id.clone()).collect();
            if self.send(&fw, event::Event::Offers(pb::Offers { offers })) {
                M.offers.inc_by(n);
            } else {
                unwanted.extend(self.lock().take_offers(ids));
            }
        }
        // The full refresh (which counts every task) runs on heartbeats; here only the offers.
        M.outstanding.set(self.lock().offers.len() as f64);
        if !unwanted.is_empty() {
            self.allocator.recover(unwanted, 0.0, Vec::new()).await;
        }
    }

    /// ACCEPT with LAUNCH operations of `tasks` on the offers `offer_ids`, filtering the agent for
    /// `refuse_seconds` (default [`DEFAULT_REFUSE_SECONDS`]) afterwards. Returns the number of tasks launched.
    ///
    /// No launch is left unanswered: every task of an ACCEPT that is refused also gets a status update on the
    /// framework's event stream, with no uuid (nothing to acknowledge): TASK_ERROR (REASON_TASK_INVALID) for
    /// an invalid launch, TASK_DROPPED (REASON_INVALID_OFFERS) for an unknown or rescinded offer, and
    /// TASK_DROPPED (REASON_STORE_UNAVAILABLE) when etcd cannot record the tasks, sent once etcd is known not
    /// to hold them (`Broker::drop_unrecorded`). A task whose ID names a live task gets none.
    ///
    /// # Errors
    /// [`Error::NotSubscribed`] or [`Error::TornDown`]; [`Error::UnknownOffer`] or [`Error::Rescinded`] for
    /// an unknown or rescinded offer; [`Error::Invalid`] for a bad launch (see [`validate_launch`]) or filter;
    /// [`Error::Store`] if etcd cannot persist the tasks. On any error nothing is launched; after a failed
    /// write the offers go back to the allocator.
    #[tracing::instrument(
        name = "accept",
        skip_all,
        fields(
            allot.framework.id = %fw,
            allot.offers = offer_ids.len(),
            allot.offer.ids = %offer_ids.join(","),
            allot.tasks = tasks.len(),
            allot.task.ids = %tasks.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>().join(","),
            allot.agent.id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    )]
    pub async fn accept(
        self: &Arc<Self>,
        fw: &str,
        offer_ids: Vec<String>,
        tasks: Vec<TaskInfo>,
        refuse_seconds: Option<f64>,
    ) -> Result<usize, Error> {
        let asked: Vec<(String, String)> = tasks
            .iter()
            .map(|t| (t.task_id.clone(), t.agent_id.clone()))
            .collect();
        let (agent_id, refuse, taken, mut valid) =
            match self.take_for_accept(fw, &offer_ids, tasks, refuse_seconds) {
                Ok(t) => t,
                Err(e) => {
                    span_failed(&e);
                    self.answer_refused(fw, &asked, &e);
                    return Err(e);
                }
            };
        // The ACCEPT's trace names the offers it used, and through them the allocation cycle that made them.
        let span = tracing::Span::current();
        for o in &taken {
            propagation::link(&span, &o.span);
        }
        M.accepted.inc_by(taken.len() as u64);
        tag_reservations(&taken, &mut valid);
        let now = allot_common::now_secs();
        let records: Vec<_> = valid
            .iter()
            .map(|v| staging_record(fw, &agent_id, v.info.clone(), now))
            .collect();
        let encoded: Vec<(String, Vec<u8>)> = records
            .iter()
            .map(|r| {
                let (fw, task) = task_key(r);
                (
                    self.store.task_key(&fw, &task),
                    prost::Message::encode_to_vec(r),
                )
            })
            .collect();
        let keys: Vec<String> = encoded.iter().map(|(k, _)| k.clone()).collect();
        if let Err(e) = self.staging.put_all(encoded).await {
            tracing::warn!(error = %e, "cannot persist launched tasks; the offers are restored");
            // Restore nothing we cannot vouch for: the offers go back to the allocator unfiltered.
            self.allocator.recover(offer_ids, 0.0, Vec::new()).await;
            let asked: Vec<(String, String)> = valid
                .iter()
                .map(|v| (v.info.task_id.clone(), agent_id.clone()))
                .collect();
            let me = self.clone();
            let fw = fw.to_string();
            tokio::spawn(async move { me.drop_unrecorded(&fw, keys, asked).await });
            let e = Error::from(e);
            span_failed(&e);
            return Err(e);
        }
        self.lock().add_staged(records);
        let launched: Vec<LaunchedTask> = valid
            .iter()
            .map(|v| LaunchedTask {
                framework_id: fw.to_string(),
                task_id: v.info.task_id.clone(),
                agent_id: agent_id.clone(),
                resources: v.info.resources.clone(),
            })
            .collect();
        self.allocator.recover(offer_ids, refuse, launched).await;
        let n = valid.len();
        M.launched.inc_by(n as u64);
        if n > 0 {
            let tasks = valid.into_iter().map(|v| v.info).collect();
            self.spawn_launch(fw, &agent_id, tasks);
        }
        Ok(n)
    }

    /// ACCEPT with RESERVE and UNRESERVE operations (Mesos' dynamic reservations by a framework, its
    /// `docs/reservation.md`): each of `changes` is (`reserve`, resources of the offers, each tagged with one of
    /// the framework's roles), applied in order through the allocator for framework principal `principal`. The
    /// offers are used up: the allocator rescinds them as it changes the agent's reservations, and offers the
    /// agent again with its resources reserved (or no longer) for the role. Returns the number of changes made.
    ///
    /// # Errors
    /// [`Error::NotSubscribed`], [`Error::TornDown`], [`Error::UnknownOffer`], [`Error::Rescinded`];
    /// [`Error::Invalid`] for resources that are not scalars tagged with one of the framework's roles, that the
    /// offers do not hold unreserved (RESERVE) or reserved for the role (UNRESERVE), or that the allocator
    /// refuses (its reason); [`Error::Allocator`]. Changes made before a failing one stay; the offers go back
    /// to the allocator.
    pub async fn accept_reservations(
        self: &Arc<Self>,
        fw: &str,
        offer_ids: Vec<String>,
        changes: Vec<(bool, Vec<allot_proto::common::Resource>)>,
        refuse_seconds: Option<f64>,
        principal: &str,
    ) -> Result<usize, Error> {
        let (agent_id, refuse, planned) = {
            let mut state = self.lock();
            state.check_subscribed(fw)?;
            let refuse = refuse_of(refuse_seconds, DEFAULT_REFUSE_SECONDS)?;
            let (agent_id, _) = state.check_offers(fw, &offer_ids)?;
            let roles = state
                .frameworks
                .get(fw)
                .and_then(|f| f.record.info.as_ref())
                .map(|i| i.roles.clone())
                .unwrap_or_default();
            let mut offered: Vec<allot_proto::common::Resource> = Vec::new();
            for id in &offer_ids {
                offered.extend(state.offer(fw, id)?.offer.resources.iter().cloned());
            }
            let (mut free, mut held) = allot_common::convert::pieces_from_proto(&offered)
                .map_err(|e| Error::Invalid(format!("the offers' resources: {e}")))?;
            let mut planned = Vec::new();
            for (reserve, resources) in changes {
                let op = if reserve { "RESERVE" } else { "UNRESERVE" };
                let (untagged, tagged) = allot_common::convert::pieces_from_proto(&resources)
                    .map_err(|e| Error::Invalid(format!("{op}: {e}")))?;
                let mut tagged = tagged.into_iter();
                let (role, amount) = match (untagged.is_empty(), tagged.next(), tagged.next()) {
                    (true, Some(one), None) => one,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "{op}: give resources tagged with one role, the one to reserve them for"
                        )));
                    }
                };
                if !roles.contains(&role) {
                    return Err(Error::Invalid(format!(
                        "{op}: role {role} is not one of the framework's roles ({})",
                        roles.join(", ")
                    )));
                }
                let role_held = held.entry(role.clone()).or_default();
                if reserve {
                    if !free.contains(&amount) {
                        return Err(Error::Invalid(format!(
                            "RESERVE of {amount}: the offers hold {free} unreserved"
                        )));
                    }
                    free.subtract(&amount);
                    role_held.add(&amount);
                } else {
                    if !role_held.contains(&amount) {
                        return Err(Error::Invalid(format!(
                            "UNRESERVE of {amount}: the offers hold {role_held} reserved for role {role}"
                        )));
                    }
                    role_held.subtract(&amount);
                    free.add(&amount);
                }
                planned.push((
                    reserve,
                    role,
                    allot_common::convert::resources_to_proto(&amount),
                ));
            }
            state.take_offers_for_accept(&offer_ids)?;
            (agent_id, refuse, planned)
        };
        let mut done = 0;
        for (reserve, role, resources) in planned {
            if let Err(e) = self
                .allocator
                .change_reservation(&agent_id, &role, resources, reserve, principal)
                .await
            {
                self.allocator.recover(offer_ids, 0.0, Vec::new()).await;
                return Err(e);
            }
            done += 1;
        }
        // Rescinded by the allocator as it applied the changes: the filter applies to what remains, if any.
        self.allocator.recover(offer_ids, refuse, Vec::new()).await;
        Ok(done)
    }

    /// Answers each task of a refused ACCEPT with TASK_ERROR or TASK_DROPPED (see [`Broker::accept`]).
    fn answer_refused(&self, fw: &str, asked: &[(String, String)], e: &Error) {
        let (state, reason) = match e {
            Error::Invalid(_) => (TaskState::TaskError, "REASON_TASK_INVALID"),
            Error::UnknownOffer(_) | Error::Rescinded => {
                (TaskState::TaskDropped, "REASON_INVALID_OFFERS")
            }
            // Not subscribed: no event stream to answer on (the framework reconciles after it subscribes).
            _ => return,
        };
        let message = e.to_string();
        let statuses = self.lock().refusals(
            fw,
            asked,
            (state, reason, &message),
            allot_common::now_secs(),
        );
        self.send_updates(statuses);
    }

    /// After the TASK_STAGING write of an ACCEPT failed: etcd may hold the records or not (a write can succeed
    /// and its answer be lost). The keys are deleted, retried with backoff until etcd takes it, and only then
    /// are the tasks `asked` answered TASK_DROPPED (REASON_STORE_UNAVAILABLE): a framework told its task was
    /// dropped never sees it launched by a later leader from a record that survived. If this broker is fenced
    /// off first, nothing is answered: the next leader finds the records, if any, and launches them, and the
    /// framework's reconciliation learns either way.
    async fn drop_unrecorded(&self, fw: &str, keys: Vec<String>, asked: Vec<(String, String)>) {
        let mut delays =
            allot_common::jittered_retry_delays(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            match self.store.delete_all(&keys).await {
                Ok(()) => break,
                Err(allot_server::StoreError::Fenced) => return,
                Err(e) => {
                    tracing::debug!(error = %e, tasks = keys.len(), "cannot clear unrecorded tasks yet; retrying");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
                }
            }
        }
        let statuses = self.lock().refusals(
            fw,
            &asked,
            (
                TaskState::TaskDropped,
                "REASON_STORE_UNAVAILABLE",
                "etcd could not record the launch; nothing was launched",
            ),
            allot_common::now_secs(),
        );
        tracing::info!(framework = %fw, tasks = statuses.len(), "unrecorded launches dropped");
        self.send_updates(statuses);
    }

    /// The checks of an ACCEPT, then the offers taken, under one lock: returns the agent, the filter, the
    /// offers and the validated tasks.
    fn take_for_accept(
        &self,
        fw: &str,
        offer_ids: &[String],
        tasks: Vec<TaskInfo>,
        refuse_seconds: Option<f64>,
    ) -> Result<(String, f64, Vec<OfferEntry>, Vec<ValidTask>), Error> {
        let mut state = self.lock();
        state.check_subscribed(fw)?;
        let refuse = refuse_of(refuse_seconds, DEFAULT_REFUSE_SECONDS)?;
        let (agent_id, offered) = state.check_offers(fw, offer_ids)?;
        tracing::Span::current().record("allot.agent.id", agent_id.as_str());
        let valid = validate_launch(&agent_id, &offered, tasks, |id| state.is_live_task(fw, id))?;
        let taken = state.take_offers_for_accept(offer_ids)?;
        Ok((agent_id, refuse, taken, valid))
    }

    /// Launches `tasks` of `fw` on `agent_id` on a task of its own, in a `launch` span (see
    /// [`Broker::launch`]). The tasks must be marked in flight (`State::launching`).
    pub(crate) fn spawn_launch(self: &Arc<Self>, fw: &str, agent_id: &str, tasks: Vec<TaskInfo>) {
        let me = self.clone();
        let (fw, agent_id) = (fw.to_string(), agent_id.to_string());
        let span = tracing::info_span!(
            "launch",
            allot.framework.id = %fw,
            allot.agent.id = %agent_id,
            allot.tasks = tasks.len(),
            otel.status_code = tracing::field::Empty,
        );
        tokio::spawn(async move { me.launch(&fw, &agent_id, tasks).await }.instrument(span));
    }

    /// Launches `tasks` of `fw` on `agent_id`. A recorded launch is carried out: while the agent cannot be
    /// reached or does not answer (within [`LAUNCH_TIMEOUT`](crate::link::agents::LAUNCH_TIMEOUT) a try) and
    /// its liveness key is present, the launch is sent again with backoff (an agent answers a launch of a task
    /// it knows with nothing new: none starts twice). The tasks become TASK_LOST only when the agent refuses
    /// the launch, is unknown, or is gone.
    async fn launch(self: Arc<Self>, fw: &str, agent_id: &str, tasks: Vec<TaskInfo>) {
        let info = self
            .lock()
            .frameworks
            .get(fw)
            .and_then(|f| f.record.info.clone());
        let keys: Vec<TaskKey> = tasks
            .iter()
            .map(|t| (fw.to_string(), t.task_id.clone()))
            .collect();
        let mut req = LaunchTasksRequest {
            framework_id: fw.to_string(),
            framework_info: info,
            tasks,
            agent_registration: 0,
        };
        let mut delays =
            allot_common::jittered_retry_delays(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let addr = self.agent_address(agent_id).await;
            // The registration the broker knows now: the agent runs the launch only as that registration.
            req.agent_registration = self.lock().alive.get(agent_id).copied().unwrap_or(0);
            let e = match self
                .agents
                .launch(agent_id, addr.as_deref(), req.clone())
                .await
            {
                Ok(()) => break,
                Err(e) => e,
            };
            let alive = self.lock().alive.contains_key(agent_id);
            if matches!(e, Error::AgentUnreachable { .. }) && alive {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(agent = %agent_id, error = %e, ?delay, "launch not answered; sending it again");
                tokio::time::sleep(delay).await;
                // The call may have reached the agent after all: a task any update names is not sent again.
                let state = self.lock();
                req.tasks.retain(|t| state.is_staging(fw, &t.task_id));
                drop(state);
                if req.tasks.is_empty() {
                    break;
                }
                continue;
            }
            tracing::Span::current().record("otel.status_code", "ERROR");
            let why = match &e {
                Error::Agent { message, .. } | Error::AgentUnreachable { message, .. } => {
                    message.clone()
                }
                e => e.to_string(),
            };
            tracing::warn!(agent = %agent_id, error = %why, "launch failed");
            // Only the tasks no update names: one that reached its agent is that agent's to report.
            let lost: Vec<TaskKey> = {
                let state = self.lock();
                keys.iter()
                    .filter(|(fw, task)| state.is_staging(fw, task))
                    .cloned()
                    .collect()
            };
            self.master_updates(
                &lost,
                TaskState::TaskLost,
                "REASON_AGENT_UNREACHABLE",
                &format!("launch on agent {agent_id} failed: {why}"),
            )
            .await;
            break;
        }
        self.lock().launched(&keys);
    }

    /// DECLINE of `offer_ids`, filtering their agent for `refuse_seconds` (default
    /// [`DEFAULT_REFUSE_SECONDS`]). Every named offer still outstanding for `fw` is declined, even when another
    /// is not (see [`State::take_declined_offers`](crate::state::State::take_declined_offers)).
    ///
    /// # Errors
    /// [`Error::NotSubscribed`] or [`Error::TornDown`]; [`Error::Invalid`] for no offers or a bad filter
    /// (nothing is declined); [`Error::UnknownOffer`] naming the first offer that is not outstanding for `fw`,
    /// after the others were declined.
    pub async fn decline(
        &self,
        fw: &str,
        offer_ids: Vec<String>,
        refuse_seconds: Option<f64>,
    ) -> Result<(), Error> {
        let (taken, refuse, unknown) = {
            let mut state = self.lock();
            state.check_subscribed(fw)?;
            let refuse = refuse_of(refuse_seconds, DEFAULT_REFUSE_SECONDS)?;
            let (taken, unknown) = state.take_declined_offers(fw, offer_ids)?;
            (taken, refuse, unknown)
        };
        M.declined.inc_by(taken.len() as u64);
        self.allocator.recover(taken, refuse, Vec::new()).await;
        match unknown {
            Some(id) => Err(Error::UnknownOffer(id)),
            None => Ok(()),
        }
    }
}
