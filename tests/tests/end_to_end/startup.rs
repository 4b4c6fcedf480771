//! Processes started together on a fresh database: each opens the store and migrates it, and all
//! of them must come up, with the schema complete. Without a lock around the migrations, most
//! tries on SQLite lost a process ("table instances already exists", "duplicate column name").

use std::process::Stdio;
use std::time::Duration;

use quark_history::StoreConfig;
use tokio::process::Command;

/// Processes per start.
const PROCESSES: usize = 6;
/// Fresh databases per backend: a race that a start lost in most tries shows in a few.
const ROUNDS: usize = 5;

/// Starts the processes at once on `url`, and checks that every one came up and that the
/// database has every migration.
async fn start_together(url: &str) {
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_open-store"))
                .env("QUARK_DATABASE_URL", url)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("start an open-store")
        })
        .collect();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("a process comes up within 60 s")
            .unwrap();
        assert!(
            out.status.success(),
            "a process started with others failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = quark_history::open(url, StoreConfig::default())
        .await
        .unwrap();
    assert_eq!(
        store.pending_migrations().await.unwrap(),
        Vec::<i64>::new(),
        "the schema is complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_together_on_a_fresh_sqlite_file_all_come_up() {
    for round in 0..ROUNDS {
        let dir =
            std::env::temp_dir().join(format!("quark-startup-{}-{round}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        start_together(&format!("sqlite://{}/quark.db", dir.display())).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_together_on_a_fresh_postgres_database_all_come_up() {
    for _ in 0..ROUNDS {
        let Some(db) = quark_history::testing::postgres_empty().await else {
            return;
        };
        start_together(&db.url).await;
        db.cleanup().await;
    }
}
