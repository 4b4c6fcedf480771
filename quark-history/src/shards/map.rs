//! The shard map, the function from an instance id to its shard, and the shards' stores.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::{Error, Result};
use crate::store::Store;

/// The shards of a deployment, by name, in order: the order is part of the map (an instance's
/// shard is a position in it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardMap {
    names: Vec<String>,
}

impl ShardMap {
    /// A map of `names`, in order. Fails on none, a name given twice, or one that is not a
    /// name (1 to 63 letters, digits, `_` or `-`).
    pub fn new<N: Into<String>>(names: impl IntoIterator<Item = N>) -> Result<Self> {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.is_empty() {
            return Err(Error::Invalid(
                "a shard map needs at least one shard".into(),
            ));
        }
        for (i, name) in names.iter().enumerate() {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(Error::Invalid(format!(
                    "`{name}` is not a shard name: use 1 to 63 letters, digits, `_` or `-`"
                )));
            }
            if names[..i].contains(name) {
                return Err(Error::Invalid(format!("shard `{name}` is named twice")));
            }
        }
        Ok(ShardMap { names })
    }

    /// The map as stored: the names, comma-separated, in order.
    pub fn parse(stored: &str) -> Result<Self> {
        Self::new(stored.split(','))
    }

    /// The shards' names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// How many shards.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none (never: a map has at least one shard).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The position of the shard that instance `id` lives on.
    pub fn shard_of(&self, id: &str) -> usize {
        let hash = blake3::hash(shard_key(id).as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        jump_hash(u64::from_le_bytes(first), self.names.len() as u32) as usize
    }

    /// The name of the shard instance `id` lives on.
    pub fn shard_name(&self, id: &str) -> &str {
        &self.names[self.shard_of(id)]
    }

    /// How `self` (this process's map) differs from `deployment` (the one the databases hold),
    /// in words; `None` if they are the same.
    pub fn differences(&self, deployment: &ShardMap) -> Option<String> {
        if self == deployment {
            return None;
        }
        let missing: Vec<&str> = deployment
            .names
            .iter()
            .filter(|n| !self.names.contains(n))
            .map(String::as_str)
            .collect();
        let extra: Vec<&str> = self
            .names
            .iter()
            .filter(|n| !deployment.names.contains(n))
            .map(String::as_str)
            .collect();
        let mut said = Vec::new();
        if !missing.is_empty() {
            said.push(format!(
                "the deployment's shard(s) {} are missing from this process's map",
                quoted(&missing)
            ));
        }
        if !extra.is_empty() {
            said.push(format!(
                "this process names shard(s) {} that the deployment does not have",
                quoted(&extra)
            ));
        }
        if missing.is_empty() && extra.is_empty() {
            said.push("the same shards are in another order".into());
        }
        Some(format!(
            "{} (the deployment's map is [{}], this process's [{}])",
            said.join("; "),
            deployment.names.join(", "),
            self.names.join(", ")
        ))
    }
}

impl fmt::Display for ShardMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names.join(","))
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The part of instance id `id` that decides its shard: after the namespace (kept), up to the
/// first `:` (`acme::order-7:3:1` has the key `acme::order-7`). Children named by Quark
/// (`{parent}:{command}`) so share their root's shard.
pub fn shard_key(id: &str) -> &str {
    let local_start = match id.find(crate::NAMESPACE_SEPARATOR) {
        Some(i) => i + crate::NAMESPACE_SEPARATOR.len(),
        None => 0,
    };
    match id[local_start..].find(':') {
        Some(i) => &id[..local_start + i],
        None => id,
    }
}

/// Jump consistent hash (Lamping and Veach, 2014): the bucket of `key` among `buckets`. Going
/// from `n` to `n + 1` buckets moves only keys to the new bucket, about `1/(n + 1)` of them.
/// Part of the shard map's definition: it must never change.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

/// Where a shard's database records the map it belongs to and its position in it. A capability
/// of every [`Store`]; sealed.
pub trait ShardMapStore: Send + Sync {
    /// Records that this database is shard `position` of `map`, unless it records a map
    /// already; returns what it records (one statement: concurrent first starts agree).
    fn claim_shard<'a>(
        &'a self,
        map: &'a ShardMap,
        position: usize,
    ) -> BoxFuture<'a, Result<(ShardMap, usize)>>;
}

/// The stores of a deployment's shards, in the map's order, checked against what their
/// databases record.
#[derive(Clone)]
pub struct Shards {
    map: ShardMap,
    stores: Arc<[Arc<dyn Store>]>,
}

impl fmt::Debug for Shards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shards")
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

impl Shards {
    /// The shards of `map`, one store per shard in its order, once every database is checked:
    /// a database that records no map is claimed as its shard; one that records another map, or
    /// another position, refuses the whole set, naming the difference.
    pub async fn check(map: ShardMap, stores: Vec<Arc<dyn Store>>) -> Result<Self> {
        if stores.len() != map.len() {
            return Err(Error::Invalid(format!(
                "the shard map names {} shard(s) but {} database(s) were given",
                map.len(),
                stores.len()
            )));
        }
        for (position, store) in stores.iter().enumerate() {
            let (recorded, at) = store.claim_shard(&map, position).await?;
            if let Some(diff) = map.differences(&recorded) {
                return Err(Error::Invalid(format!(
                    "shard map mismatch at `{}` ({}): {diff}; refusing to start rather than \
                     route instances to the wrong database",
                    map.names()[position],
                    store.location()
                )));
            }
            if at != position {
                return Err(Error::Invalid(format!(
                    "the database configured as shard `{}` ({}) is shard `{}` of the deployment; \
                     refusing to start rather than route instances to the wrong database",
                    map.names()[position],
                    store.location(),
                    map.names()[at]
                )));
            }
        }
        Ok(Shards {
            map,
            stores: stores.into(),
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
        Self::check(map, stores).await
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

    /// The store of the shard instance `id` lives on.
    pub fn store_for(&self, id: &str) -> &Arc<dyn Store> {
        &self.stores[self.map.shard_of(id)]
    }

    /// The position of the shard instance `id` lives on.
    pub fn shard_of(&self, id: &str) -> usize {
        self.map.shard_of(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_key_keeps_quark_named_children_with_their_root() {
        assert_eq!(shard_key("order-7"), "order-7");
        assert_eq!(shard_key("order-7:3"), "order-7");
        assert_eq!(shard_key("order-7:3:1"), "order-7");
        assert_eq!(shard_key("acme::order-7:3"), "acme::order-7");
        assert_eq!(shard_key("acme::order-7"), "acme::order-7");
        let map = ShardMap::new(["a", "b", "c"]).unwrap();
        for root in ["order-1", "order-2", "acme::x", "y"] {
            let child = format!("{root}:4:2");
            assert_eq!(map.shard_of(root), map.shard_of(&child), "{root}");
        }
    }

    #[test]
    fn the_function_is_pinned_and_spreads_ids_evenly() {
        // Part of the on-disk contract: a change here would send existing instances to the
        // wrong database. These values were computed once and must never change.
        let map = ShardMap::new(["s0", "s1", "s2"]).unwrap();
        let pinned: Vec<usize> = ["order-1", "order-2", "order-3", "invoice-9", "acme::x"]
            .iter()
            .map(|id| map.shard_of(id))
            .collect();
        assert_eq!(pinned, PINNED);
        assert_eq!(jump_hash(0, 1), 0);
        assert_eq!(jump_hash(u64::MAX, 1000), jump_hash(u64::MAX, 1000));
        let mut counts = [0usize; 3];
        for n in 0..30_000 {
            counts[map.shard_of(&format!("instance-{n}"))] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    const PINNED: [usize; 5] = [1, 0, 2, 2, 0];

    #[test]
    fn adding_a_shard_moves_ids_only_to_the_new_shard() {
        let three = ShardMap::new(["a", "b", "c"]).unwrap();
        let four = ShardMap::new(["a", "b", "c", "d"]).unwrap();
        let mut moved = 0;
        for n in 0..20_000 {
            let id = format!("instance-{n}");
            let (before, after) = (three.shard_of(&id), four.shard_of(&id));
            if before != after {
                assert_eq!(after, 3, "{id} moved between old shards");
                moved += 1;
            }
        }
        assert!((4_000..6_000).contains(&moved), "{moved} of 20000 moved");
    }

    #[test]
    fn a_map_that_differs_says_how() {
        let deployment = ShardMap::new(["a", "b", "c"]).unwrap();
        let missing = ShardMap::new(["a", "b"]).unwrap();
        let extra = ShardMap::new(["a", "b", "c", "d"]).unwrap();
        let order = ShardMap::new(["a", "c", "b"]).unwrap();
        assert_eq!(deployment.differences(&deployment), None);
        let said = missing.differences(&deployment).unwrap();
        assert!(said.contains("shard(s) `c` are missing"), "{said}");
        let said = extra.differences(&deployment).unwrap();
        assert!(
            said.contains("names shard(s) `d` that the deployment does not have"),
            "{said}"
        );
        let said = order.differences(&deployment).unwrap();
        assert!(said.contains("another order"), "{said}");
        assert!(ShardMap::new(["a", "a"]).is_err());
        assert!(ShardMap::new(Vec::<String>::new()).is_err());
        assert!(ShardMap::new(["a,b"]).is_err());
        assert_eq!(ShardMap::parse("a,b,c").unwrap(), deployment);
    }
}
