//! A PostgreSQL database of its own for one benchmark run, shared by the benches that start
//! worker processes (`memory`, `locality`).

use sqlx::{Connection, Executor, PgConnection};

/// The server the benches use: `QUARK_TEST_DATABASE_URL`, or the local default.
pub(crate) fn base_url() -> String {
    std::env::var("QUARK_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` with its database replaced by `db`, its query kept.
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    if query.is_empty() {
        format!("{base}/{db}")
    } else {
        format!("{base}/{db}?{query}")
    }
}

/// A database of its own for one run, dropped by [`Scratch::drop`].
pub(crate) struct Scratch {
    admin: PgConnection,
    name: String,
    /// Its URL.
    pub(crate) url: String,
}

impl Scratch {
    /// Creates `quark_{prefix}_{uuid}` on the [`base_url`] server.
    pub(crate) async fn create(prefix: &str) -> anyhow::Result<Scratch> {
        let base = base_url();
        let name = format!("quark_{prefix}_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&base).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let url = with_database(&base, &name);
        Ok(Scratch { admin, name, url })
    }

    /// Drops the database, whoever is still connected.
    pub(crate) async fn drop(mut self) {
        let _ = self
            .admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {} WITH (FORCE)",
                self.name
            )))
            .await;
    }
}
