//! The decision log of two-phase commits, for both databases (the statements are the same).

use futures::future::BoxFuture;
use sqlx::Database;

use super::{Dialect, Row, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::Result;
use crate::two_phase::decision::{join_names, split_names};
use crate::two_phase::{Decision, DecisionRecord, DecisionStore};

/// Records `decision` for `gid` on `conn` unless one stands; returns the one that stands. A
/// concurrent writer of the same id waits for this one's transaction (the primary key) and then
/// reads its decision.
pub(crate) async fn decide_in<DB: Dialect>(
    conn: &mut <DB as Database>::Connection,
    gid: &str,
    decision: Decision,
    participants: &[String],
    now: Timestamp,
) -> Result<Decision> {
    let standing: String = Stmt::<DB>::new(
        "INSERT INTO tx_decisions (gid, decision, participants, decided_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (gid) DO UPDATE SET decision = tx_decisions.decision \
         RETURNING decision",
    )
    .bind(gid)
    .bind(decision.as_str())
    .bind(join_names(participants))
    .bind(now.as_micros())
    .fetch_one(conn)
    .await?
    .get("decision")?;
    standing.parse()
}

fn record<DB: Dialect>(row: &Row<DB>) -> Result<DecisionRecord> {
    Ok(DecisionRecord {
        gid: row.get("gid")?,
        decision: row.get::<String>("decision")?.parse()?,
        participants: split_names(&row.get::<String>("participants")?),
        decided_at: Timestamp::from_micros(row.get("decided_at")?),
    })
}

impl<S: SqlStore> DecisionStore for S {
    fn coordinator_id(&self) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            let fresh = uuid::Uuid::now_v7().simple().to_string();
            let id: String = Stmt::<S::Db>::new(
                "INSERT INTO tx_coordinator (one, id) VALUES (1, $1) \
                 ON CONFLICT (one) DO UPDATE SET id = tx_coordinator.id RETURNING id",
            )
            .bind(fresh)
            .fetch_one(&mut *self.writer().acquire().await?)
            .await?
            .get("id")?;
            Ok(id)
        })
    }

    fn decide<'a>(
        &'a self,
        gid: &'a str,
        decision: Decision,
        participants: &'a [String],
    ) -> BoxFuture<'a, Result<Decision>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let mut conn = self.writer().acquire().await?;
            decide_in::<S::Db>(&mut conn, gid, decision, participants, now).await
        })
    }

    fn decision<'a>(&'a self, gid: &'a str) -> BoxFuture<'a, Result<Option<DecisionRecord>>> {
        Box::pin(async move {
            let row = Stmt::<S::Db>::new(
                "SELECT gid, decision, participants, decided_at FROM tx_decisions WHERE gid = $1",
            )
            .bind(gid)
            .fetch_optional(&mut *self.reader().acquire().await?)
            .await?;
            row.as_ref().map(record).transpose()
        })
    }

    fn decisions(&self) -> BoxFuture<'_, Result<Vec<DecisionRecord>>> {
        Box::pin(async move {
            // The writer: recovery reads the decisions, then what is prepared, and must not
            // read a decision older than the replica's lag.
            Stmt::<S::Db>::new(
                "SELECT gid, decision, participants, decided_at FROM tx_decisions \
                 ORDER BY decided_at, gid",
            )
            .fetch_all(&mut *self.writer().acquire().await?)
            .await?
            .iter()
            .map(record)
            .collect()
        })
    }

    fn forget_decision<'a>(&'a self, gid: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let gone = Stmt::<S::Db>::new("DELETE FROM tx_decisions WHERE gid = $1")
                .bind(gid)
                .execute(&mut *self.writer().acquire().await?)
                .await?;
            Ok(gone > 0)
        })
    }
}
