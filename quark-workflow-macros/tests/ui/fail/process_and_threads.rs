use std::env;
use std::process::Command;

use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

mod hostname {
    pub fn get() -> String {
        "worker-1".into()
    }
}

// A module of the user's own, named like a standard one: not rejected.
mod process {
    pub fn total(n: u64) -> u64 {
        n
    }
}

#[orchestration]
async fn facts(_ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let _dir = env::current_dir();
    let _args = std::env::args();
    let _pid = std::process::id();
    let _host = hostname::get();
    let _thread = std::thread::current();
    std::thread::scope(|_| ());
    std::thread::yield_now();
    let _ls = Command::new("ls");
    if n == 0 {
        std::process::exit(1);
    }
    // Compile-time facts are fine.
    let _os = std::env::consts::OS;
    Ok(process::total(n))
}

fn main() {}
