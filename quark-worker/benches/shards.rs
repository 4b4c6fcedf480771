//! Shards benchmark: orchestrations of three no-op activities each on 1, 2 and 3 PostgreSQL
//! shards (the servers `bash .ci/clusters` makes), a worker per shard in this process, started
//! through a `ShardedClient`. Reports orchestrations/s, and the CPU each shard's server used
//! (all its processes, from /proc) and this process used, per 1,000 orchestrations: the inputs of
//! the sizing model in the book's shards chapter.
//!
//! `cargo bench -p quark-worker --bench shards -- [--n 3000] [--shards 1,2,3] [--rounds 1]`
//! Servers: `QUARK_TEST_CLUSTER_URLS` (default 127.0.0.1:5433-5435); a fresh database on each.
#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use quark_history::shards::Shards;
use quark_history::testing::ClusterDatabases;
use quark_history::{InstanceFilter, InstanceStatus, StoreConfig};
use quark_worker::Worker;
use quark_workflow::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry,
    ShardedClient, activity, orchestration,
};

#[activity]
async fn noop(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    Ok(n)
}

#[orchestration]
async fn three_steps(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let a = ctx.call(noop, &n).await?;
    let b = ctx.call(noop, &a).await?;
    ctx.call(noop, &b).await
}

struct Args {
    n: u64,
    shards: Vec<usize>,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        n: 3000,
        shards: vec![1, 2, 3],
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--n" => a.n = it.next().and_then(|v| v.parse().ok()).expect("--n N"),
            "--shards" => {
                a.shards = it
                    .next()
                    .expect("--shards 1,2,3")
                    .split(',')
                    .map(|s| s.parse().expect("--shards 1,2,3"))
                    .collect()
            }
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--bench" => {}
            other => panic!("unknown argument {other}; see the file's header"),
        }
    }
    a
}

/// CPU seconds (user + system) of process `pid` and, with `children`, of every process whose
/// parent it is (a PostgreSQL server's backends).
fn cpu_seconds(pid: u32, children: bool) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let read = |pid: &str| -> Option<(u32, f64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ppid = fields[1].parse().ok()?;
        let cpu: f64 = fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?;
        Some((ppid, cpu / ticks))
    };
    let mut total = read(&pid.to_string()).map_or(0.0, |(_, c)| c);
    if children && let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.bytes().all(|b| b.is_ascii_digit())
                && let Some((ppid, cpu)) = read(&name)
                && ppid == pid
            {
                total += cpu;
            }
        }
    }
    total
}

/// The postmaster of the server listening on `port` (its data directory's `postmaster.pid`).
fn postmaster(port: u16) -> Option<u32> {
    for dir in std::fs::read_dir("/var/lib/postgresql").ok()?.flatten() {
        for cluster in std::fs::read_dir(dir.path()).ok()?.flatten() {
            let pidfile = cluster.path().join("postmaster.pid");
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                let lines: Vec<&str> = text.lines().collect();
                if lines.get(3).and_then(|p| p.trim().parse::<u16>().ok()) == Some(port) {
                    return lines.first()?.trim().parse().ok();
                }
            }
        }
    }
    None
}

fn port_of(url: &str) -> u16 {
    url.split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("a cluster URL on 127.0.0.1:PORT")
}

struct Run {
    per_second: f64,
    server_cpu: Vec<f64>,
    worker_cpu: f64,
}

async fn run(k: usize, n: u64) -> Run {
    let dbs = ClusterDatabases::create(k)
        .await
        .expect("the extra PostgreSQL servers (bash .ci/clusters)");
    let names: Vec<String> = (0..k).map(|i| format!("s{i}")).collect();
    let shards = Shards::connect(
        names
            .iter()
            .zip(&dbs.urls)
            .map(|(n, u)| (n.as_str(), u.as_str())),
        StoreConfig::default(),
    )
    .await
    .unwrap();
    let mut workers = Vec::new();
    for (position, name) in names.iter().enumerate() {
        workers.push(
            Worker::builder()
                .store(Arc::clone(shards.store(position)))
                .shard(shards.clone(), name)
                .workflows(Registry::new().register(three_steps).register(noop))
                .build()
                .unwrap()
                .start()
                .await
                .unwrap(),
        );
    }
    let client = ShardedClient::new(shards.clone());
    let servers: Vec<u32> = dbs
        .urls
        .iter()
        .map(|u| postmaster(port_of(u)).expect("the server's postmaster.pid"))
        .collect();
    let me = std::process::id();
    let server_before: Vec<f64> = servers.iter().map(|p| cpu_seconds(*p, true)).collect();
    let worker_before = cpu_seconds(me, false);
    let started = Instant::now();
    // Eight starters, as eight clients would.
    let per = n / 8;
    let mut starters = Vec::new();
    for s in 0..8 {
        let client = client.clone();
        starters.push(tokio::spawn(async move {
            for i in 0..per {
                three_steps::start(&client, format!("o-{s}-{i}"), i)
                    .await
                    .unwrap();
            }
        }));
    }
    for s in starters {
        s.await.unwrap();
    }
    let total = per * 8;
    loop {
        let mut done = 0u64;
        for position in 0..k {
            done += client
                .shard(position)
                .store()
                .list_instances(InstanceFilter {
                    statuses: vec![InstanceStatus::Running],
                    limit: 1,
                    ..Default::default()
                })
                .await
                .unwrap()
                .is_empty() as u64;
        }
        if done == k as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let server_cpu: Vec<f64> = servers
        .iter()
        .zip(&server_before)
        .map(|(p, b)| cpu_seconds(*p, true) - b)
        .collect();
    let worker_cpu = cpu_seconds(me, false) - worker_before;
    for w in workers {
        w.shutdown().await;
    }
    drop(client);
    drop(shards);
    dbs.cleanup().await;
    Run {
        per_second: total as f64 / wall,
        server_cpu: server_cpu
            .iter()
            .map(|c| c * 1000.0 / total as f64)
            .collect(),
        worker_cpu: worker_cpu * 1000.0 / total as f64,
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    println!(
        "| shards | orchestrations/s | server CPU s per 1,000 orchestrations, each shard | worker process CPU s per 1,000 |"
    );
    println!("|---|---|---|---|");
    for round in 0..a.rounds {
        for &k in &a.shards {
            eprintln!("round {round}: {k} shard(s), {} orchestrations", a.n);
            let r = run(k, a.n).await;
            println!(
                "| {k} | {:.0} | {} | {:.2} |",
                r.per_second,
                r.server_cpu
                    .iter()
                    .map(|c| format!("{c:.2}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                r.worker_cpu
            );
        }
    }
}
