//! Entities and a projection under fire, on PostgreSQL: writer processes killed with SIGKILL at
//! random (mid-append, often) and started again, a transaction held open now and then while a
//! projection runs. Every message must be applied once, every stream must verify, and the read
//! model must equal a rebuild from zero, every event applied once and in its stream's order.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quark_history::{Backend, HistoryEvent, HistoryRange, StoreTx};
use quark_tests::Dice;
use quark_tests::ledger::{Account, AccountEvent};
use quark_workflow::projection::{Batch, CatchUp, Projection, ProjectionError, Projector};

const WRITERS: usize = 3;
const MESSAGES: u64 = 300;

fn spawn_writer(url: &str, writer: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_entity-writer"))
        .env("QUARK_DATABASE_URL", url)
        .env("QUARK_WRITER", format!("w{writer}"))
        .env("QUARK_MESSAGES", MESSAGES.to_string())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start an entity-writer")
}

/// Writer processes, killed when dropped.
struct Writers(Vec<Option<Child>>);

impl Drop for Writers {
    fn drop(&mut self) {
        for w in self.0.iter_mut().flatten() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Balances per account, and a log of every event applied.
struct Balances;

async fn exec(tx: &mut StoreTx, sql: String) -> Result<(), ProjectionError> {
    assert_eq!(tx.backend(), Backend::Postgres);
    quark_history::sqlx::query(quark_history::sqlx::AssertSqlSafe(sql))
        .execute(tx.postgres()?)
        .await?;
    Ok(())
}

impl Projection for Balances {
    const NAME: &'static str = "chaos_balances";

    async fn apply(&self, batch: &mut Batch<'_>) -> Result<(), ProjectionError> {
        for e in batch.entity_events::<Account>()? {
            let AccountEvent::Deposited(cents) = e.event.event;
            exec(
                batch.tx(),
                format!(
                    "INSERT INTO chaos_balances (account, cents) VALUES ('{}', {cents}) \
                     ON CONFLICT (account) DO UPDATE SET cents = chaos_balances.cents + {cents}",
                    e.key
                ),
            )
            .await?;
            exec(
                batch.tx(),
                format!(
                    "INSERT INTO chaos_applied (account, version) VALUES ('{}', {})",
                    e.key, e.event.version
                ),
            )
            .await?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut StoreTx, _version: u32) -> Result<(), ProjectionError> {
        exec(tx, "DELETE FROM chaos_balances".into()).await?;
        exec(tx, "DELETE FROM chaos_applied".into()).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_applied_once_and_the_read_model_equals_a_rebuild_under_kills() {
    let Some(_one_at_a_time) = crate::support::slow_suite("entity chaos: writers killed").await
    else {
        return;
    };
    let Some(t) = quark_history::testing::postgres().await else {
        return;
    };
    let url = t.database_url().unwrap();
    t.execute("CREATE TABLE chaos_balances (account TEXT PRIMARY KEY, cents BIGINT NOT NULL)")
        .await;
    t.execute(
        "CREATE TABLE chaos_applied (n BIGSERIAL PRIMARY KEY, account TEXT NOT NULL, \
         version BIGINT NOT NULL)",
    )
    .await;
    // The projection runs all along, on a store with the wall clock (the test store's clock
    // stands still, and so would the projection's lease).
    let store: Arc<dyn quark_history::Store> =
        Arc::new(quark_history::PostgresStore::connect(&url).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let projecting = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        tokio::spawn(async move {
            let projector = Projector::new(store, Balances).page(20);
            projector.register().await.unwrap();
            let mut applied = 0;
            while !stop.load(Ordering::SeqCst) {
                match projector.step().await.unwrap() {
                    CatchUp::Applied { events, .. } => applied += events,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            projector.release().await.unwrap();
            applied
        })
    };
    // Now and then a transaction stays open for a while: the projection must wait behind it.
    let holding = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut held = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut tx = store.begin_tx().await.unwrap();
                quark_history::sqlx::query("SELECT pg_current_xact_id()")
                    .execute(tx.postgres().unwrap())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(150)).await;
                tx.rollback().await.unwrap();
                held += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            held
        })
    };

    let mut writers = Writers((0..WRITERS).map(|w| Some(spawn_writer(&url, w))).collect());
    let mut dice = Dice(0x2545_F491_4F6C_DD1D);
    let (mut kills, mut finished) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while finished < WRITERS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writers did not finish in 240 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        for w in 0..WRITERS {
            if let Some(child) = &mut writers.0[w]
                && let Some(status) = child.try_wait().unwrap()
            {
                assert!(status.success(), "writer {w} failed: {status}");
                writers.0[w] = None;
                finished += 1;
            }
        }
        // Kill one still running, and start it again: it sends every message from the first.
        let running: Vec<usize> = (0..WRITERS).filter(|w| writers.0[*w].is_some()).collect();
        if kills < 12 && !running.is_empty() {
            let victim = running[dice.roll(running.len())];
            let mut dead = writers.0[victim].take().unwrap();
            dead.kill().expect("SIGKILL a writer");
            dead.wait().unwrap();
            kills += 1;
            writers.0[victim] = Some(spawn_writer(&url, victim));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let applied_live = projecting.await.unwrap();
    let held = holding.await.unwrap();
    assert!(
        kills >= 3,
        "the test killed {kills} writers; it proves little below 3"
    );
    assert!(held >= 1, "no transaction was held open");
    eprintln!(
        "entity chaos: {kills} writers killed, {held} transactions held open, \
         {applied_live} events projected live"
    );

    // Every message once: the causations are exactly the message ids, each once.
    let mut causes = Vec::new();
    for k in 0..5 {
        let stream = format!("ChaosAccount/k{k}");
        for e in store
            .read_history(&stream, HistoryRange::All)
            .await
            .unwrap()
        {
            match e.event {
                HistoryEvent::EntityEvent { causation, .. } => causes.push(causation.unwrap()),
                other => panic!("{other:?}"),
            }
        }
        assert!(store.verify(&stream).await.unwrap().is_intact(), "{stream}");
    }
    let unique: BTreeSet<&String> = causes.iter().collect();
    assert_eq!(unique.len(), causes.len(), "a message was applied twice");
    assert_eq!(
        causes.len() as u64,
        WRITERS as u64 * MESSAGES,
        "a message was lost"
    );

    // The read model, caught up, holds every event once and in order; a rebuild equals it.
    let projector = Projector::new(Arc::clone(&store), Balances);
    projector.catch_up(|_, _| {}).await.unwrap();
    let model = || async {
        let mut rows = Vec::new();
        for k in 0..5 {
            rows.push(
                t.scalar(&format!(
                    "SELECT COALESCE(MAX(cents), -1) FROM chaos_balances WHERE account = 'k{k}'"
                ))
                .await,
            );
        }
        rows
    };
    let live = model().await;
    assert_eq!(live.iter().sum::<i64>(), WRITERS as i64 * MESSAGES as i64);
    let out_of_order = "SELECT COUNT(*) FROM chaos_applied a JOIN chaos_applied b \
         ON a.account = b.account AND a.version < b.version AND a.n > b.n";
    let doubled = "SELECT COUNT(*) FROM (SELECT account, version FROM chaos_applied \
         GROUP BY account, version HAVING COUNT(*) > 1) d";
    assert_eq!(t.scalar(doubled).await, 0, "an event was applied twice");
    assert_eq!(
        t.scalar(out_of_order).await,
        0,
        "events applied out of order"
    );
    projector.rebuild(|_, _| {}).await.unwrap();
    assert_eq!(model().await, live, "the read model differs from a rebuild");
    assert_eq!(t.scalar(doubled).await, 0);
    drop(writers);
    drop(projector);
    drop(store);
    t.cleanup().await;
}
