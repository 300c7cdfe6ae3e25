//! `tollgate-broker`: thin entry point; everything lives in the library.

/// mimalloc instead of glibc's malloc: the proxy allocates and frees across worker threads on every
/// request, and glibc's arenas spent ~20 % of the broker's CPU under load doing it (`perf`, see
/// docs/benchmarks.md finding 12).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tollgate_broker::cli::main()
}
