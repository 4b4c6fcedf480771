//! Placement: where the live state (warm orchestration runs, live entities) sits among workers.
//!
//! - [`sketch`]: who talks to whom, as each worker's commits see it, published through the
//!   database.
//! - `follow`: a worker drops the warm runs of instances another worker serves now, so that a
//!   hand-over frees memory on the source.

pub(crate) mod follow;
pub mod sketch;
