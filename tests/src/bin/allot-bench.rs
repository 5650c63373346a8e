//! `allot-bench`: the control plane at scale on one machine.
//!
//! Starts a real etcd, measures its raw durable put rate, then starts the registry, allocator and offer-broker
//! as real processes, one `allot-agent --simulate N` process holding N simulated agents, and M frameworks (SDK
//! drivers in this process) that launch tasks on every offer until they have launched their share. It reports:
//! tasks per second from ACCEPT to TASK_RUNNING at the framework (which acknowledges it at once), p50/p99 of
//! that latency, allocation cycle time (from the allocator's `/metrics`), CPU seconds and peak RSS of every
//! process, the gRPC calls each service served and made per 1,000 tasks, and etcd's raw put rate from the same
//! run as the physical limit.
//!
//! Run it from a release build, next to the release service binaries:
//! `cargo build --release --bins && target/release/allot-bench --agents 1000 --frameworks 10 --tasks 50000`.

use allot_tests::fill::Fill;
use allot_tests::procs::{bin_dir, metric, scrape, spawn};
use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "Allot control-plane benchmark: simulated agents, real services, real etcd")]
struct Args {
    /// Run every link in plaintext (`--insecure` services, a plaintext etcd) instead of mutual TLS.
    #[arg(long)]
    insecure: bool,
    /// Measure what TLS costs: this many rounds of one mutual-TLS run and one plaintext run each (alternating
    /// which goes first), each a fresh cluster, then a summary of both.
    #[arg(long, default_value_t = 0)]
    compare_insecure: usize,
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Frameworks, each launching tasks/frameworks tasks.
    #[arg(long, default_value_t = 10)]
    frameworks: usize,
    /// Tasks to launch in all.
    #[arg(long, default_value_t = 50_000)]
    tasks: usize,
    /// Resources of each simulated agent (Mesos text; mem in MiB).
    #[arg(long, default_value = "cpus:24;mem:4096;disk:0")]
    agent_resources: String,
    /// Resources of each task.
    #[arg(long, default_value = "cpus:1;mem:128")]
    task_resources: String,
    /// How long each task runs (seconds).
    #[arg(long, default_value_t = 1.0)]
    task_seconds: f64,
    /// The allocator's --allocation-interval.
    #[arg(long, default_value = "200ms")]
    allocation_interval: String,
    /// The registry's --agent-timeout (agents heartbeat every third of it).
    #[arg(long, default_value = "15s")]
    agent_timeout: String,
    /// After the workload, keep the cluster up this many seconds (heartbeats go on) before reading RSS.
    #[arg(long, default_value_t = 0.0)]
    hold_seconds: f64,
    /// How long to measure etcd's raw put rate (seconds).
    #[arg(long, default_value_t = 3.0)]
    put_seconds: f64,
    /// Concurrent puts while measuring etcd's raw put rate.
    #[arg(long, default_value_t = 64)]
    put_concurrency: usize,
    /// Launch at most this many tasks per second in all (spread over the frameworks); default: as fast as
    /// offers come. A paced run measures latency at a sustained rate instead of after a burst.
    #[arg(long, conflicts_with = "rate_of_raw")]
    rate: Option<f64>,
    /// Pace at this fraction of etcd's raw put rate measured at the start of the run (0.5: the rate issue 6
    /// asks to sustain), instead of a fixed `--rate`.
    #[arg(long)]
    rate_of_raw: Option<f64>,
    /// Also print ACCEPT -> TASK_RUNNING p50/p99 per second of the workload (by accept time), to stderr.
    #[arg(long)]
    timeline: bool,
    /// Give up on the workload after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout_seconds: f64,
}

/// CPU time (user + system) and peak RSS of a process, from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

fn usage(pid: u32) -> Usage {
    // /proc counts CPU time in USER_HZ ticks, 100 per second on Linux.
    let ticks = 100.0;
    let cpu_seconds = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command (which may hold spaces) start after the last ')'.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0);
    let peak_rss_mib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .unwrap_or(0.0);
    Usage {
        cpu_seconds,
        peak_rss_mib,
    }
}

/// etcd's raw durable put rate: `concurrency` puts in flight of 256-byte values to distinct keys for
/// `seconds`.
async fn raw_put_rate(client: &etcd_client::Client, seconds: f64, concurrency: usize) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (mut kv, done) = (client.kv_client(), done.clone());
        workers.spawn(async move {
            let value = vec![b'x'; 256];
            let mut i = 0u64;
            while Instant::now() < until {
                kv.put(format!("/bench/put/{w}/{i}"), value.clone(), None)
                    .await
                    .expect("put");
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    // The keys stay (a fresh etcd is thrown away after the run). Deleting them in one transaction, as this did
    // until session 12, grew etcd 3.4's buffer of uncommitted writes to tens of thousands of entries, and while
    // writes go on without a pause etcd keeps that length and copies all of it for every later transaction:
    // about one run in two then cost etcd twice the CPU and p99 went from ~70 ms to over 1 s
    // (docs/operations.md, "Running etcd").
    rate
}

/// How many agents hold a liveness key in etcd (0 if etcd does not answer).
async fn count_alive(etcd: &mut etcd_client::Client) -> i64 {
    etcd.get(
        "/allot/v1/alive/",
        Some(
            etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only(),
        ),
    )
    .await
    .map(|r| r.count())
    .unwrap_or(0)
}

/// Prints tasks accepted, p50 and p99 of ACCEPT -> TASK_RUNNING for each second after `start`.
fn print_timeline(seen: &[allot_tests::fill::Seen], start: Instant) {
    let mut by_second: std::collections::BTreeMap<u64, Vec<Duration>> = Default::default();
    for (at, latency) in seen.iter().flat_map(|s| s.latencies.iter()) {
        let second = at.saturating_duration_since(start).as_secs();
        by_second.entry(second).or_default().push(*latency);
    }
    eprintln!("second  accepted  p50 ms  p99 ms");
    for (second, mut l) in by_second {
        l.sort();
        eprintln!(
            "{second:>6}  {:>8}  {:>6.1}  {:>6.1}",
            l.len(),
            percentile(&l, 0.5).as_secs_f64() * 1e3,
            percentile(&l, 0.99).as_secs_f64() * 1e3
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// gRPC calls so far by method, from a service's `/metrics` text: the series of `counter`
/// (`allot_rpc_server_requests_total` or `allot_rpc_client_requests_total`), every status code counted.
fn calls(text: &str, counter: &str) -> std::collections::BTreeMap<String, f64> {
    let mut calls = std::collections::BTreeMap::new();
    let prefix = format!("{counter}{{");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").unwrap_or_default();
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("rpc_method=\""))
            .map(|m| m.trim_end_matches('"').to_string());
        if let (Some(method), Ok(v)) = (method, value.trim().parse::<f64>()) {
            *calls.entry(method).or_default() += v;
        }
    }
    calls
}

/// The `q` quantile of a Prometheus histogram `name` (upper bound of the bucket it falls in), in seconds.
fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let count = metric(text, &format!("{name}_count"), &[])?;
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let (le, value) = rest.split_once("\"} ")?;
            Some((le.parse().ok()?, value.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
        .into_iter()
        .find(|(_, c)| *c >= q * count)
        .map(|(le, _)| le)
}

/// What one run measured, for `--compare-insecure`'s summary.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// Tasks per second from the first ACCEPT to the last TASK_RUNNING.
    tasks_per_second: f64,
    /// ACCEPT -> TASK_RUNNING, milliseconds.
    p50_ms: f64,
    p99_ms: f64,
    /// CPU seconds of every process during the workload.
    cpu_seconds: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.frameworks > 0, "--frameworks must be at least 1");
    if args.compare_insecure == 0 {
        run_once(&args, args.insecure).await?;
        return Ok(());
    }
    // Mutual TLS against plaintext in one invocation, alternating (TLS, plain, plain, TLS, ...) so that a
    // drift of the machine over the minutes weighs on both alike.
    let mut rows: Vec<(bool, Outcome)> = Vec::new();
    for round in 0..args.compare_insecure {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for insecure in order {
            eprintln!(
                "=== round {} of {}: {}",
                round + 1,
                args.compare_insecure,
                mode(insecure)
            );
            rows.push((insecure, run_once(&args, insecure).await?));
        }
    }
    println!("## TLS against plaintext");
    println!("| run | links | tasks/s | ACCEPT -> RUNNING p50 / p99 ms | CPU s (all processes) |");
    println!("|---:|---|---:|---|---:|");
    for (i, (insecure, o)) in rows.iter().enumerate() {
        println!(
            "| {} | {} | {:.0} | {:.0} / {:.0} | {:.2} |",
            i + 1,
            mode(*insecure),
            o.tasks_per_second,
            o.p50_ms,
            o.p99_ms,
            o.cpu_seconds
        );
    }
    let mean = |insecure: bool, f: fn(&Outcome) -> f64| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.0 == insecure)
            .map(|r| f(&r.1))
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (tls, plain) = (
        mean(false, |o| o.tasks_per_second),
        mean(true, |o| o.tasks_per_second),
    );
    let (tls_cpu, plain_cpu) = (
        mean(false, |o| o.cpu_seconds),
        mean(true, |o| o.cpu_seconds),
    );
    println!(
        "mean tasks/s: mutual TLS {tls:.0}, plaintext {plain:.0}; TLS against plaintext: tasks/s {:+.1}%, CPU {:+.1}%",
        100.0 * (tls - plain) / plain,
        100.0 * (tls_cpu - plain_cpu) / plain_cpu
    );
    Ok(())
}

fn mode(insecure: bool) -> &'static str {
    if insecure { "plaintext" } else { "mutual TLS" }
}

/// One run: a fresh etcd and cluster (plaintext when `insecure`), the workload, the report.
async fn run_once(args: &Args, insecure: bool) -> anyhow::Result<Outcome> {
    let task: allot_resources::Resources = args
        .task_resources
        .parse()
        .map_err(|e| anyhow::anyhow!("--task-resources: {e}"))?;
    let bin = bin_dir();
    let etcd = match insecure {
        true => allot_tests::Etcd::start_insecure().await,
        false => allot_tests::Etcd::start().await,
    };
    eprintln!(
        "etcd at {}; measuring its raw put rate ({} s, {} in flight)",
        etcd.endpoint, args.put_seconds, args.put_concurrency
    );
    let mut client = etcd.client().await;
    let put_rate = raw_put_rate(&client, args.put_seconds, args.put_concurrency).await;
    eprintln!("etcd raw put rate: {put_rate:.0}/s");
    let rate = args
        .rate
        .or(args.rate_of_raw.map(|f| (f * put_rate).round()));

    let dir = tempfile::tempdir()?;
    let logs = dir.path();
    let etcd_args = |name: &str, extra: &[&str]| -> Vec<String> {
        let mut a = vec!["--etcd-endpoints".to_string(), etcd.endpoint.clone()];
        a.extend(etcd.tls_flags(name));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let env: Vec<(String, String)> = vec![("ALLOT_LOG".into(), "warn".into())];
    let registry = spawn(
        &bin,
        "registry",
        "allot-registry",
        &etcd_args("registry", &["--agent-timeout", &args.agent_timeout]),
        &env,
        logs,
    );
    let allocator = spawn(
        &bin,
        "allocator",
        "allot-allocator",
        &etcd_args(
            "allocator",
            &["--allocation-interval", &args.allocation_interval],
        ),
        &env,
        logs,
    );
    let broker = spawn(
        &bin,
        "broker",
        "allot-offer-broker",
        &etcd_args("offer-broker", &["--allocator", &allocator.addr]),
        &env,
        logs,
    );
    let mut sim_args = etcd.tls_flags("agent-bench");
    sim_args.extend(
        [
            "--simulate",
            &args.agents.to_string(),
            "--registry",
            &registry.addr,
            "--broker",
            &broker.addr,
            "--resources",
            &args.agent_resources,
            "--hostname",
            "bench",
            "--sim-task-duration",
            &format!("{}s", args.task_seconds),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let agents = spawn(&bin, "agents", "allot-agent", &sim_args, &env, logs);
    let started = Instant::now();
    loop {
        let n = count_alive(&mut client).await;
        if n as usize >= args.agents {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {n} of {} agents registered in 600 s; logs in {}",
            args.agents,
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let registration = started.elapsed();
    eprintln!(
        "{} simulated agents registered in {:.1} s",
        args.agents,
        registration.as_secs_f64()
    );

    let procs: Vec<(&str, u32)> = vec![
        ("etcd", etcd.pid()),
        ("registry", registry.pid()),
        ("allocator", allocator.pid()),
        ("offer-broker", broker.pid()),
        ("agents (simulated)", agents.pid()),
        ("frameworks (this process)", std::process::id()),
    ];
    let before: Vec<Usage> = procs.iter().map(|(_, p)| usage(*p)).collect();
    let allocator_before = scrape(&allocator.metrics).await;
    let broker_before = scrape(&broker.metrics).await;
    let agents_before = scrape(&agents.metrics).await;
    let etcd_metrics = etcd.metrics_addr().to_string();
    let etcd_before = scrape(&etcd_metrics).await;

    let per = args.tasks / args.frameworks;
    let command = format!("sleep {}", args.task_seconds);
    let wall = Instant::now();
    let mut drivers = tokio::task::JoinSet::new();
    for i in 0..args.frameworks {
        let extra = usize::from(i < args.tasks % args.frameworks);
        let name = format!("bench{i}");
        let mut scheduler = Fill::new(&name, per + extra, task.clone(), &command);
        if let Some(rate) = rate {
            scheduler = scheduler.with_rate(rate / args.frameworks as f64);
        }
        let config =
            allot_sdk::DriverConfig::new(&broker.addr, allot_sdk::framework_info(&name, "bench"))
                .with_dialer(etcd.dialer("framework-default"));
        drivers.spawn(allot_sdk::run(config, scheduler));
    }
    let mut seen = Vec::new();
    let deadline = Duration::from_secs_f64(args.timeout_seconds);
    while let Some(r) =
        tokio::time::timeout(deadline.saturating_sub(wall.elapsed()), drivers.join_next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the workload did not finish in {} s; logs in {}",
                    args.timeout_seconds,
                    logs.display()
                )
            })?
    {
        seen.push(r??.take_seen());
    }
    let workload = wall.elapsed();
    if args.hold_seconds > 0.0 {
        eprintln!("holding the cluster for {} s", args.hold_seconds);
        tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds)).await;
    }
    let alive_at_end = count_alive(&mut client).await;
    let after: Vec<Usage> = procs.iter().map(|(_, p)| usage(*p)).collect();
    let allocator_after = scrape(&allocator.metrics).await;
    let broker_after = scrape(&broker.metrics).await;
    let agents_after = scrape(&agents.metrics).await;
    let etcd_after = scrape(&etcd_metrics).await;

    if args.timeline {
        print_timeline(&seen, wall);
    }
    let mut latencies: Vec<Duration> = seen
        .iter()
        .flat_map(|s| s.latencies.iter().map(|(_, l)| *l))
        .collect();
    latencies.sort();
    let running = latencies.len();
    let first = seen.iter().filter_map(|s| s.first_accept).min();
    let last = seen.iter().filter_map(|s| s.last_running).max();
    let span = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64(),
        _ => f64::NAN,
    };
    let failed: usize = seen.iter().map(|s| s.failed).sum();
    let terminal: usize = seen.iter().map(|s| s.terminal).sum();
    let repeated: usize = seen.iter().map(|s| s.repeated).sum();
    let cycle = "allot_allocation_cycle_duration_seconds";
    let d = |m: &str| {
        metric(&allocator_after, m, &[]).unwrap_or(0.0)
            - metric(&allocator_before, m, &[]).unwrap_or(0.0)
    };
    let (n_cycles, cycle_sum) = (d(&format!("{cycle}_count")), d(&format!("{cycle}_sum")));
    let tasks_per_second = running as f64 / span;
    // etcd's own counters of what the workload (and the hold) wrote.
    let e = |m: &str| {
        metric(&etcd_after, m, &[]).unwrap_or(0.0) - metric(&etcd_before, m, &[]).unwrap_or(0.0)
    };
    let (puts, txns) = (e("etcd_mvcc_put_total"), e("etcd_mvcc_txn_total"));

    println!("## allot-bench");
    println!(
        "agents {} ({}), frameworks {}, tasks {} ({}, {} s each), rate {}, allocation interval {}, agent timeout {}",
        args.agents,
        args.agent_resources,
        args.frameworks,
        args.tasks,
        args.task_resources,
        args.task_seconds,
        rate.map_or("unpaced".to_string(), |r| format!("{r}/s")),
        args.allocation_interval,
        args.agent_timeout
    );
    println!(
        "registration of {} agents: {:.1} s; reachable at the end: {alive_at_end}",
        args.agents,
        registration.as_secs_f64()
    );
    println!(
        "etcd raw put rate: {put_rate:.0}/s ({} in flight, 256 B values)",
        args.put_concurrency
    );
    println!(
        "tasks RUNNING: {running} of {} in {span:.2} s = {tasks_per_second:.0} tasks/s ({:.0}% of etcd's raw put rate); terminal {terminal} (repeated terminal updates {repeated}), not FINISHED {failed}; workload wall time {:.2} s",
        args.tasks,
        100.0 * tasks_per_second / put_rate,
        workload.as_secs_f64()
    );
    println!(
        "etcd writes: {puts:.0} puts in {txns:.0} transactions ({:.2} puts per task)",
        puts / args.tasks.max(1) as f64
    );
    println!(
        "ACCEPT -> TASK_RUNNING: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "allocation cycles: {n_cycles:.0}, mean {:.2} ms, p99 <= {:.1} ms (whole run)",
        if n_cycles > 0.0 {
            1e3 * cycle_sum / n_cycles
        } else {
            0.0
        },
        histogram_quantile(&allocator_after, cycle, 0.99).unwrap_or(f64::NAN) * 1e3
    );
    let per_1000 = 1000.0 / args.tasks.max(1) as f64;
    for (service, before, after) in [
        ("offer-broker", &broker_before, &broker_after),
        ("allocator", &allocator_before, &allocator_after),
        ("simulated agents", &agents_before, &agents_after),
    ] {
        for (side, counter) in [
            ("served", "allot_rpc_server_requests_total"),
            ("made", "allot_rpc_client_requests_total"),
        ] {
            let before = calls(before, counter);
            let made: Vec<String> = calls(after, counter)
                .into_iter()
                .map(|(method, n)| {
                    let n = n - before.get(&method).copied().unwrap_or(0.0);
                    (method, (n * per_1000).round())
                })
                .filter(|(_, n)| *n >= 1.0)
                .map(|(method, n)| format!("{method} {n}"))
                .collect();
            println!(
                "gRPC calls {side} by the {service} per 1,000 tasks: {}",
                made.join(", ")
            );
        }
    }
    println!("| process | CPU s (workload) | CPU % of one core | peak RSS MiB |");
    println!("|---|---:|---:|---:|");
    let secs = workload.as_secs_f64() + args.hold_seconds;
    let mut cpu_seconds = 0.0;
    for (((name, _), b), a) in procs.iter().zip(&before).zip(&after) {
        let cpu = a.cpu_seconds - b.cpu_seconds;
        cpu_seconds += cpu;
        println!(
            "| {name} | {cpu:.2} | {:.0} | {:.0} |",
            100.0 * cpu / secs,
            a.peak_rss_mib
        );
    }
    let all_ran = running == args.tasks && terminal == args.tasks && failed == 0;
    drop((agents, broker, allocator, registry));
    anyhow::ensure!(
        all_ran,
        "not every task ran and finished: running {running}, terminal {terminal}, failed {failed}"
    );
    Ok(Outcome {
        tasks_per_second,
        p50_ms: percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        p99_ms: percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        cpu_seconds,
    })
}
