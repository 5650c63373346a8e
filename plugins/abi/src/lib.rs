//! Allot's native policy ABI, version 1: the Rust mirror of `include/allot_policy.h`.
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

/// The ABI version this crate speaks (`ALLOT_POLICY_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;

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

/// `allot_policy_abi_version`.
pub type AbiVersionFn = unsafe extern "C" fn() -> u32;
/// `allot_policy_name`.
pub type NameFn = unsafe extern "C" fn() -> *const std::ffi::c_char;
/// `allot_policy_allocate`.
pub type AllocateFn = unsafe extern "C" fn(*const AllotSnapshot, *mut AllotGrants) -> i32;

/// Exports a Rust [`allot_policy::Policy`] (constructed by `$make`) as a native policy library named
/// `$name`. Use it once in a `cdylib` crate:
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
        $crate::export_policy!(@export $make, $name, allocate_indexed);
    };
    ($make:expr, $name:expr) => {
        $crate::export_policy!(@export $make, $name, allocate);
    };
    (@export $make:expr, $name:expr, $entry:ident) => {
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
    };
}
