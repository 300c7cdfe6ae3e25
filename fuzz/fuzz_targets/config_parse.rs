//! Broker config parsing: arbitrary TOML must give a `Config` or a located error, never a panic, and a
//! located error must point inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::config_parse(data);
});
