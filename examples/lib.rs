//! Runnable Quark programs; see the `[[example]]` entries.

pub mod bank;
