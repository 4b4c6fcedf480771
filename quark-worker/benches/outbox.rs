//! Outbox relay benchmark: messages relayed per second to NATS JetStream and to a local HTTP
//! webhook, and commit-to-delivery latency, on PostgreSQL (and SQLite), by one in-process worker
//! whose only work is the relay.
//!
//! For each destination, on a fresh store:
//! - light load: messages written one at a time (`store.send` of one message), each waited for
//!   before the next, the relay idle in between: commit-to-delivery p50/p99 (wake-up speed);
//! - load: N messages over K ordering keys written in commits of 1,000 while the relay runs:
//!   messages/s from the first commit to the last delivery, and commit-to-delivery p50/p99.
//!
//! "Commit" is the moment `store.send` returns; "delivery" is the moment the destination sees the
//! message: the in-bench webhook (a tokio server answering 200, keeping connections alive) has read
//! the whole request, or a core NATS subscription on the subject receives it. The relay itself waits for the
//! JetStream ack before it marks a message sent. Every message must arrive exactly once (counted
//! by idempotency key) and each key in order, or the bench panics.
//!
//! `cargo bench -p quark-worker --bench outbox -- [--messages 20000] [--keys 100] [--light 200] [--backend postgres|sqlite|both] [--dest nats|http|both] [--relay-batch 64] [--relay-window 64] [--drain 20000]`
//! PostgreSQL: `QUARK_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! NATS: `QUARK_TEST_NATS_URL` (default `127.0.0.1:4222`). The bench creates and drops a database
//! and a JetStream stream of its own.
#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use quark_history::{Destination, OutboxMessage, PostgresStore, SqliteStore, Store};
use quark_worker::{OutboxRelay, Worker};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const USAGE: &str = "cargo bench -p quark-worker --bench outbox -- [options]
  --messages N     messages written under load (default 20000)
  --keys K         ordering keys they are spread over (default 100)
  --light N        messages written one at a time, at light load (default 200)
  --backend B      postgres | sqlite | both (default postgres)
  --dest D         nats | http | both (default both)
  --relay-batch N  the most messages (keys) one relay claim takes (default 64, the library's)
  --relay-window N the most messages of one key delivered and settled together (default 64, the library's)
  --drain N        messages (over the same keys) written before the relay starts, then drained
                   with nothing else running: the relay's own rate (default 20000; 0 skips it)";

/// Messages per `store.send` under load.
const WRITE_BATCH: u64 = 1_000;

struct Args {
    messages: u64,
    keys: u64,
    light: u64,
    backends: Vec<&'static str>,
    dests: Vec<&'static str>,
    relay_batch: u32,
    relay_window: u32,
    drain: u64,
}

fn args() -> Args {
    let mut a = Args {
        messages: 20_000,
        keys: 100,
        light: 200,
        backends: vec!["postgres"],
        dests: vec!["nats", "http"],
        relay_batch: 64,
        relay_window: 64,
        drain: 20_000,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--messages" => a.messages = value.parse().expect("--messages N"),
            "--keys" => a.keys = value.parse().expect("--keys K"),
            "--light" => a.light = value.parse().expect("--light N"),
            "--relay-batch" => a.relay_batch = value.parse().expect("--relay-batch N"),
            "--relay-window" => a.relay_window = value.parse().expect("--relay-window N"),
            "--drain" => a.drain = value.parse().expect("--drain N"),
            "--backend" => {
                a.backends = match value.as_str() {
                    "postgres" => vec!["postgres"],
                    "sqlite" => vec!["sqlite"],
                    "both" => vec!["postgres", "sqlite"],
                    other => panic!("--backend postgres|sqlite|both, not {other:?}"),
                }
            }
            "--dest" => {
                a.dests = match value.as_str() {
                    "nats" => vec!["nats"],
                    "http" => vec!["http"],
                    "both" => vec!["nats", "http"],
                    other => panic!("--dest nats|http|both, not {other:?}"),
                }
            }
            _ => {
                // `cargo bench` passes `--bench`; anything unknown is ignored.
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    assert!(a.keys > 0 && a.messages > 0, "--messages and --keys >= 1");
    a
}

/// What a message carries: its key, its place in the key, and the commit it was written in.
#[derive(serde::Serialize, serde::Deserialize)]
struct Body {
    k: String,
    n: u64,
    b: usize,
}

/// One message as the destination saw it.
struct Seen {
    idempotency_key: String,
    body: Body,
    at: Instant,
}

type Sink = Arc<Mutex<Vec<Seen>>>;

fn record(sink: &Sink, idempotency_key: String, payload: &[u8]) {
    let at = Instant::now();
    let body: Body = serde_json::from_slice(payload).expect("a bench message");
    sink.lock().unwrap().push(Seen {
        idempotency_key,
        body,
        at,
    });
}

// -- the webhook ----------------------------------------------------------------------------------

/// An HTTP server on 127.0.0.1 that records each request once it is read and answers 200, on
/// connections kept alive for the next request.
async fn webhook(sink: Sink) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = HashMap::new();
                    loop {
                        line.clear();
                        conn.read_line(&mut line).await.unwrap();
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        let (k, v) = l.split_once(": ").expect("a header line");
                        headers.insert(k.to_ascii_lowercase(), v.to_string());
                    }
                    let len: usize = headers["content-length"].parse().unwrap();
                    let mut body = vec![0; len];
                    conn.read_exact(&mut body).await.unwrap();
                    record(&sink, headers["idempotency-key"].clone(), &body);
                    if conn
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, server)
}

// -- NATS -----------------------------------------------------------------------------------------

fn nats_url() -> String {
    std::env::var("QUARK_TEST_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into())
}

/// A core NATS subscription on `subject`; returns once the server has it.
async fn subscribe(subject: &str, sink: Sink) -> tokio::task::JoinHandle<()> {
    let client = async_nats::connect(nats_url())
        .await
        .expect("NATS for the benchmark");
    let mut messages = client.subscribe(subject.to_string()).await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        let _client = client;
        while let Some(m) = messages.next().await {
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .expect("the relay sets Nats-Msg-Id")
                .to_string();
            record(&sink, id, &m.payload);
        }
    })
}

/// The bench's JetStream stream, deleted however the bench ends.
struct Stream {
    name: String,
}

impl Stream {
    async fn create(tag: &str) -> Stream {
        let client = async_nats::connect(nats_url())
            .await
            .expect("NATS for the benchmark");
        let name = format!("QUARK_BENCH_{tag}");
        async_nats::jetstream::new(client)
            .create_stream(async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("quarkbench.{tag}.>")],
                storage: async_nats::jetstream::stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .expect("create the bench stream");
        Stream { name }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own: Drop cannot await, and this may run while the bench panics.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let deleted = async_nats::jetstream::new(client)
                        .delete_stream(&name)
                        .await;
                    eprintln!(
                        "[nats] stream {name} deleted: {:?}",
                        deleted.map(|s| s.success)
                    );
                }
            });
        })
        .join();
    }
}

// -- the measurement ------------------------------------------------------------------------------

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

struct Row {
    backend: &'static str,
    dest: &'static str,
    workload: String,
    rate: String,
    p50: f64,
    p99: f64,
}

/// Waits until the sink holds `n` messages (panics after `limit`), then a little longer, so that a
/// duplicate delivered late is counted too.
async fn wait_for(sink: &Sink, n: usize, limit: Duration, settle: Duration) {
    let deadline = Instant::now() + limit;
    while sink.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages delivered after {limit:?}",
            sink.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    tokio::time::sleep(settle).await;
}

/// Every message once (by idempotency key), each key in order from 0; panics otherwise.
fn verify(seen: &[Seen], expected: usize) {
    let mut per_id: HashMap<&str, u32> = HashMap::new();
    for s in seen {
        *per_id.entry(&s.idempotency_key).or_default() += 1;
    }
    let duplicated = per_id.values().filter(|n| **n > 1).count();
    assert_eq!(
        duplicated, 0,
        "{duplicated} messages delivered more than once"
    );
    assert_eq!(seen.len(), expected, "every message delivered");
    let mut next: HashMap<&str, u64> = HashMap::new();
    for s in seen {
        let n = next.entry(&s.body.k).or_default();
        assert_eq!(
            s.body.n, *n,
            "key {} out of order: got {} where {} was due",
            s.body.k, s.body.n, *n
        );
        *n += 1;
    }
}

async fn bench(
    backend: &'static str,
    dest: &'static str,
    store: Arc<dyn Store>,
    a: &Args,
    rows: &mut Vec<Row>,
) {
    let sink: Sink = Arc::default();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut _stream = None;
    let (destination, listener) = match dest {
        "http" => {
            let (addr, server) = webhook(Arc::clone(&sink)).await;
            (Destination::http(format!("http://{addr}/hook")), server)
        }
        _ => {
            _stream = Some(Stream::create(&tag).await);
            let subject = format!("quarkbench.{tag}.out");
            let sub = subscribe(&subject, Arc::clone(&sink)).await;
            (Destination::nats(subject), sub)
        }
    };
    let relay = OutboxRelay::new()
        .nats(nats_url())
        .batch(a.relay_batch)
        .window(a.relay_window);
    let message = |k: String, n: u64, b: usize, id: String| {
        OutboxMessage::json(destination.clone(), &Body { k: k.clone(), n, b })
            .unwrap()
            .ordering_key(k)
            .idempotency_key(id)
    };

    // Drain: a backlog written before the relay starts, then relayed with nothing else running.
    if a.drain > 0 {
        eprintln!(
            "[{backend}/{dest}] {} messages over {} keys written, then drained",
            a.drain, a.keys
        );
        let mut i = 0;
        while i < a.drain {
            let end = (i + WRITE_BATCH).min(a.drain);
            let batch = (i..end)
                .map(|i| {
                    message(
                        format!("d{}", i % a.keys),
                        i / a.keys,
                        0,
                        format!("{tag}-drain-{i}"),
                    )
                })
                .collect();
            store.send(batch).await.unwrap();
            i = end;
        }
    }
    // From before the worker starts: its start (a claim right away) is part of the drain.
    let started = Instant::now();
    let running = Worker::builder()
        .store(Arc::clone(&store))
        .outbox(relay)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    if a.drain > 0 {
        wait_for(
            &sink,
            a.drain as usize,
            Duration::from_secs(600),
            Duration::from_millis(500),
        )
        .await;
        let seen = std::mem::take(&mut *sink.lock().unwrap());
        verify(&seen, a.drain as usize);
        let last = seen.iter().map(|s| s.at).max().unwrap();
        let secs = last.duration_since(started).as_secs_f64();
        rows.push(Row {
            backend,
            dest,
            workload: format!(
                "{} messages over {} keys written first, drained by a relay started after (claims of {}, windows of {})",
                a.drain, a.keys, a.relay_batch, a.relay_window
            ),
            rate: format!("{:.0} msg/s", a.drain as f64 / secs),
            p50: f64::NAN,
            p99: f64::NAN,
        });
    }

    // Light load: one message at a time, each waited for, the relay idle in between.
    eprintln!("[{backend}/{dest}] {} messages one at a time", a.light);
    let mut commits = Vec::new();
    for i in 0..a.light {
        store
            .send(vec![message(
                "light".into(),
                i,
                i as usize,
                format!("{tag}-light-{i}"),
            )])
            .await
            .unwrap();
        commits.push(Instant::now());
        wait_for(
            &sink,
            i as usize + 1,
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .await;
        // Let the relay go idle again (back to waiting for a wake-up).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = std::mem::take(&mut *sink.lock().unwrap());
    verify(&seen, a.light as usize);
    let mut light = histogram();
    for s in &seen {
        let waited = s.at.saturating_duration_since(commits[s.body.b]);
        light.record(waited.as_micros().max(1) as u64).unwrap();
    }
    rows.push(Row {
        backend,
        dest,
        workload: format!("{} messages one at a time, relay idle", a.light),
        rate: "-".into(),
        p50: ms(light.value_at_quantile(0.5)),
        p99: ms(light.value_at_quantile(0.99)),
    });

    // Load: N messages over K keys in commits of 1,000, written while the relay runs.
    eprintln!(
        "[{backend}/{dest}] {} messages over {} keys, in commits of {WRITE_BATCH}",
        a.messages, a.keys
    );
    let before = running.worker().metrics();
    let mut commits = Vec::new();
    let mut i = 0;
    while i < a.messages {
        let end = (i + WRITE_BATCH).min(a.messages);
        let b = commits.len();
        let batch = (i..end)
            .map(|i| {
                message(
                    format!("k{}", i % a.keys),
                    i / a.keys,
                    b,
                    format!("{tag}-{i}"),
                )
            })
            .collect();
        store.send(batch).await.unwrap();
        commits.push(Instant::now());
        i = end;
    }
    let written = commits.last().unwrap().duration_since(commits[0]);
    wait_for(
        &sink,
        a.messages as usize,
        Duration::from_secs(600),
        Duration::from_millis(500),
    )
    .await;
    let seen = std::mem::take(&mut *sink.lock().unwrap());
    verify(&seen, a.messages as usize);
    let last = seen.iter().map(|s| s.at).max().unwrap();
    // QUARK_BENCH_TIMELINE=1: deliveries per 100 ms since the first commit, to see a stalled key
    // as a late lump after a gap.
    if std::env::var("QUARK_BENCH_TIMELINE").is_ok() {
        let mut buckets = std::collections::BTreeMap::new();
        for s in &seen {
            *buckets
                .entry(s.at.duration_since(commits[0]).as_millis() / 100)
                .or_insert(0u32) += 1;
        }
        eprintln!("timeline (100 ms buckets): {buckets:?}");
    }
    let secs = last.duration_since(commits[0]).as_secs_f64();
    let mut lat = histogram();
    for s in &seen {
        let waited = s.at.saturating_duration_since(commits[s.body.b]);
        lat.record(waited.as_micros().max(1) as u64).unwrap();
    }
    let after = running.worker().metrics();
    eprintln!(
        "[{backend}/{dest}] relay counters during the load: sent {}, retried {}, dead {}; written in {:.2} s",
        after.outbox_sent - before.outbox_sent,
        after.outbox_retried - before.outbox_retried,
        after.outbox_dead - before.outbox_dead,
        written.as_secs_f64(),
    );
    assert_eq!(after.outbox_dead, 0, "no message died");
    rows.push(Row {
        backend,
        dest,
        workload: format!(
            "{} messages over {} keys, commits of {WRITE_BATCH}, relay claims of {}, windows of {}",
            a.messages, a.keys, a.relay_batch, a.relay_window
        ),
        rate: format!(
            "{:.0} msg/s (writes alone: {:.0} msg/s)",
            a.messages as f64 / secs,
            (a.messages - a.messages.min(WRITE_BATCH)) as f64 / written.as_secs_f64().max(1e-9)
        ),
        p50: ms(lat.value_at_quantile(0.5)),
        p99: ms(lat.value_at_quantile(0.99)),
    });
    running.shutdown().await;
    listener.abort();
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let a = args();
    let mut rows = Vec::new();
    for backend in a.backends.clone() {
        for dest in a.dests.clone() {
            // A fresh store for each destination: the second run does not claim past the first's
            // sent messages.
            match backend {
                "postgres" => {
                    let t = quark_history::testing::postgres()
                        .await
                        .expect("PostgreSQL for the benchmark");
                    let url = t.database_url().unwrap();
                    let store: Arc<dyn Store> =
                        Arc::new(PostgresStore::connect(&url).await.unwrap());
                    bench("postgres", dest, store, &a, &mut rows).await;
                    t.cleanup().await;
                }
                _ => {
                    let dir = std::env::temp_dir()
                        .join(format!("quark-outbox-bench-{}-{dest}", std::process::id()));
                    std::fs::create_dir_all(&dir).unwrap();
                    let store: Arc<dyn Store> =
                        Arc::new(SqliteStore::open(dir.join("bench.db")).await.unwrap());
                    bench("sqlite", dest, store, &a, &mut rows).await;
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }
    println!(
        "\n| backend | destination | workload | throughput | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- | --- |"
    );
    let cell = |v: f64| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.2}")
        }
    };
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.dest,
            r.workload,
            r.rate,
            cell(r.p50),
            cell(r.p99)
        );
    }
}
