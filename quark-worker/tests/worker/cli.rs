//! The `quark` command line against a real store.

use std::sync::Arc;

use quark_history::{
    Commit, Expected, HistoryEvent, HistoryRange, IdReusePolicy, NewInstance, Payload,
    RecordedEvent,
};
use quark_worker::cli::{Command, DlqCommand, ListArgs, Output, WorkflowCommand, run_on};

async fn run(store: &Arc<dyn quark_history::Store>, command: Command, output: Output) -> String {
    let mut out = Vec::new();
    run_on(Arc::clone(store), command, output, None, &mut out)
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn it_exports_a_long_history_in_pages_as_the_json_the_replayer_reads() {
    let t = quark_history::testing::sqlite().await;
    t.store
        .create_instance(
            NewInstance::new("long", "t", Payload::unit()),
            IdReusePolicy::RejectDuplicate,
        )
        .await
        .unwrap();
    for chunk in 0..9u32 {
        let events = (0..500u32).map(|n| HistoryEvent::SignalReceived {
            name: format!("s{}", chunk * 500 + n),
            payload: Payload::unit(),
        });
        t.store
            .commit(Commit::new().append("long", Expected::Any, events))
            .await
            .unwrap();
    }
    let json = run(
        &t.store,
        Command::Workflow(WorkflowCommand::History { id: "long".into() }),
        Output::Json,
    )
    .await;
    let history: Vec<RecordedEvent> = serde_json::from_str(&json).unwrap();
    assert_eq!(history.len(), 4501, "every page was read");
    assert!(
        history
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1),
        "in order, no gaps or repeats"
    );

    let table = run(
        &t.store,
        Command::Workflow(WorkflowCommand::History { id: "long".into() }),
        Output::Table,
    )
    .await;
    assert_eq!(table.lines().count(), 4502, "a header and a line per event");
    assert!(table.lines().nth(4501).unwrap().contains("SignalReceived"));

    let verify = run(
        &t.store,
        Command::Verify {
            id: Some("long".into()),
            all: false,
        },
        Output::Table,
    )
    .await;
    assert_eq!(verify, "long: 4501 events, hash chain intact\n");
    let verify = run(
        &t.store,
        Command::Verify {
            id: Some("long".into()),
            all: false,
        },
        Output::Json,
    )
    .await;
    let verify: serde_json::Value = serde_json::from_str(&verify).unwrap();
    assert_eq!(
        (verify["events"].as_u64(), verify["intact"].as_bool()),
        (Some(4501), Some(true))
    );

    // Instances in JSON: times as RFC 3339 (they were microseconds), and the next page's cursor.
    let listed = run(
        &t.store,
        Command::Workflow(WorkflowCommand::List(ListArgs {
            instance_type: None,
            status: vec![],
            limit: 10,
            after: None,
            id_prefix: None,
        })),
        Output::Json,
    )
    .await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let created = t
        .store
        .get_instance("long")
        .await
        .unwrap()
        .unwrap()
        .created_at;
    assert_eq!(listed[0]["created_at"], created.to_string(), "{listed}");
    assert_eq!(listed[0]["status"], "running");
    assert_eq!(
        listed[0]["cursor"],
        format!("{}/long", created.as_micros()),
        "{listed}"
    );
    let dlq = run(
        &t.store,
        Command::Dlq(DlqCommand::List {
            queue: None,
            limit: 10,
        }),
        Output::Json,
    )
    .await;
    assert_eq!(dlq.trim(), "[]");
}

#[tokio::test]
async fn it_verifies_every_chain_and_names_each_break() {
    let t = quark_history::testing::sqlite().await;
    // More instances than one page of the listing.
    for n in 0..1203u32 {
        t.store
            .create_instance(
                NewInstance::new(format!("i{n:04}"), "t", Payload::json(&n).unwrap()),
                IdReusePolicy::RejectDuplicate,
            )
            .await
            .unwrap();
    }
    for id in ["i0007", "i0600", "i1202"] {
        let events = (0..3u32).map(|n| HistoryEvent::SignalReceived {
            name: format!("s{n}"),
            payload: Payload::unit(),
        });
        t.store
            .commit(Commit::new().append(id, Expected::Any, events))
            .await
            .unwrap();
    }
    let all = || Command::Verify {
        id: None,
        all: true,
    };
    let table = run(&t.store, all(), Output::Table).await;
    assert_eq!(table, "1203 instances verified: 1203 intact, 0 broken\n");

    // One truncated, one with a deleted middle event.
    t.execute("DELETE FROM history WHERE instance_id = 'i0007' AND seq = 4")
        .await;
    t.execute("DELETE FROM history WHERE instance_id = 'i1202' AND seq = 2")
        .await;
    let mut out = Vec::new();
    let failed = run_on(Arc::clone(&t.store), all(), Output::Table, None, &mut out)
        .await
        .unwrap_err();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("i0007: truncated: the history ends at event 3, the instance records 4"),
        "{out}"
    );
    assert!(out.contains("i1202: event 2 is missing"), "{out}");
    assert!(
        out.ends_with("1203 instances verified: 1201 intact, 2 broken\n"),
        "{out}"
    );
    assert!(
        failed
            .to_string()
            .starts_with("2 of 1203 hash chains are broken"),
        "{failed}"
    );

    let mut out = Vec::new();
    run_on(Arc::clone(&t.store), all(), Output::Json, None, &mut out)
        .await
        .unwrap_err();
    let summary: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(summary["checked"], 1203);
    let mut broken: Vec<(String, String)> = summary["broken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["problem"]["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    broken.sort();
    assert_eq!(
        broken,
        [
            ("i0007".to_string(), "truncated".to_string()),
            ("i1202".to_string(), "missing".to_string())
        ]
    );

    // One instance: the error says what is wrong.
    let one = run_on(
        Arc::clone(&t.store),
        Command::Verify {
            id: Some("i1202".into()),
            all: false,
        },
        Output::Table,
        None,
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        one.to_string(),
        "i1202: hash chain broken: event 2 is missing; events from 2 on are unverified"
    );
}

#[tokio::test]
async fn it_exports_the_global_order_as_ndjson_and_resumes_after_a_position() {
    use quark_worker::cli::{EventsCommand, Range};
    let t = quark_history::testing::sqlite().await;
    // Two instances written in turns, so that their events interleave in the global order.
    for id in ["x", "y"] {
        t.store
            .create_instance(
                NewInstance::new(id, "t", Payload::unit()),
                IdReusePolicy::RejectDuplicate,
            )
            .await
            .unwrap();
    }
    for round in 0..700u32 {
        for id in ["x", "y"] {
            let event = HistoryEvent::SignalReceived {
                name: format!("s{round}"),
                payload: Payload::unit(),
            };
            t.store
                .commit(Commit::new().append(id, Expected::Any, [event]))
                .await
                .unwrap();
        }
    }
    let export = |after: Option<&str>, until: Option<&str>| {
        Command::Events(EventsCommand::Export {
            range: Range {
                after: after.map(|a| a.parse().unwrap()),
                until: until.map(|u| u.parse().unwrap()),
            },
            out: None,
            filter: Default::default(),
        })
    };
    let lines = |text: String| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let all = lines(run(&t.store, export(None, None), Output::Table).await);
    assert_eq!(
        all.len(),
        1402,
        "two starts and 1,400 signals, over two pages"
    );
    let seqs = |lines: &[serde_json::Value], id: &str| -> Vec<u64> {
        lines
            .iter()
            .filter(|l| l["instance_id"] == id)
            .map(|l| l["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&all, "x"), (1..=701).collect::<Vec<_>>());
    assert_eq!(seqs(&all, "y"), (1..=701).collect::<Vec<_>>());
    assert_eq!(all[2]["kind"], "SignalReceived");
    assert_eq!(
        all[2]["event"]["SignalReceived"]["name"], "s0",
        "{}",
        all[2]
    );
    assert!(all[0]["recorded_at"].as_str().unwrap().ends_with('Z'));
    let history = t.store.read_history("x", HistoryRange::All).await.unwrap();
    assert_eq!(all[0]["hash"], history[0].hash.as_str());

    // Resumed after a line's position: exactly the lines after it; and stopped at another.
    let after = all[999]["position"].as_str().unwrap();
    let rest = lines(run(&t.store, export(Some(after), None), Output::Table).await);
    assert_eq!(rest, all[1000..]);
    let until = all[1099]["position"].as_str().unwrap();
    let slice = lines(run(&t.store, export(Some(after), Some(until)), Output::Table).await);
    assert_eq!(slice, all[1000..1100]);

    // To a file, which is never overwritten.
    let path = std::env::temp_dir().join(format!("quark-export-{}.ndjson", uuid::Uuid::now_v7()));
    let to_file = || {
        Command::Events(EventsCommand::Export {
            range: Range::default(),
            out: Some(path.clone()),
            filter: Default::default(),
        })
    };
    assert_eq!(run(&t.store, to_file(), Output::Table).await, "");
    assert_eq!(
        lines(std::fs::read_to_string(&path).unwrap()),
        all,
        "the file holds the same lines"
    );
    let mut out = Vec::new();
    let refused = run_on(
        Arc::clone(&t.store),
        to_file(),
        Output::Table,
        None,
        &mut out,
    )
    .await;
    assert!(refused.is_err(), "an existing file is not overwritten");
    assert_eq!(lines(std::fs::read_to_string(&path).unwrap()).len(), 1402);
    std::fs::remove_file(path).unwrap();
}

/// `quark workflow start --type T` in a binary that does not link `T`: a worker registered it,
/// so it starts at the version and on the queue the worker's code declares; a type nobody
/// registered is refused, and nothing is started.
#[tokio::test]
async fn it_starts_a_workflow_that_only_a_worker_registered() {
    use quark_history::{RegisteredType, TypeKind};
    let t = quark_history::testing::sqlite().await;
    t.store
        .publish_types(vec![RegisteredType::new(
            TypeKind::Orchestration,
            "process_order",
            4,
            "orders",
            "w1",
        )])
        .await
        .unwrap();
    let start = |instance_type: &str, id: &str| {
        Command::Workflow(WorkflowCommand::Start {
            instance_type: instance_type.into(),
            id: id.into(),
            input: r#"{"sku":"A-1"}"#.into(),
            queue: None,
        })
    };
    let printed = run(&t.store, start("process_order", "o-1"), Output::Table).await;
    assert_eq!(printed, "started o-1 (process_order)\n");
    let record = t.store.get_instance("o-1").await.unwrap().unwrap();
    assert_eq!(
        (record.version, record.queue.as_str()),
        (4, "orders"),
        "the registered version and queue"
    );
    assert_eq!(
        t.store.queue_stats("orders").await.unwrap().pending,
        1,
        "its first turn waits on the registered queue"
    );

    let mut out = Vec::new();
    let refused = run_on(
        Arc::clone(&t.store),
        start("nobody_runs_this", "o-2"),
        Output::Table,
        None,
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains(
            "no orchestration `nobody_runs_this` is linked into this binary or registered"
        ),
        "{refused:#}"
    );
    assert!(t.store.get_instance("o-2").await.unwrap().is_none());
}

/// `quark job enqueue ACTIVITY` in a binary that does not link it: the catalog gives the options
/// (queue, retries) a worker registered.
#[tokio::test]
async fn it_enqueues_a_job_of_an_activity_that_only_a_worker_registered() {
    use clap::Parser;
    use quark_history::{RegisteredType, TypeKind};
    let t = quark_history::testing::sqlite().await;
    let mut options = quark_workflow::ActivityOptions::default().queue("images");
    options.retry.max_attempts = 7;
    t.store
        .publish_types(vec![
            RegisteredType::new(TypeKind::Activity, "resize", 0, "images", "w1")
                .options(serde_json::to_string(&options).unwrap()),
        ])
        .await
        .unwrap();
    let cli = quark_worker::cli::Cli::try_parse_from([
        "quark",
        "-o",
        "json",
        "job",
        "enqueue",
        "resize",
        "--input",
        "{\"w\":64}",
    ])
    .unwrap();
    let printed = run(&t.store, cli.command, cli.output).await;
    let printed: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(printed["outcome"], "enqueued", "{printed}");
    assert_eq!(t.store.queue_stats("images").await.unwrap().pending, 1);
    let job = t
        .store
        .job(printed["job_id"].as_i64().unwrap())
        .await
        .unwrap()
        .unwrap();
    let task = quark_workflow::runner::JobTask::of(&job).unwrap();
    assert_eq!(
        task.options.retry.max_attempts, 7,
        "the registered retry policy"
    );
}

/// `quark workflow query|update` with no worker to answer: each gives up after its timeout and
/// says what to do; an update's message names its id, to wait for it without sending it twice.
#[tokio::test]
async fn it_says_when_no_worker_answers_a_query_or_an_update() {
    use quark_history::{RegisteredType, TypeKind};
    let t = quark_history::testing::sqlite().await;
    t.store
        .publish_types(vec![RegisteredType::new(
            TypeKind::Orchestration,
            "cart",
            1,
            "carts",
            "w1",
        )])
        .await
        .unwrap();
    let started = Command::Workflow(WorkflowCommand::Start {
        instance_type: "cart".into(),
        id: "cart-9".into(),
        input: "null".into(),
        queue: None,
    });
    run(&t.store, started, Output::Table).await;
    let timeout = std::time::Duration::from_millis(50);
    let asks = [
        Command::Workflow(WorkflowCommand::Query {
            id: "cart-9".into(),
            name: "items".into(),
            input: "null".into(),
            timeout,
        }),
        Command::Workflow(WorkflowCommand::Update {
            id: "cart-9".into(),
            name: "add".into(),
            input: "2".into(),
            update_id: Some("u-7".into()),
            timeout,
        }),
    ];
    let mut said = Vec::new();
    for ask in asks {
        let mut out = Vec::new();
        let e = run_on(Arc::clone(&t.store), ask, Output::Table, None, &mut out)
            .await
            .unwrap_err();
        said.push(e.to_string());
    }
    assert!(
        said[0].contains("no worker answered the query to `cart-9` in time"),
        "{said:?}"
    );
    assert!(
        said[1].contains("run the command again with --update-id u-7"),
        "{said:?}"
    );
    // Both requests wait on the instance's queue for a worker; nothing is in its history.
    assert_eq!(t.store.queue_stats("carts").await.unwrap().pending, 3);
    assert_eq!(
        t.store
            .read_history("cart-9", HistoryRange::All)
            .await
            .unwrap()
            .len(),
        1
    );
}
