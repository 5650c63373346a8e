//! The scheduler API (`mesos.v1.scheduler`): the calls a framework POSTs to `/api/v1/scheduler` and the
//! events on the stream its SUBSCRIBE opens (Mesos `docs/scheduler-http-api.md`, `../shared/mesos-v1-api.md`
//! section 2).

use crate::v1::{Attribute, Bytes, FrameworkInfo, Id, Resource, TaskInfo};
use serde::{Deserialize, Serialize};

/// `Filters`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Filters {
    /// Seconds the refused resources stay away from the framework (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refuse_seconds: Option<f64>,
}

/// `Offer.Operation.Launch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Launch {
    /// The tasks.
    pub task_infos: Vec<TaskInfo>,
}

/// `Offer.Operation.Reserve` and `.Unreserve`: resources with their reservation (`reservations`, the last
/// one's role; or the pre-1.9 `role`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reservation {
    /// The resources.
    pub resources: Vec<crate::v1::Resource>,
}

/// `Offer.Operation`: Allot carries `LAUNCH`, `RESERVE` and `UNRESERVE`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Operation {
    /// `LAUNCH`, `LAUNCH_GROUP`, `RESERVE`, ...
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// For LAUNCH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch: Option<Launch>,
    /// For RESERVE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserve: Option<Reservation>,
    /// For UNRESERVE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreserve: Option<Reservation>,
}

/// `Call.Subscribe`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Subscribe {
    /// The framework.
    pub framework_info: Option<FrameworkInfo>,
    /// Roles to subscribe suppressed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suppressed_roles: Vec<String>,
}

/// `Call.Accept`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Accept {
    /// The offers used.
    pub offer_ids: Vec<Id>,
    /// What to do with them.
    pub operations: Vec<Operation>,
    /// For the unused rest.
    pub filters: Option<Filters>,
}

/// `Call.Decline`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Decline {
    /// The offers.
    pub offer_ids: Vec<Id>,
    /// How long to keep them away.
    pub filters: Option<Filters>,
}

/// `Call.Kill`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Kill {
    /// The task.
    pub task_id: Id,
    /// Its agent, if known.
    pub agent_id: Option<Id>,
}

/// `Call.Shutdown`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Shutdown {
    /// The executor.
    pub executor_id: Id,
    /// Its agent.
    pub agent_id: Id,
}

/// `Call.Acknowledge`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Acknowledge {
    /// The update's agent.
    pub agent_id: Id,
    /// Its task.
    pub task_id: Id,
    /// Its uuid (16 bytes).
    pub uuid: Bytes,
}

/// `Call.Reconcile.Task`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconcileTask {
    /// The task.
    pub task_id: Id,
    /// Its agent, if known.
    pub agent_id: Option<Id>,
}

/// `Call.Reconcile`: no tasks is implicit reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reconcile {
    /// The tasks.
    pub tasks: Vec<ReconcileTask>,
}

/// `Call.Message`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Message {
    /// The executor's agent.
    pub agent_id: Id,
    /// The executor.
    pub executor_id: Id,
    /// The bytes.
    pub data: Bytes,
}

/// `scheduler.Call`: `type` with the sub-message named after it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Call {
    /// The calling framework (absent only on a first SUBSCRIBE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub framework_id: Option<Id>,
    /// The call.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// For SUBSCRIBE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Subscribe>,
    /// For ACCEPT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept: Option<Accept>,
    /// For DECLINE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline: Option<Decline>,
    /// For KILL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill: Option<Kill>,
    /// For SHUTDOWN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<Shutdown>,
    /// For ACKNOWLEDGE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledge: Option<Acknowledge>,
    /// For RECONCILE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<Reconcile>,
    /// For MESSAGE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
}

/// A call that passed [`Call::validate`], with what it carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Valid {
    /// SUBSCRIBE.
    Subscribe(FrameworkInfo),
    /// TEARDOWN.
    Teardown,
    /// ACCEPT: offer IDs, the operations, refuse_seconds.
    Accept(Vec<String>, Vec<Operation>, Option<f64>),
    /// DECLINE (also an ACCEPT without operations, as pymesos sends for a decline).
    Decline(Vec<String>, Option<f64>),
    /// REVIVE.
    Revive,
    /// SUPPRESS.
    Suppress,
    /// KILL: task, agent (may be empty).
    Kill(String, String),
    /// SHUTDOWN: agent, executor.
    Shutdown(String, String),
    /// ACKNOWLEDGE: agent, task, uuid.
    Acknowledge(String, String, Vec<u8>),
    /// RECONCILE: (task, agent) pairs; none: implicit.
    Reconcile(Vec<(String, String)>),
    /// MESSAGE: agent, executor, data.
    Message(String, String, Vec<u8>),
    /// A call Mesos accepts and Allot ignores (REQUEST, inverse offers).
    Ignored(String),
}

impl Call {
    /// The framework ID the call names, if any.
    pub fn framework(&self) -> Option<&str> {
        self.framework_id
            .as_ref()
            .map(|i| i.value.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Checks the call as Mesos' master does (`validation::scheduler::call::validate`).
    ///
    /// # Errors
    /// The reason, for a `400 Failed to validate scheduler::Call: <reason>`: no type; the sub-message named
    /// after the type missing; no `framework_id` on a call other than SUBSCRIBE; a SUBSCRIBE whose
    /// `framework_info.id` differs from `framework_id`; an ACKNOWLEDGE whose uuid is not 16 bytes; a type
    /// Allot does not support (its name said).
    pub fn validate(self) -> Result<Valid, String> {
        let kind = self.kind.clone().ok_or("Expecting 'type' to be present")?;
        let framework = self.framework().map(str::to_string);
        if kind != "SUBSCRIBE" && framework.is_none() {
            return Err("Expecting 'framework_id' to be present".into());
        }
        let need = |name: &str| format!("Expecting '{name}' to be present");
        let ids = |v: Vec<Id>| v.into_iter().map(|i| i.value).collect::<Vec<_>>();
        Ok(match kind.as_str() {
            "SUBSCRIBE" => {
                let info = self
                    .subscribe
                    .and_then(|s| s.framework_info)
                    .ok_or_else(|| need("subscribe"))?;
                let inner = info
                    .id
                    .as_ref()
                    .map(|i| i.value.as_str())
                    .filter(|v| !v.is_empty());
                if inner != framework.as_deref() {
                    return Err("'framework_id' differs from 'subscribe.framework_info.id'".into());
                }
                Valid::Subscribe(info)
            }
            "TEARDOWN" => Valid::Teardown,
            "ACCEPT" => {
                let a = self.accept.ok_or_else(|| need("accept"))?;
                let refuse = a.filters.and_then(|f| f.refuse_seconds);
                if a.operations.is_empty() {
                    Valid::Decline(ids(a.offer_ids), refuse)
                } else {
                    Valid::Accept(ids(a.offer_ids), a.operations, refuse)
                }
            }
            "DECLINE" => {
                let d = self.decline.ok_or_else(|| need("decline"))?;
                Valid::Decline(ids(d.offer_ids), d.filters.and_then(|f| f.refuse_seconds))
            }
            "REVIVE" => Valid::Revive,
            "SUPPRESS" => Valid::Suppress,
            "KILL" => {
                let k = self.kill.ok_or_else(|| need("kill"))?;
                Valid::Kill(
                    k.task_id.value,
                    k.agent_id.map(|i| i.value).unwrap_or_default(),
                )
            }
            "SHUTDOWN" => {
                let s = self.shutdown.ok_or_else(|| need("shutdown"))?;
                Valid::Shutdown(s.agent_id.value, s.executor_id.value)
            }
            "ACKNOWLEDGE" => {
                let a = self.acknowledge.ok_or_else(|| need("acknowledge"))?;
                if a.uuid.0.len() != 16 {
                    return Err("Not a valid UUID".into());
                }
                Valid::Acknowledge(a.agent_id.value, a.task_id.value, a.uuid.0)
            }
            "RECONCILE" => {
                let r = self.reconcile.ok_or_else(|| need("reconcile"))?;
                Valid::Reconcile(
                    r.tasks
                        .into_iter()
                        .map(|t| {
                            (
                                t.task_id.value,
                                t.agent_id.map(|i| i.value).unwrap_or_default(),
                            )
                        })
                        .collect(),
                )
            }
            "MESSAGE" => {
                let m = self.message.ok_or_else(|| need("message"))?;
                Valid::Message(m.agent_id.value, m.executor_id.value, m.data.0)
            }
            "REQUEST" | "ACCEPT_INVERSE_OFFERS" | "DECLINE_INVERSE_OFFERS" => Valid::Ignored(kind),
            other => {
                return Err(format!(
                    "call type '{other}' is not supported by Allot (see the README, \"Coming from Mesos\")"
                ));
            }
        })
    }
}

/// `Offer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Offer {
    /// Its ID.
    pub id: Id,
    /// The framework it is for.
    pub framework_id: Id,
    /// The agent.
    pub agent_id: Id,
    /// The agent's host.
    pub hostname: String,
    /// What is offered.
    pub resources: Vec<Resource>,
    /// The agent's attributes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
    /// Executors of the framework running on the agent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub executor_ids: Vec<Id>,
    /// The role it is allocated to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation_info: Option<crate::v1::AllocationInfo>,
    /// The agent's HTTP endpoint (its `/state`, its sandboxes under `/files`), as Mesos' master sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Url>,
}

/// `URL`: where an agent serves HTTP (`http`, its address, path `/slave(1)`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Url {
    /// `http`.
    pub scheme: String,
    /// Host and port.
    pub address: Address,
    /// The agent's process path, `/slave(1)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `MasterInfo`'s address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Address {
    /// Host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// IP address, dotted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Port.
    pub port: i32,
}

/// `MasterInfo`: who answers (pymesos reads `version`; zk clients read `address`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MasterInfo {
    /// An ID of this master.
    pub id: String,
    /// IPv4 as an integer in network order.
    pub ip: u32,
    /// Port.
    pub port: u32,
    /// `master@ip:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    /// Host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The Mesos version spoken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
}

/// `scheduler.Event`: `type` names the payload field that is set (its lowercased name).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// `SUBSCRIBED`, `OFFERS`, `RESCIND`, `UPDATE`, `MESSAGE`, `FAILURE`, `ERROR`, `HEARTBEAT`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For SUBSCRIBED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<Subscribed>,
    /// For OFFERS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offers: Option<Offers>,
    /// For RESCIND.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescind: Option<Rescind>,
    /// For UPDATE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<Update>,
    /// For MESSAGE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<EventMessage>,
    /// For FAILURE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// For ERROR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::executor::Error>,
}

/// `Event.Subscribed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Subscribed {
    /// The framework's ID.
    pub framework_id: Id,
    /// Seconds between HEARTBEAT events.
    pub heartbeat_interval_seconds: f64,
    /// Who answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_info: Option<MasterInfo>,
}

/// `Event.Offers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Offers {
    /// The offers.
    pub offers: Vec<Offer>,
}

/// `Event.Rescind`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rescind {
    /// The offer no longer valid.
    pub offer_id: Id,
}

/// `Event.Update`: the same shape as the executor's `Call.Update`.
pub use crate::executor::Update;

/// `Event.Message`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventMessage {
    /// The executor's agent.
    pub agent_id: Id,
    /// The executor.
    pub executor_id: Id,
    /// The bytes.
    pub data: Bytes,
}

/// `Event.Failure`: an agent lost, or (with `executor_id`) an executor exited with wait `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Failure {
    /// The agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Id>,
    /// The executor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<Id>,
    /// Its wait status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
}

impl Event {
    /// The event as one RecordIO record in `encoding` (JSON: compact, no newline inside).
    ///
    /// # Errors
    /// As [`crate::http::Encoding::record`].
    pub fn record(&self, encoding: crate::http::Encoding) -> Result<Vec<u8>, String> {
        encoding.record(self)
    }

    /// An event of type `kind` with no payload (HEARTBEAT).
    pub fn bare(kind: &str) -> Event {
        Event {
            kind: kind.into(),
            ..Default::default()
        }
    }

    /// ERROR with `message`.
    pub fn error(message: impl Into<String>) -> Event {
        Event {
            kind: "ERROR".into(),
            error: Some(crate::executor::Error {
                message: message.into(),
            }),
            ..Default::default()
        }
    }
}

impl crate::protobuf::Protobuf for Call {
    const NAME: &'static str = "mesos.v1.scheduler.Call";
}

impl crate::protobuf::Protobuf for Event {
    const NAME: &'static str = "mesos.v1.scheduler.Event";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(json: &str) -> Call {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn calls_are_checked_as_mesos_checks_them() {
        let ok = call(
            r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"u","name":"n","capabilities":[{"type":"PARTITION_AWARE"}]}}}"#,
        );
        let Valid::Subscribe(info) = ok.validate().unwrap() else {
            panic!()
        };
        assert_eq!(info.capabilities[0].kind, "PARTITION_AWARE");
        for (json, want) in [
            (r#"{"subscribe":{}}"#, "'type'"),
            (r#"{"type":"TEARDOWN"}"#, "'framework_id'"),
            (
                r#"{"type":"SUBSCRIBE","framework_id":{"value":"f"},"subscribe":{"framework_info":{"user":"u","name":"n","id":{"value":"g"}}}}"#,
                "differs",
            ),
            (
                r#"{"type":"ACKNOWLEDGE","framework_id":{"value":"f"},"acknowledge":{"agent_id":{"value":"a"},"task_id":{"value":"t"},"uuid":"YmFkLXV1aWQ="}}"#,
                "Not a valid UUID",
            ),
            (r#"{"type":"KILL","framework_id":{"value":"f"}}"#, "'kill'"),
            (
                r#"{"type":"UPDATE_FRAMEWORK","framework_id":{"value":"f"}}"#,
                "not supported",
            ),
        ] {
            let err = call(json).validate().unwrap_err();
            assert!(err.contains(want), "{json}: {err} lacks {want}");
        }
        // pymesos declines with an ACCEPT that has no operations.
        assert_eq!(
            call(r#"{"type":"ACCEPT","framework_id":{"value":"f"},"accept":{"offer_ids":[{"value":"o"}],"filters":{"refuse_seconds":9}}}"#)
                .validate()
                .unwrap(),
            Valid::Decline(vec!["o".into()], Some(9.0))
        );
        assert_eq!(
            call(r#"{"type":"REQUEST","framework_id":{"value":"f"},"request":{"requests":[]}}"#)
                .validate()
                .unwrap(),
            Valid::Ignored("REQUEST".into())
        );
    }
}
