#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_parsers::fuzz_support::greedy(data));
