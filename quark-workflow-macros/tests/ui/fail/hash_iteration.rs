use std::collections::{HashMap, HashSet};

use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

#[orchestration]
async fn sums(_ctx: OrchestrationContext, prices: HashMap<String, u64>) -> Result<u64, OrchestrationError> {
    let mut total = 0;
    for (_, p) in &prices {
        total += p;
    }
    let seen = HashSet::<u64>::new();
    total += seen.iter().sum::<u64>();
    let ids: HashSet<u64> = [1, 2].into_iter().collect();
    for id in ids {
        total += id;
    }
    Ok(total)
}

fn main() {}
