//! The journal of `allot batch`: what a restarted batch needs to resume its job where the killed one left
//! it, as the framework it was (within its `failover_timeout`), without running a finished task again.
//!
//! A file of JSON lines, appended to and flushed before each step takes effect on the cluster:
//! `{"job_sha256": HEX}` first (the job file it belongs to: a journal of another job file is not resumed),
//! `{"framework_id": ID}` once subscribed, `{"launched": JOB, "attempt": N}` before each launch, and
//! `{"ended": JOB, ...}` (the outcome) when a job task ended for good. A torn last line (the process died
//! while writing it) is ignored. The file is removed when the batch ends.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Entry {
    /// The SHA-256 of the job file, in hex.
    Job {
        /// The digest.
        job_sha256: String,
    },
    /// The framework subscribed under this ID.
    Subscribed {
        /// The framework ID.
        framework_id: String,
    },
    /// Attempt `attempt` (1 = first) of job task `launched` is about to be launched.
    Launched {
        /// The job task.
        launched: String,
        /// The attempt.
        attempt: u32,
    },
    /// Job task `ended` ended for good.
    Ended {
        /// The job task.
        ended: String,
        /// Its last state (`TASK_FINISHED`, ...).
        state: String,
        /// The command's exit code, if it exited.
        exit_code: Option<i32>,
        /// The agent it last ran on.
        agent: String,
        /// Seconds from its last launch to its end.
        seconds: f64,
        /// The last status message.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// What a journal says: the framework ID, the latest attempt of each launched job task, and the outcome of
/// each ended one.
#[derive(Debug, Default, PartialEq)]
pub struct Replayed {
    /// The job file's SHA-256 the journal was written for.
    pub job_sha256: Option<String>,
    /// The framework to re-subscribe as.
    pub framework_id: Option<String>,
    /// Job task -> its latest attempt.
    pub launched: BTreeMap<String, u32>,
    /// Job task -> its `Ended` entry.
    pub ended: BTreeMap<String, Entry>,
}

/// Reads the journal text `text`; lines that do not parse (a torn last line) are skipped.
pub fn replay(text: &str) -> Replayed {
    let mut out = Replayed::default();
    for line in text.lines() {
        match serde_json::from_str::<Entry>(line) {
            Ok(Entry::Job { job_sha256 }) => out.job_sha256 = Some(job_sha256),
            Ok(Entry::Subscribed { framework_id }) => out.framework_id = Some(framework_id),
            Ok(Entry::Launched { launched, attempt }) => {
                let a = out.launched.entry(launched).or_default();
                *a = (*a).max(attempt);
            }
            Ok(e @ Entry::Ended { .. }) => {
                let Entry::Ended { ended, .. } = &e else {
                    unreachable!()
                };
                out.ended.insert(ended.clone(), e.clone());
            }
            Err(_) => {}
        }
    }
    out
}

/// The SHA-256 of `text` (a job file), in hex.
pub fn job_digest(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An open journal, appended to.
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
}

impl Journal {
    /// Opens (creating it if needed) the journal at `path` and returns it with what it already holds.
    ///
    /// # Errors
    /// The file cannot be read or opened for appending.
    pub fn open(path: &Path) -> std::io::Result<(Journal, Replayed)> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        if !text.is_empty() && !text.ends_with('\n') {
            // A torn last line: end it, so the next entry starts on a line of its own.
            file.write_all(b"\n")?;
        }
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
            },
            replay(&text),
        ))
    }

    /// Appends `entry` and flushes it to the kernel (it survives a kill of this process).
    ///
    /// # Errors
    /// The write failed (disk full, file removed from under us).
    pub fn append(&mut self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }

    /// Forgets the framework ID (it was refused: torn down, or its failover timeout ran out).
    ///
    /// # Errors
    /// The file cannot be rewritten.
    pub fn forget_framework(&mut self) -> std::io::Result<()> {
        let text = std::fs::read_to_string(&self.path)?;
        let kept: String = text
            .lines()
            .filter(|l| !matches!(serde_json::from_str(l), Ok(Entry::Subscribed { .. })))
            .map(|l| format!("{l}\n"))
            .collect();
        let tmp = self.path.with_extension("journal.tmp");
        std::fs::write(&tmp, kept)?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        Ok(())
    }

    /// Removes the journal: the batch is over.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_replays_the_latest_attempts_and_outcomes_and_skips_a_torn_line() {
        let ended = Entry::Ended {
            ended: "a".into(),
            state: "TASK_FINISHED".into(),
            exit_code: Some(0),
            agent: "ag".into(),
            seconds: 1.5,
            message: String::new(),
            attempts: 2,
        };
        let lines = [
            serde_json::to_string(&Entry::Subscribed {
                framework_id: "fw-1".into(),
            })
            .unwrap(),
            serde_json::to_string(&Entry::Launched {
                launched: "a".into(),
                attempt: 1,
            })
            .unwrap(),
            serde_json::to_string(&Entry::Launched {
                launched: "b".into(),
                attempt: 1,
            })
            .unwrap(),
            serde_json::to_string(&Entry::Launched {
                launched: "a".into(),
                attempt: 2,
            })
            .unwrap(),
            serde_json::to_string(&ended).unwrap(),
            r#"{"launched":"c","att"#.to_string(),
        ];
        let r = replay(&lines.join("\n"));
        assert_eq!(r.framework_id.as_deref(), Some("fw-1"));
        assert_eq!(
            r.launched.into_iter().collect::<Vec<_>>(),
            [("a".to_string(), 2), ("b".to_string(), 1)]
        );
        assert_eq!(r.ended.get("a"), Some(&ended));
    }

    #[test]
    fn a_journal_file_is_appended_to_and_forgets_a_refused_framework() {
        let dir = std::env::temp_dir().join(format!("allot-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("job.toml.journal");
        let _ = std::fs::remove_file(&path);
        let (mut j, r) = Journal::open(&path).unwrap();
        assert_eq!(r, Replayed::default());
        j.append(&Entry::Subscribed {
            framework_id: "fw-1".into(),
        })
        .unwrap();
        j.append(&Entry::Launched {
            launched: "a".into(),
            attempt: 1,
        })
        .unwrap();
        drop(j);
        let (mut j, r) = Journal::open(&path).unwrap();
        assert_eq!(r.framework_id.as_deref(), Some("fw-1"));
        j.forget_framework().unwrap();
        j.append(&Entry::Launched {
            launched: "a".into(),
            attempt: 2,
        })
        .unwrap();
        let (j, r) = Journal::open(&path).unwrap();
        assert_eq!(r.framework_id, None);
        assert_eq!(r.launched.get("a"), Some(&2));
        j.remove();
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&dir);
    }
}
