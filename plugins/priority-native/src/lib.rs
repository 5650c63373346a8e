//! `liballot_priority_native.so`: the built-in priority policy as a native policy library. It decides on the
//! host's C snapshot in place (`allot_drf::Priority` is an `IndexedPolicy`).
allot_policy_abi::export_policy!(indexed allot_drf::Priority, c"priority");
