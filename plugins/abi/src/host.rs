//! The host side: the allocator builds a C snapshot, calls a native policy library, and reads its grants
//! back, checking every index and amount.

use crate::*;
use allot_policy::{Grant, Revocation, Snapshot, indexed};
use std::path::Path;
use std::sync::Arc;

/// Why a native policy could not be loaded or called.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AbiError {
    /// The library cannot be opened or lacks a symbol.
    #[error("cannot load {path}: {message}")]
    Load {
        /// The library.
        path: String,
        /// What failed.
        message: String,
    },
    /// The library speaks an ABI version this host does not load ([`SUPPORTED_VERSIONS`]).
    #[error("ABI version {found}, this allocator loads versions 1 and 2")]
    Version {
        /// The library's version.
        found: u32,
    },
    /// `allot_policy_allocate` returned an error code.
    #[error("the policy returned error code {0}")]
    Code(i32),
    /// The policy wrote a grant that names no framework or agent of the snapshot, or a negative amount.
    #[error("the policy returned a malformed grant: {0}")]
    BadGrant(String),
    /// The policy revoked a task index beyond the snapshot's tasks, or wrote more than its room.
    #[error("the policy returned a malformed revocation: {0}")]
    BadRevocation(String),
}

/// A snapshot laid out for the C ABI. Owns every array the pointers in [`CSnapshot::as_ptr`] point into, but
/// the agents' and frameworks' IDs, which point into the [`Snapshot`] it borrows for `'a`.
pub struct CSnapshot<'a> {
    layout: indexed::Layout,
    _kind_strs: Vec<AllotStr>,
    _reservations: Vec<AllotReservation>,
    _agents: Vec<AllotAgent>,
    _roles: Vec<AllotRole>,
    _frameworks: Vec<AllotFramework>,
    _guarantees: Vec<*const i64>,
    _starved: Vec<f64>,
    _preemption: Option<Box<AllotPreemption>>,
    _tasks: Vec<AllotTask>,
    raw: AllotSnapshot,
    _ids: std::marker::PhantomData<&'a Snapshot>,
}

// SAFETY: the raw pointers point into heap buffers owned by the same value (the layout's vectors) or by the
// snapshot it borrows (the IDs), and are never written through.
#[allow(unsafe_code)]
unsafe impl Send for CSnapshot<'_> {}

fn s(t: &str) -> AllotStr {
    AllotStr {
        ptr: t.as_ptr(),
        len: t.len() as u32,
    }
}

impl<'a> CSnapshot<'a> {
    /// Lays out `snap` for the C ABI ([`indexed::Layout`]), for a library of ABI `version` (the snapshot's
    /// `abi_version`; the fields of version 2 are filled in either way, and a version-1 library never reads
    /// them). IDs point into `snap`, which the result borrows.
    pub fn new(snap: &'a Snapshot, version: u32) -> Self {
        let layout = indexed::Layout::new(snap);
        let l = &layout;
        let p = |at: usize| l.flat[at..].as_ptr();
        let kind_strs: Vec<AllotStr> = l.kinds.iter().map(|k| s(k)).collect();
        let reservations: Vec<AllotReservation> = l
            .reservations
            .iter()
            .map(|&(role, at)| AllotReservation {
                role,
                available: p(at),
            })
            .collect();
        let agents: Vec<AllotAgent> = snap
            .agents
            .iter()
            .zip(&l.agents)
            .map(|(a, (total, available, res))| AllotAgent {
                id: s(&a.id),
                total: p(*total),
                available: p(*available),
                n_reserved: res.len() as u32,
                reserved: reservations[res.start..].as_ptr(),
            })
            .collect();
        let roles: Vec<AllotRole> = l
            .roles
            .iter()
            .map(|(name, weight, limit, allocation)| AllotRole {
                name: s(name),
                weight: *weight,
                quota_limit: limit.map_or(std::ptr::null(), p),
                allocation: p(*allocation),
            })
            .collect();
        let frameworks: Vec<AllotFramework> = snap
            .frameworks
            .iter()
            .zip(&l.frameworks)
            .map(|(f, (role, allocation, filtered))| AllotFramework {
                id: s(&f.id),
                role: *role,
                priority: f.priority,
                allocations: f.allocations,
                allocation: p(*allocation),
                n_filtered: filtered.len() as u32,
                filtered: l.filtered[filtered.start..].as_ptr(),
            })
            .collect();
        let guarantees: Vec<*const i64> = l
            .guarantees
            .iter()
            .map(|g| g.map_or(std::ptr::null(), p))
            .collect();
        let starved: Vec<f64> = snap.frameworks.iter().map(|f| f.starved_seconds).collect();
        let preemption = snap.preemption.map(|p| {
            Box::new(AllotPreemption {
                grace_seconds: p.grace_seconds,
                min_runtime_seconds: p.min_runtime_seconds,
            })
        });
        let tasks: Vec<AllotTask> = snap
            .tasks
            .iter()
            .zip(&l.tasks)
            .map(|(t, &(role, at))| AllotTask {
                id: s(&t.id),
                framework: s(&t.framework),
                agent: s(&t.agent),
                role,
                priority: t.priority,
                resources: p(at),
                running_seconds: t.running_seconds,
            })
            .collect();
        let raw = AllotSnapshot {
            abi_version: version,
            n_kinds: l.kinds.len() as u32,
            kinds: kind_strs.as_ptr(),
            total: p(l.total),
            n_agents: agents.len() as u32,
            agents: agents.as_ptr(),
            n_roles: roles.len() as u32,
            roles: roles.as_ptr(),
            n_frameworks: frameworks.len() as u32,
            frameworks: frameworks.as_ptr(),
            quota_guarantees: guarantees.as_ptr(),
            starved_seconds: starved.as_ptr(),
            preemption: preemption
                .as_deref()
                .map_or(std::ptr::null(), |p| p as *const AllotPreemption),
            n_tasks: tasks.len() as u32,
            tasks: tasks.as_ptr(),
        };
        Self {
            layout,
            _kind_strs: kind_strs,
            _reservations: reservations,
            _agents: agents,
            _roles: roles,
            _frameworks: frameworks,
            _guarantees: guarantees,
            _starved: starved,
            _preemption: preemption,
            _tasks: tasks,
            raw,
            _ids: std::marker::PhantomData,
        }
    }

    /// The snapshot for the C call; valid while `self` lives.
    pub fn as_ptr(&self) -> *const AllotSnapshot {
        &self.raw
    }

    /// The resource kinds, in ABI order.
    pub fn kinds(&self) -> &[String] {
        &self.layout.kinds
    }
}

/// Room for a policy's grants: `capacity` grants of two `n_kinds` vectors each.
pub struct GrantBuffer {
    n_kinds: usize,
    amounts: Vec<i64>,
    grants: Vec<AllotGrant>,
    raw: AllotGrants,
}

// SAFETY: the raw pointers point into heap buffers owned by the same value.
#[allow(unsafe_code)]
unsafe impl Send for GrantBuffer {}

impl GrantBuffer {
    /// Room for `capacity` grants over `n_kinds` kinds, zeroed.
    pub fn new(capacity: usize, n_kinds: usize) -> Self {
        let mut amounts = vec![0i64; capacity * 2 * n_kinds.max(1)];
        let base = amounts.as_mut_ptr();
        let stride = n_kinds.max(1);
        let mut grants: Vec<AllotGrant> = (0..capacity)
            .map(|i| AllotGrant {
                framework: u32::MAX,
                agent: u32::MAX,
                // SAFETY: offsets stay within `amounts` (2 * stride per grant).
                #[allow(unsafe_code)]
                resources: unsafe { base.add(2 * i * stride) },
                #[allow(unsafe_code)]
                reserved: unsafe { base.add((2 * i + 1) * stride) },
            })
            .collect();
        let raw = AllotGrants {
            capacity: capacity as u32,
            len: 0,
            grants: grants.as_mut_ptr(),
        };
        Self {
            n_kinds,
            amounts,
            grants,
            raw,
        }
    }

    /// The buffer for the C call.
    pub fn as_mut_ptr(&mut self) -> *mut AllotGrants {
        &mut self.raw
    }

    /// Reads the grants written for `snap` laid out as `c`, checking every index and amount, and attaching each
    /// agent's free port ranges to its first grant with unreserved resources.
    ///
    /// # Errors
    /// [`AbiError::BadGrant`] for a length beyond capacity, an index out of range or a negative amount.
    pub fn read(&self, snap: &Snapshot, c: &CSnapshot<'_>) -> Result<Vec<Grant>, AbiError> {
        let len = self.raw.len as usize;
        if len > self.grants.len() {
            return Err(AbiError::BadGrant(format!(
                "{len} grants for a capacity of {}",
                self.grants.len()
            )));
        }
        let stride = self.n_kinds.max(1);
        let n = self.n_kinds;
        let mut reader = indexed::GrantReader::new(snap, c.kinds());
        let mut out = Vec::with_capacity(len);
        for (i, g) in self.grants[..len].iter().enumerate() {
            let at = 2 * i * stride;
            let grant = reader
                .read(
                    i,
                    g.framework,
                    g.agent,
                    &self.amounts[at..at + n],
                    &self.amounts[at + stride..at + stride + n],
                )
                .map_err(|e| AbiError::BadGrant(e.to_string()))?;
            out.push(grant);
        }
        Ok(out)
    }
}

/// Room for a policy's revocations: `capacity` entries, each with [`MESSAGE_BYTES`] of message.
pub struct RevocationBuffer {
    messages: Vec<u8>,
    revocations: Vec<AllotRevocation>,
    raw: AllotRevocations,
}

// SAFETY: the raw pointers point into heap buffers owned by the same value.
#[allow(unsafe_code)]
unsafe impl Send for RevocationBuffer {}

impl RevocationBuffer {
    /// Room for `capacity` revocations, zeroed.
    pub fn new(capacity: usize) -> Self {
        let bytes = MESSAGE_BYTES as usize;
        let mut messages = vec![0u8; capacity * bytes];
        let base = messages.as_mut_ptr();
        let mut revocations: Vec<AllotRevocation> = (0..capacity)
            .map(|i| AllotRevocation {
                task: u32::MAX,
                // SAFETY: offsets stay within `messages` (MESSAGE_BYTES per entry).
                #[allow(unsafe_code)]
                message: unsafe { base.add(i * bytes) }.cast(),
            })
            .collect();
        let raw = AllotRevocations {
            capacity: capacity as u32,
            len: 0,
            revocations: revocations.as_mut_ptr(),
        };
        Self {
            messages,
            revocations,
            raw,
        }
    }

    /// The buffer for the C call.
    pub fn as_mut_ptr(&mut self) -> *mut AllotRevocations {
        &mut self.raw
    }

    /// Reads the revocations written over a snapshot of `n_tasks` tasks; a message runs to its first NUL (or
    /// the whole buffer), invalid UTF-8 replaced.
    ///
    /// # Errors
    /// [`AbiError::BadRevocation`] for a length beyond capacity or a task index out of range.
    pub fn read(&self, n_tasks: usize) -> Result<Vec<Revocation>, AbiError> {
        let len = self.raw.len as usize;
        if len > self.revocations.len() {
            return Err(AbiError::BadRevocation(format!(
                "{len} revocations for a capacity of {}",
                self.revocations.len()
            )));
        }
        let bytes = MESSAGE_BYTES as usize;
        self.revocations[..len]
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let m = &self.messages[i * bytes..(i + 1) * bytes];
                let end = m.iter().position(|&b| b == 0).unwrap_or(bytes);
                let message = String::from_utf8_lossy(&m[..end]).into_owned();
                indexed::read_revocation(i, r.task, message, n_tasks)
                    .map_err(|e| AbiError::BadRevocation(e.to_string()))
            })
            .collect()
    }
}

/// A native policy library, loaded and checked.
#[derive(Clone)]
pub struct NativePolicy {
    _lib: Arc<libloading::Library>,
    name: String,
    version: u32,
    allocate: AllocateFn,
    revoke: Option<RevokeFn>,
}

impl std::fmt::Debug for NativePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativePolicy")
            .field("name", &self.name)
            .finish()
    }
}

impl NativePolicy {
    /// Loads the library at `path` and checks its ABI version (one of [`SUPPORTED_VERSIONS`]); a library of
    /// version 2 may export `allot_policy_revoke`.
    ///
    /// Loading runs the library's initialisers: only load libraries you trust.
    ///
    /// # Errors
    /// [`AbiError::Load`] if it cannot be opened or lacks a symbol; [`AbiError::Version`] for another ABI.
    #[allow(unsafe_code)]
    pub fn load(path: &Path) -> Result<Self, AbiError> {
        let err = |m: String| AbiError::Load {
            path: path.display().to_string(),
            message: m,
        };
        // SAFETY: loading runs foreign initialisers; native policies are trusted code by contract.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| err(e.to_string()))?;
        // SAFETY: the symbols have the types `allot_policy.h` declares.
        let (version, name, allocate) = unsafe {
            let v: libloading::Symbol<'_, AbiVersionFn> = lib
                .get(b"allot_policy_abi_version\0")
                .map_err(|e| err(e.to_string()))?;
            let n: libloading::Symbol<'_, NameFn> = lib
                .get(b"allot_policy_name\0")
                .map_err(|e| err(e.to_string()))?;
            let a: libloading::Symbol<'_, AllocateFn> = lib
                .get(b"allot_policy_allocate\0")
                .map_err(|e| err(e.to_string()))?;
            (*v, *n, *a)
        };
        // SAFETY: calling the library's exports as declared.
        let found = unsafe { version() };
        if !SUPPORTED_VERSIONS.contains(&found) {
            return Err(AbiError::Version { found });
        }
        // SAFETY: the symbol has the type `allot_policy.h` declares; optional since version 2.
        let revoke = (found >= 2)
            .then(|| {
                unsafe { lib.get::<RevokeFn>(b"allot_policy_revoke\0") }
                    .ok()
                    .map(|f| *f)
            })
            .flatten();
        let name_ptr = unsafe { name() };
        let name = if name_ptr.is_null() {
            "unnamed".to_string()
        } else {
            // SAFETY: a NUL-terminated static string, as the ABI requires.
            unsafe { std::ffi::CStr::from_ptr(name_ptr) }
                .to_string_lossy()
                .into_owned()
        };
        Ok(Self {
            _lib: Arc::new(lib),
            name,
            version: found,
            allocate,
            revoke,
        })
    }

    /// The name the library reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ABI version the library reports (1 or 2).
    pub fn abi_version(&self) -> u32 {
        self.version
    }

    /// Whether the library can preempt: it exports `allot_policy_revoke` (ABI version 2).
    pub fn revokes(&self) -> bool {
        self.revoke.is_some()
    }

    /// The tasks the library revokes on `snap` (preemption): nothing when the snapshot has no preemption
    /// settings or the library has no `allot_policy_revoke`.
    ///
    /// # Errors
    /// [`AbiError::Code`] for an error code from the policy; [`AbiError::BadRevocation`] for a task index
    /// beyond the snapshot's or more revocations than room.
    #[allow(unsafe_code)]
    pub fn revoke(&self, snap: &Snapshot) -> Result<Vec<Revocation>, AbiError> {
        let (Some(revoke), Some(_)) = (self.revoke, snap.preemption) else {
            return Ok(Vec::new());
        };
        let c = CSnapshot::new(snap, self.version);
        let mut buf = RevocationBuffer::new(snap.tasks.len());
        // SAFETY: both pointers are valid for the call and the library is loaded.
        match unsafe { revoke(c.as_ptr(), buf.as_mut_ptr()) } {
            OK => buf.read(snap.tasks.len()),
            code => Err(AbiError::Code(code)),
        }
    }

    /// Runs one cycle over `snap`.
    ///
    /// # Errors
    /// [`AbiError::Code`] for an error code from the policy; [`AbiError::BadGrant`] for malformed grants.
    #[allow(unsafe_code)]
    pub fn allocate(&self, snap: &Snapshot) -> Result<Vec<Grant>, AbiError> {
        let c = CSnapshot::new(snap, self.version);
        let mut capacity = snap.agents.len() * 4 + 64;
        loop {
            let mut buf = GrantBuffer::new(capacity, c.kinds().len());
            // SAFETY: both pointers are valid for the call and the library is loaded.
            let code = unsafe { (self.allocate)(c.as_ptr(), buf.as_mut_ptr()) };
            match code {
                OK => return buf.read(snap, &c),
                ERR_CAPACITY if capacity < snap.agents.len() * (snap.roles.len() + 1) + 64 => {
                    capacity = snap.agents.len() * (snap.roles.len() + 1) + 64;
                }
                code => return Err(AbiError::Code(code)),
            }
        }
    }
}

// SAFETY: the library stays loaded while any copy lives (Arc); the exported functions are pure per the ABI.
#[allow(unsafe_code)]
unsafe impl Send for NativePolicy {}
#[allow(unsafe_code)]
unsafe impl Sync for NativePolicy {}
