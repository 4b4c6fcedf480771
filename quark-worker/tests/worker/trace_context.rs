//! One trace follows a workflow across workers, activities, a child workflow and the outbox: the
//! trace context is stored with each task and message, and the span that runs a task continues
//! it (the `otel` feature).
//!
//! Each test records spans with an OpenTelemetry layer into memory. The layer is installed as the
//! default subscriber of the test's own runtime threads only, so the other tests of this binary
//! (running in the same process) are not recorded.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use quark_history::Destination;
use quark_history::testing::{TestStore, eventually};
use quark_worker::{OutboxRelay, RunningWorker, Worker};
use quark_workflow::{
    ActivityContext, ActivityError, Client, OrchestrationContext, OrchestrationError, Registry,
    activity, orchestration,
};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

const MAIN: &str = "traced-main";
const SIDE: &str = "traced-side";
const ORDER: &str = "traced-order";
const RECEIVER: &str = "traced-receiver";

#[activity(queue = "traced-side")]
async fn traced_reserve(_ctx: ActivityContext, n: u32) -> Result<u32, ActivityError> {
    Ok(n + 1)
}

/// Tells the sink and the receiver, through the outbox.
#[activity(queue = "traced-side")]
async fn traced_announce(ctx: ActivityContext, n: u32) -> Result<u32, ActivityError> {
    ctx.outbox()
        .send(Destination::callback("traced-sink"), &n)?;
    ctx.outbox().send(Destination::signal(RECEIVER, "go"), &n)?;
    Ok(n)
}

#[orchestration(queue = "traced-main")]
async fn traced_shipment(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    ctx.call(traced_reserve, &n).await
}

#[orchestration(queue = "traced-main")]
async fn traced_order(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    let reserved = ctx.call(traced_reserve, &n).await?;
    let shipped = ctx.call_child(traced_shipment, &reserved).await?;
    ctx.call(traced_announce, &shipped).await
}

#[orchestration(queue = "traced-main")]
async fn traced_receiver(ctx: OrchestrationContext, _n: u32) -> Result<u32, OrchestrationError> {
    let n: u32 = ctx.wait_for_signal("go").await?;
    Ok(n * 10)
}

fn registry() -> Registry {
    Registry::new()
        .register(traced_order)
        .register(traced_shipment)
        .register(traced_receiver)
        .register(traced_reserve)
        .register(traced_announce)
}

/// The headers of the messages the sink received.
type Heard = Arc<Mutex<Vec<std::collections::BTreeMap<String, String>>>>;

async fn start(t: &TestStore, id: &str, queue: &str, heard: &Heard) -> RunningWorker {
    let heard = Arc::clone(heard);
    let relay = OutboxRelay::new()
        .poll_interval(Duration::from_millis(20))
        .callback("traced-sink", move |message| {
            heard.lock().unwrap().push(message.headers.clone());
            async { Ok(()) }
        });
    Worker::builder()
        .store(Arc::clone(&t.store))
        .id(id)
        .queues([queue])
        .poll_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(50))
        .workflows(registry())
        .outbox(relay)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// A task span: (kind, instance, worker).
fn task_of(span: &SpanData) -> Option<(String, String, String)> {
    Some((
        attribute(span, "kind")?,
        attribute(span, "instance")?,
        attribute(span, "worker")?,
    ))
}

/// The scenario, recorded by `exporter`: worker A runs the orchestrations (queue `traced-main`),
/// worker B the activities (`traced-side`); both relay the outbox.
async fn a_trace_follows_the_workflow(t: &TestStore, exporter: &InMemorySpanExporter) {
    let heard: Heard = Arc::default();
    let a = start(t, "traced-a", MAIN, &heard).await;
    let b = start(t, "traced-b", SIDE, &heard).await;
    let client = Client::new(Arc::clone(&t.store));
    // Started outside the trace: its first turn is not part of it; the turn the outbox's signal
    // wakes is.
    let receiver = traced_receiver::start(&client, RECEIVER, 0).await.unwrap();
    let receiver_turns = || {
        exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .filter(|s| task_of(s).is_some_and(|(_, i, _)| i == RECEIVER))
            .count()
    };
    // Its first turn must be over before the signal is sent, or one turn would take both.
    eventually("the receiver's first turn is exported", async || {
        receiver_turns() >= 1
    })
    .await;
    let first: Vec<_> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| task_of(s).is_some_and(|(_, i, _)| i == RECEIVER))
        .map(|s| (s.name.clone(), s.attributes.clone(), s.status.clone()))
        .collect();
    assert_eq!(
        first.len(),
        1,
        "the receiver's turns before the signal: {first:#?}"
    );

    let root = tracing::info_span!("checkout");
    let trace: TraceId = root.context().span().span_context().trace_id();
    let root_id: SpanId = root.context().span().span_context().span_id();
    assert_ne!(trace, TraceId::INVALID, "the test's layer records spans");
    let order = traced_order::start(&client, ORDER, 1)
        .instrument(root.clone())
        .await
        .unwrap();
    drop(root);
    assert_eq!(order.result().await.unwrap(), 3);
    assert_eq!(receiver.result().await.unwrap(), 30);
    eventually("the sink heard the message", async || {
        !heard.lock().unwrap().is_empty()
    })
    .await;
    // The receiver's second turn settles before its result is readable, but its span closes
    // just after: wait until it is exported.
    eventually("the receiver's second turn is exported", async || {
        receiver_turns() >= 2
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;

    let spans = exporter.get_finished_spans().unwrap();
    let tasks: Vec<(&SpanData, (String, String, String))> = spans
        .iter()
        .filter_map(|s| Some((s, task_of(s)?)))
        .collect();
    let in_trace = |s: &SpanData| s.span_context.trace_id() == trace;

    // Every task of the order and of its child is in the trace.
    let child_tasks: Vec<_> = tasks
        .iter()
        .filter(|(_, (_, i, _))| i != ORDER && i != RECEIVER)
        .collect();
    assert!(
        child_tasks
            .iter()
            .any(|(_, (k, _, _))| k == "orchestration")
            && child_tasks.iter().any(|(_, (k, _, _))| k == "activity"),
        "the child's turn and its activity ran: {tasks:?}"
    );
    for (span, task) in &tasks {
        if task.1 != RECEIVER {
            assert!(in_trace(span), "{task:?} is outside the trace");
        }
    }
    let order_activities: Vec<SpanId> = tasks
        .iter()
        .filter(|(_, (k, i, _))| k == "activity" && i == ORDER)
        .map(|(s, _)| s.span_context.span_id())
        .collect();
    assert_eq!(order_activities.len(), 2, "reserve and announce: {tasks:?}");
    // Both workers took part in it: the context crossed from one to the other through the store.
    let workers: BTreeSet<&str> = tasks
        .iter()
        .filter(|(s, _)| in_trace(s))
        .map(|(_, (_, _, w))| w.as_str())
        .collect();
    assert_eq!(workers, BTreeSet::from(["traced-a", "traced-b"]));

    // The receiver: its first turn (started outside) is not in the trace, the one the outbox's
    // signal woke is, as a child of the activity that sent the signal.
    let receiver_turns: Vec<&SpanData> = tasks
        .iter()
        .filter(|(_, (_, i, _))| i == RECEIVER)
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(
        receiver_turns.iter().filter(|s| !in_trace(s)).count(),
        1,
        "{receiver_turns:?}"
    );
    let woken: Vec<&&SpanData> = receiver_turns.iter().filter(|s| in_trace(s)).collect();
    assert_eq!(woken.len(), 1, "{receiver_turns:?}");
    assert!(
        order_activities.contains(&woken[0].parent_span_id),
        "the signal's turn continues the span that sent it"
    );

    // The trace is one tree: every span in it has its parent in it, up to the root.
    let ids: HashMap<SpanId, &SpanData> = spans
        .iter()
        .filter(|s| in_trace(s))
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    assert!(ids.contains_key(&root_id), "the root span was exported");
    for span in ids.values() {
        if span.span_context.span_id() != root_id {
            assert!(
                ids.contains_key(&span.parent_span_id),
                "span {:?} ({:?}) has a parent outside the trace",
                span.name,
                task_of(span)
            );
        }
    }

    // The message reached the sink with the trace context of the activity that sent it.
    let headers = heard.lock().unwrap()[0].clone();
    let traceparent = headers.get("traceparent").expect("a traceparent header");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace.to_string());
    assert!(
        order_activities.iter().any(|id| id.to_string() == parts[2]),
        "{traceparent} names the sending activity's span"
    );
}

/// Runs `test` on a runtime whose threads record spans into a fresh in-memory exporter.
fn traced(test: impl AsyncFnOnce(&InMemorySpanExporter)) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("quark-test")));
    let dispatch = tracing::Dispatch::new(subscriber);
    // tracing caches each callsite's interest for the whole process. While exactly one dispatcher
    // exists, it computes that interest with the default of the thread that first reaches the
    // callsite: a sibling test, on a thread without a subscriber, reaching the worker's task span
    // first would cache "never", and this test would see no turn at all (it timed out once in CI
    // that way, waiting for the receiver's first turn). With a second dispatcher alive, tracing
    // asks every registered dispatcher instead.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let on_threads = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // The runtime's threads keep it as their default for as long as they live.
            std::mem::forget(tracing::dispatcher::set_default(&on_threads));
        })
        .build()
        .unwrap();
    let _here = tracing::dispatcher::set_default(&dispatch);
    runtime.block_on(test(&exporter));
}

#[test]
fn a_trace_follows_a_workflow_across_workers_a_child_and_the_outbox_sqlite() {
    traced(async |exporter| {
        let t = quark_history::testing::sqlite().await;
        a_trace_follows_the_workflow(&t, exporter).await;
        t.cleanup().await;
    });
}

#[test]
fn a_trace_follows_a_workflow_across_workers_a_child_and_the_outbox_postgres() {
    traced(async |exporter| {
        let Some(t) = quark_history::testing::postgres().await else {
            return;
        };
        a_trace_follows_the_workflow(&t, exporter).await;
        t.cleanup().await;
    });
}
