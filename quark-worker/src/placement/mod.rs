//! Placement: where the live state (warm orchestration runs, live entities) sits among workers.
//!
//! - [`topology`]: where each worker is (region, zone, rack), and what a message between two
//!   places costs.
//! - [`partition`]: the repartitioner, which moves live state so that what talks together sits
//!   together, within balance constraints on count, memory and CPU.
//! - [`sketch`]: who talks to whom, as each worker's commits see it, published through the
//!   database.
//! - [`coordinator`]: one worker at a time merges what the others published and moves instances,
//!   for locality every so often and at once to relieve a worker under memory pressure.
//! - [`model`]: what the coordinator sees, as the repartitioner's input.
//! - `follow`: a worker drops the warm runs of instances another worker serves now, so that a
//!   hand-over frees memory on the source.

pub mod coordinator;
pub(crate) mod follow;
pub mod model;
pub mod partition;
pub mod sketch;
pub mod topology;
