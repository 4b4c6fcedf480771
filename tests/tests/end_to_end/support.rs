//! What the modules of this binary share.

use tokio::sync::{Mutex, MutexGuard};

/// Clears a slow suite (crash loops, database faults) to run: `None` when `QUARK_SKIP_SLOW` skips
/// it (see [`quark_tests::skip_slow`]); otherwise a guard that lets one slow suite of this binary
/// run at a time. Each file used to be a binary of its own, and cargo runs test binaries one after
/// another; two crash loops at once on a two-core machine could starve each other's workers past
/// their deadlines.
pub(crate) async fn slow_suite(name: &str) -> Option<MutexGuard<'static, ()>> {
    if quark_tests::skip_slow(name) {
        return None;
    }
    Some(one_at_a_time().await)
}

/// A turn alone among this binary's suites that run worker processes, for a suite that is quick
/// but measures time (recovery), which a crash loop beside it would distort.
pub(crate) async fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());
    ONE_AT_A_TIME.lock().await
}
