//! What the modules of this binary share.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Barrier;

/// Meetings by key: how many are to meet, how many have arrived, and the barrier they wait at.
#[allow(clippy::type_complexity)]
static MEETINGS: Mutex<BTreeMap<String, (usize, usize, Arc<Barrier>)>> =
    Mutex::new(BTreeMap::new());

/// Makes the first `n` callers of [`meet`] with `key` wait for one another. A test of a limit on
/// what runs at once uses it to make the overlap the limit allows certain, not left to timing, and
/// so asserts the exact figure. Keys are unique per test and backend (both backends' tests run at
/// the same time in this process).
pub(crate) fn arrange_meeting(key: &str, n: usize) {
    MEETINGS
        .lock()
        .unwrap()
        .insert(key.to_string(), (n, 0, Arc::new(Barrier::new(n))));
}

/// If a meeting was arranged for `key` and this is one of its first `n` arrivals, waits until all
/// `n` are here. Bounded: after 10 s in vain it goes on alone, and the test's count of what ran at
/// once comes out short of `n`, so the test fails instead of hanging.
pub(crate) async fn meet(key: &str) {
    let barrier = MEETINGS
        .lock()
        .unwrap()
        .get_mut(key)
        .and_then(|(n, arrived, barrier)| {
            *arrived += 1;
            (*arrived <= *n).then(|| Arc::clone(barrier))
        });
    if let Some(barrier) = barrier {
        let _ = tokio::time::timeout(Duration::from_secs(10), barrier.wait()).await;
    }
}

/// What a test that timed out waiting for `instance` shows: its history, and on PostgreSQL the
/// queue's rows for it (payloads left out), so that a hang says where it stands.
pub(crate) async fn where_it_stands(
    t: &quark_history::testing::TestStore,
    instance: &str,
) -> String {
    use quark_history::HistoryRange;
    let mut out = String::new();
    match t.store.read_history(instance, HistoryRange::All).await {
        Ok(events) => {
            for e in events {
                out.push_str(&format!("  {} {:?} {:?}\n", e.seq, e.recorded_at, e.event));
            }
        }
        Err(e) => out.push_str(&format!("  history unreadable: {e}\n")),
    }
    if let quark_history::testing::Raw::Postgres(pool) = t.raw() {
        let rows: Result<Vec<String>, _> = sqlx::query_scalar(
            "SELECT (to_jsonb(t) - 'payload')::text FROM tasks t WHERE instance_id = $1 ORDER BY id",
        )
        .bind(instance)
        .fetch_all(pool)
        .await;
        match rows {
            Ok(rows) => out.extend(rows.into_iter().map(|r| format!("  task {r}\n"))),
            Err(e) => out.push_str(&format!("  tasks unreadable: {e}\n")),
        }
    }
    out
}
