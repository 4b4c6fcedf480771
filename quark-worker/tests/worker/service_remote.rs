//! The API's Rust client: the typed stubs the macros generate (`greet::start(&remote, ..)`) and
//! their handles work over a `RemoteClient` exactly as over the in-process `Client`, on both
//! backends; the server's refusals come back as the client errors the in-process path gives.

use std::sync::Arc;

use quark_history::testing::TestStore;
use quark_history::{InstanceStatus, Scope};
use quark_worker::service::{RemoteClient, ServiceOptions, serve};
use quark_workflow::{Client, ClientError, WorkflowClient};

use crate::service::{doomed, greet, worker};

quark_history::backend_tests!(
    it_runs_typed_stubs_over_the_api_as_over_the_database,
    it_reports_refusals_through_the_remote_client,
);

async fn remote(t: &TestStore, scope: Option<Scope>) -> RemoteClient {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        Arc::clone(&t.store),
        listener,
        ServiceOptions::default(),
        std::future::pending(),
    ));
    let token = match scope {
        Some(scope) => Some(
            quark_worker::service::auth::issue(&*t.store, "remote", scope, None)
                .await
                .unwrap()
                .token,
        ),
        None => None,
    };
    RemoteClient::connect(&format!("http://{addr}"), token.as_deref(), None)
        .await
        .unwrap()
}

/// The same code for either client.
async fn greet_politely(client: &impl WorkflowClient, id: &str) -> String {
    let handle = greet::start(client, id, "Ada".to_string()).await.unwrap();
    assert_eq!(handle.id(), id);
    let running = handle.describe().await.unwrap();
    assert_eq!(
        (running.status, running.instance_type.as_str()),
        (InstanceStatus::Running, "greet")
    );
    handle.signal("polite", &true).await.unwrap();
    handle.result().await.unwrap()
}

async fn it_runs_typed_stubs_over_the_api_as_over_the_database(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let remote = remote(t, Some(Scope::Write)).await;
    let local = Client::new(Arc::clone(&t.store));
    assert_eq!(greet_politely(&remote, "via-api").await, "Good day, Ada");
    assert_eq!(greet_politely(&local, "via-db").await, "Good day, Ada");
    let (a, b) = (
        t.store.get_instance("via-api").await.unwrap().unwrap(),
        t.store.get_instance("via-db").await.unwrap().unwrap(),
    );
    assert_eq!(
        (a.version, &a.queue, a.status, a.history_len),
        (b.version, &b.queue, b.status, b.history_len),
        "the two paths start and run the same"
    );
    // A handle of an existing instance, from its id alone.
    let handle = greet::handle(&remote, "via-db");
    assert_eq!(handle.result().await.unwrap(), "Good day, Ada");
    running.shutdown().await;
}

async fn it_reports_refusals_through_the_remote_client(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let remote = remote(t, Some(Scope::Write)).await;
    greet::start(&remote, "taken", "A".to_string())
        .await
        .unwrap();
    let duplicate = greet::start(&remote, "taken", "B".to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(
            duplicate,
            ClientError::Store(quark_history::Error::DuplicateInstance { ref id }) if id == "taken"
        ),
        "{duplicate:?}"
    );
    let failed = doomed::start(&remote, "doomed-1", "out of stock".to_string())
        .await
        .unwrap()
        .result()
        .await
        .unwrap_err();
    assert!(
        matches!(&failed, ClientError::Failed { id, failure } if id == "doomed-1" && failure.message.contains("out of stock")),
        "{failed:?}"
    );
    let missing = greet::handle(&remote, "nobody")
        .describe()
        .await
        .unwrap_err();
    assert!(
        matches!(missing, ClientError::NotFound(ref id) if id == "nobody"),
        "{missing:?}"
    );
    let anonymous = self::remote(t, None).await;
    let refused = greet::start(&anonymous, "anon", "C".to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Api { code, .. } if code == "Unauthenticated"),
        "{refused:?}"
    );
    assert!(t.store.get_instance("anon").await.unwrap().is_none());
    running.shutdown().await;
}

quark_history::backend_tests!(the_command_line_talks_to_a_server_as_it_talks_to_the_database);

/// The stock `quark` binary with `args`, none of the operator's QUARK_* variables, off the
/// runtime's threads.
pub(crate) async fn quark(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quark"));
        command.args(&args);
        for (key, _) in std::env::vars() {
            if key.starts_with("QUARK_") || key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        command.output().unwrap()
    })
    .await
    .unwrap()
}

/// The same command through `run_on` on the store: what the database path prints.
async fn local(t: &TestStore, args: &[&str]) -> String {
    use clap::Parser;
    let cli =
        quark_worker::cli::Cli::try_parse_from(["quark", "-o", "json"].iter().chain(args.iter()))
            .unwrap();
    let mut out = Vec::new();
    quark_worker::cli::run_on(
        Arc::clone(&t.store),
        cli.command,
        cli.output,
        None,
        &mut out,
    )
    .await
    .unwrap();
    String::from_utf8(out).unwrap()
}

async fn the_command_line_talks_to_a_server_as_it_talks_to_the_database(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        Arc::clone(&t.store),
        listener,
        ServiceOptions::default(),
        std::future::pending(),
    ));
    let token = quark_worker::service::auth::issue(&*t.store, "cli", Scope::Write, None)
        .await
        .unwrap()
        .token;
    let remote = |args: &[&str]| {
        let mut all = vec!["--server", &url, "--token", &token, "-o", "json"];
        all.extend_from_slice(args);
        quark(all.into_iter().map(String::from).collect())
    };
    let ok = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout.clone()).unwrap()
    };

    let started = ok(&remote(&[
        "workflow", "start", "--type", "greet", "cli-1", "--input", "\"Ada\"",
    ])
    .await);
    let started: serde_json::Value = serde_json::from_str(&started).unwrap();
    assert_eq!(
        (started["action"].as_str(), started["id"].as_str()),
        (Some("started"), Some("cli-1"))
    );
    let record = t.store.get_instance("cli-1").await.unwrap().unwrap();
    assert_eq!((record.version, record.queue.as_str()), (3, "greetings"));
    ok(&remote(&["workflow", "signal", "cli-1", "polite", "--value", "false"]).await);
    Client::new(Arc::clone(&t.store))
        .result::<String>("cli-1")
        .await
        .unwrap();

    // Read through the server, each prints what it prints on the database.
    for args in [
        &["workflow", "describe", "cli-1"][..],
        &["workflow", "history", "cli-1"][..],
        &["workflow", "list", "--type", "greet"][..],
    ] {
        assert_eq!(ok(&remote(args).await), local(t, args).await, "{args:?}");
    }

    // Queries and updates, through the server and on the database, print the same.
    ok(&remote(&[
        "workflow", "start", "--type", "tally", "cli-t", "--input", "2",
    ])
    .await);
    let updated = ok(&remote(&[
        "workflow",
        "update",
        "cli-t",
        "add",
        "--input",
        "3",
        "--update-id",
        "u-1",
    ])
    .await);
    let updated: serde_json::Value = serde_json::from_str(&updated).unwrap();
    assert_eq!(
        (&updated["answer"], &updated["update_id"], &updated["kind"]),
        (
            &serde_json::json!(5),
            &serde_json::json!("u-1"),
            &serde_json::json!("update")
        )
    );
    let args = ["workflow", "query", "cli-t", "count"];
    let asked = ok(&remote(&args).await);
    assert_eq!(asked, local(t, &args).await);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&asked).unwrap()["answer"],
        5
    );
    let refused = remote(&["workflow", "update", "cli-t", "add", "--input", "0"]).await;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("add a positive amount"), "{said}");
    let history = t
        .store
        .read_history("cli-t", quark_history::HistoryRange::All)
        .await
        .unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|e| matches!(e.event, quark_history::HistoryEvent::UpdateAccepted { .. }))
            .count(),
        1,
        "only the accepted update is recorded"
    );

    // Refusals say why, and change nothing.
    let anonymous = quark(
        [
            "--server",
            url.as_str(),
            "workflow",
            "start",
            "--type",
            "greet",
            "cli-2",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    )
    .await;
    assert!(!anonymous.status.success());
    let said = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        said.contains("Unauthenticated") && said.contains("no token"),
        "{said}"
    );
    assert!(t.store.get_instance("cli-2").await.unwrap().is_none());
    // Jobs, dead letters and queues through the server print what the database path prints.
    let enqueued = ok(&remote(&[
        "job",
        "enqueue",
        "reject",
        "--input",
        "\"no\"",
        "--queue",
        "greetings",
    ])
    .await);
    let enqueued: serde_json::Value = serde_json::from_str(&enqueued).unwrap();
    let job = enqueued["job_id"].as_i64().unwrap().to_string();
    quark_history::testing::eventually("the rejected job is dead", async || {
        !t.store.list_dead(None, 10).await.unwrap().is_empty()
    })
    .await;
    for args in [
        &["job", "list"][..],
        &["job", "show", &job][..],
        &["dlq", "list"][..],
        &["queue", "stats", "greetings"][..],
    ] {
        assert_eq!(ok(&remote(args).await), local(t, args).await, "{args:?}");
    }
    // The operator's controls need an admin token, through the server as through the API.
    let refused = remote(&["queue", "pause", "greetings"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs admin"));
    assert!(!t.store.queue_settings("greetings").await.unwrap().paused);
    let admin = quark_worker::service::auth::issue(&*t.store, "ops", Scope::Admin, None)
        .await
        .unwrap()
        .token;
    let as_admin = |args: &[&str]| {
        let mut all = vec!["--server", &url, "--token", &admin, "-o", "json"];
        all.extend_from_slice(args);
        quark(all.into_iter().map(String::from).collect())
    };
    ok(&as_admin(&["queue", "pause", "greetings"]).await);
    assert!(t.store.queue_settings("greetings").await.unwrap().paused);
    ok(&as_admin(&["queue", "resume", "greetings"]).await);
    let redriven = ok(&as_admin(&["dlq", "retry", &job]).await);
    let redriven: serde_json::Value = serde_json::from_str(&redriven).unwrap();
    assert_eq!(redriven[0]["task_id"].to_string(), job, "{redriven}");
    // Schedules: registered by name through the server (no code linked), listed the same way.
    let added = ok(&as_admin(&[
        "schedule",
        "add",
        "nightly",
        "--cron",
        "0 3 * * *",
        "--activity",
        "compose",
        "--input",
        "[\"night\",true]",
        "--missed",
        "backfill:2",
    ])
    .await);
    let added: serde_json::Value = serde_json::from_str(&added).unwrap();
    assert_eq!(
        (&added["outcome"], &added["schedule"]["missed"]),
        (
            &serde_json::json!("created"),
            &serde_json::json!("backfill:2")
        )
    );
    let args = ["schedule", "list"];
    assert_eq!(ok(&remote(&args).await), local(t, &args).await);
    ok(&as_admin(&["schedule", "remove", "nightly"]).await);
    assert!(t.store.get_schedule("nightly").await.unwrap().is_none());
    let gone = as_admin(&["schedule", "remove", "nightly"]).await;
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no schedule `nightly`"));
    let outbox = remote(&["outbox", "list"]).await;
    assert!(!outbox.status.success());
    let said = String::from_utf8_lossy(&outbox.stderr);
    assert!(
        said.contains("`quark outbox` works on the database"),
        "{said}"
    );
    running.shutdown().await;
}
