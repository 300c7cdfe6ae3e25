//! `tollgate-token`: see the library crate for everything; this only wires the real process.

use std::process::ExitCode;

fn main() -> ExitCode {
    tollgate_token::run()
}
