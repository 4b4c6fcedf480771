//! The cross-crate end-to-end tests, one module per subject, linked into one test binary (linking,
//! not compiling, is most of a cold `cargo test`). The crash tests start and kill `crash-worker`
//! processes; `support::slow_suite` runs them one at a time, or skips them under `QUARK_SKIP_SLOW`.

mod support;

mod bad_input;
mod console;
mod crash;
mod entities;
mod entity_chaos;
mod job_crash;
mod projections;
mod recovery;
mod redis_projections;
mod shard_crash;
mod shutdown;
mod startup;
mod transactional_crash;
