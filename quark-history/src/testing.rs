//! Test support (feature `test-util`): fresh databases per test on both backends.
//!
//! PostgreSQL tests connect to `QUARK_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable`), create a database of their own, and drop it when
//! the test passes. When PostgreSQL cannot be reached the PostgreSQL tests are skipped with a notice
//! on the terminal, unless `CI` or `QUARK_REQUIRE_POSTGRES` is set, in which case they fail.

use std::sync::Arc;

use crate::clock::{ManualClock, Timestamp};
use crate::store::{Store, StoreConfig};

/// The time a test clock starts at: 2026-01-01T00:00:00Z.
pub const TEST_EPOCH: Timestamp = Timestamp::from_micros(1_767_225_600_000_000);

/// A store for one test, with the manual clock it runs on.
#[derive(Debug)]
pub struct TestStore {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Its clock.
    pub clock: ManualClock,
    raw: Raw,
    #[cfg(feature = "postgres")]
    pg: Option<pg::TestDatabase>,
}

/// A direct handle on a test store's database, for editing rows behind the engine's back.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Raw {
    /// The SQLite writer pool.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    /// The PostgreSQL pool.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

impl TestStore {
    /// Drops the test's database (PostgreSQL); a no-op on SQLite.
    pub async fn cleanup(self) {
        #[cfg(feature = "postgres")]
        if let Some(db) = self.pg {
            drop(self.store);
            db.drop_database().await;
        }
    }

    /// The raw database handle.
    pub fn raw(&self) -> &Raw {
        &self.raw
    }

    /// Runs one SQL statement directly on the database and returns the rows it affected.
    pub async fn execute(&self, sql: &str) -> u64 {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match &self.raw {
            #[cfg(feature = "sqlite")]
            Raw::Sqlite(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .expect("raw sql")
                .rows_affected(),
            #[cfg(feature = "postgres")]
            Raw::Postgres(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .expect("raw sql")
                .rows_affected(),
        }
    }

    /// Runs a query that returns one integer (a `SELECT count(*)`, say) directly on the database.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match &self.raw {
            #[cfg(feature = "sqlite")]
            Raw::Sqlite(pool) => sqlx::query_scalar(sql)
                .fetch_one(pool)
                .await
                .expect("raw scalar"),
            #[cfg(feature = "postgres")]
            Raw::Postgres(pool) => sqlx::query_scalar(sql)
                .fetch_one(pool)
                .await
                .expect("raw scalar"),
        }
    }

    /// Moves the test clock forward by `step` until `check` holds: virtual time for tests of timers,
    /// retries and leases. Panics after 60 s of real time, naming `what`.
    pub async fn advance_until(
        &self,
        step: std::time::Duration,
        what: &str,
        check: impl AsyncFnMut() -> bool,
    ) {
        poll_until(what, check, || self.clock.advance(step)).await;
    }

    /// The URL of the test's PostgreSQL database, if it has one (for a second connection).
    pub fn database_url(&self) -> Option<String> {
        #[cfg(feature = "postgres")]
        if let Some(db) = &self.pg {
            return Some(db.url.clone());
        }
        None
    }
}

/// The master key of the test stores [`sqlite`] and [`postgres`] make (a fixed, public one: for
/// tests only).
pub fn test_master_key() -> crate::MasterKey {
    crate::MasterKey::from_bytes([0x5a; 32])
}

/// A fresh in-memory SQLite store on a manual clock, with [`test_master_key`].
#[cfg(feature = "sqlite")]
pub async fn sqlite() -> TestStore {
    sqlite_with(StoreConfig::default().master_key(test_master_key())).await
}

/// A fresh in-memory SQLite store with `config`, its clock replaced by a manual one.
#[cfg(feature = "sqlite")]
pub async fn sqlite_with(config: StoreConfig) -> TestStore {
    let clock = ManualClock::new(TEST_EPOCH);
    let store = crate::SqliteStore::in_memory_with(config.clock(clock.clone()))
        .await
        .expect("in-memory sqlite store");
    TestStore {
        raw: Raw::Sqlite(store.pool().clone()),
        store: Arc::new(store),
        clock,
        #[cfg(feature = "postgres")]
        pg: None,
    }
}

/// A fresh SQLite store in a temporary file (several connections, WAL), on a manual clock.
#[cfg(feature = "sqlite")]
pub async fn sqlite_file(dir: &std::path::Path) -> TestStore {
    let clock = ManualClock::new(TEST_EPOCH);
    let url = format!(
        "sqlite://{}/quark-{}.db",
        dir.display(),
        uuid::Uuid::now_v7().simple()
    );
    let store = crate::SqliteStore::open_with(&url, StoreConfig::default().clock(clock.clone()))
        .await
        .expect("file sqlite store");
    TestStore {
        raw: Raw::Sqlite(store.pool().clone()),
        store: Arc::new(store),
        clock,
        #[cfg(feature = "postgres")]
        pg: None,
    }
}

/// A fresh PostgreSQL database on a manual clock, with [`test_master_key`], or `None` when PostgreSQL is unreachable and not
/// required (a notice is printed once per test binary).
#[cfg(feature = "postgres")]
pub async fn postgres() -> Option<TestStore> {
    postgres_with(StoreConfig::default().master_key(test_master_key())).await
}

/// Like [`postgres`], with `config` (its clock replaced by a manual one).
#[cfg(feature = "postgres")]
pub async fn postgres_with(config: StoreConfig) -> Option<TestStore> {
    let db = pg::TestDatabase::create().await?;
    let clock = ManualClock::new(TEST_EPOCH);
    let store = crate::PostgresStore::connect_with(&db.url, config.clock(clock.clone()))
        .await
        .expect("connect to the test database");
    Some(TestStore {
        raw: Raw::Postgres(store.pool().clone()),
        store: Arc::new(store),
        clock,
        pg: Some(db),
    })
}

/// A fresh PostgreSQL database with nothing in it, not even the schema: for tests of what
/// processes do to a new database. [`cleanup`](Self::cleanup) drops it.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct EmptyDatabase {
    /// Its URL.
    pub url: String,
    db: pg::TestDatabase,
}

#[cfg(feature = "postgres")]
impl EmptyDatabase {
    /// Drops the database.
    pub async fn cleanup(self) {
        self.db.drop_database().await;
    }
}

/// A fresh, empty PostgreSQL database, or `None` when PostgreSQL is unreachable and not required.
#[cfg(feature = "postgres")]
pub async fn postgres_empty() -> Option<EmptyDatabase> {
    let db = pg::TestDatabase::create().await?;
    Some(EmptyDatabase {
        url: db.url.clone(),
        db,
    })
}

/// The admin URL tests use.
#[cfg(feature = "postgres")]
pub fn postgres_admin_url() -> String {
    std::env::var("QUARK_TEST_DATABASE_URL")
        // Plain text, as CI runs it: TLS is tested by its own tests, which set their sslmode.
        .unwrap_or_else(|_| {
            "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".to_string()
        })
}

/// Whether a PostgreSQL failure must fail the test rather than skip it.
pub fn postgres_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("QUARK_REQUIRE_POSTGRES").is_some()
}

#[cfg(feature = "postgres")]
mod pg {
    use std::io::Write;
    use std::sync::Once;

    use sqlx::{Connection, Executor, PgConnection};

    #[derive(Debug)]
    pub(super) struct TestDatabase {
        pub(super) url: String,
        name: String,
        admin: String,
    }

    static SKIP_NOTICE: Once = Once::new();

    /// `admin` with its database replaced by `name`.
    fn database_url(admin: &str, name: &str) -> String {
        let (head, query) = match admin.split_once('?') {
            Some((head, query)) => (head, format!("?{query}")),
            None => (admin, String::new()),
        };
        let host_start = head.find("://").map_or(0, |i| i + 3);
        let base = match head[host_start..].find('/') {
            Some(j) => &head[..host_start + j],
            None => head,
        };
        format!("{base}/{name}{query}")
    }

    impl TestDatabase {
        pub(super) async fn create() -> Option<Self> {
            Self::create_on(super::postgres_admin_url(), super::postgres_required()).await
        }

        /// A fresh database on the server of `admin`; `None` if it is unreachable and not
        /// `required`.
        pub(super) async fn create_on(admin: String, required: bool) -> Option<Self> {
            let mut conn = match PgConnection::connect(&admin).await {
                Ok(conn) => conn,
                Err(e) if !required => {
                    SKIP_NOTICE.call_once(|| {
                        // Straight to the terminal: the test harness captures print!, not this.
                        let _ = writeln!(
                            std::io::stderr(),
                            "\nquark: PostgreSQL suite SKIPPED: cannot connect to {admin}: {e}\n\
                             quark: start PostgreSQL or set QUARK_TEST_DATABASE_URL; set QUARK_REQUIRE_POSTGRES=1 to make this an error.\n"
                        );
                    });
                    return None;
                }
                Err(e) => panic!(
                    "PostgreSQL is required (CI or QUARK_REQUIRE_POSTGRES is set) but {admin} is unreachable: {e}"
                ),
            };
            let name = format!("quark_test_{}", uuid::Uuid::now_v7().simple());
            conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .expect("create the test database");
            let _ = conn.close().await;
            let url = database_url(&admin, &name);
            Some(TestDatabase { url, name, admin })
        }

        pub(super) async fn drop_database(self) {
            if let Ok(mut conn) = PgConnection::connect(&self.admin).await {
                let _ = conn
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.name
                    )))
                    .await;
                let _ = conn.close().await;
            }
        }
    }
}

/// The extra PostgreSQL servers of the tests that span several (two-phase commit, shards):
/// `QUARK_TEST_CLUSTER_URLS`, comma-separated, else the three `.ci/clusters` makes (ports 5433 to
/// 5435).
#[cfg(feature = "postgres")]
pub fn cluster_urls() -> Vec<String> {
    match std::env::var("QUARK_TEST_CLUSTER_URLS") {
        Ok(urls) => urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(_) => (5433..=5435)
            .map(|port| format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"))
            .collect(),
    }
}

/// The PostgreSQL server a test may stop and start again (`.ci/clusters` makes it, on port 5436,
/// and no other test uses it): `QUARK_TEST_STOPPABLE_CLUSTER`, `VERSION/NAME/PORT` as
/// `pg_ctlcluster` knows it.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone)]
pub struct StoppableCluster {
    version: String,
    name: String,
    /// Its administrative URL.
    pub url: String,
}

#[cfg(feature = "postgres")]
impl StoppableCluster {
    /// The server, or `None` (with a notice) when `QUARK_TEST_STOPPABLE_CLUSTER` is not set and
    /// the extra servers are not required; a test that needs it and finds none under `CI` or
    /// `QUARK_REQUIRE_CLUSTERS` panics.
    pub fn get() -> Option<Self> {
        let Ok(spec) = std::env::var("QUARK_TEST_STOPPABLE_CLUSTER") else {
            assert!(
                !clusters_required(),
                "this test stops and starts a server of its own: run `bash .ci/clusters` and set \
                 QUARK_TEST_STOPPABLE_CLUSTER=VERSION/quark4/5436 (as .ci/run does)"
            );
            eprintln!(
                "\nquark: stopped-server suite SKIPPED: QUARK_TEST_STOPPABLE_CLUSTER is not set\n"
            );
            return None;
        };
        let parts: Vec<&str> = spec.split('/').collect();
        let [version, name, port] = parts.as_slice() else {
            panic!("QUARK_TEST_STOPPABLE_CLUSTER=`{spec}` is not VERSION/NAME/PORT");
        };
        Some(StoppableCluster {
            version: version.to_string(),
            name: name.to_string(),
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"),
        })
    }

    /// A fresh database on it, dropped by [`ClusterDatabases::cleanup`] of the result.
    pub async fn database(&self) -> ClusterDatabases {
        let db = pg::TestDatabase::create_on(self.url.clone(), true)
            .await
            .expect("the stoppable server answers");
        ClusterDatabases {
            urls: vec![db.url.clone()],
            dbs: vec![db],
        }
    }

    /// Stops the server (`pg_ctlcluster ... stop -m fast`: every session is cut).
    pub fn stop(&self) {
        self.ctl("stop", &["-m", "fast"]);
    }

    /// Starts the server again and returns once it accepts connections.
    pub async fn start(&self) {
        self.ctl("start", &[]);
        eventually("the stopped server accepts connections again", async || {
            sqlx::PgPool::connect(&self.url).await.map(drop).is_ok()
        })
        .await;
    }

    fn ctl(&self, action: &str, more: &[&str]) {
        let status = std::process::Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                &self.version,
                &self.name,
                action,
            ])
            .args(more)
            .status()
            .expect("run pg_ctlcluster");
        assert!(
            status.success(),
            "pg_ctlcluster {action} {}/{}",
            self.version,
            self.name
        );
    }
}

/// Whether a missing extra server must fail the test rather than skip it: under `CI` or
/// `QUARK_REQUIRE_CLUSTERS`.
pub fn clusters_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("QUARK_REQUIRE_CLUSTERS").is_some()
}

/// Fresh databases on `n` of the extra servers ([`cluster_urls`]), one on each, or `None` when
/// one is unreachable and they are not required (a notice is printed). `bash .ci/clusters`
/// makes the servers.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct ClusterDatabases {
    /// Their URLs, in the servers' order.
    pub urls: Vec<String>,
    dbs: Vec<pg::TestDatabase>,
}

#[cfg(feature = "postgres")]
impl ClusterDatabases {
    /// `n` fresh databases on the extra servers, one a server in turn (a fourth database is
    /// on the first server again).
    pub async fn create(n: usize) -> Option<Self> {
        let urls = cluster_urls();
        assert!(
            !urls.is_empty() || n == 0,
            "the test needs extra PostgreSQL servers; QUARK_TEST_CLUSTER_URLS names none"
        );
        let mut dbs = Vec::with_capacity(n);
        for admin in urls.into_iter().cycle().take(n) {
            match pg::TestDatabase::create_on(admin.clone(), clusters_required()).await {
                Some(db) => dbs.push(db),
                None => {
                    eprintln!(
                        "\nquark: multi-server suite SKIPPED: {admin} is unreachable; run `bash .ci/clusters` \
                         (set QUARK_REQUIRE_CLUSTERS=1 to make this an error)\n"
                    );
                    for db in dbs {
                        db.drop_database().await;
                    }
                    return None;
                }
            }
        }
        Some(ClusterDatabases {
            urls: dbs.iter().map(|d| d.url.clone()).collect(),
            dbs,
        })
    }

    /// Drops the databases (rolling back whatever is still prepared in them first: a prepared
    /// transaction keeps its database from being dropped).
    pub async fn cleanup(self) {
        for db in self.dbs {
            if let Ok(pool) = sqlx::PgPool::connect(&db.url).await {
                let gids: Vec<String> = sqlx::query_scalar(
                    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
                )
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                for gid in gids {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "ROLLBACK PREPARED '{}'",
                        gid.replace('\'', "''")
                    )))
                    .execute(&pool)
                    .await;
                }
                pool.close().await;
            }
            db.drop_database().await;
        }
    }
}

/// Turns each `async fn name(t: &TestStore)` into a module `name` with two tests, `sqlite` and
/// `postgres`, each on a fresh database. The PostgreSQL test is skipped (with a notice) when
/// PostgreSQL is unreachable and not required; see the module docs.
///
/// ```text
/// quark_history::backend_tests!(it_does_something);
/// async fn it_does_something(t: &quark_history::testing::TestStore) { /* ... */ }
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let t = $crate::testing::sqlite().await;
                    super::$name(&t).await;
                    t.cleanup().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(t) = $crate::testing::postgres().await else { return };
                    super::$name(&t).await;
                    t.cleanup().await;
                }
            }
        )*
    };
}

/// Waits until `check` holds, asking again every few milliseconds (work happens on other tasks and
/// other connections, which nothing can signal to the test); panics after 60 s naming `what`.
pub async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    poll_until(what, check, || {}).await;
}

/// Waits (as [`eventually`]) until no store of `stores` (a deployment's shards) has an outbox
/// message still to deliver.
pub async fn outboxes_relayed(stores: &[Arc<dyn Store>]) {
    eventually("every shard's outbox is relayed", async || {
        let mut pending = 0;
        for store in stores {
            pending += store
                .list_outbox(crate::OutboxFilter::default().state(crate::MessageState::Pending))
                .await
                .unwrap()
                .len();
        }
        pending == 0
    })
    .await;
}

async fn poll_until(what: &str, mut check: impl AsyncFnMut() -> bool, mut between: impl FnMut()) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        between();
        // The pause between two checks, not a synchronization: the deadline bounds the wait.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The Redis server of the tests: `QUARK_TEST_REDIS_URL`, else the local one.
#[cfg(feature = "redis")]
pub fn redis_url() -> String {
    std::env::var("QUARK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// A fresh Redis event log (keys under a prefix of its own) on a manual clock, with
/// [`test_master_key`]; `None`, with a notice, when Redis cannot be reached, unless `CI` or
/// `QUARK_REQUIRE_REDIS` is set: then it panics, so that CI never skips the Redis suite. Delete its
/// keys with [`RedisLog::destroy`](crate::RedisLog::destroy).
#[cfg(feature = "redis")]
pub async fn redis() -> Option<(crate::RedisLog, ManualClock)> {
    let clock = ManualClock::new(TEST_EPOCH);
    let prefix = format!("{{quark-test-{}}}", uuid::Uuid::now_v7().simple());
    let config = StoreConfig::default()
        .master_key(test_master_key())
        .clock(clock.clone());
    let url = redis_url();
    let connected = crate::RedisLog::connect_with_prefix(&url, &prefix, config);
    let required = ["CI", "QUARK_REQUIRE_REDIS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    match tokio::time::timeout(std::time::Duration::from_secs(10), connected).await {
        Ok(Ok(log)) => Some((log, clock)),
        failed if required => panic!(
            "Redis is required (CI or QUARK_REQUIRE_REDIS is set) but {} is unreachable: {failed:?}",
            redis_url()
        ),
        failed => {
            eprintln!("quark: Redis tests SKIPPED: {}: {failed:?}", redis_url());
            None
        }
    }
}
