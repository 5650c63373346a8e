//! The executor API (`mesos.v1.executor`): the calls an executor POSTs to its agent at `/api/v1/executor` and
//! the events on the stream its SUBSCRIBE opens (Mesos `docs/executor-http-api.md`).

use crate::v1::{
    AgentInfo, Bytes, ExecutorInfo, FrameworkInfo, Id, KillPolicy, TaskInfo, TaskStatus,
};
use serde::{Deserialize, Serialize};

/// `executor.Call`. `type` is `SUBSCRIBE`, `UPDATE`, `MESSAGE` or `HEARTBEAT`, each with its sub-message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Call {
    /// The calling executor.
    pub executor_id: Option<Id>,
    /// Its framework.
    pub framework_id: Option<Id>,
    /// The call.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// For SUBSCRIBE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Subscribe>,
    /// For UPDATE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<Update>,
    /// For MESSAGE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
}

/// `Call.Subscribe`: what a re-subscribing executor (after an agent restart) holds that the agent may not
/// know was delivered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Subscribe {
    /// Tasks it was given and has sent no update of yet.
    pub unacknowledged_tasks: Vec<TaskInfo>,
    /// Updates it sent that are not yet acknowledged.
    pub unacknowledged_updates: Vec<Update>,
}

/// `Call.Update`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Update {
    /// The task's new status.
    pub status: TaskStatus,
}

/// `Call.Message` and `Event.Message`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Message {
    /// The bytes.
    pub data: Bytes,
}

/// A call that passed [`Call::validate`].
#[derive(Debug, Clone, PartialEq)]
pub enum Valid {
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// UPDATE, with a status that is the executor's own (uuid of 16 bytes, not TASK_STAGING).
    Update(TaskStatus),
    /// MESSAGE.
    Message(Vec<u8>),
    /// HEARTBEAT.
    Heartbeat,
}

impl Call {
    /// Checks the call as Mesos' agent does (`validation::executor::call::validate`), and returns
    /// `(framework ID, executor ID, what it asks)`.
    ///
    /// # Errors
    /// The reason, for a `400 Failed to validate executor::Call: <reason>`: a missing ID, type or sub-message;
    /// an UPDATE whose `executor_id` is another executor's, whose uuid is not 16 bytes, whose state is
    /// TASK_STAGING or unknown, or whose source is not SOURCE_EXECUTOR.
    pub fn validate(self) -> Result<(String, String, Valid), String> {
        let framework = self
            .framework_id
            .map(|i| i.value)
            .filter(|v| !v.is_empty())
            .ok_or("Expecting 'framework_id' to be present")?;
        let executor = self
            .executor_id
            .map(|i| i.value)
            .filter(|v| !v.is_empty())
            .ok_or("Expecting 'executor_id' to be present")?;
        let kind = self.kind.ok_or("Expecting 'type' to be present")?;
        let valid = match kind.as_str() {
            "SUBSCRIBE" => Valid::Subscribe(
                self.subscribe
                    .ok_or("Expecting 'subscribe' to be present")?,
            ),
            "UPDATE" => {
                let status = self
                    .update
                    .ok_or("Expecting 'update' to be present")?
                    .status;
                if let Some(e) = &status.executor_id
                    && e.value != executor
                {
                    return Err(format!(
                        "ExecutorID in Call: {executor} does not match ExecutorID in TaskStatus: {}",
                        e.value
                    ));
                }
                if status.uuid.as_ref().map(|u| u.0.len()) != Some(16) {
                    return Err("Not a valid UUID".into());
                }
                if status.state == "TASK_STAGING" {
                    return Err("Received TASK_STAGING from executor".into());
                }
                if allot_proto::common::TaskState::from_str_name(&status.state).is_none() {
                    return Err(format!("Unknown task state '{}'", status.state));
                }
                if status.source.as_deref().unwrap_or("SOURCE_EXECUTOR") != "SOURCE_EXECUTOR" {
                    return Err(format!(
                        "Received wrong source {}, expecting SOURCE_EXECUTOR",
                        status.source.as_deref().unwrap_or_default()
                    ));
                }
                if status.task_id.value.is_empty() {
                    return Err("Expecting 'update.status.task_id' to be present".into());
                }
                Valid::Update(status)
            }
            "MESSAGE" => Valid::Message(
                self.message
                    .ok_or("Expecting 'message' to be present")?
                    .data
                    .0,
            ),
            "HEARTBEAT" => Valid::Heartbeat,
            other => return Err(format!("Unknown call type '{other}'")),
        };
        Ok((framework, executor, valid))
    }
}

/// `executor.Event`: `type` names the payload field that is set (its lowercased name).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// `SUBSCRIBED`, `LAUNCH`, `KILL`, `ACKNOWLEDGED`, `MESSAGE`, `ERROR`, `SHUTDOWN`, `HEARTBEAT`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For SUBSCRIBED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<Subscribed>,
    /// For LAUNCH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch: Option<Launch>,
    /// For KILL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill: Option<Kill>,
    /// For ACKNOWLEDGED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Acknowledged>,
    /// For MESSAGE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// For ERROR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

/// `Event.Subscribed`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Subscribed {
    /// The executor as launched.
    pub executor_info: ExecutorInfo,
    /// Its framework, with `id`.
    pub framework_info: FrameworkInfo,
    /// The agent.
    pub agent_info: AgentInfo,
    /// Its container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<Id>,
}

/// `Event.Launch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Launch {
    /// The task to run.
    pub task: TaskInfo,
}

/// `Event.Kill`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Kill {
    /// The task to kill.
    pub task_id: Id,
    /// How (grace period).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_policy: Option<KillPolicy>,
}

/// `Event.Acknowledged`: the framework acknowledged this update.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Acknowledged {
    /// The task.
    pub task_id: Id,
    /// The update's uuid.
    pub uuid: Bytes,
}

/// `Event.Error`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Error {
    /// What went wrong.
    pub message: String,
}

impl Event {
    /// An event of type `kind` with no payload (SHUTDOWN, HEARTBEAT).
    pub fn bare(kind: &str) -> Event {
        Event {
            kind: kind.into(),
            ..Default::default()
        }
    }

    /// LAUNCH of `task`.
    pub fn launch(task: TaskInfo) -> Event {
        Event {
            kind: "LAUNCH".into(),
            launch: Some(Launch { task }),
            ..Default::default()
        }
    }

    /// KILL of `task_id`.
    pub fn kill(task_id: &str, grace_seconds: Option<f64>) -> Event {
        Event {
            kind: "KILL".into(),
            kill: Some(Kill {
                task_id: Id::of(task_id),
                kill_policy: grace_seconds.map(|s| KillPolicy {
                    grace_period: Some(crate::v1::DurationInfo {
                        nanoseconds: (s * 1e9) as i64,
                    }),
                }),
            }),
            ..Default::default()
        }
    }

    /// ACKNOWLEDGED of update `uuid` of `task_id`.
    pub fn acknowledged(task_id: &str, uuid: Vec<u8>) -> Event {
        Event {
            kind: "ACKNOWLEDGED".into(),
            acknowledged: Some(Acknowledged {
                task_id: Id::of(task_id),
                uuid: Bytes(uuid),
            }),
            ..Default::default()
        }
    }

    /// MESSAGE with `data`.
    pub fn message(data: Vec<u8>) -> Event {
        Event {
            kind: "MESSAGE".into(),
            message: Some(Message { data: Bytes(data) }),
            ..Default::default()
        }
    }

    /// ERROR with `message`.
    pub fn error(message: impl Into<String>) -> Event {
        Event {
            kind: "ERROR".into(),
            error: Some(Error {
                message: message.into(),
            }),
            ..Default::default()
        }
    }

    /// The event as one RecordIO record in `encoding` (JSON: compact, no newline inside).
    ///
    /// # Errors
    /// As [`crate::http::Encoding::record`].
    pub fn record(&self, encoding: crate::http::Encoding) -> Result<Vec<u8>, String> {
        encoding.record(self)
    }
}

impl crate::protobuf::Protobuf for Call {
    const NAME: &'static str = "mesos.v1.executor.Call";
}

impl crate::protobuf::Protobuf for Event {
    const NAME: &'static str = "mesos.v1.executor.Event";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_is_checked_as_mesos_checks_it() {
        let call = |status: serde_json::Value| -> Call {
            serde_json::from_value(serde_json::json!({
                "type": "UPDATE", "framework_id": {"value": "f"}, "executor_id": {"value": "e"},
                "update": {"status": status}, "unknown_key": 1
            }))
            .unwrap()
        };
        let uuid = "AAECAwQFBgcICQoLDA0ODw==";
        let ok = call(
            serde_json::json!({"task_id": {"value": "t"}, "state": "TASK_RUNNING", "uuid": uuid,
            "source": "SOURCE_EXECUTOR", "data": "aGk="}),
        );
        let (f, e, v) = ok.validate().unwrap();
        assert_eq!((f.as_str(), e.as_str()), ("f", "e"));
        let Valid::Update(s) = v else { panic!() };
        assert_eq!(s.data.unwrap().0, b"hi");
        for (status, want) in [
            (
                serde_json::json!({"task_id": {"value": "t"}, "state": "TASK_RUNNING", "uuid": "AAEC"}),
                "Not a valid UUID",
            ),
            (
                serde_json::json!({"task_id": {"value": "t"}, "state": "TASK_STAGING", "uuid": uuid}),
                "TASK_STAGING",
            ),
            (
                serde_json::json!({"task_id": {"value": "t"}, "state": "TASK_RUNNING", "uuid": uuid, "source": "SOURCE_MASTER"}),
                "wrong source",
            ),
            (
                serde_json::json!({"task_id": {"value": "t"}, "state": "TASK_RUNNING", "uuid": uuid, "executor_id": {"value": "x"}}),
                "does not match",
            ),
        ] {
            let err = call(status).validate().unwrap_err();
            assert!(err.contains(want), "{err} lacks {want}");
        }
        let none: Call = serde_json::from_value(serde_json::json!({"type": "MESSAGE",
            "framework_id": {"value": "f"}, "executor_id": {"value": "e"}}))
        .unwrap();
        assert!(none.validate().unwrap_err().contains("'message'"));
    }

    #[test]
    fn events_nest_their_payload_under_the_lowercased_type() {
        let ev = Event::acknowledged("t1", vec![7; 16]);
        let record = ev.record(crate::http::Encoding::Json).unwrap();
        let nl = record.iter().position(|b| *b == b'\n').unwrap();
        let json: serde_json::Value = serde_json::from_slice(&record[nl + 1..]).unwrap();
        assert_eq!(record[..nl], *record[nl + 1..].len().to_string().as_bytes());
        assert_eq!(json["type"], "ACKNOWLEDGED");
        assert_eq!(json["acknowledged"]["task_id"]["value"], "t1");
        assert_eq!(json["acknowledged"]["uuid"], "BwcHBwcHBwcHBwcHBwcHBw==");
        assert!(!record[nl + 1..].contains(&b'\n'));
        assert_eq!(
            serde_json::to_string(&Event::bare("SHUTDOWN")).unwrap(),
            r#"{"type":"SHUTDOWN"}"#
        );
    }
}
