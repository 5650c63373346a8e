//! `allot batch JOBFILE`: a batch framework. Runs every command of a job file, at most `concurrency` at a
//! time, shows a progress bar, and prints a summary table when all have ended. Exits 0 when every task
//! finished, 1 otherwise.
//!
//! Job file (TOML):
//!
//! ```toml
//! name = "checksums"          # framework name (default: the file's stem)
//! role = "analytics"          # default "*"
//! concurrency = 4             # default 4
//! resources = "cpus:0.5;mem:64"  # default per task
//!
//! [[tasks]]
//! id = "sha-1"
//! command = "sha256sum /usr/share/dict/words > out.txt"
//! resources = "cpus:1;mem:128"   # optional
//! ```

use crate::fit::{Pending, take_fitting};
use allot_sdk::{Driver, Offer, Scheduler, TaskState, TaskStatus};
use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `allot batch` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job file.
    jobfile: PathBuf,
    /// Role (overrides the file).
    #[arg(long)]
    role: Option<String>,
    /// Most tasks running at once (overrides the file).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Framework name (overrides the file).
    #[arg(long)]
    name: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: Option<String>,
    role: Option<String>,
    concurrency: Option<usize>,
    resources: Option<String>,
    tasks: Vec<JobTask>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JobTask {
    id: String,
    command: String,
    resources: Option<String>,
}

struct Outcome {
    state: TaskState,
    exit_code: Option<i32>,
    agent: String,
    seconds: f64,
    message: String,
}

struct Batch {
    pending: VecDeque<Pending>,
    running: HashMap<String, Instant>,
    done: BTreeMap<String, Outcome>,
    total: usize,
    concurrency: usize,
    bar: ProgressBar,
    driver: Arc<Mutex<Option<Driver>>>,
}

impl Scheduler for Batch {
    fn registered(&mut self, driver: &Driver, framework_id: &str) {
        self.bar
            .println(format!("subscribed as framework {framework_id}"));
        *self.driver.lock().expect("driver slot") = Some(driver.clone());
        if !self.pending.is_empty() {
            driver.revive();
        }
    }

    fn resource_offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
        for offer in offers {
            let room = self.concurrency.saturating_sub(self.running.len());
            let offered =
                allot_common::convert::resources_from_proto(&offer.resources).unwrap_or_default();
            let tasks = take_fitting(&offered, &mut self.pending, room);
            if tasks.is_empty() {
                // At the concurrency cap: stay away until a task ends (then we revive). Otherwise the offer is
                // too small for the next task: no filter, so that the agent comes back when it has more free.
                // A filter here would keep us off exactly the agents where resources are about to free up.
                let refuse = if room == 0 { 5.0 } else { 0.0 };
                driver.decline(vec![offer.offer_id], Some(refuse));
                continue;
            }
            for t in &tasks {
                self.running.insert(t.info.task_id.clone(), Instant::now());
            }
            driver.accept(
                vec![offer.offer_id],
                tasks.into_iter().map(|t| t.info).collect(),
                Some(1.0),
            );
        }
        if self.pending.is_empty() {
            driver.suppress();
        }
        self.bar
            .set_message(format!("{} running", self.running.len()));
    }

    fn status_update(&mut self, driver: &Driver, status: &TaskStatus) {
        let state = status.state();
        if !state.is_terminal() || self.done.contains_key(&status.task_id) {
            return;
        }
        let started = self.running.remove(&status.task_id);
        self.done.insert(
            status.task_id.clone(),
            Outcome {
                state,
                exit_code: status.exit_code,
                agent: status.agent_id.clone(),
                seconds: started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0),
                message: status.message.clone(),
            },
        );
        if state != TaskState::TaskFinished {
            self.bar.println(format!(
                "task {} {}: {}",
                status.task_id,
                state.as_str_name(),
                status.message
            ));
        }
        self.bar.inc(1);
        self.bar
            .set_message(format!("{} running", self.running.len()));
        if self.done.len() == self.total {
            driver.teardown();
        } else if !self.pending.is_empty() {
            // Room opened up: ask for offers again (clears our filters).
            driver.revive();
        }
    }

    fn error(&mut self, _driver: &Driver, message: &str) {
        self.bar.println(format!("error: {message}"));
    }
}

/// Runs `allot batch`; returns the process exit code.
pub async fn run(broker: &str, args: Args, as_json: bool) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(&args.jobfile)
        .with_context(|| format!("cannot read {}", args.jobfile.display()))?;
    let job: JobFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid job file", args.jobfile.display()))?;
    if job.tasks.is_empty() {
        bail!("{} has no [[tasks]]", args.jobfile.display());
    }
    let default_res = job
        .resources
        .clone()
        .unwrap_or_else(|| "cpus:0.5;mem:64".into());
    let mut pending = VecDeque::new();
    for t in &job.tasks {
        let res_text = t.resources.clone().unwrap_or_else(|| default_res.clone());
        let resources = res_text
            .parse()
            .with_context(|| format!("task {}: resources '{res_text}'", t.id))?;
        let info = allot_sdk::shell_task(&t.id, &t.command, &res_text)?;
        pending.push_back(Pending { info, resources });
    }
    let name = args.name.or(job.name).unwrap_or_else(|| {
        args.jobfile
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or("batch".into())
    });
    let role = args.role.or(job.role).unwrap_or_else(|| "*".into());
    let concurrency = args.concurrency.or(job.concurrency).unwrap_or(4).max(1);
    let total = pending.len();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(total as u64);
        b.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(format!("{name} ({role})"));
        b.enable_steady_tick(Duration::from_millis(200));
        b
    };
    let slot = Arc::new(Mutex::new(None::<Driver>));
    let started = Instant::now();
    let scheduler = Batch {
        pending,
        running: HashMap::new(),
        done: BTreeMap::new(),
        total,
        concurrency,
        bar: bar.clone(),
        driver: slot.clone(),
    };
    let config = allot_sdk::DriverConfig::new(broker, allot_sdk::framework_info(&name, &role));
    let run = allot_sdk::run(config, scheduler);
    tokio::pin!(run);
    let finished = tokio::select! {
        r = &mut run => r?,
        _ = tokio::signal::ctrl_c() => {
            bar.println("interrupted: tearing the framework down");
            if let Some(d) = slot.lock().expect("driver slot").clone() {
                d.teardown();
            }
            run.await?;
            bar.finish_and_clear();
            return Ok(130);
        }
    };
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    let ok = finished
        .done
        .values()
        .filter(|o| o.state == TaskState::TaskFinished)
        .count();
    if as_json {
        let tasks: Vec<_> = finished
            .done
            .iter()
            .map(|(id, o)| {
                serde_json::json!({"task_id": id, "state": o.state.as_str_name(), "exit_code": o.exit_code,
                                   "agent_id": o.agent, "seconds": o.seconds, "message": o.message})
            })
            .collect();
        let summary = serde_json::json!({"framework": name, "role": role, "tasks": tasks, "finished": ok,
                                         "total": total, "seconds": wall});
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_header(vec!["TASK", "STATE", "EXIT", "SECONDS", "AGENT"]);
        for (id, o) in &finished.done {
            t.add_row(vec![
                id.clone(),
                o.state.as_str_name().to_string(),
                o.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                format!("{:.2}", o.seconds),
                o.agent.clone(),
            ]);
        }
        println!("{t}");
        println!("{name} ({role}): {ok}/{total} tasks finished in {wall:.1}s");
    }
    Ok(if ok == total { 0 } else { 1 })
}
