//! Sandbox garbage collection, as Mesos' agent does it (`--gc_delay`, `--gc_disk_headroom`,
//! `--disk_watch_interval`; Mesos `docs/configuration/agent.md`): a finished task's or executor's sandbox is
//! kept for operators and frameworks to read (`/files`), then removed once it is older than the allowed age,
//! which shrinks as the disk fills: `gc_delay * max(0, 1 - gc_disk_headroom - disk usage)`. A full disk thus
//! removes every finished sandbox at the next check, whatever its age; a sandbox of a live task or executor,
//! or of a task whose updates are not yet acknowledged, is never removed.
//!
//! Sandboxes are `<work_dir>/sandboxes/<framework>/<task>` and `<work_dir>/executors/<framework>/<executor>/
//! runs/<container>`; a sandbox is as old as the newest modification time of the directory and its files (a
//! task's last output). Directories left empty above them are removed too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// No sandbox changed more recently than this is removed, whatever the disk says: one of a task launched while
/// a collection runs (after it read what is live) is that young.
pub const YOUNGEST: Duration = Duration::from_secs(60);

/// The age past which a finished sandbox is removed: `delay` scaled by what is left of the disk above the
/// headroom (`usage` and `headroom` fractions of the disk, 0 to 1).
pub fn max_age(delay: Duration, headroom: f64, usage: f64) -> Duration {
    delay.mul_f64((1.0 - headroom - usage).clamp(0.0, 1.0))
}

/// The fraction (0 to 1) of the file system holding `path` in use, or `None` if it cannot be read.
pub fn disk_usage(path: &Path) -> Option<f64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let total = s.blocks() as f64;
    (total > 0.0).then(|| 1.0 - s.blocks_available() as f64 / total)
}

/// What must be kept: live or unacknowledged tasks (`(framework, task)`), and running executors' sandboxes.
#[derive(Debug, Default)]
pub struct Live {
    /// Command tasks, `(framework ID, task ID)`.
    pub tasks: HashSet<(String, String)>,
    /// Executors' sandboxes (their `runs/<container>` directories).
    pub sandboxes: HashSet<PathBuf>,
}

/// Removes every sandbox under `work_dir` that `live` does not name and that is older than `max_age` (and
/// than [`YOUNGEST`]) at `now`; returns how many. Blocking (file system walks).
pub fn collect(work_dir: &Path, live: &Live, max_age: Duration, now: SystemTime) -> usize {
    let max_age = max_age.max(YOUNGEST);
    let old = |dir: &Path| older_than(dir, now, max_age);
    let mut removed = 0;
    for fw in children(&work_dir.join("sandboxes")) {
        let fw_id = name(&fw);
        for task in children(&fw) {
            if !live.tasks.contains(&(fw_id.clone(), name(&task))) && old(&task) {
                removed += usize::from(remove(&task));
            }
        }
        let _ = std::fs::remove_dir(&fw);
    }
    for fw in children(&work_dir.join("executors")) {
        for executor in children(&fw) {
            let runs = executor.join("runs");
            for run in children(&runs) {
                if !live.sandboxes.contains(&run) && old(&run) {
                    removed += usize::from(remove(&run));
                }
            }
            let _ = std::fs::remove_dir(&runs);
            let _ = std::fs::remove_dir(&executor);
        }
        let _ = std::fs::remove_dir(&fw);
    }
    removed
}

fn children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether `dir` and each of its files last changed at least `max_age` before `now`. The directory is looked
/// at first, so that a young sandbox (most of them, at each check) costs one `stat` and no listing.
fn older_than(dir: &Path, now: SystemTime, max_age: Duration) -> bool {
    let old = |p: &Path| {
        std::fs::symlink_metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= max_age)
    };
    old(dir)
        && std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .all(|e| old(&e.path()))
}

fn remove(dir: &Path) -> bool {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            tracing::debug!(sandbox = %dir.display(), "sandbox removed");
            true
        }
        Err(e) => {
            tracing::warn!(sandbox = %dir.display(), error = %e, "cannot remove a sandbox");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_age_shrinks_as_the_disk_fills() {
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(max_age(week, 0.1, 0.0), week.mul_f64(0.9));
        assert_eq!(max_age(week, 0.1, 0.45), week.mul_f64(0.45));
        assert_eq!(
            max_age(week, 0.1, 0.95),
            Duration::ZERO,
            "a full disk keeps nothing"
        );
    }

    #[test]
    fn only_old_finished_sandboxes_go() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        let made = |p: &str| {
            let p = w.join(p);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("stdout"), "x").unwrap();
            p
        };
        let done = made("sandboxes/fw1/done");
        let running = made("sandboxes/fw1/running");
        let exited = made("executors/fw1/e1/runs/c1");
        let serving = made("executors/fw1/e2/runs/c2");
        let live = Live {
            tasks: [("fw1".to_string(), "running".to_string())].into(),
            sandboxes: [serving.clone()].into(),
        };
        let now = SystemTime::now();
        // Young: nothing goes, even with no age allowed (a full disk).
        assert_eq!(collect(w, &live, Duration::ZERO, now), 0);
        // An hour later, with a minute allowed: the finished ones go, the live ones stay.
        let later = now + Duration::from_secs(3600);
        assert_eq!(collect(w, &live, Duration::from_secs(60), later), 2);
        assert!(!done.exists() && !exited.exists());
        assert!(running.exists() && serving.exists());
        assert!(
            !w.join("executors/fw1/e1").exists(),
            "emptied parents go too"
        );
    }
}
