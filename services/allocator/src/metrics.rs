//! The allocator's Prometheus series (served at `/metrics` with `--metrics-listen`).
//!
//! | series | type | labels | meaning |
//! |---|---|---|---|
//! | `allot_allocator_heartbeat_timestamp_seconds` | gauge | | Unix time of the engine loop's last turn (stalled when it stops moving) |
//! | `allot_allocation_cycles_total` | counter | | allocation cycles run |
//! | `allot_allocation_cycle_duration_seconds` | histogram | | snapshot, policy call and grant validation of one cycle |
//! | `allot_allocation_grants_total` | counter | | grants that became offers |
//! | `allot_allocation_grants_dropped_total` | counter | `policy`, `reason` | grants the host refused |
//! | `allot_preemptions_total` | counter | `role` | tasks revoked (preempted), by the role they were taken from |
//! | `allot_revocations_refused_total` | counter | `reason` | revocations a policy made that the host refused |
//! | `allot_policy_call_duration_seconds` | histogram | `policy`, `kind` | one call of a policy (built-in, native or WASM) |
//! | `allot_policy_failures_total` | counter | `policy`, `reason` | calls that failed (`error`, `timeout`, `panic`, `trap`, `malformed`) |
//! | `allot_policy_fallbacks_total` | counter | | cycles that used the last good policy instead of the active one |
//! | `allot_policy_active` | gauge | `policy`, `kind`, `sha256` | 1 for the policy now running |
//! | `allot_role_dominant_share` | gauge | `role` | role's dominant share after the last cycle (DRF, Ghodsi et al. NSDI 2011) |
//! | `allot_role_allocated` | gauge | `role`, `resource` | offered plus used by the role (cpus in CPUs, mem and disk in MiB) |
//! | `allot_cluster_resources` | gauge | `resource`, `state` (`total`, `allocated`) | over reachable agents |
//! | `allot_allocator_agents` / `allot_allocator_frameworks` | gauge | | reachable agents; frameworks wanting offers (active, not suppressed) |
//! | `allot_agents_unreachable` | gauge | | agents still registered whose liveness lapsed (lost, not removed) |
//! | `allot_framework_starved_cycles` | gauge | `framework`, `role` | consecutive cycles a framework wanting offers held no CPUs it could use: none in use, and none offered, or only offered after it declined CPUs and launched nothing since (offers of memory and disk alone do not count) |
//! | `allot_allocator_offers_outstanding` | gauge | | offers in the allocator's books (made, not yet answered) |
//!
//! The resource, share and offer gauges are set by every cycle and, when no cycle runs (no framework wants
//! offers, no broker is subscribed), from the allocator's books at least once a second, so that an idle
//! cluster reads idle; a role that leaves the books reads 0.

use allot_telemetry::metrics::prometheus::{
    Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec,
};
use allot_telemetry::metrics::{counter, counter_vec, gauge, gauge_vec, histogram, histogram_vec};
use std::sync::LazyLock;

/// Every series of the allocator.
pub(crate) struct Metrics {
    pub heartbeat: Gauge,
    pub cycles: IntCounter,
    pub cycle_seconds: Histogram,
    pub grants: IntCounter,
    pub grants_dropped: IntCounterVec,
    pub preemptions: IntCounterVec,
    pub revocations_refused: IntCounterVec,
    pub policy_seconds: HistogramVec,
    pub policy_failures: IntCounterVec,
    pub fallbacks: IntCounter,
    pub policy_active: GaugeVec,
    pub role_share: GaugeVec,
    pub role_allocated: GaugeVec,
    pub cluster: GaugeVec,
    pub agents: Gauge,
    pub agents_unreachable: Gauge,
    pub frameworks: Gauge,
    pub starved: GaugeVec,
    pub offers_outstanding: Gauge,
}

pub(crate) static M: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    heartbeat: gauge(
        "allot_allocator_heartbeat_timestamp_seconds",
        "Unix time of the allocation engine's last loop turn, in seconds",
    ),
    cycles: counter("allot_allocation_cycles_total", "Allocation cycles run"),
    cycle_seconds: histogram(
        "allot_allocation_cycle_duration_seconds",
        "Duration of one allocation cycle (snapshot, policy, validation), in seconds",
    ),
    grants: counter("allot_allocation_grants_total", "Grants that became offers"),
    grants_dropped: counter_vec(
        "allot_allocation_grants_dropped_total",
        "Grants the host refused, by policy and reason",
        &["policy", "reason"],
    ),
    preemptions: counter_vec(
        "allot_preemptions_total",
        "Tasks revoked (preempted), by the role they were taken from",
        &["role"],
    ),
    revocations_refused: counter_vec(
        "allot_revocations_refused_total",
        "Revocations a policy made that the host refused, by reason",
        &["reason"],
    ),
    policy_seconds: histogram_vec(
        "allot_policy_call_duration_seconds",
        "Duration of one policy call, in seconds",
        &["policy", "kind"],
    ),
    policy_failures: counter_vec(
        "allot_policy_failures_total",
        "Policy calls that failed, by policy and reason",
        &["policy", "reason"],
    ),
    fallbacks: counter(
        "allot_policy_fallbacks_total",
        "Cycles that used the last good policy because the active one failed",
    ),
    policy_active: gauge_vec(
        "allot_policy_active",
        "1 for the policy the allocator runs",
        &["policy", "kind", "sha256"],
    ),
    role_share: gauge_vec(
        "allot_role_dominant_share",
        "A role's dominant share of the cluster after the last cycle (0..1)",
        &["role"],
    ),
    role_allocated: gauge_vec(
        "allot_role_allocated",
        "Resources offered to or used by a role (cpus in CPUs, mem and disk in MiB)",
        &["role", "resource"],
    ),
    cluster: gauge_vec(
        "allot_cluster_resources",
        "Resources of reachable agents: total, and allocated (offered or used)",
        &["resource", "state"],
    ),
    agents: gauge("allot_allocator_agents", "Reachable agents"),
    agents_unreachable: gauge(
        "allot_agents_unreachable",
        "Agents still registered whose liveness lapsed (lost, not removed)",
    ),
    frameworks: gauge(
        "allot_allocator_frameworks",
        "Frameworks wanting offers (active and not suppressed)",
    ),
    starved: gauge_vec(
        "allot_framework_starved_cycles",
        "Consecutive allocation cycles in which a framework wanting offers held no CPUs it could use (in use, or offered and not of the kind it declines)",
        &["framework", "role"],
    ),
    offers_outstanding: gauge(
        "allot_allocator_offers_outstanding",
        "Offers in the allocator's books: made and not yet answered",
    ),
});
