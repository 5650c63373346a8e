//! Resource isolation for tasks: cgroups (v1 or v2, through cgroups-rs) where the host allows it, otherwise
//! an address-space rlimit set by `prlimit(1)`, otherwise none.
//!
//! With cgroups, each task gets `<cgroup_root>/<agent>/<task>` with `memory` limited to the task's `mem`
//! (MiB) and `cpu` shares of `1024 x cpus` (v1; the v2 equivalent is a weight). With rlimits, only memory is
//! limited (`RLIMIT_AS`, which also counts address space reserved but never used: a fallback, not a match for
//! cgroups).

use cgroups_rs::fs::error::Error as CgroupError;
use cgroups_rs::fs::{Cgroup, cgroup_builder::CgroupBuilder, hierarchies, memory::MemController};
use std::path::Path;

/// The isolation the agent applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// cgroups if usable, else rlimits if `prlimit` exists, else none.
    Auto,
    /// cgroups, or the agent refuses to start.
    Cgroups,
    /// `prlimit --as` around each command.
    Rlimits,
    /// No limits.
    None,
}

/// The isolation chosen at start.
#[derive(Debug, Clone)]
pub enum Isolator {
    /// cgroups under this path relative to each controller's root.
    Cgroups {
        /// e.g. `allot/agent-…`.
        parent: String,
    },
    /// `prlimit` at this path.
    Rlimits(String),
    /// Nothing.
    None,
}

/// Why isolation could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// cgroups were required but a probe cgroup cannot be created or removed.
    #[error("cgroups are not usable here: {0}")]
    Cgroups(#[source] CgroupError),
    /// A task's cgroup cannot be created.
    #[error("cannot create cgroup {path}: {source}")]
    Prepare {
        /// The cgroup's path, relative to each controller's root.
        path: String,
        /// What cgroups-rs reported.
        source: CgroupError,
    },
    /// A task's process cannot be moved into its cgroup.
    #[error("cannot move process {pid} into its cgroup: {source}")]
    Attach {
        /// The process.
        pid: u32,
        /// What cgroups-rs reported.
        source: CgroupError,
    },
}

/// Chooses the isolator for `mode`; `parent` is the cgroup path for this agent's tasks.
///
/// # Errors
/// [`IsolationError::Cgroups`] when `mode` is [`Mode::Cgroups`] and a probe cgroup cannot be created.
pub fn detect(mode: Mode, parent: &str) -> Result<Isolator, IsolationError> {
    let prlimit = ["/usr/bin/prlimit", "/bin/prlimit"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let try_cgroups = || -> Result<Isolator, IsolationError> {
        let probe = format!("{parent}/probe");
        let cg = CgroupBuilder::new(&probe)
            .set_specified_controllers(vec!["cpu".into(), "memory".into()])
            .memory()
            .memory_hard_limit(64 << 20)
            .done()
            .build(hierarchies::auto())
            .map_err(IsolationError::Cgroups)?;
        cg.delete().map_err(IsolationError::Cgroups)?;
        Ok(Isolator::Cgroups {
            parent: parent.to_string(),
        })
    };
    Ok(match mode {
        Mode::None => Isolator::None,
        Mode::Rlimits => prlimit
            .map(|p| Isolator::Rlimits(p.into()))
            .unwrap_or(Isolator::None),
        Mode::Cgroups => try_cgroups()?,
        Mode::Auto => match try_cgroups() {
            Ok(i) => i,
            Err(e) => {
                tracing::info!(error = %e, "cgroups not usable; falling back to rlimits");
                prlimit
                    .map(|p| Isolator::Rlimits(p.into()))
                    .unwrap_or(Isolator::None)
            }
        },
    })
}

impl Isolator {
    /// A short name for logs: `cgroups`, `rlimits` or `none`.
    pub fn name(&self) -> &'static str {
        match self {
            Isolator::Cgroups { .. } => "cgroups",
            Isolator::Rlimits(_) => "rlimits",
            Isolator::None => "none",
        }
    }

    /// Prepares isolation for task `task` with `cpus` cores and `mem_mib` MiB (0 means unlimited).
    ///
    /// # Errors
    /// [`IsolationError::Prepare`] if the task's cgroup cannot be created.
    pub fn prepare(
        &self,
        task: &str,
        cpus: f64,
        mem_mib: f64,
    ) -> Result<TaskIsolation, IsolationError> {
        match self {
            Isolator::Cgroups { parent } => {
                let path = format!("{parent}/{task}");
                let mut b = CgroupBuilder::new(&path)
                    .set_specified_controllers(vec!["cpu".into(), "memory".into()]);
                if mem_mib > 0.0 {
                    let bytes = (mem_mib * 1024.0 * 1024.0) as i64;
                    b = b
                        .memory()
                        .memory_hard_limit(bytes)
                        .memory_swap_limit(bytes)
                        .done();
                }
                if cpus > 0.0 {
                    b = b.cpu().shares(((cpus * 1024.0) as u64).max(2)).done();
                }
                let cg = b
                    .build(hierarchies::auto())
                    .map_err(|source| IsolationError::Prepare { path, source })?;
                Ok(TaskIsolation::Cgroup(cg))
            }
            Isolator::Rlimits(prlimit) if mem_mib > 0.0 => Ok(TaskIsolation::Prlimit {
                program: prlimit.clone(),
                bytes: (mem_mib * 1024.0 * 1024.0) as u64,
            }),
            _ => Ok(TaskIsolation::None),
        }
    }

    /// The isolation of task `task` prepared by an earlier agent process, to watch and release it after a
    /// restart: its cgroup, if this agent uses cgroups (rlimits were applied when the command started).
    pub fn reopen(&self, task: &str) -> TaskIsolation {
        match self {
            Isolator::Cgroups { parent } => TaskIsolation::Cgroup(Cgroup::load(
                hierarchies::auto(),
                format!("{parent}/{task}"),
            )),
            _ => TaskIsolation::None,
        }
    }
}

/// Isolation for one task.
#[derive(Debug)]
pub enum TaskIsolation {
    /// The task's cgroup.
    Cgroup(Cgroup),
    /// Run the command under `program --as=bytes --`.
    Prlimit {
        /// Path of `prlimit`.
        program: String,
        /// Address-space limit in bytes.
        bytes: u64,
    },
    /// Nothing.
    None,
}

impl TaskIsolation {
    /// Moves process `pid` into the task's cgroup (no-op otherwise).
    ///
    /// # Errors
    /// [`IsolationError::Attach`] if the cgroup refuses the process.
    pub fn attach(&self, pid: u32) -> Result<(), IsolationError> {
        match self {
            TaskIsolation::Cgroup(cg) => cg
                .add_task_by_tgid(cgroups_rs::CgroupPid::from(pid as u64))
                .map_err(|source| IsolationError::Attach { pid, source }),
            _ => Ok(()),
        }
    }

    /// Whether the kernel's OOM killer killed a process of this task (cgroups only).
    pub fn oom_killed(&self) -> bool {
        match self {
            TaskIsolation::Cgroup(cg) => cg
                .controller_of::<MemController>()
                .map(|m| {
                    let s = m.memory_stat();
                    s.oom_control.oom_kill > 0
                })
                .unwrap_or(false),
            _ => false,
        }
    }

    /// Removes the task's cgroup; every process in it must be gone.
    pub fn release(self) {
        if let TaskIsolation::Cgroup(cg) = self {
            for pid in cg.procs() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            for _ in 0..50 {
                if cg.delete().is_ok() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            tracing::warn!(path = cg.path(), "cannot remove task cgroup");
        }
    }
}
