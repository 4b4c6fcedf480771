//! The shard map and the function from an instance id to its shard.

use std::fmt;

use crate::error::{Error, Result};

/// The shards of a deployment, by name, in order: the order is part of the map (an instance's
/// shard is a position in it). A deployment that added shards keeps its earlier *generations*,
/// the number of shards it had before each addition: an instance created before an addition
/// stays on the shard its generation placed it on (see [`Shards::locate`](super::Shards::locate)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardMap {
    names: Vec<String>,
    /// The sizes of the earlier generations, oldest first, each smaller than the next and than
    /// `names.len()`.
    earlier: Vec<usize>,
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
        Ok(ShardMap {
            names,
            earlier: Vec::new(),
        })
    }

    /// The map as stored ([`Display`](fmt::Display)): the names, comma-separated, in order, then
    /// the sizes of the earlier generations after a `;` if shards were added (`a,b,c,d;3`).
    pub fn parse(stored: &str) -> Result<Self> {
        let (names, earlier) = stored.split_once(';').unwrap_or((stored, ""));
        let mut map = Self::new(names.split(','))?;
        if !earlier.is_empty() {
            for size in earlier.split(',') {
                let size: usize = size.parse().map_err(|_| {
                    Error::Invalid(format!("`{stored}`: `{size}` is not a generation's size"))
                })?;
                let previous = map.earlier.last().copied().unwrap_or(0);
                if size <= previous || size >= map.names.len() {
                    return Err(Error::Invalid(format!(
                        "`{stored}`: the generations' sizes must grow and stay below the number \
                         of shards"
                    )));
                }
                map.earlier.push(size);
            }
        }
        Ok(map)
    }

    /// This map with shard `name` added at the end: a new generation. New instances spread over
    /// all the shards at once; those created before stay where they are.
    pub fn with_shard(&self, name: impl Into<String>) -> Result<Self> {
        let mut names = self.names.clone();
        names.push(name.into());
        let mut map = Self::new(names)?;
        map.earlier = self.earlier.clone();
        map.earlier.push(self.names.len());
        Ok(map)
    }

    /// The same shards, with the earlier generations of `recorded` (a process names the shards;
    /// the deployment remembers how they were added). `None` if the names differ.
    pub fn with_history_of(&self, recorded: &ShardMap) -> Option<Self> {
        (self.names == recorded.names).then(|| recorded.clone())
    }

    /// The generation the shard at `position` joined in (1: the deployment's first).
    pub fn generation_of(&self, position: usize) -> usize {
        1 + self
            .earlier
            .iter()
            .filter(|size| position >= **size)
            .count()
    }

    /// How many generations the map has had (1 until a shard is added).
    pub fn generations(&self) -> usize {
        self.earlier.len() + 1
    }

    /// The shards an instance with id `id` may live on, newest generation first, each once: where
    /// it is created now, then where each earlier generation would have created it. Jump hashing
    /// keeps most ids on one shard across generations: a list of one.
    pub fn candidates(&self, id: &str) -> Vec<usize> {
        let key = key_hash(id);
        let mut shards = vec![jump_hash(key, self.names.len() as u32) as usize];
        for size in self.earlier.iter().rev() {
            let shard = jump_hash(key, *size as u32) as usize;
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
        shards
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

    /// The position of the shard a new instance `id` is created on. Until a shard is added, every
    /// instance lives there; after, one created before may live on an earlier generation's
    /// ([`candidates`](Self::candidates)).
    pub fn shard_of(&self, id: &str) -> usize {
        jump_hash(key_hash(id), self.names.len() as u32) as usize
    }

    /// The name of the shard a new instance `id` is created on.
    pub fn shard_name(&self, id: &str) -> &str {
        &self.names[self.shard_of(id)]
    }

    /// How `self` differs from `deployment` in its shards (names and order; the generations are
    /// the deployment's to remember), in words; `None` if they are the same.
    pub fn differences(&self, deployment: &ShardMap) -> Option<String> {
        if self.names == deployment.names {
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
        if extra.len() == 1 && missing.is_empty() && self.names.starts_with(&deployment.names) {
            said.push(format!(
                "to add shard `{}`, run `quark shards add` first",
                extra[0]
            ));
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
        f.write_str(&self.names.join(","))?;
        if !self.earlier.is_empty() {
            let sizes: Vec<String> = self.earlier.iter().map(usize::to_string).collect();
            write!(f, ";{}", sizes.join(","))?;
        }
        Ok(())
    }
}

/// The first 8 bytes of the BLAKE3 hash of `id`'s shard key.
fn key_hash(id: &str) -> u64 {
    let hash = blake3::hash(shard_key(id).as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
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
    fn a_map_keeps_its_generations_and_an_id_its_earlier_shards() {
        let three = ShardMap::new(["a", "b", "c"]).unwrap();
        let four = three.with_shard("d").unwrap();
        let five = four.with_shard("e").unwrap();
        assert_eq!(five.to_string(), "a,b,c,d,e;3,4");
        assert_eq!(ShardMap::parse("a,b,c,d,e;3,4").unwrap(), five);
        assert_eq!(five.generations(), 3);
        assert!(three.differences(&five).is_some());
        assert_eq!(
            ShardMap::new(five.names().iter().cloned())
                .unwrap()
                .differences(&five),
            None
        );
        for bad in ["a,b,c;3", "a,b,c;0", "a,b,c;2,1", "a,b,c;x"] {
            assert!(ShardMap::parse(bad).is_err(), "{bad}");
        }
        for n in 0..2_000 {
            let id = format!("instance-{n}");
            let candidates = five.candidates(&id);
            assert_eq!(candidates[0], five.shard_of(&id));
            assert!(candidates.contains(&three.shard_of(&id)), "{id}");
            assert!(candidates.contains(&four.shard_of(&id)), "{id}");
            let mut unique = candidates.clone();
            unique.dedup();
            assert_eq!(unique.len(), candidates.len());
        }
        let said = ShardMap::new(["a", "b", "c", "d"])
            .unwrap()
            .differences(&three)
            .unwrap();
        assert!(said.contains("run `quark shards add` first"), "{said}");
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
