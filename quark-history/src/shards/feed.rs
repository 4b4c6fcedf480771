//! Every shard's events as one feed: each shard's global order kept (and gap-safe, as
//! [`Store::read_all`](crate::Store::read_all) is on one database), the shards interleaved by
//! recording time, and a cursor that is a position per shard.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Shards;
use crate::error::{Error, Result};
use crate::journal::{GlobalEvent, GlobalPosition};

/// Where a reader of every shard's events stands: the position it has read up to on each shard,
/// in the map's order (a shard it does not name yet, one added since, is read from its start).
/// Written `tx:position,tx:position,...`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShardCursor(Vec<GlobalPosition>);

impl ShardCursor {
    /// Before every event of every shard.
    pub fn start() -> Self {
        ShardCursor(Vec::new())
    }

    /// The position read up to on shard `shard`.
    pub fn on(&self, shard: usize) -> GlobalPosition {
        self.0.get(shard).copied().unwrap_or(GlobalPosition::START)
    }

    /// Moves the cursor on shard `shard` to `to` (the position of an event read there).
    pub fn advance(&mut self, shard: usize, to: GlobalPosition) {
        if self.0.len() <= shard {
            self.0.resize(shard + 1, GlobalPosition::START);
        }
        self.0[shard] = to;
    }
}

impl fmt::Display for ShardCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(GlobalPosition::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for ShardCursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Ok(ShardCursor::start());
        }
        s.split(',')
            .map(|p| {
                p.parse::<GlobalPosition>().map_err(|e| {
                    Error::Invalid(format!(
                        "`{s}` is not a shard cursor (tx:position per shard, comma-separated): {e}"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(ShardCursor)
    }
}

/// One event of the merged feed: the shard it is on, and the event with its position there.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardEvent {
    /// The shard's position in the map.
    pub shard: usize,
    /// The event.
    pub event: GlobalEvent,
}

impl Shards {
    /// Up to `limit` events after `cursor`, from every shard, and the cursor after them. Each
    /// shard's events come in its global order and only once they are final there (the
    /// store's gap-safe horizon), so nothing is skipped however the pages fall. Across shards
    /// there is no common order: they are interleaved by recording time, and a page stops
    /// before it would pass an unread event of a shard whose own page ran out early. Fails if a
    /// shard cannot be read (a feed that silently left one out would look complete).
    pub async fn read_all(
        &self,
        cursor: &ShardCursor,
        limit: u32,
    ) -> Result<(Vec<ShardEvent>, ShardCursor)> {
        let limit = limit.max(1);
        let pages = futures::future::join_all(
            self.stores()
                .iter()
                .enumerate()
                .map(|(shard, store)| store.read_all(cursor.on(shard), limit)),
        )
        .await;
        let mut pages: Vec<std::collections::VecDeque<GlobalEvent>> = pages
            .into_iter()
            .enumerate()
            .map(|(shard, page)| {
                page.map(Into::into).map_err(|e| {
                    Error::Invalid(format!(
                        "shard `{}` cannot be read: {e}",
                        self.map().names()[shard]
                    ))
                })
            })
            .collect::<Result<_>>()?;
        // A full page may have more behind it: once it is used up, later events of the other
        // shards could pass its unread ones, so the page ends there.
        let full: Vec<bool> = pages.iter().map(|p| p.len() as u32 == limit).collect();
        let mut next = cursor.clone();
        let mut merged = Vec::new();
        while (merged.len() as u32) < limit {
            let Some(shard) = (0..pages.len())
                .filter(|s| !pages[*s].is_empty())
                .min_by_key(|s| (pages[*s][0].event.recorded_at, *s))
            else {
                break;
            };
            let event = pages[shard].pop_front().expect("not empty");
            next.advance(shard, event.position);
            merged.push(ShardEvent { shard, event });
            if pages[shard].is_empty() && full[shard] {
                break;
            }
        }
        Ok((merged, next))
    }
}
