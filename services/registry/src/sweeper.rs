//! The sweeper: every period, agents past their heartbeat deadline become unreachable, which etcd publishes
//! by the deletion of their `alive/<agent_id>` key (watched by the allocator and the offer-broker).

use crate::liveness::Liveness;
use crate::metrics::M;
use allot_server::Store;
use allot_server::store::Kind;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Compare-and-delete transactions of the sweeper hold this many agents each (≤ etcd's `--max-txn-ops`).
const SWEEP_CHUNK: usize = 64;

/// The period of the sweeper for agents that time out after `agent_timeout`: a tenth of it, between 50 ms and
/// 1 s, so that an agent is declared unreachable at most a tenth late.
pub fn period(agent_timeout: Duration) -> Duration {
    (agent_timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Every `period`, deletes the `alive` keys of agents past their deadline. Runs until aborted.
pub async fn sweep_forever(
    store: Store,
    liveness: std::sync::Arc<Mutex<Liveness>>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweep(&store, &liveness).await;
    }
}

/// One sweep: takes the expired agents out of `liveness` and deletes their `alive` keys, each only if it is
/// still at the revision the registry admitted (an agent that registered again since keeps its new key). Keys
/// that cannot be deleted (etcd unavailable) go back into the table for the next sweep.
pub async fn sweep(store: &Store, liveness: &Mutex<Liveness>) {
    let expired = liveness
        .lock()
        .expect("liveness poisoned")
        .expire(Instant::now());
    let mut timed_out = 0usize;
    for chunk in expired.chunks(SWEEP_CHUNK) {
        let items: Vec<(String, i64)> = chunk
            .iter()
            .map(|(id, rev)| (store.key(Kind::Alive, id), *rev))
            .collect();
        match store.delete_if_unchanged(&items).await {
            Ok(deleted) => {
                for ((id, _), gone) in chunk.iter().zip(deleted) {
                    if !gone {
                        tracing::debug!(agent_id = %id, "alive key changed since; left alone");
                        continue;
                    }
                    timed_out += 1;
                    if timed_out <= 10 {
                        tracing::warn!(agent_id = %id, "agent missed its heartbeats past agent_timeout; unreachable");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(agents = chunk.len(), error = %e, "cannot mark agents unreachable; retrying");
                let mut liveness = liveness.lock().expect("liveness poisoned");
                for (id, rev) in chunk {
                    liveness.retry(id.clone(), *rev, Instant::now());
                }
            }
        }
    }
    if timed_out > 10 {
        tracing::warn!(agents = timed_out, "agents timed out in one sweep");
    }
    M.timeouts.inc_by(timed_out as u64);
    M.reachable
        .set(liveness.lock().expect("liveness poisoned").len() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_is_a_tenth_of_the_timeout_within_bounds() {
        assert_eq!(period(Duration::from_secs(15)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_secs(5)), Duration::from_millis(500));
        assert_eq!(
            period(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }
}
