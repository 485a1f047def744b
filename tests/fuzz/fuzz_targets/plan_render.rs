#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| volt_fuzz::plan_render::run(data));
