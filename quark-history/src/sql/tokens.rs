//! The API's tokens, for both databases (the statements are the same).

use futures::future::BoxFuture;

use super::{Row, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::tokens::{TokenRecord, TokenStore};

const COLUMNS: &str = "id, name, scope, secret_hash, rate_limit, created_at, revoked_at, namespace";

fn read<S: SqlStore>(row: &Row<S::Db>) -> Result<TokenRecord> {
    let scope: String = row.get("scope")?;
    let revoked_at: Option<i64> = row.get("revoked_at")?;
    let rate_limit: Option<i64> = row.get("rate_limit")?;
    Ok(TokenRecord {
        id: row.get("id")?,
        name: row.get("name")?,
        scope: scope.parse().map_err(Error::Invalid)?,
        secret_hash: row.get("secret_hash")?,
        rate_limit: rate_limit
            .map(|r| u32::try_from(r).map_err(|_| Error::Invalid(format!("rate limit {r}"))))
            .transpose()?,
        created_at: Timestamp::from_micros(row.get("created_at")?),
        revoked_at: revoked_at.map(Timestamp::from_micros),
        namespace: row.get("namespace")?,
    })
}

impl<S: SqlStore> TokenStore for S {
    fn create_token(&self, mut token: TokenRecord) -> BoxFuture<'_, Result<TokenRecord>> {
        Box::pin(async move {
            if let Some(ns) = &token.namespace {
                crate::check_namespace(ns).map_err(Error::Invalid)?;
            }
            token.created_at = self.settings().clock.now();
            token.revoked_at = None;
            let inserted = Stmt::<S::Db>::new(sqlx::AssertSqlSafe(format!(
                "INSERT INTO api_tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7) \
                 ON CONFLICT (id) DO NOTHING"
            )))
            .bind(token.id.as_str())
            .bind(token.name.as_str())
            .bind(token.scope.as_str())
            .bind(token.secret_hash.as_str())
            .bind(token.rate_limit.map(i64::from))
            .bind(token.created_at.as_micros())
            .bind(token.namespace.clone())
            .execute(&mut *self.writer().acquire().await?)
            .await?;
            if inserted == 0 {
                return Err(Error::Invalid(format!("token id `{}` is taken", token.id)));
            }
            Ok(token)
        })
    }

    fn token<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<TokenRecord>>> {
        Box::pin(async move {
            Stmt::<S::Db>::new(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM api_tokens WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(&mut *self.reader().acquire().await?)
            .await?
            .as_ref()
            .map(read::<S>)
            .transpose()
        })
    }

    fn list_tokens(&self) -> BoxFuture<'_, Result<Vec<TokenRecord>>> {
        Box::pin(async move {
            Stmt::<S::Db>::new(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM api_tokens ORDER BY created_at, id"
            )))
            .fetch_all(&mut *self.reader().acquire().await?)
            .await?
            .iter()
            .map(read::<S>)
            .collect()
        })
    }

    fn revoke_token<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let changed = Stmt::<S::Db>::new(
                "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(now.as_micros())
            .execute(&mut *self.writer().acquire().await?)
            .await?;
            Ok(changed > 0)
        })
    }
}
