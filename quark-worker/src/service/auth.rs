//! Who may call the API: bearer tokens, each with a scope.
//!
//! A token reads `qk_<id>_<secret>`. The id is public (listings and logs name it); the secret is
//! 32 random bytes that only the token's holder has: the store keeps its BLAKE3 hash, and the
//! token is shown once, when it is issued. A secret of that entropy needs no slow password hash:
//! guessing one is as hard as guessing a key.
//!
//! Every call names the scope it needs ([`Scope`]); a call without a valid token is
//! UNAUTHENTICATED, one outside its token's scope PERMISSION_DENIED, and both are logged with the
//! method and the token's id. Verified tokens are remembered for [`TOKEN_CACHE_TTL`], so a call
//! costs no database read, and a revocation takes effect within that time. A token may carry a
//! rate limit (calls a second, with a burst of one second's worth): a call over it is
//! RESOURCE_EXHAUSTED, per server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use quark_history::{Scope, Store, Timestamp, TokenRecord};
use ring::rand::SecureRandom as _;
use tonic::{Request, Status};

/// How long a verified token is trusted without reading it again: the longest a revoked token
/// goes on working on a server that verified it just before.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);

/// The prefix of every token.
const PREFIX: &str = "qk_";

/// A token just issued: its record, and the token itself, which is never shown again.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// As stored.
    pub record: TokenRecord,
    /// What its holder sends as `authorization: Bearer <token>`.
    pub token: String,
}

/// Issues a token called `name` with `scope`, limited to `rate_limit` calls a second (a burst
/// of one second's worth), or not limited.
pub async fn issue(
    store: &dyn Store,
    name: &str,
    scope: Scope,
    rate_limit: Option<u32>,
) -> Result<IssuedToken, quark_history::Error> {
    issue_in(store, None, name, scope, rate_limit).await
}

/// [`issue`], for a token limited to `namespace` (with `Some`): it sees and touches only the
/// instances, queues, jobs and schedules named `<namespace>::...`.
pub async fn issue_in(
    store: &dyn Store,
    namespace: Option<&str>,
    name: &str,
    scope: Scope,
    rate_limit: Option<u32>,
) -> Result<IssuedToken, quark_history::Error> {
    if rate_limit == Some(0) {
        return Err(quark_history::Error::Invalid(
            "a rate limit of 0 calls a second allows nothing; revoke the token instead".into(),
        ));
    }
    let rng = ring::rand::SystemRandom::new();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill(&mut id)
        .and_then(|()| rng.fill(&mut secret))
        .map_err(|_| quark_history::Error::Invalid("no randomness for a token".into()))?;
    let id = hex(&id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let record = store
        .create_token(TokenRecord {
            id: id.clone(),
            name: name.to_string(),
            scope,
            secret_hash: blake3::hash(secret.as_bytes()).to_hex().to_string(),
            rate_limit,
            created_at: Timestamp::from_micros(0),
            revoked_at: None,
            namespace: namespace.map(str::to_string),
        })
        .await?;
    Ok(IssuedToken {
        record,
        token: format!("{PREFIX}{id}_{secret}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (`None` when authentication is off).
    pub token_id: Option<String>,
    /// What the token allows.
    pub scope: Scope,
    /// The one namespace the token is limited to, if any (see [`quark_history::qualify`]).
    pub namespace: Option<String>,
}

/// Checks the calls of one server.
#[derive(Debug)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    required: bool,
    /// Token id → what was read of it, and when (by the store's clock); revoked tokens are not
    /// kept.
    cache: Mutex<HashMap<String, Known>>,
    /// Token id → its bucket of calls, for tokens with a rate limit.
    buckets: Mutex<HashMap<String, Bucket>>,
    /// The budget of token reads from the database ([`LOOKUPS_PER_SECOND`]).
    lookups: Mutex<Bucket>,
}

/// How many tokens not in the cache a server reads from the database per second, at most.
pub const LOOKUPS_PER_SECOND: u32 = 200;

/// A verified token, as remembered.
#[derive(Debug, Clone)]
struct Known {
    hash: blake3::Hash,
    scope: Scope,
    rate_limit: Option<u32>,
    namespace: Option<String>,
    read_at: Timestamp,
}

/// A token bucket: `tokens` calls left as of `at`, refilled at the rate limit, up to one
/// second's worth.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Timestamp,
}

impl Bucket {
    /// Takes one call from the bucket at `now` if there is one.
    fn take(&mut self, rate: u32, now: Timestamp) -> bool {
        let elapsed = now.as_micros().saturating_sub(self.at.as_micros()).max(0) as f64 / 1e6;
        let now = now.max(self.at);
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Authenticator {
    /// Checks tokens against `store`; with `required` false, every call is let through as admin
    /// (for development on a loopback address).
    pub fn new(store: Arc<dyn Store>, required: bool) -> Authenticator {
        Authenticator {
            store,
            required,
            cache: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            lookups: Mutex::new(Bucket {
                tokens: f64::from(LOOKUPS_PER_SECOND),
                at: Timestamp::from_micros(0),
            }),
        }
    }

    /// Lets `request` through if it carries a valid token whose scope allows `needed`, for the
    /// method called `method`.
    pub async fn check<T>(
        &self,
        request: &Request<T>,
        method: &str,
        needed: Scope,
    ) -> Result<Caller, Status> {
        if !self.required {
            return Ok(Caller {
                token_id: None,
                scope: Scope::Admin,
                namespace: None,
            });
        }
        let (id, secret) = match bearer(request) {
            Ok(parts) => parts,
            Err(why) => {
                tracing::warn!(method, reason = why, "API call refused: not authenticated");
                return Err(Status::unauthenticated(format!(
                    "{why}: send `authorization: Bearer <token>` (`quark token create` issues one)"
                )));
            }
        };
        let (scope, rate_limit, namespace) = match self.verify(id, secret).await? {
            Some(known) => (known.scope, known.rate_limit, known.namespace),
            None => {
                tracing::warn!(
                    method,
                    token = id,
                    "API call refused: invalid or revoked token"
                );
                return Err(Status::unauthenticated("invalid or revoked token"));
            }
        };
        if !scope.allows(needed) {
            tracing::warn!(method, token = id, %scope, %needed, "API call refused: outside the token's scope");
            return Err(Status::permission_denied(format!(
                "token `{id}` has scope {scope}; {method} needs {needed}"
            )));
        }
        if let Some(rate) = rate_limit {
            let now = self.store.config().clock.now();
            let allowed = self
                .buckets
                .lock()
                .unwrap()
                .entry(id.to_string())
                .or_insert(Bucket {
                    tokens: f64::from(rate),
                    at: now,
                })
                .take(rate, now);
            if !allowed {
                tracing::warn!(
                    method,
                    token = id,
                    rate,
                    "API call refused: over the token's rate limit"
                );
                return Err(Status::resource_exhausted(format!(
                    "token `{id}` is limited to {rate} calls a second; slow down and retry"
                )));
            }
        }
        Ok(Caller {
            token_id: Some(id.to_string()),
            scope,
            namespace,
        })
    }

    /// What is known of token `id` if `secret` is its secret and it is not revoked.
    async fn verify(&self, id: &str, secret: &str) -> Result<Option<Known>, Status> {
        let presented = blake3::hash(secret.as_bytes());
        let now = self.store.config().clock.now();
        // A clock that stepped back makes an entry stale, not fresh for longer.
        let fresh = |at: &Timestamp| {
            let age = now.as_micros().saturating_sub(at.as_micros());
            (0..TOKEN_CACHE_TTL.as_micros() as i64).contains(&age)
        };
        let cached = self
            .cache
            .lock()
            .unwrap()
            .get(id)
            .filter(|k| fresh(&k.read_at))
            .cloned();
        let known = match cached {
            Some(known) => known,
            None => {
                // Reads of ids not in the cache are budgeted, so that calls with made-up ids
                // cannot turn into a database read each: over the budget, they are refused
                // unread (a real token is read again once the budget refills).
                let allowed = self.lookups.lock().unwrap().take(LOOKUPS_PER_SECOND, now);
                if !allowed {
                    return Ok(None);
                }
                let Some(record) = self.store.token(id).await.map_err(super::status::store)? else {
                    return Ok(None);
                };
                if record.revoked_at.is_some() {
                    self.cache.lock().unwrap().remove(id);
                    return Ok(None);
                }
                let Ok(hash) = blake3::Hash::from_hex(&record.secret_hash) else {
                    return Ok(None);
                };
                let known = Known {
                    hash,
                    scope: record.scope,
                    rate_limit: record.rate_limit,
                    namespace: record.namespace,
                    read_at: now,
                };
                self.cache
                    .lock()
                    .unwrap()
                    .insert(id.to_string(), known.clone());
                known
            }
        };
        // blake3::Hash compares in constant time.
        Ok((known.hash == presented).then_some(known))
    }
}

/// The token id and secret of a request's `authorization: Bearer qk_<id>_<secret>` header.
fn bearer<T>(request: &Request<T>) -> Result<(&str, &str), &'static str> {
    let value = request
        .metadata()
        .get("authorization")
        .ok_or("no token")?
        .to_str()
        .map_err(|_| "a malformed authorization header")?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or("an authorization header that is not a bearer token")?
        .trim();
    token
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .filter(|(id, secret)| !id.is_empty() && !secret.is_empty())
        .ok_or("a bearer token that is not a Quark token")
}
