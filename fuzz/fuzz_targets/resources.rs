//! `cargo fuzz run resources`: see `allot_tests::fuzz::resources`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = allot_tests::fuzz::resources(data);
});
