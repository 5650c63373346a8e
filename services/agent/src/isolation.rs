//! Resource isolation for tasks: cgroups (v1 or v2, through cgroups-rs) where the host allows it, otherwise
//! an address-space rlimit set by `prlimit(1)`, otherwise none.
//!
//! With cgroups, each task gets `<cgroup_root>/<agent>/<name>` with `memory` limited to the task's `mem`
//! (MiB) and `cpu` shares of `1024 x cpus` (v1; the v2 equivalent is a weight). With rlimits, only memory is
//! limited (`RLIMIT_AS`, which also counts address space reserved but never used: a fallback, not a match for
//! cgroups).
//!
//! A cgroup prepared with `keep` (a command task's, named after its checkpoint slot) is not removed when its
//! task ends but emptied and left for the slot's next task, which sets its own limits on it: making and
//! removing a cgroup v1 (two controllers, each a directory of some thirty files, under the kernel's one
//! cgroup lock) was an eighth of the agent's CPU per short task and serialized concurrent starts (issue 24).
//! One whose task the OOM killer hit is removed all the same, so that a kept cgroup's `oom_kill` count is
//! always its current task's.

use cgroups_rs::fs::error::Error as CgroupError;
use cgroups_rs::fs::{
    Cgroup, Controller, Hierarchy, cgroup_builder::CgroupBuilder, hierarchies,
    memory::MemController,
};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

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
        /// The host's cgroup hierarchy, found once at start (finding it reads `/proc/self/mountinfo`, which a
        /// task's start need not pay for).
        hierarchy: Hier,
        /// What this agent process knows of its kept cgroups.
        kept: Arc<Mutex<KeptCgroups>>,
    },
    /// `prlimit` at this path.
    Rlimits(String),
    /// Nothing.
    None,
}

/// What an agent process knows of the cgroups it keeps for its checkpoint slots (see the module docs), by
/// cgroup path. Lost with the process: a restarted agent writes every limit once more and looks for processes
/// in every kept cgroup before its next task.
#[derive(Debug, Default)]
pub struct KeptCgroups {
    /// The limits (cores, MiB) last written to each: a slot's next task of the same shape writes none.
    written: HashMap<String, (f64, f64)>,
    /// Those the release of their last task found empty: the slot's next task need not kill what is in them
    /// (reading a v1 cgroup's `cgroup.procs` in each hierarchy was 5% of the agent's CPU, issue 24).
    emptied: HashSet<String>,
}

/// The cgroup hierarchy found at start: v1 (with the mount points of its controllers) or v2 (unified).
#[derive(Debug, Clone)]
pub enum Hier {
    /// cgroup v1.
    V1(hierarchies::V1),
    /// cgroup v2.
    V2(hierarchies::V2),
}

impl Hier {
    /// The host's hierarchy now (what `cgroups_rs::fs::hierarchies::auto` finds).
    pub fn detect() -> Hier {
        if hierarchies::is_cgroup2_unified_mode() {
            Hier::V2(hierarchies::V2::new())
        } else {
            Hier::V1(hierarchies::V1::new())
        }
    }

    /// A copy for cgroups-rs, which takes its hierarchy boxed.
    fn boxed(&self) -> Box<dyn Hierarchy> {
        match self {
            Hier::V1(h) => Box::new(h.clone()),
            Hier::V2(h) => Box::new(h.clone()),
        }
    }
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
    /// An executor container's limits cannot be changed.
    #[error("cannot resize cgroup {path}: {source}")]
    Resize {
        /// The cgroup's path, relative to each controller's root.
        path: String,
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
            hierarchy: Hier::detect(),
            kept: Default::default(),
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
        keep: bool,
    ) -> Result<TaskIsolation, IsolationError> {
        match self {
            Isolator::Cgroups {
                parent,
                hierarchy,
                kept: known,
            } => {
                let path = format!("{parent}/{task}");
                // Locked only to read or write it: a kept cgroup serves one task at a time.
                let known_of = || known.lock().expect("kept cgroups poisoned");
                let last = || known_of().written.get(&path).copied();
                let remember = |limits: Option<(f64, f64)>| {
                    let mut k = known_of();
                    match limits {
                        Some(l) => k.written.insert(path.clone(), l),
                        None => k.written.remove(&path),
                    };
                };
                let keep = keep.then(|| known.clone());
                if keep.is_some() {
                    let kept = Cgroup::load_with_specified_controllers(
                        hierarchy.boxed(),
                        &path,
                        vec!["cpu".into(), "memory".into()],
                    );
                    if kept.exists() {
                        let emptied = known_of().emptied.remove(&path);
                        let iso = TaskIsolation::Cgroup { cg: kept, keep };
                        // Nothing of an earlier task may be left in it: its release emptied it, or, if this
                        // agent process did not see that, whatever is in it is killed now.
                        if !emptied {
                            iso.kill_all();
                        }
                        if last() != Some((cpus, mem_mib)) {
                            remember(None);
                            iso.set_limits(cpus, mem_mib).map_err(|source| {
                                IsolationError::Prepare {
                                    path: path.clone(),
                                    source,
                                }
                            })?;
                            remember(Some((cpus, mem_mib)));
                        }
                        return Ok(iso);
                    }
                }
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
                    .build(hierarchy.boxed())
                    .map_err(|source| IsolationError::Prepare {
                        path: path.clone(),
                        source,
                    })?;
                if keep.is_some() {
                    remember(Some((cpus, mem_mib)));
                }
                Ok(TaskIsolation::Cgroup { cg, keep })
            }
            Isolator::Rlimits(prlimit) if mem_mib > 0.0 => Ok(TaskIsolation::Prlimit {
                program: prlimit.clone(),
                bytes: (mem_mib * 1024.0 * 1024.0) as u64,
            }),
            _ => Ok(TaskIsolation::None),
        }
    }

    /// The isolation of task `task` prepared by an earlier agent process (with `keep` as it was prepared), to
    /// watch and release it after a restart: its cgroup, if this agent uses cgroups (rlimits were applied when
    /// the command started).
    pub fn reopen(&self, task: &str, keep: bool) -> TaskIsolation {
        match self {
            Isolator::Cgroups {
                parent,
                hierarchy,
                kept,
            } => TaskIsolation::Cgroup {
                cg: Cgroup::load(hierarchy.boxed(), format!("{parent}/{task}")),
                keep: keep.then(|| kept.clone()),
            },
            _ => TaskIsolation::None,
        }
    }
}

/// Isolation for one task.
#[derive(Debug)]
pub enum TaskIsolation {
    /// The task's cgroup.
    Cgroup {
        /// The cgroup.
        cg: Cgroup,
        /// Left, emptied, for the next task of its name when this one ends (see the module docs): with the
        /// agent's record of its kept cgroups, where the release notes that it emptied it.
        keep: Option<Arc<Mutex<KeptCgroups>>>,
    },
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

/// The `oom_kill N` count of a cgroup's `memory.oom_control` (v1) or `memory.events` (v2) text; 0 if absent.
fn oom_kills(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

impl TaskIsolation {
    /// Moves process `pid` into the task's cgroup (no-op otherwise).
    ///
    /// # Errors
    /// [`IsolationError::Attach`] if the cgroup refuses the process.
    pub fn attach(&self, pid: u32) -> Result<(), IsolationError> {
        match self {
            TaskIsolation::Cgroup { cg, .. } => cg
                .add_task_by_tgid(cgroups_rs::CgroupPid::from(pid as u64))
                .map_err(|source| IsolationError::Attach { pid, source }),
            _ => Ok(()),
        }
    }

    /// The `cgroup.procs` file of each of the task's cgroups (one per hierarchy on cgroup v1, one on v2; none
    /// without a cgroup): a process writes its pid there to join (a command the task reaper starts joins
    /// itself, see `executor::direct_argv`).
    pub fn procs_files(&self) -> Vec<std::path::PathBuf> {
        let TaskIsolation::Cgroup { cg, .. } = self else {
            return Vec::new();
        };
        let mut files: Vec<std::path::PathBuf> = cg
            .subsystems()
            .iter()
            .map(|s| s.to_controller().path().join("cgroup.procs"))
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Whether the kernel's OOM killer killed a process of this task (cgroups only): the `oom_kill` count of
    /// the task's memory cgroup, read from the one file that holds it (`memory.oom_control` on v1,
    /// `memory.events` on v2; cgroups-rs' `memory_stat` reads a dozen files, and on v2 leaves the count out).
    pub fn oom_killed(&self) -> bool {
        let TaskIsolation::Cgroup { cg, .. } = self else {
            return false;
        };
        let Some(m) = cg.controller_of::<MemController>() else {
            return false;
        };
        let file = if cg.v2() {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(m.path().join(file))
            .map(|text| oom_kills(&text) > 0)
            .unwrap_or(false)
    }

    /// Sets the cgroup's limits to `cpus` cores (CPU shares) and `mem_mib` MiB (0: unlimited): an executor's
    /// container grows and shrinks with its tasks. A no-op without a cgroup (rlimits are fixed at exec).
    ///
    /// # Errors
    /// [`IsolationError::Resize`] if the kernel refuses a limit (e.g. memory below what is in use).
    pub fn resize(&self, cpus: f64, mem_mib: f64) -> Result<(), IsolationError> {
        let TaskIsolation::Cgroup { cg, .. } = self else {
            return Ok(());
        };
        let resize = |source| IsolationError::Resize {
            path: cg.path().to_string(),
            source,
        };
        if let Some(m) = cg.controller_of::<MemController>() {
            let bytes = if mem_mib > 0.0 {
                (mem_mib * 1024.0 * 1024.0) as i64
            } else {
                -1
            };
            // Swap (v1: memory+swap) first when growing, last when shrinking: it may never be below memory.
            let current = m.memory_stat().limit_in_bytes;
            let grow = bytes < 0 || bytes > current;
            if grow {
                let _ = m.set_memswap_limit(bytes);
            }
            m.set_limit(bytes).map_err(resize)?;
            if !grow {
                m.set_memswap_limit(bytes).map_err(resize)?;
            }
        }
        if cpus > 0.0
            && let Some(c) = cg.controller_of::<cgroups_rs::fs::cpu::CpuController>()
        {
            c.set_shares(((cpus * 1024.0) as u64).max(2))
                .map_err(resize)?;
        }
        Ok(())
    }

    /// Sets a kept cgroup's limits for its next task, `cpus` cores and `mem_mib` MiB (0: unlimited), without
    /// reading the earlier ones: memory+swap unlimited first (v1 refuses a memory limit above it), then memory,
    /// then memory+swap, then the CPU shares. The memory+swap writes may fail where the kernel does not account
    /// swap (`swapaccount=0`), as the builder that made the cgroup lets them.
    fn set_limits(&self, cpus: f64, mem_mib: f64) -> Result<(), CgroupError> {
        let TaskIsolation::Cgroup { cg, .. } = self else {
            return Ok(());
        };
        if let Some(m) = cg.controller_of::<MemController>() {
            let bytes = if mem_mib > 0.0 {
                (mem_mib * 1024.0 * 1024.0) as i64
            } else {
                -1
            };
            let _ = m.set_memswap_limit(-1);
            m.set_limit(bytes)?;
            let _ = m.set_memswap_limit(bytes);
        }
        if let Some(c) = cg.controller_of::<cgroups_rs::fs::cpu::CpuController>() {
            // A task without cpus gets the kernel's default weight, as a new cgroup would.
            let shares = if cpus > 0.0 {
                (cpus * 1024.0) as u64
            } else {
                1024
            };
            c.set_shares(shares.max(2))?;
        }
        Ok(())
    }

    /// SIGKILLs every process in the task's cgroup (none without one). Returns whether there were any.
    fn kill_all(&self) -> bool {
        let TaskIsolation::Cgroup { cg, .. } = self else {
            return false;
        };
        let procs = cg.procs();
        for pid in &procs {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        !procs.is_empty()
    }

    /// Ends the task's isolation: kills whatever is left in its cgroup, then removes the cgroup, or, for one
    /// prepared with `keep` whose task the OOM killer spared, leaves it empty for the next task (see the
    /// module docs). Returns whether the OOM killer hit the task ([`TaskIsolation::oom_killed`], read once
    /// before the cgroup goes).
    pub fn release(self) -> bool {
        let oom = self.oom_killed();
        let TaskIsolation::Cgroup { cg, keep: kept } = &self else {
            return oom;
        };
        let keep = kept.is_some() && !oom;
        let mut left = self.kill_all();
        for _ in 0..50 {
            if keep && !left {
                if let Some(k) = kept {
                    k.lock()
                        .expect("kept cgroups poisoned")
                        .emptied
                        .insert(cg.path().to_string());
                }
                return oom;
            }
            if !keep && cg.delete().is_ok() {
                return oom;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            left = keep && !cg.procs().is_empty();
        }
        tracing::warn!(path = cg.path(), "cannot empty or remove a task's cgroup");
        oom
    }
}

#[cfg(test)]
mod tests {
    use super::oom_kills;

    #[test]
    fn the_oom_kill_count_is_read_from_either_version() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!((oom_kills(v1), oom_kills(v2)), (2, 1));
        assert_eq!(oom_kills("oom_kill_disable 0\n"), 0);
    }
}
