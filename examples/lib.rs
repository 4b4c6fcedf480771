//! Runnable Quark programs; see the `[[example]]` entries.
