//! Bad input through the `quark` command line and the client: each is a clear error to the caller,
//! and nothing in the database changes. Runs on both backends.

use std::sync::Arc;

use quark_history::testing::TestStore;
use quark_history::{HistoryEvent, HistoryRange, InstanceFilter, QueueStats, Store};
use quark_worker::cli::{Command, WorkflowCommand, run_on};
use quark_workflow::Client;

quark_history::backend_tests!(it_refuses_bad_starts_and_bad_signals_and_changes_nothing);

/// Everything an operator could see: instances, their histories, the queue.
async fn snapshot(store: &dyn Store) -> String {
    let mut out = String::new();
    let instances = store
        .list_instances(InstanceFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    for i in instances {
        let history = store.read_history(&i.id, HistoryRange::All).await.unwrap();
        out += &format!(
            "{} {} {:?}\n",
            i.id,
            i.status,
            history.iter().map(|e| e.event.kind()).collect::<Vec<_>>()
        );
    }
    let QueueStats {
        pending,
        leased,
        dead,
        held,
        paused,
    } = store.queue_stats("default").await.unwrap();
    out + &format!("queue {pending}/{leased}/{dead}/{held}/{paused}")
}

async fn cli(t: &TestStore, command: WorkflowCommand) -> anyhow::Result<String> {
    let mut out = Vec::new();
    run_on(
        Arc::clone(&t.store),
        Command::Workflow(command),
        quark_worker::cli::Output::Table,
        Some(quark_tests::registry()),
        &mut out,
    )
    .await?;
    Ok(String::from_utf8(out).unwrap())
}

async fn it_refuses_bad_starts_and_bad_signals_and_changes_nothing(t: &TestStore) {
    let client = Client::new(Arc::clone(&t.store));
    // One finished instance and one waiting on its timer, to have something to break.
    let start = |id: &str| WorkflowCommand::Start {
        instance_type: "crash_order".into(),
        id: id.into(),
        input: "1".into(),
        queue: Some("default".into()),
    };
    assert_eq!(
        cli(t, start("live")).await.unwrap(),
        "started live (crash_order)\n"
    );
    t.store
        .commit(quark_history::Commit::new().append(
            "live",
            quark_history::Expected::Any,
            [HistoryEvent::WorkflowCompleted {
                output: quark_history::Payload::json(&5).unwrap(),
            }],
        ))
        .await
        .unwrap();
    cli(t, start("other")).await.unwrap();
    let before = snapshot(&*t.store).await;

    let unknown = WorkflowCommand::Start {
        instance_type: "no_such_thing".into(),
        id: "x".into(),
        input: "1".into(),
        queue: Some("default".into()),
    };
    let e = cli(t, unknown).await.unwrap_err().to_string();
    assert!(
        e.contains("no orchestration `no_such_thing`") && e.contains("nothing was started"),
        "{e}"
    );

    let malformed = WorkflowCommand::Start {
        instance_type: "crash_order".into(),
        id: "y".into(),
        input: "{not json".into(),
        queue: Some("default".into()),
    };
    let e = format!("{:#}", cli(t, malformed).await.unwrap_err());
    assert!(e.contains("the input is not valid JSON"), "{e}");

    let e = format!("{:#}", cli(t, start("other")).await.unwrap_err());
    assert!(e.contains("instance `other` already exists"), "{e}");

    let e = client
        .signal("live", "approve", &true)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("instance `live` is completed"), "{e}");

    let e = client
        .signal("nobody", "approve", &true)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nobody"), "{e}");

    let huge = "x".repeat(3 * 1024 * 1024);
    let e = client
        .signal("other", "blob", &huge)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is over the limit of 2097152 bytes"), "{e}");

    let e = format!(
        "{:#}",
        cli(
            t,
            WorkflowCommand::Signal {
                id: "other".into(),
                name: "s".into(),
                value: "nope".into()
            }
        )
        .await
        .unwrap_err()
    );
    assert!(e.contains("not valid JSON"), "{e}");

    assert_eq!(snapshot(&*t.store).await, before, "nothing changed");
}
