//! The launch fence: an agent runs a launch only while it is sure the cluster still counts it as the
//! registration the launch was meant for.
//!
//! A network partition can hold a launch up: the offer-broker's call times out, the registry declares the
//! agent unreachable, the broker gives the task up (TASK_UNREACHABLE, then TASK_LOST when the agent comes
//! back without it) and the framework launches it again elsewhere; meanwhile the launch's bytes wait in a
//! TCP send buffer and reach the agent when the partition heals. Run then, the task would run twice. Two
//! checks stop it, the idea of fencing tokens (Kleppmann, "How to do distributed locking", 2016; Chubby's
//! sequencers, Burrows OSDI 2006):
//!
//! - **The registration.** Every registration of the agent has its own number (the registry's
//!   `RegisterAgentResponse.registration`, published as the value of the agent's `alive` key); the broker
//!   stamps each launch with the number it knows (`LaunchTasksRequest.agent_registration`). A launch for
//!   another registration is refused: the agent has registered again since (it restarted, or it came back
//!   after it was declared unreachable).
//! - **Confirmation.** Between the heal and the agent's re-registration, the registration number has not
//!   changed yet, but the registry may already have declared the agent unreachable. The registry does so
//!   only after a whole agent timeout without a heartbeat, counted from when it received the last one; so an
//!   agent whose last heartbeat (or registration) the registry answered was *sent* less than an agent timeout
//!   ago cannot have been declared unreachable yet, and one past that refuses every launch until the
//!   registry answers again.
//!
//! A refused launch is FAILED_PRECONDITION; the broker sends it again while it still counts the task as
//! launching, and gives it up when the agent's liveness changes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a launch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The agent has not registered yet.
    #[error("the agent is not registered yet")]
    NotRegistered,
    /// The launch names another registration of this agent.
    #[error(
        "the launch is for registration {requested} of this agent, which is at registration {current} \
         (it registered again since)"
    )]
    OtherRegistration {
        /// The registration the launch names.
        requested: u64,
        /// The agent's registration.
        current: u64,
    },
    /// The registry has not answered a heartbeat sent within the last agent timeout.
    #[error(
        "the registry has not confirmed this agent for {:.1} s (agent timeout {:.1} s): it may count the \
         agent unreachable",
        since.as_secs_f64(),
        timeout.as_secs_f64()
    )]
    Unconfirmed {
        /// Since the last confirmed heartbeat or registration was sent.
        since: Duration,
        /// The registry's agent timeout.
        timeout: Duration,
    },
}

/// The agent's registration and when the registry last confirmed it; see the module documentation.
#[derive(Debug, Default)]
pub struct Fence(Mutex<Option<Held>>);

#[derive(Debug, Clone, Copy)]
struct Held {
    registration: u64,
    timeout: Duration,
    /// When the last request the registry answered (registration or heartbeat) was sent.
    confirmed: Instant,
}

impl Fence {
    /// The registry registered the agent as `registration` with agent timeout `timeout`, answering a
    /// request sent at `sent`.
    pub fn registered(&self, registration: u64, timeout: Duration, sent: Instant) {
        *self.0.lock().expect("fence poisoned") = Some(Held {
            registration,
            timeout,
            confirmed: sent,
        });
    }

    /// The registry answered a heartbeat sent at `sent`.
    pub fn confirmed(&self, sent: Instant) {
        if let Some(h) = self.0.lock().expect("fence poisoned").as_mut() {
            h.confirmed = h.confirmed.max(sent);
        }
    }

    /// The agent's current registration (0 before the first).
    pub fn registration(&self) -> u64 {
        self.0
            .lock()
            .expect("fence poisoned")
            .map_or(0, |h| h.registration)
    }

    /// Whether a launch for registration `requested` (0: any) may run at `now`.
    ///
    /// # Errors
    /// The [`Refusal`] when it may not.
    pub fn admits(&self, requested: u64, now: Instant) -> Result<(), Refusal> {
        let Some(h) = *self.0.lock().expect("fence poisoned") else {
            return Err(Refusal::NotRegistered);
        };
        if requested != 0 && requested != h.registration {
            return Err(Refusal::OtherRegistration {
                requested,
                current: h.registration,
            });
        }
        let since = now.saturating_duration_since(h.confirmed);
        if since >= h.timeout {
            return Err(Refusal::Unconfirmed {
                since,
                timeout: h.timeout,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn nothing_is_admitted_before_the_first_registration() {
        let f = Fence::default();
        assert_eq!(f.admits(0, Instant::now()), Err(Refusal::NotRegistered));
        assert_eq!(f.registration(), 0);
    }

    #[test]
    fn a_launch_for_the_current_registration_or_any_is_admitted_while_confirmed() {
        let f = Fence::default();
        let t0 = Instant::now();
        f.registered(7, TIMEOUT, t0);
        assert_eq!(f.admits(7, t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(f.admits(0, t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(
            f.admits(6, t0),
            Err(Refusal::OtherRegistration {
                requested: 6,
                current: 7
            })
        );
    }

    #[test]
    fn launches_are_refused_once_the_last_confirmed_heartbeat_is_a_timeout_old() {
        let f = Fence::default();
        let t0 = Instant::now();
        f.registered(7, TIMEOUT, t0);
        f.confirmed(t0 + Duration::from_secs(3));
        // An answer to an older heartbeat arriving late does not move the confirmation back.
        f.confirmed(t0 + Duration::from_secs(1));
        assert_eq!(f.admits(7, t0 + Duration::from_millis(7_900)), Ok(()));
        assert!(matches!(
            f.admits(7, t0 + Duration::from_secs(8)),
            Err(Refusal::Unconfirmed { .. })
        ));
        // The partition heals: the agent registers again, and only the new registration is admitted.
        let t1 = t0 + Duration::from_secs(20);
        f.registered(9, TIMEOUT, t1);
        assert!(matches!(
            f.admits(7, t1),
            Err(Refusal::OtherRegistration { .. })
        ));
        assert_eq!(f.admits(9, t1), Ok(()));
    }
}
