//! `allot execute`: a one-off framework that runs a command (N instances), prints each state change, and
//! exits with the command's exit code, like `mesos-execute`. Ctrl-C tears the framework down (its tasks are
//! killed). An instance that ends through no fault of its own (see [`crate::attempts`]) is launched again
//! under a new task ID, up to `--max-retries` times.

use crate::attempts::{Attempts, Next, attempt_id, given_up};
use crate::fit::{Pending, plan_offers};
use allot_sdk::{Driver, Offer, Scheduler, TaskState, TaskStatus};
use anyhow::Context;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// `allot execute` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The command, run by `/bin/sh -c`.
    #[arg(long)]
    command: String,
    /// Framework and task name.
    #[arg(long, default_value = "allot-execute")]
    name: String,
    /// Resources per instance, e.g. `cpus:0.5;mem:128` (mem in MiB).
    #[arg(long, default_value = "cpus:0.1;mem:32")]
    resources: String,
    /// Number of instances.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Role to receive offers for.
    #[arg(long, default_value = "*")]
    role: String,
    /// Seconds between SIGTERM and SIGKILL when the task is killed.
    #[arg(long, default_value_t = 3.0)]
    kill_grace_period: f64,
    /// How many times an instance that ended through no fault of its own (TASK_LOST, TASK_DROPPED, its agent
    /// restarted, TASK_UNREACHABLE past `--unreachable-timeout`, ...) is launched again.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// Seconds an instance may stay TASK_UNREACHABLE before it is launched again elsewhere.
    #[arg(long, default_value_t = 60.0)]
    unreachable_timeout: f64,
}

struct Execute {
    /// Each instance as first launched, by instance (job) ID.
    instances: BTreeMap<String, Pending>,
    /// Launches waiting for an offer, with their instance and attempt.
    pending: VecDeque<(Pending, String, u32)>,
    /// Launches in flight: task ID -> agent ID.
    running: HashMap<String, String>,
    /// The final status of each instance that ended for good.
    states: BTreeMap<String, TaskStatus>,
    attempts: Attempts,
    driver: Arc<Mutex<Option<Driver>>>,
    clock: std::time::Instant,
}

impl Execute {
    fn settle(&mut self, driver: &Driver, task_id: &str, status: Option<&TaskStatus>, next: Next) {
        match next {
            Next::Nothing => {}
            Next::Kill(task, agent) => driver.kill(&task, &agent),
            Next::Retry(job, attempt) => {
                self.running.remove(task_id);
                let mut p = self.instances[&job].clone();
                p.info.task_id = attempt_id(&job, attempt);
                eprintln!("launching {job} again as {}", p.info.task_id);
                self.pending.push_front((p, job, attempt));
                driver.revive();
            }
            Next::Ended(job, _) => {
                let agent = self.running.remove(task_id).unwrap_or_default();
                let status = status.cloned().unwrap_or_else(|| TaskStatus {
                    task_id: task_id.to_string(),
                    state: TaskState::TaskUnreachable as i32,
                    message: "unreachable for longer than --unreachable-timeout".into(),
                    agent_id: agent,
                    ..Default::default()
                });
                self.states.insert(job, status);
                if self.states.len() == self.instances.len() {
                    driver.teardown();
                }
            }
        }
    }
}

impl Scheduler for Execute {
    fn registered(&mut self, driver: &Driver, framework_id: &str) {
        eprintln!("subscribed as framework {framework_id}");
        *self.driver.lock().expect("driver slot") = Some(driver.clone());
        let live: Vec<(String, String)> = self
            .running
            .iter()
            .map(|(t, a)| (t.clone(), a.clone()))
            .collect();
        if !live.is_empty() {
            driver.reconcile(live);
        }
        if !self.pending.is_empty() {
            driver.revive();
        }
    }

    fn resource_offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
        let plan = plan_offers(offers, &mut self.pending, usize::MAX, |p| &p.0.resources);
        for (offer, tasks) in plan.launches {
            let mut launches = Vec::with_capacity(tasks.len());
            for (t, job, attempt) in tasks {
                eprintln!(
                    "launching {} on agent {} ({})",
                    t.info.task_id, offer.agent_id, offer.hostname
                );
                self.attempts.launched(&job, attempt);
                self.running
                    .insert(t.info.task_id.clone(), offer.agent_id.clone());
                launches.push(t.info);
            }
            driver.accept(vec![offer.offer_id], launches, Some(0.0));
        }
        if !plan.too_small.is_empty() {
            // Nothing left to launch: stay away. Otherwise the offers are too small: no filter, so that their
            // agents come back as soon as they have more free.
            let refuse = if self.pending.is_empty() { 60.0 } else { 0.0 };
            driver.decline(plan.too_small, Some(refuse));
        }
        if self.pending.is_empty() {
            driver.suppress();
        }
    }

    fn status_update(&mut self, driver: &Driver, status: &TaskStatus) {
        let state = status.state();
        let msg = if status.message.is_empty() {
            String::new()
        } else {
            format!(" ({})", status.message)
        };
        eprintln!("task {}: {}{msg}", status.task_id, state.as_str_name());
        let now = self.clock.elapsed().as_secs_f64();
        let next = self.attempts.update(status, now);
        self.settle(driver, &status.task_id, Some(status), next);
    }

    fn tick(&mut self, driver: &Driver) {
        let now = self.clock.elapsed().as_secs_f64();
        for next in self.attempts.overdue(now) {
            let Some(task_id) = given_up(&next) else {
                continue;
            };
            eprintln!("task {task_id}: unreachable for longer than --unreachable-timeout");
            self.settle(driver, &task_id, None, next);
        }
    }

    fn error(&mut self, _driver: &Driver, message: &str) {
        eprintln!("error: {message}");
    }
}

/// Runs `allot execute`; returns the process exit code.
pub async fn run(broker: &str, args: Args) -> anyhow::Result<i32> {
    let resources: allot_resources::Resources = args
        .resources
        .parse()
        .with_context(|| format!("--resources '{}'", args.resources))?;
    let mut instances = BTreeMap::new();
    let mut pending = VecDeque::new();
    for i in 0..args.instances {
        let id = if args.instances == 1 {
            args.name.clone()
        } else {
            format!("{}-{i}", args.name)
        };
        let mut info = allot_sdk::shell_task(&id, &args.command, &args.resources)?;
        info.kill_grace_period = args.kill_grace_period;
        let p = Pending {
            info,
            resources: resources.clone(),
        };
        instances.insert(id.clone(), p.clone());
        pending.push_back((p, id, 1));
    }
    let slot = Arc::new(Mutex::new(None::<Driver>));
    let scheduler = Execute {
        instances,
        pending,
        running: HashMap::new(),
        states: BTreeMap::new(),
        attempts: Attempts::new(args.max_retries, args.unreachable_timeout),
        driver: slot.clone(),
        clock: std::time::Instant::now(),
    };
    let config =
        allot_sdk::DriverConfig::new(broker, allot_sdk::framework_info(&args.name, &args.role))
            .with_dialer(crate::ops::dialer(allot_sdk::DEFAULT_FRAMEWORK_PRINCIPAL)?);
    let run = allot_sdk::run(config, scheduler);
    tokio::pin!(run);
    let finished = tokio::select! {
        r = &mut run => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: tearing the framework down");
            if let Some(d) = slot.lock().expect("driver slot").clone() {
                d.teardown();
            }
            run.await?;
            return Ok(130);
        }
    };
    let mut code = 0;
    for s in finished.states.values() {
        match (s.state(), s.exit_code) {
            (TaskState::TaskFinished, _) => {}
            (_, Some(c)) if c != 0 => {
                if code == 0 {
                    code = c;
                }
            }
            _ => {
                if code == 0 {
                    code = 1;
                }
            }
        }
    }
    Ok(code)
}
