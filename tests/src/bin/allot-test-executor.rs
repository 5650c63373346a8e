//! A framework's own executor for the tests (`tests/tests/executors.rs`), on the SDK's executor driver. Every
//! task it is given runs in this one process; what the task does is its `TaskInfo.data`:
//! - `run:<seconds>`: TASK_RUNNING, then TASK_FINISHED after that long;
//! - `fail`: TASK_RUNNING, then TASK_FAILED;
//! - `hang`: TASK_RUNNING, then nothing until KILL (TASK_KILLED);
//! - `exit:<code>`: TASK_RUNNING, then the executor exits with that code, leaving its tasks to the agent.
//!
//! Each TASK_RUNNING carries the executor's pid in `data` (so a test sees which process ran a task). It says
//! `hello <pid>` to its framework when it subscribes, answers a framework message `m` with `echo:m`, and on
//! SHUTDOWN ends its live tasks TASK_KILLED.

use allot_sdk::executor::{Executor, ExecutorDriver, Registered, run_executor};
use allot_sdk::{TaskInfo, TaskState, TaskStatus};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Test {
    live: Arc<Mutex<HashSet<String>>>,
}

fn report(driver: &ExecutorDriver, task_id: &str, state: TaskState, data: Vec<u8>) {
    driver.send_status(TaskStatus {
        task_id: task_id.into(),
        state: state as i32,
        data,
        ..Default::default()
    });
}

impl Executor for Test {
    fn registered(&mut self, driver: &ExecutorDriver, r: &Registered) {
        eprintln!("registered on agent {} ({})", r.agent_id, r.agent_hostname);
        driver.send_framework_message(format!("hello {}", std::process::id()).into_bytes());
    }

    fn launch_task(&mut self, driver: &ExecutorDriver, task: TaskInfo) {
        let what = String::from_utf8_lossy(&task.data).into_owned();
        let id = task.task_id.clone();
        self.live.lock().unwrap().insert(id.clone());
        let pid = std::process::id().to_string().into_bytes();
        report(driver, &id, TaskState::TaskRunning, pid);
        let (driver, live) = (driver.clone(), self.live.clone());
        tokio::spawn(async move {
            let end = |state| {
                if live.lock().unwrap().remove(&id) {
                    report(&driver, &id, state, Vec::new());
                }
            };
            if let Some(secs) = what.strip_prefix("run:") {
                let secs: f64 = secs.parse().unwrap_or(0.0);
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                end(TaskState::TaskFinished);
            } else if what == "fail" {
                end(TaskState::TaskFailed);
            } else if let Some(code) = what.strip_prefix("exit:") {
                // Give TASK_RUNNING time to reach the agent.
                tokio::time::sleep(Duration::from_millis(300)).await;
                std::process::exit(code.parse().unwrap_or(1));
            }
        });
    }

    fn kill_task(&mut self, driver: &ExecutorDriver, task_id: &str) {
        if self.live.lock().unwrap().remove(task_id) {
            report(driver, task_id, TaskState::TaskKilled, Vec::new());
        }
    }

    fn framework_message(&mut self, driver: &ExecutorDriver, data: &[u8]) {
        let mut echo = b"echo:".to_vec();
        echo.extend_from_slice(data);
        driver.send_framework_message(echo);
    }

    fn shutdown(&mut self, driver: &ExecutorDriver) {
        for id in self.live.lock().unwrap().drain() {
            report(driver, &id, TaskState::TaskKilled, Vec::new());
        }
    }

    fn error(&mut self, _driver: &ExecutorDriver, message: &str) {
        eprintln!("error: {message}");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let live = Arc::default();
    match run_executor(Test { live }).await {
        Ok(_) => eprintln!("executor done"),
        Err(e) => {
            eprintln!("executor failed: {e}");
            std::process::exit(2);
        }
    }
}
