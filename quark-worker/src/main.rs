//! The stock `quark` binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    quark_worker::cli::main().await
}
