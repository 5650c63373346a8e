//! The WASM host against real components built by `bash plugins/wasm/build.sh` (target/wasm/): the C policy,
//! the built-in Rust policies compiled to WASM (compared grant for grant with the same policies run
//! natively), and C fixtures that trap, loop, exhaust memory, return garbage or an error, or were built
//! against another interface version; and preemption through `allot:policy@0.3.0`'s `revoke`.

use allot_policy::{
    AgentView, FrameworkView, Policy, Preemption, Resources, RoleView, Snapshot, TaskView,
};
use allot_policy_wasm::{Limits, WasmError, WasmPolicy};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(5);

fn artifact(name: &str) -> Option<Vec<u8>> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    std::fs::read(target.join("wasm").join(format!("{name}.wasm"))).ok()
}

/// A C-built component: always built by plugins/wasm/build.sh, which tests/run.sh runs first.
fn c_built(name: &str) -> Vec<u8> {
    artifact(name).unwrap_or_else(|| {
        panic!("target/wasm/{name}.wasm is missing: run `bash plugins/wasm/build.sh` (tests/run.sh does)")
    })
}

fn load(name: &str) -> WasmPolicy {
    WasmPolicy::load(&c_built(name), Limits::default(), DEADLINE)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn r(s: &str) -> Resources {
    s.parse().expect("resources")
}

fn framework(id: &str, role: &str, priority: i32) -> FrameworkView {
    FrameworkView {
        priority,
        ..FrameworkView::new(id, role)
    }
}

fn role(name: &str, weight: f64) -> RoleView {
    RoleView {
        name: name.into(),
        weight,
        quota_limit: None,
        quota_guarantee: None,
        allocation: Resources::new(),
    }
}

/// `agents` agents of cpus 4 / mem 1024 and two frameworks in two roles.
fn small(agents: usize) -> Snapshot {
    let agents: Vec<AgentView> = (0..agents)
        .map(|i| AgentView::idle(&format!("a{i:03}"), r("cpus:4;mem:1024")))
        .collect();
    let mut total = Resources::new();
    for a in &agents {
        total.add(&a.total);
    }
    Snapshot {
        total,
        agents,
        frameworks: vec![framework("f1", "web", 0), framework("f2", "batch", 0)],
        roles: vec![role("batch", 1.0), role("web", 1.0)],
        ..Snapshot::default()
    }
}

/// A mixed snapshot: reservations, a quota limit, weights, priorities, filters and prior allocations.
fn mixed() -> Snapshot {
    let mut s = Snapshot::default();
    for i in 0..40 {
        let mut reserved = std::collections::BTreeMap::new();
        if i % 5 == 0 {
            reserved.insert("db".to_string(), r("cpus:2;mem:512"));
        }
        let available = if i % 3 == 0 {
            "cpus:1;mem:256"
        } else {
            "cpus:8;mem:4096;disk:100"
        };
        s.agents.push(AgentView {
            id: format!("agent-{i:02}"),
            total: r("cpus:10;mem:4608;disk:100"),
            available: r(available),
            reserved,
        });
        s.total.add(&r("cpus:10;mem:4608;disk:100"));
    }
    s.roles = vec![role("batch", 1.0), role("db", 2.0), role("web", 1.0)];
    s.roles[2].quota_limit = Some("cpus:20".parse().unwrap());
    s.roles[0].allocation = r("cpus:30;mem:1000");
    for (i, (rl, prio)) in [
        ("batch", 0),
        ("db", 5),
        ("web", 0),
        ("batch", 5),
        ("web", 1),
        ("db", 0),
        ("batch", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut f = framework(&format!("fw-{i}"), rl, prio);
        f.allocations = (i as u64 * 7) % 3;
        if i == 0 {
            f.allocation = r("cpus:30;mem:1000");
        }
        if i % 2 == 1 {
            f.filtered_agents = vec!["agent-03".into(), "agent-17".into()];
        }
        s.frameworks.push(f);
    }
    s
}

#[test]
fn the_c_policy_shares_agents_between_roles() {
    let p = load("fairshare-c");
    assert_eq!(p.name(), "fairshare-c");
    let s = small(4);
    let grants = p.allocate(&s, DEADLINE).expect("allocates");
    assert_eq!(grants.len(), 4, "{grants:?}");
    for f in ["f1", "f2"] {
        assert_eq!(
            grants
                .iter()
                .filter(|g| s.frameworks[g.framework].id == f)
                .count(),
            2,
            "{grants:?}"
        );
    }
    assert!(grants.iter().all(|g| g.resources == r("cpus:4;mem:1024")));
}

#[test]
fn the_c_policy_respects_quota_filters_and_reservations() {
    let s = mixed();
    let grants = load("fairshare-c")
        .allocate(&s, DEADLINE)
        .expect("allocates");
    assert!(!grants.is_empty());
    let mut web_cpus = 0;
    for g in &grants {
        let f = &s.frameworks[g.framework];
        assert!(!f.is_filtered(&s.agents[g.agent].id), "{g:?}");
        if f.role == "web" {
            web_cpus += g.total().scalar_milli("cpus");
        }
        if !g.reserved.is_empty() {
            assert_eq!(f.role, "db", "reservations go to their role: {g:?}");
        }
    }
    assert!(web_cpus <= 20_000, "the web quota limit holds: {web_cpus}");
}

/// A quota limit of 0 crosses every interface version as 0, not as "no limit": no policy, C or Rust, old
/// interface or new, gives the role any CPU or memory.
#[test]
fn a_zero_quota_limit_reaches_every_policy_as_none() {
    let mut s = mixed();
    s.roles[2].quota_limit = Some("cpus:0;mem:0".parse().unwrap());
    let mut policies = vec![
        load("fairshare-c"),
        load("fairshare-c-0.2.0"),
        load("fairshare-c-0.1.0"),
    ];
    policies.extend(
        ["drf", "priority"]
            .into_iter()
            .filter_map(artifact)
            .map(|b| WasmPolicy::load(&b, Limits::default(), DEADLINE).expect("loads")),
    );
    for p in &policies {
        let grants = p.allocate(&s, DEADLINE).expect("allocates");
        assert!(!grants.is_empty(), "{}", p.name());
        for g in &grants {
            if s.frameworks[g.framework].role == "web" {
                let t = g.total();
                assert_eq!(
                    (t.scalar_milli("cpus"), t.scalar_milli("mem")),
                    (0, 0),
                    "{} ({}): {g:?}",
                    p.name(),
                    p.interface()
                );
            }
        }
    }
}

/// Components built against the frozen `allot:policy@0.1.0` and `@0.2.0` (c/v0.1.0/ and c/v0.2.0/
/// fairshare.c, compiled by plugins/wasm/build.sh from plugins/wit/0.1.0 and 0.2.0) still load, run through
/// their own bindings, and decide exactly like the same policy written against 0.3.0; they never preempt.
#[test]
fn policies_built_against_the_frozen_interfaces_load_and_allocate() {
    let new = load("fairshare-c");
    assert_eq!(new.interface(), "allot:policy@0.3.0");
    assert!(new.revokes());
    for (name, version) in [
        ("fairshare-c-0.1.0", "allot:policy@0.1.0"),
        ("fairshare-c-0.2.0", "allot:policy@0.2.0"),
    ] {
        let old = load(name);
        assert_eq!(old.interface(), version);
        assert_eq!(old.name(), "fairshare-c");
        assert!(!old.revokes());
        for s in [small(4), small(100), mixed(), held_by_batch()] {
            let a = old
                .allocate(&s, DEADLINE)
                .expect("the old version allocates");
            assert_eq!(a, new.allocate(&s, DEADLINE).expect("0.3.0 allocates"));
        }
        assert_eq!(old.revoke(&held_by_batch(), DEADLINE), Ok(Vec::new()));
    }
}

/// A full cluster: 4 agents of cpus 4 / mem 1024, all of it used by eight tasks (cpus 2, mem 512 each, the
/// youngest first by index: 100 s, 101 s, ...) of framework `fb` in role `batch`; framework `fw` of role
/// `web` has wanted offers for 60 s and been offered nothing, past the 30 s grace.
fn held_by_batch() -> Snapshot {
    let mut s = Snapshot {
        total: r("cpus:16;mem:4096"),
        frameworks: vec![FrameworkView {
            starved_seconds: 60.0,
            ..framework("fw", "web", 0)
        }],
        roles: vec![role("batch", 1.0), role("web", 1.0)],
        preemption: Some(Preemption {
            grace_seconds: 30.0,
            min_runtime_seconds: 10.0,
        }),
        ..Snapshot::default()
    };
    s.roles[0].allocation = r("cpus:16;mem:4096");
    s.tasks = (0..8)
        .map(|i| TaskView {
            framework: "fb".into(),
            id: format!("t{i}"),
            agent: format!("a{:03}", i / 2),
            role: "batch".into(),
            priority: 0,
            resources: r("cpus:2;mem:512"),
            running_seconds: 100.0 + i as f64,
        })
        .collect();
    s
}

/// A 0.3.0 policy preempts: the C policy takes back batch's four youngest tasks for the starved web role
/// (which then holds as much as batch), with a message naming the role; the Rust policies compiled to WASM
/// revoke exactly what the built-ins do. Without preemption settings no policy is asked.
#[test]
fn a_0_3_0_policy_revokes_tasks_for_a_starved_role() {
    let s = held_by_batch();
    let c = load("fairshare-c").revoke(&s, DEADLINE).expect("revokes");
    let tasks: Vec<&str> = c.iter().map(|r| s.tasks[r.task].id.as_str()).collect();
    assert_eq!(tasks, ["t0", "t1", "t2", "t3"]);
    assert!(c[3].message.contains("for role web"), "{:?}", c[3]);
    assert!(c[3].message.ends_with("0.500"), "{:?}", c[3]);
    let calm = Snapshot {
        preemption: None,
        ..held_by_batch()
    };
    assert_eq!(load("fairshare-c").revoke(&calm, DEADLINE), Ok(Vec::new()));
    for (name, mut native, wasm) in rust_builds() {
        assert_eq!(wasm.interface(), "allot:policy@0.3.0");
        let want = native.revoke(&s);
        assert!(!want.is_empty(), "{name}");
        assert_eq!(wasm.revoke(&s, DEADLINE).expect("revokes"), want, "{name}");
    }
}

/// The built-in Rust policies, each with its WASM build (`drf.wasm`, `priority.wasm`): those built here (they
/// need the wasm32-unknown-unknown Rust target).
fn rust_builds() -> Vec<(&'static str, Box<dyn Policy>, WasmPolicy)> {
    let cases: [(&str, Box<dyn Policy>); 2] = [
        ("drf", Box::new(allot_drf::Drf)),
        ("priority", Box::new(allot_drf::Priority)),
    ];
    cases
        .into_iter()
        .filter_map(|(name, native)| {
            let Some(bytes) = artifact(name) else {
                eprintln!(
                    "SKIP {name}.wasm: not built (no wasm32-unknown-unknown Rust target here)"
                );
                return None;
            };
            let wasm = WasmPolicy::load(&bytes, Limits::default(), DEADLINE).expect("loads");
            Some((name, native, wasm))
        })
        .collect()
}

/// The built-in Rust policies compiled to WASM decide exactly like the native code.
#[test]
fn rust_policies_in_wasm_match_the_built_ins() {
    for (name, mut native, wasm) in rust_builds() {
        assert_eq!(wasm.name(), name);
        for snap in [small(6), mixed()] {
            let want = native.allocate(&snap);
            let got = wasm.allocate(&snap, DEADLINE).expect("allocates");
            assert!(!want.is_empty());
            assert_eq!(got, want, "{name}");
        }
    }
}

#[test]
fn a_trap_is_reported() {
    let p = load("fault-trap");
    let one = Snapshot {
        frameworks: vec![framework("f1", "web", 0)],
        ..small(2)
    };
    assert_eq!(
        p.allocate(&one, DEADLINE)
            .expect("behaves with one framework")
            .len(),
        2
    );
    match p.allocate(&small(2), DEADLINE) {
        Err(WasmError::Trap(m)) => assert!(m.contains("unreachable"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The next call runs in a fresh instance: the trap left nothing behind.
    assert_eq!(p.allocate(&one, DEADLINE).expect("still callable").len(), 2);
}

#[test]
fn an_endless_loop_is_interrupted_at_the_deadline() {
    let p = load("fault-loop");
    let deadline = Duration::from_millis(200);
    let started = Instant::now();
    assert_eq!(
        p.allocate(&small(2), deadline),
        Err(WasmError::Timeout(deadline))
    );
    assert!(started.elapsed() >= deadline, "not before the deadline");
}

#[test]
fn the_memory_cap_holds() {
    let limits = Limits {
        memory_bytes: 32 << 20,
    };
    let p = WasmPolicy::load(&c_built("fault-oom"), limits, DEADLINE).expect("loads");
    match p.allocate(&small(2), DEADLINE) {
        Err(WasmError::Trap(m)) => assert!(m.contains("memory"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn garbage_and_errors_are_reported() {
    match load("fault-garbage").allocate(&small(2), DEADLINE) {
        Err(WasmError::BadGrant(m)) => assert!(m.contains("framework index 9999"), "{m}"),
        other => panic!("{other:?}"),
    }
    match load("fault-columns").allocate(&small(2), DEADLINE) {
        Err(WasmError::BadGrant(m)) => assert!(m.contains("need"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        load("fault-error").allocate(&small(2), DEADLINE),
        Err(WasmError::Error("fault injected".into()))
    );
    match load("fault-revocation").revoke(&held_by_batch(), DEADLINE) {
        Err(WasmError::BadRevocation(m)) => assert!(m.contains("task index 9999 of 8"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn calls_beyond_the_concurrent_limit_wait_for_a_slot() {
    let policy = load("fairshare-c");
    let snap = small(50);
    let expected = policy.allocate(&snap, DEADLINE).expect("one call");
    let calls = 3 * allot_policy_wasm::CONCURRENT_CALLS;
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..calls)
            .map(|_| s.spawn(|| policy.allocate(&snap, DEADLINE)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    assert_eq!(results.len(), calls);
    for r in results {
        assert_eq!(r.as_ref(), Ok(&expected));
    }
}

#[test]
fn other_interface_versions_and_non_components_are_refused() {
    match WasmPolicy::load(&c_built("wrong-version"), Limits::default(), DEADLINE) {
        Err(WasmError::Interface(m)) => {
            assert!(m.contains("0.9.0") && m.contains("0.3.0"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        WasmPolicy::load(b"\0asm\x01\0\0\0", Limits::default(), DEADLINE),
        Err(WasmError::Compile(_) | WasmError::Interface(_))
    ));
    assert!(matches!(
        WasmPolicy::load(b"not wasm at all", Limits::default(), DEADLINE),
        Err(WasmError::Compile(_))
    ));
}
