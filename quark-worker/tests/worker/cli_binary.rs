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
    // Only what the test sets: an operator's QUARK_* variables must not leak in.
    for (key, _) in std::env::vars() {
        if key.starts_with("QUARK_") {
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
