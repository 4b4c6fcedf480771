//! Who may call the API, on both backends: every method refuses a call without a valid token
//! (UNAUTHENTICATED) or outside its token's scope (PERMISSION_DENIED), and a refused call
//! changes nothing; a revoked token stops working; the command line issues, lists and revokes
//! tokens without ever storing or showing a secret twice.

use std::sync::Arc;

use prost::Message;
use quark_history::testing::TestStore;
use quark_history::{InstanceFilter, Scope};
use quark_worker::cli::{Command, Output, run_on};
use quark_worker::service::proto::job_service_client::JobServiceClient;
use quark_worker::service::proto::outbox_service_client::OutboxServiceClient;
use quark_worker::service::proto::queue_service_client::QueueServiceClient;
use quark_worker::service::proto::saga_service_client::SagaServiceClient;
use quark_worker::service::proto::schedule_service_client::ScheduleServiceClient;
use quark_worker::service::proto::worker_service_client::WorkerServiceClient;
use quark_worker::service::proto::workflow_service_client::WorkflowServiceClient;
use quark_worker::service::proto::{self};
use quark_worker::service::{FILE_DESCRIPTOR_SET, ServiceOptions};
use tonic::Code;
use tonic::transport::Channel;

use crate::service::{api, start, worker};

quark_history::backend_tests!(
    it_refuses_every_method_without_a_valid_token_and_changes_nothing,
    it_holds_each_token_to_its_scope,
    it_stops_honouring_a_token_once_it_is_revoked,
    it_holds_a_token_to_its_rate_limit,
);

/// The methods of every `quark.v1` service, as the descriptors publish them.
fn methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .filter(|f| f.package() == "quark.v1")
        .flat_map(|f| &f.service)
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect()
}

/// A caller of every service, with a header or none.
#[derive(Clone)]
struct Caller {
    channel: Channel,
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for Caller {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            r.metadata_mut().insert("authorization", h.clone());
        }
        Ok(r)
    }
}

type Intercepted = tonic::service::interceptor::InterceptedService<Channel, Caller>;

impl Caller {
    fn workflows(&self) -> WorkflowServiceClient<Intercepted> {
        WorkflowServiceClient::with_interceptor(self.channel.clone(), self.clone())
    }

    fn jobs(&self) -> JobServiceClient<Intercepted> {
        JobServiceClient::with_interceptor(self.channel.clone(), self.clone())
    }

    fn queues(&self) -> QueueServiceClient<Intercepted> {
        QueueServiceClient::with_interceptor(self.channel.clone(), self.clone())
    }

    fn workers(&self) -> WorkerServiceClient<Intercepted> {
        WorkerServiceClient::with_interceptor(self.channel.clone(), self.clone())
    }

    fn schedules(&self) -> ScheduleServiceClient<Intercepted> {
        ScheduleServiceClient::with_interceptor(self.channel.clone(), self.clone())
    }

    fn outbox(&self) -> OutboxServiceClient<Intercepted> {
        OutboxServiceClient::with_interceptor(self.channel.clone(), self.clone())
    }

    /// Calls `method` with harmless arguments, and keeps only whether it was let in.
    async fn call(&self, method: &str) -> Result<(), tonic::Status> {
        let id = "auth-target".to_string();
        match method {
            "StartWorkflow" => self
                .workflows()
                .start_workflow(start("greet", &id, serde_json::json!("Mallory")))
                .await
                .map(drop),
            "SignalWorkflow" => self
                .workflows()
                .signal_workflow(proto::SignalWorkflowRequest {
                    instance_id: id,
                    name: "polite".into(),
                    value: None,
                })
                .await
                .map(drop),
            "CancelWorkflow" => self
                .workflows()
                .cancel_workflow(proto::CancelWorkflowRequest {
                    instance_id: id,
                    reason: "x".into(),
                })
                .await
                .map(drop),
            "TerminateWorkflow" => self
                .workflows()
                .terminate_workflow(proto::TerminateWorkflowRequest {
                    instance_id: id,
                    reason: "x".into(),
                })
                .await
                .map(drop),
            "DescribeWorkflow" => self
                .workflows()
                .describe_workflow(proto::DescribeWorkflowRequest { instance_id: id })
                .await
                .map(drop),
            "ListWorkflows" => self
                .workflows()
                .list_workflows(proto::ListWorkflowsRequest::default())
                .await
                .map(drop),
            "GetWorkflowHistory" => self
                .workflows()
                .get_workflow_history(proto::GetWorkflowHistoryRequest {
                    instance_id: id,
                    ..Default::default()
                })
                .await
                .map(drop),
            "GetWorkflowResult" => self
                .workflows()
                .get_workflow_result(proto::GetWorkflowResultRequest { instance_id: id })
                .await
                .map(drop),
            "ListWorkflowTypes" => self
                .workflows()
                .list_workflow_types(proto::ListWorkflowTypesRequest {})
                .await
                .map(drop),
            "EnqueueJob" => self
                .jobs()
                .enqueue_job(proto::EnqueueJobRequest {
                    activity: "compose".into(),
                    input: crate::service::json(&serde_json::json!(["Mallory", true])),
                    ..Default::default()
                })
                .await
                .map(drop),
            "GetJob" => self
                .jobs()
                .get_job(proto::GetJobRequest { job_id: 424242 })
                .await
                .map(drop),
            "ListJobs" => self
                .jobs()
                .list_jobs(proto::ListJobsRequest::default())
                .await
                .map(drop),
            "CancelJob" => self
                .jobs()
                .cancel_job(proto::CancelJobRequest { job_id: 424242 })
                .await
                .map(drop),
            "RetryJob" => self
                .jobs()
                .retry_job(proto::RetryJobRequest { job_id: 424242 })
                .await
                .map(drop),
            "PauseJob" => self
                .jobs()
                .pause_job(proto::PauseJobRequest { job_id: 424242 })
                .await
                .map(drop),
            "ResumeJob" => self
                .jobs()
                .resume_job(proto::ResumeJobRequest { job_id: 424242 })
                .await
                .map(drop),
            "GetQueue" => self
                .queues()
                .get_queue(proto::GetQueueRequest {
                    queue: "auth-queue".into(),
                })
                .await
                .map(drop),
            "PauseQueue" => self
                .queues()
                .pause_queue(proto::PauseQueueRequest {
                    queue: "auth-queue".into(),
                })
                .await
                .map(drop),
            "ResumeQueue" => self
                .queues()
                .resume_queue(proto::ResumeQueueRequest {
                    queue: "auth-queue".into(),
                })
                .await
                .map(drop),
            "SetQueueRateLimit" => self
                .queues()
                .set_queue_rate_limit(proto::SetQueueRateLimitRequest {
                    queue: "auth-queue".into(),
                    rate_limit: Some(proto::QueueRateLimit {
                        limit: 1,
                        per: Some(prost_types::Duration {
                            seconds: 60,
                            nanos: 0,
                        }),
                    }),
                })
                .await
                .map(drop),
            "ListDeadLetters" => self
                .queues()
                .list_dead_letters(proto::ListDeadLettersRequest::default())
                .await
                .map(drop),
            "RedriveDeadLetters" => self
                .queues()
                .redrive_dead_letters(proto::RedriveDeadLettersRequest {
                    task_ids: vec![424242],
                })
                .await
                .map(drop),
            "ListWorkers" => self
                .workers()
                .list_workers(proto::ListWorkersRequest {})
                .await
                .map(drop),
            "ListSchedules" => self
                .schedules()
                .list_schedules(proto::ListSchedulesRequest {})
                .await
                .map(drop),
            "PutSchedule" => self
                .schedules()
                .put_schedule(proto::PutScheduleRequest {
                    name: "auth-schedule".into(),
                    cron: "0 9 * * *".into(),
                    activity: "compose".into(),
                    input: crate::service::json(&serde_json::json!(["M", true])),
                    ..Default::default()
                })
                .await
                .map(drop),
            "DeleteSchedule" => self
                .schedules()
                .delete_schedule(proto::DeleteScheduleRequest {
                    name: "no-such-schedule".into(),
                })
                .await
                .map(drop),
            "ListOutboxMessages" => self
                .outbox()
                .list_outbox_messages(proto::ListOutboxMessagesRequest::default())
                .await
                .map(drop),
            "RedriveOutboxMessages" => self
                .outbox()
                .redrive_outbox_messages(proto::RedriveOutboxMessagesRequest {
                    message_ids: vec![424242],
                })
                .await
                .map(drop),
            "QueryWorkflow" => self
                .workflows()
                .query_workflow(proto::QueryWorkflowRequest {
                    instance_id: id,
                    name: "mood".into(),
                    input: None,
                })
                .await
                .map(drop),
            "UpdateWorkflow" => self
                .workflows()
                .update_workflow(proto::UpdateWorkflowRequest {
                    instance_id: id,
                    name: "rename".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            "GetWorkflowState" => self
                .workflows()
                .get_workflow_state(proto::GetWorkflowStateRequest {
                    instance_id: id,
                    ..Default::default()
                })
                .await
                .map(drop),
            "ListStuckSagas" => {
                SagaServiceClient::with_interceptor(self.channel.clone(), self.clone())
                    .list_stuck_sagas(proto::ListStuckSagasRequest::default())
                    .await
                    .map(drop)
            }
            other => panic!("method {other} is not covered by this test: add it to `call`"),
        }
    }
}

fn with(channel: &Channel, header: &str) -> Caller {
    Caller {
        channel: channel.clone(),
        header: Some(header.parse().unwrap()),
    }
}

/// The methods that change something, and the scope they need.
const WRITES: [&str; 10] = [
    "StartWorkflow",
    "SignalWorkflow",
    "UpdateWorkflow",
    "CancelWorkflow",
    "TerminateWorkflow",
    "EnqueueJob",
    "CancelJob",
    "RetryJob",
    "PauseJob",
    "ResumeJob",
];
const ADMINS: [&str; 7] = [
    "PauseQueue",
    "ResumeQueue",
    "SetQueueRateLimit",
    "RedriveDeadLetters",
    "PutSchedule",
    "DeleteSchedule",
    "RedriveOutboxMessages",
];

async fn it_refuses_every_method_without_a_valid_token_and_changes_nothing(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let api = api(t, ServiceOptions::default()).await;
    let valid = quark_worker::service::auth::issue(&*t.store, "real", Scope::Admin, None)
        .await
        .unwrap()
        .token;
    let (id, _secret) = valid["qk_".len()..].split_once('_').unwrap();
    let forged = format!("Bearer qk_{id}_{}", "A".repeat(43));
    let anonymous = Caller {
        channel: api.channel.clone(),
        header: None,
    };
    let wrong = [
        "Basic dXNlcjpwYXNz".to_string(),
        "Bearer not-a-quark-token".to_string(),
        "Bearer qk_0000000000000000_secret".to_string(),
        forged,
    ];
    let methods = methods();
    assert!(methods.len() >= 31, "{methods:?}");
    for method in &methods {
        let e = anonymous.call(method).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{method}: {e:?}");
        assert!(e.message().contains("no token"), "{method}: {e:?}");
        for header in &wrong {
            let e = with(&api.channel, header).call(method).await.unwrap_err();
            assert_eq!(
                e.code(),
                Code::Unauthenticated,
                "{method} with {header}: {e:?}"
            );
        }
    }
    let all = t
        .store
        .list_instances(InstanceFilter::default())
        .await
        .unwrap();
    assert!(all.is_empty(), "a refused call started {all:?}");
    // The same call with the real token is let in.
    with(&api.channel, &format!("Bearer {valid}"))
        .call("StartWorkflow")
        .await
        .unwrap();
    running.shutdown().await;
}

async fn it_holds_each_token_to_its_scope(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let api = api(t, ServiceOptions::default()).await;
    let token = async |scope| {
        let issued = quark_worker::service::auth::issue(&*t.store, "scoped", scope, None)
            .await
            .unwrap();
        with(&api.channel, &format!("Bearer {}", issued.token))
    };
    let reader = token(Scope::Read).await;
    let writer = token(Scope::Write).await;
    for method in methods() {
        let needs = if ADMINS.contains(&method.as_str()) {
            "admin"
        } else if WRITES.contains(&method.as_str()) {
            "write"
        } else {
            "read"
        };
        for (caller, has) in [(&reader, "read"), (&writer, "write")] {
            let outcome = caller.call(&method).await;
            let allowed = matches!((has, needs), (_, "read") | ("write", "write"));
            if allowed {
                if let Err(e) = outcome {
                    // Let in: whatever it says is about the (absent) target, not the token.
                    assert!(
                        matches!(e.code(), Code::NotFound | Code::FailedPrecondition),
                        "{method} with {has}: {e:?}"
                    );
                }
            } else {
                let e = outcome.unwrap_err();
                assert_eq!(
                    e.code(),
                    Code::PermissionDenied,
                    "{method} with {has}: {e:?}"
                );
                assert!(
                    e.message().contains(&format!("has scope {has}"))
                        && e.message().contains(&format!("needs {needs}")),
                    "{e:?}"
                );
            }
        }
    }
    assert!(
        t.store.get_instance("auth-target").await.unwrap().is_some(),
        "the write token's start went through"
    );
    let queue = t.store.queue_settings("auth-queue").await.unwrap();
    assert!(
        !queue.paused && queue.rate_limit.is_none(),
        "neither token may change a queue"
    );
    assert!(
        t.store.list_schedules().await.unwrap().is_empty(),
        "neither token may schedule"
    );
    running.shutdown().await;
}

async fn it_stops_honouring_a_token_once_it_is_revoked(t: &TestStore) {
    let api = api(t, ServiceOptions::default()).await;
    let issued = quark_worker::service::auth::issue(&*t.store, "leaving", Scope::Read, None)
        .await
        .unwrap();
    let client = with(&api.channel, &format!("Bearer {}", issued.token));
    client.call("ListWorkflows").await.unwrap();
    assert!(t.store.revoke_token(&issued.record.id).await.unwrap());
    // A server trusts a token it verified for a second (by the store's clock): within it, the
    // revoked token still works; past it, it is refused.
    client.call("ListWorkflows").await.unwrap();
    t.clock
        .advance(quark_worker::service::auth::TOKEN_CACHE_TTL);
    let e = client.call("ListWorkflows").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("invalid or revoked token"), "{e:?}");
    assert!(!t.store.revoke_token(&issued.record.id).await.unwrap());
}

/// `quark token create|list|revoke`: the secret is printed once and never stored.
#[tokio::test]
async fn it_issues_lists_and_revokes_tokens_from_the_command_line() {
    use quark_worker::cli::TokenCommand;
    let t = quark_history::testing::sqlite().await;
    let run = async |cmd: TokenCommand, output: Output| {
        let mut out = Vec::new();
        run_on(
            Arc::clone(&t.store),
            Command::Token(cmd),
            output,
            None,
            &mut out,
        )
        .await
        .map(|()| String::from_utf8(out).unwrap())
    };
    let created = run(
        TokenCommand::Create {
            name: "ci".into(),
            scope: Scope::Write,
            rate_limit: Some(50),
            namespace: Some("acme".into()),
        },
        Output::Json,
    )
    .await
    .unwrap();
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let token = created["token"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(token.starts_with(&format!("qk_{id}_")), "{token}");
    assert_eq!(created["scope"], "write");
    assert_eq!(created["rate_limit"], 50);
    assert_eq!(created["namespace"], "acme");
    let stored = t.store.token(id).await.unwrap().unwrap();
    assert_eq!(stored.namespace.as_deref(), Some("acme"));
    let secret = &token[format!("qk_{id}_").len()..];
    assert_ne!(
        stored.secret_hash, secret,
        "the secret itself is not stored"
    );
    assert_eq!(
        stored.secret_hash,
        blake3::hash(secret.as_bytes()).to_hex().to_string()
    );

    let listed = run(TokenCommand::List, Output::Table).await.unwrap();
    assert!(listed.contains(id) && listed.contains("ci") && listed.contains("write"));
    assert!(listed.contains("acme"), "{listed}");
    assert!(!listed.contains(secret), "a listing shows no secret");

    let revoked = run(TokenCommand::Revoke { id: id.into() }, Output::Table)
        .await
        .unwrap();
    assert_eq!(revoked, format!("token {id} revoked\n"));
    assert!(
        t.store
            .token(id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    let again = run(TokenCommand::Revoke { id: id.into() }, Output::Table)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("revoked already"), "{again}");
    let unknown = run(TokenCommand::Revoke { id: "nope".into() }, Output::Table)
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("no token `nope`"), "{unknown}");
    let unnamed = run(
        TokenCommand::Create {
            name: " ".into(),
            scope: Scope::Read,
            rate_limit: None,
            namespace: None,
        },
        Output::Table,
    )
    .await
    .unwrap_err();
    assert!(unnamed.to_string().contains("needs a name"), "{unnamed}");
    assert_eq!(t.store.list_tokens().await.unwrap().len(), 1);
}

async fn it_holds_a_token_to_its_rate_limit(t: &TestStore) {
    let api = api(t, ServiceOptions::default()).await;
    let limited = quark_worker::service::auth::issue(&*t.store, "batch-job", Scope::Read, Some(5))
        .await
        .unwrap();
    let free = quark_worker::service::auth::issue(&*t.store, "dashboard", Scope::Read, None)
        .await
        .unwrap();
    let limited = with(&api.channel, &format!("Bearer {}", limited.token));
    let free = with(&api.channel, &format!("Bearer {}", free.token));
    // The store's clock stands still: a burst of one second's worth, then refusals.
    for _ in 0..5 {
        limited.call("ListWorkflows").await.unwrap();
    }
    let e = limited.call("ListWorkflows").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limited to 5 calls a second"), "{e:?}");
    // Another token is not held to it.
    for _ in 0..20 {
        free.call("ListWorkflows").await.unwrap();
    }
    // 400 ms refill two calls at five a second, and no more.
    t.clock.advance(std::time::Duration::from_millis(400));
    limited.call("ListWorkflows").await.unwrap();
    limited.call("ListWorkflows").await.unwrap();
    let e = limited.call("ListWorkflows").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let zero = quark_worker::service::auth::issue(&*t.store, "nothing", Scope::Read, Some(0)).await;
    assert!(zero.is_err(), "a limit of 0 is refused");
}
