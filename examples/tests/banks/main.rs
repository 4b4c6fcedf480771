//! The bank transfer examples under fire, in one test binary: the saga between two schemas
//! (`saga`), and the two-phase commit between two servers (`two_phase`).

mod saga;
mod two_phase;
