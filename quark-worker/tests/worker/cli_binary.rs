//! The `quark` binary itself, run as an operator runs it: what it opens, what it parses from the
//! environment, and the scripts it prints.

use std::path::{Path, PathBuf};
use std::process::Output;

use clap::CommandFactory;
use clap::Parser;
use quark_worker::cli::Cli;

/// Runs the stock `quark` binary with `args` and `env`, in `dir`.
fn quark(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quark"));
    command.current_dir(dir).args(args);
    // Only what the test sets: an operator's QUARK_* and OTEL_* variables must not leak in.
    for (key, _) in std::env::vars() {
        if key.starts_with("QUARK_") || key.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quark-{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn read_only_commands_neither_create_nor_migrate_a_database() {
    let dir = scratch("read-only");
    let db = dir.join("quark.db");
    let url = format!("sqlite://{}", db.display());
    let reads: [&[&str]; 9] = [
        &["workflow", "list"],
        &["workflow", "describe", "x"],
        &["workflow", "history", "x"],
        &["verify", "x"],
        &["dlq", "list"],
        &["job", "list"],
        &["queue", "stats", "default"],
        &["schedule", "list"],
        &["outbox", "list"],
    ];
    for args in reads {
        let o = quark(&dir, args, &[("QUARK_DATABASE_URL", &url)]);
        assert!(!o.status.success(), "{args:?}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("no database at") && stderr(&o).contains("quark migrate"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(!db.exists(), "{args:?} created the file");
    }
    // The default database, `quark.db` in the current directory, is not created either.
    let o = quark(&dir, &["saga", "stuck"], &[]);
    assert!(stderr(&o).contains("no database at"), "{}", stderr(&o));
    assert!(!db.exists());

    // A file without the schema (or with an older one) is not migrated.
    std::fs::write(&db, b"").unwrap();
    let o = quark(&dir, &["workflow", "list"], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("missing or older than this binary")
            && stderr(&o).contains("run `quark migrate`"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "nothing written");

    // Once migrated, they read.
    let o = quark(&dir, &["migrate", "--output", "json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let migrated: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(migrated["backend"], "sqlite");
    let o = quark(&dir, &["workflow", "list", "-o", "json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "[]");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn commands_that_write_print_json_a_script_can_read() {
    let dir = scratch("write-json");
    let env = [("QUARK_OUTPUT", "jsonl")];
    let o = quark(
        &dir,
        &["outbox", "send", "callback:audit", r#"{"n": 1}"#],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let sent: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let id = sent["message_id"].as_i64().expect("the message's id");
    let o = quark(&dir, &["queue", "pause", "images", "-o", "json"], &[]);
    let paused: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        paused,
        serde_json::json!({"queue": "images", "paused": true})
    );
    let o = quark(
        &dir,
        &[
            "queue",
            "rate-limit",
            "images",
            "--limit",
            "5",
            "--per",
            "2m",
        ],
        &env,
    );
    let limited: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(limited["rate_limit"]["per"], "2m", "{limited}");
    let o = quark(&dir, &["queue", "stats", "images"], &[]);
    assert!(
        stdout(&o).contains("PAUSED; rate limit 5 per 2m"),
        "{}",
        stdout(&o)
    );
    let o = quark(&dir, &["outbox", "list"], &env);
    let listed: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(listed["id"], id);
    assert!(
        listed["created_at"].as_str().unwrap().ends_with('Z'),
        "RFC 3339: {listed}"
    );
    // A duration without its unit is refused, naming the syntax.
    let o = quark(
        &dir,
        &[
            "queue",
            "rate-limit",
            "images",
            "--limit",
            "5",
            "--per",
            "2",
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("e.g. 30s or 5m"), "{}", stderr(&o));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn every_worker_flag_has_an_environment_variable() {
    let cli = Cli::command();
    let worker = cli.find_subcommand("worker").unwrap();
    let flags: Vec<_> = worker
        .get_arguments()
        .filter(|a| !a.is_global_set() && a.get_long().is_some())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    assert!(flags.len() >= 6, "{flags:?}");
    for flag in flags {
        assert!(
            flag.get_env().is_some(),
            "--{} has no environment variable",
            flag.get_long().unwrap()
        );
    }
}

#[test]
fn the_worker_reads_its_flags_from_the_environment() {
    let dir = scratch("worker-env");
    // Read, and refused: a duration is written as in the macros.
    let o = quark(&dir, &["worker"], &[("QUARK_SHUTDOWN_TIMEOUT", "30")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("invalid duration `30`") && stderr(&o).contains("e.g. 30s or 5m"),
        "{}",
        stderr(&o)
    );
    let o = quark(&dir, &["worker"], &[("QUARK_ACTIVITY_CONCURRENCY", "many")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("many"), "{}", stderr(&o));
    // Accepted: the stock binary then says it has nothing to run.
    let o = quark(
        &dir,
        &["worker"],
        &[("QUARK_SHUTDOWN_TIMEOUT", "5m"), ("QUARK_QUEUES", "a,b")],
    );
    assert!(
        stderr(&o).contains("no orchestrations or activities are linked"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn it_prints_shell_completions() {
    let dir = scratch("completions");
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef quark"),
        ("fish", "complete -c quark"),
    ] {
        let o = quark(&dir, &["completions", shell], &[]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("replay"),
            "{shell}: the subcommands are in it"
        );
    }
    let o = quark(&dir, &["completions", "tcsh"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("possible values"), "{}", stderr(&o));
    assert!(
        !dir.join("quark.db").exists(),
        "completions open no database"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn read_only_commands_leave_an_unmigrated_postgres_database_alone() {
    use sqlx::Connection;
    let Some(db) = quark_history::testing::postgres_empty().await else {
        return;
    };
    let dir = scratch("pg-read-only");
    let env = [("QUARK_DATABASE_URL", db.url.as_str())];
    let o = quark(&dir, &["job", "list"], &env);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("missing or older than this binary")
            && stderr(&o).contains("run `quark migrate`"),
        "{}",
        stderr(&o)
    );
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 0, "no schema was created");
    conn.close().await.unwrap();

    let o = quark(&dir, &["migrate"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = quark(&dir, &["job", "list", "-o", "jsonl"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "no jobs: no lines");
    db.cleanup().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_command_line_runs_in_a_spawned_task() {
    fn send<T: Send>(_: &T) {}
    let cli = Cli::try_parse_from(["quark", "migrate"]).unwrap();
    // A binary around `main_with` may spawn it: the future must be `Send`.
    send(&quark_worker::cli::run(cli, None));
}

#[test]
fn it_logs_one_json_object_a_line_when_asked_its_failure_included() {
    let dir = scratch("log-json");
    let missing = format!("sqlite://{}", dir.join("missing.db").display());
    let parsed = |o: &Output| -> Vec<serde_json::Value> {
        stderr(o)
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    };

    // As text, the failure is a line for people.
    let o = quark(
        &dir,
        &["workflow", "list"],
        &[("QUARK_DATABASE_URL", &missing)],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).starts_with("quark: no database at"),
        "{}",
        stderr(&o)
    );

    // As JSON, it is one error event.
    let o = quark(
        &dir,
        &["--log-format", "json", "workflow", "list"],
        &[("QUARK_DATABASE_URL", &missing)],
    );
    assert!(!o.status.success());
    let events = parsed(&o);
    let last = events.last().expect("an event");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with("no database at"),
        "{last}"
    );
    assert!(last["timestamp"].as_str().unwrap().ends_with('Z'), "{last}");

    // What the code logs comes out as JSON too (chosen here by the environment variable): the
    // store's statements, logged at debug by sqlx.
    let url = format!("sqlite://{}", dir.join("quark.db").display());
    let o = quark(
        &dir,
        &["migrate"],
        &[
            ("QUARK_DATABASE_URL", &url),
            ("QUARK_LOG_FORMAT", "json"),
            ("RUST_LOG", "sqlx=debug"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let events = parsed(&o);
    assert!(
        events.iter().any(
            |e| e["target"].as_str().is_some_and(|t| t.starts_with("sqlx"))
                && e["level"] == "DEBUG"
        ),
        "{}",
        stderr(&o)
    );
}

/// What a collector received: one HTTP request.
#[derive(Debug)]
struct Received {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// A stand-in OTLP/HTTP collector: accepts connections, records each request and answers 200.
fn collector() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let log = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                // Requests one after another on the connection (the exporter keeps it alive).
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_string();
                    let (mut length, mut content_type) = (0usize, String::new());
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        let (name, value) = line.split_once(':').unwrap();
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap(),
                            "content-type" => content_type = value.trim().to_string(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    log.lock().unwrap().push(Received {
                        path,
                        content_type,
                        body,
                    });
                    writer
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    (addr, received)
}

#[test]
fn it_exports_a_commands_span_over_otlp_and_what_the_command_wrote_carries_its_trace() {
    let dir = scratch("otlp");
    let (addr, received) = collector();
    let endpoint = format!("http://{addr}");
    // A generous export timeout (the flush at exit waits as long). The SDK's own logs are asked
    // for, so that a failure shows what the exporter saw. Run in a loop, this test failed about
    // one run in eight while the command's exit shut the tracer provider down without a flush
    // first.
    let o = quark(
        &dir,
        &["outbox", "send", "callback:audit", r#"{"n": 1}"#],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "30000"),
            (
                "RUST_LOG",
                "warn,opentelemetry=debug,opentelemetry_sdk=debug,opentelemetry_otlp=debug",
            ),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let sent_stderr = stderr(&o);

    // The message carries the trace context of the command's span.
    let o = quark(&dir, &["outbox", "list", "-o", "json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let traceparent = listed[0]["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent header: {listed}"))
        .to_string();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&parts[1][2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let span_id: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&parts[2][2 * i..2 * i + 2], 16).unwrap())
        .collect();

    // The process flushed its spans before it exited: the collector has the span, whose ids are
    // in the protobuf body as raw bytes.
    let received = received.lock().unwrap();
    let traces: Vec<&Received> = received.iter().filter(|r| r.path == "/v1/traces").collect();
    assert!(
        !traces.is_empty(),
        "nothing exported: {received:?}; the command said: {sent_stderr}"
    );
    assert!(
        traces
            .iter()
            .all(|r| r.content_type == "application/x-protobuf"),
        "{traces:?}"
    );
    let contains = |body: &[u8], needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(
        traces
            .iter()
            .any(|r| contains(&r.body, &trace_id) && contains(&r.body, &span_id)),
        "no exported span is the one {traceparent} names"
    );
    assert!(
        traces.iter().any(|r| contains(&r.body, b"quark outbox")),
        "the span is named after the command"
    );

    // Without an endpoint nothing is exported and nothing is stamped.
    let o = quark(&dir, &["outbox", "send", "callback:audit", "2"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = quark(&dir, &["outbox", "list", "-o", "json"], &[]);
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let untraced: Vec<&serde_json::Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["headers"].get("traceparent").is_none())
        .collect();
    assert_eq!(untraced.len(), 1, "{listed}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_signed_checkpoint_holds_until_history_or_the_file_is_changed() {
    let dir = scratch("checkpoint");
    let ok = |args: &[&str]| {
        let o = quark(&dir, args, &[]);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    // The key: written once, never overwritten, its public half printed.
    let o = ok(&["checkpoint", "keygen", "--out", "signing.key", "-o", "json"]);
    let generated: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let public_key = generated["public_key"].as_str().unwrap().to_string();
    assert_eq!(public_key.len(), 64, "{generated}");
    let o = quark(&dir, &["checkpoint", "keygen", "--out", "signing.key"], &[]);
    assert!(!o.status.success(), "a key file is never overwritten");

    // Two instances of three signals each, written by the store (this binary links no code).
    let append = |ids: &'static [&'static str], signals: u32| {
        let path = dir.join("quark.db");
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                use quark_history::{
                    Commit, Expected, HistoryEvent, IdReusePolicy, NewInstance, Store,
                };
                let store = quark_history::SqliteStore::open(&path).await.unwrap();
                for id in ids {
                    if store.get_instance(id).await.unwrap().is_none() {
                        let new = NewInstance::new(*id, "order", quark_history::Payload::unit());
                        store
                            .create_instance(new, IdReusePolicy::RejectDuplicate)
                            .await
                            .unwrap();
                    }
                    let events = (0..signals).map(|n| HistoryEvent::SignalReceived {
                        name: "paid".into(),
                        payload: quark_history::Payload::json(&n).unwrap(),
                    });
                    store
                        .commit(Commit::new().append(*id, Expected::Any, events))
                        .await
                        .unwrap();
                }
                store.close().await;
            });
    };
    append(&["a", "b"], 3);
    let ok = |args: &[&str]| {
        let o = quark(&dir, args, &[]);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    let o = ok(&[
        "checkpoint",
        "create",
        "--key",
        "signing.key",
        "--out",
        "cp.json",
    ]);
    let made: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(made["events"], 8, "two starts and six signals: {made}");
    let o = ok(&[
        "checkpoint",
        "verify",
        "cp.json",
        "--public-key",
        &public_key,
    ]);
    assert!(
        stdout(&o).starts_with("checkpoint holds: 8 events after 0:0 to "),
        "{}",
        stdout(&o)
    );

    // Later events do not matter; a changed file does.
    append(&["a"], 1);
    ok(&[
        "checkpoint",
        "verify",
        "cp.json",
        "--public-key",
        &public_key,
    ]);
    let mut edited = made.clone();
    edited["events"] = serde_json::json!(7);
    std::fs::write(dir.join("edited.json"), edited.to_string()).unwrap();
    let o = quark(
        &dir,
        &[
            "checkpoint",
            "verify",
            "edited.json",
            "--public-key",
            &public_key,
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("signature does not verify with the trusted key"),
        "{}",
        stderr(&o)
    );

    // Another key's checkpoint of the same history is refused by whoever trusts the first.
    ok(&["checkpoint", "keygen", "--out", "other.key"]);
    ok(&[
        "checkpoint",
        "create",
        "--key",
        "other.key",
        "--out",
        "other.json",
    ]);
    let o = quark(
        &dir,
        &[
            "checkpoint",
            "verify",
            "other.json",
            "--public-key",
            &public_key,
        ],
        &[],
    );
    assert!(!o.status.success(), "{}", stdout(&o));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `quark worker --shard ...` with a map the shards' databases disagree with refuses to start,
/// saying which shard is missing (three more PostgreSQL servers: `bash .ci/clusters`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_shard_map_disagrees_refuses_to_start() {
    let Some(dbs) = quark_history::testing::ClusterDatabases::create(3).await else {
        return;
    };
    let deployment = quark_history::shards::Shards::connect(
        [
            ("s0", &dbs.urls[0]),
            ("s1", &dbs.urls[1]),
            ("s2", &dbs.urls[2]),
        ],
        quark_history::StoreConfig::default(),
    )
    .await
    .unwrap();
    drop(deployment);
    let dir = scratch("shard-map");
    let shards = format!("s0={},s1={}", dbs.urls[0], dbs.urls[1]);
    let out = quark(&dir, &["worker"], &[("QUARK_SHARDS", &shards)]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("shard(s) `s2` are missing from this process's map")
            && err.contains("refusing to start"),
        "{err}"
    );
    dbs.cleanup().await;
}

/// `quark shards`: the map shown, a shard added (refused while a process routes by the current
/// map), listings merged across the four, an instance described from its shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shards_commands_show_add_and_read_across_shards() {
    let Some(dbs) = quark_history::testing::ClusterDatabases::create(4).await else {
        return;
    };
    let three = format!("s0={},s1={},s2={}", dbs.urls[0], dbs.urls[1], dbs.urls[2]);
    let four = format!("{three},s3={}", dbs.urls[3]);
    let dir = scratch("shards");
    let run = |args: &[&str], shards: &str| quark(&dir, args, &[("QUARK_SHARDS", shards)]);

    let shown = run(&["shards", "show", "-o", "json"], &three);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let rows: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert_eq!(rows[2]["name"], "s2");
    assert_eq!(rows[2]["generation"], 1);

    // Instances on the three shards, from a client that holds the map meanwhile.
    let shards = quark_history::shards::Shards::connect(
        [
            ("s0", &dbs.urls[0]),
            ("s1", &dbs.urls[1]),
            ("s2", &dbs.urls[2]),
        ],
        quark_history::StoreConfig::default(),
    )
    .await
    .unwrap();
    for n in 0..12 {
        let id = format!("order-{n}");
        shards
            .store_for(&id)
            .create_instance(
                quark_history::NewInstance::new(
                    id.as_str(),
                    "order",
                    quark_history::Payload::json(&n).unwrap(),
                ),
                quark_history::IdReusePolicy::RejectDuplicate,
            )
            .await
            .unwrap();
    }
    let new_shard = format!("s3={}", dbs.urls[3]);
    let busy = run(&["shards", "add", &new_shard], &three);
    assert!(!busy.status.success(), "{}", stdout(&busy));
    assert!(
        stderr(&busy).contains("in use by a worker or client"),
        "{}",
        stderr(&busy)
    );
    drop(shards);
    let added = run(&["shards", "add", &new_shard, "-o", "json"], &three);
    assert!(added.status.success(), "{}", stderr(&added));
    let rows: serde_json::Value = serde_json::from_slice(&added.stdout).unwrap();
    assert_eq!(rows[3]["name"], "s3");
    assert_eq!(rows[3]["generation"], 2);

    // The old map is refused now; the new one lists all twelve, merged, and finds each.
    let old = run(&["shards", "list"], &three);
    assert!(!old.status.success());
    assert!(
        stderr(&old).contains("`s3` are missing"),
        "{}",
        stderr(&old)
    );
    let listed = run(&["shards", "list", "-o", "json", "--limit", "100"], &four);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let mut ids: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..12).map(|n| format!("order-{n}")).collect();
    expected.sort();
    assert_eq!(ids, expected);
    // The events of all four shards as one feed, in pages resumed by cursor.
    let mut after = String::new();
    let mut events = Vec::new();
    // An empty page means nothing more is final yet (another test's transaction on the server
    // may hold the gap-safe horizon back): ask again later.
    quark_history::testing::eventually("all 12 events read", async || {
        let mut args = vec!["shards", "events", "-o", "json", "--limit", "5"];
        if !after.is_empty() {
            args.extend(["--after", after.as_str()]);
        }
        let page = run(&args, &four);
        assert!(page.status.success(), "{}", stderr(&page));
        let rows: serde_json::Value = serde_json::from_slice(&page.stdout).unwrap();
        if let Some(last) = rows.as_array().unwrap().last() {
            after = last["cursor"].as_str().unwrap().to_string();
            events.extend(
                rows.as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["instance_id"].as_str().unwrap().to_string()),
            );
        }
        events.len() >= 12
    })
    .await;
    events.sort();
    assert_eq!(events, expected, "each instance's one event, once");
    for n in [0, 5, 11] {
        let id = format!("order-{n}");
        let described = run(&["shards", "describe", &id, "-o", "json"], &four);
        assert!(described.status.success(), "{id}: {}", stderr(&described));
        let row: serde_json::Value = serde_json::from_slice(&described.stdout).unwrap();
        assert_eq!(row["id"], id.as_str());
    }
    std::fs::remove_dir_all(dir).unwrap();
    dbs.cleanup().await;
}
