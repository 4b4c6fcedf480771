//! Reading workflows through the API, on both backends: a history streamed, and followed to the
//! instance's end; instances paged through with filters.

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{HistoryEvent, HistoryRange};
use quark_worker::service::ServiceOptions;
use quark_worker::service::proto::{self, WorkflowStatus};

use crate::service::{api, signal, start, worker};

/// A request to follow `id`'s history from its first event.
fn following(id: &str) -> proto::GetWorkflowHistoryRequest {
    proto::GetWorkflowHistoryRequest {
        instance_id: id.into(),
        after_seq: 0,
        follow: true,
    }
}

quark_history::backend_tests!(
    it_streams_a_history_and_follows_it_to_the_end,
    it_pages_through_workflows_with_filters,
);

async fn it_streams_a_history_and_follows_it_to_the_end(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let mut api = api(t, ServiceOptions::default()).await;
    api.client
        .start_workflow(start("greet", "h-1", serde_json::json!("Lin")))
        .await
        .unwrap();
    // Following from the start: the stream stays open while the instance waits for its signal.
    let mut follower = api.client.clone();
    let followed = tokio::spawn(async move {
        let mut stream = follower
            .get_workflow_history(following("h-1"))
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while let Some(e) = stream.message().await.unwrap() {
            events.push(e);
        }
        events
    });
    api.client
        .signal_workflow(signal("h-1", "polite", serde_json::json!(false)))
        .await
        .unwrap();
    let events = tokio::time::timeout(Duration::from_secs(30), followed)
        .await
        .expect("the followed history ends when the instance does")
        .unwrap();
    let stored = t
        .store
        .read_history("h-1", HistoryRange::All)
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        stored.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    assert_eq!(
        events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        stored.iter().map(|e| e.event.kind()).collect::<Vec<_>>()
    );
    assert!(matches!(
        stored.last().unwrap().event,
        HistoryEvent::WorkflowCompleted { .. }
    ));
    assert_eq!(events.last().unwrap().hash, stored.last().unwrap().hash);
    let signalled: serde_json::Value = events
        .iter()
        .find(|e| e.kind == "SignalReceived")
        .map(|e| serde_json::from_str(&e.detail_json).unwrap())
        .unwrap();
    assert_eq!(signalled["SignalReceived"]["name"], "polite", "{signalled}");

    // Without following, from a position: what is stored after it, then the end of the stream.
    let mut stream = api
        .client
        .get_workflow_history(proto::GetWorkflowHistoryRequest {
            instance_id: "h-1".into(),
            after_seq: 2,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut tail = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        tail.push(e.seq);
    }
    assert_eq!(tail, (3..=stored.len() as u64).collect::<Vec<_>>());
    running.shutdown().await;
}

async fn it_pages_through_workflows_with_filters(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let mut api = api(t, ServiceOptions::default()).await;
    for i in 0..5 {
        api.client
            .start_workflow(start("greet", &format!("p-{i}"), serde_json::json!("P")))
            .await
            .unwrap();
        // Creation times differ, so that the order (newest first) is known.
        t.clock.advance(Duration::from_millis(1));
    }
    for id in ["p-1", "p-3"] {
        api.client
            .terminate_workflow(proto::TerminateWorkflowRequest {
                instance_id: id.into(),
                reason: "test".into(),
            })
            .await
            .unwrap();
    }
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .client
            .list_workflows(proto::ListWorkflowsRequest {
                workflow_type: "greet".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(
            page.workflows
                .iter()
                .map(|w| w.instance_id.clone())
                .collect::<Vec<_>>(),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        pages,
        vec![
            vec!["p-4".to_string(), "p-3".into()],
            vec!["p-2".into(), "p-1".into()],
            vec!["p-0".into()]
        ]
    );
    let running_ones = api
        .client
        .list_workflows(proto::ListWorkflowsRequest {
            statuses: vec![WorkflowStatus::Running as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workflows;
    let mut ids: Vec<_> = running_ones
        .iter()
        .map(|w| w.instance_id.as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["p-0", "p-2", "p-4"]);
    let prefixed = api
        .client
        .list_workflows(proto::ListWorkflowsRequest {
            id_prefix: "p-3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .workflows;
    assert_eq!(
        prefixed
            .iter()
            .map(|w| w.instance_id.as_str())
            .collect::<Vec<_>>(),
        ["p-3"]
    );
    let none = api
        .client
        .list_workflows(proto::ListWorkflowsRequest {
            workflow_type: "doomed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.workflows.is_empty() && none.next_page_token.is_empty());
    running.shutdown().await;
}

quark_history::backend_tests!(it_stops_within_its_grace_while_a_history_is_followed);

/// A followed history of a workflow that waits for days does not hold a server that is told to
/// stop: past its grace, the server returns.
async fn it_stops_within_its_grace_while_a_history_is_followed(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(quark_worker::service::serve(
        std::sync::Arc::clone(&t.store),
        listener,
        ServiceOptions::default()
            .authenticate(false)
            .shutdown_grace(Duration::from_millis(200)),
        async {
            let _ = stopped.await;
        },
    ));
    let mut client =
        quark_worker::service::proto::workflow_service_client::WorkflowServiceClient::connect(
            format!("http://{addr}"),
        )
        .await
        .unwrap();
    client
        .start_workflow(start("greet", "waits", serde_json::json!("Ann")))
        .await
        .unwrap();
    let mut stream = client
        .get_workflow_history(following("waits"))
        .await
        .unwrap()
        .into_inner();
    // The stored events arrive; then the stream waits for more.
    assert!(stream.message().await.unwrap().is_some());
    stop.send(()).unwrap();
    let served = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server returns after its grace, not when the workflow ends");
    served.unwrap().unwrap();
    running.shutdown().await;
}
