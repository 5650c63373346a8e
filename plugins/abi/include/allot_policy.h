/*
 * allot_policy.h: the native allocation policy ABI of Allot, version 2.
 *
 * A native policy is a shared library (cdylib) exporting three functions, and optionally a fourth:
 *
 *   uint32_t    allot_policy_abi_version(void);   // must return ALLOT_POLICY_ABI_VERSION
 *   const char *allot_policy_name(void);          // NUL-terminated, static, e.g. "drf"
 *   int32_t     allot_policy_allocate(const allot_snapshot *snapshot, allot_grants *out);
 *   int32_t     allot_policy_revoke(const allot_snapshot *snapshot, allot_revocations *out);   // optional
 *
 * allot_policy_allocate is a pure function of the snapshot: it writes grants into `out` and returns 0, or
 * returns a non-zero error code. It must not keep pointers into the snapshot after it returns.
 *
 * allot_policy_revoke (preemption, new in version 2) is called after allot_policy_allocate on the same
 * snapshot, only when snapshot->preemption is set (the allocator runs with --preemption-grace and a framework
 * has been starved past it): it writes the tasks to end so that starved frameworks get their share back. A
 * library without it never preempts. The host checks every revocation (a task of the snapshot, once; of a
 * role above its weighted fair share or guarantee; never more than restores the starved roles' shares) and
 * drops refused ones; each accepted task is killed after its kill grace period and ends TASK_KILLED with
 * REASON_PREEMPTED.
 *
 * Version 1 (include/v1/allot_policy.h, frozen) is version 2 without the snapshot's trailing fields and
 * without allot_policy_revoke; the host keeps loading version-1 libraries and hands them the same snapshot
 * with abi_version 1 (they never read past `frameworks`).
 *
 * Resources are vectors of int64 thousandths (cpus in thousandths of a core, mem and disk in thousandths of a
 * MiB), one entry per resource kind in snapshot->kinds, in that order. Port ranges are not shown to policies:
 * the host attaches an agent's free ranges to the first grant on that agent with unreserved resources.
 *
 * The host validates every grant (indices, amounts within what is available, reservations, quota limits) and
 * drops invalid ones. A native policy runs inside the allocator process: it is trusted code. A crash in it
 * crashes the allocator; use a WASM policy for untrusted code.
 */
#ifndef ALLOT_POLICY_H
#define ALLOT_POLICY_H

#include <stdint.h>

#define ALLOT_POLICY_ABI_VERSION 2u

/* Bytes of host memory for each revocation's message, its NUL included. */
#define ALLOT_POLICY_MESSAGE_BYTES 256u

/* UTF-8 text, not NUL-terminated. */
typedef struct allot_str {
    const char *ptr;
    uint32_t len;
} allot_str;

/* Resources reserved for a role on an agent and still free. */
typedef struct allot_reservation {
    uint32_t role;              /* index into snapshot->roles */
    const int64_t *available;   /* [n_kinds] */
} allot_reservation;

typedef struct allot_agent {
    allot_str id;
    const int64_t *total;       /* [n_kinds], reserved included */
    const int64_t *available;   /* [n_kinds], unreserved and neither offered nor used */
    uint32_t n_reserved;
    const allot_reservation *reserved;
} allot_agent;

typedef struct allot_role {
    allot_str name;
    double weight;              /* > 0; DRF divides the dominant share by it */
    const int64_t *quota_limit; /* [n_kinds], -1 = no limit for that kind; NULL = no limit at all */
    const int64_t *allocation;  /* [n_kinds], offered and used */
} allot_role;

typedef struct allot_framework {
    allot_str id;
    uint32_t role;              /* index into snapshot->roles */
    int32_t priority;           /* higher first under a priority policy */
    uint64_t allocations;       /* offers received so far */
    const int64_t *allocation;  /* [n_kinds], offered and used */
    uint32_t n_filtered;
    const uint32_t *filtered;   /* sorted agent indices this framework must not be offered now */
} allot_framework;

/* The host's preemption settings (allocator flags --preemption-grace, --preemption-min-runtime). */
typedef struct allot_preemption {
    double grace_seconds;       /* how long a framework must have been starved before revocations for it */
    double min_runtime_seconds; /* tasks younger than this are never revoked (nor listed) */
} allot_preemption;

/* A running task a policy may revoke. */
typedef struct allot_task {
    allot_str id;
    allot_str framework;        /* its framework's ID (which need not be in snapshot->frameworks) */
    allot_str agent;            /* the ID of the agent it runs on */
    uint32_t role;              /* its framework's role: index into snapshot->roles */
    int32_t priority;           /* its framework's priority class */
    const int64_t *resources;   /* [n_kinds], reserved included */
    double running_seconds;     /* since it was launched */
} allot_task;

typedef struct allot_snapshot {
    uint32_t abi_version;       /* the version the library reported: 1 or 2 */
    uint32_t n_kinds;
    const allot_str *kinds;     /* resource kind names, sorted: e.g. "cpus", "disk", "mem" */
    const int64_t *total;       /* [n_kinds], the cluster's total: the denominator of every share */
    uint32_t n_agents;
    const allot_agent *agents;
    uint32_t n_roles;
    const allot_role *roles;
    uint32_t n_frameworks;
    const allot_framework *frameworks;
    /* Since version 2. */
    const int64_t *const *quota_guarantees; /* [n_roles]: role i's guarantee ([n_kinds], 0 where none) or NULL */
    const double *starved_seconds;          /* [n_frameworks]: how long each has wanted offers and got no CPUs */
    const allot_preemption *preemption;     /* NULL unless the host calls allot_policy_revoke this cycle */
    uint32_t n_tasks;
    const allot_task *tasks;                /* [n_tasks] revocable, sorted by framework then task ID */
} allot_snapshot;

/* One grant: offer `resources` (unreserved) and `reserved` (from the framework's role's reservation) of an
 * agent to a framework. Both arrays are host memory of n_kinds entries, zeroed, to be filled in. */
typedef struct allot_grant {
    uint32_t framework;         /* index into snapshot->frameworks */
    uint32_t agent;             /* index into snapshot->agents */
    int64_t *resources;
    int64_t *reserved;
} allot_grant;

typedef struct allot_grants {
    uint32_t capacity;          /* number of entries in `grants` */
    uint32_t len;               /* grants written: set by the policy, at most capacity */
    allot_grant *grants;
} allot_grants;

/* One revocation: end task snapshot->tasks[task], for the reason written into `message`. */
typedef struct allot_revocation {
    uint32_t task;              /* index into snapshot->tasks */
    char *message;              /* host memory of ALLOT_POLICY_MESSAGE_BYTES, zeroed: a NUL-terminated UTF-8 reason */
} allot_revocation;

typedef struct allot_revocations {
    uint32_t capacity;          /* number of entries in `revocations`: snapshot->n_tasks */
    uint32_t len;               /* revocations written: set by the policy, at most capacity */
    allot_revocation *revocations;
} allot_revocations;

/* Return codes of allot_policy_allocate and allot_policy_revoke. */
#define ALLOT_POLICY_OK 0
#define ALLOT_POLICY_ERR_INPUT 1     /* the snapshot is not understood */
#define ALLOT_POLICY_ERR_CAPACITY 2  /* more grants than out->capacity */
#define ALLOT_POLICY_ERR_PANIC 3     /* the policy failed internally */

#endif
