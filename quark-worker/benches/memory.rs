//! Memory benchmark: how well a warm run's estimated footprint (what the memory governor and
//! `quark worker list` count) matches the memory it really holds.
//!
//! For each state size, two child processes run the same workload on PostgreSQL: N orchestrations
//! that each hold a text input of that size and park on a signal. One keeps every run warm, the other
//! keeps none. The difference of their resident memory (after the last run parked) is what the
//! warm runs really hold; it is compared with the sum of their estimated footprints.
//!
//! `cargo bench -p quark-worker --bench memory -- [--n 5000] [--sizes 0,1024,16384]`
//! PostgreSQL: `QUARK_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! each child creates and drops a database of its own.
#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quark_history::{AffinityMove, PostgresStore, Store, StoreConfig};
use quark_worker::Worker;
use quark_worker::memory::{MemoryProbe, ProcProbe};
use quark_workflow::{
    Client, OrchestrationContext, OrchestrationError, Registry, WarmLimits, orchestration,
};

mod scratch;
use scratch::Scratch;

/// Holds `state` until signalled, then returns its length.
#[orchestration]
async fn holder(ctx: OrchestrationContext, state: String) -> Result<u64, OrchestrationError> {
    let _: u64 = ctx.wait_for_signal("go").await?;
    Ok(state.len() as u64)
}

/// Holds `state` and serves a turn per signal until a signal of 0.
#[orchestration]
async fn server(ctx: OrchestrationContext, state: String) -> Result<u64, OrchestrationError> {
    let mut turns = 0;
    loop {
        let n: u64 = ctx.wait_for_signal("go").await?;
        if n == 0 {
            drop(state); // held by the run until here
            return Ok(turns);
        }
        turns += 1;
    }
}

const USAGE: &str = "cargo bench -p quark-worker --bench memory -- [options]
  --n N            orchestrations per run (default 5000)
  --sizes A,B,..   bytes of state each holds (default 0,1024,16384)
  --cluster M      instead: M instances of 256 KiB of state each, started on one worker
                   process whose limit is its baseline plus --headroom MiB (default 96), then
                   two more such processes; --rounds R (default 5) signal every instance R
                   times; reports each process's highest memory against its limit, the warm
                   state each ends with, and that every instance completed
  --migrate M      instead: M moves of a warm instance between two workers per state size
                   (sizes default 1024,65536,1048576), from the decision (the affinity's
                   compare-and-set) to the instance serving a turn warm on the target
  --crash-moves M  instead: M moves of instances between two worker processes, each followed
                   at once by a SIGKILL of the source or the target (in turn) and its restart;
                   fails unless every signal was served exactly once";

/// `size` bytes of text, different for each `i`.
fn text(i: usize, size: usize) -> String {
    let letter = char::from(b'a' + (i % 26) as u8);
    std::iter::repeat_n(letter, size).collect()
}

/// One child's run: returns (RSS growth in bytes, warm runs, their estimated bytes).
async fn child(n: usize, size: usize, keep: bool) -> anyhow::Result<(u64, usize, usize)> {
    let db = Scratch::create("memory").await?;
    let result = async {
        let store: Arc<dyn Store> =
            Arc::new(PostgresStore::connect_with(&db.url, StoreConfig::default()).await?);
        store.migrate().await?;
        let limits = WarmLimits {
            instances: if keep { n + 50 } else { 0 },
            bytes: usize::MAX,
        };
        let worker = Worker::builder()
            .store(Arc::clone(&store))
            .poll_interval(Duration::from_millis(20))
            .warm_limits(limits)
            .without_memory_governor()
            .workflows(Registry::new().register(holder))
            .build()?;
        let running = worker.start().await?;
        let client = Client::new(Arc::clone(&store));
        // Warm up the process (pools, code pages, first allocations) before the baseline.
        for i in 0..50 {
            holder::start(&client, &format!("warmup-{i}"), text(i, size)).await?;
        }
        wait_parked(&running, &store, 50).await?;
        let probe = ProcProbe::default();
        let before = probe.resident()?;
        for i in 0..n {
            holder::start(&client, &format!("h-{i}"), text(i, size)).await?;
        }
        wait_parked(&running, &store, 50 + n).await?;
        let after = probe.resident()?;
        let warm: Vec<_> = running
            .worker()
            .live_instances()
            .into_iter()
            .filter(|l| l.instance_id.starts_with("h-"))
            .collect();
        let estimated: usize = warm.iter().map(|l| l.footprint).sum();
        running.shutdown().await;
        anyhow::Ok((after.saturating_sub(before), warm.len(), estimated))
    }
    .await;
    db.drop().await;
    result
}

/// Waits until `n` instances have run their first turn (each parked on its signal).
async fn wait_parked(
    running: &quark_worker::RunningWorker,
    _store: &Arc<dyn Store>,
    n: usize,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while (running.worker().metrics().completed as usize) < n {
        anyhow::ensure!(std::time::Instant::now() < deadline, "runs did not park");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A worker process of the cluster run: its limit is its resident memory once started plus
/// `headroom`. Says `ready LIMIT` and serves until its standard input closes.
async fn cluster_worker(id: &str, url: &str, headroom: u64) -> anyhow::Result<()> {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    let store: Arc<dyn Store> =
        Arc::new(PostgresStore::connect_with(url, StoreConfig::default()).await?);
    let limit = ProcProbe::default().resident()? + headroom;
    let lock_dir = std::env::temp_dir().join("quark-cluster-bench");
    let worker = Worker::builder()
        .store(store)
        .id(id)
        .lock_dir(lock_dir)
        .poll_interval(Duration::from_millis(20))
        .warm_limits(WarmLimits {
            instances: 100_000,
            bytes: usize::MAX,
        })
        .memory(quark_worker::MemoryConfig::default().limit(limit))
        .workflows(Registry::new().register(server))
        .build()?;
    let running = worker.start().await?;
    println!("ready {limit}");
    std::io::stdout().flush()?;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await? > 0 {}
    let load = running.worker().load();
    let m = running.worker().metrics();
    println!(
        "done {} {} {} {} {}",
        load.cached_instances, load.cached_bytes, m.evicted_runs, m.moved_away, m.breaker_trips
    );
    std::io::stdout().flush()?;
    running.shutdown().await;
    Ok(())
}

/// The resident memory of process `pid`, in bytes.
fn resident_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

struct Member {
    id: String,
    child: std::process::Child,
    limit: u64,
    peak: Arc<AtomicU64>,
}

/// Starts a worker process of this bench (`cluster_worker`) on `url` with `headroom` MiB over
/// its baseline, and waits until it serves. Returns it and its limit.
fn spawn_worker(
    exe: &std::path::Path,
    id: &str,
    url: &str,
    headroom: u64,
) -> anyhow::Result<(std::process::Child, u64)> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(exe)
        .args([
            "--worker",
            id,
            "--url",
            url,
            "--headroom",
            &headroom.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    lines.read_line(&mut line)?;
    let limit: u64 = line
        .strip_prefix("ready ")
        .ok_or_else(|| anyhow::anyhow!("worker {id} said {line:?}"))?
        .trim()
        .parse()?;
    child.stdout = Some(lines.into_inner());
    Ok((child, limit))
}

/// The cluster run: see `--cluster` in the usage.
async fn cluster(m: usize, headroom: u64, rounds: u64) -> anyhow::Result<()> {
    let db = Scratch::create("cluster").await?;
    let db_url = db.url.clone();
    let exe = std::env::current_exe()?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawn = |id: &str| -> anyhow::Result<Member> {
        let (child, limit) = spawn_worker(&exe, id, &db_url, headroom)?;
        let peak = Arc::new(AtomicU64::new(0));
        let (pid, p, stop) = (child.id(), Arc::clone(&peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = resident_of(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Ok(Member {
            id: id.to_string(),
            child,
            limit,
            peak,
        })
    };
    let mut members: Vec<Member> = Vec::new();
    let result = async {
        let store: Arc<dyn Store> =
            Arc::new(PostgresStore::connect_with(&db_url, StoreConfig::default()).await?);
        store.migrate().await?;
        let client = Client::new(Arc::clone(&store));
        members.push(spawn("w1")?);
        let size = 256 * 1024;
        for i in 0..m {
            server::start(&client, &format!("s-{i}"), text(i, size)).await?;
        }
        let settled = async || -> anyhow::Result<()> {
            let deadline = std::time::Instant::now() + Duration::from_secs(600);
            loop {
                let q = store.queue_stats("default").await?;
                if q.pending + q.leased == 0 {
                    return Ok(());
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "the queue never drained"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        settled().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let alone = store.list_workers().await?;
        members.push(spawn("w2")?);
        members.push(spawn("w3")?);
        let started = std::time::Instant::now();
        for round in 1..=rounds {
            for i in 0..m {
                client.signal(&format!("s-{i}"), "go", &round).await?;
            }
            settled().await?;
        }
        let took = started.elapsed();
        // The last hand-overs (checked every second) and heartbeats land before the figures.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let end = store.list_workers().await?;
        let ids: Vec<String> = (0..m).map(|i| format!("s-{i}")).collect();
        let mut served: std::collections::BTreeMap<String, usize> = Default::default();
        for placed in store.affinities(&ids).await? {
            *served.entry(placed.worker).or_default() += 1;
        }
        for i in 0..m {
            client.signal(&format!("s-{i}"), "go", &0u64).await?;
        }
        let mut lost = 0;
        for i in 0..m {
            let turns: u64 = client.result(&format!("s-{i}")).await?;
            if turns != rounds {
                lost += 1;
            }
        }
        anyhow::Ok((alone, end, took, lost, served))
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    // Each worker reports its figures when its standard input closes.
    let mut reports = Vec::new();
    for mut member in members {
        drop(member.child.stdin.take());
        let mut out = String::new();
        if let Some(stdout) = member.child.stdout.as_mut() {
            use std::io::Read;
            let _ = stdout.read_to_string(&mut out);
        }
        let _ = member.child.wait();
        let done: Vec<u64> = out
            .lines()
            .find_map(|l| l.strip_prefix("done "))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        reports.push((
            member.id,
            member.limit,
            member.peak.load(Ordering::Relaxed),
            done,
        ));
    }
    db.drop().await;
    let (alone, end, took, lost, served) = result?;
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "{m} instances of 256 KiB ({:.0} MiB of state); each worker's limit is its baseline + {headroom} MiB",
        mib(m as u64 * 256 * 1024)
    );
    if let Some(w1) = alone.iter().find(|w| w.id == "w1") {
        println!(
            "w1 alone after the starts: {}, {:.0} of {:.0} MiB, {} warm runs ({:.0} MiB)",
            w1.load.pressure,
            mib(w1.load.rss_bytes),
            mib(w1.load.memory_limit),
            w1.load.cached_instances,
            mib(w1.load.cached_bytes)
        );
    }
    println!("{rounds} rounds of a signal to every instance with three workers took {took:.1?}");
    println!(
        "| worker | limit | peak RSS | peak / limit | level after the rounds | RSS after | instances served | warm runs | warm MiB | evicted | dropped (moved away) | breaker trips |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (id, limit, peak, done) in &reports {
        let get = |i: usize| done.get(i).copied().unwrap_or(0);
        let load = end
            .iter()
            .find(|w| &w.id == id)
            .map(|w| w.load)
            .unwrap_or_default();
        println!(
            "| {id} | {:.0} MiB | {:.0} MiB | {:.2} | {} | {:.0} MiB | {} | {} | {:.0} | {} | {} | {} |",
            mib(*limit),
            mib(*peak),
            *peak as f64 / *limit as f64,
            load.pressure,
            mib(load.rss_bytes),
            served.get(id).copied().unwrap_or(0),
            load.cached_instances,
            mib(load.cached_bytes),
            get(2),
            get(3),
            get(4)
        );
    }
    println!("instances that lost a turn: {lost} of {m}");
    anyhow::ensure!(lost == 0, "{lost} instances lost a turn");
    for (id, limit, peak, _) in &reports {
        anyhow::ensure!(
            peak < limit,
            "{id} reached its limit: {peak} of {limit} bytes"
        );
    }
    Ok(())
}

/// Moves instances between two worker processes and kills one of them with SIGKILL right after
/// each move, the source and the target in turn, while the moved instance's turn is claimed and
/// run; restarts it under the same id. Every signal must be served exactly once.
async fn crash_moves(moves: usize) -> anyhow::Result<()> {
    const INSTANCES: usize = 8;
    let db = Scratch::create("crash").await?;
    let exe = std::env::current_exe()?;
    let ids = ["a", "b"];
    let mut procs: Vec<std::process::Child> = Vec::new();
    let result = async {
        let store: Arc<dyn Store> =
            Arc::new(PostgresStore::connect_with(&db.url, StoreConfig::default()).await?);
        store.migrate().await?;
        let client = Client::new(Arc::clone(&store));
        for id in ids {
            procs.push(spawn_worker(&exe, id, &db.url, 4096)?.0);
        }
        let names: Vec<String> = (0..INSTANCES).map(|i| format!("c-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            server::start(&client, name, text(i, 64 * 1024)).await?;
        }
        let mut sent = [0u64; INSTANCES];
        let mut kills = [0usize; 2];
        let started = std::time::Instant::now();
        for m in 0..moves {
            let i = m % INSTANCES;
            let name = &names[i];
            // Where it is: the worker that ran its last turn.
            let from = loop {
                let affinity = store.get_instance(name).await?.and_then(|r| r.affinity);
                if let Some(w) = affinity.and_then(|w| ids.iter().position(|id| *id == w)) {
                    break w;
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(600),
                    "{name} never ran"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let to = 1 - from;
            let moved = store
                .move_affinities(&[AffinityMove::new(name, ids[from], ids[to])], None)
                .await?[0];
            sent[i] += 1;
            client.signal(name, "go", &sent[i]).await?;
            // The source on even moves, the target on odd ones, while the turn is in flight.
            let victim = if m % 2 == 0 { from } else { to };
            if moved {
                procs[victim].kill()?;
                procs[victim].wait()?;
                kills[victim] += 1;
                procs[victim] = spawn_worker(&exe, ids[victim], &db.url, 4096)?.0;
            }
        }
        let mut lost = 0;
        for (i, name) in names.iter().enumerate() {
            client.signal(name, "go", &0u64).await?;
            let turns: u64 =
                tokio::time::timeout(Duration::from_secs(120), client.result(name)).await??;
            if turns != sent[i] {
                lost += 1;
                println!("{name}: {turns} turns served for {} signals", sent[i]);
            }
        }
        println!(
            "{moves} moves, each followed by a SIGKILL ({} of the source, {} of the target; a \
             killed {} times, b {}) and a restart: {lost} of {INSTANCES} instances served a \
             signal other than exactly once; took {:.1?}",
            moves.div_ceil(2),
            moves / 2,
            kills[0],
            kills[1],
            started.elapsed()
        );
        anyhow::ensure!(
            lost == 0,
            "{lost} instances served a signal other than exactly once"
        );
        anyhow::Ok(())
    }
    .await;
    for mut p in procs {
        drop(p.stdin.take());
        let _ = p.wait();
    }
    db.drop().await;
    result
}

/// Moves warm instances between two workers and times each move from the decision to the
/// instance serving a turn warm on the target.
async fn migrate(moves: usize, sizes: &[usize]) -> anyhow::Result<()> {
    let db = Scratch::create("migrate").await?;
    let result = async {
        let store: Arc<dyn Store> =
            Arc::new(PostgresStore::connect_with(&db.url, StoreConfig::default()).await?);
        store.migrate().await?;
        let lock_dir = std::env::temp_dir().join(format!("quark-migrate-{}", uuid::Uuid::now_v7()));
        let worker = |id: &str| {
            Worker::builder()
                .store(Arc::clone(&store))
                .id(id)
                .lock_dir(&lock_dir)
                .poll_interval(Duration::from_millis(20))
                .affinity_delay(Duration::from_secs(3600))
                .workflows(Registry::new().register(server))
                .build()
        };
        let workers = [worker("a")?.start().await?, worker("b")?.start().await?];
        let client = Client::new(Arc::clone(&store));
        println!("warm instances moved between two workers on PostgreSQL ({moves} moves per size)");
        println!("| state bytes | p50 | p99 | max |");
        println!("|---|---|---|---|");
        for &size in sizes {
            let id = format!("server-{size}");
            server::start(&client, &id, text(size, size)).await?;
            let mut took = hdrhistogram::Histogram::<u64>::new(3)?;
            for m in 0..moves {
                // Where it is now: warm on the worker that ran its last turn.
                let now_on = loop {
                    let record = store.get_instance(&id).await?;
                    if let Some(w) = record.and_then(|r| r.affinity) {
                        let i = usize::from(w == "b");
                        if workers[i]
                            .worker()
                            .live_instances()
                            .iter()
                            .any(|l| l.instance_id == id)
                        {
                            break i;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                };
                let (from, to) = (now_on, 1 - now_on);
                let ids = ["a", "b"];
                let started = std::time::Instant::now();
                anyhow::ensure!(
                    store
                        .move_affinities(&[AffinityMove::new(&id, ids[from], ids[to])], None)
                        .await?[0],
                    "move lost"
                );
                client.signal(&id, "go", &(m as u64 + 1)).await?;
                // Serving on the target: its turn ran there and left the run warm.
                let target = workers[to].worker();
                let done = target.metrics().completed + 1;
                loop {
                    if target.metrics().completed >= done
                        && target.live_instances().iter().any(|l| l.instance_id == id)
                    {
                        break;
                    }
                    anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "move stuck");
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                took.record(started.elapsed().as_micros() as u64)?;
            }
            client.signal(&id, "go", &0u64).await?;
            let turns: u64 = client.result(&id).await?;
            anyhow::ensure!(turns == moves as u64, "{turns} turns for {moves} moves");
            let ms = |us: u64| us as f64 / 1000.0;
            println!(
                "| {size} | {:.1} ms | {:.1} ms | {:.1} ms |",
                ms(took.value_at_quantile(0.5)),
                ms(took.value_at_quantile(0.99)),
                ms(took.max())
            );
        }
        for w in workers {
            w.shutdown().await;
        }
        anyhow::Ok(())
    }
    .await;
    db.drop().await;
    result
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.iter().any(|a| a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let n: usize = value("--n").map_or(Ok(5000), |v| v.parse())?;
    if let Some(id) = value("--worker") {
        let headroom: u64 = value("--headroom").map_or(Ok(96), |v| v.parse())?;
        let url = value("--url").ok_or_else(|| anyhow::anyhow!("--url"))?;
        let runtime = tokio::runtime::Runtime::new()?;
        return runtime.block_on(cluster_worker(&id, &url, headroom << 20));
    }
    if let Some(m) = value("--cluster") {
        let headroom: u64 = value("--headroom").map_or(Ok(96), |v| v.parse())?;
        let rounds: u64 = value("--rounds").map_or(Ok(5), |v| v.parse())?;
        let runtime = tokio::runtime::Runtime::new()?;
        return runtime.block_on(cluster(m.parse()?, headroom, rounds));
    }
    if let Some(moves) = value("--crash-moves") {
        let runtime = tokio::runtime::Runtime::new()?;
        return runtime.block_on(crash_moves(moves.parse()?));
    }
    if let Some(moves) = value("--migrate") {
        let sizes: Vec<usize> = value("--sizes")
            .unwrap_or_else(|| "1024,65536,1048576".into())
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()?;
        let runtime = tokio::runtime::Runtime::new()?;
        return runtime.block_on(migrate(moves.parse()?, &sizes));
    }
    if let Some(spec) = value("--child") {
        // `keep,SIZE` or `none,SIZE`: one measurement, printed as one line.
        let (mode, size) = spec.split_once(',').unwrap_or(("keep", "0"));
        let size: usize = size.parse()?;
        let runtime = tokio::runtime::Runtime::new()?;
        let (grew, warm, estimated) = runtime.block_on(child(n, size, mode == "keep"))?;
        println!("{grew} {warm} {estimated}");
        return Ok(());
    }
    let sizes: Vec<usize> = value("--sizes")
        .unwrap_or_else(|| "0,1024,16384".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let exe = std::env::current_exe()?;
    let measure = |mode: &str, size: usize| -> anyhow::Result<(u64, usize, usize)> {
        let out = Command::new(&exe)
            .args(["--n", &n.to_string(), "--child", &format!("{mode},{size}")])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        let line = text.lines().last().unwrap_or_default();
        let parts: Vec<u64> = line
            .split_whitespace()
            .map(|p| p.parse())
            .collect::<Result<_, _>>()?;
        anyhow::ensure!(parts.len() == 3, "unexpected child output {text:?}");
        Ok((parts[0], parts[1] as usize, parts[2] as usize))
    };
    println!("warm runs' estimated footprint against the memory they hold ({n} runs per row)");
    println!(
        "| state bytes | RSS growth, kept | RSS growth, none kept | held by warm runs | estimated | estimate / held |"
    );
    println!("|---|---|---|---|---|---|");
    for size in sizes {
        let (kept, warm, estimated) = measure("keep", size)?;
        let (none, _, _) = measure("none", size)?;
        let held = kept.saturating_sub(none);
        anyhow::ensure!(warm == n, "{warm} of {n} runs were warm");
        println!(
            "| {size} | {:.1} MiB | {:.1} MiB | {:.0} B/run | {:.0} B/run | {:.2} |",
            kept as f64 / 1048576.0,
            none as f64 / 1048576.0,
            held as f64 / n as f64,
            estimated as f64 / n as f64,
            estimated as f64 / held.max(1) as f64
        );
    }
    Ok(())
}
