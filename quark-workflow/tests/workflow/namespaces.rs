//! An instance of a namespace (`acme::...`) keeps its work in it: a child started under a plain
//! id, an instance signalled by a plain id and an activity's own queue are its namespace's. An
//! instance of no namespace is unchanged.

use quark_history::HistoryEvent;
use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry, Signal,
    StartOptions, activity, orchestration,
};

const PING: Signal<u32> = Signal::new("ping");

#[activity(queue = "payments")]
async fn pay(_ctx: ActivityContext, cents: u32) -> Result<u32, ActivityError> {
    Ok(cents * 2)
}

#[orchestration]
async fn kid(_ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    Ok(n + 1)
}

#[orchestration]
async fn listener(ctx: OrchestrationContext, _: ()) -> Result<u32, OrchestrationError> {
    ctx.wait_for(PING).await
}

#[orchestration]
async fn parent(ctx: OrchestrationContext, _: ()) -> Result<u32, OrchestrationError> {
    let paid = ctx.call(pay, &5).await?;
    let born = ctx.call_child_with_id(kid, "kid", &paid).await?;
    ctx.send("listener", PING, &born)?;
    Ok(born)
}

/// Runs `{prefix}parent` on `queue` beside the listener it signals, `{listener_prefix}listener`.
async fn run(env: &TestEnv, prefix: &str, queue: &str, listener_prefix: &str) -> Vec<HistoryEvent> {
    let client = env.client();
    let queue = queue.to_string();
    for (id, start) in [("listener", true), ("parent", false)] {
        let id = match start {
            true => format!("{listener_prefix}{id}"),
            false => format!("{prefix}{id}"),
        };
        let options = StartOptions::default().queue(queue.clone());
        if start {
            client
                .start_with::<listener>(id, &(), options)
                .await
                .unwrap();
        } else {
            client.start_with::<parent>(id, &(), options).await.unwrap();
        }
    }
    assert_eq!(
        client
            .result::<u32>(&format!("{prefix}parent"))
            .await
            .unwrap(),
        11
    );
    assert_eq!(
        client
            .result::<u32>(&format!("{listener_prefix}listener"))
            .await
            .unwrap(),
        11
    );
    client
        .history(&format!("{prefix}parent"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

fn where_it_went(history: &[HistoryEvent]) -> (String, String, String) {
    let mut found = (String::new(), String::new(), String::new());
    for e in history {
        match e {
            HistoryEvent::ActivityScheduled { queue, .. } => found.0 = queue.clone(),
            HistoryEvent::ChildStarted { instance_id, .. } => found.1 = instance_id.clone(),
            HistoryEvent::SignalSent { instance_id, .. } => found.2 = instance_id.clone(),
            _ => {}
        }
    }
    found
}

#[tokio::test]
async fn an_instance_of_a_namespace_keeps_its_children_signals_and_activities_in_it() {
    let registry = || {
        Registry::new()
            .register(pay)
            .register(kid)
            .register(listener)
            .register(parent)
    };
    let env = TestEnv::new(registry()).await.unwrap();
    env.serve("acme::default");
    env.serve("acme::payments");
    let history = run(&env, "acme::", "acme::default", "acme::").await;
    assert_eq!(
        where_it_went(&history),
        (
            "acme::payments".into(),
            "acme::kid".into(),
            "acme::listener".into()
        )
    );

    let plain = TestEnv::new(registry()).await.unwrap();
    let history = run(&plain, "", "default", "").await;
    assert_eq!(
        where_it_went(&history),
        ("payments".into(), "kid".into(), "listener".into())
    );

    // An id named with `::` before namespaces, on a queue of no namespace: not a namespace's run,
    // so its commands are the ones its history recorded before.
    let legacy = TestEnv::new(registry()).await.unwrap();
    let history = run(&legacy, "billing::", "default", "").await;
    assert_eq!(
        where_it_went(&history),
        ("payments".into(), "kid".into(), "listener".into())
    );
}
