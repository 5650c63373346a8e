//! Allot's native policy ABI, version 2: the Rust mirror of `include/allot_policy.h`. Version 1
//! (`include/v1/allot_policy.h`, frozen) is version 2 without the snapshot's trailing fields and without
//! `allot_policy_revoke`: the host loads libraries of both ([`SUPPORTED_VERSIONS`]).
//!
//! Layout:
//! - the `#[repr(C)]` types and [`ABI_VERSION`] (this module);
//! - [`guest`]: reading a C snapshot into [`allot_policy::Snapshot`] and writing grants back, for policies
//!   written in Rust and exported with [`export_policy!`];
//! - `host` (feature `host`): building a C snapshot from a [`allot_policy::Snapshot`], and
//!   `host::NativePolicy`, a library loaded with libloading.
//!
//! This is the only crate of Allot with `unsafe` code; every raw pointer is read here and nowhere else.
//! Native policies are trusted code: they run inside the allocator process.

pub mod guest;
#[cfg(feature = "host")]
pub mod host;

/// The ABI version this crate speaks (`ALLOT_POLICY_ABI_VERSION`): what a library exported with
/// [`export_policy!`] reports.
pub const ABI_VERSION: u32 = 2;

/// The versions a host loads, oldest first: a library of version 1 is handed the same snapshot with
/// `abi_version` 1 and never reads past `frameworks`.
pub const SUPPORTED_VERSIONS: [u32; 2] = [1, 2];

/// `ALLOT_POLICY_MESSAGE_BYTES`: bytes of host memory for each revocation's message, its NUL included.
pub const MESSAGE_BYTES: u32 = 256;

/// `ALLOT_POLICY_OK`.
pub const OK: i32 = 0;
/// `ALLOT_POLICY_ERR_INPUT`: the snapshot is not understood.
pub const ERR_INPUT: i32 = 1;
/// `ALLOT_POLICY_ERR_CAPACITY`: more grants than the host made room for.
pub const ERR_CAPACITY: i32 = 2;
/// `ALLOT_POLICY_ERR_PANIC`: the policy failed internally.
pub const ERR_PANIC: i32 = 3;

/// `allot_str`: UTF-8 text, not NUL-terminated.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotStr {
    /// First byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: u32,
}

/// `allot_reservation`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotReservation {
    /// Index into the snapshot's roles.
    pub role: u32,
    /// `[n_kinds]` thousandths still free.
    pub available: *const i64,
}

/// `allot_agent`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotAgent {
    /// Agent ID.
    pub id: AllotStr,
    /// `[n_kinds]`, reserved included.
    pub total: *const i64,
    /// `[n_kinds]`, unreserved and free.
    pub available: *const i64,
    /// Number of reservations.
    pub n_reserved: u32,
    /// `[n_reserved]`.
    pub reserved: *const AllotReservation,
}

/// `allot_role`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotRole {
    /// Role name.
    pub name: AllotStr,
    /// DRF weight, > 0.
    pub weight: f64,
    /// `[n_kinds]`, -1 for no limit on that kind; null for no limit at all.
    pub quota_limit: *const i64,
    /// `[n_kinds]` offered and used.
    pub allocation: *const i64,
}

/// `allot_framework`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotFramework {
    /// Framework ID.
    pub id: AllotStr,
    /// Index into the snapshot's roles.
    pub role: u32,
    /// Priority class.
    pub priority: i32,
    /// Offers received so far.
    pub allocations: u64,
    /// `[n_kinds]` offered and used.
    pub allocation: *const i64,
    /// Number of filtered agents.
    pub n_filtered: u32,
    /// `[n_filtered]` sorted agent indices.
    pub filtered: *const u32,
}

/// `allot_preemption` (version 2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotPreemption {
    /// Seconds a framework must have been starved before revocations for it.
    pub grace_seconds: f64,
    /// Tasks younger than this many seconds are never revoked (nor listed).
    pub min_runtime_seconds: f64,
}

/// `allot_task` (version 2): a running task a policy may revoke.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotTask {
    /// Task ID.
    pub id: AllotStr,
    /// Its framework's ID.
    pub framework: AllotStr,
    /// The ID of its agent.
    pub agent: AllotStr,
    /// Index into the snapshot's roles.
    pub role: u32,
    /// Its framework's priority class.
    pub priority: i32,
    /// `[n_kinds]`, reserved included.
    pub resources: *const i64,
    /// Seconds since it was launched.
    pub running_seconds: f64,
}

/// `allot_snapshot`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotSnapshot {
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Number of resource kinds.
    pub n_kinds: u32,
    /// `[n_kinds]` kind names, sorted.
    pub kinds: *const AllotStr,
    /// `[n_kinds]` the cluster's total.
    pub total: *const i64,
    /// Number of agents.
    pub n_agents: u32,
    /// `[n_agents]`.
    pub agents: *const AllotAgent,
    /// Number of roles.
    pub n_roles: u32,
    /// `[n_roles]`.
    pub roles: *const AllotRole,
    /// Number of frameworks.
    pub n_frameworks: u32,
    /// `[n_frameworks]`.
    pub frameworks: *const AllotFramework,
    /// Version 2: `[n_roles]` each role's guarantee (`[n_kinds]`) or null.
    pub quota_guarantees: *const *const i64,
    /// Version 2: `[n_frameworks]` seconds each has been starved.
    pub starved_seconds: *const f64,
    /// Version 2: null unless `allot_policy_revoke` is called this cycle.
    pub preemption: *const AllotPreemption,
    /// Version 2: number of revocable tasks.
    pub n_tasks: u32,
    /// Version 2: `[n_tasks]`, sorted by framework then task ID.
    pub tasks: *const AllotTask,
}

/// `allot_grant`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotGrant {
    /// Index into the snapshot's frameworks.
    pub framework: u32,
    /// Index into the snapshot's agents.
    pub agent: u32,
    /// `[n_kinds]` unreserved thousandths, host memory.
    pub resources: *mut i64,
    /// `[n_kinds]` reserved thousandths, host memory.
    pub reserved: *mut i64,
}

/// `allot_grants`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotGrants {
    /// Entries in `grants`.
    pub capacity: u32,
    /// Entries written by the policy.
    pub len: u32,
    /// `[capacity]`.
    pub grants: *mut AllotGrant,
}

/// `allot_revocation` (version 2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotRevocation {
    /// Index into the snapshot's tasks.
    pub task: u32,
    /// Host memory of [`MESSAGE_BYTES`], zeroed: a NUL-terminated UTF-8 reason.
    pub message: *mut std::ffi::c_char,
}

/// `allot_revocations` (version 2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AllotRevocations {
    /// Entries in `revocations` (the snapshot's `n_tasks`).
    pub capacity: u32,
    /// Entries written by the policy.
    pub len: u32,
    /// `[capacity]`.
    pub revocations: *mut AllotRevocation,
}

/// `allot_policy_abi_version`.
pub type AbiVersionFn = unsafe extern "C" fn() -> u32;
/// `allot_policy_name`.
pub type NameFn = unsafe extern "C" fn() -> *const std::ffi::c_char;
/// `allot_policy_allocate`.
pub type AllocateFn = unsafe extern "C" fn(*const AllotSnapshot, *mut AllotGrants) -> i32;
/// `allot_policy_revoke` (version 2, optional).
pub type RevokeFn = unsafe extern "C" fn(*const AllotSnapshot, *mut AllotRevocations) -> i32;

/// Exports a Rust [`allot_policy::Policy`] (constructed by `$make`) as a native policy library named
/// `$name`, of ABI version [`ABI_VERSION`]: `allot_policy_allocate` from [`allot_policy::Policy::allocate`]
/// and `allot_policy_revoke` from [`allot_policy::Policy::revoke`] (which revokes nothing unless the policy
/// implements it). Use it once in a `cdylib` crate:
///
/// ```ignore
/// allot_policy_abi::export_policy!(my_crate::MyPolicy, c"mine");
/// ```
///
/// With `indexed` first, `$make` is an [`allot_policy::indexed::IndexedPolicy`] that reads the host's
/// buffers in place (what the built-in policies do):
///
/// ```ignore
/// allot_policy_abi::export_policy!(indexed allot_drf::Drf, c"drf");
/// ```
#[macro_export]
macro_rules! export_policy {
    (indexed $make:expr, $name:expr) => {
        $crate::export_policy!(@export $make, $name, allocate_indexed, revoke_indexed);
    };
    ($make:expr, $name:expr) => {
        $crate::export_policy!(@export $make, $name, allocate, revoke);
    };
    (@export $make:expr, $name:expr, $entry:ident, $revoke:ident) => {
        /// The ABI version this library speaks.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn allot_policy_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        /// The policy's name.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn allot_policy_name() -> *const ::std::ffi::c_char {
            let name: &'static ::std::ffi::CStr = $name;
            name.as_ptr()
        }

        /// Runs one allocation cycle; see `allot_policy.h`.
        ///
        /// # Safety
        /// `snapshot` and `out` must be valid as `allot_policy.h` describes.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn allot_policy_allocate(
            snapshot: *const $crate::AllotSnapshot,
            out: *mut $crate::AllotGrants,
        ) -> i32 {
            // SAFETY: the host passes pointers valid for the call, as the ABI requires.
            unsafe { $crate::guest::$entry(&mut $make, snapshot, out) }
        }

        /// The tasks to revoke (preemption); see `allot_policy.h`.
        ///
        /// # Safety
        /// `snapshot` and `out` must be valid as `allot_policy.h` describes.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn allot_policy_revoke(
            snapshot: *const $crate::AllotSnapshot,
            out: *mut $crate::AllotRevocations,
        ) -> i32 {
            // SAFETY: the host passes pointers valid for the call, as the ABI requires.
            unsafe { $crate::guest::$revoke(&mut $make, snapshot, out) }
        }
    };
}
