//! The questions an SRE asks of a [`Store`]: what happened to this task and why did it land on that agent,
//! which traces launched tasks recently, and what did recent allocation cycles offer to whom.
//!
//! The span names and attributes are those of `docs/why-did-my-task-land-there.md`: a task's trace starts at
//! the framework's `ACCEPT`; the broker's `accept` span links to the `offer` spans it consumed; an `offer`
//! span is a child of the allocator's `allocation cycle` span, whose child `policy allocate` is the policy
//! call.

use crate::{SpanRecord, Store, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

/// The broker's service name.
const BROKER: &str = "allot-offer-broker";

/// Everything stored about one task.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskReport {
    /// The task asked about.
    pub task_id: String,
    /// Each trace that names the task (one per launch: a task launched again after TASK_LOST has two),
    /// oldest first.
    pub traces: Vec<TaskTrace>,
}

/// One trace of a task: its spans and why it was placed where it was.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskTrace {
    /// The trace ID (hex).
    pub trace_id: String,
    /// The trace's spans that concern the task: spans about other tasks launched by the same ACCEPT (and
    /// everything under them) are left out.
    pub spans: Vec<SpanRecord>,
    /// The agent the task was launched on (`allot.agent.id` of the agent's `launch task` span, or of the
    /// broker's `accept`), if stored.
    pub agent_id: Option<String>,
    /// The task's last state seen in the trace (`allot.task.state` of the latest `status update`).
    pub last_state: Option<String>,
    /// For each broker `accept` span of the trace, the offers it consumed.
    pub placements: Vec<Placement>,
}

/// A broker's `accept` and where its offers came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Placement {
    /// The broker's `accept` span.
    pub accept: SpanRecord,
    /// The offers it linked to, each with the cycle that made it; links whose spans are not stored (sampled
    /// out, rotated away, or exported by a process that was not sending to this store) are left out.
    pub offers: Vec<OfferOrigin>,
    /// How many links the `accept` had.
    pub links: usize,
}

/// An `offer` span and the allocation cycle above it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OfferOrigin {
    /// The broker's `offer` span (`allot.offer.id`, `allot.framework.id`, `allot.agent.id`, `allot.cycle`).
    pub offer: SpanRecord,
    /// The allocator's `allocation cycle` span that granted it, if stored.
    pub cycle: Option<SpanRecord>,
    /// The cycle's `policy allocate` child, if stored.
    pub policy_call: Option<SpanRecord>,
}

/// One trace in a listing.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TraceSummary {
    /// The trace ID (hex).
    pub trace_id: String,
    /// The root span's name (the earliest span's when the root is not stored).
    pub root: String,
    /// The root span's service.
    pub service: String,
    /// Start of the earliest span, Unix nanoseconds.
    pub start_ns: u64,
    /// From the earliest start to the latest end, milliseconds.
    pub duration_ms: f64,
    /// Spans stored.
    pub spans: usize,
    /// The task IDs named in the trace, sorted.
    pub tasks: Vec<String>,
    /// Whether a span ended with status ERROR.
    pub error: bool,
}

/// One allocation cycle in a listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CycleRow {
    /// The allocator's `allocation cycle` span.
    pub cycle: SpanRecord,
    /// `offer` spans under it (offers the broker made from its grants).
    pub offers: usize,
    /// Of those, offers to the framework asked about (when one was).
    pub offers_to_framework: Option<usize>,
}

/// Everything the store holds about `task_id`.
///
/// # Errors
/// As [`Store::scan`].
pub fn task_report(store: &Store, task_id: &str) -> Result<TaskReport, StoreError> {
    // 1. The traces that name the task.
    let mut trace_ids = HashSet::new();
    store.scan(|s| {
        if s.task_ids().contains(&task_id) {
            trace_ids.insert(s.trace_id);
        }
    })?;
    // 2. Their spans.
    let mut by_trace: BTreeMap<String, Vec<SpanRecord>> = BTreeMap::new();
    store.scan(|s| {
        if trace_ids.contains(&s.trace_id) {
            by_trace.entry(s.trace_id.clone()).or_default().push(s);
        }
    })?;
    let mut traces: Vec<TaskTrace> = by_trace
        .into_iter()
        .map(|(trace_id, spans)| {
            let spans = only_task(spans, task_id);
            TaskTrace {
                agent_id: agent_of(&spans),
                last_state: last_state(&spans),
                placements: Vec::new(),
                spans,
                trace_id,
            }
        })
        .collect();
    traces.sort_by_key(|t| t.spans.iter().map(|s| s.start_ns).min().unwrap_or(0));
    // 3. The offers the accepts linked to, 4. the cycles above them and their policy calls.
    let linked: HashSet<(String, String)> = traces
        .iter()
        .flat_map(|t| t.spans.iter())
        .filter(|s| is_accept(s))
        .flat_map(|s| s.links.iter().cloned())
        .collect();
    let offers: HashMap<String, SpanRecord> = store
        .collect(|s| linked.contains(&(s.trace_id.clone(), s.span_id.clone())))?
        .into_iter()
        .map(|s| (s.span_id.clone(), s))
        .collect();
    let cycle_ids: HashSet<&str> = offers.values().map(|o| o.parent_span_id.as_str()).collect();
    let mut cycles = HashMap::new();
    let mut calls = HashMap::new();
    store.scan(|s| {
        if s.name == "allocation cycle" && cycle_ids.contains(s.span_id.as_str()) {
            cycles.insert(s.span_id.clone(), s);
        } else if s.name == "policy allocate" && cycle_ids.contains(s.parent_span_id.as_str()) {
            calls.insert(s.parent_span_id.clone(), s);
        }
    })?;
    for t in &mut traces {
        t.placements = t
            .spans
            .iter()
            .filter(|s| is_accept(s))
            .map(|accept| Placement {
                links: accept.links.len(),
                offers: accept
                    .links
                    .iter()
                    .filter_map(|(_, span_id)| offers.get(span_id))
                    .map(|offer| OfferOrigin {
                        cycle: cycles.get(&offer.parent_span_id).cloned(),
                        policy_call: calls.get(&offer.parent_span_id).cloned(),
                        offer: offer.clone(),
                    })
                    .collect(),
                accept: accept.clone(),
            })
            .collect();
    }
    Ok(TaskReport {
        task_id: task_id.to_string(),
        traces,
    })
}

fn is_accept(s: &SpanRecord) -> bool {
    s.service == BROKER && s.name == "accept"
}

/// The spans of one trace that concern `task_id`: a span naming other tasks only, and everything under it,
/// is left out.
fn only_task(spans: Vec<SpanRecord>, task_id: &str) -> Vec<SpanRecord> {
    let parent: HashMap<&str, &str> = spans
        .iter()
        .map(|s| (s.span_id.as_str(), s.parent_span_id.as_str()))
        .collect();
    let foreign: HashSet<&str> = spans
        .iter()
        .filter(|s| {
            let tasks = s.task_ids();
            !tasks.is_empty() && !tasks.contains(&task_id)
        })
        .map(|s| s.span_id.as_str())
        .collect();
    let keep: Vec<bool> = spans
        .iter()
        .map(|s| {
            let mut at = s.span_id.as_str();
            // Bounded by the trace's size: a malformed parent cycle cannot loop for ever.
            for _ in 0..=spans.len() {
                if foreign.contains(at) {
                    return false;
                }
                match parent.get(at) {
                    Some(p) if !p.is_empty() => at = p,
                    _ => break,
                }
            }
            true
        })
        .collect();
    spans
        .into_iter()
        .zip(keep)
        .filter_map(|(s, k)| k.then_some(s))
        .collect()
}

fn agent_of(spans: &[SpanRecord]) -> Option<String> {
    let by = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.attr("allot.agent.id"))
            .filter(|a| !a.is_empty())
            .map(str::to_string)
    };
    by("launch task").or_else(|| by("accept"))
}

fn last_state(spans: &[SpanRecord]) -> Option<String> {
    spans
        .iter()
        .filter(|s| s.name == "status update")
        .filter_map(|s| Some((s.start_ns, s.attr("allot.task.state")?)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, state)| state.to_string())
}

/// The newest `limit` traces, newest first; with `tasks_only`, only traces that name a task (launches and
/// their status updates), leaving out heartbeats, allocation cycles and other background work.
///
/// # Errors
/// As [`Store::scan`].
pub fn recent_traces(
    store: &Store,
    limit: usize,
    tasks_only: bool,
) -> Result<Vec<TraceSummary>, StoreError> {
    // Per trace: its summary, the latest end seen, and whether its root span (no parent) was seen; until it
    // is, the earliest span stands for the root.
    let mut by_trace: HashMap<String, (TraceSummary, u64, bool)> = HashMap::new();
    store.scan(|s| {
        let (t, end, rooted) = by_trace.entry(s.trace_id.clone()).or_insert_with(|| {
            let summary = TraceSummary {
                trace_id: s.trace_id.clone(),
                root: s.name.clone(),
                service: s.service.clone(),
                start_ns: s.start_ns,
                duration_ms: 0.0,
                spans: 0,
                tasks: Vec::new(),
                error: false,
            };
            (summary, s.end_ns, false)
        });
        t.spans += 1;
        t.error |= s.status == 2;
        for task in s.task_ids() {
            if !t.tasks.iter().any(|x| x == task) {
                t.tasks.push(task.to_string());
            }
        }
        let is_root = s.parent_span_id.is_empty();
        if is_root || (!*rooted && s.start_ns < t.start_ns) {
            t.root = s.name.clone();
            t.service = s.service.clone();
        }
        *rooted |= is_root;
        t.start_ns = t.start_ns.min(s.start_ns);
        *end = (*end).max(s.end_ns);
    })?;
    let mut out: Vec<TraceSummary> = by_trace
        .into_values()
        .filter(|(t, ..)| !tasks_only || !t.tasks.is_empty())
        .map(|(mut t, end, _)| {
            t.duration_ms = end.saturating_sub(t.start_ns) as f64 / 1e6;
            t.tasks.sort();
            t
        })
        .collect();
    out.sort_by_key(|t| std::cmp::Reverse(t.start_ns));
    out.truncate(limit);
    Ok(out)
}

/// The newest `limit` allocation cycles, newest first, with the offers made from each; with `framework`,
/// how many of them went to that framework (`allot.framework.id`).
///
/// # Errors
/// As [`Store::scan`].
pub fn cycles(
    store: &Store,
    limit: usize,
    framework: Option<&str>,
) -> Result<Vec<CycleRow>, StoreError> {
    let mut cycles = Vec::new();
    let mut offers: HashMap<String, (usize, usize)> = HashMap::new();
    store.scan(|s| {
        if s.name == "allocation cycle" {
            cycles.push(s);
        } else if s.name == "offer" && s.service == BROKER {
            let n = offers.entry(s.parent_span_id.clone()).or_default();
            n.0 += 1;
            if framework.is_some() && s.attr("allot.framework.id") == framework {
                n.1 += 1;
            }
        }
    })?;
    cycles.sort_by_key(|c| std::cmp::Reverse(c.start_ns));
    cycles.truncate(limit);
    Ok(cycles
        .into_iter()
        .map(|cycle| {
            let (all, to) = offers.get(&cycle.span_id).copied().unwrap_or_default();
            CycleRow {
                cycle,
                offers: all,
                offers_to_framework: framework.map(|_| to),
            }
        })
        .collect())
}

/// How long one kind of step took across the tasks in the store: every span of that name from that service
/// in a trace that names a task (a launch, its start-up steps, its status updates and the calls between).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhaseRow {
    /// The service that recorded the spans.
    pub service: String,
    /// The span name (`launch task`, `isolate`, `status update`, a gRPC method ...).
    pub name: String,
    /// Spans of it.
    pub count: usize,
    /// Median duration, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile duration, milliseconds.
    pub p99_ms: f64,
    /// Mean duration, milliseconds.
    pub mean_ms: f64,
    /// All its spans' durations added up, milliseconds: where the time went.
    pub total_ms: f64,
}

/// Per-phase times of task work: the spans of every trace that names a task and started at or after
/// `since_ns` (Unix nanoseconds; 0 for all), grouped by service and span name, the largest total first. What
/// `tests/real-bench.sh --phases` prints (issue 24).
///
/// # Errors
/// As [`Store::scan`].
pub fn phases(store: &Store, since_ns: u64) -> Result<Vec<PhaseRow>, StoreError> {
    // One pass: each trace's durations by (service, name) index, and whether the trace names a task; only the
    // traces that do are counted at the end.
    let mut names: HashMap<(String, String), usize> = HashMap::new();
    let mut by_trace: HashMap<String, (bool, Vec<(usize, f64)>)> = HashMap::new();
    store.scan(|s| {
        if s.start_ns < since_ns {
            return;
        }
        let ms = s.duration_ms();
        let names_task = !s.task_ids().is_empty();
        let next = names.len();
        let name = *names.entry((s.service, s.name)).or_insert(next);
        let (task, spans) = by_trace.entry(s.trace_id).or_default();
        *task |= names_task;
        spans.push((name, ms));
    })?;
    let mut by_name: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for (_, spans) in by_trace.into_values().filter(|(task, _)| *task) {
        for (name, ms) in spans {
            by_name[name].push(ms);
        }
    }
    let mut rows: Vec<PhaseRow> = names
        .into_iter()
        .filter_map(|((service, name), i)| {
            let mut ms = std::mem::take(&mut by_name[i]);
            ms.sort_by(f64::total_cmp);
            let total: f64 = ms.iter().sum();
            Some(PhaseRow {
                service,
                name,
                count: ms.len(),
                p50_ms: quantile(&ms, 0.5)?,
                p99_ms: quantile(&ms, 0.99)?,
                mean_ms: total / ms.len() as f64,
                total_ms: total,
            })
        })
        .collect();
    rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    Ok(rows)
}

/// The `q` quantile (0 to 1) of `sorted` (ascending) by nearest rank: the smallest value with at least
/// `q` of the values at or below it; `None` for no values.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    (n > 0).then(|| sorted[((n as f64 * q).ceil() as usize).clamp(1, n) - 1])
}

/// A span time (Unix nanoseconds) as RFC 3339 with milliseconds, UTC (`2026-12-03T07:10:13.703Z`).
pub fn rfc3339(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_millis(t).to_string()
}

fn attr_or<'a>(s: &'a SpanRecord, key: &str, default: &'a str) -> &'a str {
    s.attr(key).filter(|v| !v.is_empty()).unwrap_or(default)
}

/// A span's `allot.cycle.duration_ms` (or any millisecond attribute) with two decimals, `?` when absent.
pub fn ms_attr(s: &SpanRecord, key: &str) -> String {
    match s.attr(key).and_then(|v| v.parse::<f64>().ok()) {
        Some(ms) => format!("{ms:.2}"),
        None => "?".to_string(),
    }
}

/// "Why this agent", in words, for one placement: the framework's choice of an offer, and for each offer the
/// cycle and policy that made it; lines of at most about 110 columns.
pub fn explain(task_id: &str, agent: Option<&str>, p: &Placement) -> String {
    let a = &p.accept;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "task {task_id} is on agent {}\nbecause framework {} accepted {} on that agent at {}\n\
         (launching {}).",
        agent.or(a.attr("allot.agent.id")).unwrap_or("?"),
        attr_or(a, "allot.framework.id", "?"),
        match p.links {
            1 => "an offer".to_string(),
            n => format!("{n} offers"),
        },
        rfc3339(a.start_ns),
        attr_or(a, "allot.task.ids", task_id),
    );
    if p.offers.is_empty() {
        let _ = writeln!(
            out,
            "The offer spans it links to are not in the store (made before the store started, rotated away, \
             or sampled out),\nso the cycle that made them is unknown."
        );
    }
    for o in &p.offers {
        let _ = write!(
            out,
            "Offer {} was made by allocation cycle {}",
            attr_or(&o.offer, "allot.offer.id", "?"),
            attr_or(&o.offer, "allot.cycle", "?"),
        );
        let Some(c) = &o.cycle else {
            let _ = writeln!(out, " (its span is not in the store).");
            continue;
        };
        let sha = attr_or(c, "allot.policy.sha256", "");
        let _ = writeln!(
            out,
            " at {}:\n  policy {} ({}, {}{}) saw {} agents and {} frameworks wanting offers;\n  \
             it granted {} ({} dropped by the host), {} frameworks starved, the cycle took {} ms;",
            rfc3339(c.start_ns),
            attr_or(c, "allot.policy.name", "?"),
            attr_or(c, "allot.policy.kind", "?"),
            attr_or(c, "allot.policy.version", "?"),
            if sha.is_empty() {
                String::new()
            } else {
                format!(", sha256 {}", &sha[..sha.len().min(12)])
            },
            attr_or(c, "allot.agents", "?"),
            attr_or(c, "allot.frameworks", "?"),
            attr_or(c, "allot.grants", "?"),
            attr_or(c, "allot.grants.dropped", "0"),
            attr_or(c, "allot.frameworks.starved", "0"),
            ms_attr(c, "allot.cycle.duration_ms"),
        );
        if let Some(fallback) = c.attr("allot.policy.fallback").filter(|f| !f.is_empty()) {
            let _ = writeln!(
                out,
                "  the active policy failed in that cycle and the last good one decided: {fallback};"
            );
        }
        match &o.policy_call {
            Some(call) => match call.attr("allot.policy.failure") {
                Some(failure) => {
                    let _ = writeln!(
                        out,
                        "  the policy call failed after {:.2} ms: {failure}.",
                        call.duration_ms()
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  the policy call took {:.2} ms and returned {} grants.",
                        call.duration_ms(),
                        attr_or(call, "allot.grants", "?")
                    );
                }
            },
            None => {
                let _ = writeln!(out, "  (the policy call's span is not in the store.)");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        trace: &str,
        id: &str,
        parent: &str,
        service: &str,
        name: &str,
        attrs: &[(&str, &str)],
    ) -> SpanRecord {
        SpanRecord {
            service: service.into(),
            pid: 1,
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: name.into(),
            kind: 1,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            links: vec![],
            start_ns: id.bytes().map(u64::from).sum(),
            end_ns: id.bytes().map(u64::from).sum::<u64>() + 10,
            status: 0,
        }
    }

    /// Two tasks launched by one ACCEPT from an offer of cycle 7, and the heartbeat noise around them.
    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let w = store.writer(1 << 20).unwrap();
        let cycle = span(
            "c",
            "cy",
            "",
            "allot-allocator",
            "allocation cycle",
            &[
                ("allot.cycle", "7"),
                ("allot.policy.name", "drf"),
                ("allot.policy.kind", "builtin"),
                ("allot.grants", "1"),
            ],
        );
        let call = span(
            "c",
            "pa",
            "cy",
            "allot-allocator",
            "policy allocate",
            &[("allot.grants", "1")],
        );
        let offer = span(
            "c",
            "of",
            "cy",
            BROKER,
            "offer",
            &[
                ("allot.offer.id", "o1"),
                ("allot.cycle", "7"),
                ("allot.framework.id", "f1"),
            ],
        );
        let root = span(
            "t",
            "a0",
            "",
            "allot",
            "ACCEPT",
            &[("allot.task.ids", "x,y")],
        );
        let mut accept = span(
            "t",
            "a1",
            "a0",
            BROKER,
            "accept",
            &[
                ("allot.task.ids", "x,y"),
                ("allot.framework.id", "f1"),
                ("allot.agent.id", "ag1"),
            ],
        );
        accept.links = vec![("c".into(), "of".into())];
        let launch = span("t", "l", "a1", BROKER, "launch", &[]);
        let lx = span(
            "t",
            "lx",
            "l",
            "allot-agent",
            "launch task",
            &[("allot.task.id", "x"), ("allot.agent.id", "ag1")],
        );
        let ly = span(
            "t",
            "ly",
            "l",
            "allot-agent",
            "launch task",
            &[("allot.task.id", "y")],
        );
        let uy = span("t", "uy", "ly", "allot-agent", "etcd put", &[]);
        let ux = span(
            "t",
            "ux",
            "lx",
            "allot-agent",
            "status update",
            &[
                ("allot.task.id", "x"),
                ("allot.task.state", "TASK_FINISHED"),
            ],
        );
        let hb = span("h", "hb", "", "allot-agent", "Heartbeat", &[]);
        w.append(&[cycle, call, offer, root, accept, launch, lx, ly, uy, ux, hb])
            .unwrap();
        (dir, store)
    }

    #[test]
    fn a_task_report_keeps_its_own_spans_and_finds_the_cycle_behind_its_offer() {
        let (_dir, store) = store();
        let report = task_report(&store, "x").unwrap();
        assert_eq!(report.traces.len(), 1);
        let t = &report.traces[0];
        let names: Vec<&str> = t.spans.iter().map(|s| s.span_id.as_str()).collect();
        assert_eq!(names, ["a0", "a1", "l", "lx", "ux"], "y's spans left out");
        assert_eq!(t.agent_id.as_deref(), Some("ag1"));
        assert_eq!(t.last_state.as_deref(), Some("TASK_FINISHED"));
        let p = &t.placements[0];
        assert_eq!(p.offers.len(), 1);
        let o = &p.offers[0];
        assert_eq!(o.cycle.as_ref().unwrap().attr("allot.cycle"), Some("7"));
        assert_eq!(o.policy_call.as_ref().unwrap().span_id, "pa");
        let why = explain("x", t.agent_id.as_deref(), p);
        assert!(why.contains("task x is on agent ag1"), "{why}");
        assert!(why.contains("allocation cycle 7"), "{why}");
        assert!(why.lines().all(|l| l.len() < 120), "{why}");
        assert!(why.contains("policy drf (builtin"), "{why}");
        assert!(why.contains("returned 1 grants"), "{why}");
    }

    #[test]
    fn an_unknown_task_has_no_traces() {
        let (_dir, store) = store();
        assert!(task_report(&store, "nope").unwrap().traces.is_empty());
    }

    #[test]
    fn listings_show_task_traces_and_cycles_with_their_offers() {
        let (_dir, store) = store();
        let traces = recent_traces(&store, 10, true).unwrap();
        assert_eq!(traces.len(), 1);
        assert_eq!(traces[0].root, "ACCEPT");
        assert_eq!(traces[0].tasks, ["x", "y"]);
        assert_eq!(recent_traces(&store, 10, false).unwrap().len(), 3);
        let rows = cycles(&store, 10, Some("f1")).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].offers, rows[0].offers_to_framework), (1, Some(1)));
        let rows = cycles(&store, 10, Some("f2")).unwrap();
        assert_eq!(rows[0].offers_to_framework, Some(0));
    }

    #[test]
    fn phases_group_the_spans_of_task_traces_by_service_and_name() {
        let (_dir, store) = store();
        let rows = phases(&store, 0).unwrap();
        let launch = rows
            .iter()
            .find(|r| r.name == "launch task")
            .expect("launch task row");
        assert_eq!((launch.service.as_str(), launch.count), ("allot-agent", 2));
        assert!((launch.p50_ms - 10e-6).abs() < 1e-9, "{launch:?}");
        assert!(
            rows.iter()
                .all(|r| r.name != "Heartbeat" && r.name != "allocation cycle"),
            "only the traces that name tasks: {rows:?}"
        );
        assert!(phases(&store, u64::MAX).unwrap().is_empty());
    }
}
