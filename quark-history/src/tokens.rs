//! Bearer tokens of the API: who may call it, and with what scope.
//!
//! The store keeps a token's id, name, scope and a hash of its secret, never the secret itself;
//! making secrets and checking them is the API server's (`quark_worker::service::auth`).

use futures::future::BoxFuture;

use crate::clock::Timestamp;
use crate::error::Result;

/// What a token allows. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Reading: describe, list, history, results.
    Read,
    /// Reading and changing workflows and jobs: start, signal, cancel, terminate, enqueue.
    Write,
    /// Everything, including the operator's calls (queues, dead letters, tokens).
    Admin,
}

impl Scope {
    /// Its name in the database and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token of this scope may make a call that needs `needed`.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope `{other}` (expected read, write or admin)"
            )),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as stored: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Its id, the public part of the token.
    pub id: String,
    /// What it is for, as its creator named it.
    pub name: String,
    /// What it allows.
    pub scope: Scope,
    /// The hash of its secret, hex.
    pub secret_hash: String,
    /// Calls a second it may make, with a burst of one second's worth; `None`: no limit.
    pub rate_limit: Option<u32>,
    /// The one namespace it may see and touch (see [`qualify`](crate::qualify)); `None`: every
    /// namespace, and the names outside any.
    pub namespace: Option<String>,
    /// When it was created, by the store's clock (set by the store).
    pub created_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

/// The API's tokens. A capability of every [`Store`](crate::Store); sealed.
pub trait TokenStore: Send + Sync {
    /// Stores a new token (its `created_at` is set to now, `revoked_at` to none).
    /// [`Error::Invalid`](crate::Error::Invalid) if the id is taken.
    fn create_token(&self, token: TokenRecord) -> BoxFuture<'_, Result<TokenRecord>>;

    /// The token `id`, revoked or not.
    fn token<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<TokenRecord>>>;

    /// Every token, revoked ones included, oldest first.
    fn list_tokens(&self) -> BoxFuture<'_, Result<Vec<TokenRecord>>>;

    /// Revokes token `id` now. False if there is no such token or it was revoked already.
    fn revoke_token<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>>;
}
