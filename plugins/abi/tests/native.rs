//! The host side against real libraries: C policies compiled here with the system C compiler (`$CC`, default
//! `cc`), one against the frozen version-1 header (`include/v1/allot_policy.h`), which must keep loading and
//! allocating and never preempts, and one against the current header (version 2) with `allot_policy_revoke`,
//! whose revocations, messages and malformed answers the host reads back.
#![cfg(feature = "host")]

use allot_policy::{AgentView, FrameworkView, Preemption, Resources, RoleView, Snapshot, TaskView};
use allot_policy_abi::host::{AbiError, NativePolicy};
use std::path::{Path, PathBuf};

/// First fit: every agent's available resources to the first framework not filtered from it.
const FIRST_FIT: &str = r#"
#include "allot_policy.h"
uint32_t allot_policy_abi_version(void) { return ALLOT_POLICY_ABI_VERSION; }
const char *allot_policy_name(void) { return "first-fit-c"; }
int32_t allot_policy_allocate(const allot_snapshot *s, allot_grants *out) {
    uint32_t n = 0;
    for (uint32_t a = 0; a < s->n_agents && n < out->capacity; a++) {
        for (uint32_t f = 0; f < s->n_frameworks; f++) {
            const allot_framework *fw = &s->frameworks[f];
            int filtered = 0;
            for (uint32_t k = 0; k < fw->n_filtered; k++) if (fw->filtered[k] == a) filtered = 1;
            if (filtered) continue;
            allot_grant *g = &out->grants[n++];
            g->framework = f;
            g->agent = a;
            for (uint32_t k = 0; k < s->n_kinds; k++) g->resources[k] = s->agents[a].available[k];
            break;
        }
    }
    out->len = n;
    return ALLOT_POLICY_OK;
}
"#;

/// Version 2's revoke: every task of a role other than the first framework starved past the grace, oldest
/// last, with a message naming the starved role, its wait and whether it has a guarantee; with BAD defined,
/// one revocation of a task index beyond the snapshot's.
const REVOKE: &str = r#"
#include <stdio.h>
int32_t allot_policy_revoke(const allot_snapshot *s, allot_revocations *out) {
    out->len = 0;
    if (!s->preemption) return ALLOT_POLICY_OK;
#ifdef BAD
    out->revocations[0].task = s->n_tasks + 9999;
    out->len = 1;
    return ALLOT_POLICY_OK;
#endif
    for (uint32_t f = 0; f < s->n_frameworks; f++) {
        if (s->starved_seconds[f] < s->preemption->grace_seconds) continue;
        uint32_t role = s->frameworks[f].role;
        for (uint32_t t = 0; t < s->n_tasks && out->len < out->capacity; t++) {
            if (s->tasks[t].role == role) continue;
            allot_revocation *r = &out->revocations[out->len++];
            r->task = t;
            snprintf(r->message, ALLOT_POLICY_MESSAGE_BYTES, "for %.*s after %.0f s, guaranteed: %s",
                     (int)s->roles[role].name.len, s->roles[role].name.ptr, s->starved_seconds[f],
                     s->quota_guarantees[role] ? "yes" : "no");
        }
        break;
    }
    return ALLOT_POLICY_OK;
}
"#;

/// Compiles `source` against the header in `include` into a library named `name`.
fn compile(name: &str, source: &str, include: &Path, defines: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("allot-abi-native-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (c, so) = (
        dir.join(format!("{name}.c")),
        dir.join(format!("{name}.so")),
    );
    std::fs::write(&c, source).expect("write the C source");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-shared", "-fPIC", "-O1"])
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(&so)
        .arg(&c)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        out.status.success(),
        "{name}.c does not compile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

fn include() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

fn r(s: &str) -> Resources {
    s.parse().expect("resources")
}

/// Two agents of cpus 4 / mem 1024, all used by four tasks (cpus 2, mem 512) of `fb` in role `batch`, plus
/// one agent idle; `fw` of role `web` (guaranteed cpus 2) has been starved for 60 s, past the 30 s grace.
fn snapshot() -> Snapshot {
    let role = |name: &str| RoleView {
        name: name.into(),
        weight: 1.0,
        quota_limit: None,
        quota_guarantee: None,
        allocation: Resources::new(),
    };
    let mut s = Snapshot {
        total: r("cpus:12;mem:3072"),
        agents: vec![AgentView::idle("a2", r("cpus:4;mem:1024"))],
        frameworks: vec![FrameworkView {
            starved_seconds: 60.0,
            ..FrameworkView::new("fw", "web")
        }],
        roles: vec![role("batch"), role("web")],
        preemption: Some(Preemption {
            grace_seconds: 30.0,
            min_runtime_seconds: 10.0,
        }),
        ..Snapshot::default()
    };
    s.roles[0].allocation = r("cpus:8;mem:2048");
    s.roles[1].quota_guarantee = Some(r("cpus:2"));
    s.tasks = (0..4)
        .map(|i| TaskView {
            framework: "fb".into(),
            id: format!("t{i}"),
            agent: format!("a{}", i / 2),
            role: "batch".into(),
            priority: 0,
            resources: r("cpus:2;mem:512"),
            running_seconds: 100.0 + i as f64,
        })
        .collect();
    s
}

#[test]
fn a_library_of_the_frozen_version_1_loads_allocates_and_never_preempts() {
    let so = compile("v1", FIRST_FIT, &include().join("v1"), &[]);
    let p = NativePolicy::load(&so).expect("a version-1 library loads");
    assert_eq!(
        (p.name(), p.abi_version(), p.revokes()),
        ("first-fit-c", 1, false)
    );
    let s = snapshot();
    let grants = p.allocate(&s).expect("allocates");
    assert_eq!(grants.len(), 1);
    assert_eq!((grants[0].framework, grants[0].agent), (0, 0));
    assert_eq!(grants[0].resources, r("cpus:4;mem:1024"));
    assert_eq!(p.revoke(&s).expect("nothing to revoke"), []);
}

#[test]
fn a_library_of_version_2_revokes_with_its_reasons() {
    let so = compile("v2", &format!("{FIRST_FIT}{REVOKE}"), &include(), &[]);
    let p = NativePolicy::load(&so).expect("a version-2 library loads");
    assert_eq!((p.abi_version(), p.revokes()), (2, true));
    let s = snapshot();
    assert_eq!(p.allocate(&s).expect("allocates").len(), 1);
    let revoked = p.revoke(&s).expect("revokes");
    let tasks: Vec<usize> = revoked.iter().map(|r| r.task).collect();
    assert_eq!(tasks, [0, 1, 2, 3]);
    assert_eq!(revoked[0].message, "for web after 60 s, guaranteed: yes");
    // Without preemption settings the library is not asked.
    let calm = Snapshot {
        preemption: None,
        ..snapshot()
    };
    assert_eq!(p.revoke(&calm).expect("not asked"), []);
    // Version 2 without allot_policy_revoke loads and never preempts.
    let plain =
        NativePolicy::load(&compile("v2-plain", FIRST_FIT, &include(), &[])).expect("loads");
    assert_eq!((plain.abi_version(), plain.revokes()), (2, false));
    assert_eq!(plain.revoke(&s).expect("nothing"), []);
}

#[test]
fn a_revocation_of_a_task_the_snapshot_lacks_is_malformed() {
    let so = compile(
        "v2-bad",
        &format!("{FIRST_FIT}{REVOKE}"),
        &include(),
        &["BAD"],
    );
    let p = NativePolicy::load(&so).expect("loads");
    match p.revoke(&snapshot()) {
        Err(AbiError::BadRevocation(m)) => assert!(m.contains("task index 10003 of 4"), "{m}"),
        other => panic!("{other:?}"),
    }
}
