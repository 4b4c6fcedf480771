//! Locality benchmark: communities of orchestrations that pass a token around a ring by signals
//! (`ctx.send`), on four worker processes labelled as two zones of two racks each, in three modes
//! one after the other, each on a database of its own: placement off (an instance stays where its
//! first turn was claimed), a hash of the instance id (applied before the warm-up, through the
//! store's fenced moves), and the placement coordinator.
//!
//! Each hop's sender and receiver record, as a side effect, the worker process that ran their
//! turn and the time: a hop is cross-worker when the two differ, and its latency runs from the
//! sender's turn to the receiver's. The workers count the hops delivered in memory (local
//! delivery: the receiver continued in the sender's commit), the turns claimed from the queue, and
//! the runs rebuilt from history (cache misses, by cause: not warm, busy, behind, stale).
//!
//! Phases, the same in every mode: every member is started and parks, placed where its first turn
//! was claimed (first come); hash moves them now; a first `go` starts a warm-up of `--warm-laps`
//! laps, in which the coordinator (on) learns who talks to whom and moves them; a pause until two
//! repartition periods in a row move nothing; a second `go` starts the `--laps` measured laps.
//! Moves the coordinator makes during the measured laps count in them (their cache misses too).
//!
//! `cargo bench -p quark-worker --bench locality -- [--communities 32] [--size 8] [--warm-laps 30] [--laps 20] [--modes off,hash,on]`
//! PostgreSQL: `QUARK_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quark_history::{AffinityMove, PostgresStore, Store, StoreConfig};
use quark_worker::Worker;
use quark_worker::placement::coordinator::PlacementConfig;
use quark_workflow::{
    Client, OrchestrationContext, OrchestrationError, Registry, Signal, StartOptions, orchestration,
};
use serde::{Deserialize, Serialize};

mod scratch;
use scratch::Scratch;

/// The worker processes: id, zone, rack. One region.
const WORKERS: [(&str, &str, &str); 4] = [
    ("w1", "z1", "r1"),
    ("w2", "z1", "r2"),
    ("w3", "z2", "r3"),
    ("w4", "z2", "r4"),
];

/// How often the coordinator repartitions in this bench (30 s by default).
const EVERY: Duration = Duration::from_secs(2);

/// The token: its hop number, and the worker and time of the turn that sent it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Token {
    hop: u32,
    worker: String,
    at_us: u64,
}

/// A member's place in its community's ring.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ring {
    community: u32,
    index: u32,
    size: u32,
    warm_laps: u32,
    laps: u32,
}

/// What a member saw of the measured laps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Seen {
    hops: u32,
    cross: u32,
    latencies_us: Vec<u64>,
}

const TOKEN: Signal<Token> = Signal::new("token");
const GO: Signal<()> = Signal::new("go");

/// This process's worker id, read by the orchestrations through a side effect only.
static WORKER: OnceLock<String> = OnceLock::new();

fn here() -> (String, u64) {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (
        WORKER.get().cloned().unwrap_or_default(),
        at.as_micros() as u64,
    )
}

fn member_id(community: u32, index: u32) -> String {
    format!("c{community}-m{index}")
}

/// One member: receives the token `warm_laps + laps` times and passes it on to the next member;
/// member 0 serves on a first `go`, and waits for a second between the warm-up and the measured
/// laps.
#[orchestration]
async fn member(ctx: OrchestrationContext, ring: Ring) -> Result<Seen, OrchestrationError> {
    let warm_total = ring.size * ring.warm_laps;
    let total = ring.size * (ring.warm_laps + ring.laps);
    let next = member_id(ring.community, (ring.index + 1) % ring.size);
    let mut seen = Seen::default();
    if ring.index == 0 {
        ctx.wait_for(GO).await?;
        let (worker, at_us) = ctx.side_effect(here)?;
        let first = Token {
            hop: 1,
            worker,
            at_us,
        };
        ctx.send(&next, TOKEN, &first)?;
    }
    for _ in 0..ring.warm_laps + ring.laps {
        let token = ctx.wait_for(TOKEN).await?;
        let (mut worker, mut at_us) = ctx.side_effect(here)?;
        if token.hop > warm_total {
            seen.hops += 1;
            seen.cross += u32::from(token.worker != worker);
            seen.latencies_us.push(at_us.saturating_sub(token.at_us));
        }
        if token.hop == total {
            break;
        }
        if token.hop == warm_total {
            ctx.wait_for(GO).await?;
            (worker, at_us) = ctx.side_effect(here)?;
        }
        let token = Token {
            hop: token.hop + 1,
            worker,
            at_us,
        };
        ctx.send(&next, TOKEN, &token)?;
    }
    Ok(seen)
}

const USAGE: &str = "cargo bench -p quark-worker --bench locality -- [options]
  --communities C  rings of members (default 32)
  --size S         members per ring (default 8)
  --warm-laps W    laps before the measured ones, at least 1 (default 30: the coordinator
                   moves an instance for sustained traffic, not for a few messages)
  --laps L         measured laps (default 20)
  --modes M,..     off (first come, sticky), hash (moved by a hash of the id before the
                   warm-up), on (the coordinator), in the order given (default off,hash,on)";

fn value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// A worker process: serves until its standard input closes, printing its counters when asked
/// (`stats` on a line of its own).
async fn worker_process(
    id: &str,
    url: &str,
    zone: &str,
    rack: &str,
    on: bool,
) -> anyhow::Result<()> {
    WORKER.set(id.to_string()).ok();
    // `RUST_LOG=quark_worker::placement=info` shows the coordinator's rounds, on standard error
    // (standard output is the driver's).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let store: Arc<dyn Store> =
        Arc::new(PostgresStore::connect_with(url, StoreConfig::default()).await?);
    let lock_dir = std::env::temp_dir().join("quark-locality-bench");
    let builder = Worker::builder()
        .store(store)
        .id(id)
        .lock_dir(lock_dir)
        .poll_interval(Duration::from_millis(20))
        .heartbeat(Duration::from_millis(250))
        .label("region", "eu")
        .label("zone", zone)
        .label("rack", rack)
        .workflows(Registry::new().register(member));
    let builder = if on {
        builder.placement(PlacementConfig {
            every: EVERY,
            ..PlacementConfig::default()
        })
    } else {
        builder.without_placement()
    };
    let running = builder.build()?.start().await?;
    println!("ready");
    std::io::stdout().flush()?;
    let stats = || {
        let m = running.worker().metrics();
        let c = m.replay_causes;
        format!(
            "stats {} {} {} {} {} {} {} {}",
            m.claimed,
            m.local_deliveries,
            m.replays,
            m.placement_moves,
            c.not_warm + c.read_ahead,
            c.busy,
            c.behind,
            c.stale
        )
    };
    // Standard input, line by line, from a thread of its own; closed when the driver is done.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        if line == "stats" {
            println!("{}", stats());
            std::io::stdout().flush()?;
        }
    }
    running.shutdown().await;
    Ok(())
}

/// A worker process of this bench, as the driver sees it.
struct Process {
    id: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// One worker's counters: claims, local deliveries, replays, placement moves.
type Counters = [u64; 8];

impl Process {
    fn spawn(id: &str, zone: &str, rack: &str, url: &str, on: bool) -> anyhow::Result<Process> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["--worker", id, "--url", url, "--zone", zone, "--rack", rack])
            .args(["--placement", if on { "on" } else { "off" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "ready", "worker {id} said {line:?}");
        Ok(Process {
            id: id.to_string(),
            child,
            stdin,
            stdout,
        })
    }

    fn counters(&mut self) -> anyhow::Result<Counters> {
        let stdin = self.stdin.as_mut().expect("open until the end");
        writeln!(stdin, "stats")?;
        stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let values: Vec<u64> = line
            .strip_prefix("stats ")
            .ok_or_else(|| anyhow::anyhow!("worker {} said {line:?}", self.id))?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        values
            .try_into()
            .map_err(|_| anyhow::anyhow!("worker {} said {line:?}", self.id))
    }

    fn stop(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Where the members sit during the measured laps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Where their first turn was claimed (first come, then sticky), no coordinator.
    Off,
    /// Moved, before the warm-up, to the worker a hash of their id names; no coordinator.
    Hash,
    /// Placed by the coordinator.
    On,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Hash => "hash",
            Mode::On => "on",
        }
    }
}

/// A stable hash of an instance id: FNV-1a, then mixed (FNV's low bits follow the last byte, so
/// ids that differ in their last character would never share a worker).
fn fnv(id: &str) -> u64 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Moves every member to the worker a hash of its id names, through the store's fenced moves.
async fn place_by_hash(store: &Arc<dyn Store>, communities: u32, size: u32) -> anyhow::Result<u64> {
    let ids: Vec<String> = (0..communities)
        .flat_map(|c| (0..size).map(move |i| member_id(c, i)))
        .collect();
    let moves: Vec<AffinityMove> = store
        .affinities(&ids)
        .await?
        .into_iter()
        .filter_map(|p| {
            let to = WORKERS[(fnv(&p.instance) % WORKERS.len() as u64) as usize].0;
            (p.worker != to).then(|| AffinityMove::new(p.instance, p.worker, to))
        })
        .collect();
    let applied = store.move_affinities(&moves, None).await?;
    Ok(applied.iter().filter(|a| **a).count() as u64)
}

/// The figures of one mode.
struct Figures {
    mode: Mode,
    hops: u64,
    cross: u64,
    local: u64,
    claims: u64,
    replays: u64,
    /// Cache misses by cause: not warm, busy, behind, stale.
    misses: [u64; 4],
    moves: u64,
    moved_while_measured: u64,
    together: f64,
    latency: Histogram<u64>,
    took: Duration,
}

/// Waits until no task is pending or leased: every ring waits for `go` (or has ended).
async fn drained(store: &Arc<dyn Store>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let q = store.queue_stats("default").await?;
        if q.pending + q.leased == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The share of ring edges (member to next member) whose ends are on one worker.
async fn together(store: &Arc<dyn Store>, communities: u32, size: u32) -> anyhow::Result<f64> {
    let ids: Vec<String> = (0..communities)
        .flat_map(|c| (0..size).map(move |i| member_id(c, i)))
        .collect();
    let placed: BTreeMap<String, String> = store
        .affinities(&ids)
        .await?
        .into_iter()
        .map(|p| (p.instance, p.worker))
        .collect();
    let mut same = 0;
    for c in 0..communities {
        for i in 0..size {
            let a = placed.get(&member_id(c, i));
            let b = placed.get(&member_id(c, (i + 1) % size));
            same += usize::from(a.is_some() && a == b);
        }
    }
    Ok(same as f64 / (communities * size) as f64)
}

async fn run_mode(
    mode: Mode,
    communities: u32,
    size: u32,
    warm_laps: u32,
    laps: u32,
) -> anyhow::Result<Figures> {
    let db = Scratch::create("locality").await?;
    let url = db.url.clone();
    let store: Arc<dyn Store> =
        Arc::new(PostgresStore::connect_with(&url, StoreConfig::default()).await?);
    store.migrate().await?;
    let mut processes = Vec::new();
    let result = async {
        for (id, zone, rack) in WORKERS {
            processes.push(Process::spawn(id, zone, rack, &url, mode == Mode::On)?);
        }
        let client = Client::new(Arc::clone(&store));
        for index in 0..size {
            let starts = (0..communities).map(|community| {
                let ring = Ring {
                    community,
                    index,
                    size,
                    warm_laps,
                    laps,
                };
                (member_id(community, index), ring)
            });
            client
                .start_many::<member>(starts, StartOptions::default())
                .await?;
        }
        // Every member parked on its first turn; the hash places them before any traffic.
        drained(&store).await?;
        let hashed = match mode {
            Mode::Hash => place_by_hash(&store, communities, size).await?,
            Mode::Off | Mode::On => 0,
        };
        for community in 0..communities {
            client.send(&member_id(community, 0), GO, &()).await?;
        }
        drained(&store).await?;
        // The coordinator repartitions every `EVERY`: wait until two periods in a row move
        // nothing (at most 15 periods), the same way in both modes.
        let moves = |ps: &mut Vec<Process>| -> anyhow::Result<u64> {
            let mut sum = 0;
            for p in ps.iter_mut() {
                sum += p.counters()?[3];
            }
            Ok(sum)
        };
        let (mut last, mut quiet) = (moves(&mut processes)?, 0);
        for _ in 0..15 {
            tokio::time::sleep(EVERY).await;
            let now = moves(&mut processes)?;
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
            if quiet == 2 {
                break;
            }
        }
        let together = together(&store, communities, size).await?;
        let before: Vec<Counters> = processes
            .iter_mut()
            .map(Process::counters)
            .collect::<anyhow::Result<_>>()?;
        let started = Instant::now();
        for community in 0..communities {
            client.send(&member_id(community, 0), GO, &()).await?;
        }
        let mut latency = Histogram::<u64>::new(3)?;
        let (mut hops, mut cross) = (0u64, 0u64);
        for community in 0..communities {
            for index in 0..size {
                let id = member_id(community, index);
                // A lost token would stall its ring for ever: fail instead.
                let seen: Seen = tokio::time::timeout(Duration::from_secs(300), client.result(&id))
                    .await
                    .map_err(|_| anyhow::anyhow!("{id} did not finish in 5 minutes"))??;
                hops += u64::from(seen.hops);
                cross += u64::from(seen.cross);
                for l in seen.latencies_us {
                    latency.record(l.max(1))?;
                }
            }
        }
        let took = started.elapsed();
        let expected = u64::from(communities * size * laps);
        anyhow::ensure!(hops == expected, "{hops} hops measured, {expected} sent");
        let after: Vec<Counters> = processes
            .iter_mut()
            .map(Process::counters)
            .collect::<anyhow::Result<_>>()?;
        let delta = |k: usize| -> u64 {
            before
                .iter()
                .zip(&after)
                .map(|(b, a)| a[k].saturating_sub(b[k]))
                .sum()
        };
        let moves: u64 = hashed + after.iter().map(|a| a[3]).sum::<u64>();
        let moved_while_measured = delta(3);
        anyhow::Ok(Figures {
            mode,
            hops,
            cross,
            claims: delta(0),
            local: delta(1),
            replays: delta(2),
            misses: [delta(4), delta(5), delta(6), delta(7)],
            moves,
            moved_while_measured,
            together,
            latency,
            took,
        })
    }
    .await;
    for p in processes {
        p.stop();
    }
    db.drop().await;
    result
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(id) = value(&args, "--worker") {
        let get = |name: &str| value(&args, name).ok_or_else(|| anyhow::anyhow!("{name}"));
        let on = get("--placement")? == "on";
        return runtime.block_on(worker_process(
            &id,
            &get("--url")?,
            &get("--zone")?,
            &get("--rack")?,
            on,
        ));
    }
    let number = |name: &str, default: u32| -> anyhow::Result<u32> {
        Ok(value(&args, name).map_or(Ok(default), |v| v.parse())?)
    };
    let communities = number("--communities", 32)?;
    let size = number("--size", 8)?;
    let warm_laps = number("--warm-laps", 30)?;
    let laps = number("--laps", 20)?;
    anyhow::ensure!(size >= 2, "--size must be at least 2");
    anyhow::ensure!(warm_laps >= 1, "--warm-laps must be at least 1");
    let modes = value(&args, "--modes").unwrap_or_else(|| "off,hash,on".into());
    let mut rows = Vec::new();
    for mode in modes.split(',') {
        let mode = match mode.trim() {
            "off" => Mode::Off,
            "hash" => Mode::Hash,
            "on" => Mode::On,
            other => anyhow::bail!("unknown mode `{other}`: off, hash or on"),
        };
        rows.push(runtime.block_on(run_mode(mode, communities, size, warm_laps, laps))?);
    }
    println!(
        "{communities} rings of {size} members on 4 worker processes (2 zones x 2 racks); \
         {warm_laps} laps of warm-up, {laps} measured laps; repartition every {EVERY:?}"
    );
    println!(
        "| placement | ring edges on one worker | moves (while measured) | hops | cross-worker | in memory | queue claims | cache misses (not warm/busy/behind/stale) | p50 hop | p99 hop | hops/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let ms = |us: u64| us as f64 / 1000.0;
    for f in &rows {
        println!(
            "| {} | {:.0} % | {} ({}) | {} | {} ({:.1} %) | {} | {} | {} ({}) | {:.1} ms | {:.1} ms | {:.0} |",
            f.mode.name(),
            f.together * 100.0,
            f.moves,
            f.moved_while_measured,
            f.hops,
            f.cross,
            f.cross as f64 * 100.0 / f.hops.max(1) as f64,
            f.local,
            f.claims,
            f.replays,
            f.misses.map(|m| m.to_string()).join("/"),
            ms(f.latency.value_at_quantile(0.5)),
            ms(f.latency.value_at_quantile(0.99)),
            f.hops as f64 / f.took.as_secs_f64()
        );
    }
    if let Some(on) = rows.iter().find(|f| f.mode == Mode::On) {
        for base in rows.iter().filter(|f| f.mode != Mode::On) {
            println!(
                "placement on: {:.0} % fewer cross-worker deliveries than {}",
                (1.0 - on.cross as f64 / base.cross.max(1) as f64) * 100.0,
                base.mode.name()
            );
        }
    }
    Ok(())
}
