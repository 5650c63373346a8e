//! `liballot_drf_native.so`: the built-in DRF policy as a native policy library. It decides on the host's C
//! snapshot in place (`allot_drf::Drf` is an `IndexedPolicy`).
allot_policy_abi::export_policy!(indexed allot_drf::Drf, c"drf");
