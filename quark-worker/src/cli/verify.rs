//! `quark verify`: one instance's hash chain, or every instance's.

use std::io::Write;
use std::sync::Arc;

use anyhow::bail;
use quark_history::{ChainBreak, ChainReport, InstanceFilter, Store};
use serde::Serialize;

use super::output::{self, Output};

/// One chain's verdict, as printed.
#[derive(Debug, Serialize)]
struct Verified {
    id: String,
    events: u64,
    intact: bool,
    first_mismatch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<ChainBreak>,
}

impl From<ChainReport> for Verified {
    fn from(report: ChainReport) -> Self {
        Verified {
            id: report.instance_id,
            events: report.events,
            intact: report.problem.is_none(),
            first_mismatch: report.first_mismatch,
            problem: report.problem,
        }
    }
}

/// How many instances one page of `--all` lists.
const PAGE: u32 = 500;

pub(super) async fn run(
    store: &Arc<dyn Store>,
    id: Option<String>,
    all: bool,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if !all {
        let Some(id) = id else {
            bail!("name an instance, or pass --all");
        };
        let verified = Verified::from(store.verify(&id).await?);
        if output != Output::Table {
            output::one(out, output, &verified, |_, _| Ok(()))?;
        }
        return match &verified.problem {
            None if output == Output::Table => {
                writeln!(
                    out,
                    "{}: {} events, hash chain intact",
                    verified.id, verified.events
                )?;
                Ok(())
            }
            None => Ok(()),
            Some(problem) => bail!(
                "{}: hash chain broken: {problem}; events from {} on are unverified",
                verified.id,
                problem.first_untrusted()
            ),
        };
    }
    // Every instance, a page at a time (the oldest pages last: the listing is newest first).
    let progress = indicatif::ProgressBar::no_length().with_style(
        indicatif::ProgressStyle::with_template("{spinner} verified {pos} instances ({per_sec})")
            .expect("a valid template"),
    );
    let mut broken = Vec::new();
    let mut checked = 0u64;
    let mut after = None;
    loop {
        let page = store
            .list_instances(InstanceFilter {
                after: after.clone(),
                limit: PAGE,
                // Workflow runs and entity streams alike.
                statuses: quark_history::InstanceStatus::ALL.to_vec(),
                ..InstanceFilter::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.created_at, last.id.clone()));
        for instance in &page {
            let verified = match store.verify(&instance.id).await {
                Ok(report) => Verified::from(report),
                // Purged between the listing and the check.
                Err(quark_history::Error::InstanceNotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            checked += 1;
            progress.inc(1);
            if output == Output::Jsonl {
                output::one(out, output, &verified, |_, _| Ok(()))?;
            }
            if !verified.intact {
                progress.suspend(|| {
                    if output == Output::Table {
                        let problem = verified.problem.expect("a broken chain has a problem");
                        let _ = writeln!(out, "{}: {problem}", verified.id);
                    }
                });
                broken.push(verified);
            }
        }
        if page.len() < PAGE as usize {
            break;
        }
    }
    progress.finish_and_clear();
    match output {
        Output::Table => writeln!(
            out,
            "{checked} instances verified: {} intact, {} broken",
            checked - broken.len() as u64,
            broken.len()
        )?,
        Output::Json => {
            #[derive(Serialize)]
            struct Summary<'a> {
                checked: u64,
                broken: &'a [Verified],
            }
            let summary = Summary {
                checked,
                broken: &broken,
            };
            output::one(out, output, &summary, |_, _| Ok(()))?
        }
        Output::Jsonl => {}
    }
    if !broken.is_empty() {
        const NAMED: usize = 10;
        let mut names = broken
            .iter()
            .take(NAMED)
            .map(|b| b.id.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if broken.len() > NAMED {
            names.push_str(&format!(" and {} more", broken.len() - NAMED));
        }
        bail!(
            "{} of {checked} hash chains are broken: {names}",
            broken.len()
        );
    }
    Ok(())
}
