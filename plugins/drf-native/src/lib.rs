//! `liballot_drf_native.so`: the built-in DRF policy as a native policy library.
allot_policy_abi::export_policy!(allot_drf::Drf, c"drf");
