//! What every Allot process shares, servers and clients alike (the framework SDK and the CLI included): IDs,
//! time, retry delays, status update UUIDs and spans, calling gRPC, and protocol resources.
//!
//! Layout:
//! - [`grpc`]: lazy client channels, traced and counted; [`grpc::Replicas`], which follows the leader of a
//!   replicated service;
//! - [`convert`]: protocol resources to and from [`allot_resources::Resources`], with validation;
//! - here: IDs, time, retry delays, status update UUIDs and spans.
//!
//! This crate stays lean on purpose (no etcd client, no flag parsing, no server): a framework author's build
//! pulls it in through the SDK. What only the services need (configuration, the etcd store, leader election,
//! serving) is `allot-server`.

pub mod convert;
pub mod grpc;
pub mod reload;
pub mod tls;

/// The `status update` span of one task status update, the same on the agent (which sends it), the
/// offer-broker (which records and forwards it) and the framework (which receives it): `otel.kind` is
/// `internal` or, at the framework, `consumer`; `allot.attempts` is recorded by the agent's retries. Its
/// target is `allot_common::status`, which Allot's log leaves out unless its filter names it (see
/// `allot_telemetry::LOG_QUIET`); a trace exporter gets it in any case.
pub fn status_update_span(
    status: &allot_proto::common::TaskStatus,
    kind: &'static str,
) -> tracing::Span {
    tracing::info_span!(
        target: "allot_common::status",
        "status update",
        otel.kind = kind,
        allot.framework.id = %status.framework_id,
        allot.task.id = %status.task_id,
        allot.agent.id = %status.agent_id,
        allot.task.state = status.state().as_str_name(),
        allot.task.reason = %status.reason,
        allot.attempts = tracing::field::Empty,
    )
}

/// Retry delays: `first`, then doubling up to 5 s, without end and without jitter (backon's exponential
/// backoff). Make a new one to start over after a success.
pub fn retry_delays(first: std::time::Duration) -> impl Iterator<Item = std::time::Duration> {
    use backon::BackoffBuilder;
    doubling(first, std::time::Duration::from_secs(5)).build()
}

/// backon's exponential backoff from `first`, doubling up to `max`, without end.
fn doubling(first: std::time::Duration, max: std::time::Duration) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
}

/// Retry delays for calls many processes make to one service while it fails over: `first`, then doubling up
/// to `max`, each with up to as much again of random jitter (so that agents that lost the same broker do not
/// come back in step), without end. A short `max` bounds how long a caller lags behind the service's return.
pub fn jittered_retry_delays(
    first: std::time::Duration,
    max: std::time::Duration,
) -> impl Iterator<Item = std::time::Duration> {
    use backon::BackoffBuilder;
    doubling(first, max).with_jitter().build()
}

/// Checks a role name as Mesos does (`mesos::roles::validate`): `*` (the default role), or a path of one or
/// more components joined by `/` (a role tree, Mesos 1.6+: `eng`, `eng/web`, `eng/web/canary`), 1-128 bytes
/// in all, where no component is empty (so no leading, trailing or doubled `/`), `.`, `..` or `*`, starts
/// with `-`, or holds whitespace or a control character. A role is an etcd key suffix (`roles/eng/web`),
/// never a path on disk.
///
/// # Errors
/// Why `name` is not a role name, in words.
pub fn check_role(name: &str) -> Result<(), String> {
    let what = |why: &str| Err(format!("role '{}': {why}", name.escape_debug()));
    if name.is_empty() {
        return what("a role name cannot be empty");
    }
    if name.len() > 128 {
        return what("a role name is at most 128 bytes");
    }
    if name == "*" {
        return Ok(());
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return what(
            "a role name's components cannot be empty (no leading, trailing or doubled '/')",
        );
    }
    for c in name.split('/') {
        let why = if c == "." || c == ".." {
            "a role name or component cannot be '.' or '..'"
        } else if c.starts_with('-') {
            "a role name or component cannot start with '-'"
        } else if c.chars().any(|c| c.is_whitespace() || c.is_control()) {
            "a role name cannot contain whitespace or control characters"
        } else if c.contains('*') {
            "a role name cannot contain '*' (only the default role is '*')"
        } else {
            continue;
        };
        return what(why);
    }
    Ok(())
}

/// Whether `id` is a valid agent, framework or task ID: 1-128 characters of `[A-Za-z0-9._-]` (safe as a path
/// component and an etcd key segment).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Unix time now, in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix time now, in seconds with a fraction.
pub fn now_secs() -> f64 {
    now_ms() as f64 / 1000.0
}

/// A new random ID (UUID v4 text form) with a readable prefix, e.g. `agent-…`, `offer-…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// A new `TaskStatus.uuid` (Mesos' status update UUID, which the framework's acknowledgement names): 16 bytes,
/// unique per update. The first 8 are random, drawn once per process; the last 8 count the updates this process
/// has made (big-endian). Unlike [`new_id`], making one costs neither a system call for randomness nor a
/// format, and agents make two per task.
pub fn new_status_uuid() -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PROCESS: std::sync::LazyLock<u64> =
        std::sync::LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut uuid = Vec::with_capacity(16);
    uuid.extend_from_slice(&PROCESS.to_be_bytes());
    uuid.extend_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    uuid
}

/// A background task that is aborted when this handle is dropped: a service whose `run` future is dropped
/// (a crash in a test, an aborted task) stops its background work with it.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AbortOnDrop {
    /// Aborts the task and waits until it has stopped: unlike a drop, nothing the task was doing can still
    /// happen after this returns (an abort takes effect only at the task's next `.await`).
    pub async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn role_names_are_checked_as_mesos_does() {
        for good in [
            "*",
            "dev",
            "web-prod",
            "team.a",
            "a_b",
            "R1",
            "eng/web",
            "eng/web/canary",
            "a.b/c-d",
        ] {
            assert!(super::check_role(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "a b",
            "a\tb",
            "a\u{8}b",
            "/eng",
            "eng/",
            "eng//web",
            "eng/./web",
            "eng/..",
            "eng/-web",
            "eng/*",
            "eng/a b",
            "a*",
            &"x".repeat(129),
        ] {
            assert!(super::check_role(bad).is_err(), "{bad:?}");
        }
        assert!(
            super::check_role("-x")
                .unwrap_err()
                .contains("start with '-'")
        );
    }

    use std::time::Duration;

    #[test]
    fn retry_delays_double_up_to_five_seconds() {
        let ms: Vec<u128> = super::retry_delays(Duration::from_millis(200))
            .take(8)
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn status_uuids_are_16_bytes_and_differ() {
        let (a, b) = (super::new_status_uuid(), super::new_status_uuid());
        assert_eq!((a.len(), b.len()), (16, 16));
        assert_eq!(a[..8], b[..8], "one process prefix");
        assert_ne!(a, b);
    }
}
