//! A worker's metrics and health endpoint: `/metrics` in the Prometheus text format, `/healthz`
//! (the process answers) and `/readyz` (the store answers and its schema is current).
//!
//! The figures are recorded through the [`metrics`] facade (see [`crate::metrics`]) into the
//! Prometheus recorder of `metrics-exporter-prometheus`, installed once per process on the first
//! endpoint's start. The exporter's own listener is left out: it cannot answer the health checks,
//! so the worker serves all three paths itself, on hyper (already in the dependency tree under
//! reqwest). An application that installed a recorder of its own keeps it: the worker logs that
//! and its `/metrics` says where the figures went, while the health checks work as usual.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use quark_history::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::names;

/// Histogram buckets in seconds: from a fast commit (a millisecond) to a long activity or a
/// delayed outbox message (minutes).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// How long `/readyz` waits for the store before it answers "not ready".
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the recorder drops what it no longer needs (histogram samples already bucketed).
const UPKEEP: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use; `None` when the application had
/// installed a recorder of its own (the figures go there).
fn prometheus() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => {
                    tracing::warn!(
                        "a metrics recorder is installed in this process already; the worker's \
                         figures go to it, and its /metrics endpoint serves none"
                    );
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(names::CLAIMED, "Tasks claimed");
    describe_counter!(
        names::SETTLED,
        "Tasks settled by a commit: completed, failed (dead) or retried"
    );
    describe_counter!(
        names::LEASE_LOST,
        "Tasks whose lease was lost while they ran"
    );
    describe_counter!(
        names::CONFLICTS,
        "Turns redone because their history moved on"
    );
    describe_counter!(
        names::OUTBOX,
        "Outbox deliveries settled: sent, retried or dead"
    );
    describe_histogram!(
        names::QUEUE_WAIT,
        Unit::Seconds,
        "From a task becoming visible to its claim"
    );
    describe_histogram!(
        names::TURN,
        Unit::Seconds,
        "Orchestration turns, commit included"
    );
    describe_histogram!(
        names::ACTIVITY,
        Unit::Seconds,
        "Activity and job attempts, commit included"
    );
    describe_histogram!(names::COMMIT, Unit::Seconds, "Commits of a task's outcome");
    describe_histogram!(
        names::OUTBOX_LAG,
        Unit::Seconds,
        "From an outbox message's write to its delivery"
    );
    describe_gauge!(names::SLOTS, "Task slots in use");
    describe_gauge!(names::CACHED, "Orchestration instances held live");
    describe_gauge!(
        names::CACHED_BYTES,
        "Estimated memory of the orchestration instances held live, in bytes"
    );
    describe_counter!(
        names::LONG_HISTORIES,
        "Instances whose history passed the warning bounds (continue_as_new them)"
    );
    describe_counter!(
        names::PROJECTED,
        "Events applied to read models, per projection"
    );
    describe_gauge!(
        names::PROJECTION_BEHIND,
        Unit::Seconds,
        "How long the oldest event a projection has not applied has waited, per projection \
         (0: up to date), as of its last look"
    );
    describe_gauge!(
        names::PROJECTION_BEHIND_EVENTS,
        "How many committed events a projection has not applied, per projection, as of its last look"
    );
    describe_gauge!(
        names::BLOCKED,
        "Instances blocked by a dead-lettered turn (nondeterminism, a panic), per queue: fix the \
         code, then re-drive the turn"
    );
    describe_gauge!(
        names::MEMORY,
        Unit::Bytes,
        "A worker's resident memory, smoothed, per worker"
    );
    describe_gauge!(
        names::MEMORY_LIMIT,
        Unit::Bytes,
        "The memory limit a worker's pressure thresholds are fractions of, per worker"
    );
    describe_gauge!(
        names::PRESSURE,
        "A worker's memory pressure: 0 normal, 1 warning, 2 critical, 3 reject"
    );
    describe_gauge!(
        names::CLAIMS_PAUSED,
        "1 while a worker's circuit breaker is open and it claims nothing"
    );
    describe_counter!(
        names::BREAKER_TRIPS,
        "Times a worker's circuit breaker opened (memory past the reject threshold)"
    );
    describe_counter!(
        names::MEMORY_EVICTIONS,
        "Warm runs and live entities evicted for memory, by what and reason (pressure, leak)"
    );
    describe_counter!(
        names::MOVED_AWAY,
        "Warm runs a worker dropped because another worker ran a later turn of their instance"
    );
    describe_counter!(
        names::ENTITIES_MOVED_AWAY,
        "Live entities a worker dropped because their stream's home moved to another worker"
    );
    describe_counter!(
        names::LOCAL_DELIVERIES,
        "Children's ends and signals that continued their warm receiver on the same worker, in one commit"
    );
    describe_counter!(
        names::REPLAYS,
        "Turns that rebuilt their instance's run by replaying its history (cache misses)"
    );
    describe_counter!(
        names::ENTITY_ROUTED,
        "Entity commands of orchestration turns sent to the worker where the entity is live"
    );
    describe_counter!(
        names::SIGNALS_ACROSS_SHARDS,
        "Signals orchestration turns sent to instances on other shards, through the outbox"
    );
    describe_counter!(
        names::NEWS_ACROSS_SHARDS,
        "News sent through the outbox to instances on other shards: children's starts, ends and cancellations, entity commands' results"
    );
    describe_counter!(
        names::ENTITY_ACROSS_SHARDS,
        "Entity commands of orchestration turns sent through the outbox to their entity's shard"
    );
    describe_counter!(
        names::SIGNALS_DROPPED,
        "Signals sent by orchestrations (ctx.send) to instances that had ended or did not exist"
    );
    describe_counter!(
        names::PLACEMENT_ROUNDS,
        "Placement rounds a worker ran as the coordinator, by reason (locality, memory)"
    );
    describe_counter!(
        names::PLACEMENT_MOVES,
        "Instances the placement coordinator moved between workers, by reason (locality, memory)"
    );
    describe_counter!(
        names::LEAKS,
        "Warm runs flagged as suspected leaks (far above their peers' footprint) and evicted"
    );
    #[cfg(feature = "service")]
    {
        describe_counter!(
            crate::service::metrics::REQUESTS,
            "API calls, by method and gRPC status code"
        );
        describe_histogram!(
            crate::service::metrics::REQUEST_SECONDS,
            Unit::Seconds,
            "API call durations until the response's headers, by method"
        );
    }
}

/// A running endpoint.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Called before `/metrics` renders, to bring the gauges up to date.
pub(crate) type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Listens on `addr` (port 0: any free port) and serves the endpoint until dropped.
pub(crate) async fn serve(
    addr: SocketAddr,
    store: Arc<dyn Store>,
    refresh: Refresh,
) -> std::io::Result<Endpoint> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let recorder = prometheus();
    let task = tokio::spawn(async move {
        let mut upkeep = tokio::time::interval(UPKEEP);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        continue;
                    }
                },
                _ = upkeep.tick() => {
                    if let Some(recorder) = recorder {
                        recorder.run_upkeep();
                    }
                    continue;
                }
            };
            let (store, refresh) = (Arc::clone(&store), Arc::clone(&refresh));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (store, refresh) = (Arc::clone(&store), Arc::clone(&refresh));
                    async move { Ok::<_, Infallible>(respond(req, &*store, &refresh).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
                }
            });
        }
    });
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(Endpoint { addr, task })
}

async fn respond(
    req: Request<Incoming>,
    store: &dyn Store,
    refresh: &Refresh,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            refresh();
            let body = match prometheus() {
                Some(recorder) => recorder.render(),
                None => {
                    "# this process installed its own metrics recorder; the figures are there\n"
                        .into()
                }
            };
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match tokio::time::timeout(READY_TIMEOUT, store.pending_migrations()).await {
            Ok(Ok(pending)) if pending.is_empty() => text(StatusCode::OK, "ready\n".into()),
            Ok(Ok(pending)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: migrations not applied: {pending:?} (run `quark migrate`)\n"),
            ),
            Ok(Err(e)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: the store cannot be reached: {e}\n"),
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: the store did not answer within {READY_TIMEOUT:?}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
