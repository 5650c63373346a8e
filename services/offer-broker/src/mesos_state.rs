//! The read-only operator endpoints Mesos tools use (`../shared/mesos-v1-api.md` section 4): in the flat JSON
//! of Mesos' master, `/master/state`, `/master/frameworks`, `/master/slaves`, `/master/tasks`,
//! `/master/state-summary`, `/metrics/snapshot`; in protobuf JSON, the operator API's read calls
//! ([`operator`]: GET_STATE, GET_TASKS, ...). Pure: each view is a function of a [`Snapshot`] of the broker's
//! state, unit tested.
//!
//! Resources in the flat views are flat objects (`allot_mesos::convert::flat_resources`). A task's `statuses`
//! holds its latest status only (the broker keeps no history).

use allot_common::convert::{pieces_from_proto, resources_from_proto};
use allot_proto::common::{AgentRecord, TaskRecord, TaskState};
use allot_proto::operator::FrameworkState;
use allot_proto::scheduler as pb;
use allot_resources::Resources;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

/// What the views are made of, taken from the broker at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every framework.
    pub frameworks: Vec<FrameworkState>,
    /// Every task.
    pub tasks: Vec<TaskRecord>,
    /// Outstanding offers.
    pub offers: Vec<pb::Offer>,
    /// Every agent, and whether it is alive (reachable).
    pub agents: Vec<(AgentRecord, bool)>,
}

/// Resources as Mesos' views print them (`allot_mesos::convert::flat_resources`).
fn flat(r: &Resources) -> Value {
    allot_mesos::convert::flat_resources(r)
}

fn parsed(list: &[allot_proto::common::Resource]) -> Resources {
    resources_from_proto(list).unwrap_or_default()
}

fn live(t: &TaskRecord) -> bool {
    t.status.as_ref().is_some_and(|s| !s.state().is_terminal())
}

/// A task as `/master/tasks` and the framework views show it.
pub fn task(t: &TaskRecord) -> Value {
    let info = t.task.clone().unwrap_or_default();
    let status = t.status.clone().unwrap_or_default();
    let role = info
        .resources
        .iter()
        .map(|r| r.role.as_str())
        .find(|r| !r.is_empty())
        .unwrap_or("*");
    json!({
        "id": info.task_id,
        "name": info.name,
        "framework_id": t.framework_id,
        "executor_id": info.executor.as_ref().map(|e| e.executor_id.clone()).unwrap_or_default(),
        "slave_id": info.agent_id,
        "state": status.state().as_str_name(),
        "resources": flat(&parsed(&info.resources)),
        "role": role,
        "statuses": [{"state": status.state().as_str_name(), "timestamp": status.timestamp}],
        "user": info.command.as_ref().map(|c| c.user.clone()).unwrap_or_default(),
    })
}

/// An offer as the framework views show it.
fn offer(o: &pb::Offer) -> Value {
    json!({
        "id": o.offer_id,
        "framework_id": o.framework_id,
        "slave_id": o.agent_id,
        "resources": flat(&parsed(&o.resources)),
    })
}

/// A framework with its tasks and offers.
fn framework(f: &FrameworkState, s: &Snapshot) -> Value {
    let record = f.record.clone().unwrap_or_default();
    let info = record.info.clone().unwrap_or_default();
    let id = record.framework_id.clone();
    let (mut tasks, mut completed) = (Vec::new(), Vec::new());
    for t in s.tasks.iter().filter(|t| t.framework_id == id) {
        match live(t) {
            true => tasks.push(task(t)),
            false => completed.push(task(t)),
        }
    }
    let offers: Vec<Value> = s
        .offers
        .iter()
        .filter(|o| o.framework_id == id)
        .map(offer)
        .collect();
    let used = parsed(&f.used);
    let offered = parsed(&f.offered);
    json!({
        "id": id,
        "name": info.name,
        "user": info.user,
        "hostname": info.hostname,
        "principal": info.principal,
        "webui_url": "",
        "active": record.active,
        "connected": f.connected,
        "recovered": false,
        "failover_timeout": info.failover_timeout,
        "checkpoint": info.checkpoint,
        "registered_time": record.registered_at_ms as f64 / 1000.0,
        "unregistered_time": 0,
        "role": info.roles.first().cloned().unwrap_or_else(|| "*".into()),
        "roles": info.roles,
        "capabilities": [],
        "resources": flat(&used.plus(&offered)),
        "used_resources": flat(&used),
        "offered_resources": flat(&offered),
        "tasks": tasks,
        "unreachable_tasks": [],
        "completed_tasks": completed,
        "offers": offers,
        "executors": [],
    })
}

/// An agent, with what its tasks use and what is offered of it.
fn agent(a: &AgentRecord, alive: bool, s: &Snapshot) -> Value {
    let info = a.info.clone().unwrap_or_default();
    let (unreserved, reserved) = pieces_from_proto(&info.resources).unwrap_or_default();
    let mut total = unreserved.clone();
    for r in reserved.values() {
        total.add(r);
    }
    let mut used = Resources::new();
    for t in s.tasks.iter().filter(|t| live(t)) {
        if let Some(i) = t.task.as_ref().filter(|i| i.agent_id == a.agent_id) {
            used.add(&parsed(&i.resources));
        }
    }
    let mut offered = Resources::new();
    for o in s.offers.iter().filter(|o| o.agent_id == a.agent_id) {
        offered.add(&parsed(&o.resources));
    }
    let port: u64 = agent_http(&info)
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0);
    let attributes: BTreeMap<&String, &String> = info.attributes.iter().collect();
    let reserved: BTreeMap<&String, Value> =
        reserved.iter().map(|(role, r)| (role, flat(r))).collect();
    json!({
        "id": a.agent_id,
        "hostname": info.hostname,
        "port": port,
        "pid": format!("slave(1)@{}", agent_http(&info)),
        "attributes": attributes,
        "registered_time": a.registered_at_ms as f64 / 1000.0,
        "resources": flat(&total),
        "used_resources": flat(&used),
        "offered_resources": flat(&offered),
        "reserved_resources": reserved,
        "unreserved_resources": flat(&unreserved),
        "active": alive,
        "deactivated": false,
        "version": allot_mesos::MESOS_VERSION,
        "capabilities": [],
    })
}

/// `/master/frameworks` (`?framework_id=`): active frameworks, and those torn down as completed.
pub fn frameworks(s: &Snapshot, only: Option<&str>) -> Value {
    let (mut active, mut completed) = (Vec::new(), Vec::new());
    for f in &s.frameworks {
        let record = f.record.clone().unwrap_or_default();
        if only.is_some_and(|id| id != record.framework_id) {
            continue;
        }
        match record.active {
            true => active.push(framework(f, s)),
            false => completed.push(framework(f, s)),
        }
    }
    json!({"frameworks": active, "completed_frameworks": completed, "unregistered_frameworks": []})
}

/// `/master/slaves` (`?slave_id=`).
pub fn slaves(s: &Snapshot, only: Option<&str>) -> Value {
    let agents: Vec<Value> = s
        .agents
        .iter()
        .filter(|(a, _)| only.is_none_or(|id| id == a.agent_id))
        .map(|(a, alive)| agent(a, *alive, s))
        .collect();
    json!({"slaves": agents, "recovered_slaves": []})
}

/// `/master/tasks`: `limit` (default 100), `offset`, `order` (`asc` or `des` by status time, default `des`),
/// `framework_id`, `task_id`.
pub fn tasks(s: &Snapshot, query: &HashMap<String, String>) -> Value {
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100);
    let offset: usize = query
        .get("offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let mut picked: Vec<&TaskRecord> = s
        .tasks
        .iter()
        .filter(|t| {
            query
                .get("framework_id")
                .is_none_or(|f| *f == t.framework_id)
        })
        .filter(|t| {
            query
                .get("task_id")
                .is_none_or(|id| t.task.as_ref().is_some_and(|i| i.task_id == *id))
        })
        .collect();
    let time = |t: &&TaskRecord| t.status.as_ref().map_or(0.0, |s| s.timestamp);
    picked.sort_by(|a, b| time(a).total_cmp(&time(b)));
    if query.get("order").map(String::as_str) != Some("asc") {
        picked.reverse();
    }
    let out: Vec<Value> = picked
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(task)
        .collect();
    json!({"tasks": out})
}

/// `/master/state`: the master, its agents and frameworks.
pub fn state(s: &Snapshot, master: &allot_mesos::scheduler::MasterInfo) -> Value {
    let pid = master.pid.clone().unwrap_or_default();
    let active = s.agents.iter().filter(|(_, alive)| *alive).count();
    let f = frameworks(s, None);
    json!({
        "version": allot_mesos::MESOS_VERSION,
        "allot_version": env!("CARGO_PKG_VERSION"),
        "build_date": "",
        "build_time": 0,
        "build_user": "allot",
        "id": master.id,
        "pid": pid,
        "hostname": master.hostname,
        "leader": pid,
        "leader_info": master,
        "activated_slaves": active,
        "deactivated_slaves": 0,
        "unreachable_slaves": s.agents.len() - active,
        "flags": {},
        "capabilities": [],
        "slaves": slaves(s, None)["slaves"],
        "recovered_slaves": [],
        "frameworks": f["frameworks"],
        "completed_frameworks": f["completed_frameworks"],
        "orphan_tasks": [],
        "unregistered_frameworks": [],
    })
}

/// The task-state counts of `tasks`, as `TASK_*` keys.
fn counts<'a>(tasks: impl Iterator<Item = &'a TaskRecord>) -> Map<String, Value> {
    let mut n: BTreeMap<&'static str, u64> = [
        TaskState::TaskStaging,
        TaskState::TaskStarting,
        TaskState::TaskRunning,
        TaskState::TaskKilling,
        TaskState::TaskFinished,
        TaskState::TaskKilled,
        TaskState::TaskFailed,
        TaskState::TaskLost,
        TaskState::TaskError,
        TaskState::TaskUnreachable,
    ]
    .into_iter()
    .map(|s| (s.as_str_name(), 0))
    .collect();
    for t in tasks {
        let s = t
            .status
            .as_ref()
            .map_or(TaskState::TaskStaging, |s| s.state());
        *n.entry(s.as_str_name()).or_default() += 1;
    }
    n.into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect()
}

/// `/master/state-summary`: agents and frameworks with their task counts and each other's IDs.
pub fn state_summary(s: &Snapshot, master: &allot_mesos::scheduler::MasterInfo) -> Value {
    let agents: Vec<Value> = s
        .agents
        .iter()
        .map(|(a, alive)| {
            let mut v = agent(a, *alive, s);
            let mine = s
                .tasks
                .iter()
                .filter(|t| t.task.as_ref().is_some_and(|i| i.agent_id == a.agent_id));
            let mut fws: Vec<&str> = mine.clone().map(|t| t.framework_id.as_str()).collect();
            fws.sort_unstable();
            fws.dedup();
            let obj = v.as_object_mut().expect("an object");
            obj.extend(counts(mine));
            obj.insert("framework_ids".into(), json!(fws));
            v
        })
        .collect();
    let fws: Vec<Value> = s
        .frameworks
        .iter()
        .map(|f| {
            let mut v = framework(f, s);
            let id = f
                .record
                .as_ref()
                .map(|r| r.framework_id.clone())
                .unwrap_or_default();
            let mine = s.tasks.iter().filter(|t| t.framework_id == id);
            let mut agents: Vec<String> = mine
                .clone()
                .filter_map(|t| t.task.as_ref().map(|i| i.agent_id.clone()))
                .collect();
            agents.sort_unstable();
            agents.dedup();
            let obj = v.as_object_mut().expect("an object");
            for k in [
                "tasks",
                "completed_tasks",
                "unreachable_tasks",
                "offers",
                "executors",
            ] {
                obj.remove(k);
            }
            obj.extend(counts(mine));
            obj.insert("slave_ids".into(), json!(agents));
            v
        })
        .collect();
    json!({"hostname": master.hostname, "slaves": agents, "frameworks": fws})
}

/// `/metrics/snapshot`: Mesos' master metrics, one flat object of numbers.
pub fn metrics(s: &Snapshot, elected: bool, uptime_secs: f64) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: f64| {
        m.insert(format!("master/{k}"), json!(v));
    };
    put("elected", if elected { 1.0 } else { 0.0 });
    put("uptime_secs", uptime_secs);
    let alive = s.agents.iter().filter(|(_, a)| *a).count() as f64;
    let agents = s.agents.len() as f64;
    put("slaves_active", alive);
    put("slaves_inactive", 0.0);
    put("slaves_connected", alive);
    put("slaves_disconnected", agents - alive);
    put("slaves_unreachable", agents - alive);
    let active = s
        .frameworks
        .iter()
        .filter(|f| f.record.as_ref().is_some_and(|r| r.active))
        .count() as f64;
    let connected = s.frameworks.iter().filter(|f| f.connected).count() as f64;
    put("frameworks_active", active);
    put("frameworks_inactive", s.frameworks.len() as f64 - active);
    put("frameworks_connected", connected);
    put("frameworks_disconnected", active - connected);
    for state in [
        TaskState::TaskStaging,
        TaskState::TaskStarting,
        TaskState::TaskRunning,
        TaskState::TaskKilling,
        TaskState::TaskFinished,
        TaskState::TaskFailed,
        TaskState::TaskKilled,
        TaskState::TaskLost,
        TaskState::TaskError,
        TaskState::TaskDropped,
        TaskState::TaskUnreachable,
        TaskState::TaskGone,
    ] {
        let n = s
            .tasks
            .iter()
            .filter(|t| t.status.as_ref().is_some_and(|st| st.state() == state))
            .count();
        let name = state
            .as_str_name()
            .to_ascii_lowercase()
            .replace("task_", "tasks_");
        put(&name, n as f64);
    }
    put("outstanding_offers", s.offers.len() as f64);
    let mut total = Resources::new();
    for (a, alive) in &s.agents {
        if *alive {
            total.add(&parsed(&a.info.clone().unwrap_or_default().resources));
        }
    }
    let mut used = Resources::new();
    for t in s.tasks.iter().filter(|t| live(t)) {
        used.add(&parsed(&t.task.clone().unwrap_or_default().resources));
    }
    for name in ["cpus", "mem", "disk", "gpus"] {
        let (t, u) = (total.scalar(name), used.scalar(name));
        put(&format!("{name}_total"), t);
        put(&format!("{name}_used"), u);
        put(
            &format!("{name}_percent"),
            if t > 0.0 { u / t } else { 0.0 },
        );
    }
    Value::Object(m)
}

/// A `TimeInfo` (`{"nanoseconds": n}`) of Unix milliseconds.
fn time_info(ms: i64) -> Value {
    json!({"nanoseconds": ms.saturating_mul(1_000_000)})
}

/// A task in the operator API's protobuf JSON (`mesos.v1.Task`).
fn task_v1(t: &TaskRecord) -> Value {
    let info = t.task.clone().unwrap_or_default();
    let status = t.status.clone().unwrap_or_default();
    let mut v = json!({
        "name": info.name,
        "task_id": {"value": info.task_id},
        "framework_id": {"value": t.framework_id},
        "agent_id": {"value": info.agent_id},
        "state": status.state().as_str_name(),
        "resources": allot_mesos::convert::resources_to_v1(&info.resources),
        "statuses": [allot_mesos::convert::status_to_v1(&status)],
    });
    if let Some(e) = &info.executor {
        v["executor_id"] = json!({"value": e.executor_id});
    }
    v
}

/// GET_TASKS' payload.
fn get_tasks(s: &Snapshot) -> Value {
    let (live_tasks, done): (Vec<&TaskRecord>, Vec<&TaskRecord>) =
        s.tasks.iter().partition(|t| live(t));
    json!({
        "tasks": live_tasks.into_iter().map(task_v1).collect::<Vec<_>>(),
        "completed_tasks": done.into_iter().map(task_v1).collect::<Vec<_>>(),
    })
}

/// GET_FRAMEWORKS' payload.
fn get_frameworks(s: &Snapshot) -> Value {
    let (mut active, mut completed) = (Vec::new(), Vec::new());
    for f in &s.frameworks {
        let record = f.record.clone().unwrap_or_default();
        let info = record.info.clone().unwrap_or_default();
        let v = json!({
            "framework_info": allot_mesos::convert::framework_to_v1(&record.framework_id, &info),
            "active": record.active,
            "connected": f.connected,
            "recovered": false,
            "registered_time": time_info(record.registered_at_ms),
        });
        match record.active {
            true => active.push(v),
            false => completed.push(v),
        }
    }
    json!({"frameworks": active, "completed_frameworks": completed})
}

/// GET_AGENTS' payload.
fn get_agents(s: &Snapshot) -> Value {
    let agents: Vec<Value> = s
        .agents
        .iter()
        .map(|(a, alive)| {
            let info = a.info.clone().unwrap_or_default();
            let port: i64 = agent_http(&info)
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(0);
            let mut allocated = Vec::new();
            for t in s.tasks.iter().filter(|t| live(t)) {
                if let Some(i) = t.task.as_ref().filter(|i| i.agent_id == a.agent_id) {
                    allocated.extend(allot_mesos::convert::resources_to_v1(&i.resources));
                }
            }
            let offered: Vec<_> = s
                .offers
                .iter()
                .filter(|o| o.agent_id == a.agent_id)
                .flat_map(|o| allot_mesos::convert::resources_to_v1(&o.resources))
                .collect();
            let mut attributes: Vec<(&String, &String)> = info.attributes.iter().collect();
            attributes.sort();
            json!({
                "agent_info": {
                    "hostname": info.hostname,
                    "port": port,
                    "id": {"value": a.agent_id},
                    "resources": allot_mesos::convert::resources_to_v1(&info.resources),
                    "attributes": attributes.into_iter().map(|(k, v)| json!({
                        "name": k, "type": "TEXT", "text": {"value": v}})).collect::<Vec<_>>(),
                },
                "active": alive,
                "version": allot_mesos::MESOS_VERSION,
                "pid": format!("slave(1)@{}", agent_http(&info)),
                "registered_time": time_info(a.registered_at_ms),
                "total_resources": allot_mesos::convert::resources_to_v1(&info.resources),
                "allocated_resources": allocated,
                "offered_resources": offered,
            })
        })
        .collect();
    json!({"agents": agents, "recovered_agents": []})
}

/// The answer of Mesos' operator API (`POST /api/v1`, `mesos.v1.master.Call`) to a call of type `kind`:
/// `{"type": kind, "<lowercased kind>": payload}` in protobuf JSON. GET_HEALTH, GET_VERSION, GET_METRICS,
/// GET_MASTER, GET_FRAMEWORKS, GET_AGENTS, GET_TASKS, GET_EXECUTORS and GET_STATE.
///
/// # Errors
/// A message naming a call type Allot does not answer (SUBSCRIBE and the calls that change the cluster).
pub fn operator(
    kind: &str,
    s: &Snapshot,
    master: &allot_mesos::scheduler::MasterInfo,
    elected: bool,
    uptime_secs: f64,
) -> Result<Value, String> {
    let payload = match kind {
        "GET_HEALTH" => json!({"healthy": true}),
        "GET_VERSION" => json!({"version_info": {"version": allot_mesos::MESOS_VERSION,
            "build_date": "", "build_time": 0.0, "build_user": "allot"}}),
        "GET_METRICS" => {
            let flat = metrics(s, elected, uptime_secs);
            let list: Vec<Value> = flat
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            json!({"metrics": list})
        }
        "GET_MASTER" => json!({"master_info": master}),
        "GET_FRAMEWORKS" => get_frameworks(s),
        "GET_AGENTS" => get_agents(s),
        "GET_TASKS" => get_tasks(s),
        "GET_EXECUTORS" => json!({"executors": [], "orphan_executors": []}),
        "GET_STATE" => json!({
            "get_tasks": get_tasks(s),
            "get_executors": {"executors": []},
            "get_frameworks": get_frameworks(s),
            "get_agents": get_agents(s),
        }),
        other => {
            return Err(format!(
                "operator call type '{other}' is not supported by Allot (GET_HEALTH, GET_VERSION, \
                 GET_METRICS, GET_MASTER, GET_FRAMEWORKS, GET_AGENTS, GET_TASKS, GET_EXECUTORS, GET_STATE are)"
            ));
        }
    };
    let mut out = Map::new();
    out.insert("type".into(), json!(kind));
    out.insert(kind.to_ascii_lowercase(), payload);
    Ok(Value::Object(out))
}

/// Where an agent serves HTTP (Mesos' agent port: its `/state`, `/files`, executor API), or its gRPC address
/// for an agent that serves none.
fn agent_http(info: &allot_proto::common::AgentInfo) -> &str {
    match info.http_address.is_empty() {
        true => &info.address,
        false => &info.http_address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allot_proto::common::{
        AgentInfo, CommandInfo, FrameworkInfo, FrameworkRecord, Resource, TaskInfo, TaskStatus,
    };

    fn res(text: &str) -> Vec<Resource> {
        allot_common::convert::resources_to_proto(&text.parse().unwrap())
    }

    fn snapshot() -> Snapshot {
        let task = |id: &str, state: TaskState, at: f64| TaskRecord {
            framework_id: "f1".into(),
            task: Some(TaskInfo {
                task_id: id.into(),
                name: id.into(),
                agent_id: "a1".into(),
                resources: res("cpus:0.5;mem:64"),
                command: Some(CommandInfo {
                    value: "true".into(),
                    user: "u".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(TaskStatus {
                task_id: id.into(),
                state: state as i32,
                timestamp: at,
                ..Default::default()
            }),
            ..Default::default()
        };
        Snapshot {
            frameworks: vec![FrameworkState {
                record: Some(FrameworkRecord {
                    framework_id: "f1".into(),
                    info: Some(FrameworkInfo {
                        name: "batch".into(),
                        user: "u".into(),
                        roles: vec!["web".into()],
                        ..Default::default()
                    }),
                    registered_at_ms: 1500,
                    active: true,
                }),
                connected: true,
                used: res("cpus:0.5;mem:64"),
                ..Default::default()
            }],
            tasks: vec![
                task("old", TaskState::TaskFinished, 1.0),
                task("new", TaskState::TaskRunning, 2.0),
            ],
            offers: vec![pb::Offer {
                offer_id: "o1".into(),
                framework_id: "f1".into(),
                agent_id: "a1".into(),
                resources: res("cpus:1"),
                ..Default::default()
            }],
            agents: vec![(
                AgentRecord {
                    agent_id: "a1".into(),
                    info: Some(AgentInfo {
                        hostname: "node1".into(),
                        address: "10.0.0.1:5053".into(),
                        resources: res("cpus:2;mem:1024;ports:[31000-31005]"),
                        attributes: [("rack".to_string(), "r1".to_string())].into(),
                        http_address: "10.0.0.1:5051".into(),
                    }),
                    ..Default::default()
                },
                true,
            )],
        }
    }

    #[test]
    fn the_views_have_mesos_shapes() {
        let s = snapshot();
        let slaves = slaves(&s, None);
        let a = &slaves["slaves"][0];
        // The agent's HTTP endpoint, where Mesos tools find its /state and /files.
        assert_eq!(a["pid"], "slave(1)@10.0.0.1:5051");
        assert_eq!(a["port"], 5051);
        assert_eq!(a["attributes"]["rack"], "r1");
        assert_eq!(a["resources"]["cpus"], 2.0);
        assert_eq!(a["resources"]["gpus"], 0.0);
        assert_eq!(a["resources"]["ports"], "[31000-31005]");
        assert_eq!(a["used_resources"]["cpus"], 0.5);
        assert_eq!(a["offered_resources"]["cpus"], 1.0);
        let f = &frameworks(&s, None)["frameworks"][0];
        assert_eq!(
            (f["id"].as_str(), f["role"].as_str()),
            (Some("f1"), Some("web"))
        );
        assert_eq!(f["tasks"].as_array().unwrap().len(), 1);
        assert_eq!(f["completed_tasks"][0]["state"], "TASK_FINISHED");
        assert_eq!(f["offers"][0]["id"], "o1");
        assert_eq!(frameworks(&s, Some("other"))["frameworks"], json!([]));
        let newest = tasks(&s, &HashMap::new());
        assert_eq!(newest["tasks"][0]["id"], "new");
        let q: HashMap<String, String> =
            [("order".into(), "asc".into()), ("limit".into(), "1".into())].into();
        assert_eq!(tasks(&s, &q)["tasks"].as_array().unwrap().len(), 1);
        assert_eq!(tasks(&s, &q)["tasks"][0]["id"], "old");
        let m = metrics(&s, true, 5.0);
        assert_eq!(m["master/elected"], 1.0);
        assert_eq!(m["master/tasks_running"], 1.0);
        assert_eq!(m["master/cpus_total"], 2.0);
        assert_eq!(m["master/cpus_percent"], 0.25);
        let summary = state_summary(&s, &Default::default());
        assert_eq!(summary["slaves"][0]["TASK_RUNNING"], 1);
        assert_eq!(summary["slaves"][0]["framework_ids"], json!(["f1"]));
        assert_eq!(summary["frameworks"][0]["slave_ids"], json!(["a1"]));
        assert!(summary["frameworks"][0].get("tasks").is_none());
    }

    #[test]
    fn the_operator_api_answers_in_protobuf_json() {
        let s = snapshot();
        let master = allot_mesos::scheduler::MasterInfo::default();
        let state = operator("GET_STATE", &s, &master, true, 1.0).unwrap();
        assert_eq!(state["type"], "GET_STATE");
        let st = &state["get_state"];
        assert_eq!(st["get_tasks"]["tasks"][0]["task_id"]["value"], "new");
        assert_eq!(
            st["get_tasks"]["completed_tasks"][0]["state"],
            "TASK_FINISHED"
        );
        assert_eq!(
            st["get_frameworks"]["frameworks"][0]["framework_info"]["id"]["value"],
            "f1"
        );
        assert_eq!(
            st["get_frameworks"]["frameworks"][0]["registered_time"]["nanoseconds"],
            1_500_000_000i64
        );
        assert_eq!(
            st["get_agents"]["agents"][0]["agent_info"]["id"]["value"],
            "a1"
        );
        assert_eq!(
            st["get_agents"]["agents"][0]["agent_info"]["attributes"][0]["text"]["value"],
            "r1"
        );
        assert_eq!(
            st["get_agents"]["agents"][0]["allocated_resources"][0]["name"],
            "cpus"
        );
        let health = operator("GET_HEALTH", &s, &master, true, 1.0).unwrap();
        assert_eq!(health["get_health"]["healthy"], true);
        let m = operator("GET_METRICS", &s, &master, true, 1.0).unwrap();
        assert!(
            m["get_metrics"]["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == "master/elected")
        );
        assert!(
            operator("SUBSCRIBE", &s, &master, true, 1.0)
                .unwrap_err()
                .contains("not supported")
        );
    }
}
