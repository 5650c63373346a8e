//! The protobuf encoding of Mesos' HTTP APIs (`application/x-protobuf`), by transcoding: a call that arrives as
//! protobuf is turned into its JSON form and parsed as a JSON call is; an event is written as JSON and turned
//! into protobuf. One set of message types ([`crate::scheduler`], [`crate::executor`]) carries both
//! encodings, so the two cannot disagree on semantics.
//!
//! The wire format comes from `proto/mesos/v1/*.proto`: Mesos 1.11's field numbers and enum values for the
//! subset Allot carries, compiled into a descriptor set at build time and read with `prost-reflect`. A field a
//! client sends that is not in that subset is skipped, as an unknown JSON key is.

use std::sync::LazyLock;

use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

/// A message of Mesos' HTTP APIs that also has a protobuf form (the calls and events of
/// [`crate::scheduler`] and [`crate::executor`]).
pub trait Protobuf {
    /// Its full protobuf name, e.g. `mesos.v1.scheduler.Call`.
    const NAME: &'static str;
}

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/mesos.bin"))[..])
        .expect("the descriptor set built from proto/mesos is valid")
});

/// Mesos' JSON mapping (stout): proto field names, enums by name, 64-bit integers as numbers, absent fields
/// left out.
const TO_JSON: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .stringify_64_bit_integers(false)
    .use_enum_numbers(false)
    .skip_default_fields(true);

fn descriptor(name: &str) -> Result<prost_reflect::MessageDescriptor, String> {
    POOL.get_message_by_name(name)
        .ok_or_else(|| format!("no protobuf message {name}"))
}

/// Whether `name` is a value of the Mesos enum `enum_name` (e.g. `mesos.v1.TaskStatus.Reason`).
pub fn is_enum_value(enum_name: &str, name: &str) -> bool {
    POOL.get_enum_by_name(enum_name)
        .is_some_and(|e| e.get_value_by_name(name).is_some())
}

/// The protobuf message `name` in `bytes`, as Mesos' JSON.
///
/// # Errors
/// The message is not valid protobuf for `name` (the reason, as text).
pub fn to_json(name: &str, bytes: &[u8]) -> Result<serde_json::Value, String> {
    let message = DynamicMessage::decode(descriptor(name)?, bytes).map_err(|e| e.to_string())?;
    message
        .serialize_with_options(serde_json::value::Serializer, &TO_JSON)
        .map_err(|e| e.to_string())
}

/// `value`, the JSON form of message `name`, encoded as protobuf. With `strict`, a JSON field the protobuf
/// subset lacks is an error (tests use this to keep `proto/mesos` complete); without, it is left out.
///
/// # Errors
/// `value` does not fit message `name` (a type mismatch, an unknown enum name, or with `strict` an unknown
/// field).
pub fn from_json(name: &str, value: &serde_json::Value, strict: bool) -> Result<Vec<u8>, String> {
    let options = DeserializeOptions::new().deny_unknown_fields(strict);
    let message = DynamicMessage::deserialize_with_options(descriptor(name)?, value, &options)
        .map_err(|e| e.to_string())?;
    Ok(message.encode_to_vec())
}

/// `message` encoded as protobuf (fields the protobuf subset lacks are left out).
///
/// # Errors
/// As [`from_json`]; for the crate's own events this would be a bug, which its tests look for.
pub fn encode<T: serde::Serialize + Protobuf>(message: &T) -> Result<Vec<u8>, String> {
    let value = serde_json::to_value(message).map_err(|e| e.to_string())?;
    from_json(T::NAME, &value, false)
}

/// The message `T` in protobuf `bytes`.
///
/// # Errors
/// Not valid protobuf for `T`, or, once read, not a valid `T` (a missing required field, an unknown enum
/// value).
pub fn decode<T: serde::de::DeserializeOwned + Protobuf>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_value(to_json(T::NAME, bytes)?).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every field Allot writes survives JSON -> protobuf -> JSON, and `proto/mesos` knows each of them
    /// (strict: an unknown field is an error).
    fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned + Protobuf>(
        value: serde_json::Value,
    ) {
        let typed: T = serde_json::from_value(value).expect("a valid message");
        let canonical = serde_json::to_value(&typed).unwrap();
        let bytes = from_json(T::NAME, &canonical, true).expect("proto/mesos knows every field");
        assert_eq!(to_json(T::NAME, &bytes).unwrap(), canonical);
        let back: T = decode(&bytes).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), canonical);
    }

    fn resources() -> serde_json::Value {
        json!([
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}, "role": "*",
             "allocation_info": {"role": "batch"}},
            {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 31000, "end": 31009}]},
             "reservations": [{"type": "DYNAMIC", "role": "batch"}]}
        ])
    }

    fn task() -> serde_json::Value {
        json!({
            "name": "t", "task_id": {"value": "t1"}, "agent_id": {"value": "a1"},
            "resources": resources(),
            "executor": {"type": "CUSTOM", "executor_id": {"value": "e1"}, "framework_id": {"value": "f1"},
                "command": {"value": "./worker", "shell": true}, "resources": resources(), "name": "w",
                "data": "AAE=", "shutdown_grace_period": {"nanoseconds": 3_000_000_000_i64}},
            "command": {"value": "/bin/echo", "shell": false, "arguments": ["echo", "hi"],
                "environment": {"variables": [{"name": "A", "value": "1", "type": "VALUE"}]},
                "uris": [{"value": "http://x/y.tgz", "executable": false, "extract": true, "output_file": "y"}],
                "user": "nobody"},
            "data": "aGk=",
            "kill_policy": {"grace_period": {"nanoseconds": 5}}
        })
    }

    fn status() -> serde_json::Value {
        json!({"task_id": {"value": "t1"}, "state": "TASK_FAILED", "message": "m",
            "source": "SOURCE_EXECUTOR", "reason": "REASON_EXECUTOR_TERMINATED", "data": "aGk=",
            "agent_id": {"value": "a1"}, "executor_id": {"value": "e1"}, "timestamp": 1.5,
            "uuid": "AAECAwQFBgcICQoLDA0ODw==", "healthy": true})
    }

    fn framework() -> serde_json::Value {
        json!({"user": "u", "name": "n", "id": {"value": "f1"}, "failover_timeout": 60.0,
            "checkpoint": true, "role": "batch", "roles": ["batch"], "hostname": "h", "principal": "p",
            "capabilities": [{"type": "PARTITION_AWARE"}, {"type": "MULTI_ROLE"}]})
    }

    #[test]
    fn scheduler_events_keep_every_field() {
        use crate::scheduler::Event;
        round_trip::<Event>(json!({"type": "SUBSCRIBED", "subscribed": {
            "framework_id": {"value": "f1"}, "heartbeat_interval_seconds": 15.0,
            "master_info": {"id": "m", "ip": 16_777_343, "port": 5050, "pid": "master@127.0.0.1:5050",
                "hostname": "localhost", "version": "1.11.0",
                "address": {"hostname": "localhost", "ip": "127.0.0.1", "port": 5050}}}}));
        round_trip::<Event>(json!({"type": "OFFERS", "offers": {"offers": [{
            "id": {"value": "o1"}, "framework_id": {"value": "f1"}, "agent_id": {"value": "a1"},
            "hostname": "h", "resources": resources(),
            "attributes": [{"name": "rack", "type": "TEXT", "text": {"value": "r1"}}],
            "executor_ids": [{"value": "e1"}], "allocation_info": {"role": "batch"},
            "url": {"scheme": "http", "address": {"hostname": "h", "ip": "10.0.0.1", "port": 5051},
                "path": "/slave(1)"}}]}}));
        round_trip::<Event>(json!({"type": "RESCIND", "rescind": {"offer_id": {"value": "o1"}}}));
        round_trip::<Event>(json!({"type": "UPDATE", "update": {"status": status()}}));
        round_trip::<Event>(
            json!({"type": "MESSAGE", "message": {"agent_id": {"value": "a1"},
            "executor_id": {"value": "e1"}, "data": "aGk="}}),
        );
        round_trip::<Event>(
            json!({"type": "FAILURE", "failure": {"agent_id": {"value": "a1"},
            "executor_id": {"value": "e1"}, "status": 256}}),
        );
        round_trip::<Event>(json!({"type": "ERROR", "error": {"message": "gone"}}));
        round_trip::<Event>(json!({"type": "HEARTBEAT"}));
    }

    #[test]
    fn executor_events_and_calls_keep_every_field() {
        use crate::executor::{Call, Event};
        round_trip::<Event>(json!({"type": "SUBSCRIBED", "subscribed": {
            "executor_info": task()["executor"].clone(), "framework_info": framework(),
            "agent_info": {"hostname": "h", "port": 5051, "id": {"value": "a1"}, "resources": resources(),
                "attributes": [{"name": "rack", "type": "TEXT", "text": {"value": "r1"}}]},
            "container_id": {"value": "c1"}}}));
        round_trip::<Event>(json!({"type": "LAUNCH", "launch": {"task": task()}}));
        round_trip::<Event>(json!({"type": "KILL", "kill": {"task_id": {"value": "t1"},
            "kill_policy": {"grace_period": {"nanoseconds": 5}}}}));
        round_trip::<Event>(
            json!({"type": "ACKNOWLEDGED", "acknowledged": {"task_id": {"value": "t1"},
            "uuid": "AAECAwQFBgcICQoLDA0ODw=="}}),
        );
        round_trip::<Event>(json!({"type": "MESSAGE", "message": {"data": "aGk="}}));
        round_trip::<Event>(json!({"type": "ERROR", "error": {"message": "no"}}));
        round_trip::<Event>(json!({"type": "SHUTDOWN"}));
        let ids = json!({"executor_id": {"value": "e1"}, "framework_id": {"value": "f1"}});
        let with = |extra: serde_json::Value| {
            let mut v = ids.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        round_trip::<Call>(with(json!({"type": "SUBSCRIBE", "subscribe": {
            "unacknowledged_tasks": [task()], "unacknowledged_updates": [{"status": status()}]}})));
        round_trip::<Call>(with(
            json!({"type": "UPDATE", "update": {"status": status()}}),
        ));
        round_trip::<Call>(with(
            json!({"type": "MESSAGE", "message": {"data": "aGk="}}),
        ));
    }

    #[test]
    fn scheduler_calls_keep_every_field() {
        use crate::scheduler::Call;
        round_trip::<Call>(json!({"type": "SUBSCRIBE", "framework_id": {"value": "f1"},
            "subscribe": {"framework_info": framework(), "suppressed_roles": ["batch"]}}));
        round_trip::<Call>(
            json!({"type": "ACCEPT", "framework_id": {"value": "f1"}, "accept": {
            "offer_ids": [{"value": "o1"}],
            "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task()]}},
                {"type": "RESERVE", "reserve": {"resources": resources()}},
                {"type": "UNRESERVE", "unreserve": {"resources": resources()}}],
            "filters": {"refuse_seconds": 1.0}}}),
        );
        round_trip::<Call>(json!({"type": "DECLINE", "framework_id": {"value": "f1"},
            "decline": {"offer_ids": [{"value": "o1"}], "filters": {"refuse_seconds": 30.0}}}));
        round_trip::<Call>(json!({"type": "KILL", "framework_id": {"value": "f1"},
            "kill": {"task_id": {"value": "t1"}, "agent_id": {"value": "a1"}}}));
        round_trip::<Call>(json!({"type": "SHUTDOWN", "framework_id": {"value": "f1"},
            "shutdown": {"executor_id": {"value": "e1"}, "agent_id": {"value": "a1"}}}));
        round_trip::<Call>(
            json!({"type": "ACKNOWLEDGE", "framework_id": {"value": "f1"},
            "acknowledge": {"agent_id": {"value": "a1"}, "task_id": {"value": "t1"},
                "uuid": "AAECAwQFBgcICQoLDA0ODw=="}}),
        );
        round_trip::<Call>(json!({"type": "RECONCILE", "framework_id": {"value": "f1"},
            "reconcile": {"tasks": [{"task_id": {"value": "t1"}, "agent_id": {"value": "a1"}}]}}));
        round_trip::<Call>(json!({"type": "MESSAGE", "framework_id": {"value": "f1"},
            "message": {"agent_id": {"value": "a1"}, "executor_id": {"value": "e1"}, "data": "aGk="}}));
        round_trip::<Call>(json!({"type": "REVIVE", "framework_id": {"value": "f1"}}));
    }

    #[test]
    fn field_numbers_are_mesos() {
        use crate::scheduler::Call;
        // Call { framework_id (1) { value (1): "f" }, type (2): TEARDOWN = 2 }, as Mesos' C++ writes it.
        let bytes = [0x0a, 0x03, 0x0a, 0x01, b'f', 0x10, 0x02];
        let call: Call = decode(&bytes).unwrap();
        assert_eq!(call.framework(), Some("f"));
        assert_eq!(call.kind.as_deref(), Some("TEARDOWN"));
        let mut encoded = encode(&call).unwrap();
        encoded.sort_unstable();
        let mut expected = bytes.to_vec();
        expected.sort_unstable();
        assert_eq!(encoded, expected);
        // Event { type (1): HEARTBEAT = 8 }.
        let heartbeat = crate::scheduler::Event::bare("HEARTBEAT");
        assert_eq!(encode(&heartbeat).unwrap(), vec![0x08, 0x08]);
        // Executor Call.Message.data is field 2 (Mesos skipped 1).
        let message: crate::executor::Call =
            decode(&[0x18, 0x03, 0x32, 0x03, 0x12, 0x01, b'x']).unwrap();
        assert_eq!(message.message.unwrap().data.0, b"x");
    }

    #[test]
    fn what_is_not_a_message_is_refused() {
        assert!(decode::<crate::scheduler::Call>(&[0xff, 0xff]).is_err());
        // An enum value this version does not know.
        assert!(decode::<crate::scheduler::Call>(&[0x10, 0x63]).is_err());
    }
}
