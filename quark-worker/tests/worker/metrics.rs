//! The metrics and health endpoint of a running worker, read over HTTP as Prometheus would: the
//! counters move by exactly what the worker did, `/healthz` answers, and `/readyz` follows the
//! store (current schema: ready; a migration missing or the database gone: not ready).
//!
//! The recorder is process-wide and every test of this binary runs in this process, so each test
//! reads only series labelled with a queue of its own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::{TestStore, eventually};
use quark_history::{Destination, OutboxMessage};
use quark_worker::{OutboxRelay, RunningWorker, Worker};
use quark_workflow::{ActivityContext, ActivityError, Client, JobOptions, Registry, activity};

quark_history::backend_tests!(
    it_serves_counters_that_move_by_what_the_worker_did,
    it_is_ready_only_while_every_migration_is_applied,
);

#[activity]
async fn metered(_ctx: ActivityContext, n: u32) -> Result<u32, ActivityError> {
    Ok(n)
}

#[activity]
async fn doomed(_ctx: ActivityContext, _n: u32) -> Result<u32, ActivityError> {
    Err(ActivityError::message("no such account").terminal())
}

#[activity(retry(max_attempts = 3, initial = "1s", max = "1s"))]
async fn wobbly(ctx: ActivityContext, n: u32) -> Result<u32, ActivityError> {
    if ctx.attempt() < 2 {
        return Err(ActivityError::message("try me again"));
    }
    Ok(n)
}

/// A queue no other test uses, so that its series are this test's alone.
fn own_queue(t: &TestStore) -> String {
    let unique = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "metrics-{}-{}",
        t.store.backend(),
        &unique[unique.len() - 8..]
    )
}

async fn start(t: &TestStore, queue: &str) -> RunningWorker {
    let running = Worker::builder()
        .store(Arc::clone(&t.store))
        .queues([queue])
        .poll_interval(Duration::from_millis(10))
        // The clock is virtual and jumps while tasks run; a long lease keeps every claim.
        .lease(Duration::from_secs(3600))
        .metrics_addr("127.0.0.1:0".parse().unwrap())
        .outbox(
            OutboxRelay::new()
                .poll_interval(Duration::from_millis(10))
                .callback("metrics-sink", |_| async { Ok(()) }),
        )
        .workflows(
            Registry::new()
                .register(metered)
                .register(doomed)
                .register(wobbly),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    assert!(running.metrics_addr().is_some_and(|a| a.port() != 0));
    running
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The Prometheus text of `/metrics`, as a map from each series (`name{labels}`, as rendered) to
/// its value.
pub(crate) async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of the series named `name` that carry every label of `labels`.
pub(crate) fn value(scraped: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    scraped
        .iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn it_serves_counters_that_move_by_what_the_worker_did(t: &TestStore) {
    let queue = own_queue(t);
    let running = start(t, &queue).await;
    let addr = running.metrics_addr().unwrap();
    let before = scrape(addr).await;
    let job = [("queue", queue.as_str()), ("kind", "job")];
    let settled = |outcome| {
        [
            ("queue", queue.as_str()),
            ("kind", "job"),
            ("outcome", outcome),
        ]
    };
    let moved = |now: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]| {
        value(now, name, labels) - value(&before, name, labels)
    };

    let client = Client::new(Arc::clone(&t.store));
    let options = JobOptions::default().queue(&queue);
    client
        .enqueue_many::<metered>([1, 2, 3], options.clone())
        .await
        .unwrap();
    doomed::enqueue(&client, 4, options.clone()).await.unwrap();
    wobbly::enqueue(&client, 5, options).await.unwrap();
    let sink = || OutboxMessage::new(Destination::callback("metrics-sink"), b"x".to_vec());
    t.store.send(vec![sink(), sink()]).await.unwrap();

    // Three jobs complete at once, one dies, one fails once and completes after its backoff: six
    // claims, four completions, one failure, one retry.
    t.advance_until(
        Duration::from_millis(500),
        "every job settled",
        async || {
            let now = scrape(addr).await;
            moved(&now, "quark_tasks_settled_total", &settled("completed")) >= 4.0
                && moved(&now, "quark_tasks_settled_total", &settled("failed")) >= 1.0
                && running.worker().metrics().outbox_sent >= 2
        },
    )
    .await;
    let now = scrape(addr).await;
    assert_eq!(moved(&now, "quark_tasks_claimed_total", &job), 6.0);
    assert_eq!(
        moved(&now, "quark_tasks_settled_total", &settled("completed")),
        4.0
    );
    assert_eq!(
        moved(&now, "quark_tasks_settled_total", &settled("failed")),
        1.0
    );
    assert_eq!(
        moved(&now, "quark_tasks_settled_total", &settled("retried")),
        1.0
    );
    // One queue wait per claim, one attempt time per attempt.
    assert_eq!(moved(&now, "quark_queue_wait_seconds_count", &job), 6.0);
    assert_eq!(moved(&now, "quark_activity_seconds_count", &job), 6.0);
    assert!(value(&now, "quark_commit_seconds_count", &[("kind", "job")]) >= 6.0);
    assert!(now.keys().any(|s| s.starts_with("quark_slots_in_use{")));
    // The outbox series have no queue: other tests' workers in this process add to them too.
    let sent = [("outcome", "sent")];
    assert!(moved(&now, "quark_outbox_messages_total", &sent) >= 2.0);
    assert!(moved(&now, "quark_outbox_delivery_lag_seconds_count", &[]) >= 2.0);

    // The worker's own snapshot saw the same.
    let snapshot = running.worker().metrics();
    assert_eq!(
        (
            snapshot.claimed,
            snapshot.completed,
            snapshot.failed,
            snapshot.retried,
            snapshot.outbox_sent,
        ),
        (6, 4, 1, 1, 2),
        "{snapshot:?}"
    );

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(get(addr, "/nothing").await.0, 404);
    running.shutdown().await;
}

async fn it_is_ready_only_while_every_migration_is_applied(t: &TestStore) {
    let queue = own_queue(t);
    let running = start(t, &queue).await;
    let addr = running.metrics_addr().unwrap();
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));

    // As if the latest migration had failed: it is recorded as not applied.
    let latest = "version = (SELECT MAX(version) FROM _sqlx_migrations)";
    t.execute(&format!(
        "UPDATE _sqlx_migrations SET success = false WHERE {latest}"
    ))
    .await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("migrations not applied"), "{body}");
    t.execute(&format!(
        "UPDATE _sqlx_migrations SET success = true WHERE {latest}"
    ))
    .await;
    assert_eq!(get(addr, "/readyz").await.0, 200);

    // PostgreSQL: the database goes away under the worker.
    if let Some(url) = t.database_url() {
        use sqlx::{Connection, Executor};
        let name = url.rsplit('/').next().unwrap().split('?').next().unwrap();
        let admin = quark_history::testing::postgres_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        conn.execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .await
        .unwrap();
        conn.close().await.unwrap();
        eventually("the worker is not ready", async || {
            get(addr, "/readyz").await.0 == 503
        })
        .await;
        // Alive all the same: a restart would not bring the database back.
        assert_eq!(get(addr, "/healthz").await.0, 200);
        // Nothing to deregister from: stopped without a shutdown.
        drop(running);
        return;
    }
    running.shutdown().await;
}
