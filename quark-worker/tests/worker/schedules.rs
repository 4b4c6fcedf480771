//! Cron schedules on the worker: exactly one job per tick with several workers racing, the
//! missed-tick policies after downtime, and refusal of bad schedules at registration. Time is the
//! store's manual clock; every wait is on a condition with a deadline.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    Clock, ManualClock, PostgresStore, QueueStats, SqliteStore, Store, StoreConfig, Timestamp,
};
use quark_worker::{RunningWorker, Worker};
use quark_workflow::{
    ActivityContext, ActivityError, Client, JobOptions, Missed, Schedule, ScheduleError, Upserted,
    activity,
};

quark_history::backend_tests!(
    it_enqueues_exactly_one_job_per_tick_with_several_workers_racing,
    it_skips_the_ticks_missed_during_downtime,
    it_fires_a_tick_that_is_late_by_less_than_the_grace_after_a_restart,
    it_backfills_at_most_n_missed_ticks_after_downtime,
    it_refuses_bad_schedules_at_registration_and_registers_idempotently,
);

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Per test (by tag): its clock, and the clock time of every job run.
#[derive(Default)]
struct Book {
    clocks: BTreeMap<String, ManualClock>,
    runs: BTreeMap<String, Vec<Timestamp>>,
}

fn book() -> &'static Mutex<Book> {
    static BOOK: OnceLock<Mutex<Book>> = OnceLock::new();
    BOOK.get_or_init(Mutex::default)
}

fn runs(tag: &str) -> Vec<Timestamp> {
    book()
        .lock()
        .unwrap()
        .runs
        .get(tag)
        .cloned()
        .unwrap_or_default()
}

/// Records its run at the test clock's time: the clock stands still while a tick's job runs.
#[activity]
async fn on_tick(_ctx: ActivityContext, tag: String) -> Result<(), ActivityError> {
    let mut book = book().lock().unwrap();
    let now = book.clocks[&tag].now();
    book.runs.entry(tag).or_default().push(now);
    Ok(())
}

/// A tag unique to this test and backend, with the test's clock registered under it.
fn tag(t: &TestStore, test: &str) -> String {
    let tag = format!("{}-{test}", t.store.backend());
    book()
        .lock()
        .unwrap()
        .clocks
        .insert(tag.clone(), t.clock.clone());
    tag
}

async fn start_worker(store: Arc<dyn Store>, id: &str) -> RunningWorker {
    Worker::builder()
        .store(store)
        .id(id)
        .poll_interval(Duration::from_millis(10))
        .workflows(quark_workflow::Registry::new().register(on_tick))
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

/// A store of its own on the same database, as another worker process has (PostgreSQL); the
/// in-memory SQLite database has one connection, so there its workers share the store.
async fn another_process(t: &TestStore) -> Arc<dyn Store> {
    match t.database_url() {
        Some(url) => Arc::new(
            PostgresStore::connect_with(&url, StoreConfig::default().clock(t.clock.clone()))
                .await
                .unwrap(),
        ),
        None => Arc::clone(&t.store),
    }
}

async fn settled(store: &dyn Store, queue: &str) -> bool {
    store.queue_stats(queue).await.unwrap() == QueueStats::default()
}

async fn it_enqueues_exactly_one_job_per_tick_with_several_workers_racing(t: &TestStore) {
    let mut stores = Vec::new();
    for w in 0..4 {
        stores.push(if w % 2 == 0 {
            Arc::clone(&t.store)
        } else {
            another_process(t).await
        });
    }
    let tag = tag(t, "racing");
    race(&t.clock, &stores, &tag).await;
}

/// Workers on `stores` (one each) race over twelve ticks of a schedule; each tick's job runs once.
async fn race(clock: &ManualClock, stores: &[Arc<dyn Store>], tag: &str) {
    const TICKS: u32 = 12;
    let store = &stores[0];
    let mut workers = Vec::new();
    for (w, store) in stores.iter().enumerate() {
        workers.push(start_worker(Arc::clone(store), &format!("racer-{w}")).await);
    }
    // Registered while the workers run, as from another process: they pick it up.
    let client = Client::new(Arc::clone(store));
    let every_ten_seconds = Schedule::cron("*/10 * * * * *").unwrap();
    let start = clock.now();
    client
        .schedule::<on_tick>(
            "racing",
            &tag.to_string(),
            JobOptions::default(),
            every_ten_seconds,
        )
        .await
        .unwrap();

    for k in 1..=TICKS {
        // One second past tick k: every worker finds it due at its next round, and they race.
        clock.set(start + SECOND * (10 * k + 1));
        // The clock stands still until the job ran and completed, so no lease can expire.
        eventually(&format!("tick {k} ran"), async || {
            runs(tag).len() >= k as usize && settled(&**store, "default").await
        })
        .await;
        assert_eq!(runs(tag).len(), k as usize, "one job for tick {k}, no more");
        let next = store.get_schedule("racing").await.unwrap().unwrap();
        assert_eq!(next.next_at, start + SECOND * (10 * (k + 1)));
    }
    let mut per_tick: BTreeMap<Timestamp, u32> = BTreeMap::new();
    for at in runs(tag) {
        *per_tick.entry(at).or_default() += 1;
    }
    assert_eq!(per_tick.len(), TICKS as usize, "{per_tick:?}");
    assert!(
        per_tick.values().all(|n| *n == 1),
        "exactly one job per tick: {per_tick:?}"
    );
    assert!(
        settled(&**store, "default").await,
        "no extra job is left either"
    );
    // Checked before the shutdown: it aborts the pollers, and a poller cut short while the pool
    // pings the in-memory database's one connection loses that connection, and the database.
    for w in workers {
        w.shutdown().await;
    }
}

/// SQLite shared by several processes: each worker has its own store (writer connection and
/// readers) on one database file, so their fires are serialized by the file lock, not by a pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_enqueues_exactly_one_job_per_tick_with_workers_on_one_sqlite_file() {
    let dir =
        std::env::temp_dir().join(format!("quark-schedules-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/quark.db", dir.display());
    let clock = ManualClock::new(quark_history::testing::TEST_EPOCH);
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..3 {
        let config = StoreConfig::default().clock(clock.clone());
        stores.push(Arc::new(
            SqliteStore::open_with(&url, config).await.unwrap(),
        ));
    }
    let tag = "sqlite-file-racing".to_string();
    book()
        .lock()
        .unwrap()
        .clocks
        .insert(tag.clone(), clock.clone());
    race(&clock, &stores, &tag).await;
    drop(stores);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Registers an hourly schedule of `on_tick` at the test clock's hour, and returns that hour.
async fn hourly(t: &TestStore, name: &str, tag: &str, missed: Missed) -> Timestamp {
    let start = t.clock.now();
    let schedule = Schedule::cron("0 0 * * * *").unwrap().missed(missed);
    Client::new(Arc::clone(&t.store))
        .schedule::<on_tick>(name, &tag.to_string(), JobOptions::default(), schedule)
        .await
        .unwrap();
    assert_eq!(
        t.store.get_schedule(name).await.unwrap().unwrap().next_at,
        start + HOUR
    );
    start
}

async fn it_skips_the_ticks_missed_during_downtime(t: &TestStore) {
    let tag = tag(t, "skip");
    let start = hourly(t, "skipper", &tag, Missed::Skip).await;
    // No worker from 00:00 to 05:05: the ticks at 01:00 .. 05:00 are missed.
    t.clock.set(start + HOUR * 5 + SECOND * 300);
    let worker = start_worker(Arc::clone(&t.store), "after-downtime").await;
    eventually("the schedule moved on", async || {
        t.store
            .get_schedule("skipper")
            .await
            .unwrap()
            .unwrap()
            .next_at
            == start + HOUR * 6
    })
    .await;
    // Moving next_at and enqueueing the ticks' jobs is one transaction: nothing was enqueued.
    assert!(settled(&*t.store, "default").await);
    assert!(runs(&tag).is_empty());
    let record = t.store.get_schedule("skipper").await.unwrap().unwrap();
    assert_eq!(record.last_fired_at, None);

    // The next tick fires as usual.
    t.clock.set(start + HOUR * 6);
    eventually("the 06:00 tick ran", async || {
        runs(&tag) == [start + HOUR * 6] && settled(&*t.store, "default").await
    })
    .await;
    worker.shutdown().await;
}

async fn it_fires_a_tick_that_is_late_by_less_than_the_grace_after_a_restart(t: &TestStore) {
    let tag = tag(t, "restart");
    let start = hourly(t, "restarted", &tag, Missed::Skip).await;
    // A restart across 01:00: the 01:00 tick is 30 s late, within the grace, so it fires.
    let back = start + HOUR + SECOND * 30;
    t.clock.set(back);
    let worker = start_worker(Arc::clone(&t.store), "restarted").await;
    eventually("the late 01:00 tick ran", async || {
        runs(&tag) == [back] && settled(&*t.store, "default").await
    })
    .await;
    let record = t.store.get_schedule("restarted").await.unwrap().unwrap();
    assert_eq!(record.last_fired_at, Some(start + HOUR));
    assert_eq!(record.next_at, start + HOUR * 2);
    worker.shutdown().await;
}

async fn it_backfills_at_most_n_missed_ticks_after_downtime(t: &TestStore) {
    let tag = tag(t, "backfill");
    let start = hourly(t, "backfiller", &tag, Missed::Backfill(3)).await;
    // No worker from 00:00 to 05:05: five missed ticks, of which the three most recent run.
    let back = start + HOUR * 5 + SECOND * 300;
    t.clock.set(back);
    let worker = start_worker(Arc::clone(&t.store), "after-downtime").await;
    eventually("three backfilled jobs ran", async || {
        runs(&tag).len() == 3 && settled(&*t.store, "default").await
    })
    .await;
    let record = t.store.get_schedule("backfiller").await.unwrap().unwrap();
    assert_eq!(record.last_fired_at, Some(start + HOUR * 5));
    assert_eq!(record.next_at, start + HOUR * 6);

    t.clock.set(start + HOUR * 6);
    eventually("the 06:00 tick ran", async || {
        runs(&tag).len() == 4 && settled(&*t.store, "default").await
    })
    .await;
    assert_eq!(runs(&tag), [back, back, back, start + HOUR * 6]);
    worker.shutdown().await;
}

async fn it_refuses_bad_schedules_at_registration_and_registers_idempotently(t: &TestStore) {
    assert!(matches!(
        Schedule::cron("0 0 25 * * *"),
        Err(ScheduleError::InvalidCron { .. })
    ));
    assert!(matches!(
        Schedule::cron("0 9 * * *")
            .unwrap()
            .timezone("Europe/Atlantis"),
        Err(ScheduleError::UnknownTimezone(_))
    ));
    let client = Client::new(Arc::clone(&t.store));
    let input = "idempotent".to_string();
    // 2025 is over by the test clock: the expression has no tick left.
    let past = Schedule::cron("0 0 0 1 1 * 2025").unwrap();
    let err = client
        .schedule::<on_tick>("past", &input, JobOptions::default(), past)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("never fires"), "{err}");
    let delayed = client
        .schedule::<on_tick>(
            "delayed",
            &input,
            JobOptions::default().delay(HOUR),
            Schedule::cron("@hourly").unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        delayed.to_string().contains("run at their ticks"),
        "{delayed}"
    );
    assert!(client.schedules().await.unwrap().is_empty());

    let berlin = || {
        Schedule::cron("0 30 9 * * MON-FRI")
            .unwrap()
            .timezone("Europe/Berlin")
            .unwrap()
            .missed(Missed::Backfill(2))
    };
    let options = || JobOptions::default().queue("reports").priority(7);
    let register = async || {
        client
            .schedule::<on_tick>("report", &input, options(), berlin())
            .await
            .unwrap()
    };
    assert_eq!(register().await, Upserted::Created);
    t.clock.advance(HOUR);
    assert_eq!(register().await, Upserted::Unchanged);
    let listed = client.schedules().await.unwrap();
    assert_eq!(listed.len(), 1);
    let report = &listed[0];
    assert_eq!(report.spec.cron, "0 30 9 * * MON-FRI");
    assert_eq!(report.spec.timezone, "Europe/Berlin");
    assert_eq!(report.spec.missed, Missed::Backfill(2));
    assert_eq!(
        (report.spec.queue.as_str(), report.spec.priority),
        ("reports", 7)
    );
    // 2026-01-01 is a Thursday; 09:30 in Berlin is 08:30 UTC in winter.
    assert_eq!(report.next_at.to_string(), "2026-01-01T08:30:00.000000Z");
    assert!(client.unschedule("report").await.unwrap());
    assert!(!client.unschedule("report").await.unwrap());
}

async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    quark_history::testing::eventually(what, check).await;
}
