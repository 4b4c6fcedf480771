//! The databases a two-phase transaction writes in, and one transaction's part in each.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Row as _};

use super::decision::check_participant_name;
use crate::error::{Error, Result};

/// How long a branch's statement waits for a row lock before it fails, by default. A branch
/// prepared by a coordinator that died keeps its locks until recovery finishes it; this bounds
/// how long other work waits on them (it fails, and is retried).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL databases two-phase transactions may write in, by name. Every worker and the
/// command line must name the same ones: a prepared branch is finished through its participant's
/// name. Pools connect lazily, so a participant that is down does not keep a worker from starting.
#[derive(Clone, Default)]
pub struct Participants {
    pools: Arc<BTreeMap<String, PgPool>>,
    lock_timeout: Option<Duration>,
}

impl fmt::Debug for Participants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.pools.keys()).finish()
    }
}

impl Participants {
    /// Participants from `(name, url)` pairs. Fails on a name that is not one (letters, digits,
    /// `_`, `-`), a name given twice, or a URL that does not parse; connects to none yet.
    pub fn connect<N, U>(specs: impl IntoIterator<Item = (N, U)>) -> Result<Self>
    where
        N: Into<String>,
        U: AsRef<str>,
    {
        let mut pools = BTreeMap::new();
        for (name, url) in specs {
            let name = name.into();
            check_participant_name(&name)?;
            let options = PgConnectOptions::from_str(url.as_ref())
                .map_err(|e| Error::Invalid(format!("participant `{name}`: {e}")))?
                .application_name("quark-2pc");
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .test_before_acquire(true)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(options);
            if pools.insert(name.clone(), pool).is_some() {
                return Err(Error::Invalid(format!(
                    "participant `{name}` is named twice"
                )));
            }
        }
        Ok(Participants {
            pools: Arc::new(pools),
            lock_timeout: Some(DEFAULT_LOCK_TIMEOUT),
        })
    }

    /// Parses `NAME=URL`, as the command line and `QUARK_PARTICIPANTS` give a participant.
    pub fn parse_spec(spec: &str) -> Result<(String, String)> {
        match spec.split_once('=') {
            Some((name, url)) if !name.is_empty() && !url.is_empty() => {
                check_participant_name(name)?;
                Ok((name.to_owned(), url.to_owned()))
            }
            _ => Err(Error::Invalid(format!(
                "`{spec}` is not a participant: write NAME=postgres://..."
            ))),
        }
    }

    /// These participants, their branches waiting at most `timeout` for a row lock (`None`: as
    /// long as the server's `lock_timeout` says).
    pub fn lock_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Their names, in order (the order branches are prepared and finished in).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    /// The pool of participant `name`.
    pub fn pool(&self, name: &str) -> Result<&PgPool> {
        self.pools.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            Error::Invalid(format!(
                "no participant is named `{name}` (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    /// Opens a branch in participant `name`: a transaction on one of its connections.
    pub(crate) async fn begin(&self, name: &str) -> Result<Branch> {
        let mut conn = self.pool(name)?.acquire().await?;
        let begin = match self.lock_timeout {
            Some(t) => format!("BEGIN; SET LOCAL lock_timeout = '{}ms'", t.as_millis()),
            None => "BEGIN".to_owned(),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(begin))
            .execute(&mut *conn)
            .await?;
        Ok(Branch {
            participant: name.to_owned(),
            conn: Some(conn),
        })
    }

    /// The transactions prepared in participant `name` whose global id starts with `prefix`, with
    /// how long ago each was prepared (by the participant's clock).
    pub(crate) async fn prepared(
        &self,
        name: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Duration)>> {
        let rows = sqlx::query(
            "SELECT gid, GREATEST(EXTRACT(EPOCH FROM now() - prepared), 0)::float8 AS age \
             FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1) \
             ORDER BY prepared",
        )
        .bind(prefix)
        .fetch_all(self.pool(name)?)
        .await?;
        rows.iter()
            .map(|row| {
                let age: f64 = row.try_get("age")?;
                Ok((row.try_get("gid")?, Duration::from_secs_f64(age)))
            })
            .collect()
    }

    /// Finishes prepared transaction `gid` in participant `name` by `decision`: `Ok(true)` if it
    /// did, `Ok(false)` if nothing by that id is prepared there (it was finished already).
    pub(crate) async fn finish(
        &self,
        name: &str,
        gid: &str,
        decision: super::Decision,
    ) -> Result<bool> {
        super::decision::check_gid(gid)?;
        let verb = match decision {
            super::Decision::Commit => "COMMIT PREPARED",
            super::Decision::Abort => "ROLLBACK PREPARED",
        };
        let sql = format!("{verb} '{gid}'");
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self.pool(name)?)
            .await
        {
            Ok(_) => Ok(true),
            // undefined_object: no prepared transaction by that id.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42704") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// One two-phase transaction's part in one participant: an open transaction on one of its
/// connections. Run your statements on [`connection`](Self::connection). Dropped before it is
/// prepared, it rolls back (its connection is closed).
pub struct Branch {
    participant: String,
    conn: Option<PoolConnection<Postgres>>,
}

impl fmt::Debug for Branch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Branch")
            .field("participant", &self.participant)
            .finish_non_exhaustive()
    }
}

impl Branch {
    /// The participant's name.
    pub fn participant(&self) -> &str {
        &self.participant
    }

    /// The connection, inside the branch's transaction.
    pub fn connection(&mut self) -> &mut PgConnection {
        // Only `prepare` takes the connection, and it consumes the branch.
        self.conn
            .as_mut()
            .expect("an open branch has its connection")
    }

    /// Prepares the branch as `gid`: from here it survives a crash of either side and holds its
    /// locks until it is finished by `COMMIT PREPARED` or `ROLLBACK PREPARED`.
    pub(crate) async fn prepare(mut self, gid: &str) -> Result<()> {
        super::decision::check_gid(gid)?;
        let sql = format!("PREPARE TRANSACTION '{gid}'");
        let mut conn = self.conn.take().expect("an open branch has its connection");
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
        {
            Ok(_) => {
                // A transaction that had failed (an error the caller caught and went on from)
                // is rolled back by PREPARE TRANSACTION without an error: only the catalog tells.
                let prepared: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM pg_prepared_xacts WHERE gid = $1")
                        .bind(gid)
                        .fetch_optional(&mut *conn)
                        .await?;
                if prepared.is_none() {
                    return Err(Error::Invalid(format!(
                        "the branch in `{}` failed before it was prepared (a statement in it \
                         failed and the error was not returned); it was rolled back",
                        self.participant
                    )));
                }
                // The connection is out of the transaction: back to the pool.
                Ok(())
            }
            Err(e) => {
                // Whatever state the session is in, it is not reused.
                drop(conn.detach());
                Err(e.into())
            }
        }
    }
}

impl Drop for Branch {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Closing the session rolls its transaction back on the server; it never goes back
            // to the pool in the middle of one.
            drop(conn.detach());
        }
    }
}
