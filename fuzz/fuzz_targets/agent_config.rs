#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_agent::fuzz_support::agent_config(data));
