//! Queries and updates through the API, on both backends: the server has no workflow code and a
//! worker answers; a refusal is FAILED_PRECONDITION and records nothing; the remote client's
//! typed handles ask and update as the in-process client's do.

use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{HistoryRange, Scope};
use quark_worker::service::proto;
use quark_worker::service::{RemoteClient, ServiceOptions, serve};
use quark_workflow::{Client, ClientError, WorkflowClient};
use tonic::Code;

use crate::service::{ADD, COUNT, api, json, start, tally, worker};

quark_history::backend_tests!(
    it_queries_and_updates_through_the_api_and_refuses_clearly,
    it_queries_and_updates_with_typed_handles_over_the_remote_client,
);

fn query(id: &str, name: &str) -> proto::QueryWorkflowRequest {
    proto::QueryWorkflowRequest {
        instance_id: id.into(),
        name: name.into(),
        input: None,
    }
}

fn update(id: &str, name: &str, n: u32, update_id: &str) -> proto::UpdateWorkflowRequest {
    proto::UpdateWorkflowRequest {
        instance_id: id.into(),
        name: name.into(),
        input: json(&serde_json::json!(n)),
        update_id: update_id.into(),
    }
}

fn number(p: Option<proto::Payload>) -> u32 {
    serde_json::from_slice(&p.unwrap().data).unwrap()
}

async fn events(t: &TestStore, id: &str) -> usize {
    t.store
        .read_history(id, HistoryRange::All)
        .await
        .unwrap()
        .len()
}

async fn it_queries_and_updates_through_the_api_and_refuses_clearly(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let mut api = api(t, ServiceOptions::default()).await;
    let within = Duration::from_secs(20);
    api.client
        .start_workflow(start("tally", "tally-1", serde_json::json!(5)))
        .await
        .unwrap();
    let counted =
        tokio::time::timeout(within, api.client.query_workflow(query("tally-1", "count")))
            .await
            .unwrap()
            .unwrap()
            .into_inner();
    assert_eq!(number(counted.answer), 5);

    let updated = tokio::time::timeout(
        within,
        api.client.update_workflow(update("tally-1", "add", 3, "")),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(number(updated.result), 8);
    assert!(!updated.update_id.is_empty(), "the server made an id");
    assert!(updated.error.is_empty());
    // Sent again under its id, the update is not applied again.
    let again = api
        .client
        .update_workflow(update("tally-1", "add", 3, &updated.update_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (number(again.result), &again.update_id),
        (8, &updated.update_id)
    );

    // Refusals record nothing.
    let before = events(t, "tally-1").await;
    let refusals = [
        (
            update("tally-1", "add", 0, ""),
            Code::FailedPrecondition,
            "add a positive amount",
        ),
        (
            update("tally-1", "subtract", 1, ""),
            Code::FailedPrecondition,
            "the orchestration has no update `subtract` (it declares: add)",
        ),
        (update("tally-1", "", 1, ""), Code::InvalidArgument, "name"),
        (
            update("nobody", "add", 1, ""),
            Code::NotFound,
            "no workflow instance `nobody`",
        ),
        (
            update("tally-1", "add", 1, &"u".repeat(257)),
            Code::InvalidArgument,
            "update_id: 257 bytes",
        ),
    ];
    for (request, code, says) in refusals {
        let e = tokio::time::timeout(within, api.client.update_workflow(request))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(says), "{e:?}");
    }
    let e = api
        .client
        .query_workflow(query("tally-1", "mood"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("no query `mood` (it declares: count)"),
        "{e:?}"
    );
    assert_eq!(events(t, "tally-1").await, before, "nothing was recorded");

    // An ended instance answers queries from its final state and takes no updates.
    api.client
        .signal_workflow(crate::service::signal(
            "tally-1",
            "stop",
            serde_json::Value::Null,
        ))
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&t.store));
    assert_eq!(
        tokio::time::timeout(within, client.result::<u32>("tally-1"))
            .await
            .unwrap()
            .unwrap(),
        8
    );
    let counted = api
        .client
        .query_workflow(query("tally-1", "count"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(number(counted.answer), 8);
    let e = api
        .client
        .update_workflow(update("tally-1", "add", 1, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("has ended"), "{e:?}");
    // An update it completed before it ended, sent again under its id, still answers.
    let late = api
        .client
        .update_workflow(update("tally-1", "add", 3, &again.update_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(number(late.result), 8);
    running.shutdown().await;
}

async fn remote(t: &TestStore) -> RemoteClient {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        Arc::clone(&t.store),
        listener,
        ServiceOptions::default(),
        std::future::pending(),
    ));
    let token = quark_worker::service::auth::issue(&*t.store, "remote", Scope::Write, None)
        .await
        .unwrap()
        .token;
    RemoteClient::connect(&format!("http://{addr}"), Some(&token), None)
        .await
        .unwrap()
}

/// The same code for either client: adds `n` twice (once refused), then reads the count.
async fn add_and_count(client: &impl WorkflowClient, id: &str) -> (u32, u32) {
    let handle = tally::start(client, id, &1).await.unwrap();
    let added = handle.update(ADD, &4).await.unwrap();
    match handle.update(ADD, &0).await {
        Err(ClientError::Rejected { id: who, reason }) => {
            assert_eq!(
                (who.as_str(), reason.as_str()),
                (id, "add a positive amount")
            )
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    (added, handle.query(COUNT, &()).await.unwrap())
}

async fn it_queries_and_updates_with_typed_handles_over_the_remote_client(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let remote = remote(t).await;
    let local = Client::new(Arc::clone(&t.store));
    let within = Duration::from_secs(20);
    let over_api = tokio::time::timeout(within, add_and_count(&remote, "tally-api"))
        .await
        .unwrap();
    let over_db = tokio::time::timeout(within, add_and_count(&local, "tally-db"))
        .await
        .unwrap();
    assert_eq!((over_api, over_db), ((5, 5), (5, 5)));
    assert_eq!(events(t, "tally-api").await, events(t, "tally-db").await);
    running.shutdown().await;
}
