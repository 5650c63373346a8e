//! `cargo fuzz run executor_call`: see `allot_tests::fuzz::executor_call`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = allot_tests::fuzz::executor_call(data);
});
