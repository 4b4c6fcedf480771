//! `quark outbox ...` against a real store.

use std::sync::Arc;

use quark_history::testing::TestStore;
use quark_history::{Delivery, MessageState, OutboxClaim, OutboxFilter};
use quark_worker::cli::{Command, OutboxCommand, Output, run_on};

async fn quark(t: &TestStore, command: Command) -> anyhow::Result<String> {
    quark_as(t, Output::Table, command).await
}

async fn quark_as(t: &TestStore, output: Output, command: Command) -> anyhow::Result<String> {
    let mut out = Vec::new();
    run_on(Arc::clone(&t.store), command, output, None, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

fn list(state: Option<&str>) -> Command {
    Command::Outbox(OutboxCommand::List {
        state: state.map(Into::into),
        key: None,
        limit: 50,
    })
}

quark_history::backend_tests!(it_lists_and_redrives_outbox_messages_from_the_command_line);

async fn it_lists_and_redrives_outbox_messages_from_the_command_line(t: &TestStore) {
    let bad = quark(
        t,
        Command::Outbox(OutboxCommand::Send {
            destination: "smtp:someone".into(),
            payload: "1".into(),
            key: None,
            idempotency_key: None,
        }),
    )
    .await;
    assert!(bad.unwrap_err().to_string().contains("unknown kind"));
    // A command that writes says what it wrote in JSON too: a script reads the message's id.
    let written = quark_as(
        t,
        Output::Json,
        Command::Outbox(OutboxCommand::Send {
            destination: "http:http://127.0.0.1:9/hook".into(),
            payload: r#"{"order": 5}"#.into(),
            key: Some("orders".into()),
            idempotency_key: Some("order-5".into()),
        }),
    )
    .await
    .unwrap();
    let written: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert_eq!(written["action"], "written", "{written}");
    let claimed = t
        .store
        .claim_outbox(OutboxClaim::new("w"))
        .await
        .unwrap()
        .remove(0);
    t.store
        .settle_outbox(
            &claimed.lease,
            Delivery::Dead {
                error: "webhook answered 410".into(),
            },
        )
        .await
        .unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(&quark_as(t, Output::Json, list(Some("dead"))).await.unwrap())
            .unwrap();
    assert_eq!(listed[0]["id"], written["message_id"]);
    assert_eq!(listed[0]["idempotency_key"], "order-5");
    let created = listed[0]["created_at"].as_str().unwrap();
    assert!(
        created.len() == 27 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "RFC 3339: {created}"
    );
    // JSON lines: the same row, alone on its line.
    let lines = quark_as(t, Output::Jsonl, list(Some("dead")))
        .await
        .unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    let line: serde_json::Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(line, listed[0]);
    assert_eq!(listed[0]["ordering_key"], "orders");
    assert_eq!(listed[0]["last_error"], "webhook answered 410");
    assert_eq!(listed[0]["payload"], r#"{"order":5}"#);
    let id = listed[0]["id"].as_i64().unwrap();

    let said = quark(t, Command::Outbox(OutboxCommand::Retry { ids: vec![id] }))
        .await
        .unwrap();
    assert!(said.contains("back in line"), "{said}");
    let pending = t
        .store
        .list_outbox(OutboxFilter::default().state(MessageState::Pending))
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert!(
        quark(t, Command::Outbox(OutboxCommand::Retry { ids: vec![id] }))
            .await
            .is_err()
    );
    let table = quark(
        t,
        Command::Outbox(OutboxCommand::List {
            state: None,
            key: Some("orders".into()),
            limit: 10,
        }),
    )
    .await
    .unwrap();
    assert!(table.contains("http:http://127.0.0.1:9/hook"), "{table}");
}
