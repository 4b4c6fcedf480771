//! The `quark` command line built around a registry, as a user builds theirs with
//! `quark_worker::cli::main_with`: the shutdown tests run it as a worker and send it signals.

use std::time::Duration;

use quark_workflow::{ActivityContext, ActivityError, activity};

/// Sleeps `secs` seconds, deaf to cancellation: a task a shutdown has to wait for.
#[activity(retry(max_attempts = 1))]
async fn linger(_ctx: ActivityContext, secs: u64) -> Result<u64, ActivityError> {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    Ok(secs)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    quark_worker::cli::main_with(quark_tests::registry().register(linger)).await
}
