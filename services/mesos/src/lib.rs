//! Mesos' v1 HTTP APIs as Allot speaks them (issue 26): the JSON form of Mesos' `mesos.v1` messages, the
//! RecordIO framing of event streams, and the conversions between them and Allot's protocol.
//!
//! The JSON mapping is Mesos' (proto2 through stout, see `../shared/mesos-v1-api.md` section 1): field names
//! as in Mesos' `.proto` files (snake_case), enums by name (`"TASK_RUNNING"`), `bytes` as padded standard
//! base64, every ID an object `{"value": "..."}`, and an event's payload under its lowercased type
//! (`{"type":"LAUNCH","launch":{"task":{...}}}`). Unknown keys are ignored on input; absent optional fields
//! are left out on output.
//!
//! Layout: [`recordio`] (framing), [`v1`] (the shared messages: IDs, resources, TaskInfo, TaskStatus, ...),
//! [`executor`] (the executor API's calls and events), [`scheduler`] (the scheduler API's), [`http`] (the
//! request checks both APIs share), [`protobuf`] (the `application/x-protobuf` encoding, by transcoding to
//! and from the JSON form), [`convert`] (to and from `allot.common.v1` and `allot.scheduler.v1`).

/// The Mesos version Allot speaks (`/version`, SUBSCRIBED's `master_info`, the agents in `/master/state`):
/// the last release, 1.11.0. Digits and dots only: pymesos parses each part as an integer.
pub const MESOS_VERSION: &str = "1.11.0";

pub mod convert;
pub mod executor;
pub mod http;
pub mod protobuf;
pub mod recordio;
pub mod scheduler;
pub mod v1;
