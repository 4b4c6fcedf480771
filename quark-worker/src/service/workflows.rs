//! `quark.v1.WorkflowService`: workflows started, signalled, stopped and read through the API.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use quark_history::{
    HistoryRange, IdReusePolicy, InstanceFilter, InstanceStatus, NewInstance, RecordedEvent, Scope,
    Store, TypeKind,
};
use quark_workflow::{Client, ClientError};
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::catalog::Catalog;
use super::convert::{
    page_token_in, page_token_out, payload_in, payload_out, required, status_in, status_out,
    time_in, time_out, workflow_out,
};
use super::proto::{self, workflow_service_server::WorkflowService};
use super::starts::Starts;
use super::status;

/// The longest update id a caller may choose, in bytes.
const MAX_UPDATE_ID: usize = 256;

/// How many events a history call reads from the database at a time.
const HISTORY_PAGE: u64 = 256;

/// How often a followed history looks for new events.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// The largest page of [`ListWorkflows`](WorkflowService::list_workflows); a larger page size
/// is served as this.
const MAX_PAGE: u32 = 1000;

/// The implementation of `quark.v1.WorkflowService` over a store.
#[derive(Debug, Clone)]
pub struct Workflows {
    store: Arc<dyn Store>,
    client: Client,
    auth: Arc<Authenticator>,
    starts: Starts,
    catalog: Catalog,
}

impl Workflows {
    /// The service over `store`, its calls checked by `auth`.
    pub fn new(store: Arc<dyn Store>, auth: Arc<Authenticator>) -> Workflows {
        Workflows {
            client: Client::new(Arc::clone(&store)),
            starts: Starts::new(Arc::clone(&store)),
            catalog: Catalog::new(Arc::clone(&store)),
            store,
            auth,
        }
    }

    /// The instance `id`, or NOT_FOUND (also for an entity's stream, which is not a workflow).
    async fn instance(&self, id: &str) -> Result<quark_history::InstanceRecord, Status> {
        match self.store.get_instance(id).await.map_err(status::store)? {
            Some(r) if r.status != InstanceStatus::Stream => Ok(r),
            _ => Err(Status::not_found(format!("no workflow instance `{id}`"))),
        }
    }
}

fn event_out(e: &RecordedEvent) -> Result<proto::HistoryEvent, Status> {
    let detail = serde_json::to_string(&e.event).map_err(|e| status::internal(&e))?;
    Ok(proto::HistoryEvent {
        seq: e.seq,
        recorded_at: Some(time_out(e.recorded_at)),
        kind: e.event.kind().to_string(),
        detail_json: detail,
        hash: e.hash.clone(),
    })
}

#[tonic::async_trait]
impl WorkflowService for Workflows {
    async fn start_workflow(
        &self,
        request: Request<proto::StartWorkflowRequest>,
    ) -> Result<Response<proto::StartWorkflowResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "StartWorkflow", Scope::Write)
            .await?;
        let r = request.into_inner();
        let workflow_type = required("workflow_type", &r.workflow_type)?;
        let id = caller.name("instance_id", required("instance_id", &r.instance_id)?)?;
        let id = id.as_str();
        let input = payload_in("input", r.input)?;
        let id_reuse = match proto::IdReusePolicy::try_from(r.id_reuse) {
            Ok(proto::IdReusePolicy::Unspecified | proto::IdReusePolicy::RejectDuplicate) => {
                IdReusePolicy::RejectDuplicate
            }
            Ok(proto::IdReusePolicy::ReturnExisting) => IdReusePolicy::ReturnExisting,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "id_reuse: {} is not a policy",
                    r.id_reuse
                )));
            }
        };
        let start_at = r.start_at.map(|t| time_in("start_at", t)).transpose()?;
        let registered = self
            .catalog
            .orchestration(workflow_type)
            .await?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no worker has registered an orchestration `{workflow_type}`; nothing was \
                     started (ListWorkflowTypes lists the registered ones)"
                ))
            })?;
        let mut new = NewInstance::new(id, workflow_type, input);
        new.version = registered.version;
        // A namespace's instances start on its own queues: the registered queue, or the one
        // asked for, in the caller's namespace.
        new.queue = if r.queue.is_empty() {
            caller.name("queue", &registered.queue)?
        } else {
            caller.name("queue", &r.queue)?
        };
        new.priority = r.priority;
        new.start_at = start_at;
        quark_workflow::trace_context::stamp_instance(&mut new);
        let created = self.starts.start(new, id_reuse).await?;
        if !created.created && created.instance.instance_type != workflow_type {
            return Err(Status::already_exists(format!(
                "instance `{id}` exists as a `{}`, not a `{workflow_type}`",
                created.instance.instance_type
            )));
        }
        Ok(Response::new(proto::StartWorkflowResponse {
            instance_id: created.instance.id,
            created: created.created,
            version: created.instance.version,
        }))
    }

    async fn signal_workflow(
        &self,
        request: Request<proto::SignalWorkflowRequest>,
    ) -> Result<Response<proto::SignalWorkflowResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "SignalWorkflow", Scope::Write)
            .await?;
        let r = request.into_inner();
        let id = caller.name("instance_id", required("instance_id", &r.instance_id)?)?;
        let id = id.as_str();
        let name = required("name", &r.name)?;
        let value = payload_in("value", r.value)?;
        let instance = self.instance(id).await?;
        if instance.status.is_closed() {
            return Err(Status::failed_precondition(format!(
                "instance `{id}` is {}; it takes no more signals",
                instance.status
            )));
        }
        self.client
            .signal_payload(id, name, value)
            .await
            .map_err(status::client)?;
        Ok(Response::new(proto::SignalWorkflowResponse {}))
    }

    async fn cancel_workflow(
        &self,
        request: Request<proto::CancelWorkflowRequest>,
    ) -> Result<Response<proto::CancelWorkflowResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "CancelWorkflow", Scope::Write)
            .await?;
        let r = request.into_inner();
        let id = caller.name("instance_id", required("instance_id", &r.instance_id)?)?;
        let id = id.as_str();
        self.instance(id).await?;
        self.client
            .cancel(id, &r.reason)
            .await
            .map_err(status::client)?;
        Ok(Response::new(proto::CancelWorkflowResponse {}))
    }

    async fn terminate_workflow(
        &self,
        request: Request<proto::TerminateWorkflowRequest>,
    ) -> Result<Response<proto::TerminateWorkflowResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "TerminateWorkflow", Scope::Write)
            .await?;
        let r = request.into_inner();
        let id = caller.name("instance_id", required("instance_id", &r.instance_id)?)?;
        let id = id.as_str();
        self.instance(id).await?;
        self.client
            .terminate(id, &r.reason)
            .await
            .map_err(status::client)?;
        Ok(Response::new(proto::TerminateWorkflowResponse {}))
    }

    async fn describe_workflow(
        &self,
        request: Request<proto::DescribeWorkflowRequest>,
    ) -> Result<Response<proto::DescribeWorkflowResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "DescribeWorkflow", Scope::Read)
            .await?;
        let r = request.into_inner();
        let id = caller.name("instance_id", required("instance_id", &r.instance_id)?)?;
        let id = id.as_str();
        let record = self.instance(id).await?;
        Ok(Response::new(proto::DescribeWorkflowResponse {
            workflow: Some(workflow_out(&record)),
        }))
    }

    async fn list_workflows(
        &self,
        request: Request<proto::ListWorkflowsRequest>,
    ) -> Result<Response<proto::ListWorkflowsResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "ListWorkflows", Scope::Read)
            .await?;
        let r = request.into_inner();
        let statuses = r
            .statuses
            .iter()
            .map(|&s| status_in(s))
            .collect::<Result<Vec<_>, _>>()?;
        let limit = match r.page_size {
            0 => 100,
            n => n.min(MAX_PAGE),
        };
        let filter = InstanceFilter {
            instance_type: (!r.workflow_type.is_empty()).then(|| r.workflow_type.clone()),
            statuses,
            created_from: r
                .created_from
                .map(|t| time_in("created_from", t))
                .transpose()?,
            created_until: r
                .created_until
                .map(|t| time_in("created_until", t))
                .transpose()?,
            after: page_token_in(&r.page_token)?,
            limit,
            // A namespace's listing is its prefix's.
            id_prefix: match (caller.prefix(), r.id_prefix.is_empty()) {
                (None, true) => None,
                (Some(prefix), true) => Some(prefix),
                (_, false) => Some(caller.name("id_prefix", &r.id_prefix)?),
            },
        };
        let page = self
            .store
            .list_instances(filter)
            .await
            .map_err(status::store)?;
        let next_page_token = match page.last() {
            Some(last) if page.len() as u32 == limit => page_token_out(last.created_at, &last.id),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListWorkflowsResponse {
            workflows: page.iter().map(workflow_out).collect(),
            next_page_token,
        }))
    }

    type GetWorkflowHistoryStream = BoxStream<'static, Result<proto::HistoryEvent, Status>>;

    async fn get_workflow_history(
        &self,
        request: Request<proto::GetWorkflowHistoryRequest>,
    ) -> Result<Response<Self::GetWorkflowHistoryStream>, Status> {
        let caller = self
            .auth
            .check(&request, "GetWorkflowHistory", Scope::Read)
            .await?;
        let r = request.into_inner();
        let id = caller.name("instance_id", required("instance_id", &r.instance_id)?)?;
        self.instance(&id).await?;
        let store = Arc::clone(&self.store);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut next = r.after_seq.saturating_add(1);
            loop {
                let range = HistoryRange::Seq {
                    from: next,
                    until: next.saturating_add(HISTORY_PAGE),
                };
                let events = match store.read_history(&id, range).await {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(status::store(e))).await;
                        return;
                    }
                };
                for e in &events {
                    if tx.send(event_out(e)).await.is_err() {
                        return; // the caller went away
                    }
                    next = e.seq + 1;
                }
                if events.len() as u64 == HISTORY_PAGE {
                    continue;
                }
                if !r.follow {
                    return;
                }
                // Following: done once the instance has ended and every event was sent.
                match store.get_instance(&id).await {
                    Ok(Some(i)) if i.status.is_closed() && next > i.history_len => return,
                    Ok(Some(_)) => {}
                    // Purged while followed.
                    Ok(None) => {
                        let _ = tx
                            .send(Err(Status::not_found(format!("instance `{id}` is gone"))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(status::store(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_workflow_result(
        &self,
        request: Request<proto::GetWorkflowResultRequest>,
    ) -> Result<Response<proto::GetWorkflowResultResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "GetWorkflowResult", Scope::Read)
            .await?;
        let r = request.into_inner();
        let id = caller.name("instance_id", required("instance_id", &r.instance_id)?)?;
        let id = id.as_str();
        self.instance(id).await?;
        let ended =
            |instance_id: String, status: InstanceStatus| proto::GetWorkflowResultResponse {
                instance_id,
                status: status_out(status) as i32,
                ..Default::default()
            };
        let response = match self.client.result_payload(id).await {
            Ok((run, output)) => proto::GetWorkflowResultResponse {
                output: Some(payload_out(&output)),
                ..ended(run, InstanceStatus::Completed)
            },
            Err(ClientError::Failed { id, failure }) => proto::GetWorkflowResultResponse {
                error: failure.message,
                error_details: failure.details.as_ref().map(payload_out),
                ..ended(id, InstanceStatus::Failed)
            },
            Err(ClientError::Cancelled { id, reason }) => proto::GetWorkflowResultResponse {
                error: reason,
                ..ended(id, InstanceStatus::Cancelled)
            },
            Err(ClientError::Terminated { id, reason }) => proto::GetWorkflowResultResponse {
                error: reason,
                ..ended(id, InstanceStatus::Terminated)
            },
            Err(e @ ClientError::Blocked { .. }) => {
                return Err(Status::failed_precondition(e.to_string()));
            }
            Err(e) => return Err(status::client(e)),
        };
        Ok(Response::new(response))
    }

    async fn get_workflow_state(
        &self,
        request: Request<proto::GetWorkflowStateRequest>,
    ) -> Result<Response<proto::GetWorkflowStateResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "GetWorkflowState", Scope::Read)
            .await?;
        let r = request.into_inner();
        let id = caller.name("instance_id", required("instance_id", &r.instance_id)?)?;
        let id = id.as_str();
        let record = self.instance(id).await?;
        let at = match (r.at_version, r.at_time) {
            (0, None) => quark_workflow::entity::At::Version(record.history_len),
            (v, None) => quark_workflow::entity::At::Version(v),
            (0, Some(t)) => quark_workflow::entity::At::Time(time_in("at_time", t)?),
            (_, Some(_)) => {
                return Err(Status::invalid_argument(
                    "at_version and at_time: name one or the other",
                ));
            }
        };
        let state = self.client.state_at(id, at).await.map_err(status::client)?;
        let pending = |calls: &[quark_workflow::Pending]| {
            calls
                .iter()
                .map(|p| proto::PendingCall {
                    command: p.command,
                    name: p.name.clone(),
                    since: Some(time_out(p.since)),
                })
                .collect()
        };
        Ok(Response::new(proto::GetWorkflowStateResponse {
            state: Some(proto::WorkflowState {
                instance_id: state.instance_id.clone(),
                workflow_type: state.instance_type.clone(),
                version: state.version,
                at: state.at.map(time_out),
                status: state.status.to_string(),
                pending_activities: pending(&state.pending_activities),
                pending_timers: state
                    .pending_timers
                    .iter()
                    .map(|t| proto::PendingTimer {
                        command: t.command,
                        fire_at: Some(time_out(t.fire_at)),
                    })
                    .collect(),
                pending_children: pending(&state.pending_children),
                signals: state
                    .signals
                    .iter()
                    .map(|(name, seen)| proto::SignalsSeen {
                        name: name.clone(),
                        count: seen.count,
                        last_json: seen.last.to_string(),
                    })
                    .collect(),
                cancel_requested: state.cancel_requested.clone().unwrap_or_default(),
                output_json: state
                    .output
                    .as_ref()
                    .map(|o| o.to_string())
                    .unwrap_or_default(),
                failure: state
                    .failure
                    .as_ref()
                    .map(|f| f.message.clone())
                    .unwrap_or_default(),
                parent_id: record.parent_id.unwrap_or_default(),
            }),
        }))
    }

    async fn list_workflow_types(
        &self,
        request: Request<proto::ListWorkflowTypesRequest>,
    ) -> Result<Response<proto::ListWorkflowTypesResponse>, Status> {
        self.auth
            .check(&request, "ListWorkflowTypes", Scope::Read)
            .await?;
        let types = self
            .store
            .registered_types()
            .await
            .map_err(status::store)?
            .into_iter()
            .filter(|t| t.kind == TypeKind::Orchestration)
            .map(|t| proto::WorkflowType {
                name: t.name,
                version: t.version,
                queue: t.queue,
                registered_by: t.worker_id,
                registered_at: Some(time_out(t.registered_at)),
            })
            .collect();
        Ok(Response::new(proto::ListWorkflowTypesResponse { types }))
    }
    async fn query_workflow(
        &self,
        request: Request<proto::QueryWorkflowRequest>,
    ) -> Result<Response<proto::QueryWorkflowResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "QueryWorkflow", Scope::Read)
            .await?;
        let r = request.into_inner();
        let id = caller.name("instance_id", required("instance_id", &r.instance_id)?)?;
        let id = id.as_str();
        let name = required("name", &r.name)?;
        let input = payload_in("input", r.input)?;
        self.instance(id).await?;
        let answer = self
            .client
            .query_payload(id, name, input)
            .await
            .map_err(status::client)?;
        Ok(Response::new(proto::QueryWorkflowResponse {
            answer: Some(payload_out(&answer)),
        }))
    }

    async fn update_workflow(
        &self,
        request: Request<proto::UpdateWorkflowRequest>,
    ) -> Result<Response<proto::UpdateWorkflowResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "UpdateWorkflow", Scope::Write)
            .await?;
        let r = request.into_inner();
        let id = caller.name("instance_id", required("instance_id", &r.instance_id)?)?;
        let id = id.as_str();
        let name = required("name", &r.name)?;
        let input = payload_in("input", r.input)?;
        let update_id = match r.update_id.as_str() {
            "" => uuid::Uuid::now_v7().to_string(),
            given if given.len() > MAX_UPDATE_ID => {
                return Err(Status::invalid_argument(format!(
                    "update_id: {} bytes, at most {MAX_UPDATE_ID}",
                    given.len()
                )));
            }
            given => given.to_string(),
        };
        // An instance that has ended is the client's to report: an update it completed before
        // it ended (sent again under its id) still answers with its result.
        self.instance(id).await?;
        let answered = self
            .client
            .update_payload(id, &update_id, name, input)
            .await;
        let response = match answered {
            Ok(result) => proto::UpdateWorkflowResponse {
                update_id,
                result: Some(payload_out(&result)),
                ..Default::default()
            },
            Err(ClientError::UpdateFailed { failure, .. }) => proto::UpdateWorkflowResponse {
                update_id,
                error: failure.message,
                error_details: failure.details.as_ref().map(payload_out),
                ..Default::default()
            },
            Err(e) => return Err(status::client(e)),
        };
        Ok(Response::new(response))
    }
}
