//! Building blocks of the fault-injection suite (`tests/tests/faults.rs`): a TCP [`Proxy`] that cuts a
//! connection path as a network partition would, and a [`Workload`] scheduler that runs many short tasks
//! through the SDK and logs every update it sees.

use allot_proto::common::{TaskInfo, TaskState, TaskStatus};
use allot_proto::scheduler as pb;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A TCP proxy to `target` that a test can cut or slow down: while cut, every connection through it is dropped
/// and new ones are closed at once, as a network partition would; [`Proxy::heal`] lets connections through
/// again. [`Proxy::delay`] holds every byte for a while in each direction, as a long round trip or a stalled
/// peer would.
pub struct Proxy {
    /// Where to connect instead of `target`.
    pub addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    delay: Arc<watch::Sender<Duration>>,
    _accept: allot_common::AbortOnDrop,
}

impl Proxy {
    /// A proxy to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(watch::Sender::new(false));
        let delay = Arc::new(watch::Sender::new(Duration::ZERO));
        let (state, delays) = (cut.clone(), delay.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *state.borrow() {
                    continue;
                }
                let mut cut = state.subscribe();
                let delays = delays.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = pump(in_read, out_write, delays.clone()) => {}
                        _ = pump(out_read, in_write, delays) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            delay,
            _accept: allot_common::AbortOnDrop(accept),
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// From now on, holds every byte `one_way` before passing it on, in each direction (a round trip takes
    /// twice that); `Duration::ZERO` passes bytes straight through again. Order is kept.
    pub fn delay(&self, one_way: Duration) {
        self.delay.send_replace(one_way);
    }
}

/// Copies `from` to `to`, each chunk held for the delay current when it was read, until either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<watch::Sender<Duration>>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let due = tokio::time::Instant::now() + *delay.borrow();
            if tx.send((due, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    // Reading ends first (the peer closed); what was read is still written, late as it is.
    tokio::join!(read, write);
}

/// What a [`Workload`] saw, shared with the test.
#[derive(Debug, Default)]
pub struct WorkloadLog {
    /// Every update of each task ID, in arrival order (repeats of one update included: delivery is
    /// at-least-once).
    pub updates: HashMap<String, Vec<TaskState>>,
    /// When each task ID's ACCEPT was made.
    pub launched_at: HashMap<String, Instant>,
    /// When each task ID was first seen TASK_RUNNING.
    pub running_at: HashMap<String, Instant>,
    /// Task IDs the broker answered TASK_UNKNOWN for (their ACCEPT never took effect); the work went again
    /// under a new ID.
    pub unknown: Vec<String>,
    /// Task IDs the broker answered TASK_DROPPED for (refused before it reached an agent: etcd could not
    /// record it, or its offer was gone); the work went again under a new ID.
    pub dropped: Vec<String>,
    /// Work items whose task (under one of its IDs) reached a terminal state.
    pub finished: std::collections::HashSet<usize>,
    /// Errors the driver reported (failed calls during faults).
    pub errors: Vec<String>,
    /// The reason of each task ID's first terminal update, when it has one.
    pub reasons: HashMap<String, String>,
}

impl WorkloadLog {
    /// Task IDs whose updates include more than one distinct terminal state, or anything after a terminal
    /// state other than a repeat of it.
    pub fn inconsistent(&self) -> Vec<(String, Vec<TaskState>)> {
        self.updates
            .iter()
            .filter(|(_, states)| {
                let first_terminal = states.iter().position(|s| s.is_terminal());
                first_terminal.is_some_and(|i| states[i..].iter().any(|s| *s != states[i]))
            })
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect()
    }

    /// The terminal state of `id`, if it reached one.
    pub fn terminal(&self, id: &str) -> Option<TaskState> {
        self.updates
            .get(id)
            .and_then(|s| s.iter().find(|s| s.is_terminal()).copied())
    }

    /// How long after `since` the first task launched after `since` was seen TASK_RUNNING: the time the
    /// cluster took to allocate and launch again after a fault injected at `since`.
    pub fn back_after(&self, since: Instant) -> Option<Duration> {
        self.launched_at
            .iter()
            .filter(|(_, at)| **at >= since)
            .filter_map(|(id, _)| self.running_at.get(id))
            .min()
            .map(|t| t.duration_since(since))
    }
}

/// An SDK scheduler running `count` work items, each a task `command` with `cpus` and `mem` (MiB), up to
/// `per_offer` per offer, then tearing the framework down once every item ended.
///
/// It behaves as a careful Mesos framework does: every few seconds it explicitly reconciles the tasks it
/// launched and heard nothing of (an ACCEPT can fail during a fault), and a task the broker answers
/// TASK_UNKNOWN or TASK_DROPPED for (the launch never took effect) is launched again under a new ID. A work
/// item whose task ends in any other terminal state is done (it is not retried): the suite checks that each
/// launch ends exactly once, not that all succeed.
pub struct Workload {
    queue: VecDeque<(usize, u32)>,
    make: Box<dyn Fn(&str) -> TaskInfo + Send>,
    per_offer: usize,
    count: usize,
    agent_of: HashMap<String, String>,
    last_reconcile: Instant,
    /// What it saw.
    pub log: Arc<Mutex<WorkloadLog>>,
}

impl Workload {
    /// `count` items, each task built by `make(task_id)`, at most `per_offer` per offer.
    pub fn new(
        count: usize,
        per_offer: usize,
        make: impl Fn(&str) -> TaskInfo + Send + 'static,
    ) -> Workload {
        Workload {
            queue: (0..count).map(|i| (i, 0)).collect(),
            make: Box::new(make),
            per_offer,
            count,
            agent_of: HashMap::new(),
            last_reconcile: Instant::now(),
            log: Arc::new(Mutex::new(WorkloadLog::default())),
        }
    }

    fn id(item: usize, attempt: u32) -> String {
        format!("w{item}-{attempt}")
    }

    /// Reconciles the tasks launched more than 3 s ago that have no update yet.
    fn reconcile_silent(&mut self, driver: &allot_sdk::Driver) {
        if self.last_reconcile.elapsed() < Duration::from_secs(3) {
            return;
        }
        self.last_reconcile = Instant::now();
        let log = self.log.lock().expect("log");
        let silent: Vec<(String, String)> = log
            .launched_at
            .iter()
            .filter(|(id, at)| {
                at.elapsed() > Duration::from_secs(3) && !log.updates.contains_key(*id)
            })
            .map(|(id, _)| {
                (
                    id.clone(),
                    self.agent_of.get(id).cloned().unwrap_or_default(),
                )
            })
            .collect();
        drop(log);
        if !silent.is_empty() {
            driver.reconcile(silent);
        }
    }
}

impl allot_sdk::Scheduler for Workload {
    fn registered(&mut self, driver: &allot_sdk::Driver, _framework_id: &str) {
        // After a (re-)subscription, ask at once about every task still silent.
        self.last_reconcile = Instant::now() - Duration::from_secs(10);
        self.reconcile_silent(driver);
    }

    fn resource_offers(&mut self, driver: &allot_sdk::Driver, offers: Vec<pb::Offer>) {
        self.reconcile_silent(driver);
        for o in offers {
            let resources = allot_common::convert::resources_from_proto;
            let mut left = resources(&o.resources).unwrap_or_default();
            let mut tasks = Vec::new();
            while tasks.len() < self.per_offer {
                let Some(&(item, attempt)) = self.queue.front() else {
                    break;
                };
                let mut t = (self.make)(&Self::id(item, attempt));
                let need = resources(&t.resources).unwrap_or_default();
                if !left.contains(&need) {
                    break;
                }
                left.subtract(&need);
                self.queue.pop_front();
                t.agent_id = o.agent_id.clone();
                tasks.push(t);
            }
            if tasks.is_empty() {
                driver.decline(vec![o.offer_id], Some(0.0));
                continue;
            }
            let now = Instant::now();
            let mut log = self.log.lock().expect("log");
            for t in &tasks {
                log.launched_at.insert(t.task_id.clone(), now);
                self.agent_of.insert(t.task_id.clone(), o.agent_id.clone());
            }
            drop(log);
            driver.accept(vec![o.offer_id], tasks, Some(0.0));
        }
    }

    fn status_update(&mut self, driver: &allot_sdk::Driver, status: &TaskStatus) {
        let state = status.state();
        let mut log = self.log.lock().expect("log");
        if state == TaskState::TaskUnknown {
            // The ACCEPT never took effect: launch the work again under a new ID (once per unknown ID).
            if !log.unknown.contains(&status.task_id)
                && !log.updates.contains_key(&status.task_id)
                && !log.dropped.contains(&status.task_id)
            {
                log.unknown.push(status.task_id.clone());
                if let Some((item, attempt)) = parse_id(&status.task_id) {
                    self.queue.push_back((item, attempt + 1));
                }
            }
            return;
        }
        log.updates
            .entry(status.task_id.clone())
            .or_default()
            .push(state);
        if state == TaskState::TaskRunning {
            log.running_at
                .entry(status.task_id.clone())
                .or_insert_with(Instant::now);
        }
        if state.is_terminal() && !status.reason.is_empty() {
            log.reasons
                .entry(status.task_id.clone())
                .or_insert_with(|| status.reason.clone());
        }
        if state == TaskState::TaskDropped {
            // Refused before it reached an agent: launch the work again under a new ID, once per ID (a
            // reconciliation may have answered TASK_UNKNOWN for it first, and the work went again then).
            if !log.dropped.contains(&status.task_id) && !log.unknown.contains(&status.task_id) {
                log.dropped.push(status.task_id.clone());
                if let Some((item, attempt)) = parse_id(&status.task_id) {
                    self.queue.push_back((item, attempt + 1));
                }
            }
            return;
        }
        if state.is_terminal()
            && let Some((item, _)) = parse_id(&status.task_id)
            && log.finished.insert(item)
            && log.finished.len() == self.count
        {
            driver.teardown();
        }
    }

    fn error(&mut self, _driver: &allot_sdk::Driver, message: &str) {
        self.log
            .lock()
            .expect("log")
            .errors
            .push(message.to_string());
    }
}

fn parse_id(id: &str) -> Option<(usize, u32)> {
    let (item, attempt) = id.strip_prefix('w')?.split_once('-')?;
    Some((item.parse().ok()?, attempt.parse().ok()?))
}
