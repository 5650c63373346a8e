//! `allot traces serve | list | cycles` and `allot trace TASK_ID`: a local trace store (`allot_traces`) and
//! the questions of `docs/why-did-my-task-land-there.md` asked of it.

use allot_traces::{SpanRecord, Store, query, render};
use anyhow::Context;
use std::path::PathBuf;

/// Where the trace store is.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The trace store's directory (`allot traces serve` writes it; `deploy/local/run.sh --traces` uses
    /// `.allot/demo/traces`).
    #[arg(
        long = "traces-dir",
        env = "ALLOT_TRACES_DIR",
        default_value = ".allot/traces"
    )]
    pub dir: PathBuf,
}

/// `allot traces ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TracesCommand {
    /// Receive spans over OTLP/gRPC (what every Allot process exports when OTEL_EXPORTER_OTLP_ENDPOINT is
    /// set) and keep them on disk until Ctrl-C or SIGTERM.
    Serve {
        /// Where to listen (plaintext OTLP/gRPC, like a local collector: keep it on loopback).
        #[arg(long, default_value = "127.0.0.1:4317")]
        listen: std::net::SocketAddr,
        /// Keep at most about this many MiB of spans (the oldest half is dropped when it is reached).
        #[arg(long, default_value_t = 256)]
        max_mib: u64,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Recent traces that launched tasks (newest first); `allot trace TASK_ID` shows one task's.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Every trace, not only those naming tasks (heartbeats, allocation cycles, operator calls).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Recent allocation cycles (newest first): policy, what it saw and granted, starved frameworks, offers
    /// made; with --framework, the offers to that framework ("why did it get no offers?").
    Cycles {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// A framework ID (`allot frameworks`): count the offers each cycle made to it.
        #[arg(long)]
        framework: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Where task work spends its time: every span of the traces that launched tasks, grouped by service and
    /// span name (count, p50, p99, mean and total milliseconds), the largest total first.
    Phases {
        /// Only traces of the last this many seconds (default: all in the store).
        #[arg(long)]
        since_seconds: Option<f64>,
        /// How many rows.
        #[arg(long, default_value_t = 30)]
        limit: usize,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `allot trace TASK_ID`.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The task's ID (as the framework named it: `allot tasks` lists them).
    task_id: String,
    /// Also write each of the task's traces as an SVG waterfall to this file (`FILE`, or `FILE-2.svg` ...
    /// for a task launched more than once).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Columns of the terminal waterfall's bars.
    #[arg(long, default_value_t = 40)]
    width: usize,
    #[command(flatten)]
    store: StoreArgs,
}

/// Runs one `allot traces` command; returns the exit code.
///
/// # Errors
/// The store cannot be opened, read or written, or the listener cannot be bound.
pub async fn run(command: TracesCommand, as_json: bool) -> anyhow::Result<i32> {
    match command {
        TracesCommand::Serve {
            listen,
            max_mib,
            store,
        } => serve(listen, max_mib, store).await,
        TracesCommand::List { limit, all, store } => {
            let store = Store::new(store.dir);
            let traces = query::recent_traces(&store, limit, !all)?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&traces)?);
                return Ok(0);
            }
            let mut t = crate::ops::table(&["trace", "start", "root", "ms", "spans", "tasks"]);
            for tr in &traces {
                let mut tasks = tr.tasks.join(",");
                if tasks.len() > 48 {
                    tasks = format!(
                        "{}… ({})",
                        &tasks[..tasks.floor_char_boundary(46)],
                        tr.tasks.len()
                    );
                }
                t.add_row(vec![
                    tr.trace_id.clone(),
                    query::rfc3339(tr.start_ns),
                    format!(
                        "{} [{}]{}",
                        tr.root,
                        tr.service,
                        if tr.error { " ERROR" } else { "" }
                    ),
                    format!("{:.1}", tr.duration_ms),
                    tr.spans.to_string(),
                    tasks,
                ]);
            }
            println!("{t}");
            if traces.is_empty() {
                eprintln!("{}", empty_hint(&store));
            }
            Ok(0)
        }
        TracesCommand::Phases {
            since_seconds,
            limit,
            store,
        } => {
            let store = Store::new(store.dir);
            let since_ns = since_seconds.map_or(0, |secs| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                now.saturating_sub(std::time::Duration::from_secs_f64(secs.max(0.0)))
                    .as_nanos() as u64
            });
            let mut rows = query::phases(&store, since_ns)?;
            rows.truncate(limit);
            if as_json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(0);
            }
            let mut t = crate::ops::table(&[
                "service", "span", "count", "p50 ms", "p99 ms", "mean ms", "total ms",
            ]);
            for r in &rows {
                t.add_row(vec![
                    r.service.clone(),
                    r.name.clone(),
                    r.count.to_string(),
                    format!("{:.2}", r.p50_ms),
                    format!("{:.2}", r.p99_ms),
                    format!("{:.2}", r.mean_ms),
                    format!("{:.0}", r.total_ms),
                ]);
            }
            println!("{t}");
            if rows.is_empty() {
                eprintln!("{}", empty_hint(&store));
            }
            Ok(0)
        }
        TracesCommand::Cycles {
            limit,
            framework,
            store,
        } => {
            let store = Store::new(store.dir);
            let rows = query::cycles(&store, limit, framework.as_deref())?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(0);
            }
            let mut header = vec![
                "cycle", "start", "policy", "agents", "fws", "grants", "dropped", "starved",
                "offers",
            ];
            if framework.is_some() {
                header.push("to framework");
            }
            header.push("ms");
            let mut t = crate::ops::table(&header);
            for r in &rows {
                let c = &r.cycle;
                let a = |k: &str| c.attr(k).unwrap_or("").to_string();
                let mut policy = format!("{} ({})", a("allot.policy.name"), a("allot.policy.kind"));
                if c.attr("allot.policy.fallback")
                    .is_some_and(|f| !f.is_empty())
                {
                    policy.push_str(" FALLBACK");
                }
                let mut row = vec![
                    a("allot.cycle"),
                    query::rfc3339(c.start_ns),
                    policy,
                    a("allot.agents"),
                    a("allot.frameworks"),
                    a("allot.grants"),
                    a("allot.grants.dropped"),
                    a("allot.frameworks.starved"),
                    r.offers.to_string(),
                ];
                if let Some(n) = r.offers_to_framework {
                    row.push(n.to_string());
                }
                row.push(query::ms_attr(c, "allot.cycle.duration_ms"));
                t.add_row(row);
            }
            println!("{t}");
            if rows.is_empty() {
                eprintln!("{}", empty_hint(&store));
            } else if let Some(f) = &framework {
                let offered = rows
                    .iter()
                    .filter(|r| r.offers_to_framework.unwrap_or(0) > 0)
                    .count();
                println!(
                    "framework {f} was offered resources in {offered} of these {} cycles.\n\
                     A cycle that offered it nothing while it wanted offers counts in `starved` \
                     (allot_framework_starved_cycles;\ndocs/why-did-my-task-land-there.md, section 4).",
                    rows.len()
                );
            }
            Ok(0)
        }
    }
}

/// What to check when the store lacks what was asked.
const EXPORT_HINT: &str = "Are the processes exporting to `allot traces serve` \
    (OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317)? They export every 5 s (OTEL_BSP_SCHEDULE_DELAY, \
    milliseconds) and when they exit.";

fn empty_hint(store: &Store) -> String {
    format!(
        "nothing stored in {} yet. {EXPORT_HINT}",
        store.dir().display()
    )
}

async fn serve(listen: std::net::SocketAddr, max_mib: u64, args: StoreArgs) -> anyhow::Result<i32> {
    let store = Store::new(&args.dir);
    let writer = std::sync::Arc::new(store.writer(max_mib.saturating_mul(1 << 20))?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "the trace store listens beyond loopback: OTLP here is plaintext and unauthenticated");
    }
    println!(
        "receiving OTLP/gRPC spans on {} into {} (at most {max_mib} MiB); processes export here with \
         OTEL_EXPORTER_OTLP_ENDPOINT=http://{}",
        listener.local_addr()?,
        store.dir().display(),
        listener.local_addr()?
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    allot_traces::receiver::serve(listener, writer, shutdown).await?;
    Ok(0)
}

/// `allot trace TASK_ID`: the task's trace(s) as a waterfall and why it is on its agent; exit code 1 when
/// the store names no such task.
///
/// # Errors
/// The store cannot be read or the SVG cannot be written.
pub fn trace(args: TraceArgs, as_json: bool) -> anyhow::Result<i32> {
    let store = Store::new(&args.store.dir);
    let report = query::task_report(&store, &args.task_id)?;
    if report.traces.is_empty() {
        eprintln!(
            "no stored span names task {} in {}. {EXPORT_HINT}",
            args.task_id,
            store.dir().display(),
        );
        return Ok(1);
    }
    for (i, t) in report.traces.iter().enumerate() {
        if let Some(path) = &args.svg {
            let path = if i == 0 {
                path.clone()
            } else {
                path.with_extension(format!("{}.svg", i + 1))
            };
            let spans: Vec<&SpanRecord> = t.spans.iter().collect();
            let title = format!("task {}: trace {}", args.task_id, t.trace_id);
            std::fs::write(&path, render::svg_waterfall(&title, &spans))
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    for t in &report.traces {
        let start = t.spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
        println!(
            "task {} · trace {} · {} · agent {} · last state {} · {} spans",
            args.task_id,
            t.trace_id,
            query::rfc3339(start),
            t.agent_id.as_deref().unwrap_or("?"),
            t.last_state.as_deref().unwrap_or("?"),
            t.spans.len()
        );
        println!("{:>9}  (offset from the first span, ms)", "ms");
        let spans: Vec<&SpanRecord> = t.spans.iter().collect();
        print!("{}", render::text_waterfall(&spans, args.width));
        println!();
        println!("why this agent:");
        if t.placements.is_empty() {
            println!(
                "  the broker's accept span is not in this trace (the broker was not exporting here)."
            );
        }
        for p in &t.placements {
            for line in query::explain(&args.task_id, t.agent_id.as_deref(), p).lines() {
                println!("  {line}");
            }
        }
        println!();
    }
    Ok(0)
}
