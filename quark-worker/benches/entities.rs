//! Entity and projection benchmark on PostgreSQL, against pgbench's one-row INSERT in the same run.
//!
//! - baseline: pgbench, one client and 32 clients, `INSERT` of one row per transaction, 5 s each;
//! - entity commands: p50/p99 of a deposit with 1 writer and with 32 concurrent writers (one key
//!   each, warm: the writers keep their entities in memory, as a worker does);
//! - reads: the current state of a warm entity (one read of the events after its version), and a
//!   cold load of a 1,000-event stream with a snapshot (newest snapshot + tail) and without one;
//! - time travel: the state at a random past version of that stream;
//! - projection catch-up: events applied per second, with checkpoints, from the start of a journal
//!   of N entity events (1,000 streams) into a PostgreSQL read model (set-based upserts, 5,000 events per
//!   transaction).
//!
//! - on Redis (`--redis`): the same commands, reads and time travel on a `RedisLog`, against
//!   redis-benchmark's `SET` with 1 and 32 clients in the same run, and a projection's catch-up
//!   through a consumer group into a Redis hash (`HINCRBY` per account and page).
//!
//! `cargo bench -p quark-worker --bench entities -- [--commands 2000] [--events 200000] [--page 5000] [--redis]`
//! PostgreSQL: `QUARK_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! pgbench from `QUARK_BENCH_PGBENCH` or the PATH. The bench creates and drops databases of its own.
//! Redis: `QUARK_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/`), keys under a prefix of its
//! own, deleted at the end.
#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quark_history::{Commit, Expected, HistoryEvent, Payload, PostgresStore, Store};
use quark_workflow::entity::{At, Command, Decision, Entities, Entity};
use quark_workflow::projection::{Batch, Projection, ProjectionError, Projector};
use serde::{Deserialize, Serialize};

struct Args {
    commands: u64,
    events: u64,
    page: u32,
    redis: bool,
}

fn args() -> Args {
    let mut a = Args {
        commands: 2_000,
        events: 200_000,
        page: 5_000,
        redis: false,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--commands" => a.commands = value.parse().expect("--commands N"),
            "--events" => a.events = value.parse().expect("--events N"),
            "--page" => a.page = value.parse().expect("--page N"),
            "--redis" => {
                a.redis = true;
                i += 1;
                continue;
            }
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    a
}

struct Account;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Balance {
    cents: i64,
    deposits: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum AccountEvent {
    Deposited { cents: i64 },
}

impl Entity for Account {
    const TYPE: &'static str = "Account";
    type State = Balance;
    type Event = AccountEvent;
    type Rejection = String;
    fn apply(state: &mut Balance, AccountEvent::Deposited { cents }: &AccountEvent) {
        state.cents += cents;
        state.deposits += 1;
    }
}

/// The same streams read without snapshots (another schema ignores them).
struct AccountNoSnapshot;

impl Entity for AccountNoSnapshot {
    const TYPE: &'static str = "Account";
    const SCHEMA: u32 = 2;
    const SNAPSHOT_EVERY: u64 = 0;
    type State = Balance;
    type Event = AccountEvent;
    type Rejection = String;
    fn apply(state: &mut Balance, event: &AccountEvent) {
        Account::apply(state, event)
    }
}

struct Deposit(i64);

impl Command<Account> for Deposit {
    const NAME: &'static str = "Deposit";
    type Reply = i64;
    fn handle(&self, state: &Balance) -> Result<Decision<AccountEvent, i64>, String> {
        Ok(Decision::emit([AccountEvent::Deposited { cents: self.0 }]).reply(state.cents + self.0))
    }
}

/// Balances per account, written set-based: a page's deltas summed per key, one upsert.
struct Balances;

impl Projection for Balances {
    const NAME: &'static str = "bench_balances";

    async fn apply(&self, batch: &mut Batch<'_>) -> Result<(), ProjectionError> {
        let mut deltas: HashMap<String, (i64, i64)> = HashMap::new();
        for e in batch.entity_events::<Account>()? {
            let AccountEvent::Deposited { cents } = e.event.event;
            let d = deltas.entry(e.key).or_default();
            d.0 += cents;
            d.1 += 1;
        }
        if deltas.is_empty() {
            return Ok(());
        }
        let (mut keys, mut cents, mut counts) = (Vec::new(), Vec::new(), Vec::new());
        for (k, (c, n)) in deltas {
            keys.push(k);
            cents.push(c);
            counts.push(n);
        }
        quark_history::sqlx::query(
            "INSERT INTO bench_balances (account, cents, deposits) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (account) DO UPDATE SET cents = bench_balances.cents + excluded.cents, \
             deposits = bench_balances.deposits + excluded.deposits",
        )
        .bind(keys)
        .bind(cents)
        .bind(counts)
        .execute(batch.tx().postgres()?)
        .await?;
        Ok(())
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

struct Row {
    what: String,
    figure: String,
    p50: Option<f64>,
    p99: Option<f64>,
}

fn timed(what: &str, h: &Histogram<u64>, n: u64, elapsed: Duration) -> Row {
    Row {
        what: what.to_string(),
        figure: format!("{:.0}/s", n as f64 / elapsed.as_secs_f64()),
        p50: Some(ms(h.value_at_quantile(0.5))),
        p99: Some(ms(h.value_at_quantile(0.99))),
    }
}

/// pgbench's one-row INSERT rate with `clients` clients, 5 s.
fn pgbench(url: &str, clients: u32) -> Row {
    let bin = std::env::var("QUARK_BENCH_PGBENCH").unwrap_or_else(|_| {
        ["/usr/lib/postgresql/15/bin/pgbench", "pgbench"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("pgbench")
            .to_string()
    });
    let dir = std::env::temp_dir().join(format!("quark-entities-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("insert.sql");
    std::fs::write(
        &script,
        "INSERT INTO bench_raw (payload) VALUES ('{\"Deposited\":{\"cents\":1}}');\n",
    )
    .unwrap();
    let out = std::process::Command::new(&bin)
        .args(["-n", "-T", "5", "-c", &clients.to_string(), "-j", "2", "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| {
            panic!(
                "pgbench said: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let _ = std::fs::remove_dir_all(&dir);
    Row {
        what: format!("pgbench one-row INSERT, {clients} client(s)"),
        figure: format!("{:.0}/s", tps.parse::<f64>().unwrap()),
        p50: None,
        p99: None,
    }
}

async fn commands(label: &str, make: &impl Fn() -> Entities, writers: u64, each: u64) -> Row {
    let entities = make();
    // Warm: every writer's entity loaded (and its stream opened) before the clock starts.
    for w in 0..writers {
        entities
            .entity::<Account>(format!("w{writers}-{w}"))
            .call(&Deposit(1))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let account = entities.entity::<Account>(format!("w{writers}-{w}"));
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            for _ in 0..each {
                let t = Instant::now();
                account.call(&Deposit(1)).await.unwrap();
                h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
            }
            h
        }));
    }
    let mut h = histogram();
    for t in tasks {
        h.add(t.await.unwrap()).unwrap();
    }
    timed(
        &format!("{label}: entity command (deposit), {writers} writer(s)"),
        &h,
        writers * each,
        started.elapsed(),
    )
}

async fn reads(label: &str, make: &impl Fn() -> Entities, n: u64) -> Vec<Row> {
    // A 1,000-event stream, snapshotted every 100 by its writer.
    let writer = make().entity::<Account>("long");
    for _ in 0..1_000 {
        writer.call(&Deposit(1)).await.unwrap();
    }
    let mut rows = Vec::new();
    let warm = make().entity::<Account>("long");
    warm.state().await.unwrap();
    let mut h = histogram();
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        warm.state().await.unwrap();
        h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
    }
    rows.push(timed(
        &format!("{label}: read, warm entity (state + events after it)"),
        &h,
        n,
        started.elapsed(),
    ));

    for snapshot in [true, false] {
        let mut h = histogram();
        let started = Instant::now();
        for _ in 0..n / 4 {
            let fresh = make();
            let t = Instant::now();
            let state = if snapshot {
                fresh.entity::<Account>("long").state().await.unwrap()
            } else {
                fresh
                    .entity::<AccountNoSnapshot>("long")
                    .state()
                    .await
                    .unwrap()
            };
            h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
            assert_eq!(state.deposits, 1_000);
        }
        let what = if snapshot {
            "read, cold load of 1,000 events, with snapshot"
        } else {
            "read, cold load of 1,000 events, no snapshot"
        };
        rows.push(timed(
            &format!("{label}: {what}"),
            &h,
            n / 4,
            started.elapsed(),
        ));
    }

    let mut h = histogram();
    let started = Instant::now();
    for i in 0..n / 4 {
        let version = (i * 7919) % 1_000 + 1;
        let t = Instant::now();
        let (state, at) = warm.state_at(At::Version(version)).await.unwrap();
        h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
        assert_eq!((state.deposits, at), (version, version));
    }
    rows.push(timed(
        &format!("{label}: time travel, state at a version of 1,000"),
        &h,
        n / 4,
        started.elapsed(),
    ));
    rows
}

async fn catch_up(store: &Arc<dyn Store>, url: &str, events: u64, page: u32) -> Row {
    const STREAMS: u64 = 1_000;
    const PER_COMMIT: u64 = 2_000;
    for s in 0..STREAMS {
        store
            .open_stream(&format!("Account/p{s}"), "Account")
            .await
            .unwrap();
    }
    let mut next = vec![1u64; STREAMS as usize];
    let event = HistoryEvent::EntityEvent {
        event_type: "Deposited".into(),
        data: Payload::json(&AccountEvent::Deposited { cents: 1 }).unwrap(),
        causation: None,
        correlation: None,
    };
    let mut written = 0;
    while written < events {
        let mut commit = Commit::new();
        // 20 streams per commit, 100 events each.
        for j in 0..PER_COMMIT / 100 {
            let s = ((written / 100) + j) % STREAMS;
            commit = commit.append(
                format!("Account/p{s}"),
                Expected::Seq(next[s as usize]),
                std::iter::repeat_n(event.clone(), 100),
            );
            next[s as usize] += 100;
        }
        store.commit(commit).await.unwrap();
        written += PER_COMMIT;
    }
    let projector = Projector::new(Arc::clone(store), Balances).page(page);
    let started = Instant::now();
    let applied = projector.catch_up(|_, _| {}).await.unwrap();
    let elapsed = started.elapsed();
    // Every event, once: the model holds the journal's sum.
    let total: i64 = quark_history::sqlx::query_scalar(
        "SELECT COALESCE(SUM(deposits), 0)::bigint FROM bench_balances WHERE account LIKE 'p%'",
    )
    .fetch_one(&quark_history::sqlx::PgPool::connect(url).await.unwrap())
    .await
    .unwrap();
    assert_eq!(total as u64, written);
    Row {
        what: format!("projection catch-up, {applied} events (pages of {page})"),
        figure: format!("{:.0} events/s", applied as f64 / elapsed.as_secs_f64()),
        p50: None,
        p99: None,
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let t = quark_history::testing::postgres()
        .await
        .expect("PostgreSQL for the benchmark");
    let url = t.database_url().unwrap();
    t.execute("CREATE TABLE bench_raw (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL)")
        .await;
    t.execute(
        "CREATE TABLE bench_balances (account TEXT PRIMARY KEY, cents BIGINT NOT NULL, \
         deposits BIGINT NOT NULL)",
    )
    .await;
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url).await.unwrap());
    let mut rows = vec![pgbench(&url, 1), pgbench(&url, 32)];
    eprintln!("entity commands...");
    let make = || Entities::new(Arc::clone(&store));
    rows.push(commands("PostgreSQL", &make, 1, a.commands).await);
    rows.push(commands("PostgreSQL", &make, 32, a.commands / 32).await);
    eprintln!("reads...");
    rows.extend(reads("PostgreSQL", &make, a.commands).await);
    eprintln!("projection catch-up...");
    rows.push(catch_up(&store, &url, a.events, a.page).await);
    drop(store);
    t.cleanup().await;
    if a.redis {
        rows.extend(redis_rows(&a).await);
    }

    println!("\n| workload | rate | p50 ms | p99 ms |\n| --- | --- | --- | --- |");
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.what,
            r.figure,
            cell(r.p50),
            cell(r.p99)
        );
    }
}

/// redis-benchmark's `SET` rate and latency with `clients` clients.
fn redis_benchmark(clients: u32) -> Row {
    let url = quark_history::testing::redis_url();
    let host_port = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let (host, port) = host_port.split_once(':').unwrap_or((&host_port, "6379"));
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "-t", "set", "-n", "100000", "-q"])
        .args(["-c", &clients.to_string()])
        .output()
        .expect("running redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    // `SET: 95238.10 requests per second, p50=0.279 msec`, after carriage-return progress.
    let line = text
        .split(['\r', '\n'])
        .rfind(|l| l.starts_with("SET:") && l.contains("requests per second"))
        .unwrap_or_else(|| panic!("redis-benchmark said: {text}"));
    let rate: f64 = line
        .trim_start_matches("SET:")
        .split_whitespace()
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("redis-benchmark said: {line}"));
    let p50 = line
        .split("p50=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok());
    Row {
        what: format!("redis-benchmark SET, {clients} client(s)"),
        figure: format!("{rate:.0}/s"),
        p50,
        p99: None,
    }
}

/// Balances per account in a Redis hash, one `HINCRBY` per account and page.
struct RedisBalances {
    key: String,
}

impl quark_workflow::projection::RedisProjection for RedisBalances {
    const NAME: &'static str = "bench_balances";

    fn apply(
        &self,
        page: &quark_workflow::projection::RedisPage<'_>,
        writes: &mut quark_workflow::projection::Writes,
    ) -> Result<(), ProjectionError> {
        let mut deltas: HashMap<String, i64> = HashMap::new();
        for e in page.entity_events::<Account>()? {
            let AccountEvent::Deposited { cents } = e.event.event;
            *deltas.entry(e.key).or_default() += cents;
        }
        for (account, cents) in deltas {
            writes.command([
                "HINCRBY".to_string(),
                self.key.clone(),
                account,
                cents.to_string(),
            ]);
        }
        Ok(())
    }
}

async fn redis_rows(a: &Args) -> Vec<Row> {
    use quark_history::EventLog;
    let (log, _clock) = quark_history::testing::redis()
        .await
        .expect("Redis for the benchmark");
    // The bench measures the wall clock, not the manual one of the tests.
    let log = quark_history::RedisLog::connect_with_prefix(
        &quark_history::testing::redis_url(),
        log.prefix(),
        quark_history::StoreConfig::default(),
    )
    .await
    .unwrap();
    let mut rows = vec![redis_benchmark(1), redis_benchmark(32)];
    let shared: Arc<dyn EventLog> = Arc::new(log.clone());
    let make = || Entities::on_log(Arc::clone(&shared), quark_workflow::WarmLimits::default());
    eprintln!("Redis: entity commands...");
    rows.push(commands("Redis", &make, 1, a.commands).await);
    rows.push(commands("Redis", &make, 32, a.commands / 32).await);
    eprintln!("Redis: reads...");
    rows.extend(reads("Redis", &make, a.commands).await);

    eprintln!("Redis: projection catch-up...");
    const STREAMS: u64 = 1_000;
    let event = HistoryEvent::EntityEvent {
        event_type: "Deposited".into(),
        data: Payload::json(&AccountEvent::Deposited { cents: 1 }).unwrap(),
        causation: None,
        correlation: None,
    };
    let mut next = vec![1u64; STREAMS as usize];
    let mut written = 0;
    while written < a.events {
        let mut commit = Commit::new();
        for j in 0..20 {
            let s = ((written / 100) + j) % STREAMS;
            commit = commit.append(
                format!("Account/p{s}"),
                Expected::Seq(next[s as usize]),
                std::iter::repeat_n(event.clone(), 100),
            );
            next[s as usize] += 100;
        }
        for r in log.append_commits(vec![commit]).await {
            r.unwrap();
        }
        written += 2_000;
    }
    let key = log.key("bench_balances");
    let projector = quark_workflow::projection::RedisProjector::new(
        log.clone(),
        RedisBalances { key: key.clone() },
    )
    .page(a.page);
    let started = Instant::now();
    let applied = projector.catch_up(|_, _| {}).await.unwrap();
    let elapsed = started.elapsed();
    // Every event, once: the model holds the log's sum.
    let mut conn = redis::Client::open(quark_history::testing::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let model: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let total: i64 = model
        .iter()
        .filter(|(k, _)| k.starts_with('p'))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total as u64, written);
    rows.push(Row {
        what: format!(
            "Redis: projection catch-up, {applied} events (pages of {})",
            a.page
        ),
        figure: format!("{:.0} events/s", applied as f64 / elapsed.as_secs_f64()),
        p50: None,
        p99: None,
    });
    log.destroy().await.unwrap();
    rows
}
