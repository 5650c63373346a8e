//! The agent's status update stream to the leading broker (`StatusUpdates.Stream`): one long-lived
//! bidirectional gRPC stream that carries the agent's status updates up and their acknowledgements down, in
//! place of a call for each batch of updates and another for each batch of acknowledgements (issue 24: per-call
//! transport was most of the broker's CPU per task).
//!
//! Delivery stays at least once and in order: the status update manager ([`crate::status`]) keeps every update
//! until its acknowledgement comes, only a task's oldest unacknowledged update is in flight, and the stream is
//! only a faster way to send and to hear back. When the stream breaks (the broker died or lost leadership, the
//! connection broke, or the broker was silent for [`SILENCE`]: it sends a heartbeat every second), the agent
//! forgets it, makes every unacknowledged update due again at once (some may have gone down the broken
//! stream) and opens another, to the leader a standby names. Meanwhile updates go by `UpdateBatch` calls and
//! acknowledgements come by `Agent.AcknowledgeStatusUpdates` calls, as before the stream.

use crate::Agent;
use allot_proto::agent::{
    StatusUpdateRequest, StatusUpdateStreamRequest, status_updates_client::StatusUpdatesClient,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the agent waits for any message down its stream (the broker's heartbeat comes every second)
/// before it takes the stream for dead.
pub const SILENCE: Duration = Duration::from_secs(3);

/// How long opening a stream may take (the broker answers once it has read the first message).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// How many messages the agent queues on its stream before it sends by call instead.
const BUFFER: usize = 256;

/// The agent's open stream, if any: the agent ID it was opened for and its sender.
#[derive(Default)]
pub struct Uplink {
    open: Mutex<Option<(String, tokio::sync::mpsc::Sender<StatusUpdateStreamRequest>)>>,
}

impl Uplink {
    /// Sends `updates` up the open stream if there is one for their agent with room for them; gives them back
    /// otherwise (the caller sends them by call). The stream's end forgets the sender under the same lock, so
    /// an update sent here before the end is re-sent after it ([`keep_open`]).
    ///
    /// # Errors
    /// `updates`, unsent.
    pub fn send(&self, updates: Vec<StatusUpdateRequest>) -> Result<(), Vec<StatusUpdateRequest>> {
        let open = self.open.lock().expect("uplink poisoned");
        let Some((agent, tx)) = open.as_ref() else {
            return Err(updates);
        };
        let theirs = updates
            .iter()
            .all(|u| u.status.as_ref().is_some_and(|s| &s.agent_id == agent));
        if !theirs {
            return Err(updates);
        }
        tx.try_send(StatusUpdateStreamRequest {
            agent_id: String::new(),
            updates,
        })
        .map_err(|e| e.into_inner().updates)
    }

    /// Whether a stream is open.
    pub fn is_open(&self) -> bool {
        self.open.lock().expect("uplink poisoned").is_some()
    }

    fn set(&self, stream: Option<(String, tokio::sync::mpsc::Sender<StatusUpdateStreamRequest>)>) {
        *self.open.lock().expect("uplink poisoned") = stream;
    }
}

/// Keeps `agent`'s stream open to the leading broker until aborted (see the module docs): opens it once the
/// agent has an ID, applies the acknowledgements that come down it, and after its end re-sends every
/// unacknowledged update and opens another, after a backoff (100 ms doubling to 1 s, with jitter; at once,
/// once in a row, to a leader a standby names).
pub async fn keep_open(agent: Arc<Agent>) {
    let (first, max) = (Duration::from_millis(100), Duration::from_secs(1));
    let mut delays = allot_common::jittered_retry_delays(first, max);
    let mut redirected = false;
    loop {
        let id = agent.id();
        if id.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(BUFFER);
        let hello = StatusUpdateStreamRequest {
            agent_id: id.clone(),
            updates: Vec::new(),
        };
        if tx.try_send(hello).is_err() {
            return;
        }
        let mut client = StatusUpdatesClient::new(agent.brokers.channel())
            .max_decoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES);
        let opened = tokio::time::timeout(
            OPEN_TIMEOUT,
            client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        match opened {
            Ok(Ok(response)) => {
                tracing::debug!(broker = %agent.brokers.current(), "status update stream open");
                agent.uplink.set(Some((id.clone(), tx)));
                let mut down = response.into_inner();
                loop {
                    match tokio::time::timeout(SILENCE, down.message()).await {
                        Ok(Ok(Some(m))) => {
                            delays = allot_common::jittered_retry_delays(first, max);
                            redirected = false;
                            if !m.acknowledgements.is_empty() {
                                agent.acknowledged(m.acknowledgements);
                            }
                            if agent.id() != id {
                                break;
                            }
                        }
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e.message(), "status update stream broke");
                            agent.brokers.failed(&e);
                            break;
                        }
                        Err(_) => {
                            tracing::debug!(silence = ?SILENCE, "the broker went silent on the status update stream");
                            break;
                        }
                    }
                }
                agent.uplink.set(None);
                // Whatever went up the broken stream unacknowledged goes again, by call or on the next stream.
                agent.updates.resend_all();
            }
            Ok(Err(e)) => {
                agent.brokers.failed(&e);
                if !redirected
                    && allot_common::grpc::standby_names(&e).is_some_and(|l| !l.is_empty())
                {
                    redirected = true;
                    continue;
                }
                redirected = false;
                tracing::debug!(error = %e.message(), "cannot open the status update stream");
            }
            Err(_) => tracing::debug!("opening the status update stream timed out"),
        }
        tokio::time::sleep(delays.next().unwrap_or(max)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(agent: &str) -> StatusUpdateRequest {
        StatusUpdateRequest {
            status: Some(allot_proto::common::TaskStatus {
                agent_id: agent.into(),
                task_id: "t".into(),
                framework_id: "fw".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn updates_go_up_an_open_stream_of_their_agent_and_come_back_otherwise() {
        let uplink = Uplink::default();
        // No stream: the caller sends by call.
        assert_eq!(uplink.send(vec![update("a1")]).unwrap_err().len(), 1);
        let (tx, mut rx) = tokio::sync::mpsc::channel(BUFFER);
        uplink.set(Some(("a1".into(), tx)));
        assert!(uplink.is_open());
        uplink.send(vec![update("a1"), update("a1")]).unwrap();
        assert_eq!(rx.recv().await.unwrap().updates.len(), 2);
        // An update of another agent ID (re-registered since the stream opened) goes by call.
        assert!(uplink.send(vec![update("a1"), update("a2")]).is_err());
        // A stream whose other end went gives them back.
        drop(rx);
        assert!(uplink.send(vec![update("a1")]).is_err());
        uplink.set(None);
        assert!(!uplink.is_open());
    }
}
