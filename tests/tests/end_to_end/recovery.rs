//! Recovery after a `kill -9`, on SQLite and PostgreSQL, with real worker processes under a 30 s
//! lease and a 1 s heartbeat: a worker restarted under its id takes its jobs back at once; a worker
//! that stays dead loses them to another after about two heartbeats; and two live processes with
//! one id never share its jobs unnoticed. Each bound is far below the lease that recovery used to
//! wait for.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use quark_history::testing::{TestStore, eventually};
use quark_history::{Backend, JobState, Store, StoreConfig};
use quark_tests::stuck_first_time;
use quark_workflow::{Client, JobId, JobOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Jobs the first worker holds when it dies.
const JOBS: u64 = 4;
/// Recovery must take less than this: a sixth of the lease.
const BOUND: Duration = Duration::from_secs(5);

/// A database and a directory for the workers' id locks (and the SQLite file), both fresh.
struct Fixture {
    url: String,
    store: Arc<dyn Store>,
    dir: PathBuf,
    pg: Option<TestStore>,
}

impl Fixture {
    async fn sqlite() -> Fixture {
        let dir = fresh_dir();
        let url = format!("sqlite://{}/quark.db", dir.display());
        let store = quark_history::open(&url, StoreConfig::default())
            .await
            .unwrap();
        Fixture {
            url,
            store,
            dir,
            pg: None,
        }
    }

    async fn postgres() -> Option<Fixture> {
        let t = quark_history::testing::postgres().await?;
        let url = t.database_url().unwrap();
        // The test's own store on the real clock, as the workers' are: lease states compare with
        // the workers' times.
        let store = quark_history::open(&url, StoreConfig::default())
            .await
            .unwrap();
        Some(Fixture {
            url,
            store,
            dir: fresh_dir(),
            pg: Some(t),
        })
    }

    fn lock_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    async fn enqueue(&self) -> Vec<JobId> {
        let client = Client::new(Arc::clone(&self.store));
        let mut ids = Vec::new();
        for n in 0..JOBS {
            ids.push(
                client
                    .enqueue::<stuck_first_time>(&n, JobOptions::default())
                    .await
                    .unwrap(),
            );
        }
        ids
    }

    async fn leased(&self) -> u64 {
        self.store.queue_stats("default").await.unwrap().leased
    }

    /// Waits until every job is held by a worker (its first attempt, which never ends).
    async fn wait_until_all_held(&self) {
        eventually("the worker holds every job", async || {
            self.leased().await == JOBS
        })
        .await;
    }

    /// Waits until every job completed; returns how long that took from `since`, and checks that
    /// each ran twice: the attempt that died, and one more.
    async fn wait_until_all_done(&self, ids: &[JobId], since: Instant) -> Duration {
        let client = Client::new(Arc::clone(&self.store));
        eventually("every job completes", async || {
            for id in ids {
                if client.job(*id).await.unwrap().state != JobState::Completed {
                    return false;
                }
            }
            true
        })
        .await;
        let took = since.elapsed();
        for id in ids {
            assert_eq!(client.job(*id).await.unwrap().attempts, 2, "job {id}");
        }
        took
    }

    async fn cleanup(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(t) = self.pg {
            t.cleanup().await;
        }
    }
}

fn fresh_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quark-recovery-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A name no other test run uses: the process id and a counter.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `recovery-worker` process, killed if the test ends first.
struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    fn spawn(f: &Fixture, id: Option<&str>, lock_dir: &str) -> Worker {
        let mut command = Command::new(env!("CARGO_BIN_EXE_recovery-worker"));
        command
            .env("QUARK_DATABASE_URL", &f.url)
            .env("QUARK_WORKER_LOCK_DIR", f.lock_dir(lock_dir))
            .env("RUST_LOG", "error")
            .env_remove("QUARK_WORKER_ID")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(id) = id {
            command.env("QUARK_WORKER_ID", id);
        }
        let mut child = command.spawn().expect("start a recovery-worker");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Worker { child, lines }
    }

    /// Waits until it serves; returns its id.
    async fn serving(&mut self) -> String {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the worker starts within 60 s")
            .unwrap();
        let Some(line) = line else {
            let (_, stderr) = self.exit().await;
            panic!("the worker exited before it served: {stderr}");
        };
        line.strip_prefix("serving ")
            .unwrap_or_else(|| panic!("unexpected output: {line}"))
            .to_string()
    }

    /// Whether it has said it serves, without waiting.
    async fn has_served(&mut self) -> bool {
        matches!(
            tokio::time::timeout(Duration::ZERO, self.lines.next_line()).await,
            Ok(Ok(Some(_)))
        )
    }

    async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL the worker");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the worker runs").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Waits for it to exit; returns whether it succeeded, and what it wrote to stderr.
    async fn exit(&mut self) -> (bool, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the worker exits within 60 s")
            .unwrap();
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_string(&mut stderr).await.unwrap();
        }
        (status.success(), stderr)
    }
}

async fn both(test: impl AsyncFn(&Fixture)) {
    let _turn = crate::support::one_at_a_time().await;
    let f = Fixture::sqlite().await;
    test(&f).await;
    f.cleanup().await;
    if let Some(f) = Fixture::postgres().await {
        test(&f).await;
        f.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_and_restarted_takes_its_jobs_back_at_once() {
    both(async |f: &Fixture| {
        let ids = f.enqueue().await;
        // The default id: the restarted process must find the same one.
        let mut first = Worker::spawn(f, None, "host");
        let id = first.serving().await;
        f.wait_until_all_held().await;
        first.kill().await;

        let restarted = Instant::now();
        let mut again = Worker::spawn(f, None, "host");
        assert_eq!(again.serving().await, id, "a restart keeps its id");
        let took = f.wait_until_all_done(&ids, restarted).await;
        eprintln!(
            "recovery by a restart under the same id ({}): {took:?}, lease 30 s",
            f.store.backend()
        );
        assert!(took < BOUND, "{took:?}: the restart waited for the leases");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stays_dead_loses_its_jobs_to_another_after_two_heartbeats() {
    both(async |f: &Fixture| {
        let ids = f.enqueue().await;
        let mut dying = Worker::spawn(f, None, "host");
        let dead_id = dying.serving().await;
        f.wait_until_all_held().await;
        let mut other = Worker::spawn(f, None, "host");
        assert_ne!(other.serving().await, dead_id);
        dying.kill().await;

        let killed = Instant::now();
        let took = f.wait_until_all_done(&ids, killed).await;
        eprintln!(
            "recovery by another worker, heartbeat 1 s ({}): {took:?}, lease 30 s",
            f.store.backend()
        );
        assert!(
            took < BOUND,
            "{took:?}: the other worker waited for the leases"
        );
        let _ = other.kill().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_processes_never_share_an_id_unnoticed() {
    both(async |f: &Fixture| {
        let ids = f.enqueue().await;
        let mut holder = Worker::spawn(f, Some("twin"), "host-a");
        holder.serving().await;
        f.wait_until_all_held().await;

        // On the same host, the id's lock refuses a second process at once.
        let mut refused = Worker::spawn(f, Some("twin"), "host-a");
        let (ok, stderr) = refused.exit().await;
        assert!(!ok && stderr.contains("in use"), "{stderr}");
        if f.store.backend() == Backend::Sqlite {
            // A SQLite file is shared by the processes of one host only, so there is no other
            // host; and a process stopped (below) inside a write holds the file's lock, which
            // stops every writer, the one waiting for the id included, until it resumes.
            let _ = holder.kill().await;
            return;
        }

        // From another host (another lock directory), it waits while the holder heartbeats.
        let mut waiting = Worker::spawn(f, Some("twin"), "host-b");
        let mut seen = Vec::new();
        eventually("the holder heartbeats three more times", async || {
            let beat = f
                .store
                .list_workers()
                .await
                .unwrap()
                .into_iter()
                .find(|w| w.id == "twin")
                .map(|w| w.heartbeat_at);
            if beat.is_some() && seen.last() != beat.as_ref() {
                seen.extend(beat);
            }
            seen.len() > 3
        })
        .await;
        assert!(!waiting.has_served().await, "it took a live process's id");
        assert_eq!(f.leased().await, JOBS, "the holder keeps its jobs");

        // The holder stops (SIGSTOP: not dead, but silent): after two heartbeats the waiting one
        // takes over, and the holder, resumed, finds out and exits with an error.
        holder.signal("-STOP");
        let stopped = Instant::now();
        waiting.serving().await;
        let took = f.wait_until_all_done(&ids, stopped).await;
        eprintln!(
            "take-over of a silent process's id ({}): {took:?}",
            f.store.backend()
        );
        assert!(took < BOUND, "{took:?}");
        holder.signal("-CONT");
        let (ok, stderr) = holder.exit().await;
        assert!(!ok && stderr.contains("taken over"), "{stderr}");
        let _ = waiting.kill().await;
    })
    .await;
}
