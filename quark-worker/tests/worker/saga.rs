//! Sagas on the worker runtime, on both backends: compensations run newest first and leave their
//! mark outside the engine, and a stuck saga shows in `quark saga stuck`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::InstanceStatus;
use quark_history::testing::TestStore;
use quark_worker::Worker;
use quark_worker::cli::{Command, Output, SagaCommand, run_on};
use quark_workflow::{
    ActivityContext, ActivityError, Client, ClientError, OrchestrationContext, OrchestrationError,
    Registry, RetryPolicy, activity, orchestration,
};

quark_history::backend_tests!(
    it_undoes_two_steps_newest_first_when_the_third_fails,
    it_lists_a_stuck_saga_on_the_command_line,
);

/// The world outside the engine: what the activities did, as `action:booking`. Tests on both
/// backends share the process, so every booking is named after its instance.
static LEDGER: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn ledger(prefix: &str) -> Vec<String> {
    let ledger = LEDGER.lock().unwrap_or_else(|e| e.into_inner());
    ledger
        .iter()
        .filter(|l| l.contains(prefix))
        .cloned()
        .collect()
}

fn record(line: String) {
    LEDGER.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

#[activity]
async fn reserve(_ctx: ActivityContext, id: String) -> Result<String, ActivityError> {
    record(format!("reserve:stock-{id}"));
    Ok(format!("stock-{id}"))
}

#[activity]
async fn release(_ctx: ActivityContext, reservation: String) -> Result<(), ActivityError> {
    record(format!("release:{reservation}"));
    Ok(())
}

#[activity]
async fn book(_ctx: ActivityContext, id: String) -> Result<String, ActivityError> {
    record(format!("book:shipment-{id}"));
    Ok(format!("shipment-{id}"))
}

// The carrier's API rejects cancellations for ids ending in `-stuck`.
#[activity(retry(max_attempts = 2, initial = "1s", max = "1s"))]
async fn cancel_booking(_ctx: ActivityContext, shipment: String) -> Result<(), ActivityError> {
    if shipment.ends_with("-stuck") {
        return Err(ActivityError::message(format!(
            "carrier refuses to cancel {shipment}"
        )));
    }
    record(format!("cancel:{shipment}"));
    Ok(())
}

#[activity]
async fn charge(_ctx: ActivityContext, id: String) -> Result<String, ActivityError> {
    Err(ActivityError::message(format!("card declined for {id}")).terminal())
}

#[orchestration]
async fn checkout(ctx: OrchestrationContext, id: String) -> Result<String, OrchestrationError> {
    ctx.saga()
        .compensation_retry(RetryPolicy::new(
            2,
            Duration::from_secs(5),
            Duration::from_secs(5),
        ))
        .run(|saga| async move {
            let reservation = ctx.call(reserve, &id).await?;
            saga.add(release, &reservation)?;
            let shipment = saga.step(book, &id, cancel_booking, |s| s.clone()).await?;
            let payment = ctx.call(charge, &id).await?;
            Ok(format!("{reservation}, {shipment}, {payment}"))
        })
        .await
}

fn worker(t: &TestStore) -> Worker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        .workflows(
            Registry::new()
                .register(checkout)
                .register(reserve)
                .register(release)
                .register(book)
                .register(cancel_booking)
                .register(charge),
        )
        .build()
        .unwrap()
}

async fn it_undoes_two_steps_newest_first_when_the_third_fails(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let id = format!("{}-order", t.store.backend());
    let handle = checkout::start(&client, &id, id.clone()).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .unwrap();
    match result {
        Err(ClientError::Failed { failure, .. }) => assert_eq!(
            failure.message,
            format!("activity `charge` failed: card declined for {id}")
        ),
        other => panic!("expected the charge's failure, got {other:?}"),
    }
    assert_eq!(
        ledger(&id),
        [
            format!("reserve:stock-{id}"),
            format!("book:shipment-{id}"),
            format!("cancel:shipment-{id}"),
            format!("release:stock-{id}"),
        ]
    );
    assert!(t.store.verify(&id).await.unwrap().is_intact());
    running.shutdown().await;
}

async fn it_lists_a_stuck_saga_on_the_command_line(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    // A saga that failed without getting stuck, which the listing must leave out.
    let fine = format!("{}-fine", t.store.backend());
    let stuck = format!("{}-stuck", t.store.backend());
    checkout::start(&client, &fine, fine.clone()).await.unwrap();
    checkout::start(&client, &stuck, stuck.clone())
        .await
        .unwrap();
    // Retries wait on the store's clock: move it until both have failed.
    t.advance_until(Duration::from_secs(1), "both sagas failed", async || {
        let mut failed = 0;
        for id in [&fine, &stuck] {
            let r = t.store.get_instance(id).await.unwrap().unwrap();
            failed += usize::from(r.status == InstanceStatus::Failed);
        }
        failed == 2
    })
    .await;
    // The saga stopped at the stuck cancellation: the stock stays reserved for a person to see.
    assert_eq!(
        ledger(&stuck),
        [
            format!("reserve:stock-{stuck}"),
            format!("book:shipment-{stuck}"),
        ]
    );

    let json = quark(t, Output::Json).await;
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{json}");
    let row = &rows[0];
    assert_eq!(row["instance_id"], stuck.as_str());
    assert_eq!(row["instance_type"], "checkout");
    assert_eq!(row["compensation"], "cancel_booking");
    assert_eq!(row["input"], format!("shipment-{stuck}").as_str());
    assert_eq!(row["attempts"], 2);
    assert_eq!(
        row["last_error"],
        format!("carrier refuses to cancel shipment-{stuck}").as_str()
    );
    assert_eq!(row["skipped"], serde_json::json!(["release"]));

    let table = quark(t, Output::Table).await;
    assert!(table.contains(&stuck), "{table}");
    assert!(!table.contains(&fine), "{table}");
    assert!(table.contains("cancel_booking"), "{table}");
    assert!(table.contains("1 stuck saga(s)"), "{table}");

    // The API lists the same.
    use quark_worker::service::proto::{self, saga_service_client::SagaServiceClient};
    let api = crate::service::api(t, quark_worker::service::ServiceOptions::default()).await;
    let bearer = crate::service::Bearer::issue(t, quark_history::Scope::Read).await;
    let listed = SagaServiceClient::with_interceptor(api.channel.clone(), bearer)
        .list_stuck_sagas(proto::ListStuckSagasRequest {
            workflow_type: "checkout".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sagas;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let saga = &listed[0];
    assert_eq!(
        (
            saga.instance_id.as_str(),
            saga.compensation.as_str(),
            saga.attempts,
            saga.skipped.clone()
        ),
        (
            stuck.as_str(),
            "cancel_booking",
            2,
            vec!["release".to_string()]
        )
    );
    assert_eq!(
        saga.input_json,
        serde_json::json!(format!("shipment-{stuck}")).to_string()
    );

    // The command line through the server prints what it prints on the database.
    let token =
        quark_worker::service::auth::issue(&*t.store, "ops", quark_history::Scope::Read, None)
            .await
            .unwrap()
            .token;
    let through = crate::service_remote::quark(
        [
            "--server", &api.url, "--token", &token, "-o", "json", "saga", "stuck",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    )
    .await;
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    assert_eq!(
        String::from_utf8(through.stdout).unwrap(),
        quark(t, Output::Json).await
    );
    running.shutdown().await;
}

async fn quark(t: &TestStore, output: Output) -> String {
    let mut out = Vec::new();
    let command = Command::Saga(SagaCommand::Stuck {
        instance_type: None,
        limit: 50,
        scan: 10_000,
    });
    run_on(Arc::clone(&t.store), command, output, None, &mut out)
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn the_command_line_parses_saga_stuck() {
    use clap::Parser;
    let cli = quark_worker::cli::Cli::try_parse_from([
        "quark", "saga", "stuck", "--type", "checkout", "--limit", "5", "--output", "json",
    ])
    .unwrap();
    match cli.command {
        Command::Saga(SagaCommand::Stuck {
            instance_type,
            limit,
            scan,
        }) => {
            assert_eq!(instance_type.as_deref(), Some("checkout"));
            assert_eq!((limit, scan), (5, 10_000));
            assert_eq!(cli.output, Output::Json);
        }
        other => panic!("parsed as {other:?}"),
    }
}
