//! Placement: where the live state (warm orchestration runs, live entities) sits among workers.
//!
//! - `follow`: a worker drops the warm runs of instances another worker serves now, so that a
//!   hand-over frees memory on the source.

pub(crate) mod follow;
