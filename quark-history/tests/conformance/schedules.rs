//! Cron schedules: idempotent registration, the compare-and-set fire, removal and listing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    Clock, Error, Fire, Missed, PostgresStore, ScheduleSpec, Store, StoreConfig, TaskKind,
    Timestamp, Upserted,
};

use crate::support::{claim_all, conformance};

conformance!(
    it_registers_a_schedule_idempotently_and_keeps_next_at_unless_the_timing_changes,
    it_fires_each_tick_exactly_once_among_many_racing_workers,
    it_enqueues_one_job_per_tick_visible_at_its_tick,
    it_moves_on_without_jobs_when_every_missed_tick_is_dropped,
    it_removes_and_lists_schedules_by_name,
    it_finds_the_due_schedules_and_the_next_due_time,
    it_refuses_malformed_schedules_and_fires,
);

const MINUTE: Duration = Duration::from_secs(60);

fn spec(name: &str) -> ScheduleSpec {
    ScheduleSpec {
        name: name.into(),
        cron: "0 * * * * *".into(),
        timezone: "UTC".into(),
        missed: Missed::Skip,
        queue: "cron".into(),
        priority: 3,
        payload: format!("job of {name}").into_bytes(),
    }
}

async fn it_registers_a_schedule_idempotently_and_keeps_next_at_unless_the_timing_changes(
    t: &TestStore,
) {
    let first = t.clock.now() + MINUTE;
    let s = spec("nightly");
    assert_eq!(
        t.store.upsert_schedule(s.clone(), first).await.unwrap(),
        Upserted::Created
    );
    let created = t.store.get_schedule("nightly").await.unwrap().unwrap();
    assert_eq!(created.spec, s);
    assert_eq!(created.next_at, first);
    assert_eq!(created.last_fired_at, None);
    assert_eq!(created.created_at, t.clock.now());

    // Every worker registers its schedules at startup, each with its own idea of the next tick.
    t.clock.advance(Duration::from_secs(5));
    assert_eq!(
        t.store
            .upsert_schedule(s.clone(), first + MINUTE)
            .await
            .unwrap(),
        Upserted::Unchanged
    );
    let same = t.store.get_schedule("nightly").await.unwrap().unwrap();
    assert_eq!(same, created, "nothing was written, next_at included");

    // A new job input or policy keeps the tick: a redeploy neither skips nor repeats one.
    let mut changed = s.clone();
    changed.payload = b"new input".to_vec();
    changed.missed = Missed::Backfill(2);
    changed.priority = 9;
    assert_eq!(
        t.store
            .upsert_schedule(changed.clone(), first + MINUTE)
            .await
            .unwrap(),
        Upserted::Updated
    );
    let updated = t.store.get_schedule("nightly").await.unwrap().unwrap();
    assert_eq!(updated.spec, changed);
    assert_eq!(updated.next_at, first, "same timing, same next tick");
    assert_eq!(updated.created_at, created.created_at);
    assert_eq!(updated.updated_at, t.clock.now());

    // A new expression or zone moves next_at to what the caller computed for it.
    let mut retimed = changed.clone();
    retimed.timezone = "Europe/Berlin".into();
    let berlin = first + Duration::from_secs(3600);
    assert_eq!(
        t.store
            .upsert_schedule(retimed.clone(), berlin)
            .await
            .unwrap(),
        Upserted::Updated
    );
    assert_eq!(
        t.store
            .get_schedule("nightly")
            .await
            .unwrap()
            .unwrap()
            .next_at,
        berlin
    );
    let mut recron = retimed;
    recron.cron = "*/5 * * * *".into();
    t.store.upsert_schedule(recron, first).await.unwrap();
    assert_eq!(
        t.store
            .get_schedule("nightly")
            .await
            .unwrap()
            .unwrap()
            .next_at,
        first
    );
    assert_eq!(t.store.get_schedule("other").await.unwrap(), None);
}

/// A second connection pool on the same database, as another worker process would have.
async fn another_process(t: &TestStore) -> Arc<dyn Store> {
    match t.database_url() {
        Some(url) => Arc::new(
            PostgresStore::connect_with(&url, StoreConfig::default().clock(t.clock.clone()))
                .await
                .unwrap(),
        ),
        // An in-memory SQLite database has one connection; its writes are serialized anyway.
        None => Arc::clone(&t.store),
    }
}

async fn it_fires_each_tick_exactly_once_among_many_racing_workers(t: &TestStore) {
    const RACERS: usize = 8;
    const TICKS: usize = 15;
    let other = another_process(t).await;
    let mut next_at = t.clock.now() + MINUTE;
    t.store
        .upsert_schedule(spec("racy"), next_at)
        .await
        .unwrap();
    let mut won_by = Vec::new();
    for _ in 0..TICKS {
        t.clock.set(next_at);
        // Every racer read the same due schedule and computed the same fire.
        let fire = Fire {
            name: "racy".into(),
            expected_next_at: next_at,
            next_at: next_at + MINUTE,
            ticks: vec![next_at],
        };
        let start = Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|r| {
                let store = if r % 2 == 0 {
                    Arc::clone(&t.store)
                } else {
                    Arc::clone(&other)
                };
                let (fire, start) = (fire.clone(), Arc::clone(&start));
                tokio::spawn(async move {
                    start.wait().await;
                    store.fire_schedule(fire).await.unwrap()
                })
            })
            .collect();
        let mut winners = Vec::new();
        for (r, racer) in racers.into_iter().enumerate() {
            if let Some(ids) = racer.await.unwrap() {
                assert_eq!(ids.len(), 1, "one job for one tick");
                winners.push(r);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one racer fires a tick");
        won_by.push(winners[0]);
        next_at = next_at + MINUTE;
        let record = t.store.get_schedule("racy").await.unwrap().unwrap();
        assert_eq!(record.next_at, next_at);
        assert_eq!(record.last_fired_at, Some(next_at - MINUTE));
    }
    let jobs = claim_all(&*t.store, "w", "cron").await;
    assert_eq!(jobs.len(), TICKS, "one job per tick, no more: {won_by:?}");
    assert!(
        jobs.iter()
            .all(|j| j.kind == TaskKind::Job && j.priority == 3 && j.payload == b"job of racy")
    );

    // A late racer with the old expectation changes nothing.
    let stale = Fire {
        name: "racy".into(),
        expected_next_at: next_at - MINUTE,
        next_at: next_at + MINUTE,
        ticks: vec![next_at - MINUTE],
    };
    assert_eq!(t.store.fire_schedule(stale).await.unwrap(), None);
    assert_eq!(
        t.store.get_schedule("racy").await.unwrap().unwrap().next_at,
        next_at
    );
    assert!(claim_all(&*t.store, "w", "cron").await.is_empty());
}

/// How many tasks on `queue` become visible exactly at `at`.
async fn tasks_visible_at(t: &TestStore, queue: &str, at: Timestamp) -> u64 {
    t.execute(&format!(
        "UPDATE tasks SET priority = priority WHERE queue = '{queue}' AND kind = 'job' AND visible_at = {}",
        at.as_micros()
    ))
    .await
}

async fn it_enqueues_one_job_per_tick_visible_at_its_tick(t: &TestStore) {
    let start = t.clock.now();
    t.store
        .upsert_schedule(spec("backfilled"), start + MINUTE)
        .await
        .unwrap();
    t.clock.advance(Duration::from_secs(5 * 60 + 30));
    let ticks: Vec<Timestamp> = (3..=5).map(|m| start + MINUTE * m).collect();
    let ids = t
        .store
        .fire_schedule(Fire {
            name: "backfilled".into(),
            expected_next_at: start + MINUTE,
            next_at: start + MINUTE * 6,
            ticks: ticks.clone(),
        })
        .await
        .unwrap()
        .expect("the fire happened");
    assert_eq!(ids.len(), 3);
    for tick in &ticks {
        assert_eq!(tasks_visible_at(t, "cron", *tick).await, 1, "{tick}");
    }
    let record = t.store.get_schedule("backfilled").await.unwrap().unwrap();
    assert_eq!(record.next_at, start + MINUTE * 6);
    assert_eq!(record.last_fired_at, Some(start + MINUTE * 5));
    let jobs = claim_all(&*t.store, "w", "cron").await;
    assert_eq!(
        jobs.iter().map(|j| j.lease.task_id).collect::<Vec<_>>(),
        ids,
        "the oldest tick's job first"
    );
}

async fn it_moves_on_without_jobs_when_every_missed_tick_is_dropped(t: &TestStore) {
    let start = t.clock.now();
    t.store
        .upsert_schedule(spec("skipper"), start + MINUTE)
        .await
        .unwrap();
    t.clock.advance(MINUTE * 60);
    let fired = t
        .store
        .fire_schedule(Fire {
            name: "skipper".into(),
            expected_next_at: start + MINUTE,
            next_at: start + MINUTE * 61,
            ticks: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(fired, Some(Vec::new()));
    let record = t.store.get_schedule("skipper").await.unwrap().unwrap();
    assert_eq!(record.next_at, start + MINUTE * 61);
    assert_eq!(record.last_fired_at, None, "nothing was fired");
    assert_eq!(t.store.queue_stats("cron").await.unwrap().pending, 0);
}

async fn it_removes_and_lists_schedules_by_name(t: &TestStore) {
    let at = t.clock.now() + MINUTE;
    for name in ["b-weekly", "a-daily", "c-hourly"] {
        t.store.upsert_schedule(spec(name), at).await.unwrap();
    }
    let names = |list: Vec<quark_history::ScheduleRecord>| {
        list.into_iter().map(|r| r.spec.name).collect::<Vec<_>>()
    };
    assert_eq!(
        names(t.store.list_schedules().await.unwrap()),
        ["a-daily", "b-weekly", "c-hourly"]
    );
    t.clock.set(at);
    t.store
        .fire_schedule(Fire {
            name: "b-weekly".into(),
            expected_next_at: at,
            next_at: at + MINUTE,
            ticks: vec![at],
        })
        .await
        .unwrap()
        .unwrap();

    assert!(t.store.remove_schedule("b-weekly").await.unwrap());
    assert!(!t.store.remove_schedule("b-weekly").await.unwrap());
    assert!(!t.store.remove_schedule("never-was").await.unwrap());
    assert_eq!(
        names(t.store.list_schedules().await.unwrap()),
        ["a-daily", "c-hourly"]
    );
    assert_eq!(
        t.store.queue_stats("cron").await.unwrap().pending,
        1,
        "the job it already enqueued stays"
    );
    // A worker that read it before the removal fires nothing.
    let late = Fire {
        name: "b-weekly".into(),
        expected_next_at: at + MINUTE,
        next_at: at + MINUTE * 2,
        ticks: vec![at + MINUTE],
    };
    assert_eq!(t.store.fire_schedule(late).await.unwrap(), None);
}

async fn it_finds_the_due_schedules_and_the_next_due_time(t: &TestStore) {
    assert_eq!(t.store.next_schedule_at().await.unwrap(), None);
    let now = t.clock.now();
    for (name, at) in [
        ("later", now + MINUTE),
        ("overdue", now - MINUTE),
        ("now", now),
        ("never", Timestamp::MAX),
    ] {
        t.store.upsert_schedule(spec(name), at).await.unwrap();
    }
    let due = t.store.due_schedules(now, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|r| r.spec.name.as_str()).collect::<Vec<_>>(),
        ["overdue", "now"],
        "earliest first"
    );
    assert_eq!(t.store.due_schedules(now, 1).await.unwrap().len(), 1);
    assert_eq!(
        t.store.next_schedule_at().await.unwrap(),
        Some(now - MINUTE)
    );
    let all: BTreeSet<_> = t
        .store
        .due_schedules(Timestamp::MAX, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.spec.name)
        .collect();
    assert_eq!(all.len(), 4);
}

async fn it_refuses_malformed_schedules_and_fires(t: &TestStore) {
    let at = t.clock.now() + MINUTE;
    let mut nameless = spec("x");
    nameless.name = " ".into();
    let mut queueless = spec("x");
    queueless.queue = String::new();
    let mut timeless = spec("x");
    timeless.cron = String::new();
    for bad in [nameless, queueless, timeless] {
        assert!(
            matches!(
                t.store.upsert_schedule(bad.clone(), at).await,
                Err(Error::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(t.store.list_schedules().await.unwrap().is_empty());

    t.store.upsert_schedule(spec("x"), at).await.unwrap();
    let backwards = Fire {
        name: "x".into(),
        expected_next_at: at,
        next_at: at,
        ticks: vec![at],
    };
    assert!(matches!(
        t.store.fire_schedule(backwards).await,
        Err(Error::Invalid(_))
    ));
    let unordered = Fire {
        name: "x".into(),
        expected_next_at: at,
        next_at: at + MINUTE * 3,
        ticks: vec![at + MINUTE, at],
    };
    assert!(matches!(
        t.store.fire_schedule(unordered).await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(
        t.store.get_schedule("x").await.unwrap().unwrap().next_at,
        at,
        "a refused fire changes nothing"
    );
}
