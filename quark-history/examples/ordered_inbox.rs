//! Ordered delivery in the inbox: ledger entries that carry a sequence number per account are
//! booked in order, a gap holds the entries after it, and a gap that does not fill in time is
//! declared lost and reported. Included in the book (`book/src/outbox.md`).
//!
//! Run with `cargo run -p quark-history --example ordered_inbox`.

use std::time::Duration;

use quark_history::sqlx::{self, SqliteConnection};
use quark_history::{
    Arrival, Delivered, ManualClock, SequencedInbox, SqliteStore, StoreConfig, Timestamp,
};

// ANCHOR: handler
/// Books one entry on the engine's connection: it commits with the account's advance, or not at
/// all.
async fn book(conn: &mut SqliteConnection, entry: &Delivered) -> Result<(), quark_history::Error> {
    sqlx::query("INSERT INTO ledger (account, seq, entry) VALUES (?1, ?2, ?3)")
        .bind(&entry.key)
        .bind(entry.seq as i64)
        .bind(String::from_utf8_lossy(&entry.payload).into_owned())
        .execute(&mut *conn)
        .await?;
    Ok(())
}
// ANCHOR_END: handler

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // A manual clock so that the example can show a gap timing out without waiting 5 minutes.
    let clock = ManualClock::new(Timestamp::from_micros(1_767_225_600_000_000));
    let store = SqliteStore::in_memory_with(StoreConfig::default().clock(clock.clone())).await?;
    sqlx::query(
        "CREATE TABLE ledger (account TEXT NOT NULL, seq INTEGER NOT NULL, entry TEXT NOT NULL)",
    )
    .execute(store.pool())
    .await?;

    // ANCHOR: receive
    let inbox = SequencedInbox::new().gap_timeout(Duration::from_secs(300));
    // Entry 2 arrives before entry 1: it is stored and waits.
    let receipt = inbox
        .receive(&store, "account-7", 2, "entry-2", b"+30", book)
        .await?;
    assert_eq!(receipt.arrival, Arrival::Held { waiting_for: 1 });
    // Entry 1 fills the gap: both are booked, in order, in one transaction.
    let receipt = inbox
        .receive(&store, "account-7", 1, "entry-1", b"+100", book)
        .await?;
    assert_eq!(receipt.applied, [1, 2]);
    // ANCHOR_END: receive

    // ANCHOR: sweep
    // Entry 3 never comes; 4 is held behind it until the gap timeout passes.
    let _ = inbox
        .receive(&store, "account-7", 4, "entry-4", b"-20", book)
        .await?;
    clock.advance(Duration::from_secs(301));
    // A maintenance loop sweeps keys that receive nothing more (a receive for the key would do
    // the same): 3 is declared lost, recorded and logged, and 4 is booked.
    let sweep = inbox.expire_gaps(&store, book).await?;
    assert_eq!(sweep.applied, [("account-7".to_string(), 4)]);
    for gap in SequencedInbox::lost_gaps(&store, 100).await? {
        println!(
            "{}: entries {}..={} lost at {}",
            gap.key, gap.first, gap.last, gap.declared_at
        );
    }
    // If entry 3 turns up after all, it is reported as late and not booked out of order.
    let late = inbox
        .receive(&store, "account-7", 3, "entry-3", b"+5", book)
        .await?;
    assert!(matches!(late.arrival, Arrival::Late { .. }));
    // ANCHOR_END: sweep

    let booked: Vec<(i64, String)> = sqlx::query_as("SELECT seq, entry FROM ledger ORDER BY rowid")
        .fetch_all(store.pool())
        .await?;
    println!("booked: {booked:?}");
    Ok(())
}
