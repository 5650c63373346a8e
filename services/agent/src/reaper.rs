//! The task reaper: one small process per agent work directory that starts every command task and waits for
//! it, so that a shell command is the processes `sh -c` makes of it under `xargs` (one `/bin/sh`, which execs
//! the command's last program), not a wrapper shell with the command in a forked subshell, started from the
//! agent's large, many-threaded process (issue 24: the wrapper's fork, parse and exit were about a fifth of a
//! short task's CPU).
//!
//! The reaper outlives the agent process that started it (it is in a process group of its own; compare the
//! shim of containerd, or Nomad's executor process), so it is still the parent of the tasks when that agent is
//! killed, and it records how each task ended in the task's checkpoint slot (`exit`, in the format the
//! wrapper writes: see [`crate::executor`]) *before* it reaps the process. A restarted agent therefore finds a
//! running task by its checkpointed pid and an ended one by its exit file, as with the wrapper.
//!
//! # Protocol
//! JSON lines over a Unix socket in the abstract namespace named after the work directory ([`socket_name`]);
//! the reaper serves one agent at a time (a newer connection replaces an older one) and only a peer of its
//! own user (`SO_PEERCRED`). The agent sends [`ToReaper::Spawn`]; the reaper starts the command (with
//! `posix_spawn`, in a process group of its own, in the sandbox, its output appended to the sandbox's `stdout`
//! and `stderr`), its standard input a pipe from the reaper, and answers [`FromReaper::Started`] with the pid.
//! The command's argv begins with a gate (see `executor::direct_argv`): its shell reads one line from that
//! pipe, then writes its own pid into the task's cgroups, before it runs anything of the task. The agent
//! checkpoints the pid, then sends [`ToReaper::Open`]: so no command runs that a restarted agent cannot find,
//! and none runs outside its cgroups. If the agent goes away first, the gate closes unopened and the shell
//! exits with status 125, having run nothing. When a task's process ends the reaper writes its exit file (for
//! a child whose gate never opened, the marker [`NEVER_STARTED`] in place of a status, so
//! that a restarted agent does not take it for the command's own 125), reaps it and sends
//! [`FromReaper::Exited`]. With no agent connected and no children, the reaper exits after [`IDLE_EXIT`].

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What an exit file holds in place of a status for a command whose gate never opened (the agent went away
/// before it opened it): the command ran nothing. No exit status is negative, so it cannot be a command's.
pub const NEVER_STARTED: i32 = -1;

/// How long a reaper with no agent connected and no children waits before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(3);

/// How long the agent waits for a reaper it started to listen, and for a [`FromReaper::Started`].
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent asks of the reaper.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToReaper {
    /// Start a task's command, held at its gate.
    Spawn(Spawn),
    /// Open spawn `id`'s gate: the command runs.
    Open {
        /// The spawn's ID.
        id: u64,
    },
    /// Close spawn `id`'s gate unopened: the child exits with status 125, having run nothing.
    Abort {
        /// The spawn's ID.
        id: u64,
    },
}

/// One command to start (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spawn {
    /// Chosen by the agent, unique per connection; names the answer.
    pub id: u64,
    /// The program (looked up in the `PATH` of `env`) and its arguments.
    pub argv: Vec<String>,
    /// The command's environment on top of the reaper's own (which is the agent's that started it),
    /// `(name, value)`, later ones winning.
    pub env: Vec<(String, String)>,
    /// The directory it runs in (the sandbox).
    pub cwd: PathBuf,
    /// Its standard output and error: existing files, appended to.
    pub stdout: PathBuf,
    /// See `stdout`.
    pub stderr: PathBuf,
    /// Where the exit status goes (`printf '%3d\n'` over the file's first bytes: status, or 128 + signal).
    pub exit: Option<PathBuf>,
}

/// What the reaper tells the agent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromReaper {
    /// Spawn `id` is a process, waiting at its gate.
    Started {
        /// The spawn's ID.
        id: u64,
        /// Its pid (and process group ID).
        pid: u32,
    },
    /// Spawn `id` could not be forked.
    Failed {
        /// The spawn's ID.
        id: u64,
        /// Why.
        error: String,
    },
    /// Process `pid` ended (its exit file is written): `code` if it exited, `signal` if a signal ended it.
    Exited {
        /// The pid.
        pid: u32,
        /// Exit status.
        code: Option<i32>,
        /// Terminating signal.
        signal: Option<i32>,
    },
}

/// The reaper's socket name (abstract namespace) for agent work directory `work_dir` (absolute).
pub fn socket_name(work_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: every process computes the same name.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    work_dir.hash(&mut h);
    format!("allot-reaper-{:016x}", h.finish())
}

fn abstract_addr(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

/// The status written to an exit file for a process that exited with `code` or was ended by `signal`.
fn recorded_status(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 255,
    }
}

/// Writes `status` over the first bytes of exit file `path` (as the wrapper does; the file exists, blank).
/// [`NEVER_STARTED`] records a child whose gate never opened.
fn write_exit(path: &Path, status: i32) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all_at(format!("{status:3}\n").as_bytes(), 0)
}

// ------------------------------------------------------------------------------------------------------------
// The reaper process.

/// One spawned child, as the reaper keeps it (by pid).
struct Child {
    /// The spawn's ID.
    id: u64,
    exit: Option<PathBuf>,
    /// The write end of its gate, until opened or aborted.
    gate: Option<std::process::ChildStdin>,
    /// Whether its gate was opened (else it ran nothing, whatever its exit status).
    opened: bool,
}

/// The child of spawn `id` whose gate is still shut.
fn gated(children: &mut HashMap<u32, Child>, id: u64) -> Option<&mut Child> {
    children
        .values_mut()
        .find(|c| c.id == id && c.gate.is_some())
}

/// Runs the reaper for socket `name` until it has been idle ([`IDLE_EXIT`]). Returns at once (`Ok`) if another
/// reaper already serves `name`.
///
/// # Errors
/// The socket cannot be bound for another reason, or SIGCHLD cannot be received.
pub fn serve(name: &str) -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let listener = match UnixListener::bind_addr(&abstract_addr(name)?) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Ok(()),
        Err(e) => return Err(e),
    };
    listener.set_nonblocking(true)?;
    // Orphaned descendants of a task (its command's own children) come here, not to init, and are reaped.
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(std::io::Error::from)?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut conn: Option<(UnixStream, Vec<u8>)> = None;
    let mut children: HashMap<u32, Child> = HashMap::new();
    let mut idle_since = Instant::now();
    loop {
        if conn.is_none() && children.is_empty() && idle_since.elapsed() >= IDLE_EXIT {
            return Ok(());
        }
        let mut fds = vec![
            nix::poll::PollFd::new(listener.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(sigfd.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        if let Some((s, _)) = &conn {
            fds.push(nix::poll::PollFd::new(
                s.as_fd(),
                nix::poll::PollFlags::POLLIN,
            ));
        }
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (new_conn, sig, data) = (ready(0), ready(1), ready(2));
        drop(fds);
        if sig {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            reap(&mut children, &mut conn);
        }
        if data {
            // The socket is non-blocking: everything available is appended, then WouldBlock; Ok is the end of
            // the connection. The lines that came before its end are handled first (an Open just before an
            // agent goes away still opens its gate).
            let ended = match &mut conn {
                Some((s, buf)) => !matches!(s.read_to_end(buf),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                None => false,
            };
            if !handle_lines(&mut conn, &mut children) || ended {
                drop_agent(&mut conn, &mut children);
                idle_since = Instant::now();
            }
        }
        if new_conn && let Ok((s, _)) = listener.accept() {
            let same_user =
                nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
                    .is_ok_and(|c| c.uid() == nix::unistd::geteuid().as_raw());
            if same_user && s.set_nonblocking(true).is_ok() {
                // The newest agent process is the one that counts; an older connection's gates close.
                drop_agent(&mut conn, &mut children);
                conn = Some((s, Vec::new()));
            }
        }
        if conn.is_none() && !children.is_empty() {
            idle_since = Instant::now();
        }
    }
}

/// Handles every complete line in the connection's buffer; `false` if the agent sent something unreadable or
/// cannot be written to (the connection is dropped).
fn handle_lines(
    conn: &mut Option<(UnixStream, Vec<u8>)>,
    children: &mut HashMap<u32, Child>,
) -> bool {
    let Some((s, buf)) = conn else { return true };
    let mut answers = Vec::new();
    let mut ok = true;
    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=end).collect();
        match serde_json::from_slice::<ToReaper>(&line) {
            Ok(ToReaper::Spawn(sp)) => match spawn_child(&sp) {
                Ok((pid, gate)) => {
                    children.insert(
                        pid,
                        Child {
                            id: sp.id,
                            exit: sp.exit.clone(),
                            gate: Some(gate),
                            opened: false,
                        },
                    );
                    answers.push(FromReaper::Started { id: sp.id, pid });
                }
                Err(e) => answers.push(FromReaper::Failed {
                    id: sp.id,
                    error: e.to_string(),
                }),
            },
            Ok(ToReaper::Open { id }) => {
                if let Some(c) = gated(children, id)
                    && let Some(gate) = c.gate.take()
                {
                    // One byte into an empty pipe never blocks; dropping the pipe then closes the command's
                    // standard input.
                    let _ = (&gate).write_all(b"\n");
                    c.opened = true;
                }
            }
            Ok(ToReaper::Abort { id }) => {
                if let Some(c) = gated(children, id) {
                    c.gate = None;
                }
            }
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    ok && send(s, &answers)
}

/// Writes `answers` as JSON lines (the socket is non-blocking: waits for room when it is full).
fn send(s: &mut UnixStream, answers: &[FromReaper]) -> bool {
    if answers.is_empty() {
        return true;
    }
    let mut out = Vec::new();
    for a in answers {
        if serde_json::to_writer(&mut out, a).is_err() {
            return false;
        }
        out.push(b'\n');
    }
    let mut at = 0;
    while at < out.len() {
        match s.write(&out[at..]) {
            Ok(0) => return false,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [nix::poll::PollFd::new(
                    s.as_fd(),
                    nix::poll::PollFlags::POLLOUT,
                )];
                if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap_or(0)
                    == 0
                {
                    return false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// The agent is gone: every gate still shut closes (those children exit without running anything).
fn drop_agent(conn: &mut Option<(UnixStream, Vec<u8>)>, children: &mut HashMap<u32, Child>) {
    if conn.take().is_none() {
        return;
    }
    for c in children.values_mut() {
        c.gate = None;
    }
}

/// Records and reaps every child that has ended.
fn reap(children: &mut HashMap<u32, Child>, conn: &mut Option<(UnixStream, Vec<u8>)>) {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
    let mut answers = Vec::new();
    loop {
        // Looked at without reaping first: the exit file is written while the process is still a zombie, so
        // an agent that sees the pid gone always finds the file written.
        let peek = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let (pid, code, signal) = match peek {
            Ok(WaitStatus::Exited(pid, c)) => (pid, Some(c), None),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, None, Some(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(other) => match other.pid() {
                Some(pid) => (pid, None, None),
                None => break,
            },
        };
        let raw = pid.as_raw() as u32;
        if let Some(child) = children.remove(&raw) {
            if let Some(exit) = &child.exit {
                // A child whose gate never opened exited 125 having run nothing; a command's own 125 must
                // not be taken for that after an agent restart (nor that for a failure of the command).
                let status = match child.opened {
                    true => recorded_status(code, signal),
                    false => NEVER_STARTED,
                };
                if let Err(e) = write_exit(exit, status) {
                    // The reaper's log (`<work_dir>/meta/reaper.log`): a restarted agent will find no status.
                    eprintln!(
                        "allot-reaper: cannot record the exit of pid {raw} in {}: {e}",
                        exit.display()
                    );
                }
            }
            answers.push(FromReaper::Exited {
                pid: raw,
                code,
                signal,
            });
        }
        let _ = waitpid(pid, None);
    }
    let lost = match conn {
        Some((s, _)) => !send(s, &answers),
        None => false,
    };
    if lost {
        drop_agent(conn, children);
    }
}

/// Starts the child of spawn `sp` (`posix_spawn`, as `std::process::Command` does: no copy of the reaper's
/// pages), its standard input a pipe whose write end is returned: the gate its script reads first.
fn spawn_child(sp: &Spawn) -> std::io::Result<(u32, std::process::ChildStdin)> {
    use std::os::unix::process::CommandExt;
    let (program, args) = sp
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("an empty command"))?;
    let append = |p: &Path| std::fs::OpenOptions::new().append(true).open(p);
    let mut child = std::process::Command::new(program)
        .args(args)
        .envs(sp.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&sp.cwd)
        .stdin(std::process::Stdio::piped())
        .stdout(append(&sp.stdout)?)
        .stderr(append(&sp.stderr)?)
        .process_group(0)
        .spawn()?;
    let gate = child.stdin.take().expect("stdin is piped");
    // Not waited for through `child`: `reap` waits for every child itself.
    Ok((child.id(), gate))
}

// ------------------------------------------------------------------------------------------------------------
// The agent's side.

/// How a process the reaper started ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Exit status, if it exited.
    pub code: Option<i32>,
    /// Terminating signal, if one ended it.
    pub signal: Option<i32>,
}

type ExitTx = tokio::sync::oneshot::Sender<Ended>;

/// The answers awaited on one connection, by spawn ID: where the pid (or the failure) goes, and where the exit
/// will go.
type Pending = Arc<Mutex<HashMap<u64, (std::sync::mpsc::Sender<Result<u32, String>>, ExitTx)>>>;

/// A connection to the reaper, shared by the agent's tasks.
struct Conn {
    writer: UnixStream,
    pending: Pending,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// The agent's client of its reaper (see the module docs): starts the reaper when none serves the work
/// directory, and starts it again after it died.
pub struct Client {
    program: PathBuf,
    name: String,
    log: PathBuf,
    conn: Mutex<Option<Conn>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Drop for Client {
    /// Ends the connection (the reader thread holds a clone of the socket, so dropping the writer alone would
    /// not): the reaper closes the gates still shut and, idle, exits.
    fn drop(&mut self) {
        if let Ok(mut conn) = self.conn.lock()
            && let Some(c) = conn.take()
        {
            let _ = c.writer.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("program", &self.program)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A task's command, started by the reaper and waiting at its gate.
pub struct Started {
    /// Its pid.
    pub pid: u32,
    /// The spawn ID ([`Client::open`], [`Client::abort`]).
    pub id: u64,
    /// How it ended, once it has; an error if the reaper went away first (then the exit file tells).
    pub ended: tokio::sync::oneshot::Receiver<Ended>,
}

/// Where the reaper program is: `allot-reaper` beside the running executable, or beside the directory it is
/// in (a test binary in `target/<profile>/deps`); `ALLOT_REAPER` names it explicitly, and `ALLOT_REAPER=none`
/// runs command tasks under the wrapper shell instead (as agents before the reaper did).
pub fn find_program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ALLOT_REAPER") {
        return (p != "none").then(|| PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("allot-reaper"), dir.parent()?.join("allot-reaper")]
        .into_iter()
        .find(|p| p.is_file())
}

impl Client {
    /// A client for agent work directory `work_dir` (absolute), running reaper `program`, whose output goes
    /// to `<work_dir>/meta/reaper.log`. Connects lazily.
    pub fn new(program: PathBuf, work_dir: &Path) -> Client {
        Client {
            program,
            name: socket_name(work_dir),
            log: work_dir.join("meta").join("reaper.log"),
            conn: Mutex::new(None),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Connects to the reaper, starting it if none listens.
    fn connect(&self) -> std::io::Result<Conn> {
        let addr = abstract_addr(&self.name)?;
        let stream = match UnixStream::connect_addr(&addr) {
            Ok(s) => s,
            Err(_) => {
                if let Some(dir) = self.log.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)?;
                // In a process group of its own: a signal to the agent's group does not reach it, and it
                // outlives the agent. Reaped by whoever inherits it: the agent does not wait for it.
                use std::os::unix::process::CommandExt;
                let mut cmd = std::process::Command::new(&self.program);
                cmd.arg(&self.name)
                    .stdin(std::process::Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .process_group(0);
                let mut child = cmd.spawn()?;
                let deadline = Instant::now() + ANSWER_TIMEOUT;
                loop {
                    if let Ok(s) = UnixStream::connect_addr(&addr) {
                        // Reaped when it ends, on a thread of its own.
                        std::thread::spawn(move || child.wait());
                        break s;
                    }
                    if let Ok(Some(status)) = child.try_wait() {
                        // Lost a race to another reaper for the name: connect to that one.
                        if let Ok(s) = UnixStream::connect_addr(&addr) {
                            break s;
                        }
                        return Err(std::io::Error::other(format!(
                            "the task reaper {} exited ({status})",
                            self.program.display()
                        )));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        return Err(std::io::Error::other(
                            "the task reaper did not listen in time",
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        let reader = stream.try_clone()?;
        let pending: Pending = Arc::default();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (p, a) = (pending.clone(), alive.clone());
        std::thread::Builder::new()
            .name("reaper-reader".into())
            .spawn(move || read_answers(reader, p, a))?;
        Ok(Conn {
            writer: stream,
            pending,
            alive,
        })
    }

    /// Runs `f` on a live connection (connecting, or starting the reaper, when there is none), holding it.
    fn on_conn<T>(&self, f: impl FnOnce(&mut Conn) -> std::io::Result<T>) -> std::io::Result<T> {
        let mut conn = self.conn.lock().expect("reaper connection poisoned");
        if conn
            .as_ref()
            .is_some_and(|c| !c.alive.load(std::sync::atomic::Ordering::SeqCst))
        {
            *conn = None;
        }
        if conn.is_none() {
            *conn = Some(self.connect()?);
        }
        let r = f(conn.as_mut().expect("connected"));
        if r.is_err() {
            *conn = None;
        }
        r
    }

    fn write(&self, msg: &ToReaper) -> std::io::Result<()> {
        let line = line_of(msg)?;
        self.on_conn(|c| c.writer.write_all(&line))
    }

    /// Starts `spawn` (its `id` is set here) at its gate. Blocking: call on a blocking thread.
    ///
    /// # Errors
    /// The reaper cannot be started or reached, or could not fork.
    pub fn spawn(&self, mut spawn: Spawn) -> std::io::Result<Started> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        spawn.id = id;
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
        let line = line_of(&ToReaper::Spawn(spawn))?;
        // Registered on the connection the request goes out on, before it goes out; once more on a new
        // connection if the reaper had gone away unnoticed.
        let mut waiters = Some((pid_tx, exit_tx));
        let mut sent = Err(std::io::Error::other("not sent"));
        for _ in 0..2 {
            sent = self.on_conn(|c| {
                let w = waiters.take().expect("waiters");
                c.pending.lock().expect("pending poisoned").insert(id, w);
                c.writer.write_all(&line).inspect_err(|_| {
                    waiters = c.pending.lock().expect("pending poisoned").remove(&id);
                })
            });
            if sent.is_ok() || waiters.is_none() {
                break;
            }
        }
        sent?;
        match pid_rx.recv_timeout(ANSWER_TIMEOUT) {
            Ok(Ok(pid)) => Ok(Started {
                pid,
                id,
                ended: exit_rx,
            }),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::other("the task reaper did not answer")),
        }
    }

    /// Opens spawn `id`'s gate: its command runs.
    ///
    /// # Errors
    /// The reaper cannot be reached (its child then exits at its closed gate).
    pub fn open(&self, id: u64) -> std::io::Result<()> {
        self.write(&ToReaper::Open { id })
    }

    /// Closes spawn `id`'s gate unopened.
    pub fn abort(&self, id: u64) {
        let _ = self.write(&ToReaper::Abort { id });
    }
}

/// `msg` as one JSON line.
fn line_of(msg: &ToReaper) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// The reader thread of one connection: answers to their waiters until the connection ends.
fn read_answers(stream: UnixStream, pending: Pending, alive: Arc<std::sync::atomic::AtomicBool>) {
    use std::io::BufRead;
    let mut by_pid: HashMap<u32, ExitTx> = HashMap::new();
    for line in std::io::BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<FromReaper>(&line) {
            Ok(FromReaper::Started { id, pid }) => {
                if let Some((pid_tx, exit_tx)) =
                    pending.lock().expect("pending poisoned").remove(&id)
                {
                    by_pid.insert(pid, exit_tx);
                    let _ = pid_tx.send(Ok(pid));
                }
            }
            Ok(FromReaper::Failed { id, error }) => {
                if let Some((pid_tx, _)) = pending.lock().expect("pending poisoned").remove(&id) {
                    let _ = pid_tx.send(Err(error));
                }
            }
            Ok(FromReaper::Exited { pid, code, signal }) => {
                if let Some(tx) = by_pid.remove(&pid) {
                    let _ = tx.send(Ended { code, signal });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the task reaper sent an unreadable line");
                break;
            }
        }
    }
    alive.store(false, std::sync::atomic::Ordering::SeqCst);
    // Waiters see their senders dropped: the exit file tells.
    pending.lock().expect("pending poisoned").clear();
}
