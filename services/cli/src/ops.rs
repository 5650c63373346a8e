//! Operator views: tables or JSON of agents, frameworks, tasks, offers and roles.

use allot_common::convert::{limits_from_proto, limits_to_proto, resources_from_proto};
use allot_policy::Limits;
use allot_proto::common::{Resource, Role};
use allot_proto::operator::{
    ListFrameworksRequest, ListOffersRequest, ListTasksRequest, operator_client::OperatorClient,
};
use allot_proto::registry::{
    ListAgentsRequest, ListRolesRequest, SetRoleRequest, registry_client::RegistryClient,
};
use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

/// `allot roles set`.
#[derive(Debug, clap::Subcommand)]
pub enum RolesCommand {
    /// Create or replace a role's weight and quota limit.
    Set {
        /// Role name.
        role: String,
        /// DRF weight (> 0).
        #[arg(long, default_value_t = 1.0)]
        weight: f64,
        /// Quota limit, e.g. `cpus:4;mem:4096`: the most the role may hold, offered and used. `cpus:0` allows
        /// no CPUs at all; a resource not named is not limited.
        #[arg(long)]
        quota: Option<String>,
        /// Quota guarantee, e.g. `cpus:8;mem:16384`: what the role is served first and what is held back
        /// from other roles while it has demand (at most the limit).
        #[arg(long)]
        guarantee: Option<String>,
        /// Preemption never revokes tasks of this role or of the roles below it (the allocator's
        /// `--preemption-grace` turns preemption on).
        #[arg(long)]
        no_preemption: bool,
    },
}

fn res(list: &[Resource]) -> String {
    resources_from_proto(list)
        .map(|r| r.to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// A table with `header`, in the CLI's one style.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

/// A client of the leading registry among the replicas at `addr` (comma-separated).
async fn registry(addr: &str) -> anyhow::Result<RegistryClient<allot_common::grpc::Channel>> {
    Ok(RegistryClient::new(leader(addr).await?))
}

/// A client of the leading broker among the replicas at `addr` (comma-separated).
async fn operator(addr: &str) -> anyhow::Result<OperatorClient<allot_common::grpc::Channel>> {
    Ok(OperatorClient::new(leader(addr).await?))
}

/// How the CLI secures its connections (`--tls-dir`, `--tls-name`, `--insecure` and their `ALLOT_*`
/// variables), set once at start.
static SECURITY: std::sync::OnceLock<allot_server::config::TlsArgs> = std::sync::OnceLock::new();

/// Sets how [`dialer`] connects; called once, at start.
pub fn secure_with(security: allot_server::config::TlsArgs) {
    let _ = SECURITY.set(security);
}

/// How a command connects: mutual TLS with the certificate of the principal `--tls-name` names (default
/// `default_name`: `operator` for operator commands, `framework-default` for frameworks) in `--tls-dir`, or
/// plaintext with `--insecure`.
///
/// # Errors
/// No TLS material and no `--insecure`, or material that does not load.
pub fn dialer(default_name: &str) -> anyhow::Result<allot_common::grpc::Dialer> {
    Ok(SECURITY
        .get()
        .cloned()
        .unwrap_or_default()
        .open(default_name)?)
}

/// A channel to the leader among the replicas at `addr` (comma-separated): a standby names the leader, an
/// unreachable replica is skipped. If none answers as the leader, the first call reports why.
pub async fn leader(addr: &str) -> anyhow::Result<allot_common::grpc::Channel> {
    let replicas = dialer("operator")?.replicas(addr)?;
    let _ = replicas.find_leader().await;
    Ok(replicas.channel())
}

/// `allot audit`: the newest `limit` operator actions of every service (newest first), allowed or refused.
///
/// # Errors
/// The registry cannot be reached, or refuses (only operators may read the trail).
pub async fn audit(addr: &str, limit: u32, as_json: bool) -> anyhow::Result<i32> {
    let records = registry(addr)
        .await?
        .list_audit(allot_proto::registry::ListAuditRequest { limit })
        .await
        .with_context(|| format!("registry at {addr}"))?
        .into_inner()
        .records;
    let when = |ms: i64| {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
        humantime::format_rfc3339_seconds(at).to_string()
    };
    if as_json {
        let v: Vec<_> = records
            .iter()
            .map(|r| {
                json!({"at": when(r.at_ms), "service": r.service, "principal": r.principal, "kind": r.kind,
                       "action": r.action, "object": r.object, "allowed": r.allowed, "message": r.message})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let mut t = table(&["TIME", "SERVICE", "PRINCIPAL", "ACTION", "OBJECT", "RESULT"]);
    for r in records {
        let result = match r.allowed {
            true => "allowed".to_string(),
            false => format!("refused: {}", r.message),
        };
        t.add_row(vec![
            when(r.at_ms),
            r.service,
            r.principal,
            r.action,
            r.object,
            result,
        ]);
    }
    println!("{t}");
    Ok(0)
}

pub async fn agents(addr: &str, as_json: bool) -> anyhow::Result<i32> {
    let list = registry(addr)
        .await?
        .list_agents(ListAgentsRequest {})
        .await
        .with_context(|| format!("registry at {addr}"))?
        .into_inner()
        .agents;
    if as_json {
        let v: Vec<_> = list
            .iter()
            .map(|a| {
                let r = a.record.clone().unwrap_or_default();
                let i = r.info.unwrap_or_default();
                json!({"agent_id": r.agent_id, "hostname": i.hostname, "address": i.address,
                       "resources": res(&i.resources), "attributes": i.attributes, "reachable": a.reachable})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let mut t = table(&["AGENT", "ADDRESS", "RESOURCES", "REACHABLE"]);
    for a in list {
        let r = a.record.unwrap_or_default();
        let i = r.info.unwrap_or_default();
        t.add_row(vec![
            r.agent_id,
            i.address,
            res(&i.resources),
            a.reachable.to_string(),
        ]);
    }
    println!("{t}");
    Ok(0)
}

pub async fn frameworks(addr: &str, as_json: bool) -> anyhow::Result<i32> {
    let list = operator(addr)
        .await?
        .list_frameworks(ListFrameworksRequest {})
        .await
        .with_context(|| format!("offer-broker at {addr}"))?
        .into_inner()
        .frameworks;
    if as_json {
        let v: Vec<_> = list
            .iter()
            .map(|f| {
                let r = f.record.clone().unwrap_or_default();
                let i = r.info.unwrap_or_default();
                json!({"framework_id": r.framework_id, "name": i.name, "roles": i.roles, "active": r.active,
                       "connected": f.connected, "suppressed": f.suppressed,
                       "used": res(&f.used), "offered": res(&f.offered)})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let mut t = table(&["FRAMEWORK", "NAME", "ROLE", "STATE", "USED", "OFFERED"]);
    for f in list {
        let r = f.record.unwrap_or_default();
        let i = r.info.unwrap_or_default();
        let state = match (r.active, f.connected) {
            (false, _) => "torn down",
            (true, true) => "connected",
            (true, false) => "disconnected",
        };
        t.add_row(vec![
            r.framework_id,
            i.name,
            i.roles.join(","),
            state.into(),
            res(&f.used),
            res(&f.offered),
        ]);
    }
    println!("{t}");
    Ok(0)
}

pub async fn tasks(addr: &str, framework: Option<&str>, as_json: bool) -> anyhow::Result<i32> {
    let list = operator(addr)
        .await?
        .list_tasks(ListTasksRequest {
            framework_id: framework.unwrap_or_default().to_string(),
        })
        .await
        .with_context(|| format!("offer-broker at {addr}"))?
        .into_inner()
        .tasks;
    if as_json {
        let v: Vec<_> = list
            .iter()
            .map(|t| {
                let i = t.task.clone().unwrap_or_default();
                let s = t.status.clone().unwrap_or_default();
                json!({"framework_id": t.framework_id, "task_id": i.task_id, "agent_id": i.agent_id,
                       "executor_id": i.executor.as_ref().map(|e| e.executor_id.clone()),
                       "state": s.state().as_str_name(), "message": s.message, "exit_code": s.exit_code,
                       "resources": res(&i.resources), "sandbox": t.sandbox})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let mut t = table(&[
        "FRAMEWORK",
        "TASK",
        "AGENT",
        "STATE",
        "RESOURCES",
        "MESSAGE",
    ]);
    for rec in list {
        let i = rec.task.unwrap_or_default();
        let s = rec.status.unwrap_or_default();
        t.add_row(vec![
            rec.framework_id,
            i.task_id,
            i.agent_id,
            s.state().as_str_name().to_string(),
            res(&i.resources),
            s.message,
        ]);
    }
    println!("{t}");
    Ok(0)
}

pub async fn offers(addr: &str, as_json: bool) -> anyhow::Result<i32> {
    let list = operator(addr)
        .await?
        .list_offers(ListOffersRequest {})
        .await
        .with_context(|| format!("offer-broker at {addr}"))?
        .into_inner()
        .offers;
    if as_json {
        let v: Vec<_> = list
            .iter()
            .map(|o| json!({"offer_id": o.offer_id, "framework_id": o.framework_id, "agent_id": o.agent_id,
                             "hostname": o.hostname, "resources": res(&o.resources)}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let mut t = table(&["OFFER", "FRAMEWORK", "AGENT", "RESOURCES"]);
    for o in list {
        t.add_row(vec![
            o.offer_id,
            o.framework_id,
            o.agent_id,
            res(&o.resources),
        ]);
    }
    println!("{t}");
    Ok(0)
}

pub async fn roles(
    addr: &str,
    broker: &str,
    set: Option<RolesCommand>,
    as_json: bool,
) -> anyhow::Result<i32> {
    let mut client = registry(addr).await?;
    if let Some(RolesCommand::Set {
        role,
        weight,
        quota,
        guarantee,
        no_preemption,
    }) = set
    {
        let quota_limit = match quota {
            Some(q) => limits_to_proto(
                &q.parse::<Limits>()
                    .with_context(|| format!("--quota '{q}'"))?,
            ),
            None => Vec::new(),
        };
        client
            .set_role(SetRoleRequest {
                role: Some(Role {
                    name: role.clone(),
                    weight,
                    quota_limit,
                    no_preemption,
                    quota_guarantee: match guarantee {
                        Some(g) => allot_common::convert::resources_to_proto(
                            &g.parse::<allot_resources::Resources>()
                                .with_context(|| format!("--guarantee '{g}'"))?,
                        ),
                        None => Vec::new(),
                    },
                }),
            })
            .await
            .with_context(|| format!("registry at {addr}"))?;
        println!("role {role} set: weight {weight}");
        return Ok(0);
    }
    let configured = client
        .list_roles(ListRolesRequest {})
        .await
        .with_context(|| format!("registry at {addr}"))?
        .into_inner()
        .roles;
    let shares = role_shares(addr, broker).await?;
    let mut names: Vec<String> = configured.iter().map(|r| r.name.clone()).collect();
    names.extend(shares.allocation.keys().cloned());
    // Every inner role of a tree shows, configured or not.
    let inner: Vec<String> = names
        .iter()
        .flat_map(|n| allot_policy::role_ancestors(n))
        .map(str::to_string)
        .collect();
    names.extend(inner);
    // Depth first: a role, then its subtree (by component, so that eng/web comes right after eng).
    names.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    names.dedup();
    let rows: Vec<RoleRow> = names
        .into_iter()
        .map(|name| {
            let cfg = configured.iter().find(|r| r.name == name);
            // What the subtree holds: a quota limit caps it, and a parent's share is its subtree's.
            let subtree =
                |by_role: &std::collections::BTreeMap<String, allot_resources::Resources>| {
                    let mut sum = allot_resources::Resources::new();
                    for (r, a) in by_role {
                        if *r == name || r.strip_prefix(&*name).is_some_and(|s| s.starts_with('/'))
                        {
                            sum.add(a);
                        }
                    }
                    sum
                };
            let (alloc, used) = (subtree(&shares.allocation), subtree(&shares.used));
            let share = allot_policy::dominant_share(&alloc, &shares.total);
            let used_share = allot_policy::dominant_share(&used, &shares.total);
            let parent = allot_policy::role_ancestors(&name)
                .next()
                .map(str::to_string);
            RoleRow {
                parent,
                preemptible: !cfg.is_some_and(|r| r.no_preemption),
                guarantee: cfg.map(|r| res(&r.quota_guarantee)).unwrap_or_default(),
                weight: cfg.map(|r| r.weight).unwrap_or(1.0),
                quota: cfg
                    .map(|r| {
                        limits_from_proto(&r.quota_limit)
                            .map(|l| l.to_string())
                            .unwrap_or_else(|e| format!("<{e}>"))
                    })
                    .unwrap_or_default(),
                allocated: alloc.to_string(),
                share,
                used_share,
                name,
            }
        })
        .collect();
    if as_json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"role": r.name, "parent": r.parent, "weight": r.weight, "quota_limit": r.quota,
                       "allocated": r.allocated, "dominant_share": r.share, "used_share": r.used_share,
                       "preemptible": r.preemptible, "quota_guarantee": r.guarantee})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let mut t = table(&[
        "ROLE",
        "WEIGHT",
        "QUOTA LIMIT",
        "GUARANTEE",
        "ALLOCATED",
        "DOMINANT SHARE",
    ]);
    for r in rows {
        let depth = r.name.matches('/').count();
        t.add_row(vec![
            format!(
                "{}{}{}",
                "  ".repeat(depth),
                r.name,
                if r.preemptible {
                    ""
                } else {
                    " (no preemption)"
                }
            ),
            r.weight.to_string(),
            r.quota,
            r.guarantee,
            r.allocated,
            format!("{:.1}%", r.share * 100.0),
        ]);
    }
    println!("{t}");
    Ok(0)
}

/// `allot reserve` and `allot unreserve`.
#[derive(Debug, clap::Args)]
pub struct ReserveArgs {
    /// The agent's ID (`allot agents` lists them).
    pub agent: String,
    /// Scalar resources in Mesos' text form, e.g. `cpus:2;mem:1024` (optional for `unreserve`: all).
    pub resources: Option<String>,
    /// The role they are (or were) reserved for.
    #[arg(long)]
    pub role: String,
}

/// Prints agents' dynamic reservations, one line per agent and role.
fn print_reservations(
    agents: &[allot_proto::allocator::AgentReservations],
    as_json: bool,
) -> anyhow::Result<()> {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for a in agents {
        let (_, by_role) = allot_common::convert::pieces_from_proto(&a.resources)
            .context("reservations record")?;
        for (role, r) in by_role {
            rows.push((a.agent_id.clone(), role, r.to_string()));
        }
    }
    if as_json {
        let v: Vec<_> = rows
            .iter()
            .map(|(a, r, res)| json!({"agent_id": a, "role": r, "resources": res}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut t = table(&["AGENT", "ROLE", "RESERVED"]);
    for (a, r, res) in rows {
        t.add_row(vec![a, r, res]);
    }
    println!("{t}");
    Ok(())
}

/// `allot reserve` (`reserve`) or `allot unreserve` against the allocator at `addr`: prints the agent's
/// dynamic reservations after the change.
pub async fn reserve(
    addr: &str,
    args: ReserveArgs,
    reserve: bool,
    as_json: bool,
) -> anyhow::Result<i32> {
    use allot_proto::allocator::{ReserveRequest, reservations_client::ReservationsClient};
    let resources = match &args.resources {
        Some(text) => allot_common::convert::resources_to_proto(
            &text
                .parse::<allot_resources::Resources>()
                .with_context(|| format!("resources '{text}'"))?,
        ),
        None if reserve => anyhow::bail!("allot reserve needs the resources to reserve"),
        None => Vec::new(),
    };
    let request = ReserveRequest {
        agent_id: args.agent.clone(),
        role: args.role.clone(),
        resources,
        principal: String::new(),
    };
    let mut client = ReservationsClient::new(leader(addr).await?);
    let answer = if reserve {
        client.reserve(request).await
    } else {
        client.unreserve(request).await
    }
    .with_context(|| format!("allocator at {addr}"))?
    .into_inner();
    print_reservations(answer.reservations.as_slice(), as_json)?;
    Ok(0)
}

/// `allot reservations`: every agent's dynamic reservations, from the allocator at `addr`.
pub async fn reservations(addr: &str, as_json: bool) -> anyhow::Result<i32> {
    use allot_proto::allocator::{
        ListReservationsRequest, reservations_client::ReservationsClient,
    };
    let agents = ReservationsClient::new(leader(addr).await?)
        .list(ListReservationsRequest {})
        .await
        .with_context(|| format!("allocator at {addr}"))?
        .into_inner()
        .agents;
    print_reservations(&agents, as_json)?;
    Ok(0)
}

/// One line of `allot roles`: a role of a tree (or a top-level role) and what its subtree holds.
struct RoleRow {
    name: String,
    /// The role's parent in its tree, `None` at the top.
    parent: Option<String>,
    weight: f64,
    /// The quota limit in text form, empty when none.
    quota: String,
    /// What the role and every role below it hold (used plus offered), in text form.
    allocated: String,
    /// The dominant share of `allocated`, in `[0, 1]`.
    share: f64,
    /// The dominant share of what the subtree's tasks use (offers left out), in `[0, 1]`.
    used_share: f64,
    /// False when `allot roles set --no-preemption` protects the role's tasks from preemption.
    preemptible: bool,
    /// The quota guarantee in text form, empty when none.
    guarantee: String,
}

/// What each role holds (used plus offered) and the cluster's total over reachable agents.
pub struct RoleShares {
    /// Sum of every reachable agent's resources.
    pub total: allot_resources::Resources,
    /// Role name -> its frameworks' used and offered resources.
    pub allocation: std::collections::BTreeMap<String, allot_resources::Resources>,
    /// Role name -> what its frameworks' tasks use (offers left out).
    pub used: std::collections::BTreeMap<String, allot_resources::Resources>,
}

/// Reads [`RoleShares`] from the registry at `registry_addr` and the broker at `broker_addr`.
pub async fn role_shares(registry_addr: &str, broker_addr: &str) -> anyhow::Result<RoleShares> {
    let agents = registry(registry_addr)
        .await?
        .list_agents(ListAgentsRequest {})
        .await
        .with_context(|| format!("registry at {registry_addr}"))?
        .into_inner()
        .agents;
    let mut total = allot_resources::Resources::new();
    for a in agents.iter().filter(|a| a.reachable) {
        let info = a
            .record
            .clone()
            .unwrap_or_default()
            .info
            .unwrap_or_default();
        total.add(&resources_from_proto(&info.resources).unwrap_or_default());
    }
    let frameworks = operator(broker_addr)
        .await?
        .list_frameworks(ListFrameworksRequest {})
        .await
        .with_context(|| format!("offer-broker at {broker_addr}"))?
        .into_inner()
        .frameworks;
    let mut allocation: std::collections::BTreeMap<String, allot_resources::Resources> =
        Default::default();
    let mut used = allocation.clone();
    for f in frameworks {
        let role = f
            .record
            .and_then(|r| r.info)
            .and_then(|i| i.roles.first().cloned())
            .unwrap_or_else(|| "*".into());
        let u = resources_from_proto(&f.used).unwrap_or_default();
        used.entry(role.clone()).or_default().add(&u);
        let entry = allocation.entry(role).or_default();
        entry.add(&u);
        entry.add(&resources_from_proto(&f.offered).unwrap_or_default());
    }
    Ok(RoleShares {
        total,
        allocation,
        used,
    })
}
