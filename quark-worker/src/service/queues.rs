//! `quark.v1.QueueService`: queues' counts and controls, and their dead-letter lists.

use std::sync::Arc;

use quark_history::{RateLimit, Scope, Store};
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::convert::{duration_in, duration_out, page_size, required, time_out};
use super::proto::{self, queue_service_server::QueueService};
use super::status;

/// The implementation of `quark.v1.QueueService` over a store.
#[derive(Debug, Clone)]
pub struct Queues {
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
}

impl Queues {
    /// The service over `store`, its calls checked by `auth`.
    pub fn new(store: Arc<dyn Store>, auth: Arc<Authenticator>) -> Queues {
        Queues { store, auth }
    }
}

/// How many dead tasks a namespace's listing and re-drive look through for its own.
const NAMESPACE_DEAD_SCAN: u32 = 10_000;

impl Queues {
    /// Up to `limit` dead tasks (of `queue`, if given) that the caller may see.
    async fn visible_dead(
        &self,
        caller: &super::auth::Caller,
        queue: Option<&str>,
        limit: u32,
    ) -> Result<Vec<quark_history::DeadTask>, Status> {
        let scan = match (&caller.namespace, queue) {
            (Some(_), None) => NAMESPACE_DEAD_SCAN,
            _ => limit,
        };
        let mut dead = self
            .store
            .list_dead(queue, scan)
            .await
            .map_err(status::store)?;
        dead.retain(|d| caller.sees(&d.queue));
        dead.truncate(limit as usize);
        Ok(dead)
    }
}

#[tonic::async_trait]
impl QueueService for Queues {
    async fn get_queue(
        &self,
        request: Request<proto::GetQueueRequest>,
    ) -> Result<Response<proto::GetQueueResponse>, Status> {
        let caller = self.auth.check(&request, "GetQueue", Scope::Read).await?;
        let r = request.into_inner();
        let queue = caller.name("queue", required("queue", &r.queue)?)?;
        let queue = queue.as_str();
        let stats = self.store.queue_stats(queue).await.map_err(status::store)?;
        let settings = self
            .store
            .queue_settings(queue)
            .await
            .map_err(status::store)?;
        Ok(Response::new(proto::GetQueueResponse {
            queue: Some(proto::Queue {
                name: queue.to_string(),
                pending: stats.pending,
                leased: stats.leased,
                held: stats.held,
                dead: stats.dead,
                paused: settings.paused,
                rate_limit: settings.rate_limit.map(|l| proto::QueueRateLimit {
                    limit: l.limit,
                    per: Some(duration_out(l.interval)),
                }),
            }),
        }))
    }

    async fn pause_queue(
        &self,
        request: Request<proto::PauseQueueRequest>,
    ) -> Result<Response<proto::PauseQueueResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "PauseQueue", Scope::Admin)
            .await?;
        let r = request.into_inner();
        let queue = caller.name("queue", required("queue", &r.queue)?)?;
        let queue = queue.as_str();
        self.store
            .set_queue_paused(queue, true)
            .await
            .map_err(status::store)?;
        Ok(Response::new(proto::PauseQueueResponse {}))
    }

    async fn resume_queue(
        &self,
        request: Request<proto::ResumeQueueRequest>,
    ) -> Result<Response<proto::ResumeQueueResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "ResumeQueue", Scope::Admin)
            .await?;
        let r = request.into_inner();
        let queue = caller.name("queue", required("queue", &r.queue)?)?;
        let queue = queue.as_str();
        self.store
            .set_queue_paused(queue, false)
            .await
            .map_err(status::store)?;
        Ok(Response::new(proto::ResumeQueueResponse {}))
    }

    async fn set_queue_rate_limit(
        &self,
        request: Request<proto::SetQueueRateLimitRequest>,
    ) -> Result<Response<proto::SetQueueRateLimitResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "SetQueueRateLimit", Scope::Admin)
            .await?;
        let r = request.into_inner();
        let queue = caller.name("queue", required("queue", &r.queue)?)?;
        let queue = queue.as_str();
        let limit = match r.rate_limit {
            None => None,
            Some(l) => {
                let per = duration_in("rate_limit.per", l.per.unwrap_or_default())?;
                if l.limit == 0 || per.is_zero() {
                    return Err(Status::invalid_argument(
                        "rate_limit: a limit needs at least 1 task per non-zero interval \
                         (leave it unset to lift the limit, or pause the queue)",
                    ));
                }
                Some(RateLimit {
                    limit: l.limit,
                    interval: per,
                })
            }
        };
        self.store
            .set_rate_limit(queue, limit)
            .await
            .map_err(status::store)?;
        Ok(Response::new(proto::SetQueueRateLimitResponse {}))
    }

    async fn list_dead_letters(
        &self,
        request: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "ListDeadLetters", Scope::Read)
            .await?;
        let r = request.into_inner();
        let queue = (!r.queue.is_empty())
            .then(|| caller.name("queue", &r.queue))
            .transpose()?;
        let dead = self
            .visible_dead(&caller, queue.as_deref(), page_size(r.page_size))
            .await?;
        Ok(Response::new(proto::ListDeadLettersResponse {
            dead_letters: dead
                .into_iter()
                .map(|d| proto::DeadLetter {
                    task_id: d.task_id,
                    kind: d.kind.as_str().to_string(),
                    queue: d.queue,
                    instance_id: d.instance_id.unwrap_or_default(),
                    attempts: d.attempts,
                    error: d.error,
                    died_at: Some(time_out(d.died_at)),
                })
                .collect(),
        }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<proto::RedriveDeadLettersRequest>,
    ) -> Result<Response<proto::RedriveDeadLettersResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "RedriveDeadLetters", Scope::Admin)
            .await?;
        let r = request.into_inner();
        if r.task_ids.is_empty() {
            return Err(Status::invalid_argument("task_ids: name at least one task"));
        }
        if r.task_ids.len() > 1000 {
            return Err(Status::invalid_argument(
                "task_ids: at most 1,000 tasks a call",
            ));
        }
        // A namespace's token re-drives its own queues' tasks; another's are not found.
        let visible: Option<std::collections::HashSet<i64>> = match caller.namespace {
            None => None,
            Some(_) => Some(
                self.visible_dead(&caller, None, NAMESPACE_DEAD_SCAN)
                    .await?
                    .into_iter()
                    .map(|d| d.task_id)
                    .collect(),
            ),
        };
        let mut results = Vec::with_capacity(r.task_ids.len());
        // Once the database goes away, the rest are not tried: each says so, and the ones
        // re-driven before keep their answer (a call that changed something does not fail).
        let mut unreachable: Option<String> = None;
        for task_id in r.task_ids {
            if let Some(why) = &unreachable {
                results.push(proto::Redriven {
                    task_id,
                    redriven: false,
                    error: format!("not tried: {why}"),
                });
                continue;
            }
            if visible.as_ref().is_some_and(|v| !v.contains(&task_id)) {
                results.push(proto::Redriven {
                    task_id,
                    redriven: false,
                    error: quark_history::Error::TaskNotFound { task_id }.to_string(),
                });
                continue;
            }
            let outcome = self.store.redrive(task_id).await;
            if let Err(e) = &outcome
                && e.is_retryable()
            {
                unreachable = Some(e.to_string());
            }
            results.push(proto::Redriven {
                task_id,
                redriven: outcome.is_ok(),
                error: outcome.err().map(|e| e.to_string()).unwrap_or_default(),
            });
        }
        Ok(Response::new(proto::RedriveDeadLettersResponse { results }))
    }
}
