//! Opening the database a command line points at: for writing (migrated first, created if it is a
//! SQLite file that does not exist), or for reading only (neither created nor migrated).

use std::sync::Arc;

use anyhow::{Context, bail};
use quark_history::{MasterKey, Store, StoreConfig};

/// The stores' settings: the defaults, with the master key of `QUARK_MASTER_KEY` if it is set
/// (needed to read or write personal data sealed in entity events).
fn config() -> anyhow::Result<StoreConfig> {
    let config = StoreConfig::default();
    match std::env::var("QUARK_MASTER_KEY") {
        Ok(hex) => Ok(config.master_key(
            MasterKey::from_hex(&hex).map_err(|e| anyhow::anyhow!("QUARK_MASTER_KEY: {e}"))?,
        )),
        Err(_) => Ok(config),
    }
}

/// The database when none is named.
const DEFAULT_URL: &str = "sqlite://quark.db";

/// Opens the store a command line points at, applying the schema migrations it lacks.
pub async fn open_store(database_url: Option<&str>) -> anyhow::Result<Arc<dyn Store>> {
    let url = database_url.unwrap_or(DEFAULT_URL);
    quark_history::open(url, config()?)
        .await
        .with_context(|| format!("opening {}", redact(url)))
}

/// Opens the store for a command that only reads. A SQLite file that does not exist is not
/// created, and a schema that is missing or behind this binary is not migrated: both are an
/// error that says to run `quark migrate`.
pub async fn open_store_read_only(database_url: Option<&str>) -> anyhow::Result<Arc<dyn Store>> {
    let url = database_url.unwrap_or(DEFAULT_URL);
    let shown = redact(url);
    let store = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        postgres_without_migrating(url, &shown).await?
    } else if url.starts_with("sqlite:")
        && !(url.contains(":memory:") || url.contains("mode=memory"))
    {
        sqlite_without_migrating(url, &shown).await?
    } else {
        // An in-memory database is new and empty whatever the command: it is set up as usual.
        return open_store(Some(url)).await;
    };
    let pending = store
        .pending_migrations()
        .await
        .with_context(|| format!("reading the schema version of {shown}"))?;
    check_current(&shown, &pending)?;
    Ok(store)
}

#[cfg(feature = "postgres")]
async fn postgres_without_migrating(url: &str, shown: &str) -> anyhow::Result<Arc<dyn Store>> {
    let store = quark_history::PostgresStore::connect_without_migrating(url, config()?)
        .await
        .with_context(|| format!("opening {shown}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "postgres"))]
async fn postgres_without_migrating(_url: &str, _shown: &str) -> anyhow::Result<Arc<dyn Store>> {
    bail!("this binary was built without PostgreSQL (quark-worker's `postgres` feature)")
}

/// A SQLite file that exists, opened as it is.
#[cfg(feature = "sqlite")]
async fn sqlite_without_migrating(url: &str, shown: &str) -> anyhow::Result<Arc<dyn Store>> {
    use quark_history::sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    let path = SqliteConnectOptions::from_str(url)
        .with_context(|| format!("opening {shown}"))?
        .get_filename()
        .to_path_buf();
    if !path.exists() {
        bail!(
            "no database at {}; create it with `quark migrate` (a command that only reads \
             creates none)",
            path.display()
        );
    }
    let store = quark_history::SqliteStore::open_without_migrating(url, config()?)
        .await
        .with_context(|| format!("opening {shown}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "sqlite"))]
async fn sqlite_without_migrating(_url: &str, _shown: &str) -> anyhow::Result<Arc<dyn Store>> {
    bail!("this binary was built without SQLite (quark-worker's `sqlite` feature)")
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
