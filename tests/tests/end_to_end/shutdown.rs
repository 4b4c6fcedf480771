//! Stopping a `quark worker` process: a second Ctrl-C exits at once, and one deadline bounds the
//! whole shutdown. The worker holds a job that sleeps for minutes and ignores cancellation.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;

fn quark(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quark-cli"));
    command
        .current_dir(dir)
        .env("QUARK_DATABASE_URL", "sqlite://quark.db")
        .env_remove("QUARK_OUTPUT")
        .kill_on_drop(true);
    command
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quark-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads stdout lines until one contains `needle`, within 30 s.
async fn wait_for_line(lines: &mut Lines<BufReader<ChildStdout>>, needle: &str) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(needle) {
                return;
            }
        }
        panic!("stdout ended before `{needle}`");
    })
    .await
    .unwrap_or_else(|_| panic!("no `{needle}` within 30 s"));
}

fn interrupt(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Starts a worker with `shutdown_timeout` and gives it a job that lingers for ten minutes;
/// returns once the job runs.
async fn worker_in_the_middle_of_a_job(
    dir: &Path,
    shutdown_timeout: &str,
    output: &str,
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut worker = quark(dir)
        .args([
            "worker",
            "--shutdown-timeout",
            shutdown_timeout,
            "-o",
            output,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    wait_for_line(&mut lines, "serving").await;
    let enqueued = quark(dir)
        .args(["job", "enqueue", "linger", "--input", "600", "-o", "json"])
        .output()
        .await
        .unwrap();
    assert!(
        enqueued.status.success(),
        "{}",
        String::from_utf8_lossy(&enqueued.stderr)
    );
    let enqueued: serde_json::Value = serde_json::from_slice(&enqueued.stdout).unwrap();
    let id = enqueued["job_id"]
        .as_i64()
        .expect("a script reads the job's id");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = quark(dir)
            .args(["job", "show", &id.to_string(), "-o", "json"])
            .output()
            .await
            .unwrap();
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        if shown["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the job never ran: {shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (worker, lines)
}

#[tokio::test]
async fn a_second_ctrl_c_exits_at_once() {
    let _turn = crate::support::one_at_a_time().await;
    let dir = scratch("second-ctrl-c");
    let (mut worker, mut lines) = worker_in_the_middle_of_a_job(&dir, "10m", "table").await;
    interrupt(&worker);
    wait_for_line(&mut lines, "Ctrl-C again to exit at once").await;
    let second = Instant::now();
    interrupt(&worker);
    let status = tokio::time::timeout(Duration::from_secs(10), worker.wait())
        .await
        .expect("exits at once, not after the 10-minute job or timeout")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(second.elapsed() < Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_shutdown_ends_at_its_timeout() {
    let _turn = crate::support::one_at_a_time().await;
    let dir = scratch("shutdown-timeout");
    let (mut worker, mut lines) = worker_in_the_middle_of_a_job(&dir, "1s", "jsonl").await;
    let first = Instant::now();
    interrupt(&worker);
    wait_for_line(&mut lines, r#""shutdown_timeout":"1s"}"#).await;
    let status = tokio::time::timeout(Duration::from_secs(15), worker.wait())
        .await
        .expect("stops within its timeout (and the hand-back's few seconds)")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        first.elapsed() < Duration::from_secs(7),
        "{:?}",
        first.elapsed()
    );
    let _ = std::fs::remove_dir_all(dir);
}
