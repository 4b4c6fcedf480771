//! Namespaces, on both backends: a token of one namespace can neither see nor touch another's
//! instances, queues, jobs, schedules and dead letters, through any method (the table is every
//! method of the published descriptors: a new one fails the test until it is covered), and
//! nothing of the other namespace changes. A namespace's plain names are taken in it, and its
//! workers serve its queues.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use quark_history::testing::{TestStore, eventually};
use quark_history::{HistoryRange, Scope};
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

use crate::service::{Bearer, api, builder, json, start};

quark_history::backend_tests!(it_keeps_each_namespace_to_itself);

type Intercepted = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// A client of every service with one token.
#[derive(Clone)]
struct Tenant {
    channel: Channel,
    bearer: Bearer,
}

impl Tenant {
    async fn new(t: &TestStore, channel: &Channel, namespace: Option<&str>) -> Tenant {
        let issued = quark_worker::service::auth::issue_in(
            &*t.store,
            namespace,
            "tenant",
            Scope::Admin,
            None,
        )
        .await
        .unwrap();
        Tenant {
            channel: channel.clone(),
            bearer: Bearer(format!("Bearer {}", issued.token).parse().unwrap()),
        }
    }

    fn workflows(&self) -> WorkflowServiceClient<Intercepted> {
        WorkflowServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    fn jobs(&self) -> JobServiceClient<Intercepted> {
        JobServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    fn queues(&self) -> QueueServiceClient<Intercepted> {
        QueueServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    async fn enqueue(&self, activity: &str, input: serde_json::Value) -> i64 {
        self.jobs()
            .enqueue_job(proto::EnqueueJobRequest {
                activity: activity.into(),
                input: json(&input),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .job_id
    }

    async fn schedule(&self, name: &str) {
        ScheduleServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
            .put_schedule(proto::PutScheduleRequest {
                name: name.into(),
                cron: "0 3 * * *".into(),
                activity: "compose".into(),
                input: json(&serde_json::json!(["night", true])),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// What a call of another namespace's things came to.
#[derive(Debug)]
enum Seen {
    /// Refused (with the code).
    Refused(Code),
    /// Let in, listing these names (instance ids, queues, schedule names).
    Listed(Vec<String>),
}

fn refused<T>(r: Result<T, tonic::Status>) -> Seen {
    match r {
        Err(e) => Seen::Refused(e.code()),
        Ok(_) => Seen::Listed(vec!["<the call went through>".into()]),
    }
}

fn listed<T>(
    r: Result<tonic::Response<T>, tonic::Status>,
    names: impl Fn(T) -> Vec<String>,
) -> Seen {
    match r {
        Ok(r) => Seen::Listed(names(r.into_inner())),
        Err(e) => Seen::Refused(e.code()),
    }
}

/// Calls `method` as `acme`, aimed at globex's things.
async fn probe(acme: &Tenant, method: &str, globex_job: i64, globex_dead: i64) -> Seen {
    let id = || "globex::order-1".to_string();
    let w = || acme.workflows();
    match method {
        "StartWorkflow" => refused(
            w().start_workflow(start("greet", "globex::order-2", serde_json::json!("X")))
                .await,
        ),
        "SignalWorkflow" => refused(
            w().signal_workflow(crate::service::signal(
                "globex::order-1",
                "polite",
                serde_json::json!(true),
            ))
            .await,
        ),
        "CancelWorkflow" => refused(
            w().cancel_workflow(proto::CancelWorkflowRequest {
                instance_id: id(),
                reason: "x".into(),
            })
            .await,
        ),
        "TerminateWorkflow" => refused(
            w().terminate_workflow(proto::TerminateWorkflowRequest {
                instance_id: id(),
                reason: "x".into(),
            })
            .await,
        ),
        "DescribeWorkflow" => refused(
            w().describe_workflow(proto::DescribeWorkflowRequest { instance_id: id() })
                .await,
        ),
        "GetWorkflowHistory" => refused(
            w().get_workflow_history(proto::GetWorkflowHistoryRequest {
                instance_id: id(),
                ..Default::default()
            })
            .await,
        ),
        "GetWorkflowResult" => refused(
            w().get_workflow_result(proto::GetWorkflowResultRequest { instance_id: id() })
                .await,
        ),
        "GetWorkflowState" => refused(
            w().get_workflow_state(proto::GetWorkflowStateRequest {
                instance_id: id(),
                ..Default::default()
            })
            .await,
        ),
        "QueryWorkflow" => refused(
            w().query_workflow(proto::QueryWorkflowRequest {
                instance_id: id(),
                name: "count".into(),
                input: None,
            })
            .await,
        ),
        "UpdateWorkflow" => refused(
            w().update_workflow(proto::UpdateWorkflowRequest {
                instance_id: id(),
                name: "add".into(),
                input: json(&serde_json::json!(1)),
                ..Default::default()
            })
            .await,
        ),
        "ListWorkflows" => listed(
            w().list_workflows(proto::ListWorkflowsRequest::default())
                .await,
            |r| r.workflows.into_iter().map(|w| w.instance_id).collect(),
        ),
        // Types are code, shared by every namespace: no names of any namespace.
        "ListWorkflowTypes" => listed(
            w().list_workflow_types(proto::ListWorkflowTypesRequest {})
                .await,
            |_| Vec::new(),
        ),
        "EnqueueJob" => refused(
            acme.jobs()
                .enqueue_job(proto::EnqueueJobRequest {
                    activity: "compose".into(),
                    input: json(&serde_json::json!(["x", true])),
                    queue: "globex::default".into(),
                    ..Default::default()
                })
                .await,
        ),
        "GetJob" => refused(
            acme.jobs()
                .get_job(proto::GetJobRequest { job_id: globex_job })
                .await,
        ),
        "CancelJob" => refused(
            acme.jobs()
                .cancel_job(proto::CancelJobRequest { job_id: globex_job })
                .await,
        ),
        "RetryJob" => refused(
            acme.jobs()
                .retry_job(proto::RetryJobRequest {
                    job_id: globex_dead,
                })
                .await,
        ),
        "PauseJob" => refused(
            acme.jobs()
                .pause_job(proto::PauseJobRequest { job_id: globex_job })
                .await,
        ),
        "ResumeJob" => refused(
            acme.jobs()
                .resume_job(proto::ResumeJobRequest { job_id: globex_job })
                .await,
        ),
        "ListJobs" => listed(
            acme.jobs()
                .list_jobs(proto::ListJobsRequest::default())
                .await,
            |r| r.jobs.into_iter().map(|j| j.queue).collect(),
        ),
        "GetQueue" => refused(
            acme.queues()
                .get_queue(proto::GetQueueRequest {
                    queue: "globex::default".into(),
                })
                .await,
        ),
        "PauseQueue" => refused(
            acme.queues()
                .pause_queue(proto::PauseQueueRequest {
                    queue: "globex::default".into(),
                })
                .await,
        ),
        "ResumeQueue" => refused(
            acme.queues()
                .resume_queue(proto::ResumeQueueRequest {
                    queue: "globex::default".into(),
                })
                .await,
        ),
        "SetQueueRateLimit" => refused(
            acme.queues()
                .set_queue_rate_limit(proto::SetQueueRateLimitRequest {
                    queue: "globex::default".into(),
                    rate_limit: None,
                })
                .await,
        ),
        "ListDeadLetters" => listed(
            acme.queues()
                .list_dead_letters(proto::ListDeadLettersRequest::default())
                .await,
            |r| r.dead_letters.into_iter().map(|d| d.queue).collect(),
        ),
        "RedriveDeadLetters" => match acme
            .queues()
            .redrive_dead_letters(proto::RedriveDeadLettersRequest {
                task_ids: vec![globex_dead],
            })
            .await
        {
            Ok(r) if r.get_ref().results.iter().all(|x| !x.redriven) => {
                Seen::Refused(Code::NotFound)
            }
            other => refused(other),
        },
        "ListWorkers" => listed(
            WorkerServiceClient::with_interceptor(acme.channel.clone(), acme.bearer.clone())
                .list_workers(proto::ListWorkersRequest::default())
                .await,
            |r| {
                r.workers
                    .into_iter()
                    .flat_map(|w| {
                        if w.queues.is_empty() {
                            vec![format!("a worker with none of acme's queues: {}", w.id)]
                        } else {
                            w.queues
                        }
                    })
                    .collect()
            },
        ),
        "ListSchedules" => listed(
            ScheduleServiceClient::with_interceptor(acme.channel.clone(), acme.bearer.clone())
                .list_schedules(proto::ListSchedulesRequest::default())
                .await,
            |r| r.schedules.into_iter().map(|s| s.name).collect(),
        ),
        "PutSchedule" => refused(
            ScheduleServiceClient::with_interceptor(acme.channel.clone(), acme.bearer.clone())
                .put_schedule(proto::PutScheduleRequest {
                    name: "globex::nightly".into(),
                    cron: "0 4 * * *".into(),
                    activity: "compose".into(),
                    ..Default::default()
                })
                .await,
        ),
        "DeleteSchedule" => refused(
            ScheduleServiceClient::with_interceptor(acme.channel.clone(), acme.bearer.clone())
                .delete_schedule(proto::DeleteScheduleRequest {
                    name: "globex::nightly".into(),
                })
                .await,
        ),
        "ListOutboxMessages" => refused(
            OutboxServiceClient::with_interceptor(acme.channel.clone(), acme.bearer.clone())
                .list_outbox_messages(proto::ListOutboxMessagesRequest::default())
                .await,
        ),
        "RedriveOutboxMessages" => refused(
            OutboxServiceClient::with_interceptor(acme.channel.clone(), acme.bearer.clone())
                .redrive_outbox_messages(proto::RedriveOutboxMessagesRequest {
                    message_ids: vec![1],
                })
                .await,
        ),
        "ListStuckSagas" => listed(
            SagaServiceClient::with_interceptor(acme.channel.clone(), acme.bearer.clone())
                .list_stuck_sagas(proto::ListStuckSagasRequest::default())
                .await,
            |r| r.sagas.into_iter().map(|s| s.instance_id).collect(),
        ),
        other => panic!("method {other} is not covered by the namespace test: add it"),
    }
}

async fn it_keeps_each_namespace_to_itself(t: &TestStore) {
    let acme_worker = builder(t)
        .namespace("acme")
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let globex_worker = builder(t)
        .namespace("globex")
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let api = api(t, ServiceOptions::default()).await;
    let acme = Tenant::new(t, &api.channel, Some("acme")).await;
    let globex = Tenant::new(t, &api.channel, Some("globex")).await;

    // Each starts `order-1`: two instances, one in each namespace, on its own queues.
    for tenant in [&acme, &globex] {
        let started = tenant
            .workflows()
            .start_workflow(start("greet", "order-1", serde_json::json!("Ada")))
            .await
            .unwrap()
            .into_inner();
        assert!(started.instance_id.ends_with("::order-1"), "{started:?}");
    }
    let acme_order = t
        .store
        .get_instance("acme::order-1")
        .await
        .unwrap()
        .unwrap();
    let globex_order = t
        .store
        .get_instance("globex::order-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (acme_order.queue.as_str(), globex_order.queue.as_str()),
        ("acme::greetings", "globex::greetings")
    );
    let globex_job = globex
        .enqueue("compose", serde_json::json!(["job", true]))
        .await;
    let globex_dead = globex
        .enqueue("reject", serde_json::json!("bad input"))
        .await;
    let acme_dead = acme.enqueue("reject", serde_json::json!("bad input")).await;
    for tenant in [&acme, &globex] {
        tenant.schedule("nightly").await;
    }
    // The namespaces' workers ran their own: the dead jobs died, the instances wait.
    eventually("both rejected jobs are dead", async || {
        let dead = t.store.list_dead(None, 10).await.unwrap();
        [globex_dead, acme_dead]
            .iter()
            .all(|id| dead.iter().any(|d| d.task_id == *id))
    })
    .await;
    let before = t
        .store
        .read_history("globex::order-1", HistoryRange::All)
        .await
        .unwrap()
        .len();

    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    let methods: Vec<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "quark.v1")
        .flat_map(|f| &f.service)
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect();
    assert!(methods.len() >= 31, "{methods:?}");
    for method in &methods {
        match probe(&acme, method, globex_job, globex_dead).await {
            Seen::Refused(code) => assert!(
                matches!(code, Code::PermissionDenied | Code::NotFound),
                "{method}: refused with {code:?}"
            ),
            Seen::Listed(names) => assert!(
                names.iter().all(|n| n.starts_with("acme::")),
                "{method} shows another namespace's: {names:?}"
            ),
        }
    }

    // Nothing of globex's changed.
    let after = t
        .store
        .read_history("globex::order-1", HistoryRange::All)
        .await
        .unwrap()
        .len();
    assert_eq!(after, before, "globex's instance untouched");
    let job = t.store.job(globex_job).await.unwrap().unwrap();
    assert_ne!(job.state, quark_history::JobState::Cancelled);
    assert!(
        t.store
            .list_dead(Some("globex::default"), 10)
            .await
            .unwrap()
            .iter()
            .any(|d| d.task_id == globex_dead)
    );
    assert!(
        !t.store
            .queue_settings("globex::default")
            .await
            .unwrap()
            .paused
    );
    assert!(
        t.store
            .get_schedule("globex::nightly")
            .await
            .unwrap()
            .is_some()
    );

    // Job keys are a namespace's own: globex holds `nightly-report` (a job due in an hour);
    // acme's job of the same key is acme's, not globex's returned or replaced.
    let keyed = |tenant: &Tenant| {
        let mut jobs = tenant.jobs();
        async move {
            jobs.enqueue_job(proto::EnqueueJobRequest {
                activity: "compose".into(),
                input: json(&serde_json::json!(["report", true])),
                delay: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                unique_key: "nightly-report".into(),
                unique_policy: proto::UniquePolicy::Replace as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let theirs = keyed(&globex).await;
    let ours = keyed(&acme).await;
    assert_eq!(
        (theirs.outcome.as_str(), ours.outcome.as_str()),
        ("enqueued", "enqueued")
    );
    assert_ne!(theirs.job_id, ours.job_id);
    let kept = t.store.job(theirs.job_id).await.unwrap().unwrap();
    assert_eq!(kept.queue, "globex::default", "globex's job untouched");

    // Its own, acme reaches: a plain name is taken in its namespace.
    let described = acme
        .workflows()
        .describe_workflow(proto::DescribeWorkflowRequest {
            instance_id: "order-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .workflow
        .unwrap();
    assert_eq!(described.instance_id, "acme::order-1");
    acme.workflows()
        .signal_workflow(crate::service::signal(
            "order-1",
            "polite",
            serde_json::json!(true),
        ))
        .await
        .unwrap();
    let done = tokio::time::timeout(
        Duration::from_secs(20),
        quark_workflow::Client::new(Arc::clone(&t.store)).result::<String>("acme::order-1"),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(done, "Good day, Ada");
    let redriven = acme
        .queues()
        .redrive_dead_letters(proto::RedriveDeadLettersRequest {
            task_ids: vec![acme_dead],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(redriven.results[0].redriven, "{redriven:?}");
    acme_worker.shutdown().await;
    globex_worker.shutdown().await;
}
