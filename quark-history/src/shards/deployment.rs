//! A deployment's shards: their stores, checked against the map their databases record, where an
//! instance lives, and how a shard is added.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;

use super::map::{ShardMap, shard_key};
use crate::error::{Error, Result};
use crate::instance::InstanceFilter;
use crate::store::Store;

/// Where a shard's database records the map it belongs to and its position in it, and the lock
/// that keeps a map from changing under the processes that use it. A capability of every
/// [`Store`]; sealed.
pub trait ShardMapStore: Send + Sync {
    /// Records that this database is shard `position` of `map`, unless it records a map
    /// already; returns what it records (one statement: concurrent first starts agree).
    fn claim_shard<'a>(
        &'a self,
        map: &'a ShardMap,
        position: usize,
    ) -> BoxFuture<'a, Result<(ShardMap, usize)>>;

    /// Records `to` in place of `from`, if this database records `from`; returns what it
    /// records after (`to`, unless it recorded something else).
    fn replace_shard_map<'a>(
        &'a self,
        from: &'a ShardMap,
        to: &'a ShardMap,
    ) -> BoxFuture<'a, Result<Option<(ShardMap, usize)>>>;

    /// Holds this database's lock on the generation of `map` (the one with its number of shards)
    /// for as long as the hold lives, on a session of its own. Every process that routes by the
    /// map holds it shared; adding a shard takes it exclusively, and `exclusive` gets `None`
    /// rather than wait while any process holds it. A shared hold whose session is lost takes
    /// the lock again when the database answers, and marks itself
    /// [stale](MapHold::is_stale) if the map changed meanwhile. On SQLite (one process) a hold
    /// holds nothing.
    fn hold_shard_map<'a>(
        &'a self,
        map: &'a ShardMap,
        exclusive: bool,
    ) -> BoxFuture<'a, Result<Option<MapHold>>>;
}

/// A lock on a shard map's generation in one database (see
/// [`ShardMapStore::hold_shard_map`]); released when dropped.
pub struct MapHold {
    stale: Arc<AtomicBool>,
    _session: Option<Box<dyn Send + Sync>>,
}

impl fmt::Debug for MapHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapHold")
            .field("stale", &self.is_stale())
            .finish_non_exhaustive()
    }
}

impl MapHold {
    /// A hold kept alive by `session` (dropping it releases the lock), marked stale through
    /// `stale`.
    pub(crate) fn new(stale: Arc<AtomicBool>, session: Option<Box<dyn Send + Sync>>) -> Self {
        MapHold {
            stale,
            _session: session,
        }
    }

    /// Whether the map changed while the hold's session was lost: the process routes by a map
    /// the deployment no longer has.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }
}

/// The lock key of a map's generation: a constant and the number of shards (names are only
/// ever appended, so the number names the generation).
pub(crate) fn map_lock_key(map: &ShardMap) -> (i32, i32) {
    (0x5152_4b53, map.len() as i32) // "QRKS"
}

/// The stores of a deployment's shards, in the map's order, checked against what their
/// databases record, each held (see [`ShardMapStore::hold_shard_map`]) while any clone lives.
#[derive(Clone)]
pub struct Shards {
    map: ShardMap,
    stores: Arc<[Arc<dyn Store>]>,
    holds: Arc<[MapHold]>,
}

impl fmt::Debug for Shards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shards")
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

/// The words of a refusal that protects routing.
const REFUSING: &str = "refusing to start rather than route instances to the wrong database";

impl Shards {
    /// The shards named by `map`, one store per shard in its order, once every database is
    /// held and checked: a database that records no map is claimed as its shard; one that
    /// records other shards, another position, or a history other than the rest's refuses the
    /// whole set, naming the difference. The map's generations are the deployment's: what the
    /// databases record.
    pub async fn check(map: ShardMap, stores: Vec<Arc<dyn Store>>) -> Result<Self> {
        if stores.len() != map.len() {
            return Err(Error::Invalid(format!(
                "the shard map names {} shard(s) but {} database(s) were given",
                map.len(),
                stores.len()
            )));
        }
        let mut holds = Vec::with_capacity(stores.len());
        let mut deployment: Option<(ShardMap, usize)> = None;
        for (position, store) in stores.iter().enumerate() {
            // Held before it is read: a shard cannot be added between the check and the hold.
            let hold = store
                .hold_shard_map(&map, false)
                .await?
                .ok_or_else(|| Error::Invalid("a shared hold is never refused".into()))?;
            holds.push(hold);
            let (recorded, at) = store.claim_shard(&map, position).await?;
            let name = &map.names()[position];
            if let Some(diff) = map.differences(&recorded) {
                return Err(Error::Invalid(format!(
                    "shard map mismatch at `{name}` ({}): {diff}; {REFUSING}",
                    store.location()
                )));
            }
            if at != position {
                return Err(Error::Invalid(format!(
                    "the database configured as shard `{name}` ({}) is shard `{}` of the \
                     deployment; {REFUSING}",
                    store.location(),
                    map.names()[at]
                )));
            }
            match &deployment {
                Some((first, _)) if *first != recorded => {
                    return Err(Error::Invalid(format!(
                        "shard `{}` records the map `{first}` and shard `{name}` `{recorded}`: \
                         a shard's addition did not finish; run `quark shards add` again; \
                         {REFUSING}",
                        map.names()[0]
                    )));
                }
                Some(_) => {}
                None => deployment = Some((recorded, position)),
            }
        }
        let (recorded, _) = deployment.expect("a map has at least one shard");
        let map = map
            .with_history_of(&recorded)
            .expect("the names were checked");
        Ok(Shards {
            map,
            stores: stores.into(),
            holds: holds.into(),
        })
    }

    /// Connects to `(name, url)` shards in order (PostgreSQL), applies the migrations, and
    /// [`check`](Self::check)s them.
    #[cfg(feature = "postgres")]
    pub async fn connect<N, U>(
        shards: impl IntoIterator<Item = (N, U)>,
        config: crate::StoreConfig,
    ) -> Result<Self>
    where
        N: Into<String>,
        U: AsRef<str>,
    {
        let (map, stores) = connect_stores(shards, config).await?;
        Self::check(map, stores).await
    }

    /// Adds shard `name` (database `store`, empty) at the end of the deployment whose shards
    /// are `existing` (`(name, store)` in the map's order), and returns the new deployment.
    ///
    /// New instances spread over all the shards at once; existing ones stay where they are (see
    /// [`locate`](Self::locate)). It takes every existing shard's lock on the current map
    /// exclusively first, so it refuses, naming the shard, while any worker or client still
    /// routes by that map: stop them, add the shard, start them with it. It can be run again
    /// after it was cut short: shards that record the new map already are left as they are.
    pub async fn add_shard(
        existing: Vec<(String, Arc<dyn Store>)>,
        name: &str,
        store: Arc<dyn Store>,
    ) -> Result<Self> {
        let names: Vec<&str> = existing.iter().map(|(n, _)| n.as_str()).collect();
        let named = ShardMap::new(names.iter().copied())?;
        let added = named.with_shard(name)?;
        // What the deployment records: the current map, or (after an addition cut short) the
        // new one on some shards.
        let mut from: Option<ShardMap> = None;
        for (n, s) in &existing {
            let (recorded, _) = s.claim_shard(&named, position_of(&names, n)).await?;
            if recorded.names() == added.names() {
                continue;
            }
            if let Some(diff) = named.differences(&recorded) {
                return Err(Error::Invalid(format!(
                    "shard map mismatch at `{n}` ({}): {diff}",
                    s.location()
                )));
            }
            from = Some(recorded);
        }
        let to = match &from {
            Some(from) => from.with_shard(name)?,
            None => {
                // Every existing shard records the new map already: only the new one may lag.
                let (recorded, _) = existing[0].1.claim_shard(&named, 0).await?;
                recorded
            }
        };
        let claim_new = async || {
            let (recorded, at) = store.claim_shard(&to, existing.len()).await?;
            if recorded != to || at != existing.len() {
                return Err(Error::Invalid(format!(
                    "the database of the new shard `{name}` ({}) records the map `{recorded}` \
                     already",
                    store.location()
                )));
            }
            Ok(())
        };
        if from.is_none() {
            claim_new().await?;
        }
        if let Some(from) = &from {
            let mut exclusive = Vec::with_capacity(existing.len());
            for (n, s) in &existing {
                match s.hold_shard_map(from, true).await? {
                    Some(hold) => exclusive.push(hold),
                    None => {
                        return Err(Error::Invalid(format!(
                            "shard `{n}` ({}) is in use by a worker or client that routes by \
                             the map [{}]: stop every process of the deployment, add the shard, \
                             then start them with it",
                            s.location(),
                            from.names().join(", ")
                        )));
                    }
                }
            }
            let fresh = store
                .list_instances(InstanceFilter {
                    limit: 1,
                    ..Default::default()
                })
                .await?;
            if !fresh.is_empty() {
                return Err(Error::Invalid(format!(
                    "the database of the new shard `{name}` ({}) holds instances already: add \
                     an empty database",
                    store.location()
                )));
            }
            claim_new().await?;
            for (n, s) in &existing {
                match s.replace_shard_map(from, &to).await? {
                    Some((recorded, _)) if recorded == to => {}
                    other => {
                        return Err(Error::Invalid(format!(
                            "shard `{n}` records {other:?}, not the map `{from}`, any more: \
                             another addition ran at the same time"
                        )));
                    }
                }
            }
            drop(exclusive);
        }
        let mut stores: Vec<Arc<dyn Store>> = existing.into_iter().map(|(_, s)| s).collect();
        stores.push(store);
        Self::check(ShardMap::new(to.names().iter().cloned())?, stores).await
    }

    /// The map.
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The store of the shard at `position`.
    pub fn store(&self, position: usize) -> &Arc<dyn Store> {
        &self.stores[position]
    }

    /// Every shard's store, in the map's order.
    pub fn stores(&self) -> &[Arc<dyn Store>] {
        &self.stores
    }

    /// The store of the shard a new instance `id` is created on; until a shard is added, the one
    /// every instance `id` lives on ([`locate`](Self::locate) finds one created earlier).
    pub fn store_for(&self, id: &str) -> &Arc<dyn Store> {
        &self.stores[self.map.shard_of(id)]
    }

    /// The position of the shard a new instance `id` is created on (see
    /// [`store_for`](Self::store_for)).
    pub fn shard_of(&self, id: &str) -> usize {
        self.map.shard_of(id)
    }

    /// The position of the shard instance `id` lives on, or will be created on. With one
    /// generation, that is [`shard_of`](Self::shard_of), with no database read. After shards
    /// were added, an id whose shard changed between generations (about `1/n` of them per
    /// added shard) is looked for on its earlier generations' shards, newest first: it lives
    /// where its root (the instance named by its [shard key](shard_key): its parent's, for a
    /// child Quark named) or it itself exists; otherwise it is new and goes to the newest
    /// generation's shard. Fails if a shard cannot be read, or if the map changed while this
    /// process had lost its hold (it routes by a map the deployment no longer has).
    pub async fn locate(&self, id: &str) -> Result<usize> {
        if let Some(stale) = self.holds.iter().position(MapHold::is_stale) {
            return Err(Error::Invalid(format!(
                "the deployment's shard map changed while this process had lost its hold on \
                 shard `{}`: restart it with the new map",
                self.map.names()[stale]
            )));
        }
        let candidates = self.map.candidates(id);
        let root = shard_key(id);
        for &earlier in &candidates[1..] {
            let store = &self.stores[earlier];
            if store.get_instance(root).await?.is_some()
                || (root != id && store.get_instance(id).await?.is_some())
            {
                return Ok(earlier);
            }
        }
        Ok(candidates[0])
    }

    /// The store of the shard instance `id` lives on (see [`locate`](Self::locate)).
    pub async fn locate_store(&self, id: &str) -> Result<&Arc<dyn Store>> {
        Ok(&self.stores[self.locate(id).await?])
    }
}

fn position_of(names: &[&str], name: &str) -> usize {
    names.iter().position(|n| *n == name).unwrap_or(0)
}

/// Connects to `(name, url)` shards in order and applies the migrations; the map of their names.
#[cfg(feature = "postgres")]
pub async fn connect_stores<N, U>(
    shards: impl IntoIterator<Item = (N, U)>,
    config: crate::StoreConfig,
) -> Result<(ShardMap, Vec<Arc<dyn Store>>)>
where
    N: Into<String>,
    U: AsRef<str>,
{
    let (names, urls): (Vec<String>, Vec<U>) =
        shards.into_iter().map(|(n, u)| (n.into(), u)).unzip();
    let map = ShardMap::new(names)?;
    let mut stores: Vec<Arc<dyn Store>> = Vec::with_capacity(urls.len());
    for (name, url) in map.names().iter().zip(&urls) {
        let store = crate::PostgresStore::connect_with(url.as_ref(), config.clone())
            .await
            .map_err(|e| Error::Invalid(format!("shard `{name}`: {e}")))?;
        stores.push(Arc::new(store));
    }
    Ok((map, stores))
}
