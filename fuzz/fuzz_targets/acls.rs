//! `cargo fuzz run acls`: see `allot_tests::fuzz::acls`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = allot_tests::fuzz::acls(data);
});
