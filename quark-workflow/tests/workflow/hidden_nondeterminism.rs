//! Nondeterminism `#[orchestration]` cannot see at compile time (a clock, randomness or the
//! environment read in a helper function, a `HashMap` iterated behind a type, process state) is
//! caught when the history is replayed. A live instance is not replayed between its turns, so
//! such code runs on until the instance is replayed: after a restart or an eviction, on another
//! worker, or by the `Replayer`. These tests keep no instance live (as a worker that has just
//! restarted), so that every turn replays: what changes from one execution to the next
//! (randomness, a hash map's order, a counter) stops the instance's second turn and blocks it;
//! what changes only with time or with the machine (the clock, the environment) shows when the
//! history is replayed later or elsewhere. The tests check what
//! the user is told: the event, the call site that recorded it and the one that now differs, with
//! both inputs and the source line.
//!
//! The helpers carry `#[allow(clippy::disallowed_methods)]` where the workspace's own lint
//! configuration would flag them, which is the point: in user code, the lint file
//! `quark-workflow/clippy-orchestrations.toml` finds these calls before any replay does.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use quark_workflow::runner::{HistoryWarning, WarmLimits};
use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, ClientError, Divergence, OrchestrationContext,
    OrchestrationError, Registry, ReplayReport, Replayer, activity, orchestration,
};
use serde::{Deserialize, Serialize};

#[activity]
async fn charge(_ctx: ActivityContext, cents: u64) -> Result<u64, ActivityError> {
    Ok(cents)
}

#[activity]
async fn reserve(_ctx: ActivityContext, what: String) -> Result<(), ActivityError> {
    let _ = what;
    Ok(())
}

fn registry() -> Registry {
    Registry::new()
        .register(promotion_checkout)
        .register(sharded_reservation)
        .register(regional_invoice)
        .register(cart_reservation)
        .register(numbered_receipt)
        .register(charge)
        .register(reserve)
}

/// Runs `start` to its end in a test environment and returns the recorded history as JSON.
async fn record<F, Fut>(instance_id: &str, start: F) -> String
where
    F: FnOnce(TestEnv) -> Fut,
    Fut: Future<Output = ()>,
{
    // No live instances: every turn replays the history, as after a restart.
    let replays = WarmLimits {
        instances: 0,
        ..WarmLimits::default()
    };
    let env = TestEnv::with_limits(registry(), replays, HistoryWarning::default())
        .await
        .unwrap();
    start(env.clone()).await;
    let history = env.client().history(instance_id).await.unwrap();
    serde_json::to_string(&history).unwrap()
}

/// The reason an instance stopped on: its turn diverged, and the instance is blocked.
fn stuck<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Err(ClientError::Blocked { error, .. }) => error,
        other => panic!("expected the instance to be blocked, got {other:?}"),
    }
}

/// The start of the message a turn that diverged at the first call is dead-lettered with.
const DIVERGED_AT_FIRST_CALL: &str = "nondeterminism: event 2 was ActivityScheduled(reserve) \
     from quark-workflow/tests/workflow/hidden_nondeterminism.rs:";

/// What a turn that diverged at some call of `reserve` is dead-lettered with.
const DIVERGED_AT_A_CALL: &str =
    "was ActivityScheduled(reserve) from quark-workflow/tests/workflow/hidden_nondeterminism.rs:";

/// Replays `history` in this process and returns the divergence it must report.
fn diverged(history: &str) -> Divergence {
    match Replayer::new(registry()).replay_json(history).unwrap() {
        ReplayReport::Diverged(d) => *d,
        other => panic!("expected a divergence, got {other:?}"),
    }
}

/// Checks what the user reads: the event, both call sites, both inputs and the source line.
fn assert_message(d: &Divergence, activity: &str, recorded: &str, now: &str, line: &str) {
    let text = d.to_string();
    let this_file = "quark-workflow/tests/workflow/hidden_nondeterminism.rs";
    assert_eq!(
        d.error.expected,
        format!("ActivityScheduled({activity})"),
        "{text}"
    );
    assert_eq!(
        d.error.actual,
        format!(
            "asks for ActivityScheduled({activity}) with input {now}, recorded with input \
             {recorded}"
        ),
        "{text}"
    );
    let sites = [&d.error.expected_site, &d.error.actual_site];
    for site in sites {
        let site = site.as_ref().expect("a call site");
        assert_eq!(site.file, this_file, "{text}");
    }
    assert_eq!(d.error.expected_site, d.error.actual_site, "{text}");
    assert!(
        text.starts_with(&format!(
            "nondeterminism: event 2 was ActivityScheduled({activity}) from {this_file}:"
        )),
        "{text}"
    );
    assert!(
        d.actual_line.as_deref().is_some_and(|l| l.contains(line)),
        "{text}"
    );
}

// --- The clock, read in a helper ------------------------------------------------------------

/// When the promotion ends, in seconds since the epoch. A constant in real code; the test moves
/// it to the past instead of waiting for the clock to pass it.
static PROMOTION_ENDS: AtomicU64 = AtomicU64::new(u64::MAX);

#[allow(clippy::disallowed_methods)] // the mistake under test
fn promotion_running() -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    now < PROMOTION_ENDS.load(Ordering::SeqCst)
}

#[orchestration]
async fn promotion_checkout(
    ctx: OrchestrationContext,
    cents: u64,
) -> Result<u64, OrchestrationError> {
    let price = if promotion_running() {
        cents / 2
    } else {
        cents
    };
    ctx.call(charge, &price).await
}

#[tokio::test]
async fn a_clock_read_in_a_helper_is_caught_when_a_replay_branches_the_other_way() {
    let history = record("promotion", |env| async move {
        let h = promotion_checkout::start(env.client(), "promotion", 1000)
            .await
            .unwrap();
        assert_eq!(h.result().await.unwrap(), 500);
    })
    .await;
    // The promotion ends while the instance waits; a worker replays it afterwards.
    PROMOTION_ENDS.store(0, Ordering::SeqCst);
    let d = diverged(&history);
    assert_message(&d, "charge", "500", "1000", "ctx.call(charge, &price)");
}

// --- Randomness, drawn in a helper ----------------------------------------------------------

/// A shard picked at random: `RandomState` is seeded differently in every process (and on every
/// call), like `rand`.
fn random_shard() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one("shard")
}

#[orchestration]
async fn sharded_reservation(
    ctx: OrchestrationContext,
    item: String,
) -> Result<(), OrchestrationError> {
    let shard = random_shard();
    ctx.call(reserve, &format!("{item} on shard {shard}")).await
}

#[tokio::test]
async fn randomness_drawn_in_a_helper_is_caught_by_the_input_it_changes() {
    let history = record("sharded", |env| async move {
        let h = sharded_reservation::start(env.client(), "sharded", "teapot".to_string())
            .await
            .unwrap();
        // The second turn replays the first, draws another shard, and stops.
        let reason = stuck(h.result().await);
        assert!(reason.contains(DIVERGED_AT_FIRST_CALL), "{reason}");
        assert!(reason.contains("with input \"teapot on shard "), "{reason}");
    })
    .await;
    // The Replayer, on the history, says the same and shows the line.
    let d = diverged(&history);
    let text = d.to_string();
    assert_eq!(d.error.expected, "ActivityScheduled(reserve)", "{text}");
    assert!(
        d.error
            .actual
            .starts_with("asks for ActivityScheduled(reserve) with input \"teapot on shard "),
        "{text}"
    );
    assert!(
        d.error
            .actual
            .contains(", recorded with input \"teapot on shard "),
        "{text}"
    );
    assert!(
        d.actual_line
            .as_deref()
            .is_some_and(|l| l.contains("ctx.call(reserve")),
        "{text}"
    );
}

// --- The environment, read in a helper, by a worker elsewhere --------------------------------

const REGION: &str = "QUARK_EXAMPLE_REGION";
const HISTORY: &str = "QUARK_EXAMPLE_HISTORY";

fn region() -> String {
    std::env::var(REGION).unwrap_or_else(|_| "us-east".to_string())
}

#[orchestration]
async fn regional_invoice(ctx: OrchestrationContext, cents: u64) -> Result<(), OrchestrationError> {
    ctx.call(reserve, &format!("invoice of {cents} in {}", region()))
        .await
}

#[tokio::test]
async fn an_environment_variable_read_in_a_helper_is_caught_by_a_worker_configured_otherwise() {
    let history = record("regional", |env| async move {
        let h = regional_invoice::start(env.client(), "regional", 700)
            .await
            .unwrap();
        h.result().await.unwrap();
    })
    .await;
    // Another worker, whose environment differs: this test binary again, in a child process
    // (setting a variable in this process would race the other tests).
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("regional_invoice.json");
    std::fs::write(&file, &history).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "hidden_nondeterminism::replay_on_a_worker_in_another_region",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(REGION, "eu-west")
        .env(HISTORY, &file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let message = stdout
        .lines()
        .find_map(|l| l.strip_prefix("divergence: "))
        .unwrap_or_else(|| panic!("no divergence reported: {stdout}"));
    assert!(
        message.contains(
            "the code now asks for ActivityScheduled(reserve) with input \"invoice of 700 in \
             eu-west\", recorded with input \"invoice of 700 in us-east\" at \
             quark-workflow/tests/workflow/hidden_nondeterminism.rs:"
        ),
        "{message}"
    );
}

/// The replaying worker of the test above, run by it in a child process.
#[test]
#[ignore = "run in a child process by an_environment_variable_read_in_a_helper_is_caught_by_a_worker_configured_otherwise"]
fn replay_on_a_worker_in_another_region() {
    let Some(file) = std::env::var_os(HISTORY) else {
        return;
    };
    let history = std::fs::read_to_string(file).unwrap();
    // One line, for the parent to find.
    println!("divergence: {}", diverged(&history).error);
}

// --- A HashMap iterated behind a type -------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cart {
    /// Quantities by item. The orchestration never names the map, so the macro cannot see it.
    lines: HashMap<String, u64>,
}

impl Cart {
    fn lines(&self) -> impl Iterator<Item = (&String, &u64)> {
        self.lines.iter()
    }
}

#[orchestration]
async fn cart_reservation(ctx: OrchestrationContext, cart: Cart) -> Result<(), OrchestrationError> {
    for (item, quantity) in cart.lines() {
        ctx.call(reserve, &format!("{quantity} x {item}")).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_hash_map_iterated_behind_a_type_is_caught_in_another_order() {
    // Twelve lines: the chance that two maps with different seeds visit them in the same order
    // is about 1 in 12!.
    let cart = Cart {
        lines: (1..=12).map(|i| (format!("item-{i:02}"), i)).collect(),
    };
    let history = record("cart", |env| async move {
        let h = cart_reservation::start(env.client(), "cart", cart)
            .await
            .unwrap();
        // Every turn decodes the input into a map with another seed. Which call diverges first
        // is chance: the second turn's map starts with the same item as the first's once in
        // twelve, and then a later call diverges.
        let reason = stuck(h.result().await);
        assert!(reason.contains(DIVERGED_AT_A_CALL), "{reason}");
        assert!(reason.contains(" x item-"), "{reason}");
    })
    .await;
    // The replay decodes the input into a map with another seed, as a restarted worker does. The
    // history may be short enough (one call recorded) for a replay to agree by chance, once in
    // twelve: a restart that keeps replaying finds the divergence, and so does this.
    let d = (0..10)
        .find_map(|_| match Replayer::new(registry()).replay_json(&history) {
            Ok(ReplayReport::Diverged(d)) => Some(*d),
            _ => None,
        })
        .expect("ten replays, each with another seed, and none diverged");
    let text = d.to_string();
    assert_eq!(d.error.expected, "ActivityScheduled(reserve)", "{text}");
    assert!(
        d.error
            .actual
            .starts_with("asks for ActivityScheduled(reserve) with input \""),
        "{text}"
    );
    assert!(d.error.actual.contains(" x item-"), "{text}");
    assert!(
        d.actual_line
            .as_deref()
            .is_some_and(|l| l.contains("ctx.call(reserve, &format!(\"{quantity} x {item}\"))")),
        "{text}"
    );
}

// --- Process state --------------------------------------------------------------------------

/// A counter in the worker process: it does not restart with a replay.
static RECEIPTS: AtomicU64 = AtomicU64::new(0);

fn next_receipt_number() -> u64 {
    RECEIPTS.fetch_add(1, Ordering::SeqCst) + 1
}

#[orchestration]
async fn numbered_receipt(ctx: OrchestrationContext, cents: u64) -> Result<(), OrchestrationError> {
    let number = next_receipt_number();
    ctx.call(reserve, &format!("receipt {number} for {cents}"))
        .await
}

#[tokio::test]
async fn process_state_in_a_static_is_caught_when_the_replay_reads_it_again() {
    let history = record("receipt", |env| async move {
        let h = numbered_receipt::start(env.client(), "receipt", 250)
            .await
            .unwrap();
        // The second turn runs the body again and counts on from where the first left off.
        let reason = stuck(h.result().await);
        assert!(reason.contains(DIVERGED_AT_FIRST_CALL), "{reason}");
        assert!(
            reason.contains("recorded with input \"receipt 1 for 250\""),
            "{reason}"
        );
    })
    .await;
    let d = diverged(&history);
    let text = d.to_string();
    assert_eq!(d.error.expected, "ActivityScheduled(reserve)", "{text}");
    assert!(
        d.error
            .actual
            .starts_with("asks for ActivityScheduled(reserve) with input \"receipt "),
        "{text}"
    );
    assert!(
        d.error
            .actual
            .ends_with(", recorded with input \"receipt 1 for 250\""),
        "{text}"
    );
    assert!(
        d.actual_line.as_deref().is_some_and(
            |l| l.contains("ctx.call(reserve, &format!(\"receipt {number} for {cents}\"))")
        ),
        "{text}"
    );
}
