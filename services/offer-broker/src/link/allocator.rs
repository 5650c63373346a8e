//! The broker's link to the allocator: the calls it makes (activate, deactivate, suppress, revive, return
//! offers, tell of ended tasks, subscribe to decisions), always on the leading replica.
//!
//! Two calls are made often enough to batch: offer returns (`RecoverOffers`, one per ACCEPT and DECLINE) and
//! ended tasks (`TasksEnded`). Each has a sender task that makes one call at a time carrying everything that
//! queued up meanwhile.

use crate::error::Error;
use allot_common::grpc::{Channel, Replicas};
use allot_proto::allocator::{
    ActivateFrameworkRequest, DeactivateFrameworkRequest, EndedTask, LaunchedTask,
    RecoverOffersRequest, ReviveRequest, SubscribeRequest, SuppressRequest, TasksEndedRequest,
    allocator_client::AllocatorClient,
};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

/// At most this many recoveries go to the allocator in one `RecoverOffers` call.
const MAX_RECOVERIES_PER_CALL: usize = 256;

/// At most this many ended tasks go to the allocator in one `TasksEnded` call (about 60 bytes each).
const MAX_ENDED_PER_CALL: usize = 10_000;

/// The least time from the start of one `TasksEnded` call to the start of the next. Ended tasks that queue up
/// meanwhile go in the next call; the allocator offers freed resources at its next allocation cycle (every
/// `--allocation-interval`, 1 s by default as in Mesos), so this adds little to the time before they are
/// offered again.
const TELL_ENDED_SPACING: Duration = Duration::from_millis(20);

/// An offer recovery for the allocator, the span of the call that made it, and who waits for the answer (the
/// allocator's refusal, as text: one answer goes to every caller of the call).
type Recovery = (
    RecoverOffersRequest,
    tracing::Span,
    oneshot::Sender<Result<(), RecoveryFailed>>,
);

/// The `RecoverOffers` call that carried a recovery failed, with the allocator's message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
struct RecoveryFailed(String);

/// The link to the allocator's replicas. Its sender tasks end when it is dropped.
pub struct AllocatorLink {
    replicas: Replicas,
    ended: mpsc::UnboundedSender<Vec<EndedTask>>,
    recovering: mpsc::UnboundedSender<Recovery>,
}

/// An allocator client on `channel`, taking messages as large as Allot's servers send.
fn client(channel: Channel) -> AllocatorClient<Channel> {
    AllocatorClient::new(channel).max_decoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES)
}

/// Makes a call with `req` on the leading replica of `replicas`: a standby's answer or an unreachable
/// replica sends it on to the leader (see [`Replicas::call`]), with a copy of `req` each time.
///
/// # Errors
/// [`Error::Allocator`] with the last attempt's status message.
async fn call<R, T, F, Fut>(replicas: &Replicas, req: R, mut f: F) -> Result<T, Error>
where
    R: Clone,
    F: FnMut(AllocatorClient<Channel>, R) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    replicas
        .call(|ch| f(client(ch), req.clone()))
        .await
        .map_err(|s| Error::Allocator(s.message().to_string()))
}

impl AllocatorLink {
    /// A link to `replicas`. Must be called within a Tokio runtime: it starts the senders of offer returns
    /// and ended tasks.
    pub fn start(replicas: Replicas) -> Self {
        Self {
            ended: start_telling_ended(replicas.clone()),
            recovering: start_recovering(replicas.clone()),
            replicas,
        }
    }

    /// Changes role `role`'s dynamic reservation on agent `agent` by `resources` (untagged scalars): adds them
    /// (`reserve`) or takes them away, for framework principal `principal` (a framework's RESERVE or UNRESERVE,
    /// which the broker authorized). The allocator checks the agent's books, applies the change, rescinds the
    /// agent's outstanding offers and records it in etcd.
    ///
    /// # Errors
    /// [`Error::Invalid`] with the allocator's reason when it refuses the change (the resources are not free,
    /// or not reserved for the role); [`Error::Allocator`] when it cannot be reached.
    pub async fn change_reservation(
        &self,
        agent: &str,
        role: &str,
        resources: Vec<allot_proto::common::Resource>,
        reserve: bool,
        principal: &str,
    ) -> Result<(), Error> {
        use allot_proto::allocator::{ReserveRequest, reservations_client::ReservationsClient};
        let req = ReserveRequest {
            agent_id: agent.to_string(),
            role: role.to_string(),
            resources,
            principal: principal.to_string(),
        };
        let answer = self
            .replicas
            .call(|ch| {
                let req = req.clone();
                async move {
                    let mut c = ReservationsClient::new(ch);
                    match reserve {
                        true => c.reserve(req).await,
                        false => c.unreserve(req).await,
                    }
                }
            })
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(s) if !allot_common::grpc::transient(s.code()) => {
                Err(Error::Invalid(s.message().to_string()))
            }
            Err(s) => Err(Error::Allocator(s.message().to_string())),
        }
    }

    /// The replicas (to learn from a failed stream).
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// Subscribes to the leading replica's decisions (grants and rescinds).
    ///
    /// # Errors
    /// The status of the call (the caller tells [`Replicas::failed`], so that the next try finds the
    /// leader).
    pub async fn subscribe(
        &self,
    ) -> Result<tonic::Streaming<allot_proto::allocator::AllocatorEvent>, tonic::Status> {
        client(self.replicas.channel())
            .subscribe(SubscribeRequest {})
            .await
            .map(tonic::Response::into_inner)
    }

    /// Tells the allocator that framework `fw` is connected (and whether it is suppressed).
    ///
    /// # Errors
    /// [`Error::Allocator`].
    pub async fn activate(&self, fw: String, suppressed: bool) -> Result<(), Error> {
        let req = ActivateFrameworkRequest {
            framework_id: fw,
            suppressed,
        };
        call(&self.replicas, req, |mut a, req| async move {
            a.activate_framework(req).await
        })
        .await
        .map(|_| ())
    }

    /// Tells the allocator that framework `fw` wants no more offers (it disconnected or was torn down).
    /// A failure is ignored: the next allocator session activates only connected frameworks.
    pub async fn deactivate(&self, fw: &str) {
        let req = DeactivateFrameworkRequest {
            framework_id: fw.to_string(),
        };
        let _ = call(&self.replicas, req, |mut a, req| async move {
            a.deactivate_framework(req).await
        })
        .await;
    }

    /// SUPPRESS (`suppressed`) or REVIVE for framework `fw`.
    ///
    /// # Errors
    /// [`Error::Allocator`].
    pub async fn set_suppressed(&self, fw: &str, suppressed: bool) -> Result<(), Error> {
        call(&self.replicas, fw.to_string(), |mut a, fw| async move {
            if suppressed {
                a.suppress(SuppressRequest { framework_id: fw })
                    .await
                    .map(|_| ())
            } else {
                a.revive(ReviveRequest { framework_id: fw })
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// Returns `offer_ids` to the allocator with a filter of `refuse_seconds`, together with the tasks
    /// `launched` on them, and waits for the answer (so that the allocator knows of a task before its
    /// `TasksEnded`). A failure is logged: the allocator's next session starts from etcd, which has the tasks.
    pub async fn recover(
        &self,
        offer_ids: Vec<String>,
        refuse_seconds: f64,
        launched: Vec<LaunchedTask>,
    ) {
        if offer_ids.is_empty() && launched.is_empty() {
            return;
        }
        let req = RecoverOffersRequest {
            offer_ids,
            refuse_seconds,
            launched,
            more: Vec::new(),
        };
        let (reply, answer) = oneshot::channel();
        let answered = match self.recovering.send((req, tracing::Span::current(), reply)) {
            Ok(()) => answer.await.ok(),
            Err(_) => None,
        };
        let recovered = answered
            .unwrap_or_else(|| Err(RecoveryFailed("the offer recovery sender stopped".into())));
        if let Err(e) = recovered {
            tracing::warn!(error = %e, "cannot return offers to the allocator");
        }
    }

    /// Tells the allocator that these tasks ended (their resources are free), without waiting: they join the
    /// next `TasksEnded` call. Should the call be lost, the allocator still learns it from etcd when the
    /// records are written.
    pub fn tell_ended(&self, ended: Vec<EndedTask>) {
        if !ended.is_empty() {
            let _ = self.ended.send(ended);
        }
    }
}

/// Starts the task that returns offers to the allocator: one `RecoverOffers` call at a time, carrying every
/// recovery that queued up while the previous call was in flight (each ACCEPT returns its offer: at 8,000
/// tasks/s about 700 small calls a second). Each caller hears the call's answer. The call's span is a child
/// of the first recovery's. The task ends with the returned sender.
fn start_recovering(replicas: Replicas) -> mpsc::UnboundedSender<Recovery> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Recovery>();
    tokio::spawn(async move {
        while let Some((mut first, span, reply)) = rx.recv().await {
            let mut replies = vec![reply];
            while first.more.len() + 1 < MAX_RECOVERIES_PER_CALL {
                let Ok((more, _, reply)) = rx.try_recv() else {
                    break;
                };
                first.more.push(more);
                replies.push(reply);
            }
            let recovered = call(&replicas, first, |mut a, req| async move {
                a.recover_offers(req).await
            })
            .instrument(span)
            .await
            .map(|_| ())
            .map_err(|e| RecoveryFailed(e.to_string()));
            for reply in replies {
                let _ = reply.send(recovered.clone());
            }
        }
    });
    tx
}

/// Starts the task that tells the allocator of ended tasks: one `TasksEnded` call at a time and at most one
/// per [`TELL_ENDED_SPACING`], carrying every ended task that queued up meanwhile (at 9,000 tasks/s a call per
/// `UpdateBatch` made about 500 small calls a second; one at a time, still about 240). The task ends with the
/// returned sender.
fn start_telling_ended(replicas: Replicas) -> mpsc::UnboundedSender<Vec<EndedTask>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<EndedTask>>();
    tokio::spawn(async move {
        while let Some(mut tasks) = rx.recv().await {
            let started = tokio::time::Instant::now();
            while let Ok(more) = rx.try_recv() {
                tasks.extend(more);
            }
            for chunk in tasks.chunks(MAX_ENDED_PER_CALL) {
                let told = call(&replicas, chunk, |mut a, chunk| async move {
                    a.tasks_ended(TasksEndedRequest {
                        tasks: chunk.to_vec(),
                    })
                    .await
                });
                if let Err(e) = told.await {
                    tracing::debug!(error = %e, "cannot tell the allocator of ended tasks");
                }
            }
            tokio::time::sleep_until(started + TELL_ENDED_SPACING).await;
        }
    });
    tx
}
