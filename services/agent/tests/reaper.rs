//! The task reaper (`allot-reaper`, `allot_agent::reaper`) as the agent uses it: a real reaper process on its
//! abstract socket, real children, real exit files.
use allot_agent::reaper::{Client, Ended, Spawn};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_allot-reaper"))
}

/// A sandbox with blank `stdout`, `stderr` and `exit` files (as the agent makes them).
fn sandbox(dir: &Path, name: &str) -> PathBuf {
    let s = dir.join(name);
    std::fs::create_dir_all(&s).unwrap();
    for f in ["stdout", "stderr"] {
        std::fs::File::create(s.join(f)).unwrap();
    }
    std::fs::write(s.join("exit"), "    ").unwrap();
    s
}

/// Shell command `script` behind the gate the agent puts first (`executor::direct_argv`).
fn spawn_of(sandbox: &Path, script: &str) -> Spawn {
    Spawn {
        id: 0,
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("read -r _ || exit 125\n{script}"),
        ],
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("ALLOT_TASK_ID".into(), "t1".into()),
        ],
        cwd: sandbox.to_path_buf(),
        stdout: sandbox.join("stdout"),
        stderr: sandbox.join("stderr"),
        exit: Some(sandbox.join("exit")),
    }
}

/// Waits (at most 5 s) until process `pid` is gone, and asserts that it is.
async fn until_gone(pid: u32) {
    let alive = || Path::new(&format!("/proc/{pid}")).exists();
    for _ in 0..100 {
        if !alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(), "process {pid} is still there");
}

fn work_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("meta")).unwrap();
    d
}

#[tokio::test]
async fn a_command_runs_once_its_gate_opens_and_its_exit_is_recorded() {
    let dir = work_dir();
    let client = Client::new(program(), dir.path());
    let s = sandbox(dir.path(), "a");
    let script = "pwd; echo $ALLOT_TASK_ID; echo oops >&2; exit 3";
    let started = client.spawn(spawn_of(&s, script)).unwrap();
    // Held at the gate: nothing written yet.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(std::fs::read_to_string(s.join("stdout")).unwrap(), "");
    client.open(started.id).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), started.ended)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ended,
        Ended {
            code: Some(3),
            signal: None
        }
    );
    assert_eq!(std::fs::read_to_string(s.join("exit")).unwrap(), "  3\n");
    let out = std::fs::read_to_string(s.join("stdout")).unwrap();
    assert_eq!(out, format!("{}\nt1\n", s.display()));
    assert_eq!(std::fs::read_to_string(s.join("stderr")).unwrap(), "oops\n");
}

#[tokio::test]
async fn an_aborted_gate_runs_nothing_a_missing_program_is_127_and_a_signal_is_128_plus() {
    let dir = work_dir();
    let client = Client::new(program(), dir.path());
    let a = sandbox(dir.path(), "a");
    let marker = dir.path().join("ran");
    let cmd = format!("touch {}", marker.display());
    let held = client.spawn(spawn_of(&a, &cmd)).unwrap();
    client.abort(held.id);
    let ended = held.ended.await.unwrap();
    assert_eq!(ended.code, Some(125));
    assert!(!marker.exists(), "an aborted command must not run");
    // Recorded as never started, not as status 125.
    assert_eq!(std::fs::read_to_string(a.join("exit")).unwrap(), " -1\n");

    let b = sandbox(dir.path(), "b");
    let missing = client
        .spawn(spawn_of(&b, "no-such-program-here --flag"))
        .unwrap();
    client.open(missing.id).unwrap();
    assert_eq!(missing.ended.await.unwrap().code, Some(127));
    let err = std::fs::read_to_string(b.join("stderr")).unwrap();
    assert!(err.contains("no-such-program-here"), "{err}");
    let mut unstartable = spawn_of(&b, "true");
    unstartable.argv[0] = "/no/such/shell".into();
    assert!(client.spawn(unstartable).is_err());

    let c = sandbox(dir.path(), "c");
    let killed = client.spawn(spawn_of(&c, "sleep 30")).unwrap();
    client.open(killed.id).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(killed.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(killed.ended.await.unwrap().signal, Some(15));
    assert_eq!(std::fs::read_to_string(c.join("exit")).unwrap(), "143\n");
}

#[tokio::test]
async fn a_task_outlives_its_agent_and_its_exit_file_is_written_for_the_next_agent() {
    let dir = work_dir();
    let s = sandbox(dir.path(), "a");
    let pid = {
        let first = Client::new(program(), dir.path());
        let started = first.spawn(spawn_of(&s, "sleep 0.5; exit 7")).unwrap();
        first.open(started.id).unwrap();
        started.pid
        // The first agent's client goes away here, as a killed agent's connection would.
    };
    // The next agent process connects to the same reaper (it would watch the pid): the exit file is written
    // before the process is reaped.
    let next = Client::new(program(), dir.path());
    let s2 = sandbox(dir.path(), "b");
    let other = next.spawn(spawn_of(&s2, "true")).unwrap();
    next.open(other.id).unwrap();
    assert_eq!(other.ended.await.unwrap().code, Some(0));
    until_gone(pid).await;
    assert_eq!(std::fs::read_to_string(s.join("exit")).unwrap(), "  7\n");
}

/// The agent goes away after the reaper started a command and before it opened the gate (killed between
/// checkpointing the pid and sending `Open`): the command runs nothing, and its exit file says it never
/// started, which the next agent reports as REASON_AGENT_RESTARTED; a command's own exit status 125 after an
/// opened gate stays 125.
#[tokio::test]
async fn a_gate_its_agent_never_opened_is_recorded_as_never_started_not_as_status_125() {
    let dir = work_dir();
    let s = sandbox(dir.path(), "a");
    let marker = dir.path().join("ran");
    let pid = {
        let first = Client::new(program(), dir.path());
        let started = first
            .spawn(spawn_of(&s, &format!("touch {}", marker.display())))
            .unwrap();
        started.pid
    };
    let next = Client::new(program(), dir.path());
    let s2 = sandbox(dir.path(), "b");
    let own = next.spawn(spawn_of(&s2, "exit 125")).unwrap();
    next.open(own.id).unwrap();
    assert_eq!(own.ended.await.unwrap().code, Some(125));
    assert_eq!(std::fs::read_to_string(s2.join("exit")).unwrap(), "125\n");
    until_gone(pid).await;
    assert!(!marker.exists(), "a command whose gate never opened ran");
    assert_eq!(std::fs::read_to_string(s.join("exit")).unwrap(), " -1\n");
}
