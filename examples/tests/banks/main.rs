//! The bank transfer examples under fire, in one test binary: the saga between two schemas
//! (`saga`), and the two-phase commit between two servers (`two_phase`).

mod saga;
mod two_phase;

use std::process::Stdio;

use quark_history::{InstanceFilter, InstanceStatus};
use tokio::process::{Child, Command};

/// A `bank-worker` on the engine's database at `url`; with `participants`
/// (`bank_a=...,bank_b=...`), the two-phase commit variant. Killed when dropped.
fn spawn_worker(url: &str, participants: Option<&str>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bank-worker"));
    command
        .kill_on_drop(true)
        .env("QUARK_DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match participants {
        Some(p) => command.env("QUARK_PARTICIPANTS", p),
        None => command.env_remove("QUARK_PARTICIPANTS"),
    };
    command.spawn().expect("start a bank-worker")
}

/// xorshift: a reproducible sequence.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// How many transfers ended, either way.
async fn closed_instances(t: &quark_history::testing::TestStore) -> usize {
    let mut n = 0;
    for status in [InstanceStatus::Completed, InstanceStatus::Failed] {
        n += t
            .store
            .list_instances(InstanceFilter {
                statuses: vec![status],
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len();
    }
    n
}
