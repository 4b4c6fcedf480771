//! Starting a job workflow, reading its progress and waiting for its report.
//!
//! Progress is read the way a replay reads: the workflow's history is run through the same
//! orchestration code in-process (no I/O, no commands written), and the scheduler's state at the
//! end of the history is the progress. So it needs nothing beyond the journal, is exactly what a
//! worker resuming the workflow would see, and costs one history read.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::LocalBoxFuture;
use quark_history::{HistoryEvent, Payload};

use super::run::{Sink, drive};
use super::{JOB_WORKFLOW, JobStepState, JobWorkflow, JobWorkflowReport, RunJobWorkflow};
use crate::client::{Client, ClientError, StartOptions};
use crate::context::OrchestrationContext;
use crate::error::OrchestrationError;
use crate::executor::{Outcome, replay};
use crate::registry::ErasedOrchestration;

impl Client {
    /// Starts `workflow` as instance `instance_id` of the built-in `quark.job_workflow`
    /// orchestration (refusing a duplicate id).
    pub async fn start_job_workflow(
        &self,
        instance_id: impl Into<String>,
        workflow: &JobWorkflow,
    ) -> Result<JobWorkflowHandle, ClientError> {
        self.start_job_workflow_with(instance_id, workflow, StartOptions::default())
            .await
    }

    /// Starts `workflow` with `options` (its orchestration tasks' queue, id reuse, ...).
    pub async fn start_job_workflow_with(
        &self,
        instance_id: impl Into<String>,
        workflow: &JobWorkflow,
        options: StartOptions,
    ) -> Result<JobWorkflowHandle, ClientError> {
        let handle = self
            .start_with::<RunJobWorkflow>(instance_id, workflow, options)
            .await?;
        Ok(self.job_workflow(handle.id()))
    }

    /// The handle of job workflow `instance_id`, started earlier (by this process or another).
    pub fn job_workflow(&self, instance_id: impl Into<String>) -> JobWorkflowHandle {
        JobWorkflowHandle {
            client: self.clone(),
            id: instance_id.into(),
        }
    }
}

/// A running or finished job workflow.
#[derive(Debug, Clone)]
pub struct JobWorkflowHandle {
    client: Client,
    id: String,
}

/// Why a job workflow did not produce its report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobWorkflowRunError {
    /// Job `job` failed under [`OnFailure::FailWorkflow`](super::OnFailure::FailWorkflow), which
    /// failed the workflow; `report` says where every job stopped.
    #[error("job `{job}` failed: {error}")]
    JobFailed {
        /// The job.
        job: String,
        /// Its last error.
        error: String,
        /// Every job's state at the end.
        report: Box<JobWorkflowReport>,
    },
    /// The client failed, or the workflow ended otherwise (cancelled, terminated, an invalid
    /// declaration).
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl JobWorkflowHandle {
    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Every job's state now: waiting, running (scheduled, or retrying), completed with its
    /// output, failed or skipped. A job counts as running once the turn that started it is
    /// journaled.
    pub async fn progress(&self) -> Result<JobWorkflowReport, ClientError> {
        let history = self.client.history(&self.id).await?;
        let not_a_workflow = |what: String| {
            ClientError::Payload(format!(
                "instance `{}` is not a job workflow: {what}",
                self.id
            ))
        };
        match history.first().map(|e| &e.event) {
            None => return Err(ClientError::NotFound(self.id.clone())),
            Some(HistoryEvent::WorkflowStarted { instance_type, .. })
                if instance_type == JOB_WORKFLOW => {}
            Some(other) => return Err(not_a_workflow(format!("{other:?}"))),
        }
        let sink = Sink::default();
        let probe = Probe(sink.clone());
        let replayed = replay(&probe, &self.id, "default", &history);
        match replayed.outcome {
            Outcome::Nondeterminism(n) => {
                return Err(ClientError::Payload(format!(
                    "the history of `{}` does not replay: {n}",
                    self.id
                )));
            }
            Outcome::Panicked(message) | Outcome::Stuck(message) => {
                return Err(ClientError::Payload(message));
            }
            _ => {}
        }
        let snapshot = sink.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(snapshot) = snapshot else {
            // It failed before it scheduled anything: its declaration was refused.
            let record = self.client.describe(&self.id).await?;
            return Err(ClientError::Payload(format!(
                "job workflow `{}` has no progress: it ended ({}) before it started a job",
                self.id, record.status
            )));
        };
        let journaled: BTreeSet<u64> = history
            .iter()
            .filter_map(|e| match &e.event {
                HistoryEvent::ActivityScheduled { command, .. } => Some(*command),
                _ => None,
            })
            .collect();
        let mut report = snapshot.report;
        for (job, command) in report.jobs.iter_mut().zip(snapshot.commands) {
            // The replay decided to start it, but no turn has recorded that yet.
            let recorded = command.is_some_and(|c| journaled.contains(&c));
            if job.state == JobStepState::Running && !recorded {
                job.state = JobStepState::Waiting;
            }
        }
        Ok(report)
    }

    /// Waits for the end and returns the report. A job that failed the workflow comes back as
    /// [`JobWorkflowRunError::JobFailed`], with the report.
    pub async fn result(&self) -> Result<JobWorkflowReport, JobWorkflowRunError> {
        match self.client.result::<JobWorkflowReport>(&self.id).await {
            Ok(report) => Ok(report),
            Err(ClientError::Failed { id, failure }) => {
                let report = match self.progress().await {
                    Ok(report) => report,
                    Err(_) => return Err(ClientError::Failed { id, failure }.into()),
                };
                let Some(job) = report.stopped_by.clone() else {
                    return Err(ClientError::Failed { id, failure }.into());
                };
                let error = match report.state(&job) {
                    Some(JobStepState::Failed { error }) => error.clone(),
                    _ => failure.message,
                };
                Err(JobWorkflowRunError::JobFailed {
                    job,
                    error,
                    report: Box::new(report),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Requests cancellation: no more jobs start, and the workflow ends as cancelled. Jobs
    /// already running finish, but their results are not recorded.
    pub async fn cancel(&self, reason: &str) -> Result<(), ClientError> {
        self.client.cancel(&self.id, reason).await
    }
}

/// The job workflow orchestration, publishing its scheduler's state to a sink as it replays.
struct Probe(Sink);

impl ErasedOrchestration for Probe {
    fn start(
        &self,
        ctx: OrchestrationContext,
        input: &Payload,
    ) -> LocalBoxFuture<'static, Result<Payload, OrchestrationError>> {
        let input = input.decode::<JobWorkflow>();
        let sink = Arc::clone(&self.0);
        Box::pin(async move {
            let workflow = input.map_err(OrchestrationError::payload)?;
            let report = drive(ctx, workflow, Some(sink)).await?;
            Payload::json(&report).map_err(OrchestrationError::payload)
        })
    }

    fn version(&self) -> u32 {
        <RunJobWorkflow as crate::Orchestration>::VERSION
    }

    fn queue(&self) -> &'static str {
        <RunJobWorkflow as crate::Orchestration>::queue()
    }
}
