//! Spans on disk: JSON lines in a directory, size-capped by rotation.

use crate::SpanRecord;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file new spans are appended to.
const CURRENT: &str = "spans.jsonl";
/// The file the current one becomes when it passes half the cap (the older one is replaced).
const PREVIOUS: &str = "spans.1.jsonl";
/// Held (an exclusive `flock`) by the one process that writes the store.
const LOCK: &str = "writer.lock";

/// What a [`Store`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file of the store could not be created, read, written or renamed.
    #[error("trace store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Another process (another `allot traces serve`) already writes this directory.
    #[error(
        "another process writes the trace store {dir} (it holds {LOCK}); give this one another --dir"
    )]
    Locked {
        /// The store's directory.
        dir: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory of spans: `spans.jsonl` (newest) and `spans.1.jsonl` (the ones before), one [`SpanRecord`]
/// as JSON per line, together at most about `max_bytes`.
///
/// Any number of processes may read a store ([`Store::scan`]); one at a time may write it
/// ([`Store::writer`]). A line cut short by a crash of the writer is skipped when read.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// The writing end of a [`Store`]: appends, rotates, and holds the store's lock until dropped.
#[derive(Debug)]
pub struct StoreWriter {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<(File, u64)>,
    _lock: File,
}

impl Store {
    /// A store in `dir` (which need not exist yet: readers then find no spans).
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens the store for writing, creating the directory, keeping together at most about `max_bytes`
    /// (the current file is rotated when it passes half of it).
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process writes the store; [`StoreError::Io`] when the directory
    /// or a file cannot be created.
    pub fn writer(&self, max_bytes: u64) -> Result<StoreWriter, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join(LOCK);
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: self.dir.clone(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let (file, size) = open_current(&self.dir)?;
        Ok(StoreWriter {
            dir: self.dir.clone(),
            max_bytes: max_bytes.max(2),
            inner: Mutex::new((file, size)),
            _lock: lock,
        })
    }

    /// Calls `f` with every stored span, oldest file first, in the order they were written; returns how
    /// many lines were skipped as unreadable (a line cut short by a crash, or not a span).
    ///
    /// # Errors
    /// [`StoreError::Io`] when a file exists but cannot be read.
    pub fn scan(&self, mut f: impl FnMut(SpanRecord)) -> Result<usize, StoreError> {
        let mut skipped = 0;
        for name in [PREVIOUS, CURRENT] {
            let path = self.dir.join(name);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            for line in BufReader::new(file).lines() {
                let line = line.map_err(io(&path))?;
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_str::<SpanRecord>(&line) {
                    Ok(span) => f(span),
                    Err(_) => skipped += 1,
                }
            }
        }
        Ok(skipped)
    }

    /// Every stored span for which `keep` is true.
    ///
    /// # Errors
    /// As [`Store::scan`].
    pub fn collect(
        &self,
        mut keep: impl FnMut(&SpanRecord) -> bool,
    ) -> Result<Vec<SpanRecord>, StoreError> {
        let mut out = Vec::new();
        self.scan(|s| {
            if keep(&s) {
                out.push(s);
            }
        })?;
        Ok(out)
    }
}

fn open_current(dir: &Path) -> Result<(File, u64), StoreError> {
    let path = dir.join(CURRENT);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    let size = file.metadata().map_err(io(&path))?.len();
    Ok((file, size))
}

impl StoreWriter {
    /// Appends `spans`, one line each, in one write; rotates first when the current file has passed half
    /// the cap.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the write or the rotation fails (the spans of this call are then lost; the
    /// store stays readable).
    pub fn append(&self, spans: &[SpanRecord]) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(spans.len() * 512);
        for s in spans {
            // A SpanRecord has only strings, numbers and maps of strings: it always serializes.
            serde_json::to_writer(&mut buf, s).expect("a span serializes");
            buf.push(b'\n');
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.1 >= self.max_bytes / 2 {
            let (from, to) = (self.dir.join(CURRENT), self.dir.join(PREVIOUS));
            std::fs::rename(&from, &to).map_err(io(&from))?;
            *inner = open_current(&self.dir)?;
        }
        let path = self.dir.join(CURRENT);
        inner.0.write_all(&buf).map_err(io(&path))?;
        inner.1 += buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(n: u64) -> SpanRecord {
        SpanRecord {
            service: "allot-test".into(),
            pid: 1,
            trace_id: format!("{n:032x}"),
            span_id: format!("{n:016x}"),
            parent_span_id: String::new(),
            name: format!("span {n}"),
            kind: 1,
            attributes: [("allot.task.id".to_string(), format!("t{n}"))].into(),
            links: vec![],
            start_ns: n,
            end_ns: n + 1,
            status: 0,
        }
    }

    #[test]
    fn spans_written_are_read_back_in_order_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("traces"));
        let writer = store.writer(1 << 20).unwrap();
        writer.append(&[span(1), span(2)]).unwrap();
        writer.append(&[span(3)]).unwrap();
        // A writer killed in the middle of a line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.dir().join(CURRENT))
            .unwrap();
        f.write_all(b"{\"service\":\"allot-te").unwrap();
        let mut names = Vec::new();
        let skipped = store.scan(|s| names.push(s.name)).unwrap();
        assert_eq!(names, ["span 1", "span 2", "span 3"]);
        assert_eq!(skipped, 1);
    }

    #[test]
    fn the_store_keeps_about_its_cap_and_the_newest_spans() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let one_line = serde_json::to_vec(&span(0)).unwrap().len() as u64 + 1;
        let writer = store.writer(one_line * 20).unwrap();
        for n in 0..100 {
            writer.append(&[span(n)]).unwrap();
        }
        let kept = store.collect(|_| true).unwrap();
        assert!(kept.len() <= 21, "about the cap: {}", kept.len());
        assert_eq!(kept.last().unwrap().name, "span 99");
        let starts: Vec<u64> = kept.iter().map(|s| s.start_ns).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "in order");
    }

    #[test]
    fn one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let first = store.writer(1 << 20).unwrap();
        assert!(matches!(
            store.writer(1 << 20),
            Err(StoreError::Locked { .. })
        ));
        drop(first);
        store.writer(1 << 20).expect("free again");
    }

    #[test]
    fn a_store_not_yet_written_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("nothing"));
        assert_eq!(store.collect(|_| true).unwrap(), vec![]);
    }
}
