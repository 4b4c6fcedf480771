//! Projection checkpoints: how far each read model has applied the global order, who is applying
//! it, and which version of it readers should use.
//!
//! A projection reads [`Store::read_all`](crate::Store::read_all) from its checkpoint and writes
//! its read model in a [`StoreTx`](crate::StoreTx); [`ProjectionStore::advance_projection`] moves
//! the checkpoint in that same transaction, only if the caller still holds the lease and the
//! checkpoint is still where the caller read from. So each event is applied exactly once, however
//! many workers try, and a crashed one's work is rolled back and done again by the next holder.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::Result;
use crate::journal::GlobalPosition;
use crate::transaction::StoreTx;

/// Where a projection version stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProjectionState {
    /// Catching up beside the active version; readers do not use it yet.
    Building,
    /// The version readers use.
    Active,
    /// Replaced by a newer version; no longer advanced.
    Retired,
}

impl ProjectionState {
    /// The value stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionState::Building => "building",
            ProjectionState::Active => "active",
            ProjectionState::Retired => "retired",
        }
    }
}

impl std::str::FromStr for ProjectionState {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "building" => Ok(ProjectionState::Building),
            "active" => Ok(ProjectionState::Active),
            "retired" => Ok(ProjectionState::Retired),
            other => Err(format!("unknown projection state `{other}`")),
        }
    }
}

impl std::fmt::Display for ProjectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A projection version's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionRecord {
    /// The projection's name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Where it stands.
    pub state: ProjectionState,
    /// Every event up to and including this position is applied.
    pub checkpoint: GlobalPosition,
    /// How many events it has applied since it was built from zero.
    pub applied: u64,
    /// When the last applied event was recorded.
    pub last_event_at: Option<Timestamp>,
    /// Who holds its lease, if anyone holds an unexpired one.
    pub lease_owner: Option<String>,
    /// When the lease runs out.
    pub lease_expires_at: Timestamp,
    /// When the checkpoint last moved (or the row was made).
    pub updated_at: Timestamp,
}

/// Checkpoints, leases and versions of projections. A capability of every
/// [`Store`](crate::Store); sealed.
pub trait ProjectionStore: Send + Sync {
    /// Registers version `version` of projection `name` if it is not there yet, and returns its
    /// row. The first version of a name is active at once; a later one starts building beside it.
    fn register_projection<'a>(
        &'a self,
        name: &'a str,
        version: u32,
    ) -> BoxFuture<'a, Result<ProjectionRecord>>;

    /// Takes or renews the lease on a projection version for `owner`, for `ttl`: it succeeds if
    /// nobody holds an unexpired lease or `owner` does. Returns the row as leased, or `None` if
    /// another owner holds it (or the version is retired or unknown).
    fn lease_projection<'a>(
        &'a self,
        name: &'a str,
        version: u32,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<ProjectionRecord>>>;

    /// Inside `tx` (the read model's transaction), moves the checkpoint from `from` to `to`,
    /// adding `applied` events and recording `last_event_at`. Fails with
    /// [`Error::ProjectionMoved`](crate::Error::ProjectionMoved) if `owner` no longer holds the
    /// lease or the checkpoint is no longer `from`: roll `tx` back, nothing of it may commit.
    #[allow(clippy::too_many_arguments)]
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
    ) -> BoxFuture<'a, Result<()>>;

    /// Gives up `owner`'s lease, if it holds it.
    fn release_projection<'a>(
        &'a self,
        name: &'a str,
        version: u32,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<()>>;

    /// Every projection version, by name and version.
    fn list_projections(&self) -> BoxFuture<'_, Result<Vec<ProjectionRecord>>>;

    /// Inside `tx` (the transaction that empties the read model, or takes it back), sets a
    /// version's checkpoint back to `to`: [`GlobalPosition::START`] to build it again from zero
    /// (its count of applied events restarts too), another position to apply what follows it
    /// again. Fails with [`Error::ProjectionMoved`](crate::Error::ProjectionMoved) unless `owner`
    /// holds its lease.
    fn reset_projection<'a>(
        &'a self,
        tx: &'a mut StoreTx,
        name: &'a str,
        version: u32,
        owner: &'a str,
        to: GlobalPosition,
    ) -> BoxFuture<'a, Result<()>>;

    /// Makes `version` the active one of `name`, retiring the version that was, in one
    /// transaction: readers switch from one complete read model to the other.
    fn activate_projection<'a>(&'a self, name: &'a str, version: u32) -> BoxFuture<'a, Result<()>>;

    /// The position of the last event committed so far in the global order (`None`: there is
    /// none), whether or not it is final yet: what a catch-up waits for its checkpoint to pass.
    fn committed_head(&self) -> BoxFuture<'_, Result<Option<GlobalPosition>>>;

    /// How many committed events come after `position` in the global order, counting up to
    /// `cap` at most (a count of `cap` means "at least"): how far behind a projection is, in
    /// events. Events not final yet are counted too.
    fn count_after(&self, position: GlobalPosition, cap: u64) -> BoxFuture<'_, Result<u64>>;

    /// The position of event `seq` of `instance_id` in the global order, if it exists: what
    /// a reader waits for a projection to pass, to read its own write.
    fn event_position<'a>(
        &'a self,
        instance_id: &'a str,
        seq: u64,
    ) -> BoxFuture<'a, Result<Option<GlobalPosition>>>;
}
