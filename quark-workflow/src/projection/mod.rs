//! Projections (CQRS read models): the global order of events, applied to a read model from a
//! checkpoint, exactly once.
//!
//! A [`Projection`] says how a page of events changes its read model, inside the read model's
//! database transaction ([`StoreTx`]). A [`Projector`] runs it: it takes the projection's lease
//! (one runner at a time per projection version), reads the next page of the gap-safe global order
//! after the checkpoint ([`Store::read_all`](quark_history::Store::read_all)), applies it, and moves the checkpoint in the same
//! transaction, fenced by the lease and the checkpoint it read from. A crash rolls back the page
//! and its checkpoint together; the next holder applies it again. An event that commits late with
//! a smaller position is never skipped: `read_all` does not pass it until it is final.
//!
//! **Versions.** Bump [`Projection::VERSION`] to change a read model's shape: the new version
//! builds beside the active one (write it to its own tables, named by [`Batch::version`]) and
//! takes over when it has caught up, in one transaction, so readers always read a complete
//! model ([`active_version`]).
//!
//! **Read your writes.** [`Projector::wait_for`] waits until the checkpoint has passed a position
//! (an entity command's events: [`position_of`]); [`Projector::status`] tells how far behind the
//! projection is, in events and in time, so a reader can refuse a model staler than it accepts.
//!
//! **On Redis** (feature `redis`), entities on a [`RedisLog`](quark_history::RedisLog) are
//! projected into Redis by a `RedisProjector`, through a consumer group on the log's global
//! stream.

mod batch;
mod projector;
#[cfg(feature = "redis")]
mod redis;

use std::future::Future;

pub use batch::{Batch, ProjectedEvent};
pub use projector::{
    BEHIND_CAP, CatchUp, DEFAULT_LEASE, DEFAULT_PAGE, Progress, ProjectionStatus, Projector,
    Replayed, RunProjection, active_version, position_of,
};
pub use quark_history::{GlobalEvent, GlobalPosition, ProjectionRecord, ProjectionState, StoreTx};
#[cfg(feature = "redis")]
pub use redis::{RedisPage, RedisProjection, RedisProjectionStatus, RedisProjector, Writes};

/// A read model built from the global order.
pub trait Projection: Send + Sync + 'static {
    /// The projection's name: its checkpoint's key. Keep it stable.
    const NAME: &'static str;

    /// The read model's version. A new version builds from zero beside the active one and takes
    /// over when it has caught up.
    const VERSION: u32 = 1;

    /// Applies a page of events, in global order, to the read model, writing in
    /// [`Batch::tx`]. Skip the events the model does not use. An error rolls the page back (and
    /// its checkpoint with it); it is applied again at the next step.
    fn apply(
        &self,
        batch: &mut Batch<'_>,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Empties the read model of `version` before a rebuild from zero, in `tx` (the transaction
    /// that also sets the checkpoint back). The default does nothing: a model whose writes are
    /// idempotent upserts keyed by what it projects can be rebuilt over itself.
    fn reset(
        &self,
        tx: &mut StoreTx,
        version: u32,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send {
        let _ = (tx, version);
        async { Ok(()) }
    }
}

/// A shared projection is the projection: what a [`Registry`](crate::Registry) keeps, so that
/// every projector it makes (a worker's, `quark projection rebuild`'s) runs the same one.
impl<P: Projection> Projection for std::sync::Arc<P> {
    const NAME: &'static str = P::NAME;
    const VERSION: u32 = P::VERSION;

    fn apply(
        &self,
        batch: &mut Batch<'_>,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send {
        P::apply(self, batch)
    }

    fn reset(
        &self,
        tx: &mut StoreTx,
        version: u32,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send {
        P::reset(self, tx, version)
    }
}

/// Why a projection step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The store failed, or the checkpoint moved under this runner
    /// ([`quark_history::Error::ProjectionMoved`]: another runner has the lease).
    #[error(transparent)]
    Store(#[from] quark_history::Error),
    /// The projection's own code failed on a page: the page is rolled back and applied again at
    /// the next step.
    #[error("projection `{name}` failed to apply events: {message}")]
    Apply {
        /// The projection.
        name: String,
        /// What its code said.
        message: String,
    },
    /// Another runner holds the projection's lease (or the version is retired): wait for it to
    /// finish, stop it, or let its lease run out.
    #[error("projection `{name}` v{version} is {held}")]
    Busy {
        /// The projection.
        name: String,
        /// Its version.
        version: u32,
        /// Who holds it and until when, or that it is retired.
        held: String,
    },
    /// [`Projector::wait_for`] gave up.
    #[error("projection `{name}` did not pass {target} within {waited:?} (it is at {at})")]
    Timeout {
        /// The projection.
        name: String,
        /// The position waited for.
        target: GlobalPosition,
        /// Where its checkpoint was at the end.
        at: GlobalPosition,
        /// How long it waited.
        waited: std::time::Duration,
    },
}

impl ProjectionError {
    /// The projection's own failure, with a message.
    pub fn apply(name: &str, message: impl std::fmt::Display) -> Self {
        ProjectionError::Apply {
            name: name.to_string(),
            message: message.to_string(),
        }
    }
}

impl From<quark_history::sqlx::Error> for ProjectionError {
    fn from(e: quark_history::sqlx::Error) -> Self {
        ProjectionError::Store(e.into())
    }
}
