//! `allot execute`: a one-off framework that runs a command (N instances), prints each state change, and
//! exits with the command's exit code, like `mesos-execute`. Ctrl-C tears the framework down (its tasks are
//! killed).

use crate::fit::{Pending, take_fitting};
use allot_sdk::{Driver, Offer, Scheduler, TaskState, TaskStatus};
use anyhow::Context;
use std::collections::{BTreeMap, VecDeque};
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
}

struct Execute {
    pending: VecDeque<Pending>,
    states: BTreeMap<String, TaskStatus>,
    total: usize,
    driver: Arc<Mutex<Option<Driver>>>,
}

impl Scheduler for Execute {
    fn registered(&mut self, driver: &Driver, framework_id: &str) {
        eprintln!("subscribed as framework {framework_id}");
        *self.driver.lock().expect("driver slot") = Some(driver.clone());
    }

    fn resource_offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
        for offer in offers {
            let offered =
                allot_common::convert::resources_from_proto(&offer.resources).unwrap_or_default();
            let tasks = take_fitting(&offered, &mut self.pending, usize::MAX);
            if tasks.is_empty() {
                // Nothing left to launch: stay away. Otherwise the offer is too small: no filter, so the agent
                // comes back as soon as it has more free.
                let refuse = if self.pending.is_empty() { 60.0 } else { 0.0 };
                driver.decline(vec![offer.offer_id], Some(refuse));
                continue;
            }
            for t in &tasks {
                eprintln!(
                    "launching {} on agent {} ({})",
                    t.info.task_id, offer.agent_id, offer.hostname
                );
            }
            driver.accept(
                vec![offer.offer_id],
                tasks.into_iter().map(|t| t.info).collect(),
                Some(0.0),
            );
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
        self.states.insert(status.task_id.clone(), status.clone());
        let done = self
            .states
            .values()
            .filter(|s| s.state().is_terminal())
            .count();
        if done == self.total && self.pending.is_empty() {
            driver.teardown();
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
    let mut pending = VecDeque::new();
    for i in 0..args.instances {
        let id = if args.instances == 1 {
            args.name.clone()
        } else {
            format!("{}-{i}", args.name)
        };
        let mut info = allot_sdk::shell_task(&id, &args.command, &args.resources)?;
        info.kill_grace_period = args.kill_grace_period;
        pending.push_back(Pending {
            info,
            resources: resources.clone(),
        });
    }
    let slot = Arc::new(Mutex::new(None::<Driver>));
    let scheduler = Execute {
        total: pending.len(),
        pending,
        states: BTreeMap::new(),
        driver: slot.clone(),
    };
    let config =
        allot_sdk::DriverConfig::new(broker, allot_sdk::framework_info(&args.name, &args.role));
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
