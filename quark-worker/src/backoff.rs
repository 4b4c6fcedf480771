//! Exponential backoff with jitter (the runner's, shared by the worker's relay and its settles).

pub use quark_workflow::runner::backoff::delay;
