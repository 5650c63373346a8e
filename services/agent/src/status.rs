//! The status update manager (Mesos' `StatusUpdateManager`): every status update of a task is kept until the
//! framework has acknowledged it, and re-sent until then.
//!
//! Each task has one stream of updates, in the order the executor produced them. Only the head of a stream is
//! ever in flight: the next update of the task is sent once the head is acknowledged, so a framework sees a
//! task's updates in order. The acknowledgement comes back from the offer-broker
//! (`Agent.AcknowledgeStatusUpdates`) after the framework's ACKNOWLEDGE is recorded in etcd; an OK answer to
//! the `Update` call itself only says the broker received the update. An unacknowledged head is re-sent after
//! [`RETRY_MIN`], then after twice as long each time, up to [`RETRY_MAX`] (Mesos' `STATUS_UPDATE_RETRY_INTERVAL_MIN`
//! and `_MAX`). When a call fails (the broker is down or restarting), every unacknowledged head is re-sent as
//! soon as a call succeeds again.
//!
//! A real agent checkpoints each stream (Mesos' `--checkpoint`): every update, and every acknowledgement, is
//! appended to the `updates` file of the stream's checkpoint slot, `<work_dir>/meta/slots/<n>/`
//! (length-delimited `allot.agent.v1.StatusUpdateCheckpoint` records, the first naming the task), before it
//! takes effect, an update synced to disk before it is sent (an acknowledgement need not be: see `append`), and
//! [`StatusUpdateManager::recover`] rebuilds the streams from those files after a restart. A stream whose
//! terminal update is acknowledged is removed: its slot's file is emptied, and the slot (a directory with its
//! `updates` and the wrapper's `exit` file, see [`crate::executor`]) serves the next task. Slots are reused,
//! not made and removed per task, because on a file system that must skip recently freed inodes when it makes
//! new ones (ext4 without a journal), three inodes freed per task made every later file cost more: at 200
//! tasks/s a third of the agent's CPU went to finding a free inode (issue 24). Agents before slots kept one
//! directory per task, `<work_dir>/meta/frameworks/<framework_id>/tasks/<task_id>/`; those are still
//! recovered, and removed when their stream ends. An ended task is remembered in memory for
//! [`REMEMBER_ENDED`], so that a launch of it the broker sends again (it could not know whether its first call
//! got through) does not run it twice. Simulated agents keep their streams in memory only.

use allot_common::AbortOnDrop;
use allot_proto::agent::{
    CheckpointOwner, StatusUpdateAcknowledgement, StatusUpdateCheckpoint, StatusUpdateRequest,
    status_update_checkpoint,
};
use allot_proto::common::{TaskInfo, TaskState, TaskStatus};
use prost::Message as _;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// First re-send of an unacknowledged update, as Mesos' `STATUS_UPDATE_RETRY_INTERVAL_MIN` (10 s).
pub const RETRY_MIN: Duration = Duration::from_secs(10);

/// Longest wait between re-sends, as Mesos' `STATUS_UPDATE_RETRY_INTERVAL_MAX` (10 min).
pub const RETRY_MAX: Duration = Duration::from_secs(600);

/// What a checkpoint slot's `exit` file holds while its task has recorded no exit status: as long as the longest
/// status a wrapper writes (`255\n`), blank, so that it reads as no status whatever was there before.
pub const EXIT_BLANK: &[u8] = b"   \n";

/// The most updates one send takes from the manager.
pub const MAX_PER_SEND: usize = 1024;

/// How long the manager remembers a task whose terminal update was acknowledged (15 min), so that a launch
/// of it that arrives late (a broker sent it again, not knowing whether its first call got through) is
/// recognised and not run a second time. At most [`MAX_ENDED`] are remembered; an agent restart forgets them.
pub const REMEMBER_ENDED: Duration = Duration::from_secs(15 * 60);

/// The most ended tasks the manager remembers (see [`REMEMBER_ENDED`]).
pub const MAX_ENDED: usize = 100_000;

/// A task: `(framework_id, task_id)`.
pub type TaskKey = (String, String);

/// An update ready to go: the request and the W3C trace context of the task's launch (empty if none), which
/// the update's span continues.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The update and the task's sandbox.
    pub request: StatusUpdateRequest,
    /// The launch's trace context.
    pub context: HashMap<String, String>,
}

struct Stream {
    updates: VecDeque<StatusUpdateRequest>,
    /// The latest acknowledged update.
    acknowledged: Option<TaskStatus>,
    context: HashMap<String, String>,
    /// When the head is due to be (re-)sent; `None` until it was sent once.
    due: Option<Instant>,
    /// The wait before the next re-send of the head.
    backoff: Duration,
    /// The checkpoint file, appended to (real agents only); shared so that updates are written and synced
    /// outside the lock every task's stream sits behind.
    file: Option<Arc<std::fs::File>>,
    /// The directory `file` is in: a slot, `<meta>/slots/<n>` (emptied and freed when the stream ends), or an
    /// earlier agent's task directory (removed then).
    dir: Option<PathBuf>,
}

impl Stream {
    /// An empty stream whose first re-send waits `backoff`.
    fn new(
        context: HashMap<String, String>,
        file: Option<Arc<std::fs::File>>,
        backoff: Duration,
    ) -> Stream {
        Stream {
            updates: VecDeque::new(),
            acknowledged: None,
            context,
            due: None,
            backoff,
            file,
            dir: None,
        }
    }
}

/// The streams, and which heads are to be sent when.
#[derive(Default)]
struct Streams {
    tasks: HashMap<TaskKey, Stream>,
    /// Tasks whose head is to be sent at once (a new head, or every head after a failed call). An entry counts
    /// only while its task's head has not been sent (`due` is `None`).
    ready: VecDeque<TaskKey>,
    /// Re-send deadlines, earliest first. An entry counts only while its task's `due` is still that instant
    /// (an acknowledgement or a failure makes it stale).
    timers: BinaryHeap<Reverse<(Instant, TaskKey)>>,
    /// Tasks whose terminal update was acknowledged, oldest first, with when (see [`REMEMBER_ENDED`]).
    ended: VecDeque<(Instant, TaskKey)>,
    /// The keys of `ended`.
    ended_keys: HashSet<TaskKey>,
    /// Checkpoint slots made and free (their `updates` empty), lowest first.
    free_slots: BTreeSet<usize>,
    /// One past the highest slot made.
    next_slot: usize,
}

impl Streams {
    /// Remembers that `key` ended (its terminal update is acknowledged), forgetting the oldest beyond
    /// [`REMEMBER_ENDED`] and [`MAX_ENDED`].
    fn ended(&mut self, key: TaskKey, now: Instant) {
        while let Some((at, _)) = self.ended.front()
            && (now.duration_since(*at) > REMEMBER_ENDED || self.ended.len() >= MAX_ENDED)
        {
            let (_, old) = self.ended.pop_front().expect("front");
            self.ended_keys.remove(&old);
        }
        if self.ended_keys.insert(key.clone()) {
            self.ended.push_back((now, key));
        }
    }
}

/// The streams of every task on this agent (or on every simulated agent of this process).
pub struct StatusUpdateManager {
    streams: Mutex<Streams>,
    wake: Notify,
    /// `<work_dir>/meta` for a checkpointing agent.
    meta: Option<PathBuf>,
    retry_min: Duration,
}

fn status_of(r: &StatusUpdateRequest) -> &TaskStatus {
    static EMPTY: std::sync::LazyLock<TaskStatus> = std::sync::LazyLock::new(TaskStatus::default);
    r.status.as_ref().unwrap_or(&EMPTY)
}

/// Appends `records` to a stream's checkpoint file in one write. Every record is in the file (the page cache)
/// before the update it carries may be sent, so an agent process killed at any moment finds, when it
/// restarts, every update it sent and the framework has not acknowledged. A terminal update is also synced to
/// disk before it may be sent (one sync for the whole file: the records before it go along), so that even a
/// crash of the machine cannot make a restarted agent contradict an end the framework may have seen. Other
/// records are not synced, as Mesos' status update manager syncs none: after a crash of the machine the
/// task's processes are gone, and what a lost TASK_STARTING, TASK_RUNNING, process ID or acknowledgement
/// leaves is a task the restarted agent reports as TASK_FAILED (REASON_AGENT_RESTARTED), an update sent
/// again (updates are at least once), or a launch the agent has no record of, which reconciliation answers
/// (TASK_LOST or TASK_GONE). One sync per task instead of two (issue 24: the syncs were 18% of the agent's
/// CPU).
fn append(
    file: &std::fs::File,
    records: impl IntoIterator<Item = status_update_checkpoint::Record>,
) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    let mut sync = false;
    for record in records {
        sync |= matches!(&record, status_update_checkpoint::Record::Update(u)
            if status_of(u).state().is_terminal());
        StatusUpdateCheckpoint {
            record: Some(record),
        }
        .encode_length_delimited(&mut bytes)
        .expect("a Vec grows");
    }
    let mut writer = file;
    writer.write_all(&bytes)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// A stream's checkpoint as [`StatusUpdateManager::stream_file`] finds or makes it.
struct StreamFile {
    file: Option<Arc<std::fs::File>>,
    dir: Option<PathBuf>,
    /// The record naming the task, to write first, when the stream was just given a slot.
    owner: Option<status_update_checkpoint::Record>,
}

impl StreamFile {
    /// `stream`'s file and directory, with nothing to write first.
    fn of(stream: &Stream) -> StreamFile {
        StreamFile {
            file: stream.file.clone(),
            dir: stream.dir.clone(),
            owner: None,
        }
    }
}

impl StatusUpdateManager {
    /// A manager without checkpoints (simulated agents, tests); heads are re-sent after `retry_min`, doubling.
    pub fn in_memory(retry_min: Duration) -> StatusUpdateManager {
        StatusUpdateManager {
            streams: Mutex::new(Streams::default()),
            wake: Notify::new(),
            meta: None,
            retry_min,
        }
    }

    /// A checkpointing manager under `meta` (`<work_dir>/meta`), with the streams found there (in its slots and
    /// in earlier agents' task directories): every unacknowledged update is sent again, in order. Unreadable
    /// records end a file's replay (a torn last record after a crash); what was read before them is kept. A
    /// slot whose stream ended (or never began) is emptied and free.
    ///
    /// # Errors
    /// The I/O error if `meta` cannot be created or listed, or a file to keep cannot be opened.
    pub fn recover(meta: &Path, retry_min: Duration) -> std::io::Result<StatusUpdateManager> {
        let frameworks = meta.join("frameworks");
        std::fs::create_dir_all(&frameworks)?;
        std::fs::create_dir_all(meta.join("slots"))?;
        let mut streams = HashMap::new();
        let mut found = Vec::new();
        for fw in std::fs::read_dir(&frameworks)? {
            let fw = fw?;
            let Ok(tasks) = std::fs::read_dir(fw.path().join("tasks")) else {
                continue;
            };
            for task in tasks {
                let task = task?;
                let key = (
                    fw.file_name().to_string_lossy().into_owned(),
                    task.file_name().to_string_lossy().into_owned(),
                );
                found.push((Some(key), task.path(), None));
            }
        }
        let (mut free_slots, mut next_slot) = (BTreeSet::new(), 0);
        for (n, dir) in slot_dirs(meta)? {
            next_slot = next_slot.max(n + 1);
            found.push((None, dir, Some(n)));
        }
        for (key, dir, slot) in found {
            let path = dir.join("updates");
            let bytes = std::fs::read(&path).unwrap_or_default();
            let Replayed {
                updates,
                acknowledged,
                task: launched,
                owner,
                valid,
                ..
            } = replay(&bytes);
            // A task launched (its TaskInfo checkpointed) that made no update yet is kept: its process may
            // run, and a launch of it sent again must not start it a second time.
            let launched_silent = updates.is_empty()
                && acknowledged.is_none()
                && (launched.is_some() || dir.join("task").exists());
            let ended = updates.is_empty()
                && acknowledged
                    .as_ref()
                    .is_none_or(|s| s.state().is_terminal())
                && !launched_silent;
            let key = key.or_else(|| owner.map(|o| (o.framework_id, o.task_id)));
            let Some(key) = key.filter(|k| !ended && !streams.contains_key(k)) else {
                match slot {
                    Some(n) => {
                        free_slots.insert(n);
                        if !bytes.is_empty() {
                            std::fs::OpenOptions::new()
                                .write(true)
                                .open(&path)?
                                .set_len(0)?;
                        }
                    }
                    None => {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
                continue;
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            // Later records go right after the last good one, not after a torn one.
            file.set_len(valid as u64)?;
            let mut stream = Stream::new(HashMap::new(), Some(Arc::new(file)), retry_min);
            stream.updates = updates;
            stream.acknowledged = acknowledged;
            stream.dir = Some(dir);
            streams.insert(key, stream);
        }
        if !streams.is_empty() {
            tracing::info!(
                tasks = streams.len(),
                "recovered unacknowledged status updates"
            );
        }
        let ready = streams
            .iter()
            .filter(|(_, s)| !s.updates.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        Ok(StatusUpdateManager {
            streams: Mutex::new(Streams {
                tasks: streams,
                ready,
                free_slots,
                next_slot,
                ..Streams::default()
            }),
            wake: Notify::new(),
            meta: Some(meta.to_path_buf()),
            retry_min,
        })
    }

    /// Task `key`'s checkpoint directory, holding its `updates` and the wrapper's `exit` file (see
    /// [`crate::executor`]): its slot, `<meta>/slots/<n>`, or the task directory an earlier agent made.
    /// `None` without checkpoints, or before the task has a stream ([`StatusUpdateManager::begin`] gives it
    /// one).
    pub fn task_dir(&self, key: &TaskKey) -> Option<PathBuf> {
        self.streams
            .lock()
            .expect("streams poisoned")
            .tasks
            .get(key)
            .and_then(|s| s.dir.clone())
    }

    /// Adds `status` (with the task's `sandbox` path and launch trace `context`) to the end of its task's
    /// stream; checkpointed first when this manager checkpoints. [`StatusUpdateManager::push_all`] of one.
    ///
    /// # Errors
    /// As [`StatusUpdateManager::push_all`].
    pub fn push(
        &self,
        status: TaskStatus,
        sandbox: &str,
        context: &HashMap<String, String>,
    ) -> std::io::Result<()> {
        self.push_all(vec![status], sandbox, context)
    }

    /// Adds `statuses`, updates of one task in order (with its `sandbox` path and launch trace `context`), to
    /// the end of its stream. When this manager checkpoints, they are written to the task's checkpoint file
    /// and synced once, outside the lock that every stream sits behind, before any of them may be sent.
    ///
    /// # Errors
    /// The I/O error if the checkpoint cannot be written; the updates are still kept in memory and sent.
    pub fn push_all(
        &self,
        statuses: Vec<TaskStatus>,
        sandbox: &str,
        context: &HashMap<String, String>,
    ) -> std::io::Result<()> {
        let Some(first) = statuses.first() else {
            return Ok(());
        };
        let key = (first.framework_id.clone(), first.task_id.clone());
        debug_assert!(
            statuses
                .iter()
                .all(|s| s.framework_id == key.0 && s.task_id == key.1),
            "push_all takes one task's updates"
        );
        let requests: Vec<StatusUpdateRequest> = statuses
            .into_iter()
            .map(|status| StatusUpdateRequest {
                status: Some(status),
                sandbox: sandbox.to_string(),
                ..Default::default()
            })
            .collect();
        let (found, mut result) = self.stream_file(&key, context);
        if let Some(file) = &found.file
            && let Err(e) = append(
                file,
                found.owner.into_iter().chain(
                    requests
                        .iter()
                        .map(|r| status_update_checkpoint::Record::Update(r.clone())),
                ),
            )
        {
            result = Err(e);
        }
        {
            let mut streams = self.streams.lock().expect("streams poisoned");
            let streams = &mut *streams;
            let stream = streams
                .tasks
                .entry(key.clone())
                .or_insert_with(|| Stream::new(context.clone(), None, self.retry_min));
            let was_empty = stream.updates.is_empty();
            stream.updates.extend(requests);
            if was_empty {
                stream.due = None;
                streams.ready.push_back(key);
            }
        }
        self.wake.notify_one();
        result
    }

    /// The checkpoint file of task `key`'s stream. A task without a stream gets one now (with the launch's
    /// trace `context` and no updates) in a free checkpoint slot, or a new one (its directory made outside the
    /// lock), whose `exit` file is blanked (the previous task's status must not be taken for this one's); then
    /// the record naming the task, which must be the first written to the file, comes with it.
    ///
    /// # Errors
    /// The I/O error if the slot cannot be made or opened; the stream is still made, without a file.
    fn stream_file(
        &self,
        key: &TaskKey,
        context: &HashMap<String, String>,
    ) -> (StreamFile, std::io::Result<()>) {
        let slot = {
            let mut streams = self.streams.lock().expect("streams poisoned");
            if let Some(s) = streams.tasks.get(key) {
                return (StreamFile::of(s), Ok(()));
            }
            self.meta
                .as_ref()
                .map(|_| match streams.free_slots.pop_first() {
                    Some(n) => (n, false),
                    None => {
                        streams.next_slot += 1;
                        (streams.next_slot - 1, true)
                    }
                })
        };
        let mut result = Ok(());
        let opened = match (&self.meta, slot) {
            (Some(meta), Some((n, new))) => {
                let dir = meta.join("slots").join(n.to_string());
                let open = (if new {
                    std::fs::create_dir_all(&dir)
                } else {
                    Ok(())
                })
                .and_then(|()| {
                    // Blanked, not truncated (see `crate::executor`'s wrapper): the file keeps its block.
                    std::os::unix::fs::FileExt::write_all_at(
                        &std::fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(dir.join("exit"))?,
                        EXIT_BLANK,
                        0,
                    )?;
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.join("updates"))
                });
                match open {
                    Ok(f) => Some((Arc::new(f), dir)),
                    Err(e) => {
                        result = Err(e);
                        None
                    }
                }
            }
            _ => None,
        };
        let mut streams = self.streams.lock().expect("streams poisoned");
        let streams = &mut *streams;
        // Made meanwhile by another call for the same task, or not opened: the slot taken here goes back.
        let made = streams.tasks.contains_key(key);
        if (made || opened.is_none())
            && let Some((n, _)) = slot
        {
            streams.free_slots.insert(n);
        }
        if made {
            return (StreamFile::of(&streams.tasks[key]), result);
        }
        let mut stream = Stream::new(context.clone(), None, self.retry_min);
        let owner = opened.map(|(file, dir)| {
            stream.file = Some(file);
            stream.dir = Some(dir);
            status_update_checkpoint::Record::Owner(CheckpointOwner {
                framework_id: key.0.clone(),
                task_id: key.1.clone(),
            })
        });
        let found = StreamFile {
            owner,
            ..StreamFile::of(&stream)
        };
        streams.tasks.insert(key.clone(), stream);
        (found, result)
    }

    /// Task `key` is being launched: its stream is made (with the launch's trace `context`) and `task`, as
    /// launched, becomes the first record of its checkpoint file after the task's name, so that a restarted
    /// agent knows what it holds even before the task's first update. Not synced: the first update's sync
    /// takes it along, and a task whose record was lost in a crash never started its command (the record is
    /// written first). Returns the task's checkpoint directory ([`StatusUpdateManager::task_dir`]).
    ///
    /// # Errors
    /// The I/O error if the checkpoint cannot be written.
    pub fn begin(
        &self,
        key: &TaskKey,
        context: &HashMap<String, String>,
        task: &TaskInfo,
    ) -> std::io::Result<Option<PathBuf>> {
        let (found, result) = self.stream_file(key, context);
        result?;
        if let Some(f) = &found.file {
            append(
                f,
                found
                    .owner
                    .into_iter()
                    .chain([status_update_checkpoint::Record::Task(task.clone())]),
            )?;
        }
        Ok(found.dir)
    }

    /// Records the pid of task `key`'s wrapper in its checkpoint file (after [`StatusUpdateManager::begin`]),
    /// for a restarted agent to reattach to. Not synced, like the record of the launch.
    ///
    /// # Errors
    /// The I/O error if the checkpoint cannot be written.
    pub fn record_pid(&self, key: &TaskKey, pid: u32) -> std::io::Result<()> {
        let file = self
            .streams
            .lock()
            .expect("streams poisoned")
            .tasks
            .get(key)
            .and_then(|s| s.file.clone());
        match file {
            Some(f) => append(&f, [status_update_checkpoint::Record::Pid(pid)]),
            None => Ok(()),
        }
    }

    /// The framework acknowledged update `uuid` of task `key`: drops it if it is the head of the stream, so
    /// that the next update can go. Returns the state of the acknowledged update when it was the head; other
    /// acknowledgements (repeats, stale or unknown ones) change nothing and return `None`.
    pub fn acknowledge(&self, key: &TaskKey, uuid: &[u8]) -> Option<TaskState> {
        let mut streams = self.streams.lock().expect("streams poisoned");
        let mut ended = Vec::new();
        let (state, next) = self.acknowledge_locked(&mut streams, key, uuid, &mut ended);
        drop(streams);
        self.close_checkpoints(ended);
        if next {
            self.wake.notify_one();
        }
        state
    }

    /// [`StatusUpdateManager::acknowledge`] under the caller's lock; also says whether another update of the
    /// task is now ready to send. A stream that ends goes to `ended`, whose checkpoints the caller closes once
    /// it has let go of the lock ([`StatusUpdateManager::close_checkpoints`]).
    fn acknowledge_locked(
        &self,
        streams: &mut Streams,
        key: &TaskKey,
        uuid: &[u8],
        ended: &mut Vec<Stream>,
    ) -> (Option<TaskState>, bool) {
        let Some(stream) = streams.tasks.get_mut(key) else {
            return (None, false);
        };
        if stream.updates.front().map(|r| status_of(r).uuid.as_slice()) != Some(uuid) {
            return (None, false);
        }
        if let Some(file) = &stream.file
            && let Err(e) = append(file, [status_update_checkpoint::Record::Ack(uuid.to_vec())])
        {
            tracing::warn!(task = %key.1, error = %e, "cannot checkpoint a status update acknowledgement");
        }
        let head = stream.updates.pop_front().expect("head");
        let state = status_of(&head).state();
        stream.acknowledged = head.status;
        stream.due = None;
        stream.backoff = self.retry_min;
        let next = !stream.updates.is_empty();
        if !next && state.is_terminal() {
            ended.extend(streams.tasks.remove(key));
            streams.ended(key.clone(), Instant::now());
        } else if next {
            streams.ready.push_back(key.clone());
        }
        (Some(state), next)
    }

    /// Closes the checkpoints of `ended` streams (their terminal updates acknowledged), outside the lock every
    /// stream sits behind: a slot's file is emptied and the slot freed for the next task (see the module docs);
    /// an earlier agent's task directory is removed. A crash in between leaves an ended stream in its slot,
    /// which [`StatusUpdateManager::recover`] frees.
    fn close_checkpoints(&self, ended: Vec<Stream>) {
        let mut freed = Vec::new();
        for stream in ended {
            let Some(dir) = stream.dir else { continue };
            match (slot_number(&dir), stream.file) {
                (Some(n), Some(file)) => match file.set_len(0) {
                    Ok(()) => freed.push(n),
                    Err(e) => {
                        tracing::warn!(slot = n, error = %e, "cannot empty a checkpoint slot; it is not reused");
                    }
                },
                (None, _) => {
                    let _ = std::fs::remove_dir_all(dir);
                }
                (Some(_), None) => {}
            }
        }
        if !freed.is_empty() {
            let mut streams = self.streams.lock().expect("streams poisoned");
            streams.free_slots.extend(freed);
        }
    }

    /// `Agent.AcknowledgeStatusUpdates`: each acknowledgement as by [`StatusUpdateManager::acknowledge`], all
    /// under one lock; returns the updates it dropped: task, uuid and state.
    pub fn acknowledge_all(
        &self,
        acks: impl IntoIterator<Item = StatusUpdateAcknowledgement>,
    ) -> Vec<(TaskKey, Vec<u8>, TaskState)> {
        let mut streams = self.streams.lock().expect("streams poisoned");
        let mut wake = false;
        let mut ended = Vec::new();
        let acked = acks
            .into_iter()
            .filter_map(|a| {
                let key = (a.framework_id, a.task_id);
                let (state, next) =
                    self.acknowledge_locked(&mut streams, &key, &a.uuid, &mut ended);
                wake |= next;
                Some((key, a.uuid, state?))
            })
            .collect();
        drop(streams);
        self.close_checkpoints(ended);
        if wake {
            self.wake.notify_one();
        }
        acked
    }

    /// Updates not yet acknowledged, over all tasks.
    pub fn pending(&self) -> usize {
        self.streams
            .lock()
            .expect("streams poisoned")
            .tasks
            .values()
            .map(|s| s.updates.len())
            .sum()
    }

    /// Every task with a stream here: running, or with updates not yet acknowledged.
    pub fn streams(&self) -> Vec<TaskKey> {
        self.streams
            .lock()
            .expect("streams poisoned")
            .tasks
            .keys()
            .cloned()
            .collect()
    }

    /// Tasks whose latest update (acknowledged or not) is not terminal, with that update, or that have made no
    /// update at all (`None`: launched, checkpointed, then the agent died): after a restart, the tasks an
    /// earlier agent process left running.
    pub fn unfinished(&self) -> Vec<(TaskKey, Option<TaskStatus>)> {
        self.streams
            .lock()
            .expect("streams poisoned")
            .tasks
            .iter()
            .filter_map(|(k, s)| {
                let latest = s
                    .updates
                    .back()
                    .and_then(|r| r.status.clone())
                    .or_else(|| s.acknowledged.clone());
                match latest {
                    Some(l) if l.state().is_terminal() => None,
                    latest => Some((k.clone(), latest)),
                }
            })
            .collect()
    }

    /// What this manager knows of task `key`: `None` if it has no stream for it (no update yet, or its
    /// terminal update is acknowledged), else its latest update, if any, and whether that one is acknowledged.
    pub fn known(&self, key: &TaskKey) -> Option<Option<(TaskStatus, bool)>> {
        self.streams
            .lock()
            .expect("streams poisoned")
            .tasks
            .get(key)
            .map(|s| match s.updates.back().and_then(|r| r.status.clone()) {
                Some(pending) => Some((pending, false)),
                None => s.acknowledged.clone().map(|a| (a, true)),
            })
    }

    /// Whether update `uuid` of task `key` is here: waiting in its stream, or its latest acknowledged one (an
    /// executor lists the updates it has not seen acknowledged when it subscribes again; those the agent has
    /// are not taken twice).
    pub fn knows_update(&self, key: &TaskKey, uuid: &[u8]) -> bool {
        let streams = self.streams.lock().expect("streams poisoned");
        streams.tasks.get(key).is_some_and(|s| {
            s.updates.iter().any(|u| status_of(u).uuid == uuid)
                || s.acknowledged.as_ref().is_some_and(|a| a.uuid == uuid)
        })
    }

    /// Whether this manager has seen task `key`: it has a stream for it, or the task ended (its terminal update
    /// acknowledged) within [`REMEMBER_ENDED`]. A launch of such a task is a repeat and must not run it again.
    pub fn has_seen(&self, key: &TaskKey) -> bool {
        let streams = self.streams.lock().expect("streams poisoned");
        streams.tasks.contains_key(key) || streams.ended_keys.contains(key)
    }

    /// Takes up to `max` heads that are due at `now` (never sent, or not acknowledged in time) and schedules
    /// their next re-send; returns them with the earliest time another head may fall due.
    pub fn take_due(&self, now: Instant, max: usize) -> (Vec<Outgoing>, Option<Instant>) {
        let mut streams = self.streams.lock().expect("streams poisoned");
        let Streams {
            tasks,
            ready,
            timers,
            ..
        } = &mut *streams;
        let mut out = Vec::new();
        // Sends the head and schedules its re-send.
        let take = |out: &mut Vec<Outgoing>,
                    key: TaskKey,
                    stream: &mut Stream,
                    timers: &mut BinaryHeap<_>| {
            let Some(head) = stream.updates.front() else {
                return;
            };
            out.push(Outgoing {
                request: head.clone(),
                context: stream.context.clone(),
            });
            let at = now + stream.backoff;
            stream.due = Some(at);
            stream.backoff = (stream.backoff * 2).min(RETRY_MAX);
            timers.push(Reverse((at, key)));
        };
        while out.len() < max {
            let Some(key) = ready.pop_front() else { break };
            if let Some(stream) = tasks.get_mut(&key)
                && stream.due.is_none()
            {
                take(&mut out, key, stream, timers);
            }
        }
        while out.len() < max {
            let Some(Reverse((at, _))) = timers.peek() else {
                break;
            };
            if *at > now {
                break;
            }
            let Reverse((at, key)) = timers.pop().expect("peeked");
            if let Some(stream) = tasks.get_mut(&key)
                && stream.due == Some(at)
            {
                take(&mut out, key, stream, timers);
            }
        }
        let next = if ready.is_empty() {
            timers.peek().map(|Reverse((at, _))| *at)
        } else {
            Some(now)
        };
        (out, next)
    }

    /// A send failed, or a stream that carried sends broke: every head is due again at once (after a failed
    /// send, the sender waits its own backoff first).
    pub fn resend_all(&self) {
        let mut streams = self.streams.lock().expect("streams poisoned");
        let Streams {
            tasks,
            ready,
            timers,
            ..
        } = &mut *streams;
        ready.clear();
        timers.clear();
        for (key, stream) in tasks.iter_mut() {
            if !stream.updates.is_empty() {
                stream.due = None;
                ready.push_back(key.clone());
            }
        }
        drop(streams);
        self.wake.notify_one();
    }

    /// Starts sending due heads with `send` (see `StatusUpdateManager::run`) on a task of its own; the
    /// returned handle stops it, and aborts it when dropped (a crashed agent sends nothing more).
    pub fn start<F, Fut>(self: &Arc<Self>, send: F) -> Sending
    where
        F: FnMut(Vec<Outgoing>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Vec<Refused>, tonic::Status>> + Send,
    {
        let stop = tokio_util::sync::CancellationToken::new();
        let (me, until) = (self.clone(), stop.clone());
        Sending {
            manager: self.clone(),
            stop,
            task: AbortOnDrop(tokio::spawn(async move { me.run(send, until).await })),
        }
    }

    /// Sends due heads with `send` until `stop` is cancelled: one call at a time, up to [`MAX_PER_SEND`]
    /// updates each. `send` answers which updates the broker refused as malformed (they are dropped), or `Err`
    /// for a call the broker did not answer; that is retried with backoff (100 ms doubling to 1 s, plus up to
    /// as much again of jitter), and then every head is sent again. A standby's refusal that names the leader
    /// is retried at once (once in a row: `send` is expected to go to the named leader next), so that updates
    /// reach a new broker leader as soon as it leads, not a backoff later.
    async fn run<F, Fut>(&self, mut send: F, stop: tokio_util::sync::CancellationToken)
    where
        F: FnMut(Vec<Outgoing>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Refused>, tonic::Status>>,
    {
        let (first, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut delays = allot_common::jittered_retry_delays(first, max);
        let mut redirected = false;
        loop {
            let notified = self.wake.notified();
            let (due, next) = self.take_due(Instant::now(), MAX_PER_SEND);
            if due.is_empty() {
                let wait = next.map(|n| n.saturating_duration_since(Instant::now()));
                tokio::select! {
                    _ = notified => {}
                    _ = async {
                        match wait {
                            Some(w) => tokio::time::sleep(w).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            let n = due.len();
            match send(due).await {
                Ok(refused) => {
                    for (key, uuid) in refused {
                        self.acknowledge(&key, &uuid);
                    }
                    delays = allot_common::jittered_retry_delays(first, max);
                    redirected = false;
                }
                Err(e)
                    if !redirected
                        && allot_common::grpc::standby_names(&e).is_some_and(|l| !l.is_empty()) =>
                {
                    tracing::debug!(error = %e.message(), updates = n, "status updates sent to a standby; going to the leader");
                    redirected = true;
                    self.resend_all();
                }
                Err(e) => {
                    redirected = false;
                    let delay = delays.next().unwrap_or(max);
                    tracing::debug!(error = %e.message(), updates = n, ?delay, "status updates not delivered; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return,
                    }
                    self.resend_all();
                }
            }
        }
    }
}

/// An update the broker refused as malformed: its task and uuid.
pub type Refused = (TaskKey, Vec<u8>);

impl Outgoing {
    /// This update as [`Refused`], for a sender whose call the broker refused.
    pub fn refused(&self) -> Option<Refused> {
        let s = self.request.status.as_ref()?;
        Some(((s.framework_id.clone(), s.task_id.clone()), s.uuid.clone()))
    }
}

/// The sender started by [`StatusUpdateManager::start`].
pub struct Sending {
    manager: Arc<StatusUpdateManager>,
    stop: tokio_util::sync::CancellationToken,
    task: AbortOnDrop,
}

impl Sending {
    /// For a graceful shutdown: gives the pending updates (and whatever `busy` says is still running) up to
    /// `within` to be acknowledged, then stops sending. What is left stays checkpointed, if the manager
    /// checkpoints.
    pub async fn drain(mut self, within: Duration, busy: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        while (busy() || self.manager.pending() > 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.cancel();
        let _ = (&mut self.task.0).await;
    }
}

/// What one checkpoint file holds.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The unacknowledged updates, in order.
    pub updates: VecDeque<StatusUpdateRequest>,
    /// The latest acknowledged update.
    pub acknowledged: Option<TaskStatus>,
    /// The task as launched (its `task` record), if written.
    pub task: Option<TaskInfo>,
    /// The pid of the task's wrapper (its `pid` record), if written.
    pub pid: Option<u32>,
    /// The task a checkpoint slot belongs to (its `owner` record), if written.
    pub owner: Option<CheckpointOwner>,
    /// The length of the file's readable prefix.
    pub valid: usize,
}

/// The number of checkpoint slot `dir` (`<meta>/slots/<n>`); `None` for another directory (an earlier agent's
/// task directory).
pub fn slot_number(dir: &Path) -> Option<usize> {
    if dir.parent()?.file_name()? != "slots" {
        return None;
    }
    dir.file_name()?.to_str()?.parse().ok()
}

/// The checkpoint slots under `meta` (`<work_dir>/meta`): `(n, <meta>/slots/<n>)`, in no order.
///
/// # Errors
/// The I/O error if the slots' directory cannot be listed.
fn slot_dirs(meta: &Path) -> std::io::Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(meta.join("slots"))? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            out.push((n, entry.path()));
        }
    }
    Ok(out)
}

/// Every checkpoint slot under `meta` whose file names a task (its `owner` record), with what the file holds.
/// Reads every slot: for tests and tools, not for the agent's own path.
pub fn slot_checkpoints(meta: &Path) -> Vec<(PathBuf, Replayed)> {
    slot_dirs(meta)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, dir)| {
            let r = replay(&std::fs::read(dir.join("updates")).unwrap_or_default());
            r.owner.is_some().then_some((dir, r))
        })
        .collect()
}

/// The checkpoint directory that holds task `key`'s stream under `meta` (`<work_dir>/meta`), read from the
/// files: the slot whose `updates` file names the task, or an earlier agent's task directory that has an
/// `updates` file. `None` once the stream ended (its slot emptied) or before it began. Reads every slot: for
/// tests and tools, not for the agent's own path.
pub fn find_checkpoint(meta: &Path, (fw, task): &TaskKey) -> Option<PathBuf> {
    let old = meta.join("frameworks").join(fw).join("tasks").join(task);
    if old.join("updates").exists() {
        return Some(old);
    }
    slot_checkpoints(meta)
        .into_iter()
        .find(|(_, r)| {
            r.owner
                .as_ref()
                .is_some_and(|o| o.framework_id == *fw && o.task_id == *task)
        })
        .map(|(dir, _)| dir)
}

/// Reads a checkpoint file's records (a torn last record ends the readable prefix).
pub fn replay(all: &[u8]) -> Replayed {
    let mut r = Replayed::default();
    let mut bytes = all;
    while !bytes.is_empty() {
        let Ok(rec) = StatusUpdateCheckpoint::decode_length_delimited(&mut bytes) else {
            tracing::warn!("torn status update checkpoint record ignored");
            break;
        };
        match rec.record {
            Some(status_update_checkpoint::Record::Update(u)) => r.updates.push_back(u),
            Some(status_update_checkpoint::Record::Ack(uuid))
                if r.updates.front().map(|u| status_of(u).uuid.as_slice())
                    == Some(uuid.as_slice()) =>
            {
                r.acknowledged = r.updates.pop_front().and_then(|u| u.status);
            }
            Some(status_update_checkpoint::Record::Ack(_)) => {}
            Some(status_update_checkpoint::Record::Task(t)) => r.task = Some(t),
            Some(status_update_checkpoint::Record::Pid(p)) => r.pid = Some(p),
            Some(status_update_checkpoint::Record::Owner(o)) => r.owner = Some(o),
            None => {}
        }
        r.valid = all.len() - bytes.len();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(task: &str, state: TaskState, uuid: &str) -> TaskStatus {
        TaskStatus {
            task_id: task.into(),
            framework_id: "fw".into(),
            agent_id: "a".into(),
            state: state as i32,
            uuid: uuid.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn uuids(out: &[Outgoing]) -> Vec<String> {
        let mut v: Vec<String> = out
            .iter()
            .map(|o| String::from_utf8(status_of(&o.request).uuid.clone()).unwrap())
            .collect();
        v.sort();
        v
    }

    fn key(task: &str) -> TaskKey {
        ("fw".into(), task.into())
    }

    #[test]
    fn only_the_head_of_a_stream_is_in_flight_and_an_ack_releases_the_next() {
        let m = StatusUpdateManager::in_memory(Duration::from_secs(10));
        let none = HashMap::new();
        m.push(update("t1", TaskState::TaskRunning, "r1"), "", &none)
            .unwrap();
        m.push(update("t1", TaskState::TaskFinished, "f1"), "", &none)
            .unwrap();
        m.push(update("t2", TaskState::TaskRunning, "r2"), "", &none)
            .unwrap();
        let now = Instant::now();
        let (out, next) = m.take_due(now, 100);
        assert_eq!(uuids(&out), ["r1", "r2"]);
        assert_eq!(next, Some(now + Duration::from_secs(10)));
        // Nothing is due again before the retry interval.
        assert!(m.take_due(now + Duration::from_secs(9), 100).0.is_empty());
        // A stale or foreign acknowledgement changes nothing; the head's releases the next update.
        assert_eq!(m.acknowledge(&key("t1"), b"f1"), None);
        assert_eq!(m.acknowledge(&key("t9"), b"r1"), None);
        assert!(m.acknowledge(&key("t1"), b"r1").is_some());
        assert_eq!(m.acknowledge(&key("t1"), b"r1"), None);
        let (out, _) = m.take_due(now + Duration::from_secs(1), 100);
        assert_eq!(uuids(&out), ["f1"]);
        let (latest, acked) = m
            .known(&key("t1"))
            .expect("t1 is known")
            .expect("an update");
        assert_eq!((latest.uuid.as_slice(), acked), (&b"f1"[..], false));
        let (latest, acked) = m
            .known(&key("t2"))
            .expect("t2 is known")
            .expect("an update");
        assert_eq!((latest.uuid.as_slice(), acked), (&b"r2"[..], false));
        assert_eq!(m.known(&key("t9")), None);
        // The terminal update's acknowledgement ends the stream.
        assert!(m.acknowledge(&key("t1"), b"f1").is_some());
        assert_eq!(m.known(&key("t1")), None, "the stream has ended");
        assert_eq!(m.pending(), 1);
        // An ended task is still seen, so that a launch of it sent again is not run twice.
        assert!(m.has_seen(&key("t1")) && m.has_seen(&key("t2")));
        assert!(!m.has_seen(&key("t9")));
    }

    #[test]
    fn ended_tasks_are_remembered_for_a_while_and_the_oldest_forgotten_first() {
        let mut streams = Streams::default();
        let t0 = Instant::now();
        streams.ended(key("a"), t0);
        streams.ended(key("b"), t0 + Duration::from_secs(1));
        streams.ended(key("a"), t0 + Duration::from_secs(2));
        assert_eq!(streams.ended.len(), 2, "a repeat is remembered once");
        // Past REMEMBER_ENDED, the next end forgets the old ones.
        streams.ended(key("c"), t0 + REMEMBER_ENDED + Duration::from_millis(500));
        assert!(!streams.ended_keys.contains(&key("a")));
        assert!(streams.ended_keys.contains(&key("b")) && streams.ended_keys.contains(&key("c")));
    }

    #[test]
    fn an_unacknowledged_head_is_resent_with_doubling_backoff_and_at_once_after_a_failure() {
        let m = StatusUpdateManager::in_memory(Duration::from_secs(10));
        m.push(
            update("t", TaskState::TaskRunning, "r"),
            "",
            &HashMap::new(),
        )
        .unwrap();
        let t0 = Instant::now();
        assert_eq!(m.take_due(t0, 10).0.len(), 1);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(m.take_due(t1, 10).0.len(), 1);
        // Now 20 s until the next re-send.
        assert!(m.take_due(t1 + Duration::from_secs(19), 10).0.is_empty());
        assert_eq!(m.take_due(t1 + Duration::from_secs(20), 10).0.len(), 1);
        m.resend_all();
        assert_eq!(m.take_due(t1 + Duration::from_secs(21), 10).0.len(), 1);
        assert_eq!(m.take_due(t1, 0).0.len(), 0, "max is honoured");
    }

    #[test]
    fn a_checkpointed_stream_survives_a_restart_and_an_acknowledged_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("meta");
        let none = HashMap::new();
        {
            let m = StatusUpdateManager::recover(&meta, Duration::from_secs(10)).unwrap();
            m.push(update("t1", TaskState::TaskRunning, "r1"), "/sb", &none)
                .unwrap();
            m.push(update("t1", TaskState::TaskFinished, "f1"), "/sb", &none)
                .unwrap();
            m.push(update("t2", TaskState::TaskRunning, "r2"), "", &none)
                .unwrap();
            m.push(update("t2", TaskState::TaskFailed, "x2"), "", &none)
                .unwrap();
            assert!(m.acknowledge(&key("t1"), b"r1").is_some());
            assert!(m.acknowledge(&key("t2"), b"r2").is_some());
            assert!(m.acknowledge(&key("t2"), b"x2").is_some());
        }
        assert_eq!(find_checkpoint(&meta, &key("t2")), None, "t2 ended");
        // A torn record at the end of t1's file (a crash in the middle of a write) is ignored.
        let file = find_checkpoint(&meta, &key("t1")).unwrap().join("updates");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(&[0x7f, 0x0a, 0x01]).unwrap();
        let m = StatusUpdateManager::recover(&meta, Duration::from_secs(10)).unwrap();
        assert_eq!(m.pending(), 1);
        // t1 has r1 acknowledged and f1 still to go.
        let (latest, acked) = m
            .known(&key("t1"))
            .flatten()
            .expect("t1 survives the restart");
        assert_eq!((latest.uuid.as_slice(), acked), (&b"f1"[..], false));
        let (out, _) = m.take_due(Instant::now(), 10);
        assert_eq!(uuids(&out), ["f1"]);
        assert_eq!(out[0].request.sandbox, "/sb");
        assert!(m.acknowledge(&key("t1"), b"f1").is_some());
        assert_eq!(find_checkpoint(&meta, &key("t1")), None);
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            0,
            "the slot is emptied"
        );
    }

    /// A stream ended frees its slot for the next task: tasks one after another use one slot directory, and
    /// the next task's `exit` file does not hold the previous task's status.
    #[test]
    fn checkpoint_slots_are_reused_and_their_exit_file_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("meta");
        let m = StatusUpdateManager::recover(&meta, Duration::from_secs(10)).unwrap();
        let none = HashMap::new();
        for t in ["t1", "t2", "t3"] {
            let task = TaskInfo {
                task_id: t.into(),
                ..Default::default()
            };
            let slot = m.begin(&key(t), &none, &task).unwrap().unwrap();
            assert_eq!(slot, meta.join("slots/0"), "{t} reuses the first slot");
            let blank = std::fs::read_to_string(slot.join("exit")).unwrap();
            assert_eq!(blank.trim(), "", "{t}");
            std::fs::write(slot.join("exit"), b"137\n").unwrap();
            m.push(update(t, TaskState::TaskFinished, t), "", &none)
                .unwrap();
            assert_eq!(find_checkpoint(&meta, &key(t)), Some(slot));
            assert!(m.acknowledge(&key(t), t.as_bytes()).is_some());
        }
        // Two at once take two slots; after a restart the free one is found free and the other kept.
        for t in ["a", "b"] {
            m.push(update(t, TaskState::TaskRunning, t), "", &none)
                .unwrap();
        }
        assert!(m.acknowledge(&key("a"), b"a").is_some());
        m.push(update("a", TaskState::TaskFinished, "af"), "", &none)
            .unwrap();
        assert!(m.acknowledge(&key("a"), b"af").is_some());
        drop(m);
        let m = StatusUpdateManager::recover(&meta, Duration::from_secs(10)).unwrap();
        assert_eq!(m.streams(), [key("b")]);
        let slots = std::fs::read_dir(meta.join("slots")).unwrap().count();
        assert_eq!(slots, 2);
        let c = m
            .begin(&key("c"), &none, &TaskInfo::default())
            .unwrap()
            .unwrap();
        assert_ne!(Some(c), m.task_dir(&key("b")), "b's slot is not given away");
    }

    #[test]
    fn a_task_launched_without_an_update_yet_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("meta");
        // The agent checkpointed the task and started it, then died before its first update; an empty
        // directory (no TaskInfo) is left from nothing worth keeping.
        // (These are the directories agents before checkpoint slots made per task.)
        let launched = meta.join("frameworks/fw/tasks/t1");
        std::fs::create_dir_all(&launched).unwrap();
        std::fs::write(launched.join("task"), b"").unwrap();
        std::fs::create_dir_all(meta.join("frameworks/fw/tasks/t2")).unwrap();
        let m = StatusUpdateManager::recover(&meta, Duration::from_secs(10)).unwrap();
        assert_eq!(m.unfinished(), [(key("t1"), None)]);
        assert!(
            m.has_seen(&key("t1")),
            "a launch of it sent again is ignored"
        );
        assert!(!meta.join("frameworks/fw/tasks/t2").exists());
        // Its stream goes on in the earlier agent's directory, removed when it ends.
        assert_eq!(m.task_dir(&key("t1")), Some(launched.clone()));
        m.push(
            update("t1", TaskState::TaskFailed, "x"),
            "",
            &HashMap::new(),
        )
        .unwrap();
        assert!(launched.join("updates").exists());
        assert!(m.acknowledge(&key("t1"), b"x").is_some());
        assert!(!launched.exists());
    }

    /// The launch and the pid are the first records of the update stream's file (no `task` or `pid` file):
    /// a restarted agent finds both, before and after the task's first update.
    #[test]
    fn the_launch_and_pid_records_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("meta");
        let m = StatusUpdateManager::recover(&meta, Duration::from_secs(10)).unwrap();
        let task = TaskInfo {
            task_id: "t1".into(),
            ..Default::default()
        };
        let checkpoint = m
            .begin(&key("t1"), &HashMap::new(), &task)
            .unwrap()
            .unwrap();
        m.record_pid(&key("t1"), 4242).unwrap();
        assert_eq!(m.task_dir(&key("t1")), Some(checkpoint.clone()));
        let mut files: Vec<String> = std::fs::read_dir(&checkpoint)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["exit", "updates"]);
        drop(m);
        let m = StatusUpdateManager::recover(&meta, Duration::from_secs(10)).unwrap();
        assert_eq!(
            m.unfinished(),
            [(key("t1"), None)],
            "launched, no update yet"
        );
        m.push(
            update("t1", TaskState::TaskRunning, "r"),
            "",
            &HashMap::new(),
        )
        .unwrap();
        drop(m);
        let r = replay(&std::fs::read(checkpoint.join("updates")).unwrap());
        assert_eq!(
            (r.task, r.pid, r.updates.len()),
            (Some(task), Some(4242), 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_naming_the_leader_is_retried_at_once_and_other_failures_back_off() {
        let m = Arc::new(StatusUpdateManager::in_memory(Duration::from_secs(10)));
        m.push(
            update("t", TaskState::TaskRunning, "r"),
            "",
            &HashMap::new(),
        )
        .unwrap();
        let standby = || {
            let mut s =
                tonic::Status::unavailable("not the leader; the leader is at 10.0.0.2:5052");
            s.metadata_mut().insert(
                allot_common::grpc::LEADER_METADATA,
                "10.0.0.2:5052".parse().unwrap(),
            );
            s
        };
        // The broker answers: a standby's redirect, the same again (the named leader is a standby too), then
        // a failure without a leader, then success.
        let answers = Arc::new(std::sync::Mutex::new(vec![
            Ok(Vec::new()),
            Err(tonic::Status::unavailable("connection refused")),
            Err(standby()),
            Err(standby()),
        ]));
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, c) = (answers.clone(), calls.clone());
        let start = tokio::time::Instant::now();
        let _sending = m.start(move |_| {
            c.lock().unwrap().push(start.elapsed());
            let answer = a.lock().unwrap().pop().unwrap_or(Ok(Vec::new()));
            async move { answer }
        });
        while calls.lock().unwrap().len() < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let at = calls.lock().unwrap().clone();
        assert_eq!(
            at[0], at[1],
            "the first redirect is followed at once: {at:?}"
        );
        assert!(
            at[2] - at[1] >= Duration::from_millis(100),
            "a second redirect in a row backs off: {at:?}"
        );
        assert!(at[3] - at[2] >= at[2] - at[1], "backoff grows: {at:?}");
        assert!(
            at[3] - at[2] <= Duration::from_millis(400),
            "the backoff is 100 ms doubling, with jitter: {at:?}"
        );
    }
}
