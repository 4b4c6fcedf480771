//! The shard map a shard's database records, for both databases (the statements are the same).

use futures::future::BoxFuture;

use super::{SqlStore, Stmt};
use crate::error::{Error, Result};
use crate::shards::{ShardMap, ShardMapStore};

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
}
