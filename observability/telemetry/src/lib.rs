//! Telemetry set-up shared by every Allot binary.
//!
//! [`init`] installs a `tracing` subscriber:
//! - the filter comes from `ALLOT_LOG` (or `RUST_LOG`), default `info`, in `tracing_subscriber::EnvFilter`
//!   syntax (e.g. `allot_allocator=debug,info`);
//! - `ALLOT_LOG_FORMAT=json` switches from human-readable lines to one JSON object per line.
//!
//! Logs go to standard error so that a binary's standard output stays free for its results.

use tracing_subscriber::EnvFilter;

/// Keeps telemetry running; drop it last, at the end of `main`.
#[must_use = "telemetry stops when the guard is dropped"]
#[derive(Debug)]
pub struct Guard {
    _private: (),
}

/// Installs the global `tracing` subscriber for `service` (e.g. `allot-registry`) at `version`.
///
/// Calling it twice is harmless: the second call keeps the first subscriber.
pub fn init(service: &'static str, version: &'static str) -> Guard {
    let filter = std::env::var("ALLOT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("ALLOT_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.compact().try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, version, "telemetry initialised");
    }
    Guard { _private: () }
}
