//! `quark tx ...`: two-phase transactions across databases: what is prepared and undecided or
//! unfinished (`in-doubt`), finishing one by hand (`resolve`), and a recovery pass (`recover`).
//! They talk to the participants directly, and to the engine's database for the decisions.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use quark_history::Store;
use quark_history::two_phase::{Coordinator, Decision, Participants};
use serde::Serialize;

use super::duration;
use super::output::{self, Output, table, write_table};

/// The participants, as the workers name them.
#[derive(Debug, Clone, Args)]
pub struct ParticipantArgs {
    /// A participant: `NAME=postgres://...` (repeat it, or list them comma-separated in
    /// `QUARK_PARTICIPANTS`). Name the same ones as the workers do.
    #[arg(
        long = "participant",
        value_name = "NAME=URL",
        value_delimiter = ',',
        env = "QUARK_PARTICIPANTS",
        required = true
    )]
    pub participants: Vec<String>,
}

impl ParticipantArgs {
    /// The participants these arguments name.
    pub fn open(&self) -> anyhow::Result<Participants> {
        participants(&self.participants)
    }
}

/// Participants from `NAME=URL` specifications.
pub(crate) fn participants(specs: &[String]) -> anyhow::Result<Participants> {
    let pairs = specs
        .iter()
        .map(|spec| Participants::parse_spec(spec))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Participants::connect(pairs)?)
}

/// `quark tx ...`
#[derive(Debug, Subcommand)]
pub enum TxCommand {
    /// Lists every branch this deployment's two-phase transactions left prepared in a
    /// participant, with its age and the recorded decision (none: its coordinator has not
    /// decided, and recovery gives it up after a minute).
    InDoubt {
        /// The participants.
        #[command(flatten)]
        participants: ParticipantArgs,
    },
    /// Finishes one transaction by hand in every participant that holds it. A decision already
    /// recorded is carried out instead of the one asked for (it is never contradicted), and
    /// printed.
    Resolve {
        /// The global id (`q2pc:...`), as `in-doubt` lists it.
        gid: String,
        /// Commit it.
        #[arg(long, conflicts_with = "abort", required_unless_present = "abort")]
        commit: bool,
        /// Roll it back.
        #[arg(long)]
        abort: bool,
        /// The participants.
        #[command(flatten)]
        participants: ParticipantArgs,
    },
    /// One recovery pass, as every worker with participants runs every few seconds: finishes
    /// decided branches and gives up undecided ones older than `--grace`.
    Recover {
        /// How old an undecided branch must be to be given up.
        #[arg(long, default_value = "60s", value_parser = duration::parse)]
        grace: Duration,
        /// The participants.
        #[command(flatten)]
        participants: ParticipantArgs,
    },
}

#[derive(Serialize)]
struct InDoubtRow {
    gid: String,
    participant: String,
    age_seconds: f64,
    decision: Option<&'static str>,
}

#[derive(Serialize)]
struct Resolved {
    gid: String,
    decision: &'static str,
}

#[derive(Serialize)]
struct RecoveredRow {
    committed: usize,
    rolled_back: usize,
    given_up: usize,
    pending: usize,
    forgotten: usize,
    unreachable: Vec<String>,
}

pub(super) async fn run(
    store: &Arc<dyn Store>,
    cmd: TxCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        TxCommand::InDoubt { participants } => {
            let coordinator = Coordinator::new(Arc::clone(store), participants.open()?);
            let rows: Vec<InDoubtRow> = coordinator
                .in_doubt()
                .await
                .context("listing prepared transactions")?
                .into_iter()
                .map(|d| InDoubtRow {
                    gid: d.gid,
                    participant: d.participant,
                    age_seconds: d.age.as_secs_f64(),
                    decision: d.decision.map(Decision::as_str),
                })
                .collect();
            output::rows(out, output, &rows, |out, rows| {
                let mut t = table(["gid", "participant", "prepared", "decision"]);
                for r in rows {
                    t.add_row([
                        r.gid.clone(),
                        r.participant.clone(),
                        format!("{:.0}s ago", r.age_seconds),
                        r.decision.unwrap_or("none yet").to_string(),
                    ]);
                }
                write_table(out, &t)
            })
        }
        TxCommand::Resolve {
            gid,
            commit,
            abort: _,
            participants,
        } => {
            let coordinator = Coordinator::new(Arc::clone(store), participants.open()?);
            let asked = if commit {
                Decision::Commit
            } else {
                Decision::Abort
            };
            let done = coordinator
                .resolve(&gid, asked)
                .await
                .with_context(|| format!("resolving {gid}"))?;
            let resolved = Resolved {
                gid,
                decision: done.as_str(),
            };
            output::one(out, output, &resolved, |out, r| {
                if done == asked {
                    writeln!(out, "{}: {}", r.gid, r.decision)?;
                } else {
                    writeln!(
                        out,
                        "{}: {} (already decided; {} was not applied)",
                        r.gid,
                        r.decision,
                        asked.as_str()
                    )?;
                }
                Ok(())
            })
        }
        TxCommand::Recover {
            grace,
            participants,
        } => {
            let coordinator = Coordinator::new(Arc::clone(store), participants.open()?);
            let pass = coordinator.recover(grace).await?;
            let row = RecoveredRow {
                committed: pass.committed,
                rolled_back: pass.rolled_back,
                given_up: pass.given_up,
                pending: pass.pending,
                forgotten: pass.forgotten,
                unreachable: pass
                    .unreachable
                    .iter()
                    .map(|(p, e)| format!("{p}: {e}"))
                    .collect(),
            };
            output::one(out, output, &row, |out, r| {
                writeln!(
                    out,
                    "committed {}, rolled back {} (given up {}), left pending {}, decisions forgotten {}",
                    r.committed, r.rolled_back, r.given_up, r.pending, r.forgotten
                )?;
                for u in &r.unreachable {
                    writeln!(out, "unreachable: {u}")?;
                }
                Ok(())
            })
        }
    }
}
