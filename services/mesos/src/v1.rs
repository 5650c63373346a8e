//! The `mesos.v1` messages the scheduler and executor APIs share, in Mesos' JSON form (see the crate docs):
//! the subset Allot's model carries. Each struct accepts absent fields (defaults) and leaves out, on output,
//! what is absent or empty. Field names, and the enum names in `String` fields, are Mesos'.

use serde::{Deserialize, Serialize};

/// `bytes`: standard base64 with padding in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map(Bytes)
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

impl Bytes {
    /// Whether there are no bytes (left out of the JSON).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Every Mesos ID (`FrameworkID`, `AgentID`, `TaskID`, `ExecutorID`, `OfferID`, `ContainerID`):
/// `{"value": "..."}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Id {
    /// The ID.
    pub value: String,
}

impl Id {
    /// `{"value": v}`.
    pub fn of(v: impl Into<String>) -> Id {
        Id { value: v.into() }
    }
}

/// `Value.Scalar`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scalar {
    /// The amount (cpus in CPUs, mem and disk in MiB).
    pub value: f64,
}

/// `Value.Range`: inclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// First value.
    pub begin: u64,
    /// Last value.
    pub end: u64,
}

/// `Value.Ranges`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ranges {
    /// The ranges.
    pub range: Vec<Range>,
}

/// `Value.Text`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    /// The text.
    pub value: String,
}

/// `Resource.AllocationInfo`: the role an offered or used resource is allocated to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AllocationInfo {
    /// The role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// `Resource.ReservationInfo` (reservation refinement): the role of one reservation level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReservationInfo {
    /// `STATIC` or `DYNAMIC`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The role reserved for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// `Resource`: `{"name":"cpus","type":"SCALAR","scalar":{"value":0.5}}`, or `RANGES` with `ranges`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resource {
    /// `cpus`, `mem` (MiB), `disk` (MiB), `gpus`, `ports`, ...
    pub name: String,
    /// `SCALAR`, `RANGES`, `SET`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `SCALAR`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scalar: Option<Scalar>,
    /// For `RANGES`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Ranges>,
    /// The reservation in the pre-refinement form: `*` is unreserved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The reservation in the refinement form (the last entry is the role reserved for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reservations: Vec<ReservationInfo>,
    /// The role it is allocated to (in offers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation_info: Option<AllocationInfo>,
}

/// `Environment.Variable`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Variable {
    /// Its name.
    pub name: String,
    /// Its value (a `SECRET` variable has none; Allot refuses those).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `VALUE` (default) or `SECRET`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `Environment`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Environment {
    /// The variables.
    pub variables: Vec<Variable>,
}

/// `CommandInfo.URI`: a file the fetcher puts in the sandbox before the command runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Uri {
    /// Path or URL.
    pub value: String,
    /// Make it executable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<bool>,
    /// Extract archives (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extract: Option<bool>,
    /// Name in the sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
}

/// `CommandInfo`: `shell` defaults to **true** (run `value` with `/bin/sh -c`); otherwise `value` is the
/// program and `arguments` its argv, argv\[0\] included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandInfo {
    /// The command or program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Whether `value` is a shell command (absent: true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<bool>,
    /// argv for a non-shell command.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<String>,
    /// Environment variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// Files to fetch into the sandbox first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<Uri>,
    /// The Unix user to run as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `DurationInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurationInfo {
    /// Nanoseconds.
    pub nanoseconds: i64,
}

/// `KillPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KillPolicy {
    /// Time between SIGTERM and SIGKILL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<DurationInfo>,
}

/// `ExecutorInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutorInfo {
    /// `DEFAULT` or `CUSTOM`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its ID, unique among the framework's executors.
    pub executor_id: Id,
    /// The framework it belongs to (filled in by the agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub framework_id: Option<Id>,
    /// How to start it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandInfo>,
    /// What it uses itself.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// A name for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Opaque data for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Bytes>,
    /// Time between SHUTDOWN and SIGKILL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_period: Option<DurationInfo>,
}

/// `TaskInfo`: exactly one of `command` and `executor`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskInfo {
    /// A name for people.
    pub name: String,
    /// Its ID.
    pub task_id: Id,
    /// The agent it runs on.
    pub agent_id: Id,
    /// What it uses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// Its framework's executor, when not a command task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorInfo>,
    /// Its command, for the command executor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandInfo>,
    /// Opaque data for its executor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Bytes>,
    /// How it is killed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_policy: Option<KillPolicy>,
}

/// `TaskStatus`. `state`, `source` and `reason` hold Mesos' enum names (`TASK_RUNNING`, `SOURCE_EXECUTOR`,
/// `REASON_EXECUTOR_TERMINATED`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskStatus {
    /// The task.
    pub task_id: Id,
    /// `TASK_STAGING` ... `TASK_UNKNOWN`.
    pub state: String,
    /// A message for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `SOURCE_MASTER`, `SOURCE_AGENT` or `SOURCE_EXECUTOR`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `REASON_*`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Opaque data from the executor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Bytes>,
    /// The agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Id>,
    /// The executor that sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<Id>,
    /// Unix time in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<f64>,
    /// 16 bytes identifying a reliable update; absent on updates that need no acknowledgement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Bytes>,
    /// Health check result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

/// `FrameworkInfo.Capability`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capability {
    /// `MULTI_ROLE`, `PARTITION_AWARE`, `TASK_KILLING_STATE`, `GPU_RESOURCES`, ...
    #[serde(rename = "type")]
    pub kind: String,
}

/// `FrameworkInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrameworkInfo {
    /// The Unix user its tasks run as by default.
    pub user: String,
    /// Its name.
    pub name: String,
    /// Its ID, once registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// Seconds its tasks survive a disconnected scheduler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_timeout: Option<f64>,
    /// Whether its tasks survive an agent restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<bool>,
    /// Its role (single-role frameworks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Its roles (MULTI_ROLE).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Its scheduler's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Who it authenticates as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// What it can handle.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<Capability>,
}

/// `Attribute`: Allot's attributes are TEXT.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attribute {
    /// Its name.
    pub name: String,
    /// `TEXT` (Allot), `SCALAR`, `RANGES`, `SET`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `TEXT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<Text>,
}

/// `AgentInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentInfo {
    /// Its host.
    pub hostname: String,
    /// The port of its HTTP endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Its ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// Its resources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// Its attributes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
}
