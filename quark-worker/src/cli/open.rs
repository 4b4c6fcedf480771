//! Opening the database a command line points at: for writing (migrated first, created if it is a
//! SQLite file that does not exist), or for reading only (neither created nor migrated).

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, bail};
use quark_history::sqlx::sqlite::SqliteConnectOptions;
use quark_history::sqlx::{ConnectOptions, Connection};
use quark_history::{PostgresStore, SqliteStore, Store, StoreConfig};

/// The database when none is named.
const DEFAULT_URL: &str = "sqlite://quark.db";

/// Opens the store a command line points at, applying the schema migrations it lacks.
pub async fn open_store(database_url: Option<&str>) -> anyhow::Result<Arc<dyn Store>> {
    let url = database_url.unwrap_or(DEFAULT_URL);
    quark_history::open(url, StoreConfig::default())
        .await
        .with_context(|| format!("opening {}", redact(url)))
}

/// Opens the store for a command that only reads. A SQLite file that does not exist is not
/// created, and a schema that is missing or behind this binary is not migrated: both are an
/// error that says to run `quark migrate`.
pub async fn open_store_read_only(database_url: Option<&str>) -> anyhow::Result<Arc<dyn Store>> {
    let url = database_url.unwrap_or(DEFAULT_URL);
    let shown = redact(url);
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = PostgresStore::connect_without_migrating(url, StoreConfig::default())
            .await
            .with_context(|| format!("opening {shown}"))?;
        let pending = store
            .pending_migrations()
            .await
            .with_context(|| format!("reading the schema version of {shown}"))?;
        check_current(&shown, &pending)?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("sqlite:") && !(url.contains(":memory:") || url.contains("mode=memory")) {
        let pending = sqlite_pending(url)
            .await
            .with_context(|| format!("opening {shown}"))?;
        check_current(&shown, &pending)?;
        // Opening a SQLite store runs its migrations; none is pending, so it writes nothing.
    }
    open_store(Some(url)).await
}

fn check_current(shown: &str, pending: &[i64]) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let versions: Vec<String> = pending.iter().map(i64::to_string).collect();
    bail!(
        "the Quark schema of {shown} is missing or older than this binary (migrations {} not \
         applied); run `quark migrate` first (a command that only reads changes no schema)",
        versions.join(", ")
    )
}

/// The migrations a SQLite file lacks, read without creating or changing it.
async fn sqlite_pending(url: &str) -> anyhow::Result<Vec<i64>> {
    let options = SqliteConnectOptions::from_str(url)?.create_if_missing(false);
    let path = options.get_filename();
    if !path.exists() {
        bail!(
            "no database at {}; create it with `quark migrate` (a command that only reads \
             creates none)",
            path.display()
        );
    }
    let mut conn = options.connect().await?;
    let applied = applied_versions(&mut conn).await?;
    conn.close().await?;
    let known = known_sqlite_versions().await?;
    Ok(known.into_iter().filter(|v| !applied.contains(v)).collect())
}

/// The migrations this binary's SQLite store applies. The store keeps its list to itself and
/// applies it to every file it opens, so a scratch file is opened, read and removed (a few
/// milliseconds, only for commands that read).
async fn known_sqlite_versions() -> anyhow::Result<Vec<i64>> {
    let path = std::env::temp_dir().join(format!("quark-schema-{}.db", uuid::Uuid::now_v7()));
    let read = async {
        let scratch = SqliteStore::open(&path).await?;
        scratch.close().await;
        let options = SqliteConnectOptions::new().filename(&path);
        let mut conn = options.connect().await?;
        let known = applied_versions(&mut conn).await;
        conn.close().await?;
        known
    };
    let known = read.await;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    known
}

async fn applied_versions(
    conn: &mut quark_history::sqlx::SqliteConnection,
) -> anyhow::Result<Vec<i64>> {
    let tracked: bool = quark_history::sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
         AND name = '_sqlx_migrations')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !tracked {
        return Ok(Vec::new());
    }
    Ok(quark_history::sqlx::query_scalar(
        "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?)
}

pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..s + 3 + colon], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_hides_passwords_in_urls() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://quark.db"), "sqlite://quark.db");
    }
}
