#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_wire::fuzz_support::batch(data));
