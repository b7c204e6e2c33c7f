use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tiercast::cli::main().await
}
