//! The command executor: runs one task as a process group in its sandbox, under isolation, and reports its
//! states: TASK_STARTING, TASK_RUNNING, then TASK_FINISHED (exit 0), TASK_FAILED (non-zero exit, a signal, or
//! the memory limit), or TASK_KILLED (a KILL: SIGTERM, then SIGKILL after the grace period).
//!
//! The sandbox is `<work_dir>/sandboxes/<framework_id>/<task_id>/`, holding `stdout` and `stderr`; the command
//! runs there with `ALLOT_SANDBOX` (and `MESOS_SANDBOX`, for Mesos-era scripts) pointing at it.
//!
//! # Surviving an agent restart
//! A task outlives the agent process that started it (Mesos' agent recovery, `--recover=reconnect`). The
//! command is started by the agent's task reaper ([`crate::reaper`]), a process that outlives the agent too,
//! as `/bin/sh -c` behind a gate (`direct_argv`); the reaper writes the command's exit status to the task's
//! checkpoint slot (`exit`) before it reaps it, so that an agent that was not watching still learns how the
//! task ended. Where no reaper program is found (or with `ALLOT_REAPER=none`) the command runs under a small
//! `/bin/sh` wrapper instead, the agent's child and the leader of the task's process group, that writes the
//! same `exit` file when the command ends. Beside it the agent checkpoints the task (the `TaskInfo`) before it
//! starts and its pid once it runs, as the first records of the task's update stream file (`updates`; agents
//! before issue 24 wrote `task` and `pid` files, which are still read). A restarted agent calls [`recover`]
//! for each task whose last update is not terminal: a task still running is watched again ([`watch_task`]:
//! polled every [`WATCH_INTERVAL`], killed by process group), a task that ended while the agent was down is
//! reported from its `exit` file.
//!
//! As in a shell, a status above 128 means the command was ended by signal `status - 128`; the wrapper
//! re-raises that signal on itself so that the agent that waits for it sees the signal too.

use crate::isolation::{Isolator, TaskIsolation};
use crate::reaper::NEVER_STARTED;
use allot_proto::common::{StatusSource, TaskInfo, TaskState, TaskStatus};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use prost::Message as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a task recovered after an agent restart (not the agent's child, so not waited for) is checked.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// The wrapper around every command. Arguments: the exit file, then the command's program and arguments (none
/// for a shell command, which is in the script: see [`shell_run`]). It ignores nothing (a trap is reset in the
/// command), but a SIGTERM sent to the process group waits in the trap until the command has handled its own,
/// so a graceful kill keeps its grace period. The status is written as four bytes (`printf '%3d\n'`) over the
/// exit file's first bytes, not into a truncated file (`1<>`; emptying a file frees its block, which the write
/// then allocates again): the agent blanks the file with four spaces' worth when it gives the slot to a task
/// (see [`crate::status`]), and a status is at most `255`. `GATE` is the gate (its own line, run before the line with the
/// command is read), `RUN` is [`RUN_ARGV`] or [`shell_run`]'s.
const WRAPPER: &str = r#"exit_file=$1; shift
trap 'true' TERM
GATE
RUN; s=$?
printf '%3d\n' "$s" 1<> "$exit_file"
if [ "$s" -gt 128 ]; then trap - TERM; kill -$((s - 128)) $$; fi
exit "$s""#;

/// The wrapper's gate: it reads one line, or, the pipe closed unwritten, records [`NEVER_STARTED`] and exits
/// with 125, having run nothing.
const WRAPPER_GATE: &str = r#"read -r _ || { printf '%3d\n' -1 1<> "$exit_file"; exit 125; }"#;

/// What the agent writes into a command's gate to open it: one newline, which `read` takes in one system call
/// (it reads a byte at a time).
pub(crate) const GATE_OPEN: &[u8] = b"\n";

/// How the wrapper runs a command given as a program and its arguments.
const RUN_ARGV: &str = r#""$@""#;

/// How the wrapper runs shell command `command` (`CommandInfo.shell`): in a subshell of the wrapper itself,
/// which is what `sh -c` would be without one more `exec` of the shell per task, with the command's text in
/// the script, as `sh -c` has it, not `eval`ed from an argument: then the shell runs the command's last
/// program in the subshell's own process, as `sh -c` does, where `eval` forks once more (that fork was a
/// quarter of a short task's CPU, issue 24). The subshell sees none of the wrapper's variables or positional
/// parameters (`unset`, `set --`), its traps are reset, and its exit status (or signal) is the command's;
/// `exit` and `exec` in the command end or replace the subshell only. The command starts on a line of its
/// own and the subshell closes two lines below it, so that a comment or a trailing backslash in it cannot
/// swallow the closing parenthesis. A command that is not valid shell fails to parse, as under `sh -c`: the
/// wrapper exits with status 2 (the agent reports it), having run nothing of it.
fn shell_run(command: &str) -> String {
    format!("( unset exit_file; set --\n{command}\n\n)")
}

/// Where one task's status updates go: its stream in the agent's status update manager, with its sandbox path
/// and the launch's trace context. [`TaskUpdates::push`] checkpoints (a file write and a sync), so it is called
/// on a blocking thread, in the same blocking call as the step that produced the update: one thread hand-off
/// per step, not two (issue 24).
#[derive(Clone)]
pub struct TaskUpdates {
    /// The task: `(framework ID, task ID)`.
    pub key: crate::status::TaskKey,
    /// The agent's status update manager.
    pub manager: std::sync::Arc<crate::status::StatusUpdateManager>,
    /// The task's sandbox, absolute.
    pub sandbox: std::sync::Arc<str>,
    /// The launch's W3C trace context.
    pub context: std::sync::Arc<std::collections::HashMap<String, String>>,
}

impl TaskUpdates {
    /// Appends `statuses` (in order) to the task's stream, checkpointed; a checkpoint that cannot be written
    /// is logged and the updates are still sent. Blocking.
    pub fn push(&self, statuses: Vec<TaskStatus>) {
        if let Err(e) = self
            .manager
            .push_all(statuses, &self.sandbox, &self.context)
        {
            tracing::warn!(error = %e, "cannot checkpoint status updates; they are kept in memory");
        }
    }

    /// The task is being launched: its stream begins with the task as launched (see
    /// [`crate::status::StatusUpdateManager::begin`]). Returns the task's checkpoint directory (`None`
    /// without checkpoints, or if it could not be written). Blocking.
    pub fn begin(&self, task: &TaskInfo) -> Option<PathBuf> {
        self.manager
            .begin(&self.key, &self.context, task)
            .inspect_err(
                |e| tracing::warn!(task = %task.task_id, error = %e, "cannot checkpoint the task"),
            )
            .ok()
            .flatten()
    }

    /// Records the pid of the task's wrapper in its checkpoint. Blocking.
    pub fn record_pid(&self, pid: u32) {
        if let Err(e) = self.manager.record_pid(&self.key, pid) {
            tracing::warn!(task = %self.key.1, error = %e, "cannot checkpoint the task's pid");
        }
    }

    /// [`TaskUpdates::push`] from async code, on a blocking thread.
    pub async fn push_async(&self, statuses: Vec<TaskStatus>) {
        let me = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || me.push(statuses)).await {
            tracing::error!(error = %e, "checkpointing status updates failed");
        }
    }
}

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
    /// The task's checkpoint directory, when the launch reattaches to a task an earlier agent process started
    /// (its slot `<work_dir>/meta/slots/<n>`, or an earlier agent's `<work_dir>/meta/frameworks/<fw>/tasks/
    /// <task>`), where its `updates` (with the launch and pid records) and `exit` files are; `None` for a new
    /// launch (it is given a slot when it starts) or without checkpoints.
    pub checkpoint: Option<PathBuf>,
    /// The Unix user to run the task as (its `CommandInfo.user`, see [`switch_user`]); `None`: the agent's own
    /// (`--switch-user=false`).
    pub user: Option<String>,
    /// Why a kill was asked for, if it said: the `(reason, message)` of the TASK_KILLED (set by KillTask before
    /// it cancels the task; e.g. `REASON_PREEMPTED`). Unset: `REASON_TASK_KILLED`.
    pub kill_reason: KillReason,
    /// Cancelled once the agent process stopped: a start-up still under way on a blocking thread then neither
    /// spawns the command nor opens its gate, as if the process had died there (the restarted agent reports
    /// the task as never started).
    pub stopped: CancellationToken,
    /// The agent's task reaper, which starts the command ([`crate::reaper`]); `None`: the wrapper shell does,
    /// as the agent's child.
    pub reaper: Option<std::sync::Arc<crate::reaper::Client>>,
}

/// The reason a kill gives, shared between the agent's KillTask and the task's executor.
pub type KillReason = std::sync::Arc<std::sync::OnceLock<(String, String)>>;

/// Who a task runs as: a user's uid and primary gid (its other groups come from the group database when the
/// task starts: `setpriv --init-groups`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name.
    pub name: String,
    /// Its uid.
    pub uid: nix::unistd::Uid,
    /// Its primary group.
    pub gid: nix::unistd::Gid,
}

/// Resolves `user` for a task (Mesos' `--switch_user`): its uid and gid from this machine's user database.
/// `None` when no switch is needed (the agent already runs as that user).
///
/// # Errors
/// A message for TASK_FAILED: an empty name, a user that does not exist on this agent, or (for an agent not
/// running as root) a user other than the agent's own.
pub fn switch_user(user: &str) -> Result<Option<RunAs>, String> {
    use nix::unistd::{Uid, User};
    if user.is_empty() {
        return Err("the task names no user (CommandInfo.user or FrameworkInfo.user)".into());
    }
    let found = User::from_name(user)
        .map_err(|e| format!("cannot look up user '{user}' on this agent: {e}"))?
        .ok_or_else(|| format!("user '{user}' does not exist on this agent"))?;
    let me = Uid::effective();
    if found.uid == me {
        return Ok(None);
    }
    if !me.is_root() {
        return Err(format!(
            "the agent runs as uid {me}, not root, and cannot run a task as user '{user}' (uid {}): run the \
             agent as root, or with --switch-user=false to run every task as the agent's user",
            found.uid
        ));
    }
    Ok(Some(RunAs {
        name: user.to_string(),
        uid: found.uid,
        gid: found.gid,
    }))
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
        uuid: allot_common::new_status_uuid(),
        exit_code,
        ..Default::default()
    }
}

fn scalar(task: &TaskInfo, name: &str) -> f64 {
    task.resources
        .iter()
        .filter(|r| r.name == name)
        .map(|r| r.scalar)
        .sum()
}

/// The name of a task's cgroup under the agent's parent cgroup, and whether it is kept for the next task
/// (see [`crate::isolation`]): `slot-<n>` for a task checkpointed in slot `n` (`checkpoint`), kept and
/// reused with the slot; else `<framework>.<task>` (a task an earlier agent started, or no checkpoint).
fn cgroup_of(l: &Launch, checkpoint: Option<&Path>) -> (String, bool) {
    match checkpoint.and_then(crate::status::slot_number) {
        Some(n) => (format!("slot-{n}"), true),
        None => (format!("{}.{}", l.framework_id, l.task.task_id), false),
    }
}

/// The isolation of recovered task `l` (started by an earlier agent process), from its checkpoint's cgroup.
fn reopen(l: &Launch, isolator: &Isolator) -> TaskIsolation {
    let (cgroup, keep) = cgroup_of(l, l.checkpoint.as_deref());
    isolator.reopen(&cgroup, keep)
}

/// How a task's command ended, as far as the agent can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// This signal ended it.
    Signal(i32),
    /// Its processes are gone and left no exit status (the wrapper was killed too, e.g. by SIGKILL to the
    /// process group while no agent was watching).
    Unknown,
    /// It never started: its gate closed unopened because the agent went away first
    /// ([`NEVER_STARTED`] recorded). Nothing of the command ran.
    NeverStarted,
}

impl Exit {
    /// From a wait status's exit `code` or terminating `signal` (neither: unknown).
    pub(crate) fn of(code: Option<i32>, signal: Option<i32>) -> Exit {
        match (code, signal) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Unknown,
        }
    }

    /// From a status the wrapper recorded: above 128 is a signal, as in a shell.
    fn from_recorded(s: i32) -> Exit {
        if s == NEVER_STARTED {
            Exit::NeverStarted
        } else if (129..=128 + 64).contains(&s) {
            Exit::Signal(s - 128)
        } else {
            Exit::Code(s)
        }
    }
}

/// The exit status the wrapper recorded in `checkpoint/exit`, if any.
fn recorded_exit(checkpoint: &Path) -> Option<Exit> {
    std::fs::read_to_string(checkpoint.join("exit"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Exit::from_recorded)
}

/// The task's final update. `note` is appended to the message (e.g. that the agent was down).
fn final_status(
    l: &Launch,
    exit: std::io::Result<Exit>,
    killed: bool,
    oom: bool,
    note: &str,
) -> TaskStatus {
    let failed = |message: String, reason: &str, code: Option<i32>| {
        status(l, TaskState::TaskFailed, message + note, reason, code)
    };
    let code = match exit {
        Ok(Exit::Code(c)) => Some(c),
        _ => None,
    };
    match exit {
        Err(e) => failed(
            format!("cannot wait for the command: {e}"),
            "REASON_EXECUTOR_TERMINATED",
            None,
        ),
        Ok(_) if killed => {
            // KillTask sets a reason only when it was given one.
            let (reason, why) = match l.kill_reason.get() {
                Some((reason, why)) => (reason.as_str(), format!(": {why}")),
                None => ("REASON_TASK_KILLED", String::new()),
            };
            status(
                l,
                TaskState::TaskKilled,
                format!("Command killed{why}{note}"),
                reason,
                None,
            )
        }
        Ok(_) if oom => failed(
            format!(
                "Memory limit of {} MiB exceeded: the kernel's OOM killer ended the command",
                scalar(&l.task, "mem")
            ),
            "REASON_CONTAINER_LIMITATION_MEMORY",
            code,
        ),
        Ok(Exit::Code(0)) => status(
            l,
            TaskState::TaskFinished,
            format!("Command exited with status 0{note}"),
            "",
            Some(0),
        ),
        Ok(Exit::Code(c)) => failed(
            format!("Command exited with status {c}"),
            "REASON_COMMAND_EXECUTOR_FAILED",
            Some(c),
        ),
        Ok(Exit::Signal(sig)) => failed(
            format!("Command terminated with signal {sig}"),
            "REASON_COMMAND_EXECUTOR_FAILED",
            None,
        ),
        Ok(Exit::Unknown) => failed(
            "The command's processes are gone and left no exit status".into(),
            "REASON_EXECUTOR_TERMINATED",
            None,
        ),
        Ok(Exit::NeverStarted) => failed(
            "The agent went away before the command started; nothing of it ran".into(),
            "REASON_AGENT_RESTARTED",
            None,
        ),
    }
}

/// The argv that runs command `cmd_info` under the wrapper (which writes its exit status to `exit_file`),
/// under `iso`'s rlimits if any, as `run_as` if given. The command waits at the gate, its stdin: the caller
/// records the pid and attaches it to the cgroup, then writes a line to the child's stdin.
pub(crate) fn wrapped_argv(
    cmd_info: &allot_proto::common::CommandInfo,
    exit_file: &Path,
    iso: &TaskIsolation,
    run_as: Option<&RunAs>,
) -> Vec<String> {
    let shell = cmd_info.shell || cmd_info.arguments.is_empty();
    // Under prlimit the command must be a program to exec: the shell.
    let in_wrapper = shell && !matches!(iso, TaskIsolation::Prlimit { .. });
    let mut argv: Vec<String> = if in_wrapper {
        Vec::new()
    } else if shell {
        vec!["/bin/sh".into(), "-c".into(), cmd_info.value.clone()]
    } else {
        let mut v = vec![cmd_info.value.clone()];
        v.extend(cmd_info.arguments.iter().skip(1).cloned());
        v
    };
    if matches!(iso, TaskIsolation::Prlimit { .. }) {
        argv = confined(argv, iso, None);
    }
    // The command waits at a gate until the agent has checkpointed its pid and moved it into its cgroup, so
    // that nothing it forks escapes the cgroup and no command runs that a restarted agent cannot find: the
    // wrapper reads one line from a pipe before it starts the command, which the agent writes after those
    // steps. If the agent dies first, the pipe closes unwritten and the wrapper exits without running the
    // command (and without an exit status: the restarted agent reports the task as never started).
    let run = match in_wrapper {
        true => shell_run(&cmd_info.value),
        false => RUN_ARGV.to_string(),
    };
    let script = WRAPPER
        .replacen("GATE", WRAPPER_GATE, 1)
        .replacen("RUN", &run, 1);
    let mut wrapped: Vec<String> = vec![
        "/bin/sh".into(),
        "-c".into(),
        script,
        "allot-executor".into(),
        exit_file.display().to_string(),
    ];
    wrapped.append(&mut argv);
    // As the task's user, around the wrapper (the rlimit is around the command, inside it).
    confined(wrapped, &TaskIsolation::None, run_as)
}

/// `argv` prefixed so that it runs under `iso`'s address-space rlimit (`prlimit --as=<bytes> --`, when
/// isolation is by rlimits), then as `run_as` (util-linux's `setpriv`, which sets the uid, gid and the user's
/// groups (initgroups) and execs the rest, keeping the pid the agent records and puts in the cgroup).
fn confined(mut argv: Vec<String>, iso: &TaskIsolation, run_as: Option<&RunAs>) -> Vec<String> {
    if let TaskIsolation::Prlimit { program, bytes } = iso {
        let mut wrapped = vec![program.clone(), format!("--as={bytes}"), "--".into()];
        wrapped.append(&mut argv);
        argv = wrapped;
    }
    if let Some(who) = run_as {
        let mut switched = vec![
            "setpriv".to_string(),
            format!("--reuid={}", who.uid),
            format!("--regid={}", who.gid),
            "--init-groups".into(),
            "--".into(),
        ];
        switched.append(&mut argv);
        argv = switched;
    }
    argv
}

/// A task's command, started: how to wait for it, its isolation and its pid.
struct Started {
    waiter: Waiter,
    iso: TaskIsolation,
    pid: u32,
}

/// How the agent opens a task's gate and learns that its command ended.
enum Waiter {
    /// The wrapper shell is the agent's child (its stdin the gate the command waits at).
    Child(tokio::process::Child),
    /// `reaper` started the command (spawn `id`, at its gate until opened) and says how it ended; if the
    /// reaper goes away first (`ended` fails), the pid is watched and the exit file read.
    Reaped {
        reaper: std::sync::Arc<crate::reaper::Client>,
        id: u64,
        ended: Option<tokio::sync::oneshot::Receiver<crate::reaper::Ended>>,
        checkpoint: Option<PathBuf>,
    },
}

impl Waiter {
    /// Opens the command's gate, or, for a `stopped` agent, closes it unopened (the command exits without
    /// running). A byte into an empty pipe never blocks; dropping the pipe closes the command's stdin.
    fn open_gate(&mut self, stopped: bool) -> std::io::Result<()> {
        match self {
            Waiter::Child(child) => match child.stdin.take().filter(|_| !stopped) {
                Some(gate) => nix::unistd::write(&gate, GATE_OPEN)
                    .map(drop)
                    .map_err(std::io::Error::from),
                None => Ok(()),
            },
            Waiter::Reaped { reaper, id, .. } if stopped => {
                reaper.abort(*id);
                Ok(())
            }
            Waiter::Reaped { reaper, id, .. } => reaper.open(*id),
        }
    }

    /// Waits for the command (pid `pid`) to end. Cancel-safe: may be called again after being dropped.
    async fn wait(&mut self, pid: u32) -> std::io::Result<Exit> {
        match self {
            Waiter::Child(c) => c.wait().await.map(|s| Exit::of(s.code(), s.signal())),
            Waiter::Reaped {
                ended, checkpoint, ..
            } => {
                if let Some(rx) = ended {
                    match rx.await {
                        Ok(e) => return Ok(Exit::of(e.code, e.signal)),
                        Err(_) => *ended = None,
                    }
                }
                tracing::warn!(pid, "the task reaper went away: watching the task's pid");
                until_gone(Pid::from_raw(pid as i32)).await;
                Ok(checkpoint
                    .as_deref()
                    .and_then(recorded_exit)
                    .unwrap_or(Exit::Unknown))
            }
        }
    }
}

/// The gate of a command the reaper starts (the first line of its `sh -c` script): the shell reads one line
/// from standard input (the reaper's pipe) before anything of the task runs, and exits with 125 if the pipe
/// closes unwritten; then it writes its own pid into each of `procs` (the task's `cgroup.procs` files), so
/// that everything of the task runs in its cgroups (joining from inside costs the kernel less than being
/// moved by the agent, issue 24), and exits with 126 if it cannot.
fn direct_gate(procs: &[PathBuf]) -> String {
    let mut gate = String::from("read -r _ || exit 125");
    if !procs.is_empty() {
        let joins: Vec<String> = procs
            .iter()
            .map(|p| format!("echo $$ > {}", shell_quote(&p.display().to_string())))
            .collect();
        gate.push_str(&format!(
            "\n{{ {}; }} || {{ echo 'allot: cannot join the task cgroups' >&2; exit 126; }}",
            joins.join(" && ")
        ));
    }
    gate
}

/// `s` as one single-quoted shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The argv that runs command `cmd_info` through the reaper (see [`crate::reaper`]), joining `iso`'s cgroups
/// (unless it runs as another user, whom the agent moves instead), under `iso`'s rlimits if any, as `run_as` if given: `/bin/sh -c '<gate>\n<command>'` for a shell
/// command ([`direct_gate`]), so that the shell runs the command as `sh -c '<command>'` would, its last program
/// in the shell's own process (one `/bin/sh` and the command's programs, as under `xargs`); `/bin/sh -c
/// '<gate>\nexec "$@"' allot-executor <program> <args>` for a program and its arguments. The command starts
/// on a line of its own, after the gate's.
fn direct_argv(
    cmd_info: &allot_proto::common::CommandInfo,
    iso: &TaskIsolation,
    run_as: Option<&RunAs>,
) -> Vec<String> {
    // A command switched to another user could not write the cgroup files (root's): the agent moves it.
    let gate = direct_gate(&match run_as {
        None => iso.procs_files(),
        Some(_) => Vec::new(),
    });
    let argv: Vec<String> = if cmd_info.shell || cmd_info.arguments.is_empty() {
        vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("{gate}\n{}", cmd_info.value),
        ]
    } else {
        let mut v = vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("{gate}\nexec \"$@\""),
            "allot-executor".into(),
            cmd_info.value.clone(),
        ];
        v.extend(cmd_info.arguments.iter().skip(1).cloned());
        v
    };
    confined(argv, iso, run_as)
}

/// The steps before the command runs (sandbox, checkpoint, user, cgroup, fork and exec, cgroup attach): file
/// and cgroup writes and a fork, so [`run_task`] runs them on a blocking thread, not on the async workers that
/// carry every other task's status updates. On failure, the task's TASK_FAILED update.
fn start(
    l: &Launch,
    isolator: &Isolator,
    updates: &TaskUpdates,
) -> Result<Started, Box<TaskStatus>> {
    let fail =
        |msg: String, reason: &str| Box::new(status(l, TaskState::TaskFailed, msg, reason, None));
    let sandbox_span = tracing::info_span!("sandbox").entered();
    if let Err(e) = std::fs::create_dir_all(&l.sandbox) {
        return Err(fail(
            format!("cannot create sandbox {}: {e}", l.sandbox.display()),
            "REASON_EXECUTOR_TERMINATED",
        ));
    }
    // The task is checkpointed before it starts (the first record of its update stream's file, in the
    // checkpoint slot it is given), so that a restarted agent knows what it holds.
    let checkpoint = updates.begin(&l.task);
    let exit_file = match &checkpoint {
        Some(dir) => dir.join("exit"),
        None => PathBuf::from("/dev/null"),
    };
    let run_as = match l.user.as_deref().map(switch_user).transpose() {
        Ok(r) => r.flatten(),
        Err(message) => {
            return Err(fail(message, "REASON_EXECUTOR_TERMINATED"));
        }
    };
    let (cpus, mem) = (scalar(&l.task, "cpus"), scalar(&l.task, "mem"));
    drop(sandbox_span);
    let isolate_span = tracing::info_span!("isolate").entered();
    let (cgroup, keep) = cgroup_of(l, checkpoint.as_deref());
    let iso = match isolator.prepare(&cgroup, cpus, mem, keep) {
        Ok(i) => i,
        Err(e) => {
            return Err(fail(
                format!("cannot isolate the task: {e}"),
                "REASON_CONTAINER_LAUNCH_FAILED",
            ));
        }
    };
    let cmd_info = l.task.command.clone().unwrap_or_default();
    let open = |name: &str| std::fs::File::create(l.sandbox.join(name));
    let (stdout, stderr) = match (open("stdout"), open("stderr")) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            iso.release();
            return Err(fail(
                format!("cannot create stdout/stderr in the sandbox: {e}"),
                "REASON_EXECUTOR_TERMINATED",
            ));
        }
    };
    // The sandbox (and the file the wrapper writes the exit status to) belong to the task's user.
    if let Some(who) = &run_as {
        // The wrapper, running as the user, writes the exit status into the slot's file (made, blank, when
        // the task was given the slot).
        let exit = checkpoint.is_some().then(|| exit_file.clone());
        let owned = [
            l.sandbox.clone(),
            l.sandbox.join("stdout"),
            l.sandbox.join("stderr"),
        ]
        .into_iter()
        .chain(exit)
        .try_for_each(|p| {
            nix::unistd::chown(&p, Some(who.uid), Some(who.gid)).map_err(std::io::Error::from)
        });
        if let Err(e) = owned {
            iso.release();
            return Err(fail(
                format!("cannot give the sandbox to user '{}': {e}", who.name),
                "REASON_EXECUTOR_TERMINATED",
            ));
        }
    }
    drop(isolate_span);
    let spawn_span = tracing::info_span!("spawn");
    if l.stopped.is_cancelled() {
        iso.release();
        return Err(fail(
            "the agent stopped before the task started".into(),
            "REASON_AGENT_RESTARTED",
        ));
    }
    // On top of the agent's environment: the task's, then the agent's own variables, later ones winning.
    let mut env: Vec<(String, String)> = cmd_info
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend([
        ("ALLOT_SANDBOX".into(), l.sandbox.display().to_string()),
        ("MESOS_SANDBOX".into(), l.sandbox.display().to_string()),
        ("ALLOT_TASK_ID".into(), l.task.task_id.clone()),
        ("ALLOT_FRAMEWORK_ID".into(), l.framework_id.clone()),
        ("ALLOT_AGENT_ID".into(), l.agent_id.clone()),
    ]);
    if let Some(who) = &run_as {
        env.push(("USER".into(), who.name.clone()));
        env.push(("LOGNAME".into(), who.name.clone()));
    }
    if let Some(reaper) = &l.reaper {
        // The reaper has the agent's environment (it inherited it).
        let spawn = crate::reaper::Spawn {
            id: 0,
            argv: direct_argv(&cmd_info, &iso, run_as.as_ref()),
            env,
            cwd: l.sandbox.clone(),
            stdout: l.sandbox.join("stdout"),
            stderr: l.sandbox.join("stderr"),
            exit: checkpoint.as_ref().map(|_| exit_file.clone()),
        };
        drop((stdout, stderr));
        match spawn_span.in_scope(|| reaper.spawn(spawn)) {
            Ok(started) => {
                // The command joins its cgroups itself once its gate opens (`direct_gate`), unless it runs
                // as another user: then the agent moves it, as for the wrapper.
                updates.record_pid(started.pid);
                if run_as.is_some()
                    && let Err(e) = spawn_span.in_scope(|| iso.attach(started.pid))
                {
                    tracing::warn!(task = %l.task.task_id, error = %e, "cannot move the task into its cgroup");
                }
                return Ok(Started {
                    waiter: Waiter::Reaped {
                        reaper: reaper.clone(),
                        id: started.id,
                        ended: Some(started.ended),
                        checkpoint,
                    },
                    iso,
                    pid: started.pid,
                });
            }
            Err(e) => {
                iso.release();
                return Err(fail(
                    format!("cannot start the task through the task reaper: {e}"),
                    "REASON_EXECUTOR_TERMINATED",
                ));
            }
        }
    }
    let argv = wrapped_argv(&cmd_info, &exit_file, &iso, run_as.as_ref());
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&l.sandbox)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(stderr)
        .envs(env)
        // No kill_on_drop: a task outlives a crashed agent, and the next agent process reattaches to it.
        .process_group(0);
    let child = match spawn_span.in_scope(|| cmd.spawn()) {
        Ok(c) => c,
        Err(e) => {
            iso.release();
            return Err(fail(
                format!("cannot start '{}': {e}", argv[0]),
                "REASON_EXECUTOR_TERMINATED",
            ));
        }
    };
    let pid = child.id().unwrap_or(0);
    updates.record_pid(pid);
    if let Err(e) = spawn_span.in_scope(|| iso.attach(pid)) {
        tracing::warn!(task = %l.task.task_id, error = %e, "cannot move the task into its cgroup");
    }
    drop(spawn_span);
    Ok(Started {
        waiter: Waiter::Child(child),
        iso,
        pid,
    })
}

/// Runs the task to its end, pushing every status to `updates` in order. `kill` starts a graceful kill.
///
/// Two blocking calls per task, each with the updates it produces: the start (sandbox, checkpoint, cgroup,
/// spawn, attach, the gate opened, then TASK_STARTING and TASK_RUNNING checkpointed together) and the end
/// (process group killed, cgroup released, the final update checkpointed).
pub async fn run_task(
    l: Launch,
    isolator: Isolator,
    kill: CancellationToken,
    updates: TaskUpdates,
) {
    let span = tracing::Span::current();
    let (launch, up) = (l.clone(), updates.clone());
    let started = tokio::task::spawn_blocking(move || {
        span.in_scope(|| match start(&launch, &isolator, &up) {
            Ok(mut s) => {
                // The command waits at the gate until its pid is checkpointed and it is in its cgroup (both in
                // `start`): open it.
                // A byte into an empty pipe never blocks; dropping the pipe closes the command's stdin.
                // A stopped agent leaves the gate shut: the wrapper exits without running the command.
                if let Err(e) = s.waiter.open_gate(launch.stopped.is_cancelled()) {
                    tracing::warn!(task = %launch.task.task_id, error = %e, "cannot open the task's gate");
                }
                up.push(vec![
                    status(&launch, TaskState::TaskStarting, String::new(), "", None),
                    status(
                        &launch,
                        TaskState::TaskRunning,
                        format!("pid {}", s.pid),
                        "",
                        None,
                    ),
                ]);
                tracing::info!(task = %launch.task.task_id, pid = s.pid, "task running");
                Some(s)
            }
            Err(failed) => {
                up.push(vec![*failed]);
                None
            }
        })
    })
    .await;
    let Started {
        mut waiter,
        iso,
        pid,
    } = match started {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            let failed = status(
                &l,
                TaskState::TaskFailed,
                format!("the task's start-up failed: {e}"),
                "REASON_EXECUTOR_TERMINATED",
                None,
            );
            updates.push_async(vec![failed]).await;
            return;
        }
    };
    let pgid = Pid::from_raw(pid as i32);
    let mut killed = false;
    let exit = tokio::select! {
        r = waiter.wait(pid) => r,
        _ = kill.cancelled() => {
            killed = true;
            let _ = killpg(pgid, Signal::SIGTERM);
            match tokio::time::timeout(l.grace, waiter.wait(pid)).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = killpg(pgid, Signal::SIGKILL);
                    waiter.wait(pid).await
                }
            }
        }
    };
    finish(l, pgid, iso, exit, killed, updates).await;
}

/// Ends a task whose wrapper is gone, on a blocking thread: kills what it left in its process group, releases
/// its isolation and pushes its final update.
async fn finish(
    l: Launch,
    pgid: Pid,
    iso: TaskIsolation,
    exit: std::io::Result<Exit>,
    killed: bool,
    updates: TaskUpdates,
) {
    let span = tracing::Span::current();
    let ended = tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            // Whatever the command left behind in its process group goes with it.
            let _ = killpg(pgid, Signal::SIGKILL);
            let oom = tracing::info_span!("release").in_scope(|| iso.release());
            let last = final_status(&l, exit, killed, oom, "");
            tracing::info!(task = %l.task.task_id, state = last.state().as_str_name(), message = %last.message, "task ended");
            updates.push(vec![last]);
        })
    })
    .await;
    if let Err(e) = ended {
        tracing::error!(error = %e, "ending a task failed");
    }
}

/// Waits until process `pid` is gone, polling every [`WATCH_INTERVAL`]: neither running nor a zombie the
/// task reaper has yet to reap (it writes the exit file before it reaps, so once this returns the file is
/// written, unless the reaper itself died).
async fn until_gone(pid: Pid) {
    while alive(pid) || ended_under_reaper(pid.as_raw()) {
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// What a restarted agent finds of a task an earlier agent process started.
#[derive(Debug)]
pub enum Recovered {
    /// Its wrapper still runs, with this pid: the agent reattaches ([`watch_task`]).
    Running(Pid),
    /// It ended while no agent was watching.
    Ended(Exit),
}

/// Whether `pid` is a live process (not a zombie) of task `task_id` of `framework_id`: its environment names
/// both, so that a recycled pid is never taken for the task.
fn is_task(pid: i32, framework_id: &str, task_id: &str) -> bool {
    has_environment(
        pid,
        &[
            format!("ALLOT_TASK_ID={task_id}"),
            format!("ALLOT_FRAMEWORK_ID={framework_id}"),
        ],
    )
}

/// How long [`has_environment`] looks again at a live process whose environment reads empty.
const EXEC_WINDOW: Duration = Duration::from_millis(200);

/// Whether `pid` is a live process (not a zombie) whose environment holds every `NAME=value` of `vars`.
///
/// A process in the middle of an `execve` (a task's shell replacing itself with its last program) has, for a
/// moment, a new address space whose environment is not set up yet: `/proc/<pid>/environ` reads empty (or
/// cannot be opened while the exec holds the process). Taken at its word, a restarted agent reported a running
/// task TASK_FAILED (REASON_AGENT_RESTARTED); the fault-injection suite caught it with the process in state R.
/// A live process whose environment reads empty or not at all is so read again, every 2 ms for up to
/// [`EXEC_WINDOW`], before it is taken for another process.
pub(crate) fn has_environment(pid: i32, vars: &[String]) -> bool {
    let deadline = std::time::Instant::now() + EXEC_WINDOW;
    loop {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let live = alive(Pid::from_raw(pid));
        if environ.is_empty() && live && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let found: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        return vars.iter().all(|v| found.contains(&v.as_bytes())) && live;
    }
}

/// Whether `pid` is a zombie whose parent is a task reaper: a task that just ended, whose exit status the
/// reaper is about to record (it writes the exit file before it reaps). Such a task is watched
/// ([`watch_task`] waits for the file), not reported as having left no status.
fn ended_under_reaper(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, ppid)| {
        state == "Z"
            && std::fs::read_to_string(format!("/proc/{ppid}/comm"))
                .is_ok_and(|comm| comm.trim() == "allot-reaper")
    })
}

/// Process `pid`'s state letter and parent pid, from `/proc/<pid>/stat` (`pid (comm) S ppid …`: the state
/// follows the last parenthesis, as comm may hold any character); `None` if there is no such process.
fn proc_stat(pid: i32) -> Option<(String, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.to_string();
    Some((state, rest.next()?.parse().ok()?))
}

/// Whether `pid` runs (exists and is not a zombie waiting for its parent).
pub fn alive(pid: Pid) -> bool {
    proc_stat(pid.as_raw()).is_some_and(|(state, _)| state != "Z" && state != "X")
}

/// What a task's checkpoint directory says of its launch, read once: the task as launched and the pid of its
/// wrapper, from the records of its update stream (`updates`), or from the `task` and `pid` files agents
/// before issue 24 wrote.
#[derive(Debug, Default)]
pub struct Checkpointed {
    /// The `TaskInfo` as launched, if it can be read.
    pub task: Option<TaskInfo>,
    /// The pid of the task's wrapper, if recorded.
    pub pid: Option<i32>,
}

/// Reads task checkpoint directory `checkpoint` (see [`Checkpointed`]).
pub fn checkpointed(checkpoint: &Path) -> Checkpointed {
    let recorded =
        crate::status::replay(&std::fs::read(checkpoint.join("updates")).unwrap_or_default());
    Checkpointed {
        task: recorded.task.or_else(|| {
            let bytes = std::fs::read(checkpoint.join("task")).ok()?;
            TaskInfo::decode(bytes.as_slice()).ok()
        }),
        pid: recorded
            .pid
            .and_then(|p| i32::try_from(p).ok())
            .or_else(|| {
                std::fs::read_to_string(checkpoint.join("pid"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
            }),
    }
}

/// After an agent restart: what became of task `task_id` of `framework_id`, from its checkpoint directory and
/// the wrapper's `pid` read from it ([`checkpointed`]; see the module docs). A pid that is not the task's
/// (recycled) counts as gone.
pub fn recover(
    checkpoint: &Path,
    pid: Option<i32>,
    framework_id: &str,
    task_id: &str,
) -> Recovered {
    let recorded = recorded_exit(checkpoint);
    if let Some(pid) = pid.filter(|p| *p > 1)
        && (is_task(pid, framework_id, task_id) || (recorded.is_none() && ended_under_reaper(pid)))
    {
        return Recovered::Running(Pid::from_raw(pid));
    }
    // Read again: the task may have ended, and its reaper recorded and reaped it, since the first read. The
    // reaper writes the file before it reaps, so a process gone now has left its status there.
    let recorded = recorded.or_else(|| recorded_exit(checkpoint));
    if recorded.is_none()
        && let Some(pid) = pid
    {
        // What the process was, for the log: "none of the task's processes" should be true.
        tracing::info!(pid, stat = ?proc_stat(pid), task = task_id, "a checkpointed task's pid is not the task and left no exit status");
    }
    Recovered::Ended(recorded.unwrap_or(Exit::Unknown))
}

/// Sends the final update of a task that ended while no agent was watching (see [`recover`]): from its
/// recorded exit status, or, with none or with [`NEVER_STARTED`] (its gate never opened), TASK_FAILED with
/// reason REASON_AGENT_RESTARTED.
pub async fn report_ended(l: Launch, isolator: Isolator, exit: Exit, updates: TaskUpdates) {
    let ended = tokio::task::spawn_blocking(move || {
        // In a cgroup, whatever the command left behind is killed by the release.
        let iso = reopen(&l, &isolator);
        let oom = iso.release();
        let by_agent = |mut s: TaskStatus| {
            s.source = StatusSource::SourceAgent as i32;
            s
        };
        let last = match exit {
            Exit::Unknown => by_agent(status(
                &l,
                TaskState::TaskFailed,
                "The agent restarted and found none of the task's processes, and no exit status".into(),
                "REASON_AGENT_RESTARTED",
                None,
            )),
            Exit::NeverStarted => by_agent(final_status(&l, Ok(exit), false, false, "")),
            _ => final_status(
                &l,
                Ok(exit),
                false,
                oom,
                " (it ended while the agent was down)",
            ),
        };
        tracing::info!(task = %l.task.task_id, state = last.state().as_str_name(), message = %last.message, "task ended while the agent was down");
        updates.push(vec![last]);
    })
    .await;
    if let Err(e) = ended {
        tracing::error!(error = %e, "reporting a task that ended while the agent was down failed");
    }
}

/// Watches a task that an earlier agent process started and that still runs (its wrapper is `pid`), until it
/// ends; then sends its final update, as [`run_task`] would. `kill` kills it as [`run_task`] does: SIGTERM to
/// its process group, SIGKILL after the grace period.
pub async fn watch_task(
    l: Launch,
    pid: Pid,
    isolator: Isolator,
    kill: CancellationToken,
    updates: TaskUpdates,
) {
    let iso = reopen(&l, &isolator);
    tracing::info!(task = %l.task.task_id, %pid, "reattached to a running task");
    let gone = || until_gone(pid);
    let mut killed = false;
    tokio::select! {
        _ = gone() => {}
        _ = kill.cancelled() => {
            killed = true;
            let _ = killpg(pid, Signal::SIGTERM);
            if tokio::time::timeout(l.grace, gone()).await.is_err() {
                let _ = killpg(pid, Signal::SIGKILL);
                gone().await;
            }
        }
    }
    let exit = l
        .checkpoint
        .as_deref()
        .and_then(recorded_exit)
        .unwrap_or(Exit::Unknown);
    finish(l, pid, iso, Ok(exit), killed, updates).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_process_with_an_empty_environment_is_looked_at_again_within_a_bound() {
        let mut with = std::process::Command::new("sleep")
            .arg("5")
            .env("ALLOT_PROBE", "1")
            .spawn()
            .unwrap();
        let mut without = std::process::Command::new("sleep")
            .arg("5")
            .env_clear()
            .spawn()
            .unwrap();
        let vars = ["ALLOT_PROBE=1".to_string()];
        std::thread::sleep(Duration::from_millis(100));
        let t = std::time::Instant::now();
        assert!(has_environment(with.id() as i32, &vars));
        assert!(
            t.elapsed() < EXEC_WINDOW,
            "a readable environment is not waited on"
        );
        // An environment that stays empty (here by choice) is read again until EXEC_WINDOW, then is not the task's.
        let t = std::time::Instant::now();
        assert!(!has_environment(without.id() as i32, &vars));
        assert!(t.elapsed() >= EXEC_WINDOW);
        assert!(t.elapsed() < EXEC_WINDOW * 5);
        for c in [&mut with, &mut without] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    #[test]
    fn a_checkpointed_pid_that_is_not_the_task_is_never_taken_for_it() {
        let dir = tempfile::tempdir().unwrap();
        // This test's own process: alive, but not task t of framework fw.
        std::fs::write(dir.path().join("pid"), std::process::id().to_string()).unwrap();
        assert!(matches!(
            recover(dir.path(), checkpointed(dir.path()).pid, "fw", "t"),
            Recovered::Ended(Exit::Unknown)
        ));
        std::fs::write(dir.path().join("pid"), "not a pid").unwrap();
        std::fs::write(dir.path().join("exit"), "3\n").unwrap();
        assert!(matches!(
            recover(dir.path(), checkpointed(dir.path()).pid, "fw", "t"),
            Recovered::Ended(Exit::Code(3))
        ));
        assert!(matches!(
            recover(&dir.path().join("missing"), None, "fw", "t"),
            Recovered::Ended(Exit::Unknown)
        ));
    }

    #[test]
    fn a_gated_command_joins_its_cgroups_then_runs_as_under_sh_c() {
        let dir = tempfile::tempdir().unwrap();
        // Stand-ins for two hierarchies' cgroup.procs (one with a quote in its path).
        let procs = [dir.path().join("cpu.procs"), dir.path().join("it's.procs")];
        let run = |command: allot_proto::common::CommandInfo, procs: &[PathBuf], open: bool| {
            let mut argv = direct_argv(&command, &TaskIsolation::None, None);
            // direct_argv reads the procs files from the isolation; put the stand-ins' gate in its place.
            argv[2] = argv[2].replacen("read -r _ || exit 125", &direct_gate(procs), 1);
            let mut child = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            if open {
                std::io::Write::write_all(child.stdin.as_mut().unwrap(), GATE_OPEN).unwrap();
            }
            drop(child.stdin.take());
            let pid = child.id();
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8(out.stderr).unwrap();
            (
                out.status.code(),
                String::from_utf8(out.stdout).unwrap(),
                err,
                pid,
            )
        };
        let shell = |cmd: &str| allot_proto::common::CommandInfo {
            value: cmd.into(),
            shell: true,
            ..Default::default()
        };
        let (code, out, _, pid) = run(shell("echo $$; exit 4"), &procs, true);
        assert_eq!((code, out), (Some(4), format!("{pid}\n")));
        for p in &procs {
            assert_eq!(std::fs::read_to_string(p).unwrap(), format!("{pid}\n"));
        }
        // A program and its arguments, passed through unchanged.
        let program = allot_proto::common::CommandInfo {
            value: "printf".into(),
            arguments: vec!["printf".into(), "%s|".into(), "a b".into(), "$HOME".into()],
            shell: false,
            ..Default::default()
        };
        let (code, out, _, _) = run(program, &procs, true);
        assert_eq!((code, out.as_str()), (Some(0), "a b|$HOME|"));
        // A gate closed unopened: status 125, nothing run, no cgroup joined.
        let marker = dir.path().join("ran");
        let touch = format!("touch {}", marker.display());
        std::fs::remove_file(&procs[0]).unwrap();
        let (code, ..) = run(shell(&touch), &procs, false);
        assert_eq!(code, Some(125));
        assert!(!marker.exists() && !procs[0].exists());
        // A cgroup that cannot be joined: status 126, nothing run.
        let (code, _, err, _) = run(shell(&touch), &[dir.path().to_path_buf()], true);
        assert_eq!(code, Some(126));
        assert!(err.contains("cannot join the task cgroups"), "{err}");
        assert!(!marker.exists());
        // No cgroups: the gate alone.
        assert_eq!(run(shell("exit 0"), &[], true).0, Some(0));
    }

    #[test]
    fn a_command_runs_only_once_its_gate_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let exit_file = dir.path().join("exit");
        let ran = dir.path().join("ran");
        let command = allot_proto::common::CommandInfo {
            value: format!("touch {}", ran.display()),
            shell: true,
            ..Default::default()
        };
        let argv = wrapped_argv(&command, &exit_file, &TaskIsolation::None, None);
        let spawn = || {
            std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap()
        };
        // The agent died before opening the gate: its end of the pipe closes unwritten.
        let mut closed = spawn();
        drop(closed.stdin.take());
        assert_eq!(closed.wait().unwrap().code(), Some(125));
        assert!(!ran.exists(), "the command ran without its gate");
        assert_eq!(
            recorded_exit(dir.path()),
            Some(Exit::NeverStarted),
            "recorded as never started: the command never ran"
        );
        let mut opened = spawn();
        std::io::Write::write_all(opened.stdin.as_mut().unwrap(), GATE_OPEN).unwrap();
        drop(opened.stdin.take());
        assert_eq!(opened.wait().unwrap().code(), Some(0));
        assert!(ran.exists());
        assert_eq!(std::fs::read_to_string(&exit_file).unwrap().trim(), "0");
    }

    /// A shell command in the wrapper behaves as under `sh -c`: its exit status, `exit`, here-documents, a
    /// trailing comment or backslash, none of the wrapper's variables; and the wrapper records the status.
    #[test]
    fn a_shell_command_in_the_wrapper_runs_as_under_sh_c() {
        let dir = tempfile::tempdir().unwrap();
        let exit_file = dir.path().join("exit");
        let run = |cmd: &str| {
            let command = allot_proto::common::CommandInfo {
                value: cmd.into(),
                shell: true,
                ..Default::default()
            };
            let argv = wrapped_argv(&command, &exit_file, &TaskIsolation::None, None);
            let mut child = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::io::Write::write_all(child.stdin.as_mut().unwrap(), GATE_OPEN).unwrap();
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            let recorded = std::fs::read_to_string(&exit_file).unwrap_or_default();
            let _ = std::fs::remove_file(&exit_file);
            (
                out.status.code(),
                String::from_utf8(out.stdout).unwrap(),
                recorded.trim().to_string(),
            )
        };
        assert_eq!(run("exit 3"), (Some(3), "".into(), "3".into()));
        assert_eq!(
            run("true; exit 0; echo never"),
            (Some(0), "".into(), "0".into())
        );
        assert_eq!(
            run(r#"echo "[$exit_file][$1][$#]" # a comment"#),
            (Some(0), "[][][0]\n".into(), "0".into())
        );
        assert_eq!(run("echo a \\"), (Some(0), "a\n".into(), "0".into()));
        assert_eq!(
            run("cat <<EOF\nhere\nEOF"),
            (Some(0), "here\n".into(), "0".into())
        );
        assert_eq!(run("sh -c 'exit 4'"), (Some(4), "".into(), "4".into()));
        // Not valid shell: status 2, as `sh -c` gives, and nothing of it runs.
        let (code, out, _) = run("echo ran; if");
        assert_eq!((code, out.as_str()), (Some(2), ""));
    }

    #[test]
    fn a_recorded_status_above_128_is_a_signal() {
        assert_eq!(Exit::from_recorded(0), Exit::Code(0));
        assert_eq!(Exit::from_recorded(128), Exit::Code(128));
        assert_eq!(Exit::from_recorded(137), Exit::Signal(9));
        assert_eq!(Exit::from_recorded(255), Exit::Code(255));
        assert_eq!(Exit::from_recorded(NEVER_STARTED), Exit::NeverStarted);
        assert!(alive(Pid::this()));
        assert!(!alive(Pid::from_raw(i32::MAX)));
    }
}
