//! Scenarios through the simulator, checked against Mesos' documented allocator behaviour. The first three
//! are the examples in `examples/scenarios/`; the rest are written here.

use allot_allocator::sim::{SimOptions, run};
use serde_json::Value;

fn sim_with(scenario: &str, opts: &SimOptions) -> Vec<Value> {
    let mut out = Vec::new();
    run(scenario, opts, &mut out).expect("scenario runs");
    String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn sim(scenario: &str) -> Vec<Value> {
    sim_with(scenario, &SimOptions::default())
}

fn example(name: &str) -> String {
    let path = format!(
        "{}/../../examples/scenarios/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn of<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

/// The build's target directory (`$CARGO_TARGET_DIR`, else the repository's `target/`).
fn target_dir() -> std::path::PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo().join("target"))
}

/// The repository's root.
fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The times of `framework`'s launches, in order.
fn launch_times(lines: &[Value], framework: &str) -> Vec<f64> {
    of(lines, "launch")
        .into_iter()
        .filter(|l| l["framework"] == framework)
        .map(|l| l["t"].as_f64().unwrap())
        .collect()
}

fn count(lines: &[Value], kind: &str, framework: &str) -> usize {
    of(lines, kind)
        .iter()
        .filter(|l| l["framework"] == framework)
        .count()
}

#[test]
fn drf_paper_gives_a_three_tasks_and_b_two() {
    let lines = sim(&example("drf-paper.yaml"));
    assert_eq!(count(&lines, "launch", "A"), 3, "{lines:#?}");
    assert_eq!(count(&lines, "launch", "B"), 2);
    // The last launch happens by t=3; nothing launches after the CPUs run out.
    let last = of(&lines, "launch").last().unwrap()["t"].as_f64().unwrap();
    assert!(last <= 3.0, "last launch at {last}");
}

#[test]
fn offer_filter_keeps_the_agent_away_until_it_expires() {
    let lines = sim(&example("offer-filter.yaml"));
    let offers: Vec<f64> = of(&lines, "offer")
        .iter()
        .map(|l| l["t"].as_f64().unwrap())
        .collect();
    assert_eq!(offers, vec![0.0, 2.0], "{lines:#?}");
    assert_eq!(
        of(&lines, "offer")[0]["resources"],
        serde_json::json!({"cpus": 1, "mem": 512})
    );
}

#[test]
fn two_roles_with_weights_one_and_three_split_one_to_three() {
    let lines = sim(&example("two-roles-weights.yaml"));
    let offers = of(&lines, "offer");
    let at_one: Vec<&&Value> = offers.iter().filter(|l| l["t"] == 1).collect();
    let f1 = at_one.iter().filter(|l| l["framework"] == "f1").count();
    let f2 = at_one.iter().filter(|l| l["framework"] == "f2").count();
    assert_eq!((f1, f2), (1, 3), "{lines:#?}");
}

/// How many offers each of `frameworks` got at time `t`.
fn offers_at(lines: &[Value], t: u64, frameworks: &[&str]) -> Vec<usize> {
    let offers = of(lines, "offer");
    frameworks
        .iter()
        .map(|f| {
            offers
                .iter()
                .filter(|l| l["t"] == t && l["framework"] == *f)
                .count()
        })
        .collect()
}

#[test]
fn a_role_tree_splits_by_weight_among_siblings_and_a_parent_limit_caps_its_subtree() {
    let lines = sim(&example("role-tree.yaml"));
    let fws = ["f-ops", "f-web", "f-batch"];
    assert_eq!(offers_at(&lines, 1, &fws), [4, 3, 1], "{lines:#?}");
    assert_eq!(offers_at(&lines, 2, &fws), [6, 1, 1], "{lines:#?}");
}

/// The C policy compiled against `allot:policy@0.3.0` (plugins/wasm/c/fairshare.c) preempts through the
/// WASM host as the built-in does: web, starved past the grace, gets four of batch's tasks back at t=5 and
/// launches on them at t=6. The same policy built against the frozen 0.2.0 still loads and allocates, and
/// never preempts.
#[test]
fn a_wasm_policy_of_0_3_0_preempts_and_one_of_0_2_0_does_not() {
    let wasm = |name: &str| {
        let path = target_dir().join(format!("wasm/{name}.wasm"));
        assert!(
            path.exists(),
            "{} is missing: run `bash plugins/wasm/build.sh` (tests/run.sh does)",
            path.display()
        );
        SimOptions {
            policy: Some(path.display().to_string()),
            ..SimOptions::default()
        }
    };
    let lines = sim_with(&example("preemption.yaml"), &wasm("fairshare-c"));
    let preempted = of(&lines, "preempt");
    assert_eq!(preempted.len(), 4, "{lines:#?}");
    assert!(
        preempted
            .iter()
            .all(|p| p["t"] == 5 && p["framework"] == "f-batch"),
        "{preempted:#?}"
    );
    assert!(of(&lines, "revocation_refused").is_empty(), "{lines:#?}");
    assert_eq!(launch_times(&lines, "f-web"), [6.0; 4], "{lines:#?}");
    let lines = sim_with(&example("preemption.yaml"), &wasm("fairshare-c-0.2.0"));
    assert_eq!(count(&lines, "launch", "f-batch"), 8, "{lines:#?}");
    assert!(of(&lines, "preempt").is_empty());
    assert_eq!(count(&lines, "launch", "f-web"), 0);
}

#[test]
fn a_starved_role_gets_its_fair_share_back_by_preemption_after_the_grace() {
    let lines = sim(&example("preemption.yaml"));
    let preempted = of(&lines, "preempt");
    assert_eq!(preempted.len(), 4, "{lines:#?}");
    assert!(
        preempted
            .iter()
            .all(|p| p["t"] == 5 && p["framework"] == "f-batch")
    );
    assert!(of(&lines, "revocation_refused").is_empty(), "{lines:#?}");
    let launches = |f: &str| launch_times(&lines, f);
    assert_eq!(launches("f-batch"), [0.0; 8]);
    assert_eq!(launches("f-web"), [6.0; 4], "{lines:#?}");
    // Without preemption, or with batch protected from it, web waits for ever.
    let scenario =
        example("preemption.yaml").replace("preemption: {grace: 3, min_runtime: 1}\n", "");
    let protected = example("preemption.yaml").replace(
        "events:\n",
        "events:\n  - update_preemption: {role: batch, preemptible: false}\n",
    );
    for scenario in [scenario, protected] {
        let lines = sim(&scenario);
        assert!(of(&lines, "preempt").is_empty());
        assert_eq!(count(&lines, "launch", "f-web"), 0);
    }
}

#[test]
fn a_quota_guarantee_is_served_first_and_nothing_is_held_without_demand() {
    let lines = sim(&example("quota-guarantee.yaml"));
    let cpus_at = |t: u64, f: &str| -> f64 {
        of(&lines, "offer")
            .iter()
            .filter(|l| l["t"] == t && l["framework"] == f)
            .map(|l| l["resources"]["cpus"].as_f64().unwrap_or(0.0))
            .sum()
    };
    assert_eq!(
        (cpus_at(1, "f-prod"), cpus_at(1, "f-batch")),
        (8.0, 8.0),
        "{lines:#?}"
    );
    assert_eq!(cpus_at(2, "f-batch"), 16.0, "{lines:#?}");
    // Without the guarantee, weights alone give batch three agents.
    let plain = example("quota-guarantee.yaml")
        .replace("  - update_quota: {role: prod, guarantee: {cpus: 8}}\n", "");
    let lines = sim(&plain);
    let cpus: f64 = of(&lines, "offer")
        .iter()
        .filter(|l| l["t"] == 1 && l["framework"] == "f-batch")
        .map(|l| l["resources"]["cpus"].as_f64().unwrap_or(0.0))
        .sum();
    assert_eq!(cpus, 12.0, "{lines:#?}");
}

#[test]
fn filters_last_at_least_the_allocation_interval() {
    // Mesos: a filter lasts max(refuse_seconds, allocation_interval). Declined at t=1 for 0.5 s, it still
    // covers the cycle at t=2 (until t=3); the agent comes back at t=4.
    let lines = sim(r#"
allocation_interval: 2
events:
  - add_framework: {id: f}
  - add_agent: {id: a, resources: {cpus: 1, mem: 128}}
  - advance: 1
  - decline: {framework: f, refuse_seconds: 0.5}
  - advance: 3
"#);
    let t: Vec<f64> = of(&lines, "offer")
        .iter()
        .map(|l| l["t"].as_f64().unwrap())
        .collect();
    assert_eq!(t, vec![0.0, 4.0], "{lines:#?}");
}

#[test]
fn suppressed_frameworks_get_nothing_until_revived() {
    let lines = sim(r#"
events:
  - add_framework: {id: f}
  - add_agent: {id: a, resources: {cpus: 1, mem: 128}}
  - suppress: {framework: f}
  - decline: {framework: f, refuse_seconds: 0}
  - advance: 3
  - revive: {framework: f}
"#);
    let t: Vec<f64> = of(&lines, "offer")
        .iter()
        .map(|l| l["t"].as_f64().unwrap())
        .collect();
    assert_eq!(t, vec![0.0, 3.0], "{lines:#?}");
}

#[test]
fn accept_returns_the_rest_with_its_filter_and_recover_frees_the_task() {
    let lines = sim(r#"
events:
  - add_framework: {id: f}
  - add_agent: {id: a, resources: {cpus: 4, mem: 1024}}
  - accept: {framework: f, agent: a, resources: {cpus: 1, mem: 256}, refuse_seconds: 2}
  - advance: 2
  - decline: {framework: f, refuse_seconds: 0}
  - recover: {framework: f, agent: a, resources: {cpus: 1, mem: 256}}
  - advance: 1
"#);
    let offers = of(&lines, "offer");
    assert_eq!(offers.len(), 3, "{lines:#?}");
    assert_eq!(offers[1]["t"], 2);
    assert_eq!(
        offers[1]["resources"],
        serde_json::json!({"cpus": 3, "mem": 768})
    );
    assert_eq!(
        offers[2]["resources"],
        serde_json::json!({"cpus": 4, "mem": 1024})
    );
}

#[test]
fn reserved_resources_go_only_to_their_role() {
    let lines = sim(r#"
events:
  - add_framework: {id: web, role: analytics}
  - add_framework: {id: db, role: db}
  - add_agent: {id: a, resources: {cpus: 2, mem: 512}, reserved: {db: {cpus: 2, mem: 512}}}
"#);
    let offers = of(&lines, "offer");
    assert_eq!(offers.len(), 2, "{lines:#?}");
    let web = offers.iter().find(|o| o["framework"] == "web").unwrap();
    assert!(web.get("reserved").is_none());
    let db = offers.iter().find(|o| o["framework"] == "db").unwrap();
    assert_eq!(
        db["reserved"],
        serde_json::json!({"db": {"cpus": 2, "mem": 512}})
    );
}

#[test]
fn quota_limit_caps_a_role_and_the_rest_goes_elsewhere() {
    let lines = sim(r#"
events:
  - update_quota: {role: capped, limit: {cpus: 2}}
  - add_framework: {id: c, role: capped}
  - add_framework: {id: o, role: other}
  - add_agent: {id: a, resources: {cpus: 8, mem: 1024}}
"#);
    let offers = of(&lines, "offer");
    let c = offers.iter().find(|o| o["framework"] == "c").unwrap();
    assert_eq!(c["resources"]["cpus"], 2, "{lines:#?}");
    let o = offers.iter().find(|o| o["framework"] == "o").unwrap();
    assert_eq!(o["resources"]["cpus"], 6);
}

/// Zero means zero: a limit of `cpus: 0, mem: 0` keeps every offer away from the role on an idle cluster, and
/// a limit of `disk: 0` keeps disk out of the role's offers; only an absent resource is unlimited.
#[test]
fn a_zero_quota_limit_allows_none_of_the_resource() {
    let lines = sim(&example("zero-quota.yaml"));
    let offers = of(&lines, "offer");
    assert!(!offers.is_empty(), "{lines:#?}");
    assert_eq!(count(&lines, "offer", "f-frozen"), 0, "{lines:#?}");
    for o in offers.iter().filter(|o| o["framework"] == "f-web") {
        assert!(o["resources"]["cpus"].as_f64().unwrap() <= 2.0, "{o}");
        assert!(o["resources"].get("disk").is_none(), "{o}");
    }
    assert!(count(&lines, "offer", "f-web") > 0, "{lines:#?}");
    assert!(count(&lines, "offer", "f-batch") > 0, "{lines:#?}");
}

#[test]
fn workload_tasks_with_a_duration_free_their_resources() {
    let lines = sim_with(
        r#"
events:
  - add_agent: {id: a, resources: {cpus: 2, mem: 256}}
  - add_framework: {id: w, workload: {task: {cpus: 1, mem: 64}, count: 4, per_offer: 2, duration: 3}}
  - advance: 10
"#,
        &SimOptions {
            summary: true,
            ..SimOptions::default()
        },
    );
    let launches: Vec<f64> = of(&lines, "launch")
        .iter()
        .map(|l| l["t"].as_f64().unwrap())
        .collect();
    assert_eq!(launches, vec![0.0, 0.0, 3.0, 3.0], "{lines:#?}");
    let summary = of(&lines, "summary")[0];
    assert_eq!(summary["frameworks"]["w"]["launches"], 4);
}

#[test]
fn a_removed_agent_rescinds_its_offers() {
    let lines = sim(r#"
events:
  - add_framework: {id: f}
  - add_agent: {id: a, resources: {cpus: 1, mem: 128}}
  - remove_agent: {id: a}
  - advance: 2
"#);
    assert_eq!(of(&lines, "rescind").len(), 1);
    assert_eq!(of(&lines, "offer").len(), 1, "no offers of a removed agent");
}

#[test]
fn priority_serves_the_high_class_first() {
    let scenario = r#"
events:
  - add_framework: {id: low, role: r}
  - add_framework: {id: high, role: r, priority: 10}
  - decline: {framework: low, refuse_seconds: 0}
  - add_agent: {id: a1, resources: {cpus: 1, mem: 128}}
  - add_agent: {id: a2, resources: {cpus: 1, mem: 128}}
"#;
    let drf = sim(scenario);
    assert_eq!(
        (count(&drf, "offer", "low"), count(&drf, "offer", "high")),
        (1, 1)
    );
    let prio = sim_with(
        scenario,
        &SimOptions {
            policy: Some("priority".into()),
            ..SimOptions::default()
        },
    );
    assert_eq!(
        (count(&prio, "offer", "low"), count(&prio, "offer", "high")),
        (0, 2),
        "{prio:#?}"
    );
}

#[test]
fn same_scenario_and_seed_give_the_same_output() {
    let scenario = r#"
events:
  - add_framework: {id: f, workload: {task: {cpus: 1, mem: 64}, count: 50, per_offer: 1, duration: 2}}
  - add_framework: {id: g, workload: {task: {cpus: 1, mem: 64}, count: 50, per_offer: 1, duration: 3}}
  - add_agent: {id: a1, resources: {cpus: 2, mem: 512}}
  - add_agent: {id: a2, resources: {cpus: 2, mem: 512}}
  - add_agent: {id: a3, resources: {cpus: 2, mem: 512}}
  - advance: 20
"#;
    let opts = SimOptions {
        seed: Some(7),
        summary: true,
        ..SimOptions::default()
    };
    assert_eq!(sim_with(scenario, &opts), sim_with(scenario, &opts));
}

#[test]
fn bad_scenarios_are_clear_errors() {
    let cases = [
        ("events: [{bogus: 1}]", "unknown variant"),
        (
            "events:\n  - accept: {framework: f, agent: a, resources: {cpus: 1}}",
            "no outstanding offer",
        ),
        (
            "events:\n  - add_agent: {id: a, resources: {cpus: -1}}",
            "negative",
        ),
        ("events:\n  - advance: -3", "seconds"),
        ("policy: nope\nevents: []", "unknown policy"),
    ];
    for (text, want) in cases {
        let err = run(text, &SimOptions::default(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

/// The native library (built here when missing) and, when plugins/wasm/build.sh made it, the WASM component
/// of the built-in drf: each decides every example scenario exactly like the built-in.
#[test]
fn native_and_wasm_builds_of_drf_run_in_the_simulator_like_the_builtin() {
    let target = target_dir();
    let lib = target.join("debug/liballot_drf_native.so");
    // Built every time (a no-op when fresh): a library left from an older build would speak an older ABI.
    let ok = std::process::Command::new(env!("CARGO"))
        .args(["build", "-p", "allot-drf-native"])
        .current_dir(repo())
        .status()
        .expect("cargo runs")
        .success();
    assert!(ok, "building allot-drf-native");
    // Both carry guarantees, tasks and revocations (C ABI v2, allot:policy@0.3.0), so preemption and
    // guarantees decide alike too.
    let mut plugins = vec![lib];
    let component = target.join("wasm/drf.wasm");
    if component.exists() {
        plugins.push(component);
    } else {
        eprintln!("SKIP the WASM drf: target/wasm/drf.wasm not built (no wasm32 Rust target)");
    }
    for name in [
        "drf-paper.yaml",
        "offer-filter.yaml",
        "two-roles-weights.yaml",
        "zero-quota.yaml",
        "role-tree.yaml",
        "preemption.yaml",
        "quota-guarantee.yaml",
        "reservations.yaml",
    ] {
        let builtin = sim(&example(name));
        for plugin in &plugins {
            let other = sim_with(
                &example(name),
                &SimOptions {
                    policy: Some(plugin.display().to_string()),
                    ..SimOptions::default()
                },
            );
            assert_eq!(
                builtin,
                other,
                "{name}: {} decides exactly like the built-in",
                plugin.display()
            );
        }
    }
}

/// Dynamic reservations through the simulator's `reserve` and `unreserve` events (Mesos' `docs/reservation.md`):
/// the reserved half of the agent goes to its role's framework only, and to anyone once released; releasing
/// what a running task uses, or more than is reserved, fails the scenario with the allocator's reason.
#[test]
fn a_dynamic_reservation_goes_to_its_role_only_until_it_is_released() {
    let lines = sim(&example("reservations.yaml"));
    let launches = |f: &str| launch_times(&lines, f);
    assert_eq!(launches("f-web"), [0.0, 0.0, 5.0, 5.0], "{lines:#?}");
    assert_eq!(launches("f-db"), [1.0, 1.0], "{lines:#?}");
    for o in of(&lines, "offer") {
        if o["framework"] == "f-web" {
            assert!(o.get("reserved").is_none(), "{o}");
            let t = o["t"].as_f64().unwrap();
            assert!(
                t >= 5.0 || o["resources"]["cpus"].as_f64().unwrap_or(0.0) <= 2.0,
                "{o}"
            );
        } else {
            assert!(o["reserved"]["db"].is_object(), "{o}");
        }
    }
    let db = of(&lines, "offer")
        .into_iter()
        .find(|o| o["framework"] == "f-db")
        .expect("f-db is offered");
    assert_eq!(db["reserved"]["db"]["cpus"], 2, "{db}");
    assert_eq!(
        (of(&lines, "reserve").len(), of(&lines, "unreserve").len()),
        (1, 1)
    );
    let refused = |scenario: String| {
        let mut out = Vec::new();
        run(&scenario, &SimOptions::default(), &mut out)
            .expect_err("refused")
            .to_string()
    };
    // db's tasks still run on the reservation (they never end and f-db stays): it cannot be released.
    let busy = example("reservations.yaml")
        .replace("duration: 2}", "}")
        .replace("  - remove_framework: {id: f-db}\n", "");
    let e = refused(busy);
    assert!(e.contains("tasks of role db use"), "{e}");
    let more = example("reservations.yaml").replace(
        "unreserve: {agent: a1, role: db, resources: {cpus: 2,",
        "unreserve: {agent: a1, role: db, resources: {cpus: 3,",
    );
    let e = refused(more);
    assert!(e.contains("unreserve of"), "{e}");
}
