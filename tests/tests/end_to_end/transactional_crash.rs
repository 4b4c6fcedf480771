//! A transactional activity's database effects happen exactly once, whatever point its worker
//! crashes at: before the activity's write, after it, before the transaction commits and after.
//!
//! For each point, on PostgreSQL with real worker processes: a crash-worker runs the activity's
//! first attempt and aborts at that point (`QUARK_CRASH_AT`; the process dies of SIGABRT, with no
//! cleanup). A second worker takes over when the lease runs out. The ledger row the activity
//! writes, and the outbox message it sends, must then exist exactly once: written by the second
//! attempt when the crash came before the commit (the first attempt's write was rolled back), and
//! by the first when it came after (the activity never runs again).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use quark_history::{HistoryEvent, HistoryRange, InstanceStatus, OutboxFilter};
use quark_tests::CrashAt;
use quark_workflow::Client;
use tokio::process::{Child, Command};

fn spawn_worker(url: &str, crash_at: Option<CrashAt>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crash-worker"));
    command
        // Killed when dropped, so that a failing test leaves no worker behind.
        .kill_on_drop(true)
        .env("QUARK_DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match crash_at {
        Some(point) => command.env("QUARK_CRASH_AT", point.name()),
        None => command.env_remove("QUARK_CRASH_AT"),
    };
    command.spawn().expect("start a crash-worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_activity_writes_once_whatever_point_its_worker_crashes_at() {
    let Some(_one_at_a_time) = crate::support::slow_suite("transactional crash points").await
    else {
        return;
    };
    let Some(t) = quark_history::testing::postgres().await else {
        return;
    };
    let url = t.database_url().unwrap();
    t.execute(quark_tests::LEDGER_DDL).await;
    let client = Client::new(Arc::clone(&t.store));
    for point in CrashAt::ALL {
        let entry = format!("entry-{}", point.name());
        let handle = quark_tests::post_once::start(&client, &entry, entry.clone())
            .await
            .unwrap();

        let mut first = spawn_worker(&url, Some(point));
        let pid = first.id().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(60), first.wait())
            .await
            .expect("the crash-worker crashes within a minute")
            .unwrap();
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(6), "{point:?}: the worker aborted");
        }
        let record = t.store.get_instance(&entry).await.unwrap().unwrap();
        let ledger = format!("SELECT count(*) FROM ledger WHERE entry = '{entry}'");
        if point == CrashAt::AfterCommit {
            // The result committed before the crash; the orchestration may not have moved on.
            assert_eq!(t.scalar(&ledger).await, 1, "{point:?}");
        } else {
            assert_eq!(record.status, InstanceStatus::Running, "{point:?}");
            assert_eq!(t.scalar(&ledger).await, 0, "{point:?}: rolled back");
        }

        let _second = spawn_worker(&url, None);
        let attempt = tokio::time::timeout(Duration::from_secs(60), handle.result())
            .await
            .expect("the orchestration completes once a worker takes over")
            .unwrap();
        let expected_attempt = if point == CrashAt::AfterCommit { 1 } else { 2 };
        assert_eq!(
            attempt, expected_attempt,
            "{point:?}: the attempt that committed"
        );

        // Exactly once: one row, from the attempt that committed, in the process that ran it.
        assert_eq!(t.scalar(&ledger).await, 1, "{point:?}: ledger rows");
        let by_first = format!(
            "SELECT count(*) FROM ledger WHERE entry = '{entry}' AND pid = {pid} AND attempt = 1"
        );
        let committed_by_first = i64::from(point == CrashAt::AfterCommit);
        assert_eq!(t.scalar(&by_first).await, committed_by_first, "{point:?}");
        // One message, and one completion in the history.
        let messages = t.store.list_outbox(OutboxFilter::default()).await.unwrap();
        let sent = messages
            .iter()
            .filter(|m| m.payload == format!("\"{entry}\"").as_bytes())
            .count();
        assert_eq!(sent, 1, "{point:?}: outbox messages");
        let history = t
            .store
            .read_history(&entry, HistoryRange::All)
            .await
            .unwrap();
        let completions = history
            .iter()
            .filter(|e| matches!(e.event, HistoryEvent::ActivityCompleted { .. }))
            .count();
        assert_eq!(completions, 1, "{point:?}: activity completions");
    }
    t.cleanup().await;
}
