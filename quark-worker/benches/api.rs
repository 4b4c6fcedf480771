//! API load generator: workflow starts through the gRPC API (`quark serve`'s service, on a
//! loopback socket, with a token) against the same starts through the in-process `Client`, in
//! the same run and on the same database.
//!
//! - Light load: one start at a time, the two paths alternating start by start; p50/p99 of each
//!   and what the API adds.
//! - Under load: `--concurrency` callers starting as fast as they can for `--seconds`, each path
//!   in turn, twice (A B A B); starts/s of each.
//!
//! A start only creates the instance (no worker runs it), which is what a start costs the
//! caller and the database.
//!
//! `cargo bench -p quark-worker --bench api -- [--light 2000] [--seconds 5] [--concurrency 64] [--backend postgres|sqlite]`
//! PostgreSQL: `QUARK_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! the bench creates and drops a database of its own. SQLite: a file in a temporary directory.
#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quark_history::{
    Payload, PostgresStore, RegisteredType, Scope, SqliteStore, Store, StoreConfig, TypeKind,
};
use quark_worker::service::proto::workflow_service_client::WorkflowServiceClient;
use quark_worker::service::proto::{self};
use quark_worker::service::{ServiceOptions, auth, serve};
use quark_workflow::{Client, StartOptions};
use sqlx::{Connection, Executor, PgConnection};
use tonic::metadata::{Ascii, MetadataValue};

const USAGE: &str = "cargo bench -p quark-worker --bench api -- [options]
  --light N          starts one at a time, per path (default 2000)
  --seconds S        seconds per path under load, per round (default 5)
  --concurrency C    callers under load (default 64)
  --connections N    HTTP/2 connections the API's callers share (default 4)
  --backend B        postgres | sqlite (default postgres)";

const TYPE: &str = "bench_start";
const QUEUE: &str = "bench";

fn value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type Api = WorkflowServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// The two ways to start.
#[derive(Clone)]
enum Path {
    InProcess(Client),
    Api(Api),
}

impl Path {
    fn name(&self) -> &'static str {
        match self {
            Path::InProcess(_) => "in-process Client",
            Path::Api(_) => "gRPC API",
        }
    }

    async fn start(&mut self, id: String) -> anyhow::Result<()> {
        match self {
            Path::InProcess(client) => {
                client
                    .start_by_name(
                        TYPE,
                        1,
                        id,
                        Payload::json(&42u64)?,
                        StartOptions::default().queue(QUEUE),
                    )
                    .await?;
            }
            Path::Api(api) => {
                api.start_workflow(proto::StartWorkflowRequest {
                    workflow_type: TYPE.into(),
                    instance_id: id,
                    input: Some(proto::Payload {
                        codec: "json".into(),
                        data: b"42".to_vec(),
                    }),
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }
}

async fn under_load(
    path: &Path,
    apis: &[Api],
    tag: &str,
    seconds: u64,
    concurrency: u64,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut callers = Vec::new();
    for c in 0..concurrency {
        // API callers spread over the connections, as many clients would.
        let mut path = match path {
            Path::Api(_) => Path::Api(apis[c as usize % apis.len()].clone()),
            other => other.clone(),
        };
        let (done, tag) = (Arc::clone(&done), tag.to_string());
        callers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                path.start(format!("{tag}-{c}-{i}")).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    for caller in callers {
        caller.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// What to measure.
struct Load {
    light: u64,
    seconds: u64,
    concurrency: u64,
    connections: usize,
}

async fn run(store: Arc<dyn Store>, load: Load) -> anyhow::Result<()> {
    let Load {
        light,
        seconds,
        concurrency,
        connections,
    } = load;
    store.migrate().await?;
    store
        .publish_types(vec![RegisteredType::new(
            TypeKind::Orchestration,
            TYPE,
            1,
            QUEUE,
            "bench",
        )])
        .await?;
    let token = auth::issue(&*store, "bench", Scope::Write, None)
        .await?
        .token;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        Arc::clone(&store),
        listener,
        ServiceOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let bearer = Bearer(format!("Bearer {token}").parse()?);
    let mut apis = Vec::new();
    for _ in 0..connections.max(1) {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        apis.push(WorkflowServiceClient::with_interceptor(
            channel,
            bearer.clone(),
        ));
    }
    let mut paths = [
        Path::InProcess(Client::new(Arc::clone(&store))),
        Path::Api(apis[0].clone()),
    ];

    // Warm both paths (connections, the token and type caches).
    for (p, path) in paths.iter_mut().enumerate() {
        for i in 0..50 {
            path.start(format!("warm-{p}-{i}")).await?;
        }
    }
    let mut latency = [Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?];
    for i in 0..light {
        for (p, path) in paths.iter_mut().enumerate() {
            let t = Instant::now();
            path.start(format!("light-{p}-{i}")).await?;
            latency[p].record(t.elapsed().as_micros() as u64)?;
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    for (p, path) in paths.iter().enumerate() {
        println!(
            "light load, {light} starts one at a time via {}: p50 {:.2} ms, p99 {:.2} ms",
            path.name(),
            ms(latency[p].value_at_quantile(0.5)),
            ms(latency[p].value_at_quantile(0.99)),
        );
    }
    println!(
        "the API adds {:.2} ms at p50, {:.2} ms at p99",
        ms(latency[1].value_at_quantile(0.5)) - ms(latency[0].value_at_quantile(0.5)),
        ms(latency[1].value_at_quantile(0.99)) - ms(latency[0].value_at_quantile(0.99)),
    );
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..2 {
        for (p, path) in paths.iter().enumerate() {
            let rate = under_load(
                path,
                &apis,
                &format!("load-{round}-{p}"),
                seconds,
                concurrency,
            )
            .await?;
            rates[p].push(rate);
        }
    }
    for (p, path) in paths.iter().enumerate() {
        let r = &rates[p];
        println!(
            "under load, {concurrency} callers for {seconds} s via {}{}: {:.0} and {:.0} starts/s",
            path.name(),
            match path {
                Path::Api(_) => format!(" ({connections} connections)"),
                Path::InProcess(_) => String::new(),
            },
            r[0],
            r[1]
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let light: u64 = value("--light").map_or(Ok(2000), |v| v.parse())?;
    let seconds: u64 = value("--seconds").map_or(Ok(5), |v| v.parse())?;
    let concurrency: u64 = value("--concurrency").map_or(Ok(64), |v| v.parse())?;
    let connections: usize = value("--connections").map_or(Ok(4), |v| v.parse())?;
    let load = || Load {
        light,
        seconds,
        concurrency,
        connections,
    };
    let backend = value("--backend").unwrap_or_else(|| "postgres".into());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match backend.as_str() {
            "sqlite" => {
                let dir = std::env::temp_dir().join(format!("quark-api-{}", uuid::Uuid::now_v7()));
                std::fs::create_dir_all(&dir)?;
                let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.join("api.db")).await?);
                let result = run(store, load()).await;
                let _ = std::fs::remove_dir_all(&dir);
                result
            }
            _ => {
                let base = std::env::var("QUARK_TEST_DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                let db = format!("quark_api_{}", uuid::Uuid::now_v7().simple());
                let mut admin = PgConnection::connect(&base).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                    .await?;
                let url = match base.rsplit_once('/') {
                    Some((server, rest)) => {
                        let query = rest.split_once('?').map(|(_, q)| format!("?{q}"));
                        format!("{server}/{db}{}", query.unwrap_or_default())
                    }
                    None => base.clone(),
                };
                let result = async {
                    let store: Arc<dyn Store> =
                        Arc::new(PostgresStore::connect_with(&url, StoreConfig::default()).await?);
                    run(store, load()).await
                }
                .await;
                let _ = admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE {db} WITH (FORCE)"
                    )))
                    .await;
                result
            }
        }
    })
}
