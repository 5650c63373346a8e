//! `liballot_priority_native.so`: the built-in priority policy as a native policy library.
allot_policy_abi::export_policy!(allot_drf::Priority, c"priority");
