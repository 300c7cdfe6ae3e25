//! Policy parsing (and, when it parses, deciding for a few identities): never a panic; errors located.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tollgate_fuzz::policy_parse(data);
});
