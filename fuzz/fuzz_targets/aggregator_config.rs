#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_aggregator::fuzz_support::aggregator_config(data));
