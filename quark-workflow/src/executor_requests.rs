//! Queries and updates on a run: a query answered from its state, an update's validator asked
//! whether it may be accepted. Both only read the run (see [`State::read_only`]).
//!
//! [`State::read_only`]: crate::state::State

use quark_history::Payload;

use super::Executor;
use super::poll::panic_message;

impl Executor {
    /// Answers query `name` with `input` from the run's current state.
    pub(crate) fn query(&self, name: &str, input: &Payload) -> Result<Payload, String> {
        let handler = self.ctx.state.borrow().handlers.query(name)?;
        self.read_only(|| handler(input))
            .map_err(|panic| format!("query `{name}`'s handler panicked: {panic}"))?
    }

    /// Runs `f` (a handler that only reads) with commands forbidden; a panic is its message.
    fn read_only<R>(&self, f: impl FnOnce() -> R) -> Result<R, String> {
        self.ctx.state.borrow_mut().read_only = true;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        if let Ok(mut st) = self.ctx.state.try_borrow_mut() {
            st.read_only = false;
        }
        ran.map_err(|panic| panic_message(panic.as_ref()))
    }

    /// Whether update `update_id` (`name` with `input`) may be accepted now: `Ok(true)` if its
    /// validator (if any) accepts it, `Ok(false)` if it was accepted already (its
    /// `UpdateAccepted` is in the history), and why not otherwise.
    pub(crate) fn admit_update(
        &self,
        update_id: &str,
        name: &str,
        input: &Payload,
    ) -> Result<bool, String> {
        let handler = {
            let st = self.ctx.state.borrow();
            if st.updates_accepted.contains(update_id) {
                return Ok(false);
            }
            if self.root.is_none() || self.closed {
                return Err("the instance has ended".into());
            }
            st.handlers.update(name)?
        };
        if let Some(validate) = handler.validate {
            self.read_only(|| validate(input))
                .map_err(|panic| format!("update `{name}`'s validator panicked: {panic}"))??;
        }
        Ok(true)
    }
}
