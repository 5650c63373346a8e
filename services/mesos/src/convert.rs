//! Between Mesos' JSON messages ([`crate::v1`]) and Allot's protocol (`allot.common.v1`). Allot's messages
//! carry what its model supports; a Mesos field it cannot honour is refused with a clear error on the way
//! in rather than dropped silently.

use crate::v1;
use allot_proto::common as pb;

/// Seconds in a Mesos `DurationInfo`.
fn seconds(d: &v1::DurationInfo) -> f64 {
    d.nanoseconds as f64 / 1e9
}

/// Allot's resources in Mesos' form: scalars as `SCALAR`, ranges as `RANGES`, the reservation as `role`
/// (`*`: unreserved).
pub fn resources_to_v1(resources: &[pb::Resource]) -> Vec<v1::Resource> {
    resources
        .iter()
        .map(|r| {
            let ranged = !r.ranges.is_empty();
            v1::Resource {
                name: r.name.clone(),
                kind: if ranged { "RANGES" } else { "SCALAR" }.into(),
                scalar: (!ranged).then_some(v1::Scalar { value: r.scalar }),
                ranges: ranged.then(|| v1::Ranges {
                    range: r
                        .ranges
                        .iter()
                        .map(|g| v1::Range {
                            begin: g.begin,
                            end: g.end,
                        })
                        .collect(),
                }),
                role: Some(if r.role.is_empty() {
                    "*".into()
                } else {
                    r.role.clone()
                }),
                ..Default::default()
            }
        })
        .collect()
}

/// Resources as Mesos' HTTP views (`/master/state`, the agent's `/state`) print them: one flat object,
/// scalars as numbers (`cpus`, `gpus`, `mem` and `disk` always present; mem and disk in MiB), ranges as text:
/// `{"cpus": 2, "gpus": 0, "mem": 1024, "disk": 0, "ports": "[31000-32000]"}`.
pub fn flat_resources(r: &allot_resources::Resources) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for name in ["cpus", "gpus", "mem", "disk"] {
        out.insert(name.into(), serde_json::json!(r.scalar(name)));
    }
    for (name, milli) in r.scalars() {
        out.insert(name.into(), serde_json::json!(milli as f64 / 1000.0));
    }
    for (name, ranges) in r.ranges() {
        let text: Vec<String> = ranges.iter().map(|(b, e)| format!("{b}-{e}")).collect();
        out.insert(
            name.into(),
            serde_json::json!(format!("[{}]", text.join(", "))),
        );
    }
    serde_json::Value::Object(out)
}

/// Mesos' resources in Allot's form. The reservation is the last of `reservations`, else `role`.
///
/// # Errors
/// A message naming the resource: a `SET` resource, a `SCALAR` without `scalar`, a `RANGES` without
/// `ranges`, or an unknown type.
pub fn resources_from_v1(resources: &[v1::Resource]) -> Result<Vec<pb::Resource>, String> {
    resources
        .iter()
        .map(|r| {
            let role = r
                .reservations
                .last()
                .and_then(|i| i.role.clone())
                .or_else(|| r.role.clone())
                .filter(|role| role != "*")
                .unwrap_or_default();
            let mut out = pb::Resource {
                name: r.name.clone(),
                role,
                ..Default::default()
            };
            match r.kind.as_str() {
                "SCALAR" | "" if r.scalar.is_some() => {
                    out.scalar = r.scalar.as_ref().map_or(0.0, |s| s.value)
                }
                "RANGES" | "" if r.ranges.is_some() => {
                    out.ranges = r
                        .ranges
                        .iter()
                        .flat_map(|g| &g.range)
                        .map(|g| pb::Range {
                            begin: g.begin,
                            end: g.end,
                        })
                        .collect()
                }
                "SET" => {
                    return Err(format!(
                        "resource '{}': SET resources are not supported",
                        r.name
                    ));
                }
                other => {
                    return Err(format!(
                        "resource '{}': type '{other}' without its value",
                        r.name
                    ));
                }
            }
            Ok(out)
        })
        .collect()
}

/// An Allot command in Mesos' form.
pub fn command_to_v1(c: &pb::CommandInfo) -> v1::CommandInfo {
    let mut variables: Vec<_> = c
        .environment
        .iter()
        .map(|(name, value)| v1::Variable {
            name: name.clone(),
            value: Some(value.clone()),
            kind: None,
        })
        .collect();
    variables.sort_by(|a, b| a.name.cmp(&b.name));
    v1::CommandInfo {
        value: Some(c.value.clone()),
        shell: Some(c.shell),
        arguments: c.arguments.clone(),
        environment: (!variables.is_empty()).then_some(v1::Environment { variables }),
        uris: Vec::new(),
        user: (!c.user.is_empty()).then(|| c.user.clone()),
    }
}

/// A Mesos command in Allot's form: `shell` absent is true, as in Mesos.
///
/// # Errors
/// A message: a `SECRET` environment variable, or `uris` (the fetcher is not supported yet).
pub fn command_from_v1(c: &v1::CommandInfo) -> Result<pb::CommandInfo, String> {
    if !c.uris.is_empty() {
        return Err("CommandInfo.uris are not supported by this Allot version (no fetcher)".into());
    }
    let mut environment = std::collections::HashMap::new();
    for v in c.environment.iter().flat_map(|e| &e.variables) {
        if v.kind.as_deref().is_some_and(|k| k != "VALUE") {
            return Err(format!(
                "environment variable '{}': only VALUE variables are supported",
                v.name
            ));
        }
        environment.insert(v.name.clone(), v.value.clone().unwrap_or_default());
    }
    Ok(pb::CommandInfo {
        value: c.value.clone().unwrap_or_default(),
        shell: c.shell.unwrap_or(true),
        arguments: c.arguments.clone(),
        environment,
        user: c.user.clone().unwrap_or_default(),
    })
}

/// An Allot ExecutorInfo in Mesos' form, as its framework `framework_id` launched it.
pub fn executor_to_v1(framework_id: &str, e: &pb::ExecutorInfo) -> v1::ExecutorInfo {
    v1::ExecutorInfo {
        kind: Some("CUSTOM".into()),
        executor_id: v1::Id::of(&e.executor_id),
        framework_id: Some(v1::Id::of(framework_id)),
        command: e.command.as_ref().map(command_to_v1),
        resources: resources_to_v1(&e.resources),
        name: (!e.name.is_empty()).then(|| e.name.clone()),
        data: (!e.data.is_empty()).then(|| v1::Bytes(e.data.clone())),
        shutdown_grace_period: (e.shutdown_grace_period > 0.0).then_some(v1::DurationInfo {
            nanoseconds: (e.shutdown_grace_period * 1e9) as i64,
        }),
    }
}

/// A Mesos ExecutorInfo in Allot's form.
///
/// # Errors
/// As [`command_from_v1`] and [`resources_from_v1`]; a `DEFAULT` executor (task groups are not supported).
pub fn executor_from_v1(e: &v1::ExecutorInfo) -> Result<pb::ExecutorInfo, String> {
    if e.kind.as_deref() == Some("DEFAULT") {
        return Err("the DEFAULT executor (LAUNCH_GROUP) is not supported".into());
    }
    Ok(pb::ExecutorInfo {
        executor_id: e.executor_id.value.clone(),
        name: e.name.clone().unwrap_or_default(),
        command: e.command.as_ref().map(command_from_v1).transpose()?,
        resources: resources_from_v1(&e.resources)?,
        data: e.data.clone().unwrap_or_default().0,
        shutdown_grace_period: e.shutdown_grace_period.as_ref().map_or(0.0, seconds),
    })
}

/// An Allot task in Mesos' form, as framework `framework_id` launched it.
pub fn task_to_v1(framework_id: &str, t: &pb::TaskInfo) -> v1::TaskInfo {
    v1::TaskInfo {
        name: t.name.clone(),
        task_id: v1::Id::of(&t.task_id),
        agent_id: v1::Id::of(&t.agent_id),
        resources: resources_to_v1(&t.resources),
        executor: t.executor.as_ref().map(|e| executor_to_v1(framework_id, e)),
        command: t.command.as_ref().map(command_to_v1),
        data: (!t.data.is_empty()).then(|| v1::Bytes(t.data.clone())),
        kill_policy: (t.kill_grace_period > 0.0).then_some(v1::KillPolicy {
            grace_period: Some(v1::DurationInfo {
                nanoseconds: (t.kill_grace_period * 1e9) as i64,
            }),
        }),
    }
}

/// A Mesos task in Allot's form.
///
/// # Errors
/// As [`command_from_v1`], [`executor_from_v1`] and [`resources_from_v1`], naming the task.
pub fn task_from_v1(t: &v1::TaskInfo) -> Result<pb::TaskInfo, String> {
    let named = |e: String| format!("task '{}': {e}", t.task_id.value);
    Ok(pb::TaskInfo {
        name: t.name.clone(),
        task_id: t.task_id.value.clone(),
        agent_id: t.agent_id.value.clone(),
        resources: resources_from_v1(&t.resources).map_err(named)?,
        command: t
            .command
            .as_ref()
            .map(command_from_v1)
            .transpose()
            .map_err(named)?,
        kill_grace_period: t
            .kill_policy
            .as_ref()
            .and_then(|k| k.grace_period.as_ref())
            .map_or(0.0, seconds),
        executor: t
            .executor
            .as_ref()
            .map(executor_from_v1)
            .transpose()
            .map_err(named)?,
        data: t.data.clone().unwrap_or_default().0,
    })
}

/// An Allot status in Mesos' form. `exit_code` has no Mesos field and is left out.
pub fn status_to_v1(s: &pb::TaskStatus) -> v1::TaskStatus {
    let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
    v1::TaskStatus {
        task_id: v1::Id::of(&s.task_id),
        state: s.state().as_str_name().into(),
        message: some(&s.message),
        source: match s.source() {
            pb::StatusSource::SourceUnspecified => None,
            other => Some(other.as_str_name().into()),
        },
        reason: reason_to_v1(&s.reason),
        data: (!s.data.is_empty()).then(|| v1::Bytes(s.data.clone())),
        agent_id: some(&s.agent_id).map(v1::Id::of),
        executor_id: some(&s.executor_id).map(v1::Id::of),
        timestamp: Some(s.timestamp),
        uuid: (!s.uuid.is_empty()).then(|| v1::Bytes(s.uuid.clone())),
        healthy: None,
    }
}

/// An Allot reason as one of Mesos' `TaskStatus.Reason` names: Mesos' own pass; Allot's own become the
/// nearest Mesos one (`REASON_PREEMPTED` -> `REASON_CONTAINER_PREEMPTED`, `REASON_AGENT_UNREACHABLE` ->
/// `REASON_AGENT_DISCONNECTED`) or none (`REASON_TASK_KILLED`, `REASON_STORE_UNAVAILABLE`: the state and
/// message say it), since a Mesos client may refuse an enum name it does not know.
pub fn reason_to_v1(reason: &str) -> Option<String> {
    let mapped = match reason {
        "" => return None,
        "REASON_PREEMPTED" => "REASON_CONTAINER_PREEMPTED",
        "REASON_AGENT_UNREACHABLE" => "REASON_AGENT_DISCONNECTED",
        other => other,
    };
    crate::protobuf::is_enum_value("mesos.v1.TaskStatus.Reason", mapped).then(|| mapped.to_string())
}

/// A Mesos status in Allot's form (unknown state or source names become unspecified).
pub fn status_from_v1(s: &v1::TaskStatus) -> pb::TaskStatus {
    pb::TaskStatus {
        task_id: s.task_id.value.clone(),
        state: pb::TaskState::from_str_name(&s.state).unwrap_or_default() as i32,
        message: s.message.clone().unwrap_or_default(),
        source: s
            .source
            .as_deref()
            .and_then(pb::StatusSource::from_str_name)
            .unwrap_or_default() as i32,
        reason: s.reason.clone().unwrap_or_default(),
        agent_id: s
            .agent_id
            .as_ref()
            .map(|i| i.value.clone())
            .unwrap_or_default(),
        framework_id: String::new(),
        timestamp: s.timestamp.unwrap_or_default(),
        uuid: s.uuid.clone().unwrap_or_default().0,
        exit_code: None,
        executor_id: s
            .executor_id
            .as_ref()
            .map(|i| i.value.clone())
            .unwrap_or_default(),
        data: s.data.clone().unwrap_or_default().0,
    }
}

/// An Allot FrameworkInfo in Mesos' form, with its ID.
pub fn framework_to_v1(framework_id: &str, f: &pb::FrameworkInfo) -> v1::FrameworkInfo {
    let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
    v1::FrameworkInfo {
        user: f.user.clone(),
        name: f.name.clone(),
        id: Some(v1::Id::of(framework_id)),
        failover_timeout: Some(f.failover_timeout),
        checkpoint: Some(f.checkpoint),
        role: None,
        roles: f.roles.clone(),
        hostname: some(&f.hostname),
        principal: some(&f.principal),
        capabilities: vec![v1::Capability {
            kind: "MULTI_ROLE".into(),
        }],
    }
}

/// A Mesos FrameworkInfo in Allot's form: `roles` (MULTI_ROLE), else `role`, else `*`; `id` becomes
/// `framework_id`.
pub fn framework_from_v1(f: &v1::FrameworkInfo) -> pb::FrameworkInfo {
    let roles = match (&f.roles, &f.role) {
        (roles, _) if !roles.is_empty() => roles.clone(),
        (_, Some(role)) if !role.is_empty() => vec![role.clone()],
        _ => vec!["*".into()],
    };
    pb::FrameworkInfo {
        name: f.name.clone(),
        user: f.user.clone(),
        roles,
        principal: f.principal.clone().unwrap_or_default(),
        failover_timeout: f.failover_timeout.unwrap_or(0.0),
        checkpoint: f.checkpoint.unwrap_or(false),
        framework_id: f.id.as_ref().map(|i| i.value.clone()).unwrap_or_default(),
        hostname: f.hostname.clone().unwrap_or_default(),
        priority: 0,
    }
}

/// Whether a framework with `capabilities` knows the partition-aware task states (Mesos' PARTITION_AWARE).
pub fn partition_aware(capabilities: &[v1::Capability]) -> bool {
    capabilities.iter().any(|c| c.kind == "PARTITION_AWARE")
}

/// The state a framework sees: one that is not PARTITION_AWARE gets TASK_LOST instead of TASK_DROPPED,
/// TASK_UNREACHABLE, TASK_GONE, TASK_GONE_BY_OPERATOR and TASK_UNKNOWN, as from Mesos' master.
pub fn state_for(state: pb::TaskState, partition_aware: bool) -> pb::TaskState {
    use pb::TaskState::*;
    match state {
        TaskDropped | TaskUnreachable | TaskGone | TaskGoneByOperator | TaskUnknown
            if !partition_aware =>
        {
            TaskLost
        }
        s => s,
    }
}

/// An Allot offer in Mesos' form, allocated to `role`; attributes become TEXT attributes.
pub fn offer_to_v1(o: &allot_proto::scheduler::Offer, role: &str) -> crate::scheduler::Offer {
    let mut resources = resources_to_v1(&o.resources);
    for r in &mut resources {
        r.allocation_info = Some(v1::AllocationInfo {
            role: Some(role.to_string()),
        });
    }
    let mut attributes: Vec<v1::Attribute> = o
        .attributes
        .iter()
        .map(|(name, value)| v1::Attribute {
            name: name.clone(),
            kind: "TEXT".into(),
            text: Some(v1::Text {
                value: value.clone(),
            }),
        })
        .collect();
    attributes.sort_by(|a, b| a.name.cmp(&b.name));
    crate::scheduler::Offer {
        id: v1::Id::of(&o.offer_id),
        framework_id: v1::Id::of(&o.framework_id),
        agent_id: v1::Id::of(&o.agent_id),
        hostname: o.hostname.clone(),
        resources,
        attributes,
        executor_ids: Vec::new(),
        allocation_info: Some(v1::AllocationInfo {
            role: Some(role.to_string()),
        }),
        url: agent_url(&o.agent_http_address, &o.hostname),
    }
}

/// An agent's HTTP endpoint `host:port` (none if empty or without a port) as Mesos' `URL`, with `hostname`.
pub fn agent_url(http_address: &str, hostname: &str) -> Option<crate::scheduler::Url> {
    let (host, port) = http_address.rsplit_once(':')?;
    Some(crate::scheduler::Url {
        scheme: "http".into(),
        address: crate::scheduler::Address {
            hostname: Some(hostname.to_string()),
            ip: Some(host.trim_matches(['[', ']']).to_string()),
            port: port.parse().ok()?,
        },
        path: Some("/slave(1)".into()),
    })
}

/// An Allot scheduler event in Mesos' form, for a framework in `role` that is (or is not) `partition_aware`;
/// `master` goes into SUBSCRIBED. `None` for an empty event.
pub fn event_to_v1(
    ev: &allot_proto::scheduler::Event,
    role: &str,
    partition_aware: bool,
    master: &crate::scheduler::MasterInfo,
) -> Option<crate::scheduler::Event> {
    use crate::scheduler as s;
    use allot_proto::scheduler::event::Event as E;
    let mut out = s::Event::default();
    match ev.event.as_ref()? {
        E::Subscribed(x) => {
            out.kind = "SUBSCRIBED".into();
            out.subscribed = Some(s::Subscribed {
                framework_id: v1::Id::of(&x.framework_id),
                heartbeat_interval_seconds: x.heartbeat_interval_seconds,
                master_info: Some(master.clone()),
            });
        }
        E::Offers(x) => {
            out.kind = "OFFERS".into();
            out.offers = Some(s::Offers {
                offers: x.offers.iter().map(|o| offer_to_v1(o, role)).collect(),
            });
        }
        E::Rescind(x) => {
            out.kind = "RESCIND".into();
            out.rescind = Some(s::Rescind {
                offer_id: v1::Id::of(&x.offer_id),
            });
        }
        E::Update(x) => {
            let status = x.status.as_ref()?;
            let mut status = status.clone();
            status.state = state_for(status.state(), partition_aware) as i32;
            out.kind = "UPDATE".into();
            out.update = Some(s::Update {
                status: status_to_v1(&status),
            });
        }
        E::Message(x) => {
            out.kind = "MESSAGE".into();
            out.message = Some(s::EventMessage {
                agent_id: v1::Id::of(&x.agent_id),
                executor_id: v1::Id::of(&x.executor_id),
                data: v1::Bytes(x.data.clone()),
            });
        }
        E::Failure(x) => {
            out.kind = "FAILURE".into();
            let some = |v: &str| (!v.is_empty()).then(|| v1::Id::of(v));
            out.failure = Some(s::Failure {
                agent_id: some(&x.agent_id),
                executor_id: some(&x.executor_id),
                status: x.status,
            });
        }
        E::Error(x) => out = s::Event::error(x.message.clone()),
        E::Heartbeat(_) => out.kind = "HEARTBEAT".into(),
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_goes_to_mesos_and_back_unchanged() {
        let task = pb::TaskInfo {
            name: "n".into(),
            task_id: "t1".into(),
            agent_id: "a1".into(),
            resources: vec![
                pb::Resource {
                    name: "cpus".into(),
                    scalar: 0.5,
                    ..Default::default()
                },
                pb::Resource {
                    name: "ports".into(),
                    ranges: vec![pb::Range {
                        begin: 31000,
                        end: 31001,
                    }],
                    role: "web".into(),
                    ..Default::default()
                },
            ],
            command: None,
            kill_grace_period: 2.5,
            executor: Some(pb::ExecutorInfo {
                executor_id: "e1".into(),
                command: Some(pb::CommandInfo {
                    value: "./worker".into(),
                    shell: true,
                    environment: [("K".to_string(), "v".to_string())].into(),
                    ..Default::default()
                }),
                data: b"cfg".to_vec(),
                shutdown_grace_period: 4.0,
                ..Default::default()
            }),
            data: b"payload".to_vec(),
        };
        let json = serde_json::to_value(task_to_v1("f1", &task)).unwrap();
        assert_eq!(json["executor"]["executor_id"]["value"], "e1");
        assert_eq!(json["executor"]["framework_id"]["value"], "f1");
        assert_eq!(json["resources"][1]["ranges"]["range"][0]["end"], 31001);
        assert_eq!(json["data"], "cGF5bG9hZA==");
        let back: v1::TaskInfo = serde_json::from_value(json).unwrap();
        assert_eq!(task_from_v1(&back).unwrap(), task);
    }

    #[test]
    fn a_mesos_command_is_a_shell_command_unless_it_says_otherwise() {
        let c: v1::CommandInfo = serde_json::from_str(r#"{"value":"echo hi"}"#).unwrap();
        assert!(command_from_v1(&c).unwrap().shell);
        let c: v1::CommandInfo =
            serde_json::from_str(r#"{"value":"x","uris":[{"value":"http://h/f"}]}"#).unwrap();
        assert!(command_from_v1(&c).unwrap_err().contains("uris"));
    }

    #[test]
    fn a_status_keeps_its_uuid_data_and_names() {
        let s = pb::TaskStatus {
            task_id: "t".into(),
            state: pb::TaskState::TaskFailed as i32,
            source: pb::StatusSource::SourceAgent as i32,
            reason: "REASON_EXECUTOR_TERMINATED".into(),
            uuid: vec![1; 16],
            data: b"d".to_vec(),
            executor_id: "e".into(),
            agent_id: "a".into(),
            timestamp: 12.5,
            ..Default::default()
        };
        let v = status_to_v1(&s);
        assert_eq!(v.state, "TASK_FAILED");
        assert_eq!(v.source.as_deref(), Some("SOURCE_AGENT"));
        assert_eq!(status_from_v1(&v), s);
    }

    #[test]
    fn reasons_are_mesos_names() {
        assert_eq!(
            reason_to_v1("REASON_RECONCILIATION").as_deref(),
            Some("REASON_RECONCILIATION")
        );
        assert_eq!(
            reason_to_v1("REASON_PREEMPTED").as_deref(),
            Some("REASON_CONTAINER_PREEMPTED")
        );
        assert_eq!(reason_to_v1("REASON_TASK_KILLED"), None);
        assert_eq!(reason_to_v1(""), None);
    }

    #[test]
    fn a_framework_that_is_not_partition_aware_sees_task_lost() {
        use allot_proto::scheduler as sp;
        let master = crate::scheduler::MasterInfo::default();
        let update = |state: pb::TaskState| sp::Event {
            event: Some(sp::event::Event::Update(sp::Update {
                status: Some(pb::TaskStatus {
                    task_id: "t".into(),
                    state: state as i32,
                    ..Default::default()
                }),
            })),
            ..Default::default()
        };
        for (state, aware, want) in [
            (pb::TaskState::TaskUnreachable, false, "TASK_LOST"),
            (pb::TaskState::TaskUnknown, false, "TASK_LOST"),
            (pb::TaskState::TaskDropped, false, "TASK_LOST"),
            (pb::TaskState::TaskUnreachable, true, "TASK_UNREACHABLE"),
            (pb::TaskState::TaskFinished, false, "TASK_FINISHED"),
        ] {
            let ev = event_to_v1(&update(state), "*", aware, &master).unwrap();
            assert_eq!(ev.update.unwrap().status.state, want);
        }
        let offer = sp::Event {
            event: Some(sp::event::Event::Offers(sp::Offers {
                offers: vec![sp::Offer {
                    offer_id: "o".into(),
                    attributes: [("rack".to_string(), "r1".to_string())].into(),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        let json =
            serde_json::to_value(event_to_v1(&offer, "web", false, &master).unwrap()).unwrap();
        assert_eq!(json["type"], "OFFERS");
        assert_eq!(json["offers"]["offers"][0]["id"]["value"], "o");
        assert_eq!(
            json["offers"]["offers"][0]["attributes"][0]["text"]["value"],
            "r1"
        );
        assert_eq!(
            json["offers"]["offers"][0]["allocation_info"]["role"],
            "web"
        );
    }
}
