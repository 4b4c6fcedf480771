//! Projection checkpoints, leases and versions ([`ProjectionStore`]), for both databases: the
//! statements agree.

use std::time::Duration;

use futures::future::BoxFuture;

use super::{Dialect, Row, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::journal::GlobalPosition;
use crate::projection::{ProjectionRecord, ProjectionStore};
use crate::transaction::StoreTx;

const COLUMNS: &str = "name, version, state, checkpoint_tx, checkpoint_pos, applied, \
     last_event_at, lease_owner, lease_expires_at, updated_at";

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

fn decode<DB: Dialect>(row: &Row<DB>, now: Timestamp) -> Result<ProjectionRecord> {
    let state: String = row.get("state")?;
    let expires = Timestamp::from_micros(row.get("lease_expires_at")?);
    let owner: Option<String> = row.get("lease_owner")?;
    Ok(ProjectionRecord {
        name: row.get("name")?,
        version: row.get::<i64>("version")? as u32,
        state: state.parse().map_err(Error::Invalid)?,
        checkpoint: GlobalPosition {
            tx: row.get::<i64>("checkpoint_tx")? as u64,
            position: row.get("checkpoint_pos")?,
        },
        applied: row.get::<i64>("applied")? as u64,
        last_event_at: row
            .get::<Option<i64>>("last_event_at")?
            .map(Timestamp::from_micros),
        // An expired lease is held by nobody.
        lease_owner: owner.filter(|_| expires > now),
        lease_expires_at: expires,
        updated_at: Timestamp::from_micros(row.get("updated_at")?),
    })
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Invalid("a projection needs a non-empty name".into()));
    }
    Ok(())
}

impl<S: SqlStore> ProjectionStore for S {
    fn register_projection<'a>(
        &'a self,
        name: &'a str,
        version: u32,
    ) -> BoxFuture<'a, Result<ProjectionRecord>> {
        Box::pin(async move {
            check_name(name)?;
            let now = self.settings().clock.now();
            let mut tx = self.begin_write().await?;
            // The first version of a name is active; later ones build beside it.
            Stmt::<S::Db>::new(
                "INSERT INTO projections (name, version, state, created_at, updated_at) \
                 SELECT $1, $2, CASE WHEN EXISTS (SELECT 1 FROM projections WHERE name = $1) \
                 THEN 'building' ELSE 'active' END, $3, $3 \
                 ON CONFLICT (name, version) DO NOTHING",
            )
            .bind(name)
            .bind(i64::from(version))
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
            let row = Stmt::<S::Db>::new(sql(format!(
                "SELECT {COLUMNS} FROM projections WHERE name = $1 AND version = $2"
            )))
            .bind(name)
            .bind(i64::from(version))
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            decode(&row, now)
        })
    }

    fn lease_projection<'a>(
        &'a self,
        name: &'a str,
        version: u32,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<ProjectionRecord>>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let until = now + ttl;
            let row = Stmt::<S::Db>::new(sql(format!(
                "UPDATE projections SET lease_owner = $3, lease_expires_at = $4 \
                 WHERE name = $1 AND version = $2 AND state <> 'retired' \
                 AND (lease_owner IS NULL OR lease_owner = $3 OR lease_expires_at <= $5) \
                 RETURNING {COLUMNS}"
            )))
            .bind(name)
            .bind(i64::from(version))
            .bind(owner)
            .bind(until.as_micros())
            .bind(now.as_micros())
            .fetch_optional(&mut *self.writer().acquire().await?)
            .await?;
            row.map(|r| decode(&r, now)).transpose()
        })
    }

    fn advance_projection<'a>(
        &'a self,
        tx: &'a mut StoreTx,
        name: &'a str,
        version: u32,
        owner: &'a str,
        from: GlobalPosition,
        to: GlobalPosition,
        applied: u64,
        last_event_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let conn = S::Db::store_tx_conn(tx)?;
            let moved = Stmt::<S::Db>::new(
                "UPDATE projections SET checkpoint_tx = $5, checkpoint_pos = $6, \
                 applied = applied + $7, last_event_at = COALESCE($8, last_event_at), \
                 updated_at = $9 \
                 WHERE name = $1 AND version = $2 AND lease_owner = $3 AND lease_expires_at > $9 \
                 AND checkpoint_tx = $4 AND checkpoint_pos = $10",
            )
            .bind(name)
            .bind(i64::from(version))
            .bind(owner)
            .bind(from.tx as i64)
            .bind(to.tx as i64)
            .bind(to.position)
            .bind(applied as i64)
            .bind(last_event_at.map(Timestamp::as_micros))
            .bind(now.as_micros())
            .bind(from.position)
            .execute(&mut *conn)
            .await?;
            if moved != 1 {
                return Err(Error::ProjectionMoved {
                    name: name.to_string(),
                    version,
                });
            }
            Ok(())
        })
    }

    fn release_projection<'a>(
        &'a self,
        name: &'a str,
        version: u32,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            Stmt::<S::Db>::new(
                "UPDATE projections SET lease_owner = NULL, lease_expires_at = 0 \
                 WHERE name = $1 AND version = $2 AND lease_owner = $3",
            )
            .bind(name)
            .bind(i64::from(version))
            .bind(owner)
            .execute(&mut *self.writer().acquire().await?)
            .await?;
            Ok(())
        })
    }

    fn list_projections(&self) -> BoxFuture<'_, Result<Vec<ProjectionRecord>>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            Stmt::<S::Db>::new(sql(format!(
                "SELECT {COLUMNS} FROM projections ORDER BY name, version"
            )))
            .fetch_all(&mut *self.reader().acquire().await?)
            .await?
            .iter()
            .map(|r| decode(r, now))
            .collect()
        })
    }

    fn reset_projection<'a>(
        &'a self,
        tx: &'a mut StoreTx,
        name: &'a str,
        version: u32,
        owner: &'a str,
        to: GlobalPosition,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let conn = S::Db::store_tx_conn(tx)?;
            let reset = Stmt::<S::Db>::new(
                "UPDATE projections SET checkpoint_tx = $5, checkpoint_pos = $6, \
                 applied = CASE WHEN $7 THEN 0 ELSE applied END, \
                 last_event_at = NULL, updated_at = $4 \
                 WHERE name = $1 AND version = $2 AND lease_owner = $3 AND lease_expires_at > $4",
            )
            .bind(name)
            .bind(i64::from(version))
            .bind(owner)
            .bind(now.as_micros())
            .bind(to.tx as i64)
            .bind(to.position)
            .bind(to == GlobalPosition::START)
            .execute(&mut *conn)
            .await?;
            if reset != 1 {
                return Err(Error::ProjectionMoved {
                    name: name.to_string(),
                    version,
                });
            }
            Ok(())
        })
    }

    fn activate_projection<'a>(&'a self, name: &'a str, version: u32) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let mut tx = self.begin_write().await?;
            let found = Stmt::<S::Db>::new(
                "UPDATE projections SET state = 'active', updated_at = $3 \
                 WHERE name = $1 AND version = $2 AND state <> 'retired'",
            )
            .bind(name)
            .bind(i64::from(version))
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
            if found != 1 {
                return Err(Error::Invalid(format!(
                    "projection `{name}` v{version} is unknown or retired"
                )));
            }
            Stmt::<S::Db>::new(
                "UPDATE projections SET state = 'retired', lease_owner = NULL, \
                 lease_expires_at = 0, updated_at = $3 \
                 WHERE name = $1 AND version <> $2 AND state = 'active'",
            )
            .bind(name)
            .bind(i64::from(version))
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn committed_head(&self) -> BoxFuture<'_, Result<Option<GlobalPosition>>> {
        Box::pin(async move {
            let order = match S::Db::BACKEND {
                crate::Backend::Postgres => "tx_id DESC, global_position DESC",
                _ => "global_position DESC",
            };
            let row = Stmt::<S::Db>::new(sql(format!(
                "SELECT {} AS tx, global_position FROM history ORDER BY {order} LIMIT 1",
                S::Db::TX_TEXT
            )))
            .fetch_optional(&mut *self.reader().acquire().await?)
            .await?;
            row.map(|r| super::journal::position_from_row(&r))
                .transpose()
        })
    }

    fn count_after(&self, position: GlobalPosition, cap: u64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let after = match S::Db::BACKEND {
                crate::Backend::Postgres => "(tx_id, global_position) > ($1::text::xid8, $2)",
                _ => "global_position > $2 AND $1 = $1",
            };
            let n: i64 = Stmt::<S::Db>::new(sql(format!(
                "SELECT COUNT(*) AS n FROM (SELECT 1 FROM history WHERE {after} LIMIT $3) s"
            )))
            .bind(position.tx.to_string())
            .bind(position.position)
            .bind(cap.min(i64::MAX as u64) as i64)
            .fetch_one(&mut *self.reader().acquire().await?)
            .await?
            .get("n")?;
            Ok(n as u64)
        })
    }

    fn event_position<'a>(
        &'a self,
        instance_id: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, Result<Option<GlobalPosition>>> {
        Box::pin(async move {
            let row = Stmt::<S::Db>::new(sql(format!(
                "SELECT {} AS tx, global_position FROM history WHERE instance_id = $1 AND seq = $2",
                S::Db::TX_TEXT
            )))
            .bind(instance_id)
            .bind(seq as i64)
            .fetch_optional(&mut *self.reader().acquire().await?)
            .await?;
            row.map(|r| super::journal::position_from_row(&r))
                .transpose()
        })
    }
}
