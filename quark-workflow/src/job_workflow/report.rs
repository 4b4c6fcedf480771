//! What a job workflow reports: every job with its state, at the end and while it runs.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::JobWorkflowError;

/// Where one job stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobStepState {
    /// Not started: it waits for its dependencies (or, in a progress report, for its turn to be
    /// journaled).
    Waiting,
    /// Scheduled or running (retries included).
    Running,
    /// Done, with its activity's output.
    Completed {
        /// The output, as JSON.
        output: serde_json::Value,
    },
    /// Its activity failed for good: a terminal error, or its retries ran out.
    Failed {
        /// The last error.
        error: String,
    },
    /// Never started, because job `cause` failed (upstream of it, or with
    /// [`OnFailure::FailWorkflow`](super::OnFailure::FailWorkflow) anywhere).
    Skipped {
        /// The failed job.
        cause: String,
    },
}

impl JobStepState {
    /// Whether it will not change any more.
    pub fn is_finished(&self) -> bool {
        !matches!(self, JobStepState::Waiting | JobStepState::Running)
    }

    /// `waiting`, `running`, `completed`, `failed` or `skipped`.
    pub fn label(&self) -> &'static str {
        match self {
            JobStepState::Waiting => "waiting",
            JobStepState::Running => "running",
            JobStepState::Completed { .. } => "completed",
            JobStepState::Failed { .. } => "failed",
            JobStepState::Skipped { .. } => "skipped",
        }
    }
}

impl fmt::Display for JobStepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobStepState::Failed { error } => write!(f, "failed: {error}"),
            JobStepState::Skipped { cause } => write!(f, "skipped (`{cause}` failed)"),
            other => f.write_str(other.label()),
        }
    }
}

/// One job in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobReport {
    /// The job's name.
    pub name: String,
    /// The activity it runs.
    pub activity: String,
    /// Where it stands.
    pub state: JobStepState,
}

/// Every job of a workflow with its state: the workflow's output, and its progress while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobWorkflowReport {
    /// The jobs, in the order they were added.
    pub jobs: Vec<JobReport>,
    /// The job whose failure (under [`OnFailure::FailWorkflow`](super::OnFailure::FailWorkflow)) stopped the workflow.
    pub stopped_by: Option<String>,
}

impl JobWorkflowReport {
    /// Job `name`.
    pub fn get(&self, name: &str) -> Option<&JobReport> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// The state of job `name`.
    pub fn state(&self, name: &str) -> Option<&JobStepState> {
        self.get(name).map(|j| &j.state)
    }

    /// The output of job `name`, decoded as `T`.
    pub fn output<T: DeserializeOwned>(&self, name: &str) -> Result<T, JobWorkflowError> {
        let job = self
            .get(name)
            .ok_or_else(|| JobWorkflowError::NoSuchJob(name.to_string()))?;
        match &job.state {
            JobStepState::Completed { output } => {
                T::deserialize(output).map_err(|e| JobWorkflowError::Output {
                    job: name.to_string(),
                    message: e.to_string(),
                })
            }
            other => Err(JobWorkflowError::NotCompleted {
                job: name.to_string(),
                state: other.to_string(),
            }),
        }
    }

    /// How many jobs are finished (completed, failed or skipped).
    pub fn finished(&self) -> usize {
        self.jobs.iter().filter(|j| j.state.is_finished()).count()
    }

    /// How many jobs there are.
    pub fn total(&self) -> usize {
        self.jobs.len()
    }

    /// Whether every job is finished.
    pub fn is_finished(&self) -> bool {
        self.finished() == self.total()
    }

    /// The jobs in state `label` (see [`JobStepState::label`]).
    pub fn in_state(&self, label: &str) -> Vec<&str> {
        self.jobs
            .iter()
            .filter(|j| j.state.label() == label)
            .map(|j| j.name.as_str())
            .collect()
    }
}
