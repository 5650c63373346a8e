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
//!
//! The job is finished through every failure of the cluster. A task that ends through no fault of its own
//! (TASK_LOST, TASK_DROPPED, ... see [`crate::attempts`]) is launched again under a new task ID, up to
//! `--max-retries` times; the summary shows the attempts of each task. After every (re-)subscription the
//! batch reconciles its tasks in flight. It subscribes with a `failover_timeout` (`--failover-timeout`,
//! 600 s) and keeps a journal (see [`crate::journal`]) beside the job file: if the batch process itself is
//! killed, running the same command again within that time resumes the job as the same framework, without
//! running again a task that ended.

use crate::attempts::{Attempts, Next, attempt_id, given_up};
use crate::fit::{Pending, plan_offers};
use crate::journal::{Entry, Journal, Replayed};
use allot_sdk::{Driver, Offer, Scheduler, TaskState, TaskStatus};
use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prints `line` above the progress bar, or on stderr when there is none (`--quiet`).
fn say(bar: &ProgressBar, line: impl AsRef<str>) {
    if bar.is_hidden() {
        eprintln!("{}", line.as_ref());
    } else {
        bar.println(line);
    }
}

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
    /// How many times a task that ended through no fault of its own (TASK_LOST, TASK_DROPPED, TASK_GONE,
    /// TASK_UNKNOWN, its agent restarted or its executor was lost, or TASK_UNREACHABLE past
    /// `--unreachable-timeout`) is launched again, under a new task ID `<id>-retry<N>`. A task that fails by
    /// its own exit code is not.
    #[arg(long, default_value_t = 3)]
    max_retries: u32,
    /// Seconds a task may stay TASK_UNREACHABLE (its agent partitioned away) before it is launched again
    /// elsewhere; the old launch is killed if its agent comes back.
    #[arg(long, default_value_t = 60.0)]
    unreachable_timeout: f64,
    /// Seconds the cluster keeps this framework's tasks running after this process dies (its
    /// `failover_timeout`); a batch started again within that time with the same journal resumes the job.
    #[arg(long, default_value_t = 600.0)]
    failover_timeout: f64,
    /// The journal the batch resumes from after it was killed (default: the job file's path with
    /// `.journal` appended). Removed when the batch ends.
    #[arg(long)]
    journal: Option<PathBuf>,
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
    attempts: u32,
}

impl Outcome {
    fn entry(&self, job: &str) -> Entry {
        Entry::Ended {
            ended: job.to_string(),
            state: self.state.as_str_name().to_string(),
            exit_code: self.exit_code,
            agent: self.agent.clone(),
            seconds: self.seconds,
            message: self.message.clone(),
            attempts: self.attempts,
        }
    }

    fn of_entry(e: &Entry) -> Option<Outcome> {
        let Entry::Ended {
            state,
            exit_code,
            agent,
            seconds,
            message,
            attempts,
            ..
        } = e
        else {
            return None;
        };
        Some(Outcome {
            state: TaskState::from_str_name(state)?,
            exit_code: *exit_code,
            agent: agent.clone(),
            seconds: *seconds,
            message: message.clone(),
            attempts: *attempts,
        })
    }
}

/// A launch of a job task that may still end.
struct Running {
    agent: String,
    since: Instant,
}

struct Batch {
    /// Each job task, as written in the job file.
    jobs: BTreeMap<String, Pending>,
    /// Launches waiting for an offer (task IDs are attempt IDs), with their job task and attempt.
    pending: VecDeque<(Pending, String, u32)>,
    /// Launches that may still end, by task ID.
    running: HashMap<String, Running>,
    done: BTreeMap<String, Outcome>,
    attempts: Attempts,
    journal: Option<Journal>,
    framework_id: Option<String>,
    concurrency: usize,
    bar: ProgressBar,
    driver: Arc<Mutex<Option<Driver>>>,
    clock: Instant,
    /// Whether an offer filter (a decline or accept with `refuse_seconds`) or SUPPRESS may keep offers away
    /// since the last REVIVE: only then does room opening up call for one (a REVIVE per ended task is two
    /// calls and an allocation for nothing when no filter is set, issue 24).
    filtered: bool,
}

impl Batch {
    /// REVIVE, when a filter or SUPPRESS may be keeping offers away.
    fn revive_if_filtered(&mut self, driver: &Driver) {
        if std::mem::take(&mut self.filtered) {
            driver.revive();
        }
    }

    /// Seconds since the batch started, the clock of [`Attempts`].
    fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    /// Appends `entry` to the journal, if there is one; a journal that cannot be written is given up with a
    /// warning (the batch goes on, but cannot be resumed).
    fn journal(&mut self, entry: &Entry) {
        if let Some(j) = self.journal.as_mut()
            && let Err(e) = j.append(entry)
        {
            say(
                &self.bar,
                format!("warning: cannot write the journal ({e}); this batch cannot be resumed"),
            );
            self.journal = None;
        }
    }

    /// Queues attempt `attempt` of job task `job`, ahead of tasks never launched.
    fn queue_retry(&mut self, job: &str, attempt: u32) {
        let mut p = self.jobs[job].clone();
        p.info.task_id = attempt_id(job, attempt);
        self.pending.push_front((p, job.to_string(), attempt));
    }

    /// Acts on what [`Attempts`] decided for launch `task_id` (ended with `status`, or given up if `None`).
    fn settle(&mut self, driver: &Driver, task_id: &str, status: Option<&TaskStatus>, next: Next) {
        match next {
            Next::Nothing => {}
            Next::Kill(task, agent) => {
                say(
                    &self.bar,
                    format!(
                        "task {task} is back after it was launched again elsewhere: killing it"
                    ),
                );
                driver.kill(&task, &agent);
            }
            Next::Retry(job, attempt) => {
                self.running.remove(task_id);
                let why = status.map_or_else(
                    || "unreachable too long".to_string(),
                    |s| format!("{}: {}", s.state().as_str_name(), s.message),
                );
                say(
                    &self.bar,
                    format!(
                        "task {task_id} {why}; launching it again as {} (attempt {attempt})",
                        attempt_id(&job, attempt)
                    ),
                );
                self.queue_retry(&job, attempt);
                self.revive_if_filtered(driver);
            }
            Next::Ended(job, attempts) => {
                let ran = self.running.remove(task_id);
                let outcome = match status {
                    Some(s) => Outcome {
                        state: s.state(),
                        exit_code: s.exit_code,
                        agent: s.agent_id.clone(),
                        seconds: ran
                            .as_ref()
                            .map_or(0.0, |r| r.since.elapsed().as_secs_f64()),
                        message: s.message.clone(),
                        attempts,
                    },
                    None => Outcome {
                        state: TaskState::TaskUnreachable,
                        exit_code: None,
                        agent: ran.as_ref().map_or_else(String::new, |r| r.agent.clone()),
                        seconds: ran
                            .as_ref()
                            .map_or(0.0, |r| r.since.elapsed().as_secs_f64()),
                        message: "unreachable for longer than --unreachable-timeout".into(),
                        attempts,
                    },
                };
                if outcome.state != TaskState::TaskFinished {
                    say(
                        &self.bar,
                        format!(
                            "task {task_id} {}: {}",
                            outcome.state.as_str_name(),
                            outcome.message
                        ),
                    );
                }
                self.journal(&outcome.entry(&job));
                self.done.insert(job, outcome);
                self.bar.inc(1);
                if self.done.len() == self.jobs.len() {
                    driver.teardown();
                } else if !self.pending.is_empty() {
                    // Room opened up: ask for offers again (clears our filters).
                    self.revive_if_filtered(driver);
                }
            }
        }
        self.bar
            .set_message(format!("{} running", self.running.len()));
    }
}

impl Scheduler for Batch {
    fn registered(&mut self, driver: &Driver, framework_id: &str) {
        self.bar
            .println(format!("subscribed as framework {framework_id}"));
        *self.driver.lock().expect("driver slot") = Some(driver.clone());
        if self.framework_id.as_deref() != Some(framework_id) {
            self.framework_id = Some(framework_id.to_string());
            self.journal(&Entry::Subscribed {
                framework_id: framework_id.to_string(),
            });
        }
        // After every (re-)subscription, ask where every launch in flight stands: an update missed while
        // disconnected, or a launch that never took effect (TASK_UNKNOWN), comes back as an update.
        let live: Vec<(String, String)> = self
            .running
            .iter()
            .map(|(id, r)| (id.clone(), r.agent.clone()))
            .collect();
        if !live.is_empty() {
            driver.reconcile(live);
        }
        if !self.pending.is_empty() {
            self.filtered = false;
            driver.revive();
        }
    }

    fn resource_offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
        let room = self.concurrency.saturating_sub(self.running.len());
        let plan = plan_offers(offers, &mut self.pending, room, |p| &p.0.resources);
        for (offer, tasks) in plan.launches {
            let mut launches = Vec::with_capacity(tasks.len());
            for (t, job, attempt) in tasks {
                // Journaled before it is sent: a batch resumed after a kill knows the launch may exist.
                self.journal(&Entry::Launched {
                    launched: job.clone(),
                    attempt,
                });
                self.attempts.launched(&job, attempt);
                self.running.insert(
                    t.info.task_id.clone(),
                    Running {
                        agent: offer.agent_id.clone(),
                        since: Instant::now(),
                    },
                );
                launches.push(t.info);
            }
            driver.accept(vec![offer.offer_id], launches, Some(1.0));
            self.filtered = true;
        }
        // At the concurrency cap: stay away until a task ends (then we revive). An offer declined with room
        // to spare was too small for the next task: no filter, so that the agent comes back when it has more
        // free (a filter would keep us off exactly the agents where resources are about to free up).
        if !plan.at_cap.is_empty() {
            self.filtered = true;
            driver.decline(plan.at_cap, Some(5.0));
        }
        if !plan.too_small.is_empty() {
            driver.decline(plan.too_small, Some(0.0));
        }
        if self.pending.is_empty() {
            self.filtered = true;
            driver.suppress();
        }
        self.bar
            .set_message(format!("{} running", self.running.len()));
    }

    fn status_update(&mut self, driver: &Driver, status: &TaskStatus) {
        if let Some(r) = self.running.get_mut(&status.task_id)
            && !status.agent_id.is_empty()
        {
            r.agent = status.agent_id.clone();
        }
        let now = self.now();
        let next = self.attempts.update(status, now);
        self.settle(driver, &status.task_id, Some(status), next);
    }

    fn tick(&mut self, driver: &Driver) {
        let now = self.now();
        for next in self.attempts.overdue(now) {
            let Some(task_id) = given_up(&next) else {
                continue;
            };
            self.settle(driver, &task_id, None, next);
        }
    }

    fn error(&mut self, _driver: &Driver, message: &str) {
        say(&self.bar, format!("error: {message}"));
    }
}

/// A job file read and checked.
struct Loaded {
    file: JobFile,
    /// Each task, as a launch of attempt 1.
    jobs: BTreeMap<String, Pending>,
    /// The task IDs in the file's order.
    order: Vec<String>,
    /// The file's SHA-256 (see [`crate::journal`]).
    digest: String,
}

/// Reads and checks the job file.
fn load(args: &Args) -> anyhow::Result<Loaded> {
    let text = std::fs::read_to_string(&args.jobfile)
        .with_context(|| format!("cannot read {}", args.jobfile.display()))?;
    let digest = crate::journal::job_digest(&text);
    let job: JobFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid job file", args.jobfile.display()))?;
    if job.tasks.is_empty() {
        bail!("{} has no [[tasks]]", args.jobfile.display());
    }
    let default_res = job
        .resources
        .clone()
        .unwrap_or_else(|| "cpus:0.5;mem:64".into());
    let mut jobs = BTreeMap::new();
    let mut order = Vec::new();
    for t in &job.tasks {
        let res_text = t.resources.clone().unwrap_or_else(|| default_res.clone());
        let resources = res_text
            .parse()
            .with_context(|| format!("task {}: resources '{res_text}'", t.id))?;
        let info = allot_sdk::shell_task(&t.id, &t.command, &res_text)?;
        if jobs
            .insert(t.id.clone(), Pending { info, resources })
            .is_some()
        {
            bail!("task id '{}' appears twice", t.id);
        }
        order.push(t.id.clone());
    }
    // A retry's task ID must not name another task of the job.
    let ids: HashSet<&str> = order.iter().map(String::as_str).collect();
    for id in &order {
        if let Some((base, n)) = id.rsplit_once("-retry")
            && n.parse::<u32>().is_ok()
            && ids.contains(base)
        {
            bail!("task id '{id}' is taken by the retries of task '{base}'; rename it");
        }
    }
    Ok(Loaded {
        file: job,
        jobs,
        order,
        digest,
    })
}

/// Where a job stands when a batch starts.
#[derive(Default)]
struct Start {
    /// Launches to make, with their job task and attempt.
    pending: VecDeque<(Pending, String, u32)>,
    /// Launches that may be running, by task ID.
    running: HashMap<String, Running>,
    /// Job tasks that ended.
    done: BTreeMap<String, Outcome>,
    /// The job task and attempt of each launch in `running`.
    live: Vec<(String, u32)>,
}

/// The job's state at the start: fresh, or resumed from a journal (`replayed`). Launches the journal says
/// may be running are `running` (to reconcile); with `refused` (the cluster no longer knows the framework:
/// its tasks were killed), they are queued again as their next attempt.
fn resume(
    jobs: &BTreeMap<String, Pending>,
    order: &[String],
    replayed: &Replayed,
    refused: bool,
) -> Start {
    let Start {
        mut pending,
        mut running,
        mut done,
        mut live,
    } = Start::default();
    for id in order {
        if let Some(o) = replayed.ended.get(id).and_then(Outcome::of_entry) {
            done.insert(id.clone(), o);
            continue;
        }
        match replayed.launched.get(id) {
            Some(&attempt) if !refused => {
                running.insert(
                    attempt_id(id, attempt),
                    Running {
                        agent: String::new(),
                        since: Instant::now(),
                    },
                );
                live.push((id.clone(), attempt));
            }
            Some(&attempt) => {
                let mut p = jobs[id].clone();
                p.info.task_id = attempt_id(id, attempt + 1);
                pending.push_back((p, id.clone(), attempt + 1));
            }
            None => pending.push_back((jobs[id].clone(), id.clone(), 1)),
        }
    }
    Start {
        pending,
        running,
        done,
        live,
    }
}

/// Runs `allot batch`; returns the process exit code.
pub async fn run(broker: &str, args: Args, as_json: bool) -> anyhow::Result<i32> {
    let Loaded {
        file: job,
        jobs,
        order,
        digest,
    } = load(&args)?;
    let name = args.name.clone().or(job.name).unwrap_or_else(|| {
        args.jobfile
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or("batch".into())
    });
    let role = args.role.clone().or(job.role).unwrap_or_else(|| "*".into());
    let concurrency = args.concurrency.or(job.concurrency).unwrap_or(4).max(1);
    let total = jobs.len();
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
    let journal_path = args.journal.clone().unwrap_or_else(|| {
        let mut p = args.jobfile.clone().into_os_string();
        p.push(".journal");
        PathBuf::from(p)
    });
    let (mut journal, replayed) = match Journal::open(&journal_path) {
        Ok((j, r)) => (Some(j), r),
        Err(e) => {
            say(
                &bar,
                format!(
                    "warning: cannot open the journal {} ({e}); this batch cannot be resumed",
                    journal_path.display()
                ),
            );
            (None, Replayed::default())
        }
    };
    if let Some(was) = &replayed.job_sha256
        && *was != digest
    {
        bail!(
            "the journal {} belongs to another version of {} (it changed since that batch ran); \
             remove the journal to start the job afresh, or restore the job file to resume it",
            journal_path.display(),
            args.jobfile.display()
        );
    }
    if replayed.job_sha256.is_none()
        && let Some(j) = journal.as_mut()
        && let Err(e) = j.append(&Entry::Job {
            job_sha256: digest.clone(),
        })
    {
        say(
            &bar,
            format!("warning: cannot write the journal ({e}); this batch cannot be resumed"),
        );
        journal = None;
    }
    if replayed.framework_id.is_some() || !replayed.launched.is_empty() {
        say(
            &bar,
            format!(
                "resuming from {}: {} of {total} tasks ended, {} launched",
                journal_path.display(),
                replayed.ended.len(),
                replayed.launched.len()
            ),
        );
    }
    let slot = Arc::new(Mutex::new(None::<Driver>));
    let started = Instant::now();
    let mut refused = false;
    let finished = loop {
        let Start {
            pending,
            running,
            done,
            live,
        } = resume(&jobs, &order, &replayed, refused);
        let mut attempts = Attempts::new(args.max_retries, args.unreachable_timeout);
        for (job, attempt) in &live {
            attempts.launched(job, *attempt);
        }
        bar.set_position(done.len() as u64);
        let framework_id = if refused {
            None
        } else {
            replayed.framework_id.clone()
        };
        let scheduler = Batch {
            jobs: jobs.clone(),
            pending,
            running,
            done,
            attempts,
            journal: journal.take(),
            framework_id: framework_id.clone(),
            concurrency,
            bar: bar.clone(),
            driver: slot.clone(),
            clock: Instant::now(),
            filtered: false,
        };
        let mut info = allot_sdk::framework_info(&name, &role);
        info.failover_timeout = args.failover_timeout;
        info.framework_id = framework_id.clone().unwrap_or_default();
        let config = allot_sdk::DriverConfig::new(broker, info)
            .with_dialer(crate::ops::dialer(allot_sdk::DEFAULT_FRAMEWORK_PRINCIPAL)?);
        let run = allot_sdk::run(config, scheduler);
        tokio::pin!(run);
        let result = tokio::select! {
            r = &mut run => r,
            _ = tokio::signal::ctrl_c() => {
                say(&bar, "interrupted: tearing the framework down");
                if let Some(d) = slot.lock().expect("driver slot").clone() {
                    d.teardown();
                }
                let _ = run.await;
                bar.finish_and_clear();
                if let Ok((j, _)) = Journal::open(&journal_path) {
                    j.remove();
                }
                return Ok(130);
            }
        };
        match result {
            Ok(b) => break b,
            Err(allot_sdk::SdkError::Subscribe(why)) if framework_id.is_some() && !refused => {
                // The cluster no longer knows the framework (torn down, or its failover timeout ran out):
                // its tasks were killed. Start afresh; what was in flight is launched again.
                say(
                    &bar,
                    format!(
                        "framework {} cannot be resumed ({why}): subscribing afresh; tasks in flight are launched again",
                        framework_id.unwrap_or_default()
                    ),
                );
                refused = true;
                if let Ok((mut j, _)) = Journal::open(&journal_path) {
                    let _ = j.forget_framework();
                    journal = Some(j);
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    bar.finish_and_clear();
    if let Some(j) = finished.journal {
        j.remove();
    }
    let wall = started.elapsed().as_secs_f64();
    let ok = finished
        .done
        .values()
        .filter(|o| o.state == TaskState::TaskFinished)
        .count();
    // Task turnaround: each task's launch to its terminal update seen here, over the tasks that ran.
    let mut turnaround: Vec<f64> = finished
        .done
        .values()
        .filter(|o| o.seconds > 0.0)
        .map(|o| o.seconds)
        .collect();
    turnaround.sort_by(f64::total_cmp);
    let quantile = |q| allot_traces::query::quantile(&turnaround, q);
    let (p50, p99) = (quantile(0.5), quantile(0.99));
    if as_json {
        let tasks: Vec<_> = finished
            .done
            .iter()
            .map(|(id, o)| {
                serde_json::json!({"task_id": id, "state": o.state.as_str_name(), "exit_code": o.exit_code,
                                   "agent_id": o.agent, "seconds": o.seconds, "message": o.message,
                                   "attempts": o.attempts})
            })
            .collect();
        let summary = serde_json::json!({"framework": name, "role": role, "tasks": tasks, "finished": ok,
                                         "total": total, "seconds": wall,
                                         "turnaround_p50_seconds": p50, "turnaround_p99_seconds": p99});
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
            "TASK", "STATE", "EXIT", "ATTEMPTS", "SECONDS", "AGENT",
        ]);
        for (id, o) in &finished.done {
            t.add_row(vec![
                id.clone(),
                o.state.as_str_name().to_string(),
                o.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                o.attempts.to_string(),
                format!("{:.2}", o.seconds),
                o.agent.clone(),
            ]);
        }
        println!("{t}");
        let retried = finished.done.values().filter(|o| o.attempts > 1).count();
        let turnaround = match (p50, p99) {
            (Some(p50), Some(p99)) => {
                format!("; task turnaround (launch to end) p50 {p50:.2}s, p99 {p99:.2}s")
            }
            _ => String::new(),
        };
        println!(
            "{name} ({role}): {ok}/{total} tasks finished in {wall:.1}s ({retried} launched more than once){turnaround}"
        );
    }
    Ok(if ok == total { 0 } else { 1 })
}
