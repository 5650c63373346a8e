//! One full allocation cycle through the allocator's host (snapshot, policy, validation of every grant into an
//! offer) at 1,000 / 10,000 / 50,000 agents x 10 / 100 / 1,000 frameworks; agents of cpus 24 and mem 4096,
//! frameworks spread over 10 roles, all resources free (the worst case: every agent is offered). Built-in DRF,
//! the native build of the same DRF (`liballot_drf_native.so`, loaded through the C ABI) and its WASM build
//! (`target/wasm/drf.wasm`, through the WIT interface, sandboxed) in the same run.
//!
//! Run: `cargo build --release -p allot-drf-native && bash plugins/wasm/build.sh &&
//!       cargo bench -p allot-allocator --bench cycle`
//! Options (after `--`): `--quick` for the smaller sizes only; `--size AGENTSxFRAMEWORKS` (e.g. `10000x1000`)
//! for one size only; `--builtin-only` to time the built-in alone (for a profiler); `--runs N` (default 5,
//! the median is reported; the runs of the three policies alternate, so that a slow spell of the machine hits
//! each alike);
//! `--phases` adds, for the built-in, where the time goes (snapshot / policy / validation into offers; each the
//! median of its own runs); `--tree` puts the frameworks in a role tree three levels deep instead of 10 flat
//! roles (`dept-{0,1}/team-{0..4}/role-{0..9}`: 2 departments of 5 teams of 10 roles, weights on the
//! departments and teams, a quota limit on each team that its subtree cannot reach); `--preemption` turns
//! preemption on with half the agents used whole by tasks of the first role, so that every cycle also revokes
//! (the policy's `revoke` and the host's checks are timed too); `--preemption-on` turns preemption on as an
//! operator runs it (grace 30 s, minimum runtime 10 s) with nobody starved past the grace: the cycle of every
//! day on a cluster with preemption on.
//! Anchor: Mesos 1.x needs about 1.06 s for 10,000 agents x 1,000 frameworks in its own allocator benchmark.

use allot_allocator::books::Books;

// The allocator binary's global allocator (services/allocator/src/main.rs), so that the figures are its.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use allot_allocator::policy::Loaded;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// With `--preemption`: preemption on (no grace, no minimum runtime) and the first half of the agents each
/// run one task that uses it whole, all of frameworks of the first role, so that every other role is starved
/// and the cycle also revokes (about four-fifths of those tasks, to bring the first role down to its fair
/// share).
fn preempting(mut b: Books, agents: usize, frameworks: usize) -> Books {
    use allot_allocator::books::Piece;
    b.set_preemption(Some(allot_policy::Preemption {
        grace_seconds: 0.0,
        min_runtime_seconds: 0.0,
    }));
    for i in 0..agents / 2 {
        // Frameworks 0, 10, 20, ... are the first role's (role-0, or dept-0/team-0/role-0 in a tree).
        let fw = format!("fw-{:05}", (i * 10) % frameworks.max(1));
        let piece = Piece::unreserved("cpus:24;mem:4096".parse().expect("resources"));
        b.add_task(
            &fw,
            &format!("task-{i:06}"),
            &format!("agent-{i:06}"),
            piece,
        );
    }
    b
}

fn books(agents: usize, frameworks: usize, tree: bool) -> Books {
    let mut b = Books::new("bench");
    for i in 0..agents {
        let id = format!("agent-{i:06}");
        b.set_agent(
            &id,
            "cpus:24;mem:4096".parse().expect("resources"),
            Default::default(),
        );
        b.set_reachable(&id, true);
    }
    for i in 0..frameworks {
        let id = format!("fw-{i:05}");
        let role = if tree {
            format!("dept-{}/team-{}/role-{}", i % 2, i % 10 / 2, i % 100 / 10)
        } else {
            format!("role-{}", i % 10)
        };
        b.add_framework(&id, &role, 0);
        b.activate(&id, false);
    }
    if tree {
        use allot_allocator::books::RoleConfig;
        let unreachable: allot_policy::Limits =
            format!("cpus:{}", agents * 24).parse().expect("limit");
        for d in 0..2 {
            let weight = (d + 1) as f64;
            b.set_role(
                &format!("dept-{d}"),
                RoleConfig {
                    weight,
                    quota_limit: None,
                    preemptible: true,
                    quota_guarantee: None,
                },
            );
            for t in 0..5 {
                let team = RoleConfig {
                    weight: (t + 1) as f64,
                    quota_limit: Some(unreachable.clone()),
                    preemptible: true,
                    quota_guarantee: None,
                };
                b.set_role(&format!("dept-{d}/team-{t}"), team);
            }
        }
    }
    b
}

fn cycle(template: &Books, policy: &Loaded) -> (Duration, usize) {
    let mut b = template.clone();
    let started = Instant::now();
    let snapshot = Arc::new(b.snapshot(0.0));
    let grants = policy
        .call(&snapshot, Duration::from_secs(600))
        .expect("the policy runs");
    let (offers, rejected) = b.apply_grants(&snapshot, grants, 0.0);
    let revoked = revoke(&mut b, &snapshot, policy);
    let took = started.elapsed();
    assert!(rejected.is_empty(), "{} grants rejected", rejected.len());
    if snapshot.preemption.is_some() {
        assert!(revoked > 0, "the cycle revokes tasks");
    }
    (took, offers.len())
}

/// The preemption part of a cycle, as the engine runs it: the policy's revocations, checked. Returns how many
/// were accepted.
fn revoke(b: &mut Books, snapshot: &Arc<allot_policy::Snapshot>, policy: &Loaded) -> usize {
    if snapshot.preemption.is_none() {
        return 0;
    }
    let revocations = policy
        .revoke(snapshot, Duration::from_secs(600))
        .expect("the policy revokes");
    let (accepted, refused) = b.apply_revocations(snapshot, revocations, 0.0, 60.0);
    assert!(refused.is_empty(), "{} revocations refused", refused.len());
    accepted.len()
}

/// The phases of one built-in cycle: snapshot, policy, validation into offers, preemption.
fn phases(template: &Books, policy: &Loaded) -> [Duration; 4] {
    let mut b = template.clone();
    let t0 = Instant::now();
    let snapshot = Arc::new(b.snapshot(0.0));
    let t1 = Instant::now();
    let grants = policy
        .call(&snapshot, Duration::from_secs(600))
        .expect("the policy runs");
    let t2 = Instant::now();
    let _ = b.apply_grants(&snapshot, grants, 0.0);
    let t3 = Instant::now();
    revoke(&mut b, &snapshot, policy);
    [t1 - t0, t2 - t1, t3 - t2, t3.elapsed()]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let show_phases = args.iter().any(|a| a == "--phases");
    let tree = args.iter().any(|a| a == "--tree");
    let preemption = args.iter().any(|a| a == "--preemption");
    let preemption_on = args.iter().any(|a| a == "--preemption-on");
    let only_builtin = args.iter().any(|a| a == "--builtin-only");
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let lib = ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("liballot_drf_native.so"))
        .find(|p| p.exists());
    let native = lib.as_ref().filter(|_| !only_builtin).map(|p| {
        let bytes = std::fs::read(p).expect("read the library");
        Loaded::from_file(p, &allot_allocator::policy::sha256_hex(&bytes))
            .expect("load the library")
    });
    let wasm_path = target.join("wasm/drf.wasm");
    let wasm = (wasm_path.exists() && !only_builtin).then(|| {
        let bytes = std::fs::read(&wasm_path).expect("read the component");
        Loaded::from_file(&wasm_path, &allot_allocator::policy::sha256_hex(&bytes))
            .expect("load the component")
    });
    let builtin = Loaded::builtin("drf").expect("drf");
    println!(
        "# one allocation cycle{}, median of {runs} runs; native: {}; wasm: {}",
        if tree {
            " (roles in a tree three levels deep)"
        } else {
            ""
        },
        lib.map(|p| p.display().to_string())
            .unwrap_or("not built".into()),
        if wasm.is_some() {
            wasm_path.display().to_string()
        } else {
            "not built".into()
        }
    );
    println!(
        "{:>7} {:>10} {:>8} {:>14} {:>14} {:>14} {:>11}",
        "agents", "frameworks", "offers", "builtin drf", "native drf", "wasm drf", "wasm/native"
    );
    let only: Option<(usize, usize)> = args
        .iter()
        .position(|a| a == "--size")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.split_once('x'))
        .and_then(|(a, f)| Some((a.parse().ok()?, f.parse().ok()?)));
    let agent_sizes: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 50_000]
    };
    let sizes: Vec<(usize, usize)> = match only {
        Some(size) => vec![size],
        None => agent_sizes
            .iter()
            .flat_map(|&a| [10usize, 100, 1_000].map(|f| (a, f)))
            .collect(),
    };
    for (agents, frameworks) in sizes {
        let mut template = books(agents, frameworks, tree);
        if preemption {
            template = preempting(template, agents, frameworks);
        } else if preemption_on {
            template.set_preemption(Some(allot_policy::Preemption {
                grace_seconds: 30.0,
                min_runtime_seconds: 10.0,
            }));
        }
        // Round-robin over the policies, so that a slow spell of the machine hits each of them alike.
        let policies: Vec<Option<&Loaded>> = vec![Some(&builtin), native.as_ref(), wasm.as_ref()];
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); policies.len()];
        let mut offers = 0;
        for _ in 0..runs {
            for (p, t) in policies.iter().zip(&mut times) {
                if let Some(p) = p {
                    let (d, n) = cycle(&template, p);
                    offers = n;
                    t.push(d);
                }
            }
        }
        let mut medians = times
            .into_iter()
            .map(|t| (!t.is_empty()).then(|| median(t)));
        let (b, n, w) = (
            medians.next().flatten().expect("the built-in ran"),
            medians.next().flatten(),
            medians.next().flatten(),
        );
        let ms = |d: Option<Duration>| {
            d.map(|d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
                .unwrap_or("-".into())
        };
        println!(
            "{agents:>7} {frameworks:>10} {offers:>8} {:>11.2} ms {:>14} {:>14} {:>11}",
            b.as_secs_f64() * 1e3,
            ms(n),
            ms(w),
            n.zip(w)
                .map(|(n, w)| format!("{:.2}x", w.as_secs_f64() / n.as_secs_f64()))
                .unwrap_or("-".into()),
        );
        if show_phases {
            let all: Vec<[Duration; 4]> = (0..runs).map(|_| phases(&template, &builtin)).collect();
            let p: Vec<Duration> = (0..4)
                .map(|i| median(all.iter().map(|p| p[i]).collect()))
                .collect();
            println!(
                "        builtin phases: snapshot {:.2} ms, policy {:.2} ms, validation {:.2} ms, preemption {:.2} ms",
                p[0].as_secs_f64() * 1e3,
                p[1].as_secs_f64() * 1e3,
                p[2].as_secs_f64() * 1e3,
                p[3].as_secs_f64() * 1e3
            );
        }
    }
}
