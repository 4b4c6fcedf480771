//! Queries and updates on running orchestrations, under the test environment: a query reads
//! the state and records nothing; an update is validated, recorded, runs activities and
//! replays; a rejected one leaves no trace; one sent twice under one id applies once.

use std::cell::RefCell;
use std::rc::Rc;

use quark_history::HistoryEvent;
use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, ClientError, OrchestrationContext, OrchestrationError, Query,
    Registry, Replayer, Signal, Update, activity, orchestration,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    sku: String,
    qty: u32,
}

const ITEMS: Query<(), Vec<String>> = Query::new("items");
const TOTAL: Query<(), u64> = Query::new("total");
/// Adds an item at its price (an activity); answers the new total.
const ADD: Update<Item, u64> = Update::new("add");
/// Sets the cart's note; answers its length. No validator, no activity.
const NOTE: Update<String, usize> = Update::new("note");
/// Fails on purpose.
const BREAK: Update<(), ()> = Update::new("break");
const CHECKOUT: Signal<()> = Signal::new("checkout");
/// Tries to draw a random number while answering: refused.
const SNEAKY: Query<(), u64> = Query::new("sneaky");

#[activity]
async fn price(_ctx: ActivityContext, sku: String) -> Result<u64, ActivityError> {
    Ok(100 * sku.len() as u64)
}

#[derive(Default)]
struct Cart {
    items: Vec<String>,
    total: u64,
    note: String,
}

#[orchestration]
async fn cart(ctx: OrchestrationContext, _: ()) -> Result<u64, OrchestrationError> {
    let state = Rc::new(RefCell::new(Cart::default()));
    let s = state.clone();
    ctx.on_query(ITEMS, move |()| s.borrow().items.clone());
    let s = state.clone();
    ctx.on_query(TOTAL, move |()| s.borrow().total);
    let s = state.clone();
    ctx.on_update(ADD, move |ctx, item: Item| {
        let s = s.clone();
        async move {
            let each = ctx.call(price, &item.sku).await?;
            let mut cart = s.borrow_mut();
            cart.total += each * u64::from(item.qty);
            cart.items.push(item.sku);
            Ok(cart.total)
        }
    })
    .validate(|item| {
        if item.qty == 0 {
            Err(format!("add at least one `{}`", item.sku))
        } else {
            Ok(())
        }
    });
    let s = state.clone();
    ctx.on_update(NOTE, move |_ctx, note: String| {
        let s = s.clone();
        async move {
            s.borrow_mut().note = note;
            Ok(s.borrow().note.len())
        }
    });
    let c = ctx.clone();
    ctx.on_query(SNEAKY, move |()| c.random());
    ctx.on_update(BREAK, |_ctx, ()| async {
        Err::<(), _>(OrchestrationError::Failed("broken on purpose".into()))
    });
    ctx.wait_for(CHECKOUT).await?;
    let total = state.borrow().total;
    Ok(total)
}

async fn env() -> TestEnv {
    TestEnv::new(Registry::new().register(cart).register(price))
        .await
        .unwrap()
}

async fn started(env: &TestEnv, id: &str) {
    cart::start(env.client(), id, &()).await.unwrap();
    env.run_until_idle().await.unwrap();
}

async fn history(env: &TestEnv, id: &str) -> Vec<HistoryEvent> {
    env.client()
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

fn kinds(events: &[HistoryEvent]) -> Vec<&'static str> {
    events.iter().map(HistoryEvent::kind).collect()
}

#[tokio::test]
async fn an_update_runs_its_activity_is_recorded_and_replays_and_a_query_reads_the_result() {
    let env = env().await;
    started(&env, "cart-1").await;
    let client = env.client();
    assert_eq!(
        client.query("cart-1", ITEMS, &()).await.unwrap(),
        Vec::<String>::new()
    );
    let before = history(&env, "cart-1").await;

    let item = Item {
        sku: "socks".into(),
        qty: 3,
    };
    assert_eq!(client.update("cart-1", ADD, &item).await.unwrap(), 1500);
    assert_eq!(
        client
            .update("cart-1", NOTE, &"gift".to_string())
            .await
            .unwrap(),
        4
    );

    let after = history(&env, "cart-1").await;
    assert_eq!(
        kinds(&after[before.len()..]),
        [
            "UpdateAccepted",
            "ActivityScheduled",
            "ActivityCompleted",
            "UpdateCompleted",
            "UpdateAccepted",
            "UpdateCompleted"
        ]
    );
    let HistoryEvent::UpdateAccepted { name, payload, .. } = &after[before.len()] else {
        unreachable!()
    };
    assert_eq!(
        (name.as_str(), payload.decode::<Item>().unwrap()),
        ("add", item)
    );

    // Queries record nothing.
    assert_eq!(client.query("cart-1", ITEMS, &()).await.unwrap(), ["socks"]);
    assert_eq!(client.query("cart-1", TOTAL, &()).await.unwrap(), 1500);
    assert_eq!(history(&env, "cart-1").await.len(), after.len());

    // The history, updates and all, replays against the code.
    let recorded = client.history("cart-1").await.unwrap();
    let report = Replayer::new(Registry::new().register(cart).register(price))
        .replay(&recorded)
        .unwrap();
    assert!(report.is_ok(), "{report:?}");

    // The run goes on where the updates left it.
    client.signal("cart-1", "checkout", &()).await.unwrap();
    assert_eq!(client.result::<u64>("cart-1").await.unwrap(), 1500);
    // A query of an ended instance answers from its final state.
    assert_eq!(client.query("cart-1", TOTAL, &()).await.unwrap(), 1500);
}

#[tokio::test]
async fn a_rejected_update_or_an_unknown_name_is_refused_and_leaves_no_trace() {
    let env = env().await;
    started(&env, "cart-2").await;
    let client = env.client();
    let before = history(&env, "cart-2").await;

    let zero = Item {
        sku: "hat".into(),
        qty: 0,
    };
    match client.update("cart-2", ADD, &zero).await {
        Err(ClientError::Rejected { id, reason }) => {
            assert_eq!(id, "cart-2");
            assert_eq!(reason, "add at least one `hat`");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    const NOPE: Update<(), ()> = Update::new("nope");
    match client.update("cart-2", NOPE, &()).await {
        Err(ClientError::Rejected { reason, .. }) => assert_eq!(
            reason,
            "the orchestration has no update `nope` (it declares: add, break, note)"
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }
    const WHAT: Query<(), u32> = Query::new("what");
    match client.query("cart-2", WHAT, &()).await {
        Err(ClientError::Rejected { reason, .. }) => assert_eq!(
            reason,
            "the orchestration has no query `what` (it declares: items, sneaky, total)"
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }
    // An argument of the wrong shape is refused by the validator's decoding, not applied.
    let wrong = quark_history::Payload::json(&serde_json::json!({"sku": 7})).unwrap();
    match client
        .update_payload("cart-2", "u-wrong", "add", wrong)
        .await
    {
        Err(ClientError::Rejected { reason, .. }) => {
            assert!(
                reason.starts_with("the update's argument cannot be decoded"),
                "{reason}"
            )
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        history(&env, "cart-2").await,
        before,
        "nothing was recorded"
    );
    assert_eq!(client.query("cart-2", TOTAL, &()).await.unwrap(), 0);
}

#[tokio::test]
async fn an_update_sent_twice_under_one_id_applies_once() {
    let env = env().await;
    started(&env, "cart-3").await;
    let client = env.client();
    let item = Item {
        sku: "scarf".into(),
        qty: 1,
    };
    let first = client
        .update_with_id("cart-3", "add-scarf", ADD, &item)
        .await
        .unwrap();
    let again = client
        .update_with_id("cart-3", "add-scarf", ADD, &item)
        .await
        .unwrap();
    assert_eq!((first, again), (500, 500));
    let accepted = history(&env, "cart-3")
        .await
        .iter()
        .filter(|e| matches!(e, HistoryEvent::UpdateAccepted { .. }))
        .count();
    assert_eq!(accepted, 1);
    assert_eq!(client.query("cart-3", ITEMS, &()).await.unwrap(), ["scarf"]);
}

#[tokio::test]
async fn a_failing_handler_fails_its_update_not_the_instance_and_an_ended_instance_takes_none() {
    let env = env().await;
    started(&env, "cart-4").await;
    let client = env.client();
    match client.update("cart-4", BREAK, &()).await {
        Err(ClientError::UpdateFailed { failure, .. }) => {
            assert_eq!(failure.message, "broken on purpose")
        }
        other => panic!("expected the update to fail, got {other:?}"),
    }
    assert_eq!(
        client
            .update("cart-4", NOTE, &"ok".to_string())
            .await
            .unwrap(),
        2
    );
    client.signal("cart-4", "checkout", &()).await.unwrap();
    assert_eq!(client.result::<u64>("cart-4").await.unwrap(), 0);
    let ended = history(&env, "cart-4").await;
    match client.update("cart-4", NOTE, &"late".to_string()).await {
        Err(ClientError::Rejected { reason, .. }) => {
            assert!(reason.contains("has ended"), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(history(&env, "cart-4").await, ended);
    match client.query("nobody", TOTAL, &()).await {
        Err(ClientError::NotFound(id)) => assert_eq!(id, "nobody"),
        other => panic!("expected not found, got {other:?}"),
    }
}

fn replays(env: &TestEnv) -> usize {
    env.run_events()
        .iter()
        .filter(|e| matches!(e, quark_workflow::runner::RunEvent::Replayed(_)))
        .count()
}

#[tokio::test]
async fn a_warm_run_answers_a_query_without_replaying_and_a_cold_one_replays() {
    let warm = env().await;
    started(&warm, "cart-5").await;
    warm.client()
        .update("cart-5", NOTE, &"hi".to_string())
        .await
        .unwrap();
    // The update's commit moved the history past the warm run: the next turn catches it up.
    warm.client().signal("cart-5", "nudge", &()).await.unwrap();
    warm.run_until_idle().await.unwrap();
    let before = replays(&warm);
    assert_eq!(warm.client().query("cart-5", TOTAL, &()).await.unwrap(), 0);
    assert_eq!(replays(&warm), before, "answered by the warm run");

    let limits = quark_workflow::WarmLimits {
        instances: 0,
        ..Default::default()
    };
    let cold = TestEnv::with_limits(
        Registry::new().register(cart).register(price),
        limits,
        quark_workflow::HistoryWarning::default(),
    )
    .await
    .unwrap();
    started(&cold, "cart-6").await;
    let before = replays(&cold);
    assert_eq!(
        cold.client().query("cart-6", ITEMS, &()).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        replays(&cold),
        before + 1,
        "nothing warm: the query replayed"
    );
}

#[tokio::test]
async fn a_query_that_would_record_something_is_refused_and_a_changed_update_result_diverges() {
    let env = env().await;
    started(&env, "cart-7").await;
    let client = env.client();
    let before = history(&env, "cart-7").await;
    match client.query("cart-7", SNEAKY, &()).await {
        Err(ClientError::Rejected { reason, .. }) => {
            assert!(reason.contains("cannot draw random values"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nothing was kept for the next turn to commit.
    client
        .update("cart-7", NOTE, &"n".to_string())
        .await
        .unwrap();
    let after = history(&env, "cart-7").await;
    assert_eq!(
        kinds(&after[before.len()..]),
        ["UpdateAccepted", "UpdateCompleted"]
    );

    // A replay whose handler ends the update otherwise than recorded is a divergence.
    let mut recorded = client.history("cart-7").await.unwrap();
    let last = recorded.len() - 1;
    if let HistoryEvent::UpdateCompleted { result, .. } = &mut recorded[last].event {
        *result = Ok(quark_history::Payload::json(&99).unwrap());
    }
    let report = Replayer::new(Registry::new().register(cart).register(price))
        .replay(&recorded)
        .unwrap();
    match report {
        quark_workflow::ReplayReport::Diverged(d) => {
            assert!(d.error.to_string().contains("ends update"), "{d}")
        }
        other => panic!("expected a divergence, got {other:?}"),
    }
}
