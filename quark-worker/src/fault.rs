//! Fault injection for crash tests: named points in the runtime where a test's hook runs (and may
//! end the process). Not for production use; hidden from the documentation.

use std::fmt;
use std::sync::Arc;

/// A point in the runtime where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultPoint {
    /// A transactional activity returned; its transaction is about to be committed with its
    /// result.
    BeforeTransactionalCommit,
    /// A transactional activity's transaction, with its result, has just committed.
    AfterTransactionalCommit,
}

/// The hook: called with the point and the attempt of the task at it.
#[derive(Clone)]
pub(crate) struct FaultHook(pub(crate) Arc<dyn Fn(FaultPoint, u32) + Send + Sync>);

impl fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FaultHook")
    }
}
