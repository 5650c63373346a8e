//! The offer-broker's Prometheus series (served at `/metrics` with `--metrics-listen`).
//!
//! | series | type | labels | meaning |
//! |---|---|---|---|
//! | `allot_offers_total` | counter | | offers sent to frameworks |
//! | `allot_offers_outstanding` | gauge | | offers sent and not yet accepted, declined or rescinded |
//! | `allot_offers_accepted_total` | counter | | offers used by an ACCEPT |
//! | `allot_offers_declined_total` | counter | | offers declined |
//! | `allot_offers_rescinded_total` | counter | | offers withdrawn (agent gone, allocator restarted) |
//! | `allot_tasks_launched_total` | counter | | tasks persisted as TASK_STAGING and sent to agents |
//! | `allot_task_status_updates_total` | counter | `state` | status updates recorded, by new state |
//! | `allot_tasks` | gauge | `state` | tasks the broker knows, by latest state (`TASK_RUNNING`, ...) |
//! | `allot_frameworks_connected` | gauge | | frameworks with an open event stream |
//! | `allot_agents_alive` | gauge | | agents whose liveness key is present |
//! | `allot_agent_streams_open` | gauge | | agents with an open status update stream (`StatusUpdates.Stream`) |
//! | `allot_stale_tasks_killed_total` | counter | | tasks an agent reported live that the broker holds ended or does not know (a launch held up in a partition, a torn-down framework's task), killed |
//!
//! Gauges are refreshed after each batch of grants and on every heartbeat tick.

use allot_telemetry::metrics::prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec};
use allot_telemetry::metrics::{counter, counter_vec, gauge, gauge_vec};
use std::sync::LazyLock;

pub(crate) struct Metrics {
    pub offers: IntCounter,
    pub outstanding: Gauge,
    pub accepted: IntCounter,
    pub declined: IntCounter,
    pub rescinded: IntCounter,
    pub launched: IntCounter,
    pub updates: IntCounterVec,
    pub tasks: GaugeVec,
    pub connected: Gauge,
    pub agents_alive: Gauge,
    pub agent_streams: Gauge,
    pub stale_killed: IntCounter,
}

pub(crate) static M: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    offers: counter("allot_offers_total", "Offers sent to frameworks"),
    outstanding: gauge(
        "allot_offers_outstanding",
        "Offers sent and not yet accepted, declined or rescinded",
    ),
    accepted: counter("allot_offers_accepted_total", "Offers used by an ACCEPT"),
    declined: counter("allot_offers_declined_total", "Offers declined"),
    rescinded: counter(
        "allot_offers_rescinded_total",
        "Offers withdrawn: their agent went away or the allocator restarted",
    ),
    launched: counter(
        "allot_tasks_launched_total",
        "Tasks persisted as TASK_STAGING and sent to their agent",
    ),
    updates: counter_vec(
        "allot_task_status_updates_total",
        "Status updates recorded, by new state",
        &["state"],
    ),
    tasks: gauge_vec(
        "allot_tasks",
        "Tasks the broker knows, by latest state",
        &["state"],
    ),
    connected: gauge(
        "allot_frameworks_connected",
        "Frameworks with an open event stream",
    ),
    agents_alive: gauge("allot_agents_alive", "Agents whose liveness key is present"),
    agent_streams: gauge(
        "allot_agent_streams_open",
        "Agents with an open status update stream",
    ),
    stale_killed: counter(
        "allot_stale_tasks_killed_total",
        "Tasks an agent reported live that the broker holds ended or does not know, killed",
    ),
});
