//! A transaction on the engine's own database that user code writes in and a [`Commit`] finishes.
//!
//! [`Store::begin_tx`] opens it; the caller runs its own statements on the connection
//! ([`StoreTx::postgres`] or [`StoreTx::sqlite`]), may record inbox ids in it
//! ([`StoreTx::receive`]), and then hands it to [`Store::commit_tx`] with the commit that records
//! the outcome: the commit's appends, tasks, settle and outbox messages are written in the same
//! transaction, which then commits. Everything lands together or nothing does. This is what makes
//! a transactional activity's database effects happen exactly once: its writes and its completion
//! event are one commit, fenced by the task's lease (a lost lease fails the commit and rolls the
//! writes back).
//!
//! Dropping a `StoreTx` rolls it back.
//!
//! [`Commit`]: crate::Commit
//! [`Store::begin_tx`]: crate::Store::begin_tx
//! [`Store::commit_tx`]: crate::Store::commit_tx

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::store::Backend;

/// An open transaction on the engine's database, opened by
/// [`Store::begin_tx`](crate::Store::begin_tx). Run your statements on its connection
/// ([`postgres`](Self::postgres) or [`sqlite`](Self::sqlite)), add jobs and outbox messages with
/// [`Store::enqueue_tx`](crate::Store::enqueue_tx) and [`Store::send_tx`](crate::Store::send_tx),
/// and end it with [`commit`](Self::commit), [`Store::commit_tx`](crate::Store::commit_tx) (with a
/// commit of the engine's) or [`rollback`](Self::rollback). Dropping it rolls it back.
pub struct StoreTx {
    pub(crate) inner: TxInner,
    clock: Arc<dyn Clock>,
}

pub(crate) enum TxInner {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl fmt::Debug for StoreTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreTx")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl StoreTx {
    #[cfg(feature = "postgres")]
    pub(crate) fn from_postgres(
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        StoreTx {
            inner: TxInner::Postgres(tx),
            clock,
        }
    }

    #[cfg(feature = "sqlite")]
    pub(crate) fn from_sqlite(
        tx: sqlx::Transaction<'static, sqlx::Sqlite>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        StoreTx {
            inner: TxInner::Sqlite(tx),
            clock,
        }
    }

    /// Which database the transaction is on.
    pub fn backend(&self) -> Backend {
        match &self.inner {
            #[cfg(feature = "postgres")]
            TxInner::Postgres(_) => Backend::Postgres,
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The connection, on PostgreSQL: run your statements on it. Fails if the engine runs on
    /// another database.
    #[cfg(feature = "postgres")]
    pub fn postgres(&mut self) -> Result<&mut sqlx::PgConnection> {
        let backend = self.backend();
        match &mut self.inner {
            TxInner::Postgres(tx) => Ok(&mut **tx),
            #[allow(unreachable_patterns)]
            _ => Err(wrong_backend(backend, Backend::Postgres)),
        }
    }

    /// The connection, on SQLite: run your statements on it. Fails if the engine runs on another
    /// database. On SQLite the transaction holds the database's single writer until it ends, so
    /// keep it short.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(&mut self) -> Result<&mut sqlx::SqliteConnection> {
        let backend = self.backend();
        match &mut self.inner {
            TxInner::Sqlite(tx) => Ok(&mut **tx),
            #[allow(unreachable_patterns)]
            _ => Err(wrong_backend(backend, Backend::Sqlite)),
        }
    }

    /// Records an inbox message id in this transaction: `true` if it is new (apply the message's
    /// effects in this transaction), `false` if it was recorded within `window` (a duplicate:
    /// skip it). Concurrent transactions recording one id are serialized by the database; the
    /// one that commits second sees a duplicate.
    pub async fn receive(&mut self, message_id: &str, window: Duration) -> Result<bool> {
        let now = self.clock.now();
        match &mut self.inner {
            #[cfg(feature = "postgres")]
            TxInner::Postgres(tx) => {
                crate::sql::record::<sqlx::Postgres>(tx, message_id, now, window).await
            }
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(tx) => {
                crate::sql::record::<sqlx::Sqlite>(tx, message_id, now, window).await
            }
        }
    }

    /// Runs `handler` at most once per `message_id` within `window`, inside this transaction: the
    /// id is recorded and the handler's writes are made under a savepoint, so a handler that fails
    /// leaves neither the id nor its writes behind (the rest of the transaction stands) and its
    /// error is returned. A duplicate skips the handler.
    pub async fn once<T, E>(
        &mut self,
        message_id: &str,
        window: Duration,
        handler: impl AsyncFnOnce(&mut StoreTx) -> std::result::Result<T, E>,
    ) -> std::result::Result<crate::Received<T>, E>
    where
        E: From<Error>,
    {
        self.execute("SAVEPOINT quark_inbox_once").await?;
        if !self.receive(message_id, window).await? {
            self.execute("RELEASE SAVEPOINT quark_inbox_once").await?;
            return Ok(crate::Received::Duplicate);
        }
        match handler(self).await {
            Ok(value) => {
                self.execute("RELEASE SAVEPOINT quark_inbox_once").await?;
                Ok(crate::Received::First(value))
            }
            Err(e) => {
                self.execute("ROLLBACK TO SAVEPOINT quark_inbox_once")
                    .await?;
                self.execute("RELEASE SAVEPOINT quark_inbox_once").await?;
                Err(e)
            }
        }
    }

    /// Records, in this transaction, the decision to commit two-phase transaction `gid`, whose
    /// branches are prepared in `participants`: the transaction's commit is the commit point of
    /// the two-phase one. Fails with [`Error::Decided`] if it was given up meanwhile (a decision to
    /// abort stands); then roll this transaction back and the branches with it.
    pub async fn decide_commit(&mut self, gid: &str, participants: &[String]) -> Result<()> {
        crate::two_phase::decision::check_gid(gid)?;
        let now = self.clock.now();
        let decision = crate::two_phase::Decision::Commit;
        let standing = match &mut self.inner {
            #[cfg(feature = "postgres")]
            TxInner::Postgres(tx) => {
                crate::sql::decisions::decide_in::<sqlx::Postgres>(
                    tx,
                    gid,
                    decision,
                    participants,
                    now,
                )
                .await?
            }
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(tx) => {
                crate::sql::decisions::decide_in::<sqlx::Sqlite>(
                    tx,
                    gid,
                    decision,
                    participants,
                    now,
                )
                .await?
            }
        };
        if standing == decision {
            Ok(())
        } else {
            Err(Error::Decided {
                gid: gid.to_owned(),
                decision: standing,
            })
        }
    }

    async fn execute(&mut self, sql: &'static str) -> Result<()> {
        match &mut self.inner {
            #[cfg(feature = "postgres")]
            TxInner::Postgres(tx) => {
                sqlx::query(sql).execute(&mut **tx).await?;
            }
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(tx) => {
                sqlx::query(sql).execute(&mut **tx).await?;
            }
        }
        Ok(())
    }

    /// Commits the transaction: the caller's writes and whatever [`Store::enqueue_tx`] and
    /// [`Store::send_tx`] wrote in it land together. (To record a [`Commit`] with them, hand the
    /// transaction to [`Store::commit_tx`] instead.)
    ///
    /// [`Store::enqueue_tx`]: crate::Store::enqueue_tx
    /// [`Store::send_tx`]: crate::Store::send_tx
    /// [`Store::commit_tx`]: crate::Store::commit_tx
    /// [`Commit`]: crate::Commit
    pub async fn commit(self) -> Result<()> {
        match self.inner {
            #[cfg(feature = "postgres")]
            TxInner::Postgres(tx) => tx.commit().await?,
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Rolls the transaction back (dropping it does the same, without waiting).
    pub async fn rollback(self) -> Result<()> {
        match self.inner {
            #[cfg(feature = "postgres")]
            TxInner::Postgres(tx) => tx.rollback().await?,
            #[cfg(feature = "sqlite")]
            TxInner::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

#[allow(dead_code)]
fn wrong_backend(actual: Backend, wanted: Backend) -> Error {
    Error::Invalid(format!(
        "the engine's database is {actual}, not {wanted}: this transaction has no {wanted} connection"
    ))
}
