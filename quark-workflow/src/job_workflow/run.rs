//! The built-in orchestration that runs a [`JobWorkflow`], and the scheduler it drives.
//!
//! The orchestration is ordinary replayed code: it starts every ready job (in the order the jobs
//! were added, so the commands are the same on every replay), waits for the first result in
//! history order (`ctx.select`), applies it, and starts what became ready. Everything it decides
//! follows from the history, so any worker can pick it up where another left it.
//!
//! That also means the order in which this code issues commands is part of every running job
//! workflow's history: a change to it must keep old histories replaying (guard it with
//! `ctx.patched`, and check with the `Replayer`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use quark_history::{CommandId, Payload};

use super::{
    JOB_WORKFLOW, JobReport, JobSpec, JobStepState, JobWorkflow, JobWorkflowReport, OnFailure,
};
use crate::context::OrchestrationContext;
use crate::definition::Orchestration;
use crate::error::OrchestrationError;
use crate::future::ActivityCall;

/// The built-in orchestration `quark.job_workflow`: its input is a [`JobWorkflow`], its output
/// the [`JobWorkflowReport`]. Every [`Registry`](crate::Registry) holds it.
#[derive(Debug, Clone, Copy)]
pub struct RunJobWorkflow;

impl Orchestration for RunJobWorkflow {
    const NAME: &'static str = JOB_WORKFLOW;
    type Input = JobWorkflow;
    type Output = JobWorkflowReport;

    async fn run(
        ctx: OrchestrationContext,
        workflow: JobWorkflow,
    ) -> Result<JobWorkflowReport, OrchestrationError> {
        drive(ctx, workflow, None).await
    }
}

/// Where a run stands, as [`drive`] publishes it after every step: the report, and the command
/// that runs each job (if it was issued).
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) report: JobWorkflowReport,
    pub(crate) commands: Vec<Option<CommandId>>,
}

/// Receives the [`Snapshot`]s of a run (the progress probe's replay).
pub(crate) type Sink = Arc<Mutex<Option<Snapshot>>>;

/// Runs `workflow`; publishes every step to `sink`, if any.
pub(crate) async fn drive(
    ctx: OrchestrationContext,
    workflow: JobWorkflow,
    sink: Option<Sink>,
) -> Result<JobWorkflowReport, OrchestrationError> {
    workflow
        .check()
        .map_err(|e| OrchestrationError::failed(format!("invalid job workflow: {e}")))?;
    let mut dag = Scheduler::new(&workflow);
    let mut running: Vec<(usize, ActivityCall<serde_json::Value>)> = Vec::new();
    loop {
        for i in dag.ready() {
            let job = &workflow.jobs[i];
            let input = dag.input_of(i)?;
            let call = ctx.call_by_name(&job.activity, input, job.options.clone());
            dag.start(i, call.command());
            running.push((i, call));
        }
        dag.publish(sink.as_ref());
        if running.is_empty() {
            break;
        }
        // The winner is the result the history recorded first, whatever the polling order.
        let (k, result) = ctx.select(running.iter_mut().map(|(_, call)| call)).await;
        let (i, _) = running.remove(k);
        match result {
            Ok(output) => dag.complete(i, output),
            Err(OrchestrationError::Activity { failure, .. }) => dag.fail(i, failure.message),
            // Cancellation, nondeterminism, an undecodable output: the workflow itself stops.
            Err(e) => return Err(e),
        }
    }
    dag.finish();
    dag.publish(sink.as_ref());
    match dag.stopped_by {
        Some(i) => {
            let job = &workflow.jobs[i];
            let error = match &dag.states[i] {
                JobStepState::Failed { error } => error.as_str(),
                _ => "",
            };
            Err(OrchestrationError::failed(format!(
                "job `{}` (activity `{}`) failed: {error}",
                job.name, job.activity
            )))
        }
        None => Ok(dag.report()),
    }
}

/// The state of every job, and the rules that move it.
#[derive(Debug)]
pub(super) struct Scheduler<'a> {
    jobs: &'a [JobSpec],
    parents: Vec<Vec<usize>>,
    children: Vec<Vec<usize>>,
    pub(super) states: Vec<JobStepState>,
    commands: Vec<Option<CommandId>>,
    /// The first job that failed under [`OnFailure::FailWorkflow`]: nothing starts after it.
    stopped_by: Option<usize>,
}

impl<'a> Scheduler<'a> {
    pub(super) fn new(workflow: &'a JobWorkflow) -> Self {
        let jobs = workflow.jobs.as_slice();
        let index = workflow.index();
        let parents: Vec<Vec<usize>> = jobs
            .iter()
            .map(|j| j.depends_on.iter().map(|d| index[d.as_str()]).collect())
            .collect();
        let mut children = vec![Vec::new(); jobs.len()];
        for (child, ps) in parents.iter().enumerate() {
            for &p in ps {
                children[p].push(child);
            }
        }
        Scheduler {
            jobs,
            parents,
            children,
            states: vec![JobStepState::Waiting; jobs.len()],
            commands: vec![None; jobs.len()],
            stopped_by: None,
        }
    }

    #[cfg(test)]
    pub(super) fn name(&self, i: usize) -> &str {
        &self.jobs[i].name
    }

    /// The jobs that can start now, in the order they were added.
    pub(super) fn ready(&self) -> Vec<usize> {
        if self.stopped_by.is_some() {
            return Vec::new();
        }
        (0..self.jobs.len())
            .filter(|&i| self.states[i] == JobStepState::Waiting)
            .filter(|&i| {
                self.parents[i]
                    .iter()
                    .all(|&p| matches!(self.states[p], JobStepState::Completed { .. }))
            })
            .collect()
    }

    /// What job `i`'s activity receives: its input, with its parents' outputs if it asked.
    pub(super) fn input_of(&self, i: usize) -> Result<Payload, OrchestrationError> {
        let job = &self.jobs[i];
        if !job.with_parents {
            return Ok(job.input.clone());
        }
        let input: serde_json::Value = job.input.decode().map_err(|e| {
            OrchestrationError::Payload(format!("input of job `{}`: {e}", job.name))
        })?;
        let parents: BTreeMap<&str, &serde_json::Value> = self.parents[i]
            .iter()
            .filter_map(|&p| match &self.states[p] {
                JobStepState::Completed { output } => Some((self.jobs[p].name.as_str(), output)),
                _ => None,
            })
            .collect();
        let value = serde_json::json!({ "input": input, "parents": parents });
        Payload::json(&value).map_err(|e| OrchestrationError::Payload(e.to_string()))
    }

    pub(super) fn start(&mut self, i: usize, command: Option<CommandId>) {
        self.states[i] = JobStepState::Running;
        self.commands[i] = command;
    }

    pub(super) fn complete(&mut self, i: usize, output: serde_json::Value) {
        self.states[i] = JobStepState::Completed { output };
    }

    pub(super) fn fail(&mut self, i: usize, error: String) {
        self.states[i] = JobStepState::Failed { error };
        match self.jobs[i].on_failure {
            OnFailure::FailWorkflow => {
                self.stopped_by.get_or_insert(i);
            }
            OnFailure::SkipDependents => self.skip_downstream_of(i),
        }
    }

    /// Marks every job that (transitively) depends on `i` skipped, with `i` as the cause. None of
    /// them can have started: each waits for `i`, directly or not.
    fn skip_downstream_of(&mut self, i: usize) {
        let cause = self.jobs[i].name.clone();
        let mut todo = self.children[i].clone();
        while let Some(j) = todo.pop() {
            if self.states[j] == JobStepState::Waiting {
                self.states[j] = JobStepState::Skipped {
                    cause: cause.clone(),
                };
                todo.extend(self.children[j].iter().copied());
            }
        }
    }

    /// Nothing runs any more: what never started was stopped by the failed job.
    pub(super) fn finish(&mut self) {
        let cause = match self.stopped_by {
            Some(i) => self.jobs[i].name.clone(),
            // Unreachable for a checked graph: every job either ran or sits below a failure.
            None => String::new(),
        };
        for state in &mut self.states {
            if *state == JobStepState::Waiting {
                *state = JobStepState::Skipped {
                    cause: cause.clone(),
                };
            }
        }
    }

    pub(super) fn report(&self) -> JobWorkflowReport {
        JobWorkflowReport {
            jobs: self
                .jobs
                .iter()
                .zip(&self.states)
                .map(|(job, state)| JobReport {
                    name: job.name.clone(),
                    activity: job.activity.clone(),
                    state: state.clone(),
                })
                .collect(),
            stopped_by: self.stopped_by.map(|i| self.jobs[i].name.clone()),
        }
    }

    fn publish(&self, sink: Option<&Sink>) {
        if let Some(sink) = sink {
            let snapshot = Snapshot {
                report: self.report(),
                commands: self.commands.clone(),
            };
            *sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
        }
    }
}
