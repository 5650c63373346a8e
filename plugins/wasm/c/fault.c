/*
 * Misbehaving WASM policies, the fixtures of the containment tests (tests/tests/policy.rs and
 * plugins/wasm-host/tests). Built by plugins/wasm/build.sh once per fault with -DFAULT_<NAME>.
 *
 * With one framework in the snapshot each behaves (every agent whole to the first framework that is not
 * filtered from it), so it passes the allocator's trial at activation; with two or more it misbehaves:
 *   FAULT_TRAP      executes `unreachable`;
 *   FAULT_LOOP      never returns;
 *   FAULT_OOM       allocates until the host's memory cap stops it;
 *   FAULT_GARBAGE   names framework index 9999;
 *   FAULT_ERROR     returns err("fault injected");
 *   FAULT_OVERCOMMIT grants twice what each agent has;
 *   FAULT_COLUMNS   returns one amount fewer than its grants need;
 *   FAULT_REVOCATION allocates as told above, and revokes task index 9999 whenever the host asks.
 * Only FAULT_REVOCATION revokes anything.
 */
#include "policy.h"

#include <stdlib.h>

#if defined(FAULT_TRAP)
#define NAME "fault-trap"
#elif defined(FAULT_LOOP)
#define NAME "fault-loop"
#elif defined(FAULT_OOM)
#define NAME "fault-oom"
#elif defined(FAULT_GARBAGE)
#define NAME "fault-garbage"
#elif defined(FAULT_ERROR)
#define NAME "fault-error"
#elif defined(FAULT_OVERCOMMIT)
#define NAME "fault-overcommit"
#elif defined(FAULT_COLUMNS)
#define NAME "fault-columns"
#elif defined(FAULT_REVOCATION)
#define NAME "fault-revocation"
#else
#error "define one FAULT_*"
#endif

void exports_allot_policy_allocator_name(policy_string_t *ret) { policy_string_dup(ret, NAME); }

bool exports_allot_policy_allocator_allocate(allot_policy_types_snapshot_t *s, allot_policy_types_grants_t *ret,
                                             policy_string_t *err) {
    int misbehave = s->frameworks.len >= 2;
    int factor = 1;
    if (misbehave) {
#if defined(FAULT_TRAP)
        __builtin_trap();
#elif defined(FAULT_LOOP)
        volatile unsigned long x = 0;
        for (;;) x++;
#elif defined(FAULT_OOM)
        for (;;) {
            volatile char *p = malloc(1 << 20);
            if (!p) __builtin_trap();
            p[0] = 1;
        }
#elif defined(FAULT_ERROR)
        policy_string_dup(err, "fault injected");
        return false;
#elif defined(FAULT_OVERCOMMIT)
        factor = 2;
#endif
    }
    (void)err;
    size_t nk = s->kinds.len, na = s->agents.total.len, n = 0;
    uint32_t *out_fw = calloc(na + 1, sizeof(uint32_t)), *out_agent = calloc(na + 1, sizeof(uint32_t));
    int64_t *out = calloc(2 * nk * na + 1, sizeof(int64_t));
    for (uint32_t a = 0; a < na; a++) {
        for (uint32_t f = 0; f < s->frameworks.len; f++) {
            const allot_policy_types_framework_t *fw = &s->frameworks.ptr[f];
            int filtered = 0;
            for (uint32_t i = fw->filtered.start; i < fw->filtered.end; i++)
                if (s->filtered.ptr[i] == a) filtered = 1;
            if (filtered) continue;
#if defined(FAULT_GARBAGE)
            out_fw[n] = misbehave ? 9999u : f;
#else
            out_fw[n] = f;
#endif
            out_agent[n] = a;
            /* The agent's whole available resources (times `factor`), nothing reserved. */
            const int64_t *available = &s->amounts.ptr[s->agents.available.ptr[a]];
            for (size_t k = 0; k < nk; k++) out[2 * nk * n + k] = available[k] * factor;
            n++;
            break;
        }
    }
    ret->framework = (policy_list_u32_t){out_fw, n};
    ret->agent = (policy_list_u32_t){out_agent, n};
    ret->amounts = (policy_list_s64_t){out, 2 * nk * n};
#if defined(FAULT_COLUMNS)
    if (misbehave && ret->amounts.len > 0) ret->amounts.len--;
#endif
    return true;
}

bool exports_allot_policy_allocator_revoke(allot_policy_types_snapshot_t *s,
                                           exports_allot_policy_allocator_list_revocation_t *ret,
                                           policy_string_t *err) {
    (void)s;
    (void)err;
    ret->ptr = NULL;
    ret->len = 0;
#if defined(FAULT_REVOCATION)
    ret->ptr = calloc(1, sizeof(*ret->ptr));
    ret->ptr[0].task = 9999u;
    policy_string_dup(&ret->ptr[0].message, "fault injected");
    ret->len = 1;
#endif
    return true;
}
