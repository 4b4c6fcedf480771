//! What the determinism check lets through: the escape hatch, biased select, ordered maps.
use std::collections::{BTreeMap, HashMap};

use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

mod tokio {
    pub use std::future::ready as spawn;
}

#[orchestration]
async fn allowed(ctx: OrchestrationContext, totals: BTreeMap<String, u64>) -> Result<u64, OrchestrationError> {
    // The escape hatch: the author vouches for these statements.
    #[allow_nondeterministic]
    let started = std::time::Instant::now();
    #[allow_nondeterministic]
    tokio::spawn(()).await;
    let _ = started;

    // Ordered maps iterate the same way everywhere.
    let mut sum = 0;
    for (_, v) in &totals {
        sum += v;
    }
    // A HashMap used for lookups only is fine.
    let index: HashMap<u64, u64> = HashMap::new();
    sum += index.get(&1).copied().unwrap_or(0);
    Ok(sum + ctx.history_len())
}

fn main() {}
