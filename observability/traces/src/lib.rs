//! A local trace store for SREs, with no infrastructure beyond the `allot` binary.
//!
//! - [`receiver`]: an OTLP/gRPC trace receiver (the `TraceService/Export` call every OpenTelemetry SDK and
//!   collector speaks), handing what it receives to a [`receiver::SpanSink`]: memory (tests) or a [`Store`].
//! - [`Store`]: spans on disk as JSON lines (one [`SpanRecord`] per line) in a directory, with a size cap:
//!   `spans.jsonl` is renamed `spans.1.jsonl` when it passes half the cap, replacing the older one.
//! - [`query`]: the questions of `docs/why-did-my-task-land-there.md`: one task's trace
//!   ([`query::task_report`]), why its agent (the `accept` span's links to the `offer` spans it consumed, and
//!   the `allocation cycle` and `policy allocate` spans above them), recent traces and recent allocation
//!   cycles, for one framework or all ([`query::cycles`]).
//! - [`render`]: a trace as a text waterfall for the terminal or an SVG waterfall.
//!
//! `allot traces serve` runs the receiver into a store; `allot trace TASK_ID`, `allot traces list` and
//! `allot traces cycles` read it. In production the same spans go to an OpenTelemetry Collector and Jaeger
//! or Tempo instead (`observability/otel-collector/config.yaml`).

pub mod query;
pub mod receiver;
pub mod render;
mod span;
mod store;

pub use span::SpanRecord;
pub use store::{Store, StoreError};
