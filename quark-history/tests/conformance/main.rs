//! The store conformance suite: every test here runs against SQLite and PostgreSQL, each on a
//! fresh database and a manual clock. Time moves only when a test advances the clock, so lease
//! expiry and visibility are tested without sleeping.
//!
//! `properties` stands apart from the suite: proptest properties (codec round trips; leases, on
//! SQLite), in this binary only to save linking another.

mod support;

mod properties;

mod batch;
mod blocked;
mod catalog;
mod checkpoint;
mod concurrency;
mod deadlock;
mod ending;
mod inbox_order;
mod instances;
mod jobs;
mod journal;
mod outbox;
mod outbox_window;
mod placement;
mod queue;
mod readiness;
mod requests;
mod schedules;
mod shards;
mod streams;
mod tls;
mod tokens;
mod trace_context;
mod transaction;
mod two_phase;
mod wakeups;
mod workers;
