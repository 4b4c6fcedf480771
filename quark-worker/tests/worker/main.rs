//! The worker's integration tests, one module per subject, linked into one test binary (linking,
//! not compiling, is most of a cold `cargo test`). The tests of all modules run in parallel in
//! this one process: a module's statics are keyed by test, never assumed to be its own.

mod support;

mod blocked;
mod brokers;
mod cli;
mod cli_binary;
mod cli_jobs;
mod cli_outbox;
mod cli_reference;
mod cli_replay;
mod cli_schedule;
mod drivers;
mod entities;
mod job_control;
mod job_workflow;
mod jobs;
mod memory;
mod metrics;
mod nats_tls;
mod outbox;
mod placement;
mod runtime;
mod saga;
mod schedules;
mod service;
mod service_auth;
mod service_console;
mod service_lock;
mod service_namespaces;
mod service_ops;
mod service_reads;
mod service_remote;
mod service_requests;
mod service_tls;
mod shards;
mod trace_context;
mod transactional;
mod two_phase;
mod updates;
mod webhook;
mod workflows;
