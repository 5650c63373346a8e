//! Allocation policies as native and WASM plugins on a live cluster: loading pinned artifacts, swapping
//! under a running workload (native <-> WASM included), and containing plugins that fail (error codes,
//! garbage, endless loops, overcommit, traps, memory exhaustion, another interface version). The native
//! misbehaving plugins are written in C against `plugins/abi/include/allot_policy.h` and compiled here with
//! the system C compiler; the WASM ones are C too (plugins/wasm/c/fault.c), built by plugins/wasm/build.sh.

use allot_common::grpc::Channel;
use allot_proto::allocator::{
    ActivatePolicyRequest, LoadPolicyRequest, PolicyStatusRequest, PolicyStatusResponse,
    RollbackPolicyRequest, ShadowPolicyRequest, policy_admin_client::PolicyAdminClient,
};
use allot_proto::common::TaskState;
use allot_proto::scheduler::event;
use allot_tests::{Cluster, PATIENCE, TestFramework, eventually, task};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target"))
}

/// The native build of a built-in policy (`drf` or `priority`), built every time (a no-op when fresh: a
/// library left from an older build would speak an older ABI).
fn native(name: &str) -> Vec<u8> {
    let path = target_dir()
        .join("debug")
        .join(format!("liballot_{name}_native.so"));
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-p", &format!("allot-{name}-native")])
        .current_dir(repo())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building allot-{name}-native");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A C policy: whole agents to the first unfiltered framework while one framework is subscribed; `mode`
/// decides what it does once there are two.
fn c_plugin(dir: &Path, mode: &str) -> Vec<u8> {
    let version = if mode == "wrong_abi" {
        "99u"
    } else {
        "ALLOT_POLICY_ABI_VERSION"
    };
    let src = format!(
        r#"
#include "allot_policy.h"
uint32_t allot_policy_abi_version(void) {{ return {version}; }}
const char *allot_policy_name(void) {{ return "c-{mode}"; }}
int32_t allot_policy_allocate(const allot_snapshot *s, allot_grants *out) {{
    int misbehave = s->n_frameworks >= 2;
    const char *mode = "{mode}";
    if (misbehave && mode[0] == 'e') return ALLOT_POLICY_ERR_PANIC;          /* error */
    if (misbehave && mode[0] == 'l') {{ volatile unsigned long x = 0; for (;;) x++; }}  /* loop */
    uint32_t n = 0;
    for (uint32_t a = 0; a < s->n_agents && n < out->capacity; a++) {{
        for (uint32_t f = 0; f < s->n_frameworks; f++) {{
            const allot_framework *fw = &s->frameworks[f];
            int filtered = 0;
            for (uint32_t k = 0; k < fw->n_filtered; k++) if (fw->filtered[k] == a) filtered = 1;
            if (filtered) continue;
            allot_grant *g = &out->grants[n++];
            g->framework = (misbehave && mode[0] == 'g') ? 9999u : f;           /* garbage */
            g->agent = a;
            for (uint32_t k = 0; k < s->n_kinds; k++)
                g->resources[k] = s->agents[a].available[k] * ((misbehave && mode[0] == 'o') ? 2 : 1); /* overcommit */
            break;
        }}
    }}
    out->len = n;
    return ALLOT_POLICY_OK;
}}
"#
    );
    let c = dir.join(format!("{mode}.c"));
    let so = dir.join(format!("{mode}.so"));
    std::fs::write(&c, src).expect("write C source");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(&c)
        .arg("-I")
        .arg(repo().join("plugins/abi/include"))
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(status.success(), "compiling {mode}.c");
    std::fs::read(&so).expect("plugin built")
}

fn admin(cluster: &Cluster) -> PolicyAdminClient<Channel> {
    PolicyAdminClient::new(
        cluster
            .operator()
            .channel(&cluster.allocator.addr.to_string())
            .expect("channel"),
    )
    .max_encoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES)
}

async fn load(
    cluster: &Cluster,
    artifact: Vec<u8>,
    activate: bool,
) -> Result<String, tonic::Status> {
    let r = admin(cluster)
        .load(LoadPolicyRequest {
            artifact,
            sha256: String::new(),
            activate,
        })
        .await?
        .into_inner();
    Ok(r.artifact
        .and_then(|a| a.r#ref)
        .map(|r| r.sha256)
        .unwrap_or_default())
}

async fn status(cluster: &Cluster) -> PolicyStatusResponse {
    admin(cluster)
        .status(PolicyStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

async fn running(cluster: &Cluster) -> (String, String) {
    let r = status(cluster).await.running.unwrap_or_default();
    (r.name, r.kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_checked_before_they_are_stored() {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let e = load(&cluster, c_plugin(dir.path(), "wrong_abi"), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("ABI version 99"), "{}", e.message());
    let e = load(&cluster, b"#!/bin/sh\necho hi\n".to_vec(), false)
        .await
        .unwrap_err();
    assert!(e.message().contains("neither an ELF"), "{}", e.message());
    let e = admin(&cluster)
        .load(LoadPolicyRequest {
            artifact: native("drf"),
            sha256: "00".repeat(32),
            activate: false,
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("sha256 mismatch"), "{}", e.message());
    let e = admin(&cluster)
        .activate(ActivatePolicyRequest {
            reference: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = admin(&cluster)
        .rollback(RollbackPolicyRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

/// Runs `steps` (a reference to activate, or "rollback", and the (name, kind) that must then run) under a
/// workload that uses every offer for one short task; checks that no offer is made twice, none is rescinded,
/// every task finishes and no policy call failed.
/// The next offers to `fw`, within [`PATIENCE`], acknowledging every status update that comes before them
/// and noting the tasks that reached TASK_FINISHED in `finished`.
async fn offers_acking(
    fw: &mut TestFramework,
    finished: &mut std::collections::HashSet<String>,
) -> Vec<allot_proto::scheduler::Offer> {
    loop {
        let next = fw
            .wait_for(PATIENCE, |e| match e {
                event::Event::Offers(o) => Some(Ok(o.offers.clone())),
                event::Event::Update(u) => u.status.clone().map(Err),
                _ => None,
            })
            .await
            .expect("offers within patience");
        match next {
            Ok(offers) => return offers,
            Err(status) => {
                if status.state() == TaskState::TaskFinished {
                    finished.insert(status.task_id.clone());
                }
                fw.ack(&status).await;
            }
        }
    }
}

async fn swap_under_workload(
    cluster: &Cluster,
    fw: &mut TestFramework,
    steps: Vec<(String, (&str, &str))>,
) {
    let mut seen = std::collections::HashSet::new();
    let mut finished = std::collections::HashSet::new();
    let mut launched = 0;
    for (step, want) in steps {
        if step == "rollback" {
            admin(cluster)
                .rollback(RollbackPolicyRequest {})
                .await
                .expect("rollback");
        } else {
            admin(cluster)
                .activate(ActivatePolicyRequest {
                    reference: step[..12.min(step.len())].to_string(),
                })
                .await
                .expect("activate");
        }
        eventually("the allocator runs the new policy", || async {
            running(cluster).await == (want.0.into(), want.1.into())
        })
        .await;
        // Keep the workload going: every offer is used for one short task, then released (its updates are
        // acknowledged as they come, so that an ended task frees its CPUs: a policy need not offer the memory
        // left beside tasks that hold every CPU).
        for _ in 0..3 {
            let offers = offers_acking(fw, &mut finished).await;
            for o in offers {
                assert!(
                    seen.insert(o.offer_id.clone()),
                    "offer {} made twice",
                    o.offer_id
                );
                // What is left of an agent running earlier tasks may be memory only (an offer is allocatable
                // with cpus or memory, as in Mesos): decline what the task does not fit.
                let r =
                    allot_common::convert::resources_from_proto(&o.resources).expect("resources");
                if r.scalar("cpus") < 0.5 || r.scalar("mem") < 64.0 {
                    fw.decline(&o.offer_id, 0.0).await.expect("decline");
                    continue;
                }
                launched += 1;
                fw.accept(
                    &o.offer_id,
                    vec![task(&format!("t{launched}"), "true", 0.5, 64.0)],
                    0.0,
                )
                .await
                .expect("every offer made under any policy is valid");
            }
        }
    }
    for i in 1..=launched {
        let id = format!("t{i}");
        if !finished.contains(&id) {
            fw.await_state(&id, TaskState::TaskFinished).await;
        }
    }
    let rescinds = fw
        .wait_for(Duration::from_millis(200), |e| {
            matches!(e, event::Event::Rescind(_)).then_some(())
        })
        .await;
    assert!(rescinds.is_none(), "no offer was rescinded by a swap");
    let s = status(cluster).await;
    assert_eq!((s.failures, s.dropped_grants), (0, 0), "{s:?}");
}

/// Three small agents, one framework that takes every offer, and native drf loaded (its sha256).
async fn steady_cluster() -> (Cluster, TestFramework, String) {
    let mut cluster = Cluster::start().await;
    for _ in 0..3 {
        cluster.add_agent("cpus:1;mem:256").await;
    }
    let fw = TestFramework::subscribe(&cluster, "steady", "*").await;
    let drf_sha = load(&cluster, native("drf"), false)
        .await
        .expect("load native drf");
    (cluster, fw, drf_sha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_native_policies_under_a_running_workload_loses_no_offer() {
    let (cluster, mut fw, drf_sha) = steady_cluster().await;
    let prio_sha = load(&cluster, native("priority"), false)
        .await
        .expect("load native priority");
    let steps = vec![
        (drf_sha, ("drf", "native")),
        (prio_sha, ("priority", "native")),
        ("rollback".into(), ("drf", "native")),
        ("drf".into(), ("drf", "builtin")),
    ];
    swap_under_workload(&cluster, &mut fw, steps).await;
}

/// A WASM component built by `bash plugins/wasm/build.sh` (tests/run.sh runs it first).
fn wasm(name: &str) -> Option<Vec<u8>> {
    std::fs::read(allot_tests::procs::wasm_path(name)).ok()
}

fn c_wasm(name: &str) -> Vec<u8> {
    wasm(name).unwrap_or_else(|| {
        panic!("target/wasm/{name}.wasm is missing: run `bash plugins/wasm/build.sh` (tests/run.sh does)")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_native_drf_to_wasm_priority_and_back_loses_no_offer() {
    let (cluster, mut fw, drf_sha) = steady_cluster().await;
    // The Rust priority policy compiled to WASM; where this machine has no wasm32 Rust target, the C policy.
    let (bytes, name) = match wasm("priority") {
        Some(b) => (b, "priority"),
        None => {
            eprintln!(
                "priority.wasm not built (no wasm32-unknown-unknown target): using fairshare-c.wasm"
            );
            (c_wasm("fairshare-c"), "fairshare-c")
        }
    };
    let wasm_sha = load(&cluster, bytes, false)
        .await
        .expect("load the WASM policy");
    let fair_sha = load(&cluster, c_wasm("fairshare-c"), false)
        .await
        .expect("load the C policy");
    let steps = vec![
        (drf_sha, ("drf", "native")),
        (wasm_sha, (name, "wasm")),
        ("rollback".into(), ("drf", "native")),
        (fair_sha, ("fairshare-c", "wasm")),
        ("rollback".into(), ("drf", "native")),
    ];
    swap_under_workload(&cluster, &mut fw, steps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_plugins_that_trap_loop_or_exhaust_memory_are_contained() {
    for (fixture, reason, text) in [
        ("fault-trap", "trap", "unreachable"),
        ("fault-oom", "trap", "memory"),
        ("fault-loop", "timeout", "no answer within"),
        ("fault-garbage", "malformed", "framework index 9999"),
        ("fault-error", "error", "fault injected"),
    ] {
        let (cluster, mut second) = misbehaving_plugin(c_wasm(fixture), fixture).await;
        assert!(
            !second.offers().await.is_empty(),
            "{fixture}: allocation goes on with the last good policy"
        );
        let s = status(&cluster).await;
        assert!(
            s.failures_by_reason.get(reason).copied().unwrap_or(0) >= 1 && s.fallbacks >= 1,
            "{fixture}: {s:?}"
        );
        assert!(s.last_error.contains(text), "{fixture}: {}", s.last_error);
        assert_eq!(s.running.unwrap_or_default().kind, "wasm", "{fixture}");
        assert_eq!(s.last_good.unwrap_or_default().name, "drf", "{fixture}");
    }
    // Grants beyond what agents have are not a failure of the call: the host drops each one and counts it.
    let (cluster, mut second) =
        misbehaving_plugin(c_wasm("fault-overcommit"), "fault-overcommit").await;
    overcommits_are_dropped(&cluster, &mut second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_artifacts_of_another_interface_version_are_refused() {
    let cluster = Cluster::start().await;
    let e = load(&cluster, c_wasm("wrong-version"), false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("allot:policy@0.3.0"),
        "{}",
        e.message()
    );
    assert!(
        status(&cluster)
            .await
            .running
            .is_some_and(|r| r.kind == "builtin")
    );
}

/// Waits until the host has dropped overcommitting grants, and checks that none became an offer.
async fn overcommits_are_dropped(cluster: &Cluster, second: &mut TestFramework) {
    eventually("overcommitting grants are dropped", || async {
        status(cluster).await.dropped_grants >= 2
    })
    .await;
    assert!(
        second
            .offers_within(Duration::from_millis(500))
            .await
            .is_none(),
        "no invalid grant became an offer"
    );
}

/// Activates the native C plugin `mode` while one framework is subscribed (its trial passes), then
/// subscribes a second framework, which makes it misbehave. Returns the cluster and the second framework.
async fn misbehaving(mode: &str) -> (Cluster, TestFramework, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, second) =
        misbehaving_plugin(c_plugin(dir.path(), mode), &format!("c-{mode}")).await;
    (cluster, second, dir)
}

/// Activates `artifact` (a plugin that behaves with one framework and misbehaves with two, named `name`)
/// while one framework is subscribed, then subscribes a second framework.
async fn misbehaving_plugin(artifact: Vec<u8>, name: &str) -> (Cluster, TestFramework) {
    let mut cluster = Cluster::start().await;
    cluster.add_agent("cpus:1;mem:256").await;
    cluster.add_agent("cpus:1;mem:256").await;
    let mut first = TestFramework::subscribe(&cluster, "first", "*").await;
    // Keep the first framework away from the agents so they stay free for the second.
    for o in first.offers().await {
        first.decline(&o.offer_id, 600.0).await.expect("decline");
    }
    while let Some(more) = first.offers_within(Duration::from_millis(300)).await {
        for o in more {
            first.decline(&o.offer_id, 600.0).await.expect("decline");
        }
    }
    load(&cluster, artifact, true)
        .await
        .expect("the plugin passes its trial");
    eventually("the plugin runs", || async {
        running(&cluster).await.0 == name
    })
    .await;
    let second = TestFramework::subscribe(&cluster, "second", "*").await;
    (cluster, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_returning_an_error_is_contained() {
    let (cluster, mut second, _dir) = misbehaving("error").await;
    assert!(
        !second.offers().await.is_empty(),
        "allocation goes on with the last good policy"
    );
    let s = status(&cluster).await;
    assert!(s.failures >= 1 && s.fallbacks >= 1, "{s:?}");
    assert!(
        s.failures_by_reason.get("error").copied().unwrap_or(0) >= 1,
        "{s:?}"
    );
    assert!(s.last_error.contains("error code 3"), "{}", s.last_error);
    assert_eq!(s.last_good.unwrap_or_default().name, "drf");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_returning_garbage_is_contained() {
    let (cluster, mut second, _dir) = misbehaving("garbage").await;
    assert!(!second.offers().await.is_empty());
    let s = status(&cluster).await;
    assert!(
        s.failures_by_reason.get("malformed").copied().unwrap_or(0) >= 1,
        "{s:?}"
    );
    assert!(
        s.last_error.contains("framework index 9999"),
        "{}",
        s.last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_loops_is_abandoned_and_allocation_goes_on() {
    let (cluster, mut second, _dir) = misbehaving("loop").await;
    // It times out once, is marked broken, and is not called again: later cycles fall back at once.
    for _ in 0..3 {
        for o in second.offers().await {
            second.decline(&o.offer_id, 0.0).await.expect("decline");
        }
    }
    let s = status(&cluster).await;
    assert_eq!(
        s.failures_by_reason.get("timeout").copied(),
        Some(1),
        "{s:?}"
    );
    assert_eq!(s.failures, 1, "{s:?}");
    assert!(s.fallbacks >= 3, "{s:?}");
    assert_eq!(
        s.last_good.unwrap_or_default().name,
        "drf",
        "the fallback is the policy before the plugin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overcommitting_grants_are_dropped_and_counted_and_rollback_restores() {
    let (cluster, mut second, _dir) = misbehaving("overcommit").await;
    overcommits_are_dropped(&cluster, &mut second).await;
    admin(&cluster)
        .rollback(RollbackPolicyRequest {})
        .await
        .expect("rollback");
    assert!(
        !second.offers().await.is_empty(),
        "the rolled-back policy offers again"
    );
    let _ = PATIENCE;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_policy_is_compared_without_being_applied() {
    let mut cluster = Cluster::start().await;
    let info = |name: &str, role: &str, priority| allot_proto::common::FrameworkInfo {
        name: name.into(),
        user: allot_tests::current_user(),
        roles: vec![role.into()],
        priority,
        ..Default::default()
    };
    let mut low = TestFramework::subscribe_with(&cluster, info("low", "batch", 0)).await;
    let mut high = TestFramework::subscribe_with(&cluster, info("high", "service", 10)).await;
    admin(&cluster)
        .shadow(ShadowPolicyRequest {
            reference: "priority".into(),
            off: false,
        })
        .await
        .expect("shadow");
    cluster.add_agent("cpus:1;mem:256").await;
    cluster.add_agent("cpus:1;mem:256").await;
    // DRF, the active policy, gives each framework one agent...
    assert_eq!(low.offers().await.len() + high.offers().await.len(), 2);
    // ...while the shadow would have given both to the high priority class.
    eventually("the shadow report shows the difference", || async {
        status(&cluster)
            .await
            .shadow
            .is_some_and(|s| s.differing_grants >= 1)
    })
    .await;
    let sh = status(&cluster).await.shadow.expect("shadow report");
    assert_eq!(sh.policy.unwrap_or_default().name, "priority");
    assert!(
        sh.mean_share_delta["service"] > 0.0,
        "{:?}",
        sh.mean_share_delta
    );
    assert!(
        sh.mean_share_delta["batch"] < 0.0,
        "{:?}",
        sh.mean_share_delta
    );
    assert_eq!(sh.invalid_grants, 0);
    admin(&cluster)
        .shadow(ShadowPolicyRequest {
            reference: String::new(),
            off: true,
        })
        .await
        .expect("shadow off");
    assert!(status(&cluster).await.shadow.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_an_empty_cache_fetches_the_artifact_from_etcd() {
    use allot_allocator::policy::{materialize, sha256_hex, store_artifact};
    let etcd = allot_tests::Etcd::start().await;
    let store = etcd.store().await;
    // Over two chunks, so that order matters.
    let bytes: Vec<u8> = (0..(allot_allocator::policy::CHUNK_BYTES * 2 + 123))
        .map(|i| (i % 251) as u8)
        .collect();
    let reference = allot_proto::allocator::PolicyRef {
        name: "blob".into(),
        kind: "native".into(),
        sha256: sha256_hex(&bytes),
    };
    let meta = store_artifact(&store, &reference, &bytes)
        .await
        .expect("stored");
    assert_eq!(meta.chunks, 3);
    let cache = tempfile::tempdir().expect("temp dir");
    let path = materialize(&store, &reference.sha256, cache.path())
        .await
        .expect("fetched");
    assert_eq!(std::fs::read(path).expect("cached file"), bytes);
    // A tampered chunk is refused.
    let key = format!(
        "{}/policies/chunk/{}/00001",
        allot_server::store::DEFAULT_ROOT,
        reference.sha256
    );
    store.put_bytes(&key, vec![0u8; 10]).await.expect("tamper");
    let other = tempfile::tempdir().expect("temp dir");
    let e = materialize(&store, &reference.sha256, other.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not match"), "{e}");
}
