//! `allot policy`: load, list, activate, roll back and inspect allocation policies on a live cluster.

use allot_proto::allocator::{
    ActivatePolicyRequest, ListPoliciesRequest, LoadPolicyRequest, PolicyRef, PolicyStatusRequest,
    RollbackPolicyRequest, ShadowPolicyRequest, policy_admin_client::PolicyAdminClient,
};
use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

/// `allot policy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Upload a policy artifact (a native `.so` or a WASM component `.wasm`); the allocator checks it loads and runs once, then stores it
    /// in etcd pinned by its sha256.
    Load {
        /// The artifact file.
        file: std::path::PathBuf,
        /// Refuse unless the file's sha256 is this (hex).
        #[arg(long)]
        sha256: Option<String>,
        /// Also make it the active policy.
        #[arg(long)]
        activate: bool,
    },
    /// Built-in policies, loaded artifacts and the active-policy record.
    List,
    /// Make a built-in (by name) or a loaded artifact (by sha256 or a unique prefix) the active policy.
    Activate {
        /// `drf`, `priority`, or a sha256 prefix.
        reference: String,
    },
    /// Make the previous policy active again.
    Rollback,
    /// What runs, what would run if it failed, its failures, and the shadow report.
    Status,
    /// Run a candidate beside the active policy on every cycle, without applying its grants; `allot policy
    /// status` then shows how its decisions differ (grants, per-role dominant shares).
    Shadow {
        /// `drf`, `priority`, or a loaded artifact's sha256 prefix.
        #[arg(required_unless_present = "off")]
        reference: Option<String>,
        /// Stop the shadow policy.
        #[arg(long)]
        off: bool,
    },
}

fn show(r: &Option<PolicyRef>) -> String {
    match r {
        Some(r) if r.sha256.is_empty() => format!("{} ({})", r.name, r.kind),
        Some(r) => format!(
            "{} ({}, sha256 {})",
            r.name,
            r.kind,
            &r.sha256[..r.sha256.len().min(12)]
        ),
        None => "-".into(),
    }
}

fn ref_json(r: &Option<PolicyRef>) -> serde_json::Value {
    match r {
        Some(r) => json!({"name": r.name, "kind": r.kind, "sha256": r.sha256}),
        None => serde_json::Value::Null,
    }
}

/// Prints the active-policy record an activation or rollback answered with.
fn print_record(
    r: Result<Option<allot_proto::allocator::PolicyRecord>, tonic::Status>,
) -> anyhow::Result<()> {
    let rec = r
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .unwrap_or_default();
    println!(
        "active: {} (was {})",
        show(&rec.active),
        show(&rec.previous)
    );
    Ok(())
}

/// Runs an `allot policy` subcommand against the allocator at `addr`.
pub async fn run(addr: &str, command: PolicyCommand, as_json: bool) -> anyhow::Result<i32> {
    let mut client = PolicyAdminClient::new(crate::ops::leader(addr).await?)
        .max_encoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES)
        .max_decoding_message_size(allot_common::grpc::MAX_MESSAGE_BYTES);
    let ctx = || format!("allocator at {addr}");
    match command {
        PolicyCommand::Load {
            file,
            sha256,
            activate,
        } => {
            let artifact =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let r = client
                .load(LoadPolicyRequest {
                    artifact,
                    sha256: sha256.unwrap_or_default(),
                    activate,
                })
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message()))
                .with_context(ctx)?
                .into_inner();
            let a = r.artifact.unwrap_or_default();
            if as_json {
                println!(
                    "{}",
                    json!({"artifact": ref_json(&a.r#ref), "size": a.size, "trial_grants": r.trial_grants,
                                      "trial_micros": r.trial_micros, "activated": activate})
                );
            } else {
                println!(
                    "loaded {} ({} bytes); trial run: {} grants in {} µs{}",
                    show(&a.r#ref),
                    a.size,
                    r.trial_grants,
                    r.trial_micros,
                    if activate { "; activated" } else { "" }
                );
                if let Some(p) = a.r#ref {
                    println!("sha256 {}", p.sha256);
                }
            }
        }
        PolicyCommand::List => {
            let r = client
                .list(ListPoliciesRequest {})
                .await
                .with_context(ctx)?
                .into_inner();
            let record = r.record.unwrap_or_default();
            if as_json {
                let artifacts: Vec<_> = r
                    .artifacts
                    .iter()
                    .map(|a| json!({"policy": ref_json(&a.r#ref), "size": a.size, "loaded_at_ms": a.loaded_at_ms}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"builtins": r.builtins, "artifacts": artifacts,
                    "active": ref_json(&record.active), "previous": ref_json(&record.previous)})
                    )?
                );
            } else {
                let mut t = Table::new();
                t.load_preset(UTF8_FULL_CONDENSED)
                    .set_header(vec!["POLICY", "KIND", "SHA256", "SIZE", "ACTIVE"]);
                let active = record.active.clone().unwrap_or_default();
                for b in &r.builtins {
                    let on = active.kind == "builtin" && active.name == *b;
                    t.add_row(vec![
                        b.clone(),
                        "builtin".into(),
                        String::new(),
                        String::new(),
                        on.to_string(),
                    ]);
                }
                for a in &r.artifacts {
                    let p = a.r#ref.clone().unwrap_or_default();
                    let on = p.sha256 == active.sha256 && !p.sha256.is_empty();
                    t.add_row(vec![
                        p.name,
                        p.kind,
                        p.sha256,
                        a.size.to_string(),
                        on.to_string(),
                    ]);
                }
                println!("{t}");
            }
        }
        PolicyCommand::Activate { reference } => {
            let r = client.activate(ActivatePolicyRequest { reference }).await;
            print_record(r.map(|r| r.into_inner().record)).with_context(ctx)?;
        }
        PolicyCommand::Rollback => {
            let r = client.rollback(RollbackPolicyRequest {}).await;
            print_record(r.map(|r| r.into_inner().record)).with_context(ctx)?;
        }
        PolicyCommand::Shadow { reference, off } => {
            let r = client
                .shadow(ShadowPolicyRequest {
                    reference: reference.unwrap_or_default(),
                    off,
                })
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message()))
                .with_context(ctx)?
                .into_inner();
            match r.shadow {
                Some(p) => println!(
                    "shadowing {} beside the active policy; see `allot policy status`",
                    show(&Some(p))
                ),
                None => println!("shadow policy stopped"),
            }
        }
        PolicyCommand::Status => {
            let s = client
                .status(PolicyStatusRequest {})
                .await
                .with_context(ctx)?
                .into_inner();
            if as_json {
                let rec = s.record.clone().unwrap_or_default();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                    "active": ref_json(&rec.active), "previous": ref_json(&rec.previous),
                    "running": ref_json(&s.running), "last_good": ref_json(&s.last_good),
                    "cycles": s.cycles, "failures": s.failures, "fallbacks": s.fallbacks,
                    "dropped_grants": s.dropped_grants, "failures_by_reason": s.failures_by_reason,
                    "last_error": s.last_error, "last_error_at_ms": s.last_error_at_ms, "load_error": s.load_error,
                    "shadow": s.shadow.as_ref().map(|sh| json!({"policy": ref_json(&sh.policy), "cycles": sh.cycles,
                        "failures": sh.failures, "active_grants": sh.active_grants, "shadow_grants": sh.shadow_grants,
                        "differing_grants": sh.differing_grants, "invalid_grants": sh.invalid_grants,
                        "active_share": sh.active_share, "shadow_share": sh.shadow_share,
                        "mean_share_delta": sh.mean_share_delta, "last_error": sh.last_error}))}))?
                );
            } else {
                let rec = s.record.unwrap_or_default();
                println!("active (record): {}", show(&rec.active));
                println!("running here:    {}", show(&s.running));
                println!("last good:       {}", show(&s.last_good));
                println!(
                    "cycles {}  failures {}  fallbacks {}  dropped grants {}",
                    s.cycles, s.failures, s.fallbacks, s.dropped_grants
                );
                for (reason, n) in &s.failures_by_reason {
                    println!("  {reason}: {n}");
                }
                if !s.last_error.is_empty() {
                    println!("last error: {}", s.last_error);
                }
                if !s.load_error.is_empty() {
                    println!("cannot run the recorded policy here: {}", s.load_error);
                }
                if let Some(sh) = &s.shadow {
                    println!(
                        "shadow: {} over {} cycles ({} failures{})",
                        show(&sh.policy),
                        sh.cycles,
                        sh.failures,
                        if sh.last_error.is_empty() {
                            String::new()
                        } else {
                            format!(", last: {}", sh.last_error)
                        }
                    );
                    println!(
                        "  grants: active {}  shadow {}  differing {}  invalid {}",
                        sh.active_grants, sh.shadow_grants, sh.differing_grants, sh.invalid_grants
                    );
                    let mut roles: Vec<&String> = sh
                        .active_share
                        .keys()
                        .chain(sh.shadow_share.keys())
                        .collect();
                    roles.sort();
                    roles.dedup();
                    for r in roles {
                        let a = sh.active_share.get(r).copied().unwrap_or(0.0);
                        let b = sh.shadow_share.get(r).copied().unwrap_or(0.0);
                        let d = sh.mean_share_delta.get(r).copied().unwrap_or(0.0);
                        println!(
                            "  role {r}: mean share delta {:+.1} points; last cycle {:.1}% active, {:.1}% shadow",
                            d * 100.0,
                            a * 100.0,
                            b * 100.0
                        );
                    }
                }
            }
        }
    }
    Ok(0)
}
