//! A tour of Quark's journal and queue on embedded SQLite, with nothing to install.
//!
//! A tiny worker loop runs one order through its life by hand: the orchestration turn schedules an
//! activity and a timer, the activity runs and reports back, the timer fires, and the last turn
//! completes the order. Every step is one atomic commit. At the end the history is printed, its hash
//! chain verified, and the order's state rebuilt by replaying the history alone.
//!
//! Run it with `cargo run -p quark-examples --example journal [path/to/file.db]`.

use std::time::Duration;

use anyhow::{Context, bail};
use quark_history::{
    CallSite, ClaimRequest, ClaimedTask, Clock, Commit, Expected, HistoryEvent, HistoryRange,
    IdReusePolicy, NewInstance, NewTask, Payload, SqliteStore, Store, SystemClock, TaskKind,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: String,
    amount_cents: u64,
}

#[derive(Debug, Default)]
struct OrderState {
    charged: Option<String>,
    waited: bool,
    done: bool,
}

/// Rebuilds an order's state from its history: what every replay does.
fn replay(history: &[quark_history::RecordedEvent]) -> anyhow::Result<OrderState> {
    let mut state = OrderState::default();
    for recorded in history {
        match &recorded.event {
            HistoryEvent::ActivityCompleted { output, .. } => {
                state.charged = Some(output.decode()?)
            }
            HistoryEvent::TimerFired { .. } => state.waited = true,
            HistoryEvent::WorkflowCompleted { .. } => state.done = true,
            _ => {}
        }
    }
    Ok(state)
}

fn site(line: u32) -> Option<CallSite> {
    Some(CallSite {
        file: file!().into(),
        line,
        column: 1,
    })
}

async fn claim_one(store: &SqliteStore, worker: &str) -> anyhow::Result<ClaimedTask> {
    let mut wakeups = store.subscribe().await?;
    loop {
        if let Some(task) = store
            .claim(ClaimRequest::new(worker, ["default"]).limit(1))
            .await?
            .pop()
        {
            return Ok(task);
        }
        // Nothing visible yet (the timer): sleep until woken or the next poll.
        wakeups.wait(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "quark-journal-example.db".into());
    let store = SqliteStore::open(&path)
        .await
        .with_context(|| format!("opening {path}"))?;
    let id = format!("order-{}", uuid::Uuid::now_v7());
    let order = Order {
        id: id.clone(),
        amount_cents: 4_200,
    };
    println!("journal: {path}\nstarting {id}");
    store
        .create_instance(
            NewInstance::new(&id, "process_order", Payload::json(&order)?),
            IdReusePolicy::RejectDuplicate,
        )
        .await?;

    let worker = "example-worker";
    loop {
        let task = claim_one(&store, worker).await?;
        let history = store.read_history(&id, HistoryRange::All).await?;
        let next = history.len() as u64 + 1;
        let state = replay(&history)?;
        let commit = match task.kind {
            TaskKind::Orchestration if state.charged.is_none() && next == 2 => {
                println!("  turn 1: schedule charge_card");
                let input = Payload::json(&order)?;
                Commit::new()
                    .append(
                        &id,
                        Expected::Seq(next),
                        [HistoryEvent::ActivityScheduled {
                            command: 1,
                            activity: "charge_card".into(),
                            input,
                            queue: "default".into(),
                            site: site(line!()),
                        }],
                    )
                    .enqueue(
                        NewTask::new(TaskKind::Activity, "default")
                            .instance(&id)
                            .payload(b"charge_card".to_vec()),
                    )
            }
            TaskKind::Activity => {
                let receipt = format!("receipt-{}-{}", order.id, order.amount_cents);
                println!("  activity charge_card -> {receipt}");
                Commit::new()
                    .append(
                        &id,
                        Expected::Any,
                        [HistoryEvent::ActivityCompleted {
                            command: 1,
                            output: Payload::json(&receipt)?,
                            attempt: task.lease.attempt,
                        }],
                    )
                    .enqueue(NewTask::orchestration("default", &id))
            }
            TaskKind::Orchestration if state.charged.is_some() && !state.waited => {
                let fire_at = SystemClock.now() + Duration::from_millis(200);
                println!("  turn 2: durable timer until {fire_at}");
                Commit::new()
                    .append(
                        &id,
                        Expected::Seq(next),
                        [HistoryEvent::TimerCreated {
                            command: 2,
                            fire_at,
                            site: site(line!()),
                        }],
                    )
                    .enqueue(
                        NewTask::new(TaskKind::Timer, "default")
                            .instance(&id)
                            .visible_at(fire_at),
                    )
            }
            TaskKind::Timer => {
                println!("  timer fired");
                Commit::new()
                    .append(
                        &id,
                        Expected::Any,
                        [HistoryEvent::TimerFired { command: 2 }],
                    )
                    .enqueue(NewTask::orchestration("default", &id))
            }
            TaskKind::Orchestration => {
                println!("  turn 3: complete");
                let output = Payload::json(&serde_json::json!({"receipt": state.charged}))?;
                Commit::new().append(
                    &id,
                    Expected::Seq(next),
                    [HistoryEvent::WorkflowCompleted { output }],
                )
            }
            other => bail!("unexpected task kind {other}"),
        };
        store.commit(commit.complete(task.lease)).await?;
        if store
            .get_instance(&id)
            .await?
            .is_some_and(|i| i.status.is_closed())
        {
            break;
        }
    }

    let history = store.read_history(&id, HistoryRange::All).await?;
    println!(
        "\n{:>3}  {:<27}  {:<18}  hash",
        "seq", "recorded at", "event"
    );
    for e in &history {
        println!(
            "{:>3}  {}  {:<18}  {}…",
            e.seq,
            e.recorded_at,
            e.event.kind(),
            &e.hash[..16]
        );
    }
    let report = store.verify(&id).await?;
    println!(
        "\nhash chain: {} events, {}",
        report.events,
        if report.is_intact() {
            "intact"
        } else {
            "BROKEN"
        }
    );
    let state = replay(&history)?;
    println!(
        "replayed state: charged={:?} waited={} done={}",
        state.charged, state.waited, state.done
    );
    if !report.is_intact() || !state.done {
        bail!("the order did not complete cleanly");
    }
    Ok(())
}
