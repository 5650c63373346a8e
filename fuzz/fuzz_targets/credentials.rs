//! `cargo fuzz run credentials`: see `allot_tests::fuzz::credentials`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = allot_tests::fuzz::credentials(data);
});
