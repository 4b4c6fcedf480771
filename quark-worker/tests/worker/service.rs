//! The gRPC API end to end, on both backends: a worker runs the code and registers its types,
//! the API serves the same database over a real socket with no workflow code of its own, and a
//! tonic client drives it. Every refusal is checked to have changed nothing.

use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{HistoryRange, InstanceFilter};
use quark_worker::Worker;
use quark_worker::service::proto::workflow_service_client::WorkflowServiceClient;
use quark_worker::service::proto::{self, WorkflowStatus};
use quark_worker::service::{ServiceOptions, serve};
use quark_workflow::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Query, Registry,
    Update, activity, orchestration,
};
use tonic::Code;
use tonic::transport::Channel;

quark_history::backend_tests!(
    it_starts_signals_and_reads_a_workflow_through_the_api,
    it_reports_how_a_workflow_ended_through_the_api,
    it_refuses_bad_requests_with_a_clear_status_and_changes_nothing,
    it_serves_health_and_reflection,
);

#[activity]
async fn compose(_ctx: ActivityContext, to: (String, bool)) -> Result<String, ActivityError> {
    let (name, polite) = to;
    Ok(if polite {
        format!("Good day, {name}")
    } else {
        format!("hi {name}")
    })
}

/// Waits for `polite`, then greets.
#[orchestration(queue = "greetings", version = 3)]
pub(crate) async fn greet(
    ctx: OrchestrationContext,
    name: String,
) -> Result<String, OrchestrationError> {
    let polite: bool = ctx.wait_for_signal("polite").await?;
    ctx.call(compose, &(name, polite)).await
}

/// Refuses every input, for good: its jobs go to the dead-letter list.
#[activity(retry(max_attempts = 1))]
pub(crate) async fn reject(_ctx: ActivityContext, why: String) -> Result<(), ActivityError> {
    Err(ActivityError::message(why).terminal())
}

/// Fails with a message.
#[orchestration(queue = "greetings")]
pub(crate) async fn doomed(
    _ctx: OrchestrationContext,
    why: String,
) -> Result<(), OrchestrationError> {
    Err(OrchestrationError::failed(why))
}

/// How much the tally holds.
pub(crate) const COUNT: Query<(), u32> = Query::new("count");
/// Adds a positive amount; answers the new count.
pub(crate) const ADD: Update<u32, u32> = Update::new("add");

/// Counts what updates add, until it is signalled `stop`.
#[orchestration(queue = "greetings")]
pub(crate) async fn tally(
    ctx: OrchestrationContext,
    start: u32,
) -> Result<u32, OrchestrationError> {
    let count = std::rc::Rc::new(std::cell::Cell::new(start));
    let c = count.clone();
    ctx.on_query(COUNT, move |()| c.get());
    let c = count.clone();
    ctx.on_update(ADD, move |_ctx, n| {
        let c = c.clone();
        async move {
            c.set(c.get() + n);
            Ok(c.get())
        }
    })
    .validate(|n| match n {
        0 => Err("add a positive amount".into()),
        _ => Ok(()),
    });
    ctx.wait_for_signal::<()>("stop").await?;
    Ok(count.get())
}

pub(crate) fn worker(t: &TestStore) -> Worker {
    builder(t).build().unwrap()
}

/// The worker of [`worker`], before it is built.
pub(crate) fn builder(t: &TestStore) -> quark_worker::WorkerBuilder {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .queues(["greetings", "default"])
        .poll_interval(Duration::from_millis(10))
        .workflows(
            Registry::new()
                .register(greet)
                .register(doomed)
                .register(tally)
                .register(compose)
                .register(reject),
        )
}

/// Adds a bearer token to every call.
#[derive(Clone)]
pub(crate) struct Bearer(pub(crate) tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

impl Bearer {
    /// A new token of `scope` for the API over `t`'s store.
    pub(crate) async fn issue(t: &TestStore, scope: quark_history::Scope) -> Bearer {
        let issued = quark_worker::service::auth::issue(&*t.store, "tests", scope, None)
            .await
            .unwrap();
        Bearer(format!("Bearer {}", issued.token).parse().unwrap())
    }
}

pub(crate) type Authed =
    WorkflowServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// The API on a free port of 127.0.0.1, until the returned sender is dropped; its client holds
/// an admin token.
pub(crate) struct Api {
    pub(crate) client: Authed,
    pub(crate) channel: Channel,
    /// Where it listens: `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub(crate) async fn api(t: &TestStore, options: ServiceOptions) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(Arc::clone(&t.store), listener, options, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = Bearer::issue(t, quark_history::Scope::Admin).await;
    Api {
        client: WorkflowServiceClient::with_interceptor(channel.clone(), bearer),
        channel,
        url: format!("http://{addr}"),
        _stop: stop,
    }
}

pub(crate) fn json(value: &serde_json::Value) -> Option<proto::Payload> {
    Some(proto::Payload {
        codec: "json".into(),
        data: serde_json::to_vec(value).unwrap(),
    })
}

pub(crate) fn start(
    workflow_type: &str,
    id: &str,
    input: serde_json::Value,
) -> proto::StartWorkflowRequest {
    proto::StartWorkflowRequest {
        workflow_type: workflow_type.into(),
        instance_id: id.into(),
        input: json(&input),
        ..Default::default()
    }
}

async fn result(api: &mut Api, id: &str) -> proto::GetWorkflowResultResponse {
    let call = api
        .client
        .get_workflow_result(proto::GetWorkflowResultRequest {
            instance_id: id.into(),
        });
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the result within 30 s")
        .unwrap()
        .into_inner()
}

pub(crate) fn signal(
    id: &str,
    name: &str,
    value: serde_json::Value,
) -> proto::SignalWorkflowRequest {
    proto::SignalWorkflowRequest {
        instance_id: id.into(),
        name: name.into(),
        value: json(&value),
    }
}

async fn describe(api: &mut Api, id: &str) -> Result<proto::Workflow, tonic::Status> {
    api.client
        .describe_workflow(proto::DescribeWorkflowRequest {
            instance_id: id.into(),
        })
        .await
        .map(|r| r.into_inner().workflow.unwrap())
}

async fn it_starts_signals_and_reads_a_workflow_through_the_api(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let mut api = api(t, ServiceOptions::default()).await;

    // The types come from the worker's registration, not from code in the server.
    let types = api
        .client
        .list_workflow_types(proto::ListWorkflowTypesRequest {})
        .await
        .unwrap()
        .into_inner()
        .types;
    let greet_type = types.iter().find(|t| t.name == "greet").expect("greet");
    assert_eq!(
        (greet_type.version, greet_type.queue.as_str()),
        (3, "greetings")
    );
    assert_eq!(greet_type.registered_by, running.worker().id());
    assert!(types.iter().any(|t| t.name == "doomed"));
    assert!(
        !types.iter().any(|t| t.name == "compose"),
        "activities are not workflow types"
    );

    let started = api
        .client
        .start_workflow(start("greet", "g-1", serde_json::json!("Ada")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            started.instance_id.as_str(),
            started.created,
            started.version
        ),
        ("g-1", true, 3)
    );
    let described = describe(&mut api, "g-1").await.unwrap();
    assert_eq!(described.workflow_type, "greet");
    assert_eq!(described.version, 3);
    assert_eq!(described.queue, "greetings");
    assert_eq!(
        serde_json::from_slice::<String>(&described.input.unwrap().data).unwrap(),
        "Ada"
    );

    // The same id again: refused, or the existing instance when asked for.
    let again = api
        .client
        .start_workflow(start("greet", "g-1", serde_json::json!("Bob")))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let mut idempotent = start("greet", "g-1", serde_json::json!("Bob"));
    idempotent.id_reuse = proto::IdReusePolicy::ReturnExisting as i32;
    let existing = api
        .client
        .start_workflow(idempotent)
        .await
        .unwrap()
        .into_inner();
    assert!(!existing.created);
    let mut other_type = start("doomed", "g-1", serde_json::json!("x"));
    other_type.id_reuse = proto::IdReusePolicy::ReturnExisting as i32;
    let clash = api.client.start_workflow(other_type).await.unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists, "{clash:?}");

    api.client
        .signal_workflow(signal("g-1", "polite", serde_json::json!(true)))
        .await
        .unwrap();
    let done = result(&mut api, "g-1").await;
    assert_eq!(done.status, WorkflowStatus::Completed as i32);
    assert_eq!(
        serde_json::from_slice::<String>(&done.output.unwrap().data).unwrap(),
        "Good day, Ada"
    );
    assert_eq!(
        describe(&mut api, "g-1").await.unwrap().status,
        WorkflowStatus::Completed as i32
    );

    // Its state, now and as it stood after its first event.
    let state = |at_version: u64| proto::GetWorkflowStateRequest {
        instance_id: "g-1".into(),
        at_version,
        at_time: None,
    };
    let now = api
        .client
        .get_workflow_state(state(0))
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!(now.status, "completed");
    assert_eq!(now.output_json, "\"Good day, Ada\"");
    assert_eq!(
        now.signals
            .iter()
            .map(|s| (s.name.as_str(), s.count, s.last_json.as_str()))
            .collect::<Vec<_>>(),
        [("polite", 1, "true")]
    );
    let first = api
        .client
        .get_workflow_state(state(1))
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!((first.status.as_str(), first.version), ("running", 1));
    assert!(first.signals.is_empty() && first.pending_activities.is_empty());
    let beyond = api
        .client
        .get_workflow_state(state(10_000))
        .await
        .unwrap_err();
    assert_eq!(beyond.code(), Code::InvalidArgument, "{beyond:?}");

    // A signal to an instance that ended is refused and appends nothing.
    let before = t
        .store
        .read_history("g-1", HistoryRange::All)
        .await
        .unwrap();
    let late = api
        .client
        .signal_workflow(signal("g-1", "polite", serde_json::json!(false)))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    let after = t
        .store
        .read_history("g-1", HistoryRange::All)
        .await
        .unwrap();
    assert_eq!(before.len(), after.len());
    running.shutdown().await;
}

async fn it_reports_how_a_workflow_ended_through_the_api(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let mut api = api(t, ServiceOptions::default()).await;
    for id in ["cancel-me", "terminate-me"] {
        api.client
            .start_workflow(start("greet", id, serde_json::json!("Eve")))
            .await
            .unwrap();
    }
    api.client
        .start_workflow(start(
            "doomed",
            "fail-me",
            serde_json::json!("out of stock"),
        ))
        .await
        .unwrap();
    api.client
        .cancel_workflow(proto::CancelWorkflowRequest {
            instance_id: "cancel-me".into(),
            reason: "customer changed their mind".into(),
        })
        .await
        .unwrap();
    api.client
        .terminate_workflow(proto::TerminateWorkflowRequest {
            instance_id: "terminate-me".into(),
            reason: "fraud".into(),
        })
        .await
        .unwrap();

    let cancelled = result(&mut api, "cancel-me").await;
    assert_eq!(
        (cancelled.status, cancelled.error.as_str()),
        (
            WorkflowStatus::Cancelled as i32,
            "customer changed their mind"
        )
    );
    let terminated = result(&mut api, "terminate-me").await;
    assert_eq!(
        (terminated.status, terminated.error.as_str()),
        (WorkflowStatus::Terminated as i32, "fraud")
    );
    let failed = result(&mut api, "fail-me").await;
    assert_eq!(failed.status, WorkflowStatus::Failed as i32);
    assert!(failed.error.contains("out of stock"), "{failed:?}");
    assert!(failed.output.is_none());

    // Terminating what has ended is refused.
    let twice = api
        .client
        .terminate_workflow(proto::TerminateWorkflowRequest {
            instance_id: "terminate-me".into(),
            reason: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition, "{twice:?}");
    running.shutdown().await;
}

async fn it_refuses_bad_requests_with_a_clear_status_and_changes_nothing(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let mut api = api(t, ServiceOptions::default().max_request_bytes(64 * 1024)).await;

    let refused = |e: tonic::Status, code: Code, says: &str| {
        assert_eq!(e.code(), code, "{e:?}");
        assert!(
            e.message().contains(says),
            "`{}` lacks `{says}`",
            e.message()
        );
    };
    let e = api
        .client
        .start_workflow(start("no_such_type", "x-1", serde_json::json!(1)))
        .await
        .unwrap_err();
    refused(
        e,
        Code::NotFound,
        "no worker has registered an orchestration `no_such_type`",
    );
    let e = api
        .client
        .start_workflow(start("greet", " ", serde_json::json!(1)))
        .await
        .unwrap_err();
    refused(e, Code::InvalidArgument, "instance_id is required");
    let mut malformed = start("greet", "x-2", serde_json::json!(1));
    malformed.input = Some(proto::Payload {
        codec: "json".into(),
        data: b"{not json".to_vec(),
    });
    let e = api.client.start_workflow(malformed).await.unwrap_err();
    refused(e, Code::InvalidArgument, "input: not valid JSON");
    let mut unknown_codec = start("greet", "x-3", serde_json::json!(1));
    unknown_codec.input.as_mut().unwrap().codec = "xml".into();
    let e = api.client.start_workflow(unknown_codec).await.unwrap_err();
    refused(e, Code::InvalidArgument, "unknown codec `xml`");
    let mut bad_policy = start("greet", "x-4", serde_json::json!(1));
    bad_policy.id_reuse = 42;
    let e = api.client.start_workflow(bad_policy).await.unwrap_err();
    refused(e, Code::InvalidArgument, "id_reuse: 42");
    // Larger than the server takes: refused before it is decoded.
    let big = "x".repeat(100 * 1024);
    let e = api
        .client
        .start_workflow(start("greet", "x-5", serde_json::json!(big)))
        .await
        .unwrap_err();
    refused(e, Code::OutOfRange, "too large");

    let e = api
        .client
        .signal_workflow(signal("nobody", "polite", serde_json::json!(true)))
        .await
        .unwrap_err();
    refused(e, Code::NotFound, "nobody");
    let e = describe(&mut api, "nobody").await.unwrap_err();
    refused(e, Code::NotFound, "nobody");
    let e = api
        .client
        .list_workflows(proto::ListWorkflowsRequest {
            statuses: vec![99],
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused(e, Code::InvalidArgument, "statuses: 99");
    let e = api
        .client
        .list_workflows(proto::ListWorkflowsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused(e, Code::InvalidArgument, "page_token");
    let e = api
        .client
        .get_workflow_history(proto::GetWorkflowHistoryRequest {
            instance_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused(e, Code::NotFound, "nobody");

    // A payload the server takes but the store does not (its limit is 2 MiB).
    let roomy = ServiceOptions::default().max_request_bytes(8 * 1024 * 1024);
    let mut roomy_api = self::api(t, roomy).await;
    let huge = "y".repeat(3 * 1024 * 1024);
    let e = roomy_api
        .client
        .start_workflow(start("greet", "x-6", serde_json::json!(huge)))
        .await
        .unwrap_err();
    refused(e, Code::InvalidArgument, "over the limit");

    let all = t
        .store
        .list_instances(InstanceFilter::default())
        .await
        .unwrap();
    assert!(all.is_empty(), "a refusal started {all:?}");
    running.shutdown().await;
}

async fn it_serves_health_and_reflection(t: &TestStore) {
    let api = api(t, ServiceOptions::default()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(api.channel.clone());
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    quark_history::testing::eventually("the API reports itself serving", async || {
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "quark.v1.WorkflowService".into(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status == serving)
    })
    .await;

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(api.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a list of services: {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in quark_worker::service::SERVICES {
        assert!(names.contains(service), "{service} not in {names:?}");
    }
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}
