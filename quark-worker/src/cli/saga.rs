//! `quark saga ...`: sagas whose compensation never succeeded.
//!
//! A stuck saga fails its orchestration with a failure whose details carry a
//! [`StuckCompensation`] marker (see `quark_workflow::Saga`). Finding them needs no table of its
//! own: the failed instances are listed newest first through the `(status, created_at)` index, and
//! for each only its closing event is read (one or two rows by primary key), never its history.
//! The cost is proportional to the failed instances examined, bounded by `--scan`, not to the size
//! of the database.

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use quark_workflow::StuckCompensation;
use serde::Serialize;

use super::output::{self, Output, table, write_table};
use super::place::{self, Place};
use crate::service::proto;

/// `quark saga ...`
#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Lists instances whose saga is stuck, newest first: the compensation that never succeeded,
    /// its input and its last error.
    Stuck {
        /// Only this orchestration type.
        #[arg(long = "type")]
        instance_type: Option<String>,
        /// At most this many stuck sagas.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Look at no more than this many failed instances (newest first).
        #[arg(long, default_value_t = 10_000)]
        scan: usize,
    },
}

pub use crate::sagas::{StuckSaga, stuck_sagas};

/// A stuck saga, as listed: the marker's fields beside the instance's.
#[derive(Debug, Serialize)]
struct StuckView<'a> {
    instance_id: &'a str,
    instance_type: &'a str,
    /// RFC 3339.
    failed_at: &'a str,
    compensation: &'a str,
    input: &'a serde_json::Value,
    attempts: u32,
    last_error: &'a str,
    cause: &'a str,
    skipped: &'a [String],
}

impl<'a> From<&'a StuckSaga> for StuckView<'a> {
    fn from(r: &'a StuckSaga) -> Self {
        StuckView {
            instance_id: &r.instance_id,
            instance_type: &r.instance_type,
            failed_at: &r.failed_at,
            compensation: &r.stuck.compensation,
            input: &r.stuck.input,
            attempts: r.stuck.attempts,
            last_error: &r.stuck.last_error,
            cause: &r.stuck.cause,
            skipped: &r.stuck.skipped,
        }
    }
}

/// Runs `quark saga ...`.
pub(super) async fn saga(
    place: Place<'_>,
    cmd: SagaCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        SagaCommand::Stuck {
            instance_type,
            limit,
            scan,
        } => {
            let found = place.stuck_sagas(instance_type, limit, scan).await?;
            let rows: Vec<StuckView<'_>> = found.iter().map(StuckView::from).collect();
            output::rows(out, output, &rows, |out, rows| {
                let mut t = table(["instance", "type", "compensation", "attempts", "last error"]);
                for r in rows {
                    t.add_row([
                        r.instance_id.to_string(),
                        r.instance_type.to_string(),
                        r.compensation.to_string(),
                        r.attempts.to_string(),
                        r.last_error.to_string(),
                    ]);
                }
                write_table(out, &t)?;
                for r in rows {
                    writeln!(out, "\n{}:", r.instance_id)?;
                    writeln!(out, "    input: {}", r.input)?;
                    writeln!(out, "    compensating for: {}", r.cause)?;
                    if !r.skipped.is_empty() {
                        writeln!(out, "    not run: {}", r.skipped.join(", "))?;
                    }
                }
                writeln!(out, "{} stuck saga(s)", rows.len())?;
                Ok(())
            })?;
        }
    }
    Ok(())
}

impl Place<'_> {
    /// The stuck sagas among the newest `scan` failed instances, at most `limit` of them.
    async fn stuck_sagas(
        &self,
        instance_type: Option<String>,
        limit: usize,
        scan: usize,
    ) -> anyhow::Result<Vec<StuckSaga>> {
        let remote = match self {
            Place::Database(store) => {
                return Ok(stuck_sagas(store, instance_type, limit, scan).await?);
            }
            Place::Server(remote) => remote,
        };
        let bound = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let listed = remote
            .sagas()
            .list_stuck_sagas(proto::ListStuckSagasRequest {
                workflow_type: instance_type.unwrap_or_default(),
                limit: bound(limit),
                scan: bound(scan),
            })
            .await
            .map_err(place::api)?
            .into_inner()
            .sagas;
        listed
            .into_iter()
            .map(|s| {
                Ok(StuckSaga {
                    instance_id: s.instance_id,
                    instance_type: s.workflow_type,
                    failed_at: s.failed_at,
                    // The marker's own form (its type admits no other construction).
                    stuck: serde_json::from_value::<StuckCompensation>(serde_json::json!({
                        "kind": quark_workflow::STUCK_KIND,
                        "compensation": s.compensation,
                        "input": serde_json::from_str::<serde_json::Value>(&s.input_json)
                            .context("the API sent a compensation input that is not JSON")?,
                        "attempts": s.attempts,
                        "last_error": s.last_error,
                        "cause": s.cause,
                        "skipped": s.skipped,
                    }))
                    .context("the API sent a stuck saga this build cannot read")?,
                })
            })
            .collect()
    }
}
