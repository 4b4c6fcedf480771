use std::rc::Rc;

use quark_workflow::{ActivityContext, ActivityError, activity};

async fn step() {}

#[activity]
async fn holds_an_rc(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    let shared = Rc::new(n);
    step().await;
    Ok(*shared)
}

fn main() {}
