//! Ordered delivery in the inbox (`SequencedInbox`): in order, held then drained, duplicates,
//! rollback on a handler error, gaps declared lost after the timeout (and late messages of them),
//! the sweep, and concurrent consumers of one key. The handler writes a row per message into an
//! `effects` table on the engine's connection, so what was applied, and in which order, is read
//! back from the database.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use quark_history::testing::{TEST_EPOCH, TestStore};
use quark_history::{
    Arrival, Clock, Delivered, DuplicateOf, Error, InboxStore, ManualClock, PostgresStore,
    SeqReceipt, SequencedInbox, SequencedStore, SqliteStore, StoreConfig,
};
use sqlx::{PgConnection, SqliteConnection};

type Conn<S> = <<S as InboxStore>::Db as sqlx::Database>::Connection;

/// What a test needs of a backend beyond the inbox: the `effects` table the handler writes to.
trait Backend: SequencedStore + Sized + 'static {
    async fn create_effects(&self);
    /// `(key, seq, payload)` in the order they were applied.
    async fn effects(&self) -> Vec<(String, u64, String)>;
    fn write_effect<'a>(
        conn: &'a mut Conn<Self>,
        m: &'a Delivered,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

impl Backend for SqliteStore {
    async fn create_effects(&self) {
        sqlx::query(
            "CREATE TABLE effects (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, \
             seq INTEGER NOT NULL, body TEXT NOT NULL)",
        )
        .execute(self.pool())
        .await
        .unwrap();
    }

    async fn effects(&self) -> Vec<(String, u64, String)> {
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT key, seq, body FROM effects ORDER BY id")
                .fetch_all(self.pool())
                .await
                .unwrap();
        rows.into_iter().map(|(k, s, b)| (k, s as u64, b)).collect()
    }

    fn write_effect<'a>(
        conn: &'a mut SqliteConnection,
        m: &'a Delivered,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO effects (key, seq, body) VALUES (?1, ?2, ?3)")
                .bind(&m.key)
                .bind(m.seq as i64)
                .bind(String::from_utf8_lossy(&m.payload).into_owned())
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }
}

impl Backend for PostgresStore {
    async fn create_effects(&self) {
        sqlx::query(
            "CREATE TABLE effects (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             key TEXT NOT NULL, seq BIGINT NOT NULL, body TEXT NOT NULL)",
        )
        .execute(self.pool())
        .await
        .unwrap();
    }

    async fn effects(&self) -> Vec<(String, u64, String)> {
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT key, seq, body FROM effects ORDER BY id")
                .fetch_all(self.pool())
                .await
                .unwrap();
        rows.into_iter().map(|(k, s, b)| (k, s as u64, b)).collect()
    }

    fn write_effect<'a>(
        conn: &'a mut PgConnection,
        m: &'a Delivered,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO effects (key, seq, body) VALUES ($1, $2, $3)")
                .bind(&m.key)
                .bind(m.seq as i64)
                .bind(String::from_utf8_lossy(&m.payload).into_owned())
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }
}

/// A concrete store on a fresh database and a manual clock.
struct Harness<S> {
    store: Arc<S>,
    clock: ManualClock,
    pg: Option<TestStore>,
}

async fn sqlite() -> Harness<SqliteStore> {
    let clock = ManualClock::new(TEST_EPOCH);
    let store = SqliteStore::in_memory_with(StoreConfig::default().clock(clock.clone()))
        .await
        .unwrap();
    store.create_effects().await;
    Harness {
        store: Arc::new(store),
        clock,
        pg: None,
    }
}

async fn postgres() -> Option<Harness<PostgresStore>> {
    let t = quark_history::testing::postgres().await?;
    let quark_history::testing::Raw::Postgres(pool) = t.raw().clone() else {
        unreachable!("a PostgreSQL test store")
    };
    let store = PostgresStore::from_pool(pool, StoreConfig::default().clock(t.clock.clone()));
    store.create_effects().await;
    Some(Harness {
        store: Arc::new(store),
        clock: t.clock.clone(),
        pg: Some(t),
    })
}

macro_rules! ordered_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let h = super::sqlite().await;
                    super::$name(&h).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(mut h) = super::postgres().await else { return };
                    super::$name(&h).await;
                    let t = h.pg.take().expect("a PostgreSQL test database");
                    drop(h);
                    t.cleanup().await;
                }
            }
        )*
    };
}

ordered_tests!(
    it_applies_messages_that_arrive_in_order_at_once,
    it_holds_messages_ahead_of_a_gap_and_applies_them_when_it_fills,
    it_reports_duplicates_by_sequence_number_and_by_message_id,
    it_rolls_back_everything_when_the_handler_fails,
    it_declares_a_gap_lost_after_the_timeout_and_applies_what_follows,
    it_reports_a_message_that_arrives_after_its_gap_was_declared_lost,
    it_sweeps_expired_gaps_of_keys_that_receive_nothing_more,
    it_starts_new_keys_at_the_configured_first_number,
    it_never_applies_twice_or_out_of_order_under_concurrent_consumers,
);

/// Receives with the handler that writes an effect row.
async fn receive<S: Backend>(
    h: &Harness<S>,
    inbox: &SequencedInbox,
    key: &str,
    seq: u64,
    id: &str,
) -> SeqReceipt {
    inbox
        .receive(
            h.store.as_ref(),
            key,
            seq,
            id,
            format!("{key}#{seq}").as_bytes(),
            async |conn: &mut Conn<S>, m: &Delivered| S::write_effect(conn, m).await,
        )
        .await
        .unwrap()
}

/// The applied `(key, seq)` pairs, in order of application.
async fn applied<S: Backend>(h: &Harness<S>) -> Vec<(String, u64)> {
    h.store
        .effects()
        .await
        .into_iter()
        .map(|(k, s, _)| (k, s))
        .collect()
}

fn pairs(key: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<(String, u64)> {
    seqs.into_iter().map(|s| (key.to_string(), s)).collect()
}

async fn it_applies_messages_that_arrive_in_order_at_once<S: Backend>(h: &Harness<S>) {
    let inbox = SequencedInbox::new();
    for n in 1..=3 {
        let r = receive(h, &inbox, "k", n, &format!("m-{n}")).await;
        assert_eq!(r.arrival, Arrival::Applied);
        assert_eq!(r.applied, [n]);
        assert!(r.lost.is_empty());
    }
    let effects = h.store.effects().await;
    assert_eq!(
        effects,
        (1..=3)
            .map(|n| ("k".to_string(), n, format!("k#{n}")))
            .collect::<Vec<_>>(),
        "each message is applied once, in order, with its payload"
    );
}

async fn it_holds_messages_ahead_of_a_gap_and_applies_them_when_it_fills<S: Backend>(
    h: &Harness<S>,
) {
    let inbox = SequencedInbox::new();
    let r = receive(h, &inbox, "k", 3, "m-3").await;
    assert_eq!(r.arrival, Arrival::Held { waiting_for: 1 });
    assert!(r.applied.is_empty());
    let r = receive(h, &inbox, "k", 2, "m-2").await;
    assert_eq!(r.arrival, Arrival::Held { waiting_for: 1 });
    // Another key is not held up by this one's gap.
    let r = receive(h, &inbox, "other", 1, "o-1").await;
    assert_eq!(r.applied, [1]);
    assert_eq!(applied(h).await, pairs("other", [1]));

    let r = receive(h, &inbox, "k", 1, "m-1").await;
    assert_eq!(r.arrival, Arrival::Applied);
    assert_eq!(r.applied, [1, 2, 3], "the held messages follow, in order");
    let effects = h.store.effects().await;
    assert_eq!(
        effects[1..]
            .iter()
            .map(|(k, s, b)| (k.as_str(), *s, b.as_str()))
            .collect::<Vec<_>>(),
        [("k", 1, "k#1"), ("k", 2, "k#2"), ("k", 3, "k#3")],
        "held payloads are applied from storage"
    );
    let r = receive(h, &inbox, "k", 4, "m-4").await;
    assert_eq!(r.applied, [4], "nothing is left held");
}

async fn it_reports_duplicates_by_sequence_number_and_by_message_id<S: Backend>(h: &Harness<S>) {
    let inbox = SequencedInbox::new();
    assert_eq!(receive(h, &inbox, "k", 1, "m-1").await.applied, [1]);
    let again = receive(h, &inbox, "k", 1, "m-1-resent").await;
    assert_eq!(again.arrival, Arrival::Duplicate(DuplicateOf::Applied));
    assert!(again.applied.is_empty());
    assert_eq!(
        receive(h, &inbox, "k", 3, "m-3").await.arrival,
        Arrival::Held { waiting_for: 2 }
    );
    assert_eq!(
        receive(h, &inbox, "k", 3, "m-3-resent").await.arrival,
        Arrival::Duplicate(DuplicateOf::Held)
    );
    // A new number with an id already seen is refused, and holds nothing up.
    let reused = receive(h, &inbox, "k", 2, "m-1").await;
    assert_eq!(reused.arrival, Arrival::Duplicate(DuplicateOf::MessageId));
    assert_eq!(applied(h).await, pairs("k", [1]));
    assert_eq!(receive(h, &inbox, "k", 2, "m-2").await.applied, [2, 3]);
    assert_eq!(applied(h).await, pairs("k", [1, 2, 3]));
}

async fn it_rolls_back_everything_when_the_handler_fails<S: Backend>(h: &Harness<S>) {
    let inbox = SequencedInbox::new();
    assert_eq!(
        receive(h, &inbox, "k", 2, "m-2").await.arrival,
        Arrival::Held { waiting_for: 1 }
    );
    // Number 1 applies, then the held 2 fails: the call rolls back as a whole.
    let failed = inbox
        .receive(
            h.store.as_ref(),
            "k",
            1,
            "m-1",
            b"x",
            async |conn: &mut Conn<S>, m: &Delivered| {
                S::write_effect(conn, m).await?;
                if m.seq == 2 {
                    return Err(Error::Invalid("the handler failed".into()));
                }
                Ok(())
            },
        )
        .await;
    assert!(
        matches!(failed, Err(Error::Invalid(_))),
        "the handler's error is returned: {failed:?}"
    );
    assert!(applied(h).await.is_empty(), "no effect of the call stays");
    // The key did not advance, number 2 is still held and the id of 1 was not recorded.
    let r = receive(h, &inbox, "k", 1, "m-1").await;
    assert_eq!(r.arrival, Arrival::Applied);
    assert_eq!(r.applied, [1, 2]);
    assert_eq!(applied(h).await, pairs("k", [1, 2]));
}

async fn it_declares_a_gap_lost_after_the_timeout_and_applies_what_follows<S: Backend>(
    h: &Harness<S>,
) {
    let inbox = SequencedInbox::new().gap_timeout(Duration::from_secs(60));
    assert_eq!(
        receive(h, &inbox, "k", 3, "m-3").await.arrival,
        Arrival::Held { waiting_for: 1 }
    );
    h.clock.advance(Duration::from_secs(60));
    let r = receive(h, &inbox, "k", 4, "m-4").await;
    assert_eq!(
        r.arrival,
        Arrival::Held { waiting_for: 1 },
        "at the timeout exactly the gap is still waited for"
    );
    assert!(r.lost.is_empty());
    assert!(
        SequencedInbox::lost_gaps(h.store.as_ref(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    h.clock.advance(Duration::from_secs(1));
    let r = receive(h, &inbox, "k", 6, "m-6").await;
    assert_eq!(r.lost.len(), 1);
    let gap = &r.lost[0];
    assert_eq!((gap.key.as_str(), gap.first, gap.last), ("k", 1, 2));
    assert_eq!(gap.declared_at, h.clock.now());
    assert_eq!(r.applied, [3, 4], "the messages after the gap follow on");
    assert_eq!(
        r.arrival,
        Arrival::Held { waiting_for: 5 },
        "the gap before 6 is young"
    );
    assert_eq!(applied(h).await, pairs("k", [3, 4]));
    assert_eq!(
        SequencedInbox::lost_gaps(h.store.as_ref(), 10)
            .await
            .unwrap(),
        r.lost,
        "the gap is recorded durably"
    );
}

async fn it_reports_a_message_that_arrives_after_its_gap_was_declared_lost<S: Backend>(
    h: &Harness<S>,
) {
    let inbox = SequencedInbox::new().gap_timeout(Duration::from_secs(60));
    let _ = receive(h, &inbox, "k", 3, "m-3").await;
    h.clock.advance(Duration::from_secs(61));
    let r = receive(h, &inbox, "k", 4, "m-4").await;
    assert_eq!(r.applied, [3, 4]);
    assert_eq!(r.arrival, Arrival::Applied, "4 applied after the held 3");

    let late = receive(h, &inbox, "k", 1, "m-1").await;
    let Arrival::Late { gap } = &late.arrival else {
        panic!("expected a late arrival, got {late:?}")
    };
    assert_eq!((gap.first, gap.last, gap.late_arrivals), (1, 2, 1));
    assert!(late.applied.is_empty());
    let Arrival::Late { gap } = receive(h, &inbox, "k", 2, "m-2").await.arrival else {
        panic!("expected a late arrival")
    };
    assert_eq!(gap.late_arrivals, 2);
    // A number that was applied is a duplicate, not late.
    assert_eq!(
        receive(h, &inbox, "k", 3, "m-3").await.arrival,
        Arrival::Duplicate(DuplicateOf::Applied)
    );
    assert_eq!(
        applied(h).await,
        pairs("k", [3, 4]),
        "late messages are not applied"
    );
    let listed = SequencedInbox::lost_gaps(h.store.as_ref(), 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].late_arrivals, 2, "late arrivals are counted");
}

async fn it_sweeps_expired_gaps_of_keys_that_receive_nothing_more<S: Backend>(h: &Harness<S>) {
    let inbox = SequencedInbox::new().gap_timeout(Duration::from_secs(60));
    let sweep = async || {
        inbox
            .expire_gaps(
                h.store.as_ref(),
                async |conn: &mut Conn<S>, m: &Delivered| S::write_effect(conn, m).await,
            )
            .await
            .unwrap()
    };
    let _ = receive(h, &inbox, "a", 2, "a-2").await;
    let _ = receive(h, &inbox, "a", 3, "a-3").await;
    let _ = receive(h, &inbox, "b", 5, "b-5").await;
    let none = sweep().await;
    assert!(none.lost.is_empty() && none.applied.is_empty(), "{none:?}");

    h.clock.advance(Duration::from_secs(61));
    let _ = receive(h, &inbox, "c", 2, "c-2").await;
    let swept = sweep().await;
    let lost: Vec<_> = swept
        .lost
        .iter()
        .map(|g| (g.key.as_str(), g.first, g.last))
        .collect();
    assert_eq!(lost, [("a", 1, 1), ("b", 1, 4)]);
    let mut expected = pairs("a", [2, 3]);
    expected.extend(pairs("b", [5]));
    assert_eq!(swept.applied, expected);
    assert_eq!(applied(h).await, expected, "c's young gap is kept");

    let again = sweep().await;
    assert!(again.lost.is_empty() && again.applied.is_empty());
    assert_eq!(receive(h, &inbox, "a", 4, "a-4").await.applied, [4]);
    assert_eq!(
        receive(h, &inbox, "c", 1, "c-1").await.applied,
        [1, 2],
        "the swept state is the key's state"
    );
}

async fn it_starts_new_keys_at_the_configured_first_number<S: Backend>(h: &Harness<S>) {
    let inbox = SequencedInbox::new().first_seq(10);
    assert_eq!(
        receive(h, &inbox, "k", 11, "m-11").await.arrival,
        Arrival::Held { waiting_for: 10 },
        "the first message to arrive does not set the start"
    );
    assert_eq!(receive(h, &inbox, "k", 10, "m-10").await.applied, [10, 11]);
    assert_eq!(
        receive(h, &inbox, "k", 9, "m-9").await.arrival,
        Arrival::Duplicate(DuplicateOf::Applied)
    );
    // The default start is 1; a key already seen keeps its place under another setting.
    let default = SequencedInbox::new();
    assert_eq!(receive(h, &default, "j", 1, "j-1").await.applied, [1]);
    assert_eq!(receive(h, &default, "k", 12, "m-12").await.applied, [12]);
    assert!(
        default
            .receive(
                h.store.as_ref(),
                "k",
                0,
                "m-0",
                b"",
                async |conn: &mut Conn<S>, m: &Delivered| S::write_effect(conn, m).await,
            )
            .await
            .is_err(),
        "0 is not a sequence number"
    );
}

async fn it_never_applies_twice_or_out_of_order_under_concurrent_consumers<S: Backend>(
    h: &Harness<S>,
) {
    const N: u64 = 64;
    const CONSUMERS: usize = 8;
    let inbox = SequencedInbox::new();
    // Every message twice, in a scrambled order, from 8 consumers that start together.
    let deliveries: Vec<u64> = (0..2 * N).map(|i| (i * 7) % N + 1).collect();
    let start = Arc::new(tokio::sync::Barrier::new(CONSUMERS));
    let mut consumers = Vec::new();
    for part in deliveries.chunks(deliveries.len() / CONSUMERS) {
        let store = Arc::clone(&h.store);
        let start = Arc::clone(&start);
        let part = part.to_vec();
        consumers.push(tokio::spawn(async move {
            start.wait().await;
            let mut receipts = Vec::new();
            for seq in part {
                let r = inbox
                    .receive(
                        store.as_ref(),
                        "k",
                        seq,
                        &format!("m-{seq}"),
                        b"x",
                        async |conn: &mut Conn<S>, m: &Delivered| {
                            // Give the other consumers a chance to run inside this transaction.
                            tokio::task::yield_now().await;
                            S::write_effect(conn, m).await
                        },
                    )
                    .await
                    .unwrap();
                receipts.push(r);
            }
            receipts
        }));
    }
    let mut applied_by_receipts = Vec::new();
    for c in consumers {
        for r in c.await.unwrap() {
            applied_by_receipts.extend(r.applied);
        }
    }
    applied_by_receipts.sort_unstable();
    assert_eq!(applied_by_receipts, (1..=N).collect::<Vec<_>>());
    assert_eq!(
        applied(h).await,
        pairs("k", 1..=N),
        "each number applied once, in order"
    );
}

/// While one consumer is inside a key's transaction, another one's message of that key waits for
/// the row lock instead of reading the key's old state (which would hold a message that is next).
/// PostgreSQL only: SQLite's single writer makes the second wait for the connection itself.
mod a_second_consumer_of_a_key_waits_for_the_first {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(mut h) = super::postgres().await else {
            return;
        };
        let inbox = SequencedInbox::new();
        let (inside_tx, inside_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        // The key exists already: the first consumer's lock is then a row lock, not an insert.
        assert_eq!(receive(&h, &inbox, "k", 1, "m-1").await.applied, [1]);
        let (mut inside, mut release) = (Some(inside_tx), Some(release_rx));
        // The first consumer runs on the test's own task, beside the driver below.
        let first = inbox.receive(
            h.store.as_ref(),
            "k",
            2,
            "m-2",
            b"a",
            async |conn: &mut PgConnection, m: &Delivered| {
                if let Some(tx) = inside.take() {
                    let _ = tx.send(());
                }
                if let Some(rx) = release.take() {
                    let _ = rx.await;
                }
                PostgresStore::write_effect(conn, m).await
            },
        );
        let driver = async {
            inside_rx.await.unwrap();
            let store = Arc::clone(&h.store);
            let second = tokio::spawn(async move {
                inbox
                    .receive(
                        store.as_ref(),
                        "k",
                        3,
                        "m-3",
                        b"b",
                        async |conn: &mut PgConnection, m: &Delivered| {
                            PostgresStore::write_effect(conn, m).await
                        },
                    )
                    .await
                    .unwrap()
            });
            let pool = h.store.pool().clone();
            quark_history::testing::eventually(
                "the second consumer waits for a lock or is done",
                async || {
                    let waiting: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    waiting > 0 || second.is_finished()
                },
            )
            .await;
            release_tx.send(()).unwrap();
            second.await.unwrap()
        };
        let (first, second) = tokio::join!(first, driver);
        assert_eq!(first.unwrap().applied, [2]);
        assert_eq!(
            (second.arrival, second.applied),
            (Arrival::Applied, vec![3]),
            "the second saw the first's commit"
        );
        assert_eq!(applied(&h).await, pairs("k", [1, 2, 3]));
        let t = h.pg.take().expect("a PostgreSQL test database");
        drop(h);
        t.cleanup().await;
    }
}
