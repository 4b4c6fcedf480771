//! `quark job ...` and `quark queue ...` against a real store.

use std::sync::Arc;

use quark_history::testing::TestStore;
use quark_history::{ClaimRequest, Commit, FailAction, JobState, Store};
use quark_worker::cli::{Command, JobCommand, Output, QueueCommand, run_on};
use quark_workflow::{ActivityContext, ActivityError, JobId, Registry, activity};

#[activity]
async fn resize(_ctx: ActivityContext, url: String) -> Result<u64, ActivityError> {
    Ok(url.len() as u64)
}

async fn quark(t: &TestStore, command: Command) -> anyhow::Result<String> {
    quark_as(t, Output::Table, command).await
}

async fn quark_as(t: &TestStore, output: Output, command: Command) -> anyhow::Result<String> {
    let mut out = Vec::new();
    run_on(
        Arc::clone(&t.store),
        command,
        output,
        Some(Registry::new().register(resize)),
        &mut out,
    )
    .await?;
    Ok(String::from_utf8(out).unwrap())
}

fn enqueue(input: &str, unique: Option<&str>) -> Command {
    Command::Job(JobCommand::Enqueue {
        activity: "resize".into(),
        input: input.into(),
        queue: Some("images".into()),
        priority: 0,
        delay: None,
        unique: unique.map(Into::into),
        unique_policy: "keep".into(),
        unique_window: None,
        concurrency: Some("tenant-9:2".into()),
    })
}

async fn state(store: &dyn Store, id: i64) -> JobState {
    store.job(id).await.unwrap().unwrap().state
}

quark_history::backend_tests!(it_drives_jobs_and_queues_from_the_command_line);

async fn it_drives_jobs_and_queues_from_the_command_line(t: &TestStore) {
    // An activity this binary does not link is refused, and nothing is enqueued.
    let unknown = Command::Job(JobCommand::Enqueue {
        activity: "nope".into(),
        input: "null".into(),
        queue: None,
        priority: 0,
        delay: None,
        unique: None,
        unique_policy: "reject".into(),
        unique_window: None,
        concurrency: None,
    });
    let err = quark(t, unknown).await.unwrap_err().to_string();
    assert!(err.contains("no activity `nope`"), "{err}");
    let err = quark(t, enqueue("{not json", None)).await.unwrap_err();
    assert!(format!("{err:#}").contains("not valid JSON"), "{err:#}");
    assert!(
        t.store
            .list_jobs(Default::default())
            .await
            .unwrap()
            .is_empty()
    );

    let said = quark(t, enqueue("\"s3://a.png\"", Some("a.png")))
        .await
        .unwrap();
    let id: i64 = said
        .strip_prefix("enqueued job ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    let again = quark(t, enqueue("\"s3://a.png\"", Some("a.png")))
        .await
        .unwrap();
    assert!(
        again.contains(&format!("job {id} already holds")),
        "{again}"
    );

    let listed = quark_as(
        t,
        Output::Json,
        Command::Job(JobCommand::List {
            queue: Some("images".into()),
            state: vec!["pending".into()],
            limit: 10,
            before: None,
        }),
    )
    .await
    .unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["id"], id);
    assert_eq!(rows[0]["activity"], "resize");
    assert_eq!(rows[0]["input"], "s3://a.png");
    assert_eq!(rows[0]["concurrency_key"], "tenant-9");

    quark(
        t,
        Command::Job(JobCommand::Pause {
            ids: vec![JobId::new(id)],
        }),
    )
    .await
    .unwrap();
    assert_eq!(state(&*t.store, id).await, JobState::Paused);
    let shown = quark(t, Command::Job(JobCommand::Show { id: JobId::new(id) }))
        .await
        .unwrap();
    assert!(shown.contains("state        paused"), "{shown}");
    assert!(shown.contains("input        \"s3://a.png\""), "{shown}");
    quark(
        t,
        Command::Job(JobCommand::Resume {
            ids: vec![JobId::new(id)],
        }),
    )
    .await
    .unwrap();
    assert_eq!(state(&*t.store, id).await, JobState::Pending);

    // Queue controls.
    quark(
        t,
        Command::Queue(QueueCommand::Pause {
            queue: "images".into(),
        }),
    )
    .await
    .unwrap();
    quark(
        t,
        Command::Queue(QueueCommand::RateLimit {
            queue: "images".into(),
            limit: Some(5),
            per: std::time::Duration::from_secs(2),
            clear: false,
        }),
    )
    .await
    .unwrap();
    let stats = quark(
        t,
        Command::Queue(QueueCommand::Stats {
            queue: "images".into(),
        }),
    )
    .await
    .unwrap();
    assert!(
        stats.contains("1 pending")
            && stats.contains("PAUSED")
            && stats.contains("rate limit 5 per 2s"),
        "{stats}"
    );
    assert!(
        t.store
            .claim(ClaimRequest::new("w", ["images"]))
            .await
            .unwrap()
            .is_empty(),
        "paused"
    );
    quark(
        t,
        Command::Queue(QueueCommand::Resume {
            queue: "images".into(),
        }),
    )
    .await
    .unwrap();

    // A dead job is retried; a pending one cancelled; a finished one cannot be cancelled.
    let claimed = t
        .store
        .claim(ClaimRequest::new("w", ["images"]))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "resumed, and within the rate limit");
    t.store
        .commit(Commit::new().fail(
            claimed[0].lease.clone(),
            FailAction::Dead {
                error: "broken image".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(state(&*t.store, id).await, JobState::Dead);
    quark(
        t,
        Command::Job(JobCommand::Retry {
            ids: vec![JobId::new(id)],
        }),
    )
    .await
    .unwrap();
    let retried = t.store.job(id).await.unwrap().unwrap();
    assert_eq!(
        (retried.state, retried.concurrency_key.as_deref()),
        (JobState::Pending, Some("tenant-9")),
        "a re-driven job keeps its concurrency key"
    );
    let said = quark(
        t,
        Command::Job(JobCommand::Cancel {
            ids: vec![JobId::new(id)],
        }),
    )
    .await
    .unwrap();
    assert_eq!(said.trim(), format!("job {id} cancelled"));
    let err = quark(
        t,
        Command::Job(JobCommand::Cancel {
            ids: vec![JobId::new(id)],
        }),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("it is cancelled"), "{err:#}");
}
