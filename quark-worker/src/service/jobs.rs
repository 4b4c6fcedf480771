//! `quark.v1.JobService`: durable jobs enqueued, read and controlled through the API.

use std::sync::Arc;

use quark_history::{
    Commit, JobFilter, JobInfo, JobState, Scope, Store, UniqueKey, UniquePolicy, qualify,
};
use quark_workflow::runner::{JobTask, job_task_by_name};
use quark_workflow::{ActivityOptions, Client, JobId, JobOptions};
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::catalog::Catalog;
use super::convert::{
    duration_in, page_size, payload_in, payload_out, required, time_in, time_out,
};
use super::proto::{self, job_service_server::JobService};
use super::status;

/// The implementation of `quark.v1.JobService` over a store.
#[derive(Debug, Clone)]
pub struct Jobs {
    store: Arc<dyn Store>,
    client: Client,
    auth: Arc<Authenticator>,
    catalog: Catalog,
}

impl Jobs {
    /// The service over `store`, its calls checked by `auth`.
    pub fn new(store: Arc<dyn Store>, auth: Arc<Authenticator>) -> Jobs {
        Jobs {
            client: Client::new(Arc::clone(&store)),
            catalog: Catalog::new(Arc::clone(&store)),
            store,
            auth,
        }
    }
}

pub(crate) fn state_out(s: JobState) -> proto::JobState {
    use proto::JobState as P;
    match s {
        JobState::Pending => P::Pending,
        JobState::Scheduled => P::Scheduled,
        JobState::Retrying => P::Retrying,
        JobState::Paused => P::Paused,
        JobState::Waiting => P::Waiting,
        JobState::Running => P::Running,
        JobState::Cancelling => P::Cancelling,
        JobState::Completed => P::Completed,
        JobState::Cancelled => P::Cancelled,
        JobState::Dead => P::Dead,
        _ => P::Unspecified,
    }
}

pub(crate) fn state_in(value: i32) -> Result<JobState, Status> {
    use proto::JobState as P;
    Ok(match P::try_from(value) {
        Ok(P::Pending) => JobState::Pending,
        Ok(P::Scheduled) => JobState::Scheduled,
        Ok(P::Retrying) => JobState::Retrying,
        Ok(P::Paused) => JobState::Paused,
        Ok(P::Waiting) => JobState::Waiting,
        Ok(P::Running) => JobState::Running,
        Ok(P::Cancelling) => JobState::Cancelling,
        Ok(P::Completed) => JobState::Completed,
        Ok(P::Cancelled) => JobState::Cancelled,
        Ok(P::Dead) => JobState::Dead,
        Ok(P::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "states: {value} is not a job state"
            )));
        }
    })
}

fn job_out(j: &JobInfo) -> proto::Job {
    let task = JobTask::of(j);
    proto::Job {
        id: j.id,
        activity: task
            .as_ref()
            .map(|t| t.activity.clone())
            .unwrap_or_default(),
        queue: j.queue.clone(),
        state: state_out(j.state) as i32,
        priority: j.priority,
        attempts: j.attempts,
        created_at: Some(time_out(j.created_at)),
        run_at: j.run_at.map(time_out),
        finished_at: j.finished_at.map(time_out),
        error: j.error.clone().unwrap_or_default(),
        concurrency_key: j.concurrency_key.clone().unwrap_or_default(),
        progress: j.progress.as_ref().map(|p| proto::JobProgress {
            percent: p.percent,
            message: p.message.clone().unwrap_or_default(),
            updated_at: Some(time_out(p.updated_at)),
            checkpoint: p.checkpoint.clone(),
        }),
        input: task.as_ref().map(|t| payload_out(&t.input)),
    }
}

/// A job as the API sends it, as the store's record (the command line prints both the same).
/// Its payload holds its activity and input, with the activity's default options.
pub(crate) fn job_in(j: proto::Job) -> Result<JobInfo, Status> {
    let time = |field: &str, t: Option<prost_types::Timestamp>| {
        t.map(|t| super::convert::time_in(field, t)).transpose()
    };
    let task = quark_workflow::runner::TaskPayload::Job(JobTask {
        activity: j.activity,
        input: super::convert::payload_in("input", j.input)?,
        options: ActivityOptions::default(),
    });
    let text = |s: String| (!s.is_empty()).then_some(s);
    Ok(JobInfo {
        id: j.id,
        queue: j.queue,
        state: state_in(j.state)?,
        priority: j.priority,
        attempts: j.attempts,
        created_at: time("created_at", j.created_at)?.unwrap_or(quark_history::Timestamp::EPOCH),
        run_at: time("run_at", j.run_at)?,
        finished_at: time("finished_at", j.finished_at)?,
        error: text(j.error),
        concurrency_key: text(j.concurrency_key),
        progress: j
            .progress
            .map(|p| -> Result<quark_history::Progress, Status> {
                Ok(quark_history::Progress {
                    percent: p.percent,
                    message: text(p.message),
                    checkpoint: p.checkpoint,
                    updated_at: time("progress.updated_at", p.updated_at)?
                        .unwrap_or(quark_history::Timestamp::EPOCH),
                })
            })
            .transpose()?,
        payload: task.to_bytes(),
    })
}

impl Jobs {
    /// Job `id`, if the caller may see it (a namespace's token sees its own queues' jobs only;
    /// another's is not found, as if it did not exist).
    async fn visible_job(
        &self,
        caller: &super::auth::Caller,
        id: i64,
    ) -> Result<quark_history::JobInfo, Status> {
        self.store
            .job(id)
            .await
            .map_err(status::store)?
            .filter(|job| caller.sees(&job.queue))
            .ok_or_else(|| Status::not_found(format!("no job {id}")))
    }
}

#[tonic::async_trait]
impl JobService for Jobs {
    async fn enqueue_job(
        &self,
        request: Request<proto::EnqueueJobRequest>,
    ) -> Result<Response<proto::EnqueueJobResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "EnqueueJob", Scope::Write)
            .await?;
        let r = request.into_inner();
        let activity = required("activity", &r.activity)?;
        let input = payload_in("input", r.input)?;
        let mut options = JobOptions::default().priority(r.priority);
        if !r.queue.is_empty() {
            options.queue = Some(r.queue.clone());
        }
        options.run_at = r.run_at.map(|t| time_in("run_at", t)).transpose()?;
        options.delay = r.delay.map(|d| duration_in("delay", d)).transpose()?;
        if !r.unique_key.is_empty() {
            let policy = match proto::UniquePolicy::try_from(r.unique_policy) {
                Ok(proto::UniquePolicy::Unspecified | proto::UniquePolicy::Reject) => {
                    UniquePolicy::Reject
                }
                Ok(proto::UniquePolicy::Keep) => UniquePolicy::Keep,
                Ok(proto::UniquePolicy::Replace) => UniquePolicy::Replace,
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "unique_policy: {} is not a policy",
                        r.unique_policy
                    )));
                }
            };
            // Keys are the namespace's own: another's job holding the same key is not this one's.
            let mut key =
                UniqueKey::new(qualify(caller.namespace.as_deref(), &r.unique_key)).policy(policy);
            if let Some(window) = r.unique_window {
                key = key.window(duration_in("unique_window", window)?);
            }
            options = options.unique(key);
        }
        if !r.concurrency_key.is_empty() {
            if r.concurrency_limit == 0 {
                return Err(Status::invalid_argument(
                    "concurrency_limit: a concurrency key needs a limit of at least 1",
                ));
            }
            options = options.concurrency(
                qualify(caller.namespace.as_deref(), &r.concurrency_key),
                r.concurrency_limit,
            );
        }
        let registered = self.catalog.activity(activity).await?.ok_or_else(|| {
            Status::not_found(format!(
                "no worker has registered an activity `{activity}`; nothing was enqueued"
            ))
        })?;
        let defaults: ActivityOptions =
            serde_json::from_str(&registered.options).map_err(|e| status::internal(&e))?;
        // A namespace's jobs go to its own queues.
        if caller.namespace.is_some() {
            let queue = options
                .queue
                .clone()
                .or_else(|| defaults.queue.clone())
                .unwrap_or_else(|| registered.queue.clone());
            options.queue = Some(caller.name("queue", &queue)?);
        }
        let now = self.store.config().clock.now();
        let task = job_task_by_name(activity, defaults, input, &options, now);
        let committed = self
            .store
            .commit(Commit::new().enqueue(task))
            .await
            .map_err(status::store)?;
        let outcome = match committed.outcome(0) {
            quark_history::Enqueued::New => "enqueued",
            quark_history::Enqueued::Existing => "existing",
            quark_history::Enqueued::Replaced => "replaced",
        };
        Ok(Response::new(proto::EnqueueJobResponse {
            job_id: committed.task_ids[0],
            outcome: outcome.into(),
        }))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::GetJobResponse>, Status> {
        let caller = self.auth.check(&request, "GetJob", Scope::Read).await?;
        let id = request.into_inner().job_id;
        let job = self.visible_job(&caller, id).await?;
        Ok(Response::new(proto::GetJobResponse {
            job: Some(job_out(&job)),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let caller = self.auth.check(&request, "ListJobs", Scope::Read).await?;
        let r = request.into_inner();
        let states = r
            .states
            .iter()
            .map(|&s| state_in(s))
            .collect::<Result<Vec<_>, _>>()?;
        let before_id = match r.page_token.as_str() {
            "" => None,
            token => Some(token.parse::<i64>().map_err(|_| {
                Status::invalid_argument("page_token: not a token this server gave out")
            })?),
        };
        let limit = page_size(r.page_size);
        let jobs = self
            .store
            .list_jobs(JobFilter {
                queue: (!r.queue.is_empty())
                    .then(|| caller.name("queue", &r.queue))
                    .transpose()?,
                queue_prefix: caller.prefix(),
                states,
                before_id,
                limit,
            })
            .await
            .map_err(status::store)?;
        let next_page_token = match jobs.last() {
            Some(last) if jobs.len() as u32 == limit => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListJobsResponse {
            jobs: jobs.iter().map(job_out).collect(),
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        let caller = self.auth.check(&request, "CancelJob", Scope::Write).await?;
        let id = request.into_inner().job_id;
        self.visible_job(&caller, id).await?;
        let state = self
            .client
            .cancel_job(JobId::new(id))
            .await
            .map_err(status::client)?;
        Ok(Response::new(proto::CancelJobResponse {
            state: state_out(state) as i32,
        }))
    }

    async fn retry_job(
        &self,
        request: Request<proto::RetryJobRequest>,
    ) -> Result<Response<proto::RetryJobResponse>, Status> {
        let caller = self.auth.check(&request, "RetryJob", Scope::Write).await?;
        let id = request.into_inner().job_id;
        self.visible_job(&caller, id).await?;
        self.client
            .retry_job(JobId::new(id))
            .await
            .map_err(status::client)?;
        Ok(Response::new(proto::RetryJobResponse {}))
    }

    async fn pause_job(
        &self,
        request: Request<proto::PauseJobRequest>,
    ) -> Result<Response<proto::PauseJobResponse>, Status> {
        let caller = self.auth.check(&request, "PauseJob", Scope::Write).await?;
        let id = request.into_inner().job_id;
        self.visible_job(&caller, id).await?;
        self.client
            .pause_job(JobId::new(id))
            .await
            .map_err(status::client)?;
        Ok(Response::new(proto::PauseJobResponse {}))
    }

    async fn resume_job(
        &self,
        request: Request<proto::ResumeJobRequest>,
    ) -> Result<Response<proto::ResumeJobResponse>, Status> {
        let caller = self.auth.check(&request, "ResumeJob", Scope::Write).await?;
        let id = request.into_inner().job_id;
        self.visible_job(&caller, id).await?;
        self.client
            .resume_job(JobId::new(id))
            .await
            .map_err(status::client)?;
        Ok(Response::new(proto::ResumeJobResponse {}))
    }
}
