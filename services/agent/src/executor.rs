//! The command executor: runs one task as a process group in its sandbox, under isolation, and reports its
//! states: TASK_STARTING, TASK_RUNNING, then TASK_FINISHED (exit 0), TASK_FAILED (non-zero exit, a signal, or
//! the memory limit), or TASK_KILLED (a KILL: SIGTERM, then SIGKILL after the grace period).
//!
//! The sandbox is `<work_dir>/sandboxes/<framework_id>/<task_id>/`, holding `stdout` and `stderr`; the command
//! runs there with `ALLOT_SANDBOX` (and `MESOS_SANDBOX`, for Mesos-era scripts) pointing at it.

use crate::isolation::{Isolator, TaskIsolation};
use allot_proto::common::{StatusSource, TaskInfo, TaskState, TaskStatus};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the executor needs to run one task.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Framework ID.
    pub framework_id: String,
    /// Agent ID.
    pub agent_id: String,
    /// The task.
    pub task: TaskInfo,
    /// The sandbox directory.
    pub sandbox: PathBuf,
    /// Seconds between SIGTERM and SIGKILL on a kill.
    pub grace: Duration,
    /// Where to checkpoint the task's pid once it runs (a restarted agent kills what it cannot reattach to);
    /// `None` to not checkpoint.
    pub pid_file: Option<PathBuf>,
}

/// The sandbox of `task_id` of `framework_id` under `work_dir`.
pub fn sandbox_path(work_dir: &Path, framework_id: &str, task_id: &str) -> PathBuf {
    work_dir.join("sandboxes").join(framework_id).join(task_id)
}

fn status(
    l: &Launch,
    state: TaskState,
    message: String,
    reason: &str,
    exit_code: Option<i32>,
) -> TaskStatus {
    TaskStatus {
        task_id: l.task.task_id.clone(),
        state: state as i32,
        message,
        source: StatusSource::SourceExecutor as i32,
        reason: reason.to_string(),
        agent_id: l.agent_id.clone(),
        framework_id: l.framework_id.clone(),
        timestamp: allot_common::now_secs(),
        uuid: allot_common::new_id("u").into_bytes(),
        exit_code,
    }
}

fn scalar(task: &TaskInfo, name: &str) -> f64 {
    task.resources
        .iter()
        .filter(|r| r.name == name)
        .map(|r| r.scalar)
        .sum()
}

/// Runs the task to its end, sending every status to `updates` in order. `kill` starts a graceful kill.
pub async fn run_task(
    l: Launch,
    isolator: Isolator,
    kill: CancellationToken,
    updates: mpsc::UnboundedSender<TaskStatus>,
) {
    let send = |s: TaskStatus| {
        let _ = updates.send(s);
    };
    let fail = |msg: String, reason: &str| status(&l, TaskState::TaskFailed, msg, reason, None);
    if let Err(e) = std::fs::create_dir_all(&l.sandbox) {
        send(fail(
            format!("cannot create sandbox {}: {e}", l.sandbox.display()),
            "REASON_EXECUTOR_TERMINATED",
        ));
        return;
    }
    let (cpus, mem) = (scalar(&l.task, "cpus"), scalar(&l.task, "mem"));
    let cgroup_name = format!("{}.{}", l.framework_id, l.task.task_id);
    let iso = match isolator.prepare(&cgroup_name, cpus, mem) {
        Ok(i) => i,
        Err(e) => {
            send(fail(
                format!("cannot isolate the task: {e}"),
                "REASON_CONTAINER_LAUNCH_FAILED",
            ));
            return;
        }
    };
    let cmd_info = l.task.command.clone().unwrap_or_default();
    let mut argv: Vec<String> = if cmd_info.shell || cmd_info.arguments.is_empty() {
        vec!["/bin/sh".into(), "-c".into(), cmd_info.value.clone()]
    } else {
        let mut v = vec![cmd_info.value.clone()];
        v.extend(cmd_info.arguments.iter().skip(1).cloned());
        v
    };
    if let TaskIsolation::Prlimit { program, bytes } = &iso {
        let mut wrapped = vec![program.clone(), format!("--as={bytes}"), "--".into()];
        wrapped.append(&mut argv);
        argv = wrapped;
    }
    // With a cgroup, the command waits at a gate until its process is in the cgroup, so that nothing it forks
    // can escape: `sh` reads one line from a pipe, then execs the command. The agent writes the line after
    // attaching the pid.
    let gated = matches!(iso, TaskIsolation::Cgroup(_));
    if gated {
        let mut wrapped: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            "read -r _ || true; exec \"$@\"".into(),
            "allot-executor".into(),
        ];
        wrapped.append(&mut argv);
        argv = wrapped;
    }
    let open = |name: &str| std::fs::File::create(l.sandbox.join(name));
    let (stdout, stderr) = match (open("stdout"), open("stderr")) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            send(fail(
                format!("cannot create stdout/stderr in the sandbox: {e}"),
                "REASON_EXECUTOR_TERMINATED",
            ));
            iso.release();
            return;
        }
    };
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&l.sandbox)
        .stdin(if gated { Stdio::piped() } else { Stdio::null() })
        .stdout(stdout)
        .stderr(stderr)
        .envs(&cmd_info.environment)
        .env("ALLOT_SANDBOX", &l.sandbox)
        .env("MESOS_SANDBOX", &l.sandbox)
        .env("ALLOT_TASK_ID", &l.task.task_id)
        .env("ALLOT_FRAMEWORK_ID", &l.framework_id)
        .env("ALLOT_AGENT_ID", &l.agent_id)
        // No kill_on_drop: a crashed agent leaves its tasks running, as `kill -9` of the agent process would; the
        // next agent process ends them (`end_leftover_tasks`), and a graceful stop kills them explicitly.
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            send(fail(
                format!("cannot start '{}': {e}", argv[0]),
                "REASON_EXECUTOR_TERMINATED",
            ));
            iso.release();
            return;
        }
    };
    let pid = child.id().unwrap_or(0);
    if let Some(file) = &l.pid_file {
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(file, pid.to_string()));
        if let Err(e) = written {
            tracing::warn!(task = %l.task.task_id, error = %e, "cannot checkpoint the task's pid");
        }
    }
    if let Err(e) = iso.attach(pid) {
        tracing::warn!(task = %l.task.task_id, error = %e, "cannot move the task into its cgroup");
    }
    if let Some(mut gate) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let _ = gate.write_all(b"go\n").await;
    }
    let pgid = Pid::from_raw(pid as i32);
    send(status(&l, TaskState::TaskStarting, String::new(), "", None));
    send(status(
        &l,
        TaskState::TaskRunning,
        format!("pid {pid}"),
        "",
        None,
    ));
    tracing::info!(task = %l.task.task_id, pid, "task running");

    let mut killed = false;
    let exit = tokio::select! {
        r = child.wait() => r,
        _ = kill.cancelled() => {
            killed = true;
            let _ = killpg(pgid, Signal::SIGTERM);
            match tokio::time::timeout(l.grace, child.wait()).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = killpg(pgid, Signal::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    // Whatever the command left behind in its process group goes with it.
    let _ = killpg(pgid, Signal::SIGKILL);
    let oom = iso.oom_killed();
    iso.release();
    let last = match exit {
        Err(e) => fail(
            format!("cannot wait for the command: {e}"),
            "REASON_EXECUTOR_TERMINATED",
        ),
        Ok(_) if killed => status(
            &l,
            TaskState::TaskKilled,
            "Command killed".into(),
            "REASON_TASK_KILLED",
            None,
        ),
        Ok(s) if oom => status(
            &l,
            TaskState::TaskFailed,
            format!(
                "Memory limit of {mem} MiB exceeded: the kernel's OOM killer ended the command"
            ),
            "REASON_CONTAINER_LIMITATION_MEMORY",
            s.code(),
        ),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(0), _) => status(
                &l,
                TaskState::TaskFinished,
                "Command exited with status 0".into(),
                "",
                Some(0),
            ),
            (Some(c), _) => status(
                &l,
                TaskState::TaskFailed,
                format!("Command exited with status {c}"),
                "REASON_COMMAND_EXECUTOR_FAILED",
                Some(c),
            ),
            (None, sig) => status(
                &l,
                TaskState::TaskFailed,
                format!("Command terminated with signal {}", sig.unwrap_or(0)),
                "REASON_COMMAND_EXECUTOR_FAILED",
                None,
            ),
        },
    };
    tracing::info!(task = %l.task.task_id, state = last.state().as_str_name(), message = %last.message, "task ended");
    send(last);
}

/// Kills what is left of a task that an earlier agent process started: the process group of the pid
/// checkpointed in `pid_file`, if that process is still alive and is the task (its environment names
/// `framework_id` and `task_id`, so a recycled pid is never killed). Returns whether it killed anything.
pub fn kill_leftover(pid_file: &Path, framework_id: &str, task_id: &str) -> bool {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return false;
    };
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    let has = |v: String| vars.contains(&v.as_bytes());
    if !(has(format!("ALLOT_TASK_ID={task_id}"))
        && has(format!("ALLOT_FRAMEWORK_ID={framework_id}")))
    {
        return false;
    }
    killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpointed_pid_that_is_not_the_task_is_never_killed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        // This test's own process: alive, but not task t of framework fw.
        std::fs::write(&file, std::process::id().to_string()).unwrap();
        assert!(!kill_leftover(&file, "fw", "t"));
        std::fs::write(&file, "not a pid").unwrap();
        assert!(!kill_leftover(&file, "fw", "t"));
        assert!(!kill_leftover(&dir.path().join("missing"), "fw", "t"));
    }
}
