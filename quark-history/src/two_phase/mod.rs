//! Two-phase commit across PostgreSQL databases.
//!
//! A transaction that writes in several databases (its *participants*) commits in all of them or
//! in none. Each participant's part (a [`Branch`]) is prepared with `PREPARE TRANSACTION`, which
//! makes it durable on that server without committing it; then the coordinator records its
//! decision in the engine's own database, the *decision log* ([`DecisionStore`]); then every
//! branch is finished by `COMMIT PREPARED` or `ROLLBACK PREPARED`. The decision is the commit
//! point: a branch commits if and only if a `commit` decision for its global id stands in the
//! log.
//!
//! The log decides races. A decision is written only if none stands for the global id (the
//! table's primary key), and whoever comes second reads the first. So a coordinator that decides
//! to commit and a recovery that gives up on the same transaction (its coordinator looked dead)
//! cannot both win; whichever did, every branch follows it.
//!
//! A transactional activity's decision is written in the same transaction as its result (see
//! `ActivityContext::participant` in `quark-workflow`), so it is fenced by the task's lease: an
//! attempt whose lease was lost cannot decide to commit.
//!
//! Prepared transactions hold their row locks and hold back vacuum until they are finished, so
//! nothing may stay prepared: [`Coordinator::recover`] (every worker runs it) finishes every
//! prepared branch of this log by its decision, and gives up on one that has no decision once it
//! is older than a grace period; a retried attempt gives up on its earlier attempts' branches at
//! once ([`Coordinator::abandon_attempts`]). `quark tx in-doubt` lists what is prepared, and
//! `quark tx resolve` finishes one by hand.

pub(crate) mod decision;

#[cfg(feature = "postgres")]
mod coordinator;
#[cfg(feature = "postgres")]
mod participants;

pub use decision::{ABORTS_KEPT_FOR, Decision, DecisionRecord, DecisionStore, GID_PREFIX};

#[cfg(feature = "postgres")]
pub use coordinator::{Coordinator, InDoubt, Prepared, Recovered};
#[cfg(feature = "postgres")]
pub use participants::{Branch, DEFAULT_LOCK_TIMEOUT, Participants};
