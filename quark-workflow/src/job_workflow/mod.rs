//! Job workflows: a DAG of jobs, run durably by a built-in orchestration.
//!
//! A [`JobWorkflow`] is a set of named jobs, each a registered activity with an input and options
//! (retry policy, timeout, queue), and the dependencies between them. It is declared with a
//! builder, checked when it is built (duplicate names, unknown dependencies and cycles are typed
//! [`JobWorkflowError`]s), and started with [`Client::start_job_workflow`](crate::Client). It runs
//! as an instance of the built-in orchestration `quark.job_workflow` ([`RunJobWorkflow`], in every
//! [`Registry`](crate::Registry)), so it is journaled like any orchestration: a worker that stops
//! mid-way hands it to another, which resumes it from its history.
//!
//! - **Parallelism.** A job starts as soon as every job it depends on has completed; all the jobs
//!   that are ready at once run at once (they are scheduled in the same turn and run on any
//!   workers that serve their queues). [`JobWorkflow::stages`] shows the resulting stages.
//! - **Results.** A job added with [`Job::new`] receives its own input only: its dependencies
//!   order it, nothing more. A job added with [`Job::with_parents`] runs an activity whose input
//!   is a [`JobInput<I>`]: its own input plus the output of each job it depends on, by name,
//!   decoded with [`JobInput::parent`].
//! - **Failures.** A job fails when its activity fails for good: a terminal error, or its retries
//!   ran out. What happens next is the failed job's [`OnFailure`] rule (its own, or the
//!   workflow's default): [`FailWorkflow`](OnFailure::FailWorkflow) starts nothing more, lets the
//!   jobs already running finish, and fails the instance with a message naming the job and its
//!   error; [`SkipDependents`](OnFailure::SkipDependents) marks every job downstream of it skipped
//!   and lets the independent branches go on, and the workflow completes.
//! - **Report.** The output is a [`JobWorkflowReport`]: every job with its [`JobStepState`]
//!   (completed with its output, failed with its error, skipped with the failed job that caused
//!   it). [`JobWorkflowHandle::progress`] gives the same report while it runs, with waiting and
//!   running jobs, by replaying the workflow's history; [`JobWorkflowHandle::result`] waits for the
//!   end and, when a job failed the workflow, returns the report with the error.
//!
//! ```
//! use quark_workflow::testing::TestEnv;
//! use quark_workflow::{
//!     ActivityContext, ActivityError, Job, JobInput, JobWorkflow, Registry, activity,
//! };
//!
//! #[activity]
//! async fn numbers(_ctx: ActivityContext, n: u64) -> Result<Vec<u64>, ActivityError> {
//!     Ok((1..=n).collect())
//! }
//!
//! #[activity]
//! async fn scale(_ctx: ActivityContext, job: JobInput<u64>) -> Result<u64, ActivityError> {
//!     let values: Vec<u64> = job.parent("numbers")?;
//!     Ok(values.iter().sum::<u64>() * job.input)
//! }
//!
//! #[activity]
//! async fn total(_ctx: ActivityContext, job: JobInput<()>) -> Result<u64, ActivityError> {
//!     Ok(job.parent::<u64>("double")? + job.parent::<u64>("triple")?)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dag = JobWorkflow::builder()
//!     .add("numbers", Job::new(numbers, &4))
//!     .add("double", Job::with_parents(scale, &2).depends_on(["numbers"]))
//!     .add("triple", Job::with_parents(scale, &3).depends_on(["numbers"]))
//!     .add("total", Job::with_parents(total, &()).depends_on(["double", "triple"]))
//!     .build()?;
//! assert_eq!(dag.stages(), vec![vec!["numbers"], vec!["double", "triple"], vec!["total"]]);
//!
//! let registry = Registry::new().register(numbers).register(scale).register(total);
//! let env = TestEnv::new(registry).await?;
//! let run = env.client().start_job_workflow("sums-1", &dag).await?;
//! let report = run.result().await?;
//! assert_eq!(report.output::<u64>("total")?, 20 + 30);
//! # Ok(())
//! # }
//! ```

mod handle;
mod report;
mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use quark_history::Payload;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::definition::{Activity, ActivityOptions, RetryPolicy};
use crate::error::ActivityError;

pub use handle::{JobWorkflowHandle, JobWorkflowRunError};
pub use report::{JobReport, JobStepState, JobWorkflowReport};
pub use run::RunJobWorkflow;

/// The registered name of the built-in orchestration that runs job workflows.
pub const JOB_WORKFLOW: &str = "quark.job_workflow";

/// What happens when a job fails for good (after its retries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnFailure {
    /// Start no more jobs, let the running ones finish, and fail the workflow naming the job.
    #[default]
    FailWorkflow,
    /// Skip every job downstream of the failed one; the other branches go on, and the workflow
    /// completes (its report lists the failure and the skipped jobs).
    SkipDependents,
}

/// One job of a workflow, before it is added: an activity, its input, options and dependencies.
#[derive(Debug, Clone)]
pub struct Job {
    activity: &'static str,
    input: Result<Payload, String>,
    options: ActivityOptions,
    depends_on: Vec<String>,
    on_failure: Option<OnFailure>,
    with_parents: bool,
}

impl Job {
    /// Runs `activity` with `input`, under the activity's own options. The outputs of the jobs it
    /// depends on are not passed to it (see [`with_parents`](Self::with_parents)).
    pub fn new<A: Activity>(activity: A, input: &A::Input) -> Self {
        let _ = activity;
        Job {
            activity: A::NAME,
            input: Payload::json(input).map_err(|e| e.to_string()),
            options: A::options(),
            depends_on: Vec::new(),
            on_failure: None,
            with_parents: false,
        }
    }

    /// Runs `activity`, whose input is a [`JobInput<I>`], with `input` and the outputs of the
    /// jobs it depends on.
    pub fn with_parents<A, I>(activity: A, input: &I) -> Self
    where
        A: Activity<Input = JobInput<I>>,
        I: Serialize,
    {
        let _ = activity;
        Job {
            activity: A::NAME,
            input: Payload::json(input).map_err(|e| e.to_string()),
            options: A::options(),
            depends_on: Vec::new(),
            on_failure: None,
            with_parents: true,
        }
    }

    /// Runs after the jobs named `jobs` have completed.
    pub fn depends_on<S: Into<String>>(mut self, jobs: impl IntoIterator<Item = S>) -> Self {
        for job in jobs {
            let job = job.into();
            if !self.depends_on.contains(&job) {
                self.depends_on.push(job);
            }
        }
        self
    }

    /// What its failure does (default: the workflow's rule).
    pub fn on_failure(mut self, rule: OnFailure) -> Self {
        self.on_failure = Some(rule);
        self
    }

    /// Overrides the activity's retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.options.retry = retry;
        self
    }

    /// Overrides the activity's per-attempt timeout.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.options.start_to_close = Some(d);
        self
    }

    /// Runs it on `queue` (default: the activity's queue, or the workflow's).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.options.queue = Some(queue.into());
        self
    }

    /// Replaces all its options.
    pub fn options(mut self, options: ActivityOptions) -> Self {
        self.options = options;
        self
    }
}

/// The input of an activity added with [`Job::with_parents`]: its own input and the output of
/// every job it depends on, by job name (as JSON, decoded with [`parent`](Self::parent)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInput<I> {
    /// The job's own input.
    pub input: I,
    /// The outputs of the jobs it depends on.
    pub parents: BTreeMap<String, serde_json::Value>,
}

impl<I> JobInput<I> {
    /// The output of job `name`, decoded as `T`. A missing job or another type is a terminal
    /// error: retrying cannot change the workflow's declaration.
    pub fn parent<T: DeserializeOwned>(&self, name: &str) -> Result<T, ActivityError> {
        let value = self.parents.get(name).ok_or_else(|| {
            ActivityError::message(format!(
                "this job does not depend on `{name}` (it depends on {:?})",
                self.parents.keys().collect::<Vec<_>>()
            ))
            .terminal()
        })?;
        T::deserialize(value)
            .map_err(|e| ActivityError::message(format!("the output of `{name}`: {e}")).terminal())
    }
}

/// A job as the workflow stores it (in the instance's input, so in its history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobSpec {
    /// Its name, unique in the workflow.
    pub name: String,
    /// The registered activity it runs.
    pub activity: String,
    /// Its own input.
    pub input: Payload,
    /// Queue, retries and timeouts.
    pub options: ActivityOptions,
    /// The jobs it runs after.
    pub depends_on: Vec<String>,
    /// What its failure does.
    pub on_failure: OnFailure,
    /// Whether its activity takes a [`JobInput`] with its parents' outputs.
    pub with_parents: bool,
}

/// A checked DAG of jobs, ready to start with
/// [`Client::start_job_workflow`](crate::Client::start_job_workflow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWorkflow {
    jobs: Vec<JobSpec>,
}

/// Declares a [`JobWorkflow`] (see [`JobWorkflow::builder`]).
#[derive(Debug, Default)]
pub struct JobWorkflowBuilder {
    jobs: Vec<(String, Job)>,
    on_failure: OnFailure,
}

impl JobWorkflowBuilder {
    /// Adds job `name`.
    pub fn add(mut self, name: impl Into<String>, job: Job) -> Self {
        self.jobs.push((name.into(), job));
        self
    }

    /// The rule for jobs that do not set their own (default: [`OnFailure::FailWorkflow`]).
    pub fn on_failure(mut self, rule: OnFailure) -> Self {
        self.on_failure = rule;
        self
    }

    /// Checks the graph: at least one job, non-empty unique names, encodable inputs, known
    /// dependencies, no cycle.
    pub fn build(self) -> Result<JobWorkflow, JobWorkflowError> {
        let mut jobs = Vec::with_capacity(self.jobs.len());
        for (name, job) in self.jobs {
            let input = job.input.map_err(|message| JobWorkflowError::Payload {
                job: name.clone(),
                message,
            })?;
            jobs.push(JobSpec {
                name,
                activity: job.activity.to_string(),
                input,
                options: job.options,
                depends_on: job.depends_on,
                on_failure: job.on_failure.unwrap_or(self.on_failure),
                with_parents: job.with_parents,
            });
        }
        let workflow = JobWorkflow { jobs };
        workflow.check()?;
        Ok(workflow)
    }
}

impl JobWorkflow {
    /// Starts a declaration.
    pub fn builder() -> JobWorkflowBuilder {
        JobWorkflowBuilder::default()
    }

    /// The jobs, in the order they were added.
    pub fn jobs(&self) -> &[JobSpec] {
        &self.jobs
    }

    /// The parallel stages the graph allows: each job is in the stage after the latest of its
    /// dependencies, and the jobs of a stage can run at once. (A job does not wait for its whole
    /// stage: it starts as soon as its own dependencies are done.)
    pub fn stages(&self) -> Vec<Vec<&str>> {
        let index = self.index();
        let mut level: Vec<Option<usize>> = vec![None; self.jobs.len()];
        // `check` proved the graph acyclic, so this settles in at most `len` rounds.
        for _ in 0..self.jobs.len() {
            for (i, job) in self.jobs.iter().enumerate() {
                let parents: Option<Vec<usize>> = job
                    .depends_on
                    .iter()
                    .map(|d| level[index[d.as_str()]])
                    .collect();
                level[i] = parents.map(|p| p.into_iter().max().map_or(0, |l| l + 1));
            }
        }
        let mut stages: Vec<Vec<&str>> = Vec::new();
        for (job, level) in self.jobs.iter().zip(level) {
            let level = level.unwrap_or(0);
            if stages.len() <= level {
                stages.resize_with(level + 1, Vec::new);
            }
            stages[level].push(job.name.as_str());
        }
        stages
    }

    fn index(&self) -> BTreeMap<&str, usize> {
        self.jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.as_str(), i))
            .collect()
    }

    /// The checks of [`JobWorkflowBuilder::build`]; run again by the orchestration on its input,
    /// which may have been written by other code than the builder.
    pub(crate) fn check(&self) -> Result<(), JobWorkflowError> {
        if self.jobs.is_empty() {
            return Err(JobWorkflowError::Empty);
        }
        let mut names = BTreeSet::new();
        for job in &self.jobs {
            if job.name.is_empty() {
                return Err(JobWorkflowError::EmptyName);
            }
            if !names.insert(job.name.as_str()) {
                return Err(JobWorkflowError::DuplicateName(job.name.clone()));
            }
        }
        for job in &self.jobs {
            if let Some(d) = job.depends_on.iter().find(|d| !names.contains(d.as_str())) {
                return Err(JobWorkflowError::UnknownDependency {
                    job: job.name.clone(),
                    dependency: d.clone(),
                });
            }
        }
        match self.find_cycle() {
            Some(path) => Err(JobWorkflowError::Cycle { path }),
            None => Ok(()),
        }
    }

    /// A cycle, as the names along it with the first repeated at the end, if there is one.
    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let index = self.index();
        let mut marks = vec![Mark::New; self.jobs.len()];
        for start in 0..self.jobs.len() {
            if marks[start] != Mark::New {
                continue;
            }
            // Depth first along dependencies, with an explicit stack of (job, next edge).
            let mut stack = vec![(start, 0usize)];
            marks[start] = Mark::OnPath;
            while let Some(&(job, edge)) = stack.last() {
                let deps = &self.jobs[job].depends_on;
                if edge == deps.len() {
                    marks[job] = Mark::Done;
                    stack.pop();
                    continue;
                }
                let next = index[deps[edge].as_str()];
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                match marks[next] {
                    Mark::New => {
                        marks[next] = Mark::OnPath;
                        stack.push((next, 0));
                    }
                    Mark::OnPath => {
                        // The path from `next` to `job` depends on itself. Reported in the
                        // direction of the edges: a job, then what it depends on.
                        let from = stack.iter().position(|&(j, _)| j == next).unwrap_or(0);
                        let mut path: Vec<String> = stack[from..]
                            .iter()
                            .map(|&(j, _)| self.jobs[j].name.clone())
                            .collect();
                        path.push(self.jobs[next].name.clone());
                        return Some(path);
                    }
                    Mark::Done => {}
                }
            }
        }
        None
    }
}

/// A job workflow that cannot be built, or a report that does not hold what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobWorkflowError {
    /// The workflow has no job. Add one.
    #[error("a job workflow needs at least one job")]
    Empty,
    /// A job was added with an empty name. Name it.
    #[error("a job has an empty name")]
    EmptyName,
    /// Two jobs have this name. Rename one.
    #[error("two jobs are named `{0}`")]
    DuplicateName(String),
    /// A job depends on a name that no job has. Fix the name, or add that job.
    #[error("job `{job}` depends on `{dependency}`, which is not a job of this workflow")]
    UnknownDependency {
        /// The job.
        job: String,
        /// The missing name.
        dependency: String,
    },
    /// The dependencies go round in a circle, so none of these jobs could ever start. Remove
    /// one of the edges.
    #[error("the dependencies form a cycle: {}", path.join(" -> "))]
    Cycle {
        /// The jobs along the cycle, each depending on the next; the first is repeated last.
        path: Vec<String>,
    },
    /// A job's input cannot be encoded as JSON.
    #[error("the input of job `{job}` cannot be encoded: {message}")]
    Payload {
        /// The job.
        job: String,
        /// The encoder's error.
        message: String,
    },
    /// (Report) no job has this name.
    #[error("no job is named `{0}`")]
    NoSuchJob(String),
    /// (Report) the job has no output: it did not complete.
    #[error("job `{job}` did not complete: it is {state}")]
    NotCompleted {
        /// The job.
        job: String,
        /// Where it stands.
        state: String,
    },
    /// (Report) the job's output is not of the type asked for.
    #[error("the output of job `{job}`: {message}")]
    Output {
        /// The job.
        job: String,
        /// The decoder's error.
        message: String,
    },
}

#[cfg(test)]
mod tests;
