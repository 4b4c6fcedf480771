//! The inbox: the consumer side of messaging.
//!
//! [`Inbox::once`] runs a handler's writes and records the message id in one transaction, and skips
//! a duplicate within the deduplication window. Ordered delivery per key
//! ([`SequencedInbox`](crate::SequencedInbox)) is built on it.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::error::{Error, Result};

/// How long the inbox remembers a message id by default: 7 days.
pub const DEFAULT_INBOX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// What [`Inbox::once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Received<T> {
    /// The id was new: the handler ran and its writes committed with the id.
    First(T),
    /// The id was seen within the window: the handler did not run.
    Duplicate,
}

impl<T> Received<T> {
    /// Whether it was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Received::Duplicate)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A store whose database a handler can write to inside [`Inbox::once`]: [`PostgresStore`]
/// (the handler gets a `&mut PgConnection`) and [`SqliteStore`] (a `&mut SqliteConnection`).
/// Sealed.
///
/// [`PostgresStore`]: crate::PostgresStore
/// [`SqliteStore`]: crate::SqliteStore
pub trait InboxStore: sealed::Sealed + Send + Sync {
    /// The database.
    type Db: sqlx::Database;

    /// Begins a write transaction on the engine's database (on SQLite, on its single writer
    /// connection, with `BEGIN IMMEDIATE`): for code that writes its own rows together with
    /// [`Inbox::record_in`]. ([`Store::begin_tx`](crate::Store::begin_tx) is the same on either
    /// database.)
    fn begin_write(&self) -> BoxFuture<'_, Result<sqlx::Transaction<'static, Self::Db>>>;

    /// Records `message_id` inside the transaction on `conn`; `true` if it is new.
    #[doc(hidden)]
    fn record_in<'a>(
        &'a self,
        conn: &'a mut <Self::Db as sqlx::Database>::Connection,
        message_id: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool>>;
}

#[cfg(feature = "postgres")]
impl sealed::Sealed for crate::PostgresStore {}
#[cfg(feature = "sqlite")]
impl sealed::Sealed for crate::SqliteStore {}

/// The consumer side: run a message's effects at most once per message id.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> quark_history::Result<()> {
/// use quark_history::{Inbox, Received, SqliteStore};
///
/// let store = SqliteStore::in_memory().await?;
/// let inbox = Inbox::new();
/// for round in 0..2 {
///     let outcome = inbox
///         .once(&store, "payment-42", async |conn: &mut quark_history::sqlx::SqliteConnection| {
///             // The handler's writes commit together with the id, or not at all.
///             let _ = conn;
///             Ok::<_, quark_history::Error>("charged")
///         })
///         .await?;
///     let expected = if round == 0 { Received::First("charged") } else { Received::Duplicate };
///     assert_eq!(outcome, expected);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Inbox {
    window: Duration,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox::new()
    }
}

impl Inbox {
    /// An inbox with the default window ([`DEFAULT_INBOX_WINDOW`], 7 days).
    pub fn new() -> Self {
        Inbox {
            window: DEFAULT_INBOX_WINDOW,
        }
    }

    /// Sets the deduplication window: an id seen longer ago than this counts as new. Purge old ids
    /// with [`OutboxStore::purge_inbox`](crate::OutboxStore::purge_inbox) and the same window.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The window.
    pub fn window_len(&self) -> Duration {
        self.window
    }

    /// In one transaction: records `message_id` and runs `handler` on the transaction's
    /// connection. A duplicate within the window is skipped (the handler does not run). If the
    /// handler fails, nothing is recorded and its error is returned. Concurrent calls with one id
    /// are serialized by the database: one runs, the others see a duplicate.
    pub async fn once<S, T, E>(
        &self,
        store: &S,
        message_id: &str,
        handler: impl AsyncFnOnce(&mut <S::Db as sqlx::Database>::Connection) -> Result<T, E>,
    ) -> Result<Received<T>, E>
    where
        S: InboxStore,
        E: From<Error>,
    {
        let mut tx = store.begin_write().await?;
        if !store.record_in(&mut *tx, message_id, self.window).await? {
            tx.rollback().await.map_err(Error::from)?;
            return Ok(Received::Duplicate);
        }
        let value = handler(&mut *tx).await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Received::First(value))
    }

    /// Records `message_id` inside the caller's own transaction on `conn`: `true` if it is new and
    /// the caller should apply the message's effects in the same transaction; `false` for a
    /// duplicate.
    pub async fn record_in<S: InboxStore>(
        &self,
        store: &S,
        conn: &mut <S::Db as sqlx::Database>::Connection,
        message_id: &str,
    ) -> Result<bool> {
        store.record_in(conn, message_id, self.window).await
    }
}
