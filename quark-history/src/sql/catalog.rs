//! The catalog of registered types, for both databases (the statements are the same).

use futures::future::BoxFuture;

use super::{Row, SqlStore, Stmt};
use crate::catalog::{CatalogStore, RegisteredType, TypeKind};
use crate::clock::Timestamp;
use crate::error::{Error, Result};

const COLUMNS: &str = "kind, name, version, queue, options, worker_id, registered_at";

fn read<S: SqlStore>(row: &Row<S::Db>) -> Result<RegisteredType> {
    let kind: String = row.get("kind")?;
    let version: i64 = row.get("version")?;
    Ok(RegisteredType {
        kind: kind.parse().map_err(Error::Invalid)?,
        name: row.get("name")?,
        version: u32::try_from(version)
            .map_err(|_| Error::Invalid(format!("catalog version {version} out of range")))?,
        queue: row.get("queue")?,
        options: row.get("options")?,
        worker_id: row.get("worker_id")?,
        registered_at: Timestamp::from_micros(row.get("registered_at")?),
    })
}

impl<S: SqlStore> CatalogStore for S {
    fn publish_types(&self, types: Vec<RegisteredType>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let mut tx = self.begin_write().await?;
            for t in types {
                Stmt::<S::Db>::new(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO catalog ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (kind, name) DO UPDATE SET version = excluded.version, \
                     queue = excluded.queue, options = excluded.options, worker_id = excluded.worker_id, \
                     registered_at = excluded.registered_at"
                )))
                .bind(t.kind.as_str())
                .bind(t.name)
                .bind(i64::from(t.version))
                .bind(t.queue)
                .bind(t.options)
                .bind(t.worker_id)
                .bind(now.as_micros())
                .execute(&mut tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn registered_types(&self) -> BoxFuture<'_, Result<Vec<RegisteredType>>> {
        Box::pin(async move {
            Stmt::<S::Db>::new(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM catalog ORDER BY kind DESC, name"
            )))
            .fetch_all(&mut *self.reader().acquire().await?)
            .await?
            .iter()
            .map(read::<S>)
            .collect()
        })
    }

    fn registered_type<'a>(
        &'a self,
        kind: TypeKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<RegisteredType>>> {
        Box::pin(async move {
            Stmt::<S::Db>::new(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM catalog WHERE kind = $1 AND name = $2"
            )))
            .bind(kind.as_str())
            .bind(name)
            .fetch_optional(&mut *self.reader().acquire().await?)
            .await?
            .as_ref()
            .map(read::<S>)
            .transpose()
        })
    }
}
