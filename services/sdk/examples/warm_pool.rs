//! A batch of tasks that share warm worker processes: a framework with an executor of its own (issue 26).
//!
//! The scheduler launches `--tasks N` tasks (each counts the primes below a bound) onto executor `warm-pool`,
//! which is this same program started by each agent once: every task an agent gets runs on a thread of that
//! one process instead of a process of its own. When all are done the scheduler asks each executor, by
//! framework message, how many tasks it ran, prints the answers, and tears the framework down (which shuts
//! the executors down).
//!
//! Against a running cluster (`bash deploy/local/run.sh --cluster-only`, then `source .allot/demo/cluster.env`
//! for `ALLOT_BROKER` and `ALLOT_TLS_DIR`):
//!
//! ```text
//! cargo run -p allot-sdk --example warm_pool -- --tasks 12
//! ```

use allot_sdk::executor::{Executor, ExecutorDriver, run_executor};
use allot_sdk::{
    CommandInfo, Driver, DriverConfig, ExecutorInfo, Offer, Resource, Scheduler, TaskInfo,
    TaskState, TaskStatus,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// CPUs and MiB of memory each task asks for, and the executor's own (charged with each task).
const TASK: (f64, f64) = (0.1, 16.0);
const EXECUTOR: (f64, f64) = (0.05, 32.0);

fn resources((cpus, mem): (f64, f64)) -> Vec<Resource> {
    let scalar = |name: &str, scalar| Resource {
        name: name.into(),
        scalar,
        ..Default::default()
    };
    vec![scalar("cpus", cpus), scalar("mem", mem)]
}

fn scalar(offer: &Offer, name: &str) -> f64 {
    offer
        .resources
        .iter()
        .filter(|r| r.name == name)
        .map(|r| r.scalar)
        .sum()
}

struct Pool {
    /// Bounds of the tasks not launched yet.
    pending: Vec<u64>,
    total: usize,
    finished: usize,
    /// (agent, executor) pairs that ran tasks, and their answers.
    executors: BTreeSet<(String, String)>,
    answers: BTreeMap<String, String>,
    asked: bool,
    executor: ExecutorInfo,
}

impl Scheduler for Pool {
    fn resource_offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
        let per_task = (TASK.0 + EXECUTOR.0, TASK.1 + EXECUTOR.1);
        for offer in offers {
            let fit = ((scalar(&offer, "cpus") / per_task.0).floor())
                .min((scalar(&offer, "mem") / per_task.1).floor()) as usize;
            let n = fit.min(self.pending.len());
            if n == 0 {
                driver.decline(vec![offer.offer_id], Some(5.0));
                continue;
            }
            let tasks = self
                .pending
                .drain(..n)
                .map(|bound| TaskInfo {
                    name: format!("primes below {bound}"),
                    task_id: format!("primes-{bound}"),
                    agent_id: offer.agent_id.clone(),
                    resources: resources(TASK),
                    executor: Some(self.executor.clone()),
                    data: bound.to_string().into_bytes(),
                    ..Default::default()
                })
                .collect();
            driver.accept(vec![offer.offer_id], tasks, Some(5.0));
        }
    }

    fn status_update(&mut self, driver: &Driver, status: &TaskStatus) {
        match status.state() {
            TaskState::TaskFinished => {
                self.finished += 1;
                println!(
                    "{}: {}",
                    status.task_id,
                    String::from_utf8_lossy(&status.data)
                );
                self.executors
                    .insert((status.agent_id.clone(), status.executor_id.clone()));
            }
            s if s.is_terminal() => {
                eprintln!(
                    "{} ended {}: {}",
                    status.task_id,
                    s.as_str_name(),
                    status.message
                );
                driver.teardown();
            }
            _ => {}
        }
        if self.finished == self.total && !self.asked {
            self.asked = true;
            for (agent, executor) in &self.executors {
                driver.send_framework_message(executor, agent, b"stats".to_vec());
            }
        }
    }

    fn framework_message(&mut self, driver: &Driver, _executor: &str, agent: &str, data: &[u8]) {
        self.answers.insert(
            agent.to_string(),
            String::from_utf8_lossy(data).into_owned(),
        );
        if self.answers.len() == self.executors.len() {
            for (agent, answer) in &self.answers {
                println!("executor on agent {agent}: {answer}");
            }
            println!(
                "{} tasks ran in {} executor processes",
                self.total,
                self.answers.len()
            );
            driver.teardown();
        }
    }

    fn error(&mut self, _driver: &Driver, message: &str) {
        eprintln!("error: {message}");
    }
}

/// The executor: each task counts primes on a thread of this one process.
struct Worker {
    ran: Arc<AtomicUsize>,
}

impl Executor for Worker {
    fn launch_task(&mut self, driver: &ExecutorDriver, task: TaskInfo) {
        driver.send_status_update(&task.task_id, TaskState::TaskRunning, "");
        let (driver, ran) = (driver.clone(), self.ran.clone());
        std::thread::spawn(move || {
            let bound: u64 = String::from_utf8_lossy(&task.data).parse().unwrap_or(1000);
            let primes = (2..bound)
                .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
                .count();
            ran.fetch_add(1, Ordering::Relaxed);
            driver.send_status(TaskStatus {
                task_id: task.task_id,
                state: TaskState::TaskFinished as i32,
                data: format!("{primes} primes, in executor pid {}", std::process::id())
                    .into_bytes(),
                ..Default::default()
            });
        });
    }

    fn kill_task(&mut self, driver: &ExecutorDriver, task_id: &str) {
        // A prime count cannot be stopped half way; it is reported killed and its result dropped.
        driver.send_status_update(task_id, TaskState::TaskKilled, "killed");
    }

    fn framework_message(&mut self, driver: &ExecutorDriver, _data: &[u8]) {
        let answer = format!(
            "pid {} ran {} tasks",
            std::process::id(),
            self.ran.load(Ordering::Relaxed)
        );
        driver.send_framework_message(answer.into_bytes());
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("MESOS_EXECUTOR_ID").is_some() {
        run_executor(Worker {
            ran: Arc::default(),
        })
        .await?;
        return Ok(());
    }
    let args: Vec<String> = std::env::args().collect();
    let tasks: u64 = args
        .iter()
        .position(|a| a == "--tasks")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(12);
    let me = std::env::current_exe()?.display().to_string();
    let pool = Pool {
        pending: (1..=tasks).map(|i| 20_000 * i).collect(),
        total: tasks as usize,
        finished: 0,
        executors: BTreeSet::new(),
        answers: BTreeMap::new(),
        asked: false,
        executor: ExecutorInfo {
            executor_id: "warm-pool".into(),
            name: "warm pool worker".into(),
            command: Some(CommandInfo {
                value: me.clone(),
                arguments: vec![me],
                shell: false,
                ..Default::default()
            }),
            resources: resources(EXECUTOR),
            ..Default::default()
        },
    };
    let broker = std::env::var("ALLOT_BROKER").unwrap_or_else(|_| "127.0.0.1:5052".into());
    let config = DriverConfig::new(&broker, allot_sdk::framework_info("warm-pool", "*"));
    allot_sdk::run(config, pool).await?;
    Ok(())
}
