//! The bank transfer examples under fire, in one test binary: the saga between two schemas
//! (`saga`), and the two-phase commit between two servers (`two_phase`).

mod saga;
mod two_phase;

use std::process::Stdio;
use std::time::Duration;

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

/// Runs three `bank-worker`s (with `participants`, the two-phase variant) and, every 300–700 ms,
/// kills one with SIGKILL and starts another, until all `transfers` have ended (at most 300 s;
/// `check` runs at every round and may fail the test). Returns the survivors (killed when
/// dropped) and how many were killed.
async fn kill_workers_until_done(
    t: &quark_history::testing::TestStore,
    url: &str,
    participants: Option<&str>,
    transfers: usize,
    dice: &mut Dice,
    mut check: impl FnMut(),
) -> (Vec<Child>, usize) {
    let mut workers: Vec<Child> = (0..3).map(|_| spawn_worker(url, participants)).collect();
    let mut kills = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while closed_instances(t).await < transfers {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {transfers} transfers ended in 300 s",
            closed_instances(t).await
        );
        check();
        // The chaos cadence, not a synchronization: a worker dies every 300–700 ms.
        tokio::time::sleep(Duration::from_millis(300 + dice.roll(400))).await;
        let victim = dice.roll(workers.len() as u64) as usize;
        let mut dead = workers.swap_remove(victim);
        dead.start_kill().expect("SIGKILL a worker");
        dead.wait().await.unwrap();
        kills += 1;
        workers.push(spawn_worker(url, participants));
    }
    (workers, kills)
}
