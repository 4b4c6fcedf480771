//! Typed signals: a signal's name and payload type, declared once and used by the sender and the
//! orchestration that waits for it, so that the two cannot disagree on either.

use std::fmt;
use std::marker::PhantomData;

/// A signal: its name, and the type of the value it carries. Declare it once, as a constant,
/// and use it on both sides:
///
/// ```no_run
/// # use quark_workflow::{Client, OrchestrationContext, OrchestrationError, Signal, orchestration};
/// /// An approver's decision.
/// pub const APPROVE: Signal<bool> = Signal::new("approve");
///
/// #[orchestration]
/// async fn expense(ctx: OrchestrationContext, cents: u64) -> Result<bool, OrchestrationError> {
///     let approved = ctx.wait_for(APPROVE).await?; // a bool
///     Ok(approved && cents < 100_000)
/// }
///
/// # async fn demo(client: &Client) -> Result<(), quark_workflow::ClientError> {
/// client.send("expense-7", APPROVE, &true).await?;
/// # Ok(()) }
/// ```
///
/// A value of another type does not compile:
///
/// ```compile_fail
/// # use quark_workflow::{Client, Signal};
/// # const APPROVE: Signal<bool> = Signal::new("approve");
/// # async fn demo(client: &Client) -> Result<(), quark_workflow::ClientError> {
/// client.send("expense-7", APPROVE, &"yes").await?;
/// # Ok(()) }
/// ```
///
/// On the wire a typed signal is an ordinary one: `quark workflow signal ID approve true` and
/// `handle.signal("approve", &true)` send it too, and `ctx.wait_for_signal::<bool>("approve")`
/// receives it.
pub struct Signal<T> {
    name: &'static str,
    _value: PhantomData<fn(T) -> T>,
}

impl<T> Signal<T> {
    /// The signal called `name`, carrying a `T`.
    pub const fn new(name: &'static str) -> Self {
        Signal {
            name,
            _value: PhantomData,
        }
    }

    /// Its name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for Signal<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Signal<T> {}

impl<T> fmt::Debug for Signal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signal<{}>({:?})", std::any::type_name::<T>(), self.name)
    }
}
