//! [`Fill`]: a framework that keeps every offer busy, for the benchmark and the scale tests.

use allot_proto::common::{TaskState, TaskStatus};
use allot_proto::scheduler as pb;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one [`Fill`] framework saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// When each task was accepted, and how long from that ACCEPT to its TASK_RUNNING.
    pub latencies: Vec<(Instant, Duration)>,
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
///
/// Paced ([`Fill::with_rate`]), it holds offers for about two seconds of launches (declining the surplus) and
/// launches from them on a 50 ms timer through a clone of the driver, as a framework with a steady stream of
/// work does.
pub struct Fill {
    state: Arc<Mutex<State>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// Everything a [`Fill`] knows, shared between the driver's callbacks and the pacing timer.
struct State {
    name: String,
    budget: usize,
    launched: usize,
    task: allot_resources::Resources,
    /// Every task's TaskInfo but its ID and name.
    template: allot_proto::common::TaskInfo,
    accepted_at: std::collections::HashMap<String, Instant>,
    ended: std::collections::HashSet<String>,
    /// At most this many tasks per second, counted from the first offer (None: as fast as offers come).
    rate: Option<f64>,
    started: Option<Instant>,
    /// Offers held for later launches (paced only), oldest first, with how many tasks each still fits.
    held: std::collections::VecDeque<(String, usize)>,
    seen: Seen,
}

/// A paced [`Fill`] holds offers for this many seconds of launches and declines what arrives beyond that
/// for [`SURPLUS_REFUSE_SECONDS`], so that the first framework to subscribe does not sit on the whole cluster.
const HOLD_SECONDS: f64 = 2.0;

/// The filter on surplus offers a paced [`Fill`] declines: long, as Mesos advises frameworks to decline what
/// they will not use (the remainders of its own accepts still come back, unfiltered, at the next cycle).
const SURPLUS_REFUSE_SECONDS: f64 = 60.0;

/// The filter on offers declined once every task is launched.
const DONE_REFUSE_SECONDS: f64 = 3600.0;

/// How often a paced [`Fill`] launches from its held offers.
const PACE_TICK: Duration = Duration::from_millis(50);

impl Fill {
    /// A scheduler named `name` that launches `budget` tasks.
    pub fn new(name: &str, budget: usize, task: allot_resources::Resources, command: &str) -> Fill {
        let state = State {
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
            held: Default::default(),
            seen: Seen::default(),
        };
        Fill {
            state: Arc::new(Mutex::new(state)),
            ticker: None,
        }
    }

    /// Launches at most `tasks_per_second` (averaged from the first offer), holding offers meanwhile.
    pub fn with_rate(self, tasks_per_second: f64) -> Fill {
        self.lock().rate = Some(tasks_per_second);
        self
    }

    /// What it saw (taken out: a second call returns an empty [`Seen`]).
    pub fn take_seen(&self) -> Seen {
        std::mem::take(&mut self.lock().seen)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fill state poisoned")
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        if let Some(t) = &self.ticker {
            t.abort();
        }
    }
}

impl State {
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
    fn fits(&self, offered: &allot_resources::Resources) -> usize {
        self.task
            .scalars()
            .filter(|(_, need)| *need > 0)
            .map(|(name, need)| (offered.scalar_milli(name) / need) as usize)
            .min()
            .unwrap_or(0)
    }

    /// Accepts `offer_id` with `n` tasks (the rest of the offer goes back with no filter).
    fn launch(&mut self, driver: &allot_sdk::Driver, offer_id: String, n: usize) {
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
        driver.accept(vec![offer_id], tasks, Some(0.0));
        if self.launched == self.budget {
            driver.suppress();
            // Nothing more to launch: what is still held goes back for good.
            let rest: Vec<String> = self.held.drain(..).map(|(id, _)| id).collect();
            if !rest.is_empty() {
                driver.decline(rest, Some(DONE_REFUSE_SECONDS));
            }
        }
    }

    /// How many tasks the held offers fit.
    fn held_slots(&self) -> usize {
        self.held.iter().map(|(_, n)| n).sum()
    }

    /// Paced: launches from held offers what the rate allows by now.
    fn launch_due(&mut self, driver: &allot_sdk::Driver) {
        let mut allowed = self.allowed();
        while allowed > 0 {
            let Some((offer_id, fits)) = self.held.pop_front() else {
                break;
            };
            let n = fits.min(allowed);
            allowed -= n;
            self.launch(driver, offer_id, n);
        }
    }
}

impl allot_sdk::Scheduler for Fill {
    fn resource_offers(&mut self, driver: &allot_sdk::Driver, offers: Vec<pb::Offer>) {
        let mut state = self.state.lock().expect("fill state poisoned");
        // Offers it will not use are declined together, one DECLINE per filter length: a framework that
        // declined 5,000 offers one call at a time would keep its acknowledgements waiting behind them.
        let mut declines: [(f64, Vec<String>); 3] = [
            (0.0, Vec::new()),
            (SURPLUS_REFUSE_SECONDS, Vec::new()),
            (DONE_REFUSE_SECONDS, Vec::new()),
        ];
        for o in offers {
            let offered =
                allot_common::convert::resources_from_proto(&o.resources).unwrap_or_default();
            let fits = state.fits(&offered);
            if state.launched == state.budget {
                declines[2].1.push(o.offer_id);
            } else if fits == 0 {
                declines[0].1.push(o.offer_id);
            } else if let Some(rate) = state.rate {
                // Hold up to HOLD_SECONDS of launches; the rest is for other frameworks.
                if state.held_slots() as f64 >= rate * HOLD_SECONDS {
                    declines[1].1.push(o.offer_id);
                } else {
                    state.held.push_back((o.offer_id, fits));
                }
            } else {
                let n = fits.min(state.allowed());
                state.launch(driver, o.offer_id, n);
            }
        }
        for (refuse, ids) in declines {
            if !ids.is_empty() {
                driver.decline(ids, Some(refuse));
            }
        }
        if state.rate.is_some() {
            state.launch_due(driver);
            drop(state);
            if self.ticker.is_none() {
                let (shared, driver) = (self.state.clone(), driver.clone());
                self.ticker = Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(PACE_TICK);
                    loop {
                        tick.tick().await;
                        let mut state = shared.lock().expect("fill state poisoned");
                        if state.launched == state.budget {
                            return;
                        }
                        state.launch_due(&driver);
                    }
                }));
            }
        }
    }

    fn offer_rescinded(&mut self, _driver: &allot_sdk::Driver, offer_id: &str) {
        self.lock().held.retain(|(id, _)| id != offer_id);
    }

    fn status_update(&mut self, driver: &allot_sdk::Driver, status: &TaskStatus) {
        let mut state = self.lock();
        let state = &mut *state;
        let task_state = status.state();
        if task_state == TaskState::TaskRunning {
            if let Some(t) = state.accepted_at.remove(&status.task_id) {
                let now = Instant::now();
                state.seen.latencies.push((t, now - t));
                state.seen.last_running = Some(now);
            }
        } else if task_state.is_terminal() {
            if !state.ended.insert(status.task_id.clone()) {
                state.seen.repeated += 1;
                return;
            }
            state.accepted_at.remove(&status.task_id);
            state.seen.terminal += 1;
            if task_state != TaskState::TaskFinished {
                state.seen.failed += 1;
            }
            if state.seen.terminal == state.budget {
                driver.teardown();
            }
        }
    }
}
