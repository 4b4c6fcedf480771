//! The SDK's integration tests, one module per subject, linked into one test binary (linking, not
//! compiling, is most of a cold `cargo test`). The golden histories the replay tests read stay in
//! `tests/histories/`.

mod blocked;
mod environment;
mod hidden_nondeterminism;
// `pub`: the module's types are `pub` as in the brief it reproduces.
pub mod issue_example;
mod job_workflow;
mod live;
mod namespaces;
mod replay;
mod saga;
mod signals;
mod updates;
mod versioning;
