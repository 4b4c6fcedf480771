//! `quark token ...`: the API's bearer tokens (see `quark_worker::service::auth`).

use std::io::Write;
use std::sync::Arc;

use anyhow::bail;
use clap::Subcommand;
use quark_history::{Scope, Store, Timestamp, TokenRecord};
use serde::Serialize;

use super::output::{self, Output, rfc3339, rfc3339_opt, table, write_table};
use crate::service::auth;

/// `quark token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issues a token for the API and prints it, once: only a hash of it is stored.
    Create {
        /// What the token is for (shown in listings).
        #[arg(long)]
        name: String,
        /// What it allows: read, write (read, and start, signal, cancel, terminate) or admin.
        #[arg(long, value_parser = parse_scope)]
        scope: Scope,
        /// Calls a second it may make on each server (a burst of one second's worth is
        /// allowed); more are refused with RESOURCE_EXHAUSTED. Default: no limit.
        #[arg(long)]
        rate_limit: Option<u32>,
        /// Limits it to one namespace: it sees and touches only the instances, queues, jobs
        /// and schedules named `<namespace>::...` (a plain name it sends is taken in it).
        /// Default: every namespace.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Lists the tokens, revoked ones included (never their secrets).
    List,
    /// Revokes a token; servers refuse it within a second.
    Revoke {
        /// The token's id (the part after `qk_`, before the next `_`).
        id: String,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse()
}

/// A token as listed.
#[derive(Debug, Serialize)]
struct TokenView {
    id: String,
    name: String,
    scope: String,
    /// Calls a second, if limited.
    rate_limit: Option<u32>,
    /// The one namespace it is limited to, if any.
    namespace: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    created_at: Timestamp,
    #[serde(serialize_with = "rfc3339_opt")]
    revoked_at: Option<Timestamp>,
    /// Only when it is issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl From<TokenRecord> for TokenView {
    fn from(r: TokenRecord) -> Self {
        TokenView {
            id: r.id,
            name: r.name,
            scope: r.scope.to_string(),
            rate_limit: r.rate_limit,
            namespace: r.namespace,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
            token: None,
        }
    }
}

pub(super) async fn run(
    store: &Arc<dyn Store>,
    cmd: TokenCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            name,
            scope,
            rate_limit,
            namespace,
        } => {
            if name.trim().is_empty() {
                bail!("a token needs a name (--name): what it is for");
            }
            let issued =
                auth::issue_in(&**store, namespace.as_deref(), &name, scope, rate_limit).await?;
            let view = TokenView {
                token: Some(issued.token),
                ..TokenView::from(issued.record)
            };
            output::one(out, output, &view, |out, v| {
                writeln!(
                    out,
                    "{}\n\ntoken {} ({}, scope {}): keep it now, it is not shown again",
                    v.token.as_deref().unwrap_or_default(),
                    v.id,
                    v.name,
                    v.scope
                )?;
                Ok(())
            })
        }
        TokenCommand::List => {
            let tokens: Vec<TokenView> = store
                .list_tokens()
                .await?
                .into_iter()
                .map(TokenView::from)
                .collect();
            output::rows(out, output, &tokens, |out, tokens| {
                let mut t = table([
                    "id",
                    "name",
                    "scope",
                    "namespace",
                    "calls/s",
                    "created",
                    "revoked",
                ]);
                for v in tokens {
                    t.add_row([
                        v.id.clone(),
                        v.name.clone(),
                        v.scope.clone(),
                        v.namespace.clone().unwrap_or_else(|| "(all)".into()),
                        v.rate_limit.map(|r| r.to_string()).unwrap_or_default(),
                        v.created_at.to_string(),
                        v.revoked_at.map(|r| r.to_string()).unwrap_or_default(),
                    ]);
                }
                write_table(out, &t)
            })
        }
        TokenCommand::Revoke { id } => {
            if !store.revoke_token(&id).await? {
                match store.token(&id).await? {
                    Some(_) => bail!("token `{id}` was revoked already"),
                    None => bail!("no token `{id}`"),
                }
            }
            #[derive(Serialize)]
            struct Revoked {
                id: String,
                revoked: bool,
            }
            output::one(out, output, &Revoked { id, revoked: true }, |out, r| {
                writeln!(out, "token {} revoked", r.id)?;
                Ok(())
            })
        }
    }
}
