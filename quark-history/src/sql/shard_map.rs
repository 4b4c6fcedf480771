//! The shard map a shard's database records, for both databases (the statements are the same).

use futures::future::BoxFuture;

use super::{SqlStore, Stmt};
use crate::error::{Error, Result};
use crate::shards::{MapHold, ShardMap, ShardMapStore};

impl<S: SqlStore> ShardMapStore for S {
    fn claim_shard<'a>(
        &'a self,
        map: &'a ShardMap,
        position: usize,
    ) -> BoxFuture<'a, Result<(ShardMap, usize)>> {
        Box::pin(async move {
            // A row already there stands: the no-op update returns it.
            let row = Stmt::<S::Db>::new(
                "INSERT INTO shard_map (one, names, position) VALUES (1, $1, $2) \
                 ON CONFLICT (one) DO UPDATE SET names = shard_map.names \
                 RETURNING names, position",
            )
            .bind(map.to_string())
            .bind(position as i64)
            .fetch_one(&mut *self.writer().acquire().await?)
            .await?;
            let names: String = row.get("names")?;
            let at: i64 = row.get("position")?;
            let recorded = ShardMap::parse(&names).map_err(|e| {
                Error::Invalid(format!(
                    "the shard map this database records is unreadable: {e}"
                ))
            })?;
            Ok((recorded, at as usize))
        })
    }

    fn replace_shard_map<'a>(
        &'a self,
        from: &'a ShardMap,
        to: &'a ShardMap,
    ) -> BoxFuture<'a, Result<Option<(ShardMap, usize)>>> {
        Box::pin(async move {
            let mut conn = self.writer().acquire().await?;
            Stmt::<S::Db>::new("UPDATE shard_map SET names = $1 WHERE one = 1 AND names = $2")
                .bind(to.to_string())
                .bind(from.to_string())
                .execute(&mut *conn)
                .await?;
            let row = Stmt::<S::Db>::new("SELECT names, position FROM shard_map WHERE one = 1")
                .fetch_optional(&mut *conn)
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let names: String = row.get("names")?;
            let at: i64 = row.get("position")?;
            Ok(Some((ShardMap::parse(&names)?, at as usize)))
        })
    }

    fn hold_shard_map<'a>(
        &'a self,
        map: &'a ShardMap,
        exclusive: bool,
    ) -> BoxFuture<'a, Result<Option<MapHold>>> {
        <S::Db as super::Dialect>::hold_shard_map(
            self.writer(),
            crate::shards::map_lock_key(map),
            exclusive,
            map.to_string(),
        )
    }
}
