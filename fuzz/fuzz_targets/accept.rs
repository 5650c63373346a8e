//! `cargo fuzz run accept`: see `allot_tests::fuzz::accept`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = allot_tests::fuzz::accept(data);
});
