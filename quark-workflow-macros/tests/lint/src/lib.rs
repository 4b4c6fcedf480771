//! Orchestration-like code as a user writes it, where the macro cannot look: imported and
//! aliased names, helper functions, hash maps behind types. Each line clippy must deny ends in a
//! `denied:` comment with the path as clippy reports it; everything else must pass.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]
#![allow(dead_code, unused_must_use, clippy::let_underscore_future)]

use std::collections::{HashMap, HashSet};
use std::env;
use std::time::Duration;

use tokio::task::JoinSet; // denied: tokio::task::JoinSet
use tokio::time::sleep as nap;

struct Cart {
    lines: HashMap<String, u64>,
}

impl Cart {
    fn items(&self) -> impl Iterator<Item = &String> {
        self.lines.keys() // denied: std::collections::HashMap::keys
    }
}

fn promotion_running() -> bool {
    let now = std::time::SystemTime::now(); // denied: std::time::SystemTime::now
    now.elapsed().is_ok()
}

fn region() -> Option<String> {
    env::var("REGION").ok() // denied: std::env::var
}

async fn hidden(seen: HashSet<u64>) {
    let _ = std::time::Instant::now(); // denied: std::time::Instant::now
    let _ = tokio::time::Instant::now(); // denied: tokio::time::Instant::now
    nap(Duration::from_secs(1)).await; // denied: tokio::time::sleep
    let _ = tokio::time::interval(Duration::from_secs(1)); // denied: tokio::time::interval
    let _ = tokio::time::timeout(Duration::from_secs(1), async {}).await; // denied: tokio::time::timeout
    tokio::spawn(async {}); // denied: tokio::task::spawn
    let _ = JoinSet::<()>::new(); // denied: tokio::task::JoinSet
    tokio::task::spawn_blocking(|| ()); // denied: tokio::task::spawn_blocking
    tokio::task::yield_now().await; // denied: tokio::task::yield_now
    let _ = tokio::task::id(); // denied: tokio::task::id
    std::thread::spawn(|| ()); // denied: std::thread::spawn
    std::thread::sleep(Duration::from_millis(1)); // denied: std::thread::sleep
    let _ = std::thread::current(); // denied: std::thread::current
    let _ = std::process::id(); // denied: std::process::id
    let _ = env::current_dir(); // denied: std::env::current_dir
    env::args(); // denied: std::env::args
    let _ = tokio::process::Command::new("ls"); // denied: tokio::process::Command
    let _ = std::fs::read("x"); // denied: std::fs::read
    let _ = tokio::fs::read("x").await; // denied: tokio::fs::read
    let _ = std::net::TcpStream::connect("localhost:1"); // denied: std::net::TcpStream
    let _ = tokio::net::lookup_host("localhost:1").await; // denied: tokio::net::lookup_host
    let _ = tokio::signal::ctrl_c().await; // denied: tokio::signal::ctrl_c
    let _ = std::io::stdin(); // denied: std::io::stdin
    let _ = std::hash::RandomState::new(); // denied: std::collections::hash_map::RandomState::new
    for _id in seen.iter() {} // denied: std::collections::HashSet::iter
    if region().is_none() {
        std::process::exit(1); // denied: std::process::exit
    }
    // Deterministic: accepted.
    let _ = tokio::time::Duration::from_secs(1);
    let _ = std::net::Ipv4Addr::new(127, 0, 0, 1);
    let _ = std::env::consts::OS;
    let _ = HashMap::<u64, u64>::new().get(&1);
}
