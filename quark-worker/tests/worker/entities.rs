//! Entities reached from workflows on the worker runtime, on both backends: an orchestration's
//! durable entity calls, and activities whose entity events are appended with their result, once,
//! whatever their attempts and conflicts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::testing::eventually;
use quark_history::{Backend, Clock, StoreTx};
use quark_history::{HistoryEvent, HistoryRange};
use quark_worker::Worker;
use quark_workflow::entity::{Command, Decision, Entities, Entity};
use quark_workflow::projection::{Batch, Projection, ProjectionError};
use quark_workflow::{
    ActivityContext, ActivityError, Client, OrchestrationContext, OrchestrationError, Registry,
    StartOptions, activity, orchestration,
};
use serde::{Deserialize, Serialize};

quark_history::backend_tests!(
    it_calls_an_entity_durably_from_an_orchestration_and_records_each_reply,
    it_appends_an_activitys_entity_events_once_though_its_first_attempt_failed,
    it_decides_an_activitys_entity_command_again_when_the_stream_moved_before_its_commit,
    it_runs_a_projection_on_one_worker_at_a_time_and_hands_it_over_at_shutdown,
    it_shows_entities_events_projections_and_causes_on_the_command_line,
    it_rebuilds_and_replays_projections_and_streams_and_shows_a_workflows_past_on_the_command_line,
    it_runs_the_projections_of_its_registry,
    it_keeps_the_entities_its_activities_call_live_and_snapshots_them,
    it_runs_an_entity_command_where_the_entity_is_live_and_lets_the_entity_go_when_it_moves,
);

struct Wallet;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Funds {
    cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum WalletEvent {
    Credited(i64),
    Debited(i64),
}

impl Entity for Wallet {
    const TYPE: &'static str = "Wallet";
    type State = Funds;
    type Event = WalletEvent;
    type Rejection = String;
    fn apply(state: &mut Funds, event: &WalletEvent) {
        match event {
            WalletEvent::Credited(c) => state.cents += c,
            WalletEvent::Debited(c) => state.cents -= c,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Credit(i64);

impl Command<Wallet> for Credit {
    const NAME: &'static str = "Credit";
    type Reply = i64;
    fn handle(&self, state: &Funds) -> Result<Decision<WalletEvent, i64>, String> {
        Ok(Decision::emit([WalletEvent::Credited(self.0)]).reply(state.cents + self.0))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Debit(i64);

impl Command<Wallet> for Debit {
    const NAME: &'static str = "Debit";
    type Reply = i64;
    fn handle(&self, state: &Funds) -> Result<Decision<WalletEvent, i64>, String> {
        if self.0 > state.cents {
            return Err(format!("{} cents available, {} asked", state.cents, self.0));
        }
        Ok(Decision::emit([WalletEvent::Debited(self.0)]).reply(state.cents - self.0))
    }
}

#[orchestration]
async fn pay(
    ctx: OrchestrationContext,
    key: String,
) -> Result<(i64, String, i64), OrchestrationError> {
    let wallet = ctx.entity::<Wallet>(key);
    let credited = wallet.call(&Credit(10)).await?;
    let refused = wallet.call(&Debit(50)).await?;
    let left = wallet.call(&Debit(4)).await?;
    let refusal = match refused {
        Err(why) => why,
        Ok(balance) => format!("debited, leaving {balance}"),
    };
    Ok((
        credited.map_err(OrchestrationError::Failed)?,
        refusal,
        left.map_err(OrchestrationError::Failed)?,
    ))
}

/// Credits `cents` to wallet `key`, at once or after signal `go`; returns the balance.
#[orchestration]
async fn credit_wallet(
    ctx: OrchestrationContext,
    input: (String, i64, bool),
) -> Result<i64, OrchestrationError> {
    let (key, cents, wait) = input;
    if wait {
        let _: () = ctx.wait_for_signal("go").await?;
    }
    ctx.entity::<Wallet>(key)
        .call(&Credit(cents))
        .await?
        .map_err(OrchestrationError::Failed)
}

/// What the activities did once already, by key (both backends' tests share the process, and
/// their keys differ).
static DONE_ONCE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn first_time(what: String) -> bool {
    DONE_ONCE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(what)
}

/// The store each test's activity writes to behind the engine's back, by key.
static STORES: Mutex<Option<HashMap<String, Arc<dyn quark_history::Store>>>> = Mutex::new(None);

/// Credits the wallet, then fails its first attempt after deciding.
#[activity(retry(max_attempts = 3, initial = "10ms", max = "10ms"))]
async fn credit_then_fail_once(ctx: ActivityContext, key: String) -> Result<i64, ActivityError> {
    let balance = ctx
        .entity::<Wallet>(&key)
        .call(&Credit(7))
        .await
        .map_err(ActivityError::message)?;
    if first_time(format!("fail {key}")) {
        return Err(ActivityError::message("failing after the decision"));
    }
    Ok(balance)
}

/// Credits the wallet; the first time, another writer appends to it before the result commits.
#[activity]
async fn credit_while_another_writes(
    ctx: ActivityContext,
    key: String,
) -> Result<i64, ActivityError> {
    let balance = ctx
        .entity::<Wallet>(&key)
        .call(&Credit(1))
        .await
        .map_err(ActivityError::message)?;
    if first_time(format!("move {key}")) {
        let store = STORES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|s| s.get(&key).cloned())
            .ok_or_else(|| ActivityError::message("no store for this key"))?;
        Entities::new(store)
            .entity::<Wallet>(&key)
            .call(&Credit(100))
            .await
            .map_err(ActivityError::message)?;
    }
    Ok(balance)
}

#[orchestration]
async fn run_credit(ctx: OrchestrationContext, key: String) -> Result<i64, OrchestrationError> {
    ctx.call(credit_then_fail_once, &key).await
}

#[orchestration]
async fn run_contended(ctx: OrchestrationContext, key: String) -> Result<i64, OrchestrationError> {
    ctx.call(credit_while_another_writes, &key).await
}

fn worker(t: &TestStore) -> Worker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        .workflows(
            Registry::new()
                .register(pay)
                .register(run_credit)
                .register(run_contended)
                .register(credit_then_fail_once)
                .register(credit_while_another_writes)
                .entity_command::<Wallet, Credit>()
                .entity_command::<Wallet, Debit>(),
        )
        .build()
        .unwrap()
}

/// The wallet's events as (event, causation), read from the journal.
async fn wallet_events(t: &TestStore, key: &str) -> Vec<(String, Option<String>)> {
    t.store
        .read_history(&format!("Wallet/{key}"), HistoryRange::All)
        .await
        .unwrap()
        .into_iter()
        .map(|e| match e.event {
            HistoryEvent::EntityEvent {
                data, causation, ..
            } => (
                data.decode::<serde_json::Value>().unwrap().to_string(),
                causation,
            ),
            other => panic!("{other:?}"),
        })
        .collect()
}

async fn it_calls_an_entity_durably_from_an_orchestration_and_records_each_reply(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let id = format!("{}-pay", t.store.backend());
    let handle = pay::start(&client, &id, "alice".to_string()).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, (10, "10 cents available, 50 asked".to_string(), 6));
    // The refusal appended nothing; each event names the orchestration step that caused it.
    assert_eq!(
        wallet_events(t, "alice").await,
        [
            (r#"{"Credited":10}"#.to_string(), Some(format!("{id}/1"))),
            (r#"{"Debited":4}"#.to_string(), Some(format!("{id}/3"))),
        ]
    );
    // The replies are in the orchestration's history: a replay reads them, it calls nothing.
    let completed = t
        .store
        .read_history(&id, HistoryRange::All)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.event, HistoryEvent::ActivityCompleted { .. }))
        .count();
    assert_eq!(completed, 3);
    assert!(t.store.verify("Wallet/alice").await.unwrap().is_intact());
    running.shutdown().await;
}

async fn it_appends_an_activitys_entity_events_once_though_its_first_attempt_failed(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let id = format!("{}-credit", t.store.backend());
    let key = format!("{}-flaky", t.store.backend());
    let handle = run_credit::start(&client, &id, key.clone()).await.unwrap();
    // The retry waits on the store's clock: move it until the instance is done.
    t.advance_until(
        Duration::from_millis(10),
        "the credit completed",
        async || {
            let r = t.store.get_instance(&id).await.unwrap().unwrap();
            r.status.is_closed()
        },
    )
    .await;
    let out = handle.result().await.unwrap();
    assert_eq!(out, 7);
    assert!(
        !first_time(format!("fail {key}")),
        "the first attempt failed"
    );
    // Two attempts decided the credit; only the one that completed appended it.
    assert_eq!(wallet_events(t, &key).await.len(), 1);
    running.shutdown().await;
}

async fn it_decides_an_activitys_entity_command_again_when_the_stream_moved_before_its_commit(
    t: &TestStore,
) {
    let key = format!("{}-shared", t.store.backend());
    STORES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(key.clone(), Arc::clone(&t.store));
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let id = format!("{}-contended", t.store.backend());
    let handle = run_contended::start(&client, &id, key.clone())
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .unwrap()
        .unwrap();
    // The first decision (balance 1) conflicted with the other writer's credit; the second was
    // made against 100 and is the one recorded.
    assert_eq!(out, 101);
    let events: Vec<String> = wallet_events(t, &key)
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(events, [r#"{"Credited":100}"#, r#"{"Credited":1}"#]);
    running.shutdown().await;
}

/// Each wallet's credits, summed.
struct Totals;

async fn exec(tx: &mut StoreTx, sql: String) -> Result<(), ProjectionError> {
    let sql = quark_history::sqlx::AssertSqlSafe(sql);
    match tx.backend() {
        Backend::Postgres => {
            quark_history::sqlx::query(sql)
                .execute(tx.postgres()?)
                .await?;
        }
        _ => {
            quark_history::sqlx::query(sql)
                .execute(tx.sqlite()?)
                .await?;
        }
    }
    Ok(())
}

impl Projection for Totals {
    const NAME: &'static str = "wallet_totals";

    async fn reset(&self, tx: &mut StoreTx, _version: u32) -> Result<(), ProjectionError> {
        exec(tx, "DELETE FROM wallet_totals".to_string()).await
    }

    async fn apply(&self, batch: &mut Batch<'_>) -> Result<(), ProjectionError> {
        for e in batch.entity_events::<Wallet>()? {
            let cents = match e.event.event {
                WalletEvent::Credited(c) => c,
                WalletEvent::Debited(c) => -c,
            };
            exec(
                batch.tx(),
                format!(
                    "INSERT INTO wallet_totals (wallet, cents) VALUES ('{}', {cents}) \
                     ON CONFLICT (wallet) DO UPDATE SET cents = wallet_totals.cents + {cents}",
                    e.key
                ),
            )
            .await?;
        }
        Ok(())
    }
}

fn projecting_worker(t: &TestStore, id: &str) -> Worker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .id(format!("{}-{id}", t.store.backend()))
        .poll_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(100))
        .lease(Duration::from_millis(300))
        .projection(Totals)
        .build()
        .unwrap()
}

async fn it_runs_a_projection_on_one_worker_at_a_time_and_hands_it_over_at_shutdown(t: &TestStore) {
    t.execute("CREATE TABLE wallet_totals (wallet TEXT PRIMARY KEY, cents BIGINT NOT NULL)")
        .await;
    let entities = Entities::new(Arc::clone(&t.store));
    let total = || async {
        t.scalar("SELECT CAST(COALESCE(SUM(cents), 0) AS BIGINT) FROM wallet_totals")
            .await
    };
    let a = projecting_worker(t, "a").start().await.unwrap();
    let b = projecting_worker(t, "b").start().await.unwrap();
    for i in 0..20 {
        entities
            .entity::<Wallet>(format!("w{}", i % 4))
            .call(&Credit(1))
            .await
            .unwrap();
    }
    eventually("both workers' projection applied 20 credits", async || {
        total().await == 20
    })
    .await;
    let owner = t.store.list_projections().await.unwrap()[0]
        .lease_owner
        .clone()
        .expect("a worker holds the projection");
    let (stopping, staying) = if owner == a.worker().id() {
        (a, b)
    } else {
        (b, a)
    };
    stopping.shutdown().await;
    for _ in 0..5 {
        entities
            .entity::<Wallet>("w0")
            .call(&Credit(10))
            .await
            .unwrap();
    }
    eventually("the other worker took the projection over", async || {
        total().await == 70
    })
    .await;
    let record = t.store.list_projections().await.unwrap().remove(0);
    assert_eq!(record.lease_owner.as_deref(), Some(staying.worker().id()));
    // Every event once: 20 + 5 credits, and no other event in the journal.
    assert_eq!(record.applied, 25);
    staying.shutdown().await;
}

async fn cli(
    t: &TestStore,
    command: quark_worker::cli::Command,
    registry: Option<Registry>,
) -> serde_json::Value {
    let mut out = Vec::new();
    quark_worker::cli::run_on(
        Arc::clone(&t.store),
        command,
        quark_worker::cli::Output::Json,
        registry,
        &mut out,
    )
    .await
    .unwrap();
    serde_json::from_slice(&out).unwrap()
}

async fn it_shows_entities_events_projections_and_causes_on_the_command_line(t: &TestStore) {
    use quark_worker::cli::{
        AuditCommand, Command as Cli, EntityCommand, EventsCommand, Filter, ProjectionCommand,
        Range,
    };
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let id = format!("{}-cli-pay", t.store.backend());
    let handle = pay::start(&client, &id, "carol".to_string()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .unwrap()
        .unwrap();
    running.shutdown().await;

    let show = |at| {
        Cli::Entity(EntityCommand::Show {
            entity_type: "Wallet".into(),
            key: "carol".into(),
            at,
            at_time: None,
        })
    };
    let wallet = Some(Registry::new().entity::<Wallet>());
    let now = cli(t, show(None), wallet.clone()).await;
    assert_eq!(
        (now["version"].as_u64(), now["at"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(now["state"], serde_json::json!({ "cents": 6 }));
    assert_eq!(now["events"][1]["event_type"], "Debited");
    assert_eq!(now["events"][1]["causation"], format!("{id}/3"));
    let then = cli(t, show(Some(1)), wallet.clone()).await;
    assert_eq!(then["state"], serde_json::json!({ "cents": 10 }));
    // Without the entity's code: the events, no state.
    let raw = cli(t, show(None), None).await;
    assert!(raw["state"].is_null());
    assert_eq!(raw["events"].as_array().unwrap().len(), 2);

    let diff = cli(
        t,
        Cli::Entity(EntityCommand::Diff {
            entity_type: "Wallet".into(),
            key: "carol".into(),
            from: 1,
            to: 2,
        }),
        wallet,
    )
    .await;
    assert_eq!(
        (
            diff["before"]["cents"].as_i64(),
            diff["after"]["cents"].as_i64()
        ),
        (Some(10), Some(6))
    );
    assert_eq!(diff["events"].as_array().unwrap().len(), 1);

    let query = |filter: Filter| {
        Cli::Events(EventsCommand::Query {
            range: Range::default(),
            filter,
            limit: 100,
        })
    };
    let debits = cli(
        t,
        query(Filter {
            stream: Some("Wallet/carol".into()),
            event_type: Some("Debited".into()),
            ..Filter::default()
        }),
        None,
    )
    .await;
    assert_eq!(debits.as_array().unwrap().len(), 1);
    // The queries below scan the global order, which on PostgreSQL reaches an event once no
    // older transaction is open anywhere on the server (other tests hold some).
    eventually("the wallet's events are final", async || {
        t.store
            .read_all(quark_history::GlobalPosition::START, 10_000)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.event.instance_id == "Wallet/carol")
            .count()
            == 2
    })
    .await;
    let conversation = cli(
        t,
        query(Filter {
            correlation: Some(id.clone()),
            ..Filter::default()
        }),
        None,
    )
    .await;
    assert_eq!(conversation.as_array().unwrap().len(), 2);

    // The trace from the workflow reaches the wallet events its steps caused.
    let trace = cli(
        t,
        Cli::Audit(AuditCommand::Trace {
            id: id.clone(),
            range: Range::default(),
        }),
        None,
    )
    .await;
    let wallet_links: Vec<_> = trace
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["instance_id"] == "Wallet/carol")
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(wallet_links, [1, 2]);
    assert!(
        trace
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["instance_id"] == id.as_str())
    );

    t.execute("CREATE TABLE wallet_totals (wallet TEXT PRIMARY KEY, cents BIGINT NOT NULL)")
        .await;
    quark_workflow::projection::Projector::new(Arc::clone(&t.store), Totals)
        .catch_up(|_, _| {})
        .await
        .unwrap();
    let listed = cli(t, Cli::Projection(ProjectionCommand::List), None).await;
    assert_eq!(listed[0]["name"], "wallet_totals");
    assert_eq!(listed[0]["state"], "active");
    let status = cli(
        t,
        Cli::Projection(ProjectionCommand::Status {
            name: "wallet_totals".into(),
        }),
        None,
    )
    .await;
    assert_eq!(status[0]["behind_seconds"].as_f64(), Some(0.0));
    assert_eq!(status[0]["behind_events"].as_u64(), Some(0));
    assert_eq!(status[0]["applied"], listed[0]["applied"]);

    // `verify --all` covers entity streams: one altered behind the engine's back is named.
    let all = || Cli::Verify {
        id: None,
        all: true,
    };
    let intact = cli(t, all(), None).await;
    assert_eq!(intact["broken"].as_array().unwrap().len(), 0);
    let checked = intact["checked"].as_u64().unwrap();
    t.execute("DELETE FROM history WHERE instance_id = 'Wallet/carol' AND seq = 2")
        .await;
    let mut out = Vec::new();
    let failed = quark_worker::cli::run_on(
        Arc::clone(&t.store),
        all(),
        quark_worker::cli::Output::Json,
        None,
        &mut out,
    )
    .await;
    assert!(failed.is_err(), "a broken chain fails the command");
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["checked"].as_u64(), Some(checked));
    assert_eq!(report["broken"][0]["id"], "Wallet/carol");
}

/// Each wallet's last version seen: idempotent (an upsert of the greater version), so replaying
/// events it has applied changes nothing.
struct LastSeen;

impl Projection for LastSeen {
    const NAME: &'static str = "wallet_last_seen";

    async fn apply(&self, batch: &mut Batch<'_>) -> Result<(), ProjectionError> {
        for e in batch.entity_events::<Wallet>()? {
            exec(
                batch.tx(),
                format!(
                    "INSERT INTO wallet_last_seen (wallet, version) VALUES ('{}', {v}) \
                     ON CONFLICT (wallet) DO UPDATE SET version = \
                     CASE WHEN wallet_last_seen.version > {v} THEN wallet_last_seen.version \
                     ELSE {v} END",
                    e.key,
                    v = e.event.version
                ),
            )
            .await?;
        }
        Ok(())
    }
}

async fn it_rebuilds_and_replays_projections_and_streams_and_shows_a_workflows_past_on_the_command_line(
    t: &TestStore,
) {
    use quark_history::GlobalPosition;
    use quark_worker::cli::{
        Command as Cli, EventsCommand, ProjectionCommand, ReplayArgs, WorkflowCommand,
    };
    t.execute("CREATE TABLE wallet_totals (wallet TEXT PRIMARY KEY, cents BIGINT NOT NULL)")
        .await;
    t.execute("CREATE TABLE wallet_last_seen (wallet TEXT PRIMARY KEY, version BIGINT NOT NULL)")
        .await;
    let entities = Entities::new(Arc::clone(&t.store));
    for i in 0..9 {
        entities
            .entity::<Wallet>(format!("w{}", i % 3))
            .call(&Credit(i + 1))
            .await
            .unwrap();
    }
    let registry = || {
        Some(
            Registry::new()
                .entity::<Wallet>()
                .projection(Totals)
                .projection(LastSeen),
        )
    };
    let total = || async {
        t.scalar("SELECT CAST(COALESCE(SUM(cents), 0) AS BIGINT) FROM wallet_totals")
            .await
    };
    let applied = |name: &'static str| async move {
        t.store
            .list_projections()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| (p.applied, p.checkpoint))
    };

    // A rebuild empties the model (damaged here) and applies every event once; not while
    // another runner holds the projection's lease.
    let running = quark_workflow::projection::Projector::new(Arc::clone(&t.store), Totals);
    running.catch_up(|_, _| {}).await.unwrap();
    t.execute("UPDATE wallet_totals SET cents = 999").await;
    let rebuild = || {
        Cli::Projection(ProjectionCommand::Rebuild {
            name: "wallet_totals".into(),
        })
    };
    let mut out = Vec::new();
    let busy = quark_worker::cli::run_on(
        Arc::clone(&t.store),
        rebuild(),
        quark_worker::cli::Output::Json,
        registry(),
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(format!("{busy:#}").contains("leased by"), "{busy:#}");
    assert_eq!(total().await, 999 * 3);
    running.release().await.unwrap();
    let rebuilt = cli(t, rebuild(), registry()).await;
    assert_eq!(rebuilt["events"], 9);
    assert_eq!(total().await, 45);
    assert_eq!(applied("wallet_totals").await.unwrap().0, 9);
    // Not linked into the binary: a clear refusal.
    let mut out = Vec::new();
    let unknown = quark_worker::cli::run_on(
        Arc::clone(&t.store),
        Cli::Projection(ProjectionCommand::Rebuild {
            name: "nope".into(),
        }),
        quark_worker::cli::Output::Json,
        registry(),
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(
        unknown.to_string().contains("not registered"),
        "{unknown:#}"
    );

    // A dry run applies the events and writes nothing: the model and the checkpoint stay.
    let before = applied("wallet_totals").await;
    let tried = cli(
        t,
        Cli::Events(EventsCommand::Replay(ReplayArgs {
            into: Some("wallet_totals".into()),
            dry_run: true,
            ..ReplayArgs::default()
        })),
        registry(),
    )
    .await;
    assert_eq!(tried["events"], 9);
    assert_eq!(tried["by_kind"]["Credited"], 9);
    assert_eq!(total().await, 45);
    assert_eq!(applied("wallet_totals").await, before);

    // A replay from a position applies what follows it again (to an idempotent model).
    let last_seen = quark_workflow::projection::Projector::new(Arc::clone(&t.store), LastSeen);
    last_seen.catch_up(|_, _| {}).await.unwrap();
    last_seen.release().await.unwrap();
    let (seen, head) = applied("wallet_last_seen").await.unwrap();
    assert_eq!(seen, 9);
    let fourth = t.store.read_all(GlobalPosition::START, 4).await.unwrap()[3].position;
    let replayed = cli(
        t,
        Cli::Events(EventsCommand::Replay(ReplayArgs {
            into: Some("wallet_last_seen".into()),
            after: Some(fourth),
            ..ReplayArgs::default()
        })),
        registry(),
    )
    .await;
    assert_eq!(replayed["events"], 5);
    assert_eq!(applied("wallet_last_seen").await, Some((14, head)));
    assert_eq!(
        t.scalar("SELECT CAST(SUM(version) AS BIGINT) FROM wallet_last_seen")
            .await,
        9
    );

    // A stream through its entity's code: the state after each event; then a snapshot.
    let stream = |dry_run| {
        Cli::Events(EventsCommand::Replay(ReplayArgs {
            stream: Some("Wallet/w1".into()),
            from_version: Some(2),
            dry_run,
            ..ReplayArgs::default()
        }))
    };
    let snapshots = || async {
        t.scalar("SELECT COUNT(*) FROM snapshots WHERE stream_id = 'Wallet/w1'")
            .await
    };
    let steps = cli(t, stream(true), registry()).await;
    let steps: Vec<(u64, i64)> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["version"].as_u64().unwrap(),
                s["state"]["cents"].as_i64().unwrap(),
            )
        })
        .collect();
    // w1's credits are 2, 5 and 8.
    assert_eq!(steps, [(2, 7), (3, 15)]);
    assert_eq!(snapshots().await, 0);
    cli(t, stream(false), registry()).await;
    assert_eq!(snapshots().await, 1);
    assert_eq!(
        t.scalar("SELECT MAX(version) FROM snapshots WHERE stream_id = 'Wallet/w1'")
            .await,
        3
    );

    // A workflow as it stood: after its start, after a signal, at its end.
    let client = Client::new(Arc::clone(&t.store));
    let id = format!("{}-past", t.store.backend());
    run_credit::start(&client, &id, "w9".to_string())
        .await
        .unwrap();
    t.clock.advance(Duration::from_secs(60));
    let before_signal = t.clock.now();
    t.clock.advance(Duration::from_secs(60));
    client.signal(&id, "nudge", &7).await.unwrap();
    client.terminate(&id, "enough").await.unwrap();
    let at = |at, at_time| {
        Cli::Workflow(WorkflowCommand::Describe {
            id: id.clone(),
            at,
            at_time,
        })
    };
    let started = cli(t, at(Some(1), None), None).await;
    assert_eq!(
        (started["version"].as_u64(), started["status"].as_str()),
        (Some(1), Some("running"))
    );
    assert!(started["signals"].as_object().unwrap().is_empty());
    let signalled = cli(t, at(Some(2), None), None).await;
    assert_eq!(signalled["signals"]["nudge"]["count"], 1);
    assert_eq!(signalled["signals"]["nudge"]["last"], 7);
    let before_signal = chrono::DateTime::from_timestamp_micros(before_signal.as_micros())
        .unwrap()
        .to_rfc3339();
    let by_time = cli(t, at(None, Some(before_signal)), None).await;
    assert_eq!(by_time["version"], 1);
    let ended = cli(t, at(Some(3), None), None).await;
    assert_eq!(ended["status"], "terminated");
}

async fn it_runs_the_projections_of_its_registry(t: &TestStore) {
    t.execute("CREATE TABLE wallet_totals (wallet TEXT PRIMARY KEY, cents BIGINT NOT NULL)")
        .await;
    let worker = Worker::builder()
        .store(Arc::clone(&t.store))
        .id(format!("{}-registry-projections", t.store.backend()))
        .poll_interval(Duration::from_millis(10))
        .workflows(Registry::new().projection(Totals))
        .build()
        .unwrap();
    let running = worker.start().await.unwrap();
    let entities = Entities::new(Arc::clone(&t.store));
    for i in 0..6 {
        entities
            .entity::<Wallet>(format!("w{}", i % 2))
            .call(&Credit(10))
            .await
            .unwrap();
    }
    eventually(
        "the registry's projection applied the credits",
        async || {
            t.store
                .list_projections()
                .await
                .unwrap()
                .first()
                .is_some_and(|p| p.applied == 6)
        },
    )
    .await;
    running.shutdown().await;
    assert_eq!(
        t.scalar("SELECT CAST(SUM(cents) AS BIGINT) FROM wallet_totals")
            .await,
        60
    );
    assert_eq!(t.store.list_projections().await.unwrap().len(), 1);
}

/// A counter snapshotted every third event.
struct Tally;

impl Entity for Tally {
    const TYPE: &'static str = "Tally";
    const SNAPSHOT_EVERY: u64 = 3;
    type State = u64;
    type Event = u64;
    type Rejection = String;
    fn apply(state: &mut u64, by: &u64) {
        *state += by;
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Bump;

impl Command<Tally> for Bump {
    const NAME: &'static str = "Bump";
    type Reply = u64;
    fn handle(&self, state: &u64) -> Result<Decision<u64, u64>, String> {
        Ok(Decision::emit([1]).reply(state + 1))
    }
}

#[orchestration]
async fn bump_seven_times(
    ctx: OrchestrationContext,
    key: String,
) -> Result<u64, OrchestrationError> {
    let mut last = 0;
    for _ in 0..7 {
        last = ctx
            .entity::<Tally>(key.clone())
            .call(&Bump)
            .await?
            .map_err(OrchestrationError::Failed)?;
    }
    Ok(last)
}

async fn it_keeps_the_entities_its_activities_call_live_and_snapshots_them(t: &TestStore) {
    let worker = Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        .workflows(
            Registry::new()
                .register(bump_seven_times)
                .entity_command::<Tally, Bump>(),
        )
        .build()
        .unwrap();
    let running = worker.start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let id = format!("{}-tally", t.store.backend());
    let handle = bump_seven_times::start(&client, &id, "t".to_string())
        .await
        .unwrap();
    let last = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last, 7);
    // Each command read the live state and caught up on the event the one before appended:
    // the worker keeps the entity, and snapshots it as its version passes 3 and 6.
    let live = running.worker().live_entities();
    let tally = live
        .iter()
        .find(|l| l.stream_id == "Tally/t")
        .unwrap_or_else(|| panic!("Tally/t is not live: {live:?}"));
    assert!(tally.version >= 6, "{tally:?}");
    assert_eq!(
        t.scalar("SELECT COUNT(*) FROM snapshots WHERE stream_id = 'Tally/t'")
            .await,
        2
    );
    assert_eq!(
        t.scalar("SELECT MAX(version) FROM snapshots WHERE stream_id = 'Tally/t'")
            .await,
        6
    );
    running.shutdown().await;
}

/// A worker serving `queues` whose tasks with another worker's affinity stay that worker's.
fn serving(t: &TestStore, id: &str, queues: &[&str]) -> Worker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .id(id)
        .queues(queues.iter().copied())
        .poll_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(50))
        .affinity_delay(Duration::from_secs(3600))
        .without_placement()
        .workflows(
            Registry::new()
                .register(credit_wallet)
                .entity_command::<Wallet, Credit>(),
        )
        .build()
        .unwrap()
}

/// An orchestration's entity command runs on the worker where the entity is live (its stream's
/// home), not where the orchestration runs; and a worker lets a live entity go once its home is
/// another worker.
///
/// `near` serves queues `qa` and `qb`, `far` only `qb`. An orchestration on `qa` (so on `near`)
/// credits the wallet first: the wallet is live on `near`, its home. Then an orchestration that
/// runs on `far` credits it: without routing `far` would load the wallet and run the command
/// itself; with it, `far` sends the command to `near`, which runs it on the live state.
async fn it_runs_an_entity_command_where_the_entity_is_live_and_lets_the_entity_go_when_it_moves(
    t: &TestStore,
) {
    let backend = t.store.backend();
    let (near_id, far_id) = (format!("near-{backend}"), format!("far-{backend}"));
    let key = format!("{backend}-routed");
    let stream = format!("Wallet/{key}");
    let client = Client::new(Arc::clone(&t.store));
    let far = serving(t, &far_id, &["qb"]).start().await.unwrap();
    // The waiting orchestration's first turn runs on `far`, the only worker yet: it is warm
    // there, and its next turns stay there.
    let waiting = client
        .start_with::<credit_wallet>(
            &format!("{backend}-far"),
            &(key.clone(), 5, true),
            StartOptions::default().queue("qb"),
        )
        .await
        .unwrap();
    eventually("the waiting orchestration's first turn", async || {
        far.worker().metrics().completed >= 1
    })
    .await;
    let near = serving(t, &near_id, &["qa", "qb"]).start().await.unwrap();
    let first = client
        .start_with::<credit_wallet>(
            &format!("{backend}-near"),
            &(key.clone(), 10, false),
            StartOptions::default().queue("qa"),
        )
        .await
        .unwrap();
    assert_eq!(first.result().await.unwrap(), 10);
    assert!(
        near.worker()
            .live_entities()
            .iter()
            .any(|e| e.stream_id == stream)
    );
    let home = || {
        let store = Arc::clone(&t.store);
        let stream = stream.clone();
        async move {
            store
                .affinities(std::slice::from_ref(&stream))
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.worker)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(home().await, std::slice::from_ref(&near_id));

    client.signal(waiting.id(), "go", &()).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(60), waiting.result())
            .await
            .unwrap()
            .unwrap(),
        15
    );
    let routed = far.worker().metrics().entity_routed;
    assert_eq!(routed, 1, "far sent the command to the wallet's home");
    assert!(
        far.worker()
            .live_entities()
            .iter()
            .all(|e| e.stream_id != stream),
        "far never loaded the wallet: {:?}",
        far.worker().live_entities()
    );
    assert_eq!(
        home().await,
        std::slice::from_ref(&near_id),
        "the wallet stayed home"
    );

    // The wallet's home moves to `far` (as the coordinator would): `near` lets its copy go.
    let moved = t
        .store
        .move_affinities(
            &[quark_history::AffinityMove::new(&stream, &near_id, &far_id)],
            None,
        )
        .await
        .unwrap();
    assert_eq!(moved, [true]);
    eventually("near dropped the wallet", async || {
        near.worker().metrics().entities_moved_away >= 1
    })
    .await;
    assert!(
        near.worker()
            .live_entities()
            .iter()
            .all(|e| e.stream_id != stream)
    );
    near.shutdown().await;
    far.shutdown().await;
}
