//! Shards: several databases, each holding the whole of the instances whose ids map to it.
//!
//! A deployment names its shards in order ([`ShardMap`]). An instance lives on the shard its
//! *shard key* maps to, by a stable function: the key is the instance id up to its first single
//! `:` after the namespace ([`shard_key`]), so that the children Quark names
//! `{parent}:{command}` (and their children) live with their root, and the shard is
//! [`jump_hash`] of the key's BLAKE3 hash over the number of shards. Everything about one
//! instance (its history, tasks, timers, answers) is then in one database, and every invariant
//! of a single store holds inside it; what crosses shards travels by the outbox (a signal as a
//! signal, a child's start and what it and its parent tell each other as a [`Crossing`]).
//!
//! Every shard's database records the map it belongs to ([`ShardMapStore`]), written the first
//! time a process connects with that map. A process whose map disagrees (a shard missing, an
//! extra one, another order, a database configured as another shard) refuses to start
//! ([`Shards::check`]) and says which, rather than route an instance to the wrong database.

mod crossing;
mod deployment;
mod feed;
mod map;

pub use crossing::Crossing;
#[cfg(feature = "postgres")]
pub use deployment::connect_stores;
pub(crate) use deployment::map_lock_key;
pub use deployment::{MapHold, ShardMapStore, Shards};
pub use feed::{ShardCursor, ShardEvent};
pub use map::{ShardMap, jump_hash, shard_key};
