//! `tollgate-broker`: thin entry point; everything lives in the library.

fn main() -> std::process::ExitCode {
    tollgate_broker::cli::main()
}
