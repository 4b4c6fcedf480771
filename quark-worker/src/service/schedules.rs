//! `quark.v1.ScheduleService`: cron schedules of durable jobs, by activity name.

use std::sync::Arc;

use quark_history::{Missed, NewTask, Scope, Store, TaskKind, Upserted};
use quark_workflow::runner::{JobTask, TaskPayload};
use quark_workflow::{ActivityOptions, Client, Schedule};
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::catalog::Catalog;
use super::convert::{payload_in, payload_out, required, time_out};
use super::proto::{self, schedule_service_server::ScheduleService};
use super::status;

/// The implementation of `quark.v1.ScheduleService` over a store.
#[derive(Debug, Clone)]
pub struct Schedules {
    client: Client,
    auth: Arc<Authenticator>,
    catalog: Catalog,
}

impl Schedules {
    /// The service over `store`, its calls checked by `auth`.
    pub fn new(store: Arc<dyn Store>, auth: Arc<Authenticator>) -> Schedules {
        Schedules {
            client: Client::new(Arc::clone(&store)),
            catalog: Catalog::new(store),
            auth,
        }
    }
}

#[tonic::async_trait]
impl ScheduleService for Schedules {
    async fn list_schedules(
        &self,
        request: Request<proto::ListSchedulesRequest>,
    ) -> Result<Response<proto::ListSchedulesResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "ListSchedules", Scope::Read)
            .await?;
        let mut schedules = self.client.schedules().await.map_err(status::client)?;
        schedules.retain(|s| caller.sees(&s.spec.name));
        Ok(Response::new(proto::ListSchedulesResponse {
            schedules: schedules
                .iter()
                .map(|s| {
                    let job = match TaskPayload::from_bytes(&s.spec.payload) {
                        Ok(TaskPayload::Job(job)) => Some(job),
                        _ => None,
                    };
                    proto::ScheduleInfo {
                        name: s.spec.name.clone(),
                        cron: s.spec.cron.clone(),
                        timezone: s.spec.timezone.clone(),
                        backfill: match s.spec.missed {
                            Missed::Backfill(n) => n,
                            _ => 0,
                        },
                        activity: job.as_ref().map(|j| j.activity.clone()).unwrap_or_default(),
                        input: job.as_ref().map(|j| payload_out(&j.input)),
                        queue: s.spec.queue.clone(),
                        priority: s.spec.priority,
                        next_at: Some(time_out(s.next_at)),
                        last_fired_at: s.last_fired_at.map(time_out),
                        created_at: Some(time_out(s.created_at)),
                        updated_at: Some(time_out(s.updated_at)),
                    }
                })
                .collect(),
        }))
    }

    async fn put_schedule(
        &self,
        request: Request<proto::PutScheduleRequest>,
    ) -> Result<Response<proto::PutScheduleResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "PutSchedule", Scope::Admin)
            .await?;
        let r = request.into_inner();
        let name = caller.name("name", required("name", &r.name)?)?;
        let name = name.as_str();
        let activity = required("activity", &r.activity)?;
        let input = payload_in("input", r.input)?;
        let timezone = if r.timezone.is_empty() {
            "UTC"
        } else {
            r.timezone.as_str()
        };
        let missed = match r.backfill {
            0 => Missed::Skip,
            n => Missed::Backfill(n),
        };
        let schedule = Schedule::cron(&r.cron)
            .and_then(|s| s.timezone(timezone))
            .map(|s| s.missed(missed))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let registered = self.catalog.activity(activity).await?.ok_or_else(|| {
            Status::not_found(format!(
                "no worker has registered an activity `{activity}`; nothing was scheduled"
            ))
        })?;
        let options: ActivityOptions =
            serde_json::from_str(&registered.options).map_err(|e| status::internal(&e))?;
        let queue = if r.queue.is_empty() {
            options.queue.clone().unwrap_or_else(|| "default".into())
        } else {
            r.queue.clone()
        };
        // A namespace's schedule fires jobs on its own queues.
        let queue = caller.name("queue", &queue)?;
        let job = TaskPayload::Job(JobTask {
            activity: activity.to_string(),
            input,
            options,
        });
        let task = NewTask::new(TaskKind::Job, queue)
            .priority(r.priority)
            .payload(job.to_bytes());
        let upserted = self
            .client
            .schedule_job(name, &schedule, &task)
            .await
            .map_err(status::client)?;
        let record = self
            .client
            .store()
            .get_schedule(name)
            .await
            .map_err(status::store)?;
        Ok(Response::new(proto::PutScheduleResponse {
            outcome: match upserted {
                Upserted::Created => "created",
                Upserted::Updated => "updated",
                _ => "unchanged",
            }
            .into(),
            next_at: record.map(|s| time_out(s.next_at)),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<proto::DeleteScheduleRequest>,
    ) -> Result<Response<proto::DeleteScheduleResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "DeleteSchedule", Scope::Admin)
            .await?;
        let r = request.into_inner();
        let name = caller.name("name", required("name", &r.name)?)?;
        let name = name.as_str();
        if !self.client.unschedule(name).await.map_err(status::client)? {
            return Err(Status::not_found(format!("no schedule `{name}`")));
        }
        Ok(Response::new(proto::DeleteScheduleResponse {}))
    }
}
