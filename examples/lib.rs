//! Runnable Quark programs; see the `[[example]]` entries.

pub mod bank;
pub mod bank_two_phase;
