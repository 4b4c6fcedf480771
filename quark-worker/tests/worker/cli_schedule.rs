//! `quark schedule list|add|remove` against a real store, parsed as a command line.

use std::sync::Arc;

use clap::Parser;
use quark_history::{Missed, Store};
use quark_worker::cli::{Cli, run_on};
use quark_workflow::runner::TaskPayload;
use quark_workflow::{ActivityContext, ActivityError, Registry, activity};

#[activity(queue = "reports")]
async fn send_report(_ctx: ActivityContext, team: String) -> Result<String, ActivityError> {
    Ok(team)
}

async fn quark(store: &Arc<dyn Store>, args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("quark").chain(args.iter().copied()))?;
    let registry = Registry::new().register(send_report);
    let mut out = Vec::new();
    run_on(
        Arc::clone(store),
        cli.command,
        cli.output,
        Some(registry),
        &mut out,
    )
    .await?;
    Ok(String::from_utf8(out)?)
}

#[tokio::test]
async fn it_adds_lists_and_removes_schedules() {
    let t = quark_history::testing::sqlite().await;
    let add = [
        "schedule",
        "add",
        "daily-report",
        "--cron",
        "0 30 9 * * MON-FRI",
        "--tz",
        "Europe/Berlin",
        "--activity",
        "send_report",
        "--input",
        r#""ops""#,
        "--priority",
        "-2",
        "--missed",
        "backfill:3",
    ];
    let added = quark(&t.store, &add).await.unwrap();
    assert!(
        added.contains("schedule daily-report created")
            && added.contains("next at 2026-01-01T08:30:00.000000Z"),
        "{added}"
    );
    assert!(
        quark(&t.store, &add)
            .await
            .unwrap()
            .contains("daily-report unchanged"),
        "adding the same schedule again changes nothing"
    );

    let record = t.store.get_schedule("daily-report").await.unwrap().unwrap();
    assert_eq!(record.spec.missed, Missed::Backfill(3));
    assert_eq!(record.spec.queue, "reports", "the activity's queue");
    assert_eq!(record.spec.priority, -2);
    let Ok(TaskPayload::Job(job)) = TaskPayload::from_bytes(&record.spec.payload) else {
        panic!("the schedule enqueues a job");
    };
    assert_eq!(job.activity, "send_report");
    assert_eq!(job.input.decode::<String>().unwrap(), "ops");

    quark(
        &t.store,
        &[
            "schedule",
            "add",
            "heartbeat",
            "--cron",
            "*/10 * * * * *",
            "--activity",
            "send_report",
            "--queue",
            "pings",
        ],
    )
    .await
    .unwrap();
    let table = quark(&t.store, &["schedule", "list"]).await.unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("name") && lines[0].contains("next at"));
    assert!(
        lines[1].starts_with("daily-report")
            && lines[1].contains("Europe/Berlin")
            && lines[1].contains("backfill:3")
            && lines[1].contains("send_report")
            && lines[1].ends_with('-'),
        "{table}"
    );
    assert!(
        lines[2].starts_with("heartbeat") && lines[2].contains("UTC") && lines[2].contains("pings"),
        "{table}"
    );

    let json = quark(&t.store, &["schedule", "list", "--output", "json"])
        .await
        .unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "daily-report");
    assert_eq!(rows[0]["cron"], "0 30 9 * * MON-FRI");
    assert_eq!(rows[0]["timezone"], "Europe/Berlin");
    assert_eq!(rows[0]["missed"], "backfill:3");
    assert_eq!(rows[0]["activity"], "send_report");
    assert_eq!(rows[0]["input"], "ops");
    assert_eq!(rows[0]["priority"], -2);
    assert_eq!(rows[0]["next_at"], "2026-01-01T08:30:00.000000Z");
    assert_eq!(rows[0]["last_fired_at"], serde_json::Value::Null);
    let expected_next = t.store.config().clock.now() + std::time::Duration::from_secs(10);
    assert_eq!(rows[1]["next_at"], expected_next.to_string());

    let removed = quark(&t.store, &["schedule", "remove", "heartbeat"])
        .await
        .unwrap();
    assert_eq!(removed.trim(), "schedule heartbeat removed");
    let again = quark(&t.store, &["schedule", "remove", "heartbeat"])
        .await
        .unwrap_err();
    assert_eq!(again.to_string(), "no schedule `heartbeat`");
    let names: Vec<_> = t
        .store
        .list_schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.spec.name)
        .collect();
    assert_eq!(names, ["daily-report"]);
}

#[tokio::test]
async fn it_refuses_bad_schedules_and_registers_nothing() {
    let t = quark_history::testing::sqlite().await;
    let add =
        |cron: &'static str, tz: &'static str, activity: &'static str, input: &'static str| {
            [
                "schedule",
                "add",
                "bad",
                "--cron",
                cron,
                "--tz",
                tz,
                "--activity",
                activity,
                "--input",
                input,
            ]
        };
    let cases = [
        (
            add("0 25 * * *", "UTC", "send_report", "null"),
            "invalid cron expression `0 25 * * *`",
        ),
        (
            add("0 9 * * *", "Europe/Atlantis", "send_report", "null"),
            "unknown time zone `Europe/Atlantis`",
        ),
        (
            add("0 9 * * *", "UTC", "no_such_activity", "null"),
            "no activity `no_such_activity` is linked into this binary",
        ),
        (
            add("0 9 * * *", "UTC", "send_report", "{not json"),
            "the input is not valid JSON",
        ),
    ];
    for (args, expected) in cases {
        let err = quark(&t.store, &args).await.unwrap_err();
        assert!(format!("{err:#}").contains(expected), "{err:#}");
    }
    let bad_policy = quark(
        &t.store,
        &[
            "schedule",
            "add",
            "bad",
            "--cron",
            "@daily",
            "--activity",
            "send_report",
            "--missed",
            "all",
        ],
    )
    .await
    .unwrap_err();
    assert!(
        bad_policy
            .to_string()
            .contains("expected `skip` or `backfill:N`"),
        "{bad_policy}"
    );
    assert!(t.store.list_schedules().await.unwrap().is_empty());
    let table = quark(&t.store, &["schedule", "list"]).await.unwrap();
    assert_eq!(table.lines().count(), 1, "only the header: {table}");
}
