//! Values loaded from files and loaded again when the files change, without a restart: a process's TLS
//! material (`crate::tls::Tls`) and a service's ACL file (`allot_server::acl::Acls`).
//!
//! [`Watched::current`] looks at the files' modification times at most once every [`RELOAD_CHECK`] and, when
//! one changed, runs the loader it is given; a version that does not load is logged and the previous value
//! kept (a half-written file, a key that does not match its certificate, a broken edit).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often, at most, a [`Watched`] value looks at its files' modification times.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A value of type `T` loaded from `paths`, loaded again when one of them changes. Cheap to read: a lock, a
/// clone of `T` (keep `T` cheap to clone, e.g. `Arc`s).
#[derive(Debug)]
pub struct Watched<T> {
    /// What the value is, for the log lines (`TLS material`, `ACL file`).
    what: &'static str,
    paths: Vec<PathBuf>,
    state: Mutex<Loaded<T>>,
}

#[derive(Debug)]
struct Loaded<T> {
    value: T,
    stamp: Vec<Option<SystemTime>>,
    checked: Instant,
}

fn stamp(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl<T: Clone> Watched<T> {
    /// Loads the value with `load` (from `paths`), failing as it fails: a process must not start with material
    /// it cannot use.
    ///
    /// # Errors
    /// `load`'s error.
    pub fn open<E>(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl FnOnce() -> Result<T, E>,
    ) -> Result<Self, E> {
        // The stamp before the load: a change while loading is seen at the next check.
        let stamp = stamp(&paths);
        let value = load()?;
        Ok(Self {
            what,
            paths,
            state: Mutex::new(Loaded {
                value,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The current value, loaded again with `load` first if a file changed since the last load (looked at no
    /// more than once every [`RELOAD_CHECK`]); a load that fails is logged and the previous value returned.
    pub fn current<E: std::fmt::Display>(&self, load: impl FnOnce() -> Result<T, E>) -> T {
        let mut state = self.state.lock().expect("watched value poisoned");
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let now = stamp(&self.paths);
            if now != state.stamp {
                match load() {
                    Ok(value) => {
                        tracing::info!(what = self.what, path = %self.paths[0].display(), "changed on disk; loaded again");
                        state.value = value;
                        state.stamp = now;
                    }
                    Err(e) => {
                        tracing::warn!(what = self.what, error = %e, "changed on disk but does not load; keeping the previous version");
                    }
                }
            }
        }
        state.value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_loaded_again_and_a_broken_one_keeps_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let read = || {
            std::fs::read_to_string(&path)
                .unwrap()
                .trim()
                .parse::<u32>()
                .map_err(|e| e.to_string())
        };
        let w = Watched::open("number", vec![path.clone()], read).unwrap();
        assert_eq!(w.current(read), 1);
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        std::fs::write(&path, "2").unwrap();
        assert_eq!(w.current(read), 2, "the change is read");
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        std::fs::write(&path, "two").unwrap();
        assert_eq!(w.current(read), 2, "a broken file keeps the previous value");
        assert!(Watched::open("number", vec![path.clone()], read).is_err());
    }
}
