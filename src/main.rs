// mimalloc: glibc's malloc and free were a sixth of the daemon's samples in `tiercast bench`;
// with mimalloc the daemon spends about 10 % less CPU per message (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tiercast::cli::main().await
}
