//! The operators' services through the API, on both backends: jobs enqueued by activity name
//! (no code in the server) and controlled, queues paused and limited, dead letters listed and
//! re-driven one by one, workers listed with what they report.

use quark_history::testing::{TestStore, eventually};
use quark_worker::service::ServiceOptions;
use quark_worker::service::proto::job_service_client::JobServiceClient;
use quark_worker::service::proto::queue_service_client::QueueServiceClient;
use quark_worker::service::proto::worker_service_client::WorkerServiceClient;
use quark_worker::service::proto::{self, JobState};
use tonic::Code;

use crate::service::{Api, Bearer, json, worker};

quark_history::backend_tests!(
    it_enqueues_and_controls_jobs_through_the_api,
    it_controls_queues_and_redrives_dead_letters_through_the_api,
    it_lists_workers_with_what_they_report,
);

async fn clients(
    t: &TestStore,
) -> (
    Api,
    JobServiceClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
    >,
    QueueServiceClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
    >,
) {
    let api = crate::service::api(t, ServiceOptions::default()).await;
    let bearer = Bearer::issue(t, quark_history::Scope::Admin).await;
    let jobs = JobServiceClient::with_interceptor(api.channel.clone(), bearer.clone());
    let queues = QueueServiceClient::with_interceptor(api.channel.clone(), bearer);
    (api, jobs, queues)
}

fn enqueue(activity: &str, input: serde_json::Value) -> proto::EnqueueJobRequest {
    proto::EnqueueJobRequest {
        activity: activity.into(),
        input: json(&input),
        ..Default::default()
    }
}

async fn it_enqueues_and_controls_jobs_through_the_api(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let (_api, mut jobs, _) = clients(t).await;
    let state = async |jobs: &mut JobServiceClient<_>, id: i64| {
        jobs.get_job(proto::GetJobRequest { job_id: id })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
    };

    // Run now: the worker takes it and completes it.
    let done = jobs
        .enqueue_job(enqueue("compose", serde_json::json!(["Kay", true])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.outcome, "enqueued");
    let mut jobs2 = jobs.clone();
    eventually("the job completes", async || {
        state(&mut jobs2, done.job_id).await.state == JobState::Completed as i32
    })
    .await;
    let job = state(&mut jobs, done.job_id).await;
    assert_eq!(
        (job.activity.as_str(), job.queue.as_str()),
        ("compose", "default")
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&job.input.unwrap().data).unwrap(),
        serde_json::json!(["Kay", true])
    );

    // Later: held, paused, resumed, cancelled, retried.
    let mut later = enqueue("compose", serde_json::json!(["Lou", false]));
    later.delay = Some(prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    });
    later.unique_key = "lou".into();
    let later = jobs.enqueue_job(later.clone()).await.unwrap().into_inner();
    assert_eq!(
        state(&mut jobs, later.job_id).await.state,
        JobState::Scheduled as i32
    );
    let mut again = enqueue("compose", serde_json::json!(["Lou", false]));
    again.unique_key = "lou".into();
    let refused = jobs.enqueue_job(again.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    again.unique_policy = proto::UniquePolicy::Keep as i32;
    let again = jobs.enqueue_job(again).await.unwrap().into_inner();
    assert_eq!(
        (again.outcome.as_str(), again.job_id),
        ("existing", later.job_id)
    );
    jobs.pause_job(proto::PauseJobRequest {
        job_id: later.job_id,
    })
    .await
    .unwrap();
    assert_eq!(
        state(&mut jobs, later.job_id).await.state,
        JobState::Paused as i32
    );
    jobs.resume_job(proto::ResumeJobRequest {
        job_id: later.job_id,
    })
    .await
    .unwrap();
    let cancelled = jobs
        .cancel_job(proto::CancelJobRequest {
            job_id: later.job_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, JobState::Cancelled as i32);
    let not_dead = jobs
        .retry_job(proto::RetryJobRequest {
            job_id: later.job_id,
        })
        .await
        .unwrap_err();
    assert_eq!(
        not_dead.code(),
        Code::NotFound,
        "only a dead job is retried: {not_dead:?}"
    );
    let dead = jobs
        .enqueue_job(enqueue("reject", serde_json::json!("never")))
        .await
        .unwrap()
        .into_inner();
    let mut jobs3 = jobs.clone();
    eventually("the job dies", async || {
        state(&mut jobs3, dead.job_id).await.state == JobState::Dead as i32
    })
    .await;
    let first_death = state(&mut jobs, dead.job_id).await.finished_at.unwrap();
    t.clock.advance(std::time::Duration::from_secs(1));
    jobs.retry_job(proto::RetryJobRequest {
        job_id: dead.job_id,
    })
    .await
    .unwrap();
    eventually("the retried job ran again and died again", async || {
        let j = state(&mut jobs3, dead.job_id).await;
        j.state == JobState::Dead as i32
            && j.finished_at
                .is_some_and(|at| at.seconds > first_death.seconds)
    })
    .await;

    // Listing: by state, a page at a time.
    let page = jobs
        .list_jobs(proto::ListJobsRequest {
            states: vec![JobState::Completed as i32],
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.jobs.len(), 1);
    assert_eq!(page.jobs[0].id, done.job_id, "the only completed job");
    assert!(
        page.next_page_token.is_empty() || {
            let rest = jobs
                .list_jobs(proto::ListJobsRequest {
                    states: vec![JobState::Completed as i32],
                    page_size: 1,
                    page_token: page.next_page_token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            rest.jobs.is_empty()
        }
    );
    let all = jobs
        .list_jobs(proto::ListJobsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        all.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [dead.job_id, later.job_id],
        "newest first"
    );
    assert!(!all.next_page_token.is_empty());

    // Refusals.
    let unknown = jobs
        .enqueue_job(enqueue("no_such_activity", serde_json::json!(1)))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let mut no_limit = enqueue("compose", serde_json::json!(["X", true]));
    no_limit.concurrency_key = "k".into();
    let e = jobs.enqueue_job(no_limit).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = jobs
        .get_job(proto::GetJobRequest { job_id: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = jobs
        .pause_job(proto::PauseJobRequest {
            job_id: done.job_id,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "pausing a completed job: {e:?}"
    );
    running.shutdown().await;
}

async fn it_controls_queues_and_redrives_dead_letters_through_the_api(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let (_api, mut jobs, mut queues) = clients(t).await;
    let dead = jobs
        .enqueue_job(enqueue("reject", serde_json::json!("no thanks")))
        .await
        .unwrap()
        .into_inner();
    let mut q = queues.clone();
    eventually("the job dies", async || {
        q.list_dead_letters(proto::ListDeadLettersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .dead_letters
            .iter()
            .any(|d| d.task_id == dead.job_id)
    })
    .await;
    let letters = queues
        .list_dead_letters(proto::ListDeadLettersRequest {
            queue: "default".into(),
            page_size: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    let letter = letters.iter().find(|d| d.task_id == dead.job_id).unwrap();
    assert_eq!((letter.kind.as_str(), letter.attempts), ("job", 1));
    assert!(letter.error.contains("no thanks"), "{letter:?}");

    // Paused, the queue keeps the re-driven job; each id gets its own answer.
    queues
        .pause_queue(proto::PauseQueueRequest {
            queue: "default".into(),
        })
        .await
        .unwrap();
    let redriven = queues
        .redrive_dead_letters(proto::RedriveDeadLettersRequest {
            task_ids: vec![dead.job_id, 999_999],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        redriven
            .iter()
            .map(|r| (r.task_id, r.redriven))
            .collect::<Vec<_>>(),
        [(dead.job_id, true), (999_999, false)]
    );
    assert!(redriven[1].error.contains("no task 999999"), "{redriven:?}");
    let queue = queues
        .get_queue(proto::GetQueueRequest {
            queue: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert!(queue.paused);
    assert_eq!((queue.pending, queue.dead), (1, 0), "{queue:?}");

    queues
        .set_queue_rate_limit(proto::SetQueueRateLimitRequest {
            queue: "default".into(),
            rate_limit: Some(proto::QueueRateLimit {
                limit: 10,
                per: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            }),
        })
        .await
        .unwrap();
    let limited = queues
        .get_queue(proto::GetQueueRequest {
            queue: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap()
        .rate_limit
        .unwrap();
    assert_eq!((limited.limit, limited.per.unwrap().seconds), (10, 1));
    let e = queues
        .set_queue_rate_limit(proto::SetQueueRateLimitRequest {
            queue: "default".into(),
            rate_limit: Some(proto::QueueRateLimit {
                limit: 0,
                per: None,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    queues
        .set_queue_rate_limit(proto::SetQueueRateLimitRequest {
            queue: "default".into(),
            rate_limit: None,
        })
        .await
        .unwrap();
    queues
        .resume_queue(proto::ResumeQueueRequest {
            queue: "default".into(),
        })
        .await
        .unwrap();
    let settled = t.store.queue_settings("default").await.unwrap();
    assert!(!settled.paused && settled.rate_limit.is_none());
    // Resumed, the re-driven job runs (and dies again: its activity refuses everything).
    eventually("the re-driven job ran again", async || {
        t.store
            .job(dead.job_id)
            .await
            .unwrap()
            .is_some_and(|j| j.attempts >= 1 && j.state == quark_history::JobState::Dead)
    })
    .await;
    let e = queues
        .redrive_dead_letters(proto::RedriveDeadLettersRequest { task_ids: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    running.shutdown().await;
}

async fn it_lists_workers_with_what_they_report(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let api = crate::service::api(t, ServiceOptions::default()).await;
    let bearer = Bearer::issue(t, quark_history::Scope::Read).await;
    let mut workers = WorkerServiceClient::with_interceptor(api.channel.clone(), bearer);
    let listed = workers
        .list_workers(proto::ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner()
        .workers;
    let me = listed
        .iter()
        .find(|w| w.id == running.worker().id())
        .expect("the running worker is listed");
    let mut queues = me.queues.clone();
    queues.sort();
    assert_eq!(queues, ["default", "greetings"]);
    assert!(me.heartbeat_at.is_some());
    running.shutdown().await;
}

quark_history::backend_tests!(
    it_puts_lists_and_deletes_schedules_through_the_api,
    it_lists_and_redrives_outbox_messages_through_the_api,
);

async fn it_puts_lists_and_deletes_schedules_through_the_api(t: &TestStore) {
    use quark_worker::service::proto::schedule_service_client::ScheduleServiceClient;
    let running = worker(t).start().await.unwrap();
    let api = crate::service::api(t, ServiceOptions::default()).await;
    let bearer = Bearer::issue(t, quark_history::Scope::Admin).await;
    let mut schedules = ScheduleServiceClient::with_interceptor(api.channel.clone(), bearer);
    let put = |cron: &str, tz: &str| proto::PutScheduleRequest {
        name: "morning-report".into(),
        cron: cron.into(),
        timezone: tz.into(),
        backfill: 2,
        activity: "compose".into(),
        input: json(&serde_json::json!(["Team", true])),
        ..Default::default()
    };
    let created = schedules
        .put_schedule(put("0 9 * * *", "Europe/Paris"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.outcome, "created");
    assert!(created.next_at.is_some());
    let again = schedules
        .put_schedule(put("0 9 * * *", "Europe/Paris"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome, "unchanged");
    let listed = schedules
        .list_schedules(proto::ListSchedulesRequest {})
        .await
        .unwrap()
        .into_inner()
        .schedules;
    assert_eq!(listed.len(), 1);
    let s = &listed[0];
    assert_eq!(
        (
            s.name.as_str(),
            s.cron.as_str(),
            s.timezone.as_str(),
            s.backfill,
            s.activity.as_str(),
            s.queue.as_str()
        ),
        (
            "morning-report",
            "0 9 * * *",
            "Europe/Paris",
            2,
            "compose",
            "default"
        )
    );

    for (bad, says) in [
        (put("0 25 * * *", "UTC"), "invalid cron expression"),
        (put("0 9 * * *", "Europe/Atlantis"), "Europe/Atlantis"),
    ] {
        let e = schedules.put_schedule(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(says), "{e:?}");
    }
    let mut unknown = put("0 9 * * *", "UTC");
    unknown.activity = "no_such_activity".into();
    let e = schedules.put_schedule(unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        t.store.list_schedules().await.unwrap()[0].spec.timezone,
        "Europe/Paris",
        "a refused change leaves the schedule as it was"
    );

    schedules
        .delete_schedule(proto::DeleteScheduleRequest {
            name: "morning-report".into(),
        })
        .await
        .unwrap();
    assert!(t.store.list_schedules().await.unwrap().is_empty());
    let e = schedules
        .delete_schedule(proto::DeleteScheduleRequest {
            name: "morning-report".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    running.shutdown().await;
}

async fn it_lists_and_redrives_outbox_messages_through_the_api(t: &TestStore) {
    use quark_history::{Delivery, Destination, OutboxClaim, OutboxMessage};
    use quark_worker::service::proto::outbox_service_client::OutboxServiceClient;
    let api = crate::service::api(t, ServiceOptions::default()).await;
    let bearer = Bearer::issue(t, quark_history::Scope::Admin).await;
    let mut outbox = OutboxServiceClient::with_interceptor(api.channel.clone(), bearer);
    let ids = t
        .store
        .send(vec![
            OutboxMessage::json(Destination::nats("orders.paid"), &1)
                .unwrap()
                .ordering_key("a"),
            OutboxMessage::json(Destination::nats("orders.paid"), &2)
                .unwrap()
                .ordering_key("b"),
        ])
        .await
        .unwrap();
    // The first dies (as a relay gives up on it).
    let claimed = t
        .store
        .claim_outbox(
            OutboxClaim::new("relay")
                .limit(1)
                .lease(std::time::Duration::from_secs(30)),
        )
        .await
        .unwrap();
    t.store
        .settle_outbox(
            &claimed[0].lease,
            Delivery::Dead {
                error: "broker said no".into(),
            },
        )
        .await
        .unwrap();
    let dead = outbox
        .list_outbox_messages(proto::ListOutboxMessagesRequest {
            state: proto::MessageState::Dead as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error, "broker said no");
    assert_eq!(
        dead[0].destination,
        Destination::nats("orders.paid").to_string()
    );
    let all = outbox
        .list_outbox_messages(proto::ListOutboxMessagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .messages;
    let mut listed: Vec<i64> = all.iter().map(|m| m.id).collect();
    listed.sort();
    assert_eq!(listed, ids);

    let results = outbox
        .redrive_outbox_messages(proto::RedriveOutboxMessagesRequest {
            message_ids: vec![dead[0].id, 999_999],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        results
            .iter()
            .map(|r| (r.message_id, r.redriven))
            .collect::<Vec<_>>(),
        [(dead[0].id, true), (999_999, false)]
    );
    let still_dead = outbox
        .list_outbox_messages(proto::ListOutboxMessagesRequest {
            state: proto::MessageState::Dead as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert!(still_dead.is_empty(), "{still_dead:?}");
    let e = outbox
        .list_outbox_messages(proto::ListOutboxMessagesRequest {
            state: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

quark_history::backend_tests!(it_counts_api_calls_by_method_and_code);

/// The API's calls show on the process's `/metrics` by method and status code. The recorder is
/// the process's, shared with every other test of this binary: the test looks at how much its
/// own calls moved the figures (at least), not at their totals.
async fn it_counts_api_calls_by_method_and_code(t: &TestStore) {
    use crate::metrics::{scrape, value};
    let running = crate::service::builder(t)
        .metrics_addr("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let addr = running.metrics_addr().unwrap();
    let api = crate::service::api(t, ServiceOptions::default()).await;
    let bearer = Bearer::issue(t, quark_history::Scope::Read).await;
    let mut workers = WorkerServiceClient::with_interceptor(api.channel.clone(), bearer);
    let mut jobs = JobServiceClient::new(api.channel.clone());
    let listed = |s: &std::collections::BTreeMap<String, f64>| {
        value(
            s,
            "quark_api_requests_total",
            &[("method", "WorkerService/ListWorkers"), ("code", "Ok")],
        )
    };
    let refused = |s: &std::collections::BTreeMap<String, f64>| {
        value(
            s,
            "quark_api_requests_total",
            &[("method", "JobService/GetJob"), ("code", "Unauthenticated")],
        )
    };
    let before = scrape(addr).await;
    for _ in 0..3 {
        workers
            .list_workers(proto::ListWorkersRequest {})
            .await
            .unwrap();
    }
    for _ in 0..2 {
        jobs.get_job(proto::GetJobRequest { job_id: 1 })
            .await
            .unwrap_err();
    }
    let after = scrape(addr).await;
    assert!(listed(&after) - listed(&before) >= 3.0, "{after:?}");
    assert!(refused(&after) - refused(&before) >= 2.0, "{after:?}");
    assert!(
        value(
            &after,
            "quark_api_request_seconds_count",
            &[("method", "WorkerService/ListWorkers")]
        ) >= 3.0
    );
    running.shutdown().await;
}
