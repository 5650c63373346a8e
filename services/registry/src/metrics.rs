//! The registry's Prometheus series (served at `/metrics` with `--metrics-listen`).
//!
//! | series | type | meaning |
//! |---|---|---|
//! | `allot_registry_agents_reachable` | gauge | registered agents whose heartbeats arrive in time (set on every sweep) |
//! | `allot_registry_agent_timeouts_total` | counter | agents declared unreachable after `agent_timeout` without a heartbeat |

use allot_telemetry::metrics::prometheus::{Gauge, IntCounter};
use std::sync::LazyLock;

pub(crate) struct Metrics {
    pub reachable: Gauge,
    pub timeouts: IntCounter,
}

pub(crate) static M: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    reachable: allot_telemetry::metrics::gauge(
        "allot_registry_agents_reachable",
        "Registered agents whose heartbeats arrive in time",
    ),
    timeouts: allot_telemetry::metrics::counter(
        "allot_registry_agent_timeouts_total",
        "Agents declared unreachable after agent_timeout without a heartbeat",
    ),
});
