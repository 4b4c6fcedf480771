//! Signed checkpoints over the global order catch what the hash chain cannot: a coordinated
//! rewrite of events, their hashes and the instance's head.

use quark_history::checkpoint::{self, CheckpointCheck, SigningKey};
use quark_history::testing::{Raw, TestStore, eventually};
use quark_history::{Commit, Expected, GlobalPosition, HistoryEvent, Payload};

use crate::support::{conformance, start};

conformance!(
    it_holds_for_the_events_it_covers_whatever_comes_after,
    it_catches_a_coordinated_rewrite_the_hash_chain_cannot_see,
    it_refuses_a_changed_checkpoint_and_another_key,
    it_catches_an_event_changed_without_its_hash,
);

fn signal(n: u32) -> HistoryEvent {
    HistoryEvent::SignalReceived {
        name: format!("s{n}"),
        payload: Payload::json(&n).unwrap(),
    }
}

/// A checkpoint of every event final now, signed with `key`.
async fn checkpoint_all(t: &TestStore, key: &SigningKey) -> checkpoint::Checkpoint {
    checkpoint::create(&*t.store, key, GlobalPosition::START, None, &mut |_| {})
        .await
        .unwrap()
}

/// What checking `checkpoint` against the store finds, trusting `key`.
async fn verdict(
    t: &TestStore,
    checkpoint: &checkpoint::Checkpoint,
    key: Option<&str>,
) -> CheckpointCheck {
    checkpoint::check(&*t.store, checkpoint, key, &mut |_| {})
        .await
        .unwrap()
}

fn key() -> SigningKey {
    SigningKey::from_pkcs8(&checkpoint::generate_key().unwrap()).unwrap()
}

/// Three instances, `n` events each after their first, appended in turns so that they interleave
/// in the global order. Returns once all of them are final in that order (on PostgreSQL a
/// transaction open anywhere on the server holds them back).
async fn journal(t: &TestStore, n: u32) {
    for id in ["a", "b", "c"] {
        start(t, id).await;
    }
    for round in 0..n / 100 {
        for id in ["a", "b", "c"] {
            let events = (0..100).map(|i| signal(round * 100 + i));
            t.store
                .commit(Commit::new().append(id, Expected::Any, events))
                .await
                .unwrap();
        }
    }
    let total = 3 * (n as usize / 100 * 100 + 1);
    eventually("every event is final in the global order", async || {
        let mut seen = 0;
        let mut after = GlobalPosition::START;
        loop {
            let page = t.store.read_all(after, 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            seen += page.len();
        }
        seen == total
    })
    .await;
}

async fn it_holds_for_the_events_it_covers_whatever_comes_after(t: &TestStore) {
    // More events than one chunk.
    journal(t, 1500).await;
    let key = key();
    let mut seen = 0;
    let made = checkpoint::create(&*t.store, &key, GlobalPosition::START, None, &mut |n| {
        seen = n
    })
    .await
    .unwrap();
    assert_eq!(made.events, 3 * 1501);
    assert_eq!(seen, made.events, "progress reached the end");
    assert_eq!(
        made.chunks.len(),
        2,
        "{} events in chunks of 4096",
        made.events
    );
    let trusted = key.public_key_hex();
    let holds = CheckpointCheck::Holds { events: 3 * 1501 };
    assert_eq!(verdict(t, &made, Some(&trusted)).await, holds);

    // Later events are outside its range.
    t.store
        .commit(Commit::new().append("a", Expected::Any, [signal(9999)]))
        .await
        .unwrap();
    assert_eq!(verdict(t, &made, Some(&trusted)).await, holds);
    // A checkpoint of a range in the middle covers just that range.
    eventually("the later event is final", async || {
        t.store.read_all(made.until, 10).await.unwrap().len() == 1
    })
    .await;
    let middle = checkpoint::create(&*t.store, &key, made.until, None, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(middle.events, 1);
    let json = serde_json::to_string(&made).unwrap();
    assert_eq!(
        serde_json::from_str::<checkpoint::Checkpoint>(&json).unwrap(),
        made
    );
}

/// Runs `$body` with the test store's pool, whichever backend it is.
macro_rules! on_pool {
    ($t:expr, |$pool:ident| $body:expr) => {
        match $t.raw() {
            Raw::Sqlite($pool) => $body,
            Raw::Postgres($pool) => $body,
            _ => unreachable!("the suite runs on SQLite and PostgreSQL"),
        }
    };
}

/// The rows of `instance`'s history: (seq, codec, payload, hash).
async fn rows(t: &TestStore, instance: &str) -> Vec<(i64, i16, Vec<u8>, Vec<u8>)> {
    let sql = "SELECT seq, codec, payload, hash FROM history WHERE instance_id = $1 ORDER BY seq";
    on_pool!(t, |pool| sqlx::query_as(sql)
        .bind(instance)
        .fetch_all(pool)
        .await
        .unwrap())
}

/// Rewrites event `seq` of `instance` with the content of event `from`, and every hash after it
/// and the instance's head to match, as someone with write access to the database would.
async fn rewrite(t: &TestStore, instance: &str, seq: i64, from: i64) {
    let mut rows = rows(t, instance).await;
    let source = rows.iter().find(|r| r.0 == from).unwrap().clone();
    let mut prev: Vec<u8> = rows.iter().find(|r| r.0 == seq - 1).unwrap().3.clone();
    for row in rows.iter_mut().filter(|r| r.0 >= seq) {
        if row.0 == seq {
            (row.1, row.2) = (source.1, source.2.clone());
        }
        // The chain's link, as the journal documents it.
        let mut h = blake3::Hasher::new();
        h.update(&prev);
        h.update(&(row.0 as u64).to_be_bytes());
        h.update(&row.1.to_be_bytes());
        h.update(&row.2);
        row.3 = h.finalize().as_bytes().to_vec();
        prev = row.3.clone();
    }
    let update = "UPDATE history SET codec = $1, payload = $2, hash = $3 \
                  WHERE instance_id = $4 AND seq = $5";
    let head = "UPDATE instances SET last_hash = $1 WHERE id = $2";
    for (s, codec, payload, hash) in rows.into_iter().filter(|r| r.0 >= seq) {
        on_pool!(t, |pool| {
            sqlx::query(update)
                .bind(codec)
                .bind(payload.clone())
                .bind(hash.clone())
                .bind(instance)
                .bind(s)
                .execute(pool)
                .await
                .unwrap();
        });
    }
    on_pool!(t, |pool| {
        sqlx::query(head)
            .bind(prev.clone())
            .bind(instance)
            .execute(pool)
            .await
            .unwrap();
    });
}

async fn it_catches_a_coordinated_rewrite_the_hash_chain_cannot_see(t: &TestStore) {
    journal(t, 1500).await;
    let key = key();
    let trusted = key.public_key_hex();
    let made = checkpoint_all(t, &key).await;

    // Event 1400 of "b" gets the content of its event 3, and the chain is made whole again.
    rewrite(t, "b", 1400, 3).await;
    assert!(
        t.store.verify("b").await.unwrap().is_intact(),
        "the chain alone cannot see it"
    );
    match verdict(t, &made, Some(&trusted)).await {
        CheckpointCheck::Differs {
            events_now,
            events_then,
            first_chunk,
            chunk_starts_at,
        } => {
            assert_eq!(events_now, events_then);
            // "b"'s event 1400 is the order's 4,102nd: 3 starts, 13 rounds of 300, "a"'s 100 of
            // the 14th, then "b"'s 99th. The second chunk starts at the 4,097th.
            assert_eq!(first_chunk, 1);
            assert!(chunk_starts_at.is_some());
        }
        other => panic!("expected Differs, got {other:?}"),
    }

    // An event removed from the range is caught too (the chain names it as well).
    t.execute("DELETE FROM history WHERE instance_id = 'c' AND seq = 1501")
        .await;
    match verdict(t, &made, Some(&trusted)).await {
        CheckpointCheck::Differs {
            events_now,
            events_then,
            ..
        } => assert_eq!(events_now + 1, events_then),
        other => panic!("expected Differs, got {other:?}"),
    }
}

async fn it_refuses_a_changed_checkpoint_and_another_key(t: &TestStore) {
    journal(t, 100).await;
    let key = key();
    let made = checkpoint_all(t, &key).await;
    let trusted = key.public_key_hex();

    // The file edited to match a rewritten store: the signature no longer verifies.
    let mut edited = made.clone();
    edited.events -= 1;
    assert_eq!(
        verdict(t, &edited, Some(&trusted)).await,
        CheckpointCheck::BadSignature
    );
    // Re-signed with another key: consistent by itself, refused by whoever trusts the first.
    let other = self::key();
    let forged = checkpoint_all(t, &other).await;
    assert_eq!(
        verdict(t, &forged, Some(&trusted)).await,
        CheckpointCheck::BadSignature
    );
    assert!(matches!(
        verdict(t, &forged, None).await,
        CheckpointCheck::Holds { .. }
    ));
    assert!(SigningKey::from_pkcs8(b"not a key").is_err());
}

/// An event's content changed and its hash left alone: the chain names it, and the checkpoint,
/// which covers content, not only hashes, does not hold either.
async fn it_catches_an_event_changed_without_its_hash(t: &TestStore) {
    journal(t, 100).await;
    let key = key();
    let trusted = key.public_key_hex();
    let made = checkpoint_all(t, &key).await;
    assert_eq!(
        t.execute(
            "UPDATE history SET payload = (SELECT payload FROM history h \
             WHERE h.instance_id = 'a' AND h.seq = 6) WHERE instance_id = 'a' AND seq = 5"
        )
        .await,
        1
    );
    assert_eq!(
        t.store.verify("a").await.unwrap().problem,
        Some(quark_history::ChainBreak::Altered { seq: 5 })
    );
    assert!(
        matches!(
            verdict(t, &made, Some(&trusted)).await,
            CheckpointCheck::Differs { first_chunk: 0, .. }
        ),
        "the checkpoint covers the event's content"
    );
}
