//! The replayer: checks recorded histories against the current code before it is deployed.
//!
//! A history file is a JSON array of [`RecordedEvent`]s (what `Client::history` returns, as
//! `serde_json` writes it). [`Replayer`] replays it from its full length and from every point at
//! which a worker running the current code could pick the instance up (after each recorded
//! command), and reports either success or the first divergence, with the recorded and the
//! current command, their call sites and, when the source files are at hand, the source lines.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use quark_history::{CallSite, HistoryEvent, InstanceFilter, InstanceStatus, RecordedEvent};

use crate::client::{Client, ClientError};
use crate::command::is_command_event;
use crate::error::Nondeterminism;
use crate::executor::{Executor, Outcome};
use crate::registry::Registry;

/// Why a history could not be replayed at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a JSON array of recorded events.
    #[error("not a history (a JSON array of recorded events): {0}")]
    Json(#[from] serde_json::Error),
    /// The history does not start with `WorkflowStarted`.
    #[error("the history does not start with WorkflowStarted")]
    NotStarted,
    /// The orchestration type is not registered in the replayer's registry.
    #[error("no orchestration `{0}` is registered")]
    Unknown(String),
}

/// The result of replaying one history.
///
/// Replaying is linear in the history's length: one run is fed the history prefix by prefix.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ReplayReport {
    /// The current code makes the recorded decisions.
    Ok {
        /// How many events were replayed.
        events: usize,
        /// Where the code stands at the end of the history.
        outcome: Outcome,
        /// Patches whose old branch this history took (`ctx.patched` answered `false`).
        old_branches: BTreeSet<String>,
    },
    /// The current code departs from the history.
    Diverged(Box<Divergence>),
    /// The current code panicked while replaying the history, or waited on something Quark
    /// does not drive (the message says which).
    Panicked {
        /// How many events of the history were replayed when it panicked.
        prefix: usize,
        /// The panic's message.
        message: String,
    },
}

impl ReplayReport {
    /// Whether the history replays.
    pub fn is_ok(&self) -> bool {
        matches!(self, ReplayReport::Ok { .. })
    }
}

/// Where the code and a history part.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// The error, naming both sides.
    pub error: Nondeterminism,
    /// How many events of the history were replayed when it showed.
    pub prefix: usize,
    /// The recorded call's source line, if its file is found.
    pub expected_line: Option<String>,
    /// The current call's source line, if its file is found.
    pub actual_line: Option<String>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if let Some(line) = &self.expected_line {
            write!(f, "\n  recorded: {}", line.trim())?;
        }
        if let Some(line) = &self.actual_line {
            write!(f, "\n  now:      {}", line.trim())?;
        }
        Ok(())
    }
}

/// Replays histories against the orchestrations of a registry.
#[derive(Debug, Clone)]
pub struct Replayer {
    registry: Registry,
    source_root: Option<PathBuf>,
}

impl Replayer {
    /// A replayer for `registry`'s orchestrations.
    pub fn new(registry: Registry) -> Self {
        Replayer {
            registry,
            source_root: None,
        }
    }

    /// Where call-site paths (relative to the workspace root, as `file!()` gives them) are
    /// looked up for source lines. Default: the current directory and its ancestors.
    pub fn source_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.source_root = Some(root.into());
        self
    }

    /// Replays a history file.
    pub fn replay_file(&self, path: impl AsRef<Path>) -> Result<ReplayReport, ReplayError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.replay_json(&text)
    }

    /// Replays a history in JSON.
    pub fn replay_json(&self, json: &str) -> Result<ReplayReport, ReplayError> {
        let history: Vec<RecordedEvent> = serde_json::from_str(json)?;
        self.replay(&history)
    }

    /// Replays a history.
    pub fn replay(&self, history: &[RecordedEvent]) -> Result<ReplayReport, ReplayError> {
        let Some(HistoryEvent::WorkflowStarted { instance_type, .. }) =
            history.first().map(|e| &e.event)
        else {
            return Err(ReplayError::NotStarted);
        };
        let orchestration = self
            .registry
            .orchestration(instance_type)
            .ok_or_else(|| ReplayError::Unknown(instance_type.clone()))?;
        let instance_id = &history[0].instance_id;
        // Every point a worker could resume at, shortest first; the full history last. One run
        // is fed the history up to each point in turn, which is what a replay of that prefix
        // computes: the run learns each part before it runs the code on it. Where it cannot be
        // (the run issued a command ahead of a prefix that the history records differently, or
        // it ended before the history does), a new run replays that prefix from the start.
        let prefixes = (1..history.len())
            .filter(|&k| is_command_event(&history[k - 1].event))
            .chain([history.len()]);
        let mut outcome = Outcome::Waiting;
        let mut old_branches = BTreeSet::new();
        let mut run = Executor::new(instance_id, "default");
        let mut fed = 0;
        for k in prefixes {
            if !run.is_live() {
                run = Executor::new(instance_id, "default");
                fed = 0;
            }
            run.feed(orchestration.as_ref(), &history[fed..k]);
            fed = k;
            if run.is_stale() {
                run = Executor::new(instance_id, "default");
                run.feed(orchestration.as_ref(), &history[..k]);
            }
            let r = run.turn("default");
            old_branches = r
                .patches
                .into_iter()
                .filter_map(|(patch, old)| old.then_some(patch))
                .collect();
            match r.outcome {
                Outcome::Nondeterminism(error) => {
                    return Ok(ReplayReport::Diverged(Box::new(Divergence {
                        expected_line: self.line(error.expected_site.as_ref()),
                        actual_line: self.line(error.actual_site.as_ref()),
                        error,
                        prefix: k,
                    })));
                }
                Outcome::Panicked(message) | Outcome::Stuck(message) => {
                    return Ok(ReplayReport::Panicked { prefix: k, message });
                }
                other => outcome = other,
            }
        }
        Ok(ReplayReport::Ok {
            events: history.len(),
            outcome,
            old_branches,
        })
    }

    /// The running instances that take the old branch of `patch` under the current code: while
    /// any remain, the code before the patch must stay. (Instances that have not reached the
    /// patch yet take the new branch and are not listed.) Instances of types this replayer does
    /// not know are skipped; those whose history no longer replays are listed, since they
    /// need attention before anything is deleted.
    pub async fn old_branch_instances(
        &self,
        client: &Client,
        patch: &str,
    ) -> Result<Vec<String>, ClientError> {
        let mut found = Vec::new();
        let mut after = None;
        loop {
            let page = client
                .list(InstanceFilter {
                    // A blocked instance has not ended: its next turn runs the new code too.
                    statuses: vec![InstanceStatus::Running, InstanceStatus::Blocked],
                    after: after.clone(),
                    limit: 100,
                    ..InstanceFilter::default()
                })
                .await?;
            let Some(last) = page.last() else {
                return Ok(found);
            };
            after = Some((last.created_at, last.id.clone()));
            for instance in page {
                if !self.registry.has_orchestration(&instance.instance_type) {
                    continue;
                }
                let history = client.history(&instance.id).await?;
                match self.replay(&history) {
                    Ok(ReplayReport::Ok { old_branches, .. }) if !old_branches.contains(patch) => {}
                    _ => found.push(instance.id),
                }
            }
        }
    }

    fn line(&self, site: Option<&CallSite>) -> Option<String> {
        let site = site?;
        let roots: Vec<PathBuf> = match &self.source_root {
            Some(root) => vec![root.clone()],
            None => std::env::current_dir()
                .ok()?
                .ancestors()
                .map(Path::to_path_buf)
                .collect(),
        };
        let text = roots
            .iter()
            .find_map(|root| std::fs::read_to_string(root.join(&site.file)).ok())?;
        let index = usize::try_from(site.line).ok()?.checked_sub(1)?;
        text.lines().nth(index).map(str::to_string)
    }
}
