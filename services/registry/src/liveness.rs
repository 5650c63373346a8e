//! Agent liveness as heartbeat deadlines in memory.
//!
//! Each registered agent has a deadline, `agent_timeout` after its registration or last heartbeat. A
//! heartbeat moves the deadline and costs no etcd write; only the transitions are written: registration puts
//! `alive/<agent_id>`, and an agent past its deadline has that key deleted by the registry's sweeper. The
//! Mesos master keeps agent health the same way (its ping timeouts live in memory, and after a failover every
//! agent gets a fresh `agent_reregister_timeout`), as does Nomad's leader with its heartbeat timers; a restarted
//! registry likewise gives every agent whose `alive` key it finds a fresh deadline.
//!
//! Each entry also remembers the etcd modification revision of the agent's `alive` key, so the sweeper deletes
//! the key only if it is the one it judged: an agent that re-registered in between has a newer key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One agent's deadline and the revision of its `alive` key.
#[derive(Debug, Clone, Copy)]
struct Entry {
    deadline: Instant,
    revision: i64,
}

/// Heartbeat deadlines of the registered, reachable agents. Pure bookkeeping: the caller passes the time.
#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    agents: HashMap<String, Entry>,
}

impl Liveness {
    /// An empty table whose agents expire `timeout` after their last heartbeat.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            agents: HashMap::new(),
        }
    }

    /// Admits (or re-admits) `agent_id`, whose `alive` key is at etcd revision `revision`, with a full
    /// timeout from `now`. A re-registration replaces the previous entry.
    pub fn admit(&mut self, agent_id: String, revision: i64, now: Instant) {
        let deadline = now + self.timeout;
        self.agents.insert(agent_id, Entry { deadline, revision });
    }

    /// Moves `agent_id`'s deadline to `now` + timeout; `false` if the agent is not admitted (never
    /// registered, unregistered, or already expired), in which case it must register again.
    pub fn heartbeat(&mut self, agent_id: &str, now: Instant) -> bool {
        match self.agents.get_mut(agent_id) {
            Some(entry) => {
                entry.deadline = now + self.timeout;
                true
            }
            None => false,
        }
    }

    /// Removes `agent_id`; returns the revision of its `alive` key if it was admitted.
    pub fn forget(&mut self, agent_id: &str) -> Option<i64> {
        self.agents.remove(agent_id).map(|e| e.revision)
    }

    /// Removes and returns every agent whose deadline is before `now`, as `(agent_id, alive key revision)`,
    /// in no particular order.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, i64)> {
        let mut expired = Vec::new();
        self.agents.retain(|id, e| {
            let keep = e.deadline >= now;
            if !keep {
                expired.push((id.clone(), e.revision));
            }
            keep
        });
        expired
    }

    /// Whether `agent_id` is admitted: registered, and its heartbeats arrive in time.
    pub fn is_admitted(&self, agent_id: &str) -> bool {
        self.agents.contains_key(agent_id)
    }

    /// Puts back an expired agent whose key could not be deleted (etcd unavailable), already past its
    /// deadline so that the next sweep tries again; does nothing if the agent has registered again since.
    pub fn retry(&mut self, agent_id: String, revision: i64, now: Instant) {
        self.agents.entry(agent_id).or_insert(Entry {
            deadline: now,
            revision,
        });
    }

    /// How many agents are admitted.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is admitted.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn an_agent_expires_only_after_a_full_timeout_without_heartbeats() {
        let start = Instant::now();
        let mut live = Liveness::new(T);
        live.admit("a1".into(), 7, start);
        assert!(
            live.expire(start + T).is_empty(),
            "the deadline itself is not past"
        );
        assert!(live.heartbeat("a1", start + Duration::from_secs(8)));
        assert!(live.expire(start + Duration::from_secs(15)).is_empty());
        assert_eq!(
            live.expire(start + Duration::from_secs(19)),
            vec![("a1".to_string(), 7)]
        );
        assert!(live.is_empty());
        assert!(
            !live.heartbeat("a1", start + Duration::from_secs(20)),
            "an expired agent must register again"
        );
    }

    #[test]
    fn a_reregistration_replaces_the_revision_and_the_deadline() {
        let start = Instant::now();
        let mut live = Liveness::new(T);
        live.admit("a1".into(), 7, start);
        live.admit("a1".into(), 9, start + Duration::from_secs(5));
        assert!(live.expire(start + Duration::from_secs(12)).is_empty());
        assert_eq!(
            live.expire(start + Duration::from_secs(16)),
            vec![("a1".to_string(), 9)]
        );
    }

    #[test]
    fn only_expired_agents_are_returned_and_a_retry_never_overrides_a_new_registration() {
        let start = Instant::now();
        let mut live = Liveness::new(T);
        live.admit("old".into(), 1, start);
        live.admit("new".into(), 2, start + Duration::from_secs(6));
        let expired = live.expire(start + Duration::from_secs(11));
        assert_eq!(expired, vec![("old".to_string(), 1)]);
        assert_eq!(live.len(), 1);
        // The delete failed; the agent comes back already due.
        live.retry("old".into(), 1, start + Duration::from_secs(11));
        assert_eq!(
            live.expire(start + Duration::from_secs(12)),
            vec![("old".to_string(), 1)]
        );
        // It re-registered before the retry: the new entry stands.
        live.admit("new".into(), 5, start + Duration::from_secs(12));
        live.retry("new".into(), 2, start + Duration::from_secs(12));
        assert!(live.expire(start + Duration::from_secs(13)).is_empty());
        assert!(live.is_admitted("new"));
        assert_eq!(live.forget("new"), Some(5));
        assert_eq!(live.forget("new"), None);
    }
}
