//! [`Fill`]: a framework that keeps every offer busy, for the benchmark and the scale tests.

use allot_proto::common::{TaskState, TaskStatus};
use allot_proto::scheduler as pb;
use std::time::{Duration, Instant};

/// What one [`Fill`] framework saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// ACCEPT → TASK_RUNNING, per task.
    pub latencies: Vec<Duration>,
    /// When the first ACCEPT was made.
    pub first_accept: Option<Instant>,
    /// When the last TASK_RUNNING was seen.
    pub last_running: Option<Instant>,
    /// Tasks seen in a terminal state (each counted once; updates are delivered at least once).
    pub terminal: usize,
    /// Terminal updates seen more than once.
    pub repeated: usize,
    /// Tasks seen in a terminal state other than TASK_FINISHED.
    pub failed: usize,
}

/// An SDK scheduler that launches as many tasks as fit in each offer (tasks `<name>-<n>` running `command` with
/// `task` resources) until it has launched `budget`, then suppresses offers, and tears the framework down when
/// all have ended. It records when each task was accepted and when it was seen TASK_RUNNING.
pub struct Fill {
    name: String,
    budget: usize,
    launched: usize,
    task: allot_policy::Resources,
    /// Every task's TaskInfo but its ID and name.
    template: allot_proto::common::TaskInfo,
    accepted_at: std::collections::HashMap<String, Instant>,
    ended: std::collections::HashSet<String>,
    /// At most this many tasks per second, counted from the first offer (None: as fast as offers come).
    rate: Option<f64>,
    started: Option<Instant>,
    /// What it saw.
    pub seen: Seen,
}

impl Fill {
    /// A scheduler named `name` that launches `budget` tasks.
    pub fn new(name: &str, budget: usize, task: allot_policy::Resources, command: &str) -> Fill {
        Fill {
            name: name.to_string(),
            budget,
            launched: 0,
            template: allot_proto::common::TaskInfo {
                resources: allot_common::convert::resources_to_proto(&task),
                ..allot_sdk::shell_task("", command, "cpus:1").expect("valid resources")
            },
            task,
            accepted_at: Default::default(),
            ended: Default::default(),
            rate: None,
            started: None,
            seen: Seen::default(),
        }
    }

    /// Launches at most `tasks_per_second` (averaged from the first offer; what an offer cannot take yet is
    /// declined without a filter and comes back at the next allocation cycle).
    pub fn with_rate(mut self, tasks_per_second: f64) -> Fill {
        self.rate = Some(tasks_per_second);
        self
    }

    /// How many more tasks the rate allows now.
    fn allowed(&mut self) -> usize {
        let left = self.budget - self.launched;
        match self.rate {
            None => left,
            Some(rate) => {
                let start = *self.started.get_or_insert_with(Instant::now);
                let due = (rate * start.elapsed().as_secs_f64()).ceil() as usize;
                due.saturating_sub(self.launched).min(left)
            }
        }
    }

    /// How many tasks fit in `offered`.
    fn fits(&self, offered: &allot_policy::Resources) -> usize {
        self.task
            .scalars()
            .filter(|(_, need)| *need > 0)
            .map(|(name, need)| (offered.scalar_milli(name) / need) as usize)
            .min()
            .unwrap_or(0)
    }
}

impl allot_sdk::Scheduler for Fill {
    fn resource_offers(&mut self, driver: &allot_sdk::Driver, offers: Vec<pb::Offer>) {
        for o in offers {
            let offered =
                allot_common::convert::resources_from_proto(&o.resources).unwrap_or_default();
            let n = self.fits(&offered).min(self.allowed());
            if n == 0 {
                let refuse = if self.launched == self.budget {
                    3600.0
                } else {
                    0.0
                };
                driver.decline(vec![o.offer_id], Some(refuse));
                continue;
            }
            let now = Instant::now();
            self.seen.first_accept.get_or_insert(now);
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let id = format!("{}-{}", self.name, self.launched + i);
                    self.accepted_at.insert(id.clone(), now);
                    allot_proto::common::TaskInfo {
                        name: id.clone(),
                        task_id: id,
                        ..self.template.clone()
                    }
                })
                .collect();
            self.launched += n;
            driver.accept(vec![o.offer_id], tasks, Some(0.0));
            if self.launched == self.budget {
                driver.suppress();
            }
        }
    }

    fn status_update(&mut self, driver: &allot_sdk::Driver, status: &TaskStatus) {
        let state = status.state();
        if state == TaskState::TaskRunning {
            if let Some(t) = self.accepted_at.remove(&status.task_id) {
                let now = Instant::now();
                self.seen.latencies.push(now - t);
                self.seen.last_running = Some(now);
            }
        } else if state.is_terminal() {
            if !self.ended.insert(status.task_id.clone()) {
                self.seen.repeated += 1;
                return;
            }
            self.accepted_at.remove(&status.task_id);
            self.seen.terminal += 1;
            if state != TaskState::TaskFinished {
                self.seen.failed += 1;
            }
            if self.seen.terminal == self.budget {
                driver.teardown();
            }
        }
    }
}
