//! `cargo fuzz run policy_output`: see `allot_tests::fuzz::policy_output`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = allot_tests::fuzz::policy_output(data);
});
