//! A Rust client of the API: the typed stubs (`process_order::start(&remote, ..)`) and their
//! handles work over it as over the in-process [`Client`](quark_workflow::Client), for a
//! program that has the workflow code's types but neither the database nor its credentials.

use std::sync::Arc;

use futures::future::BoxFuture;
use quark_history::{
    BlockedTurn, Failure, InstanceFilter, InstanceRecord, InstanceStatus, Payload, RecordedEvent,
};
use quark_workflow::{ClientError, Connection, StartOptions, WorkflowClient};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::convert::{payload_out, time_in};
use super::proto::{self, WorkflowStatus, workflow_service_client::WorkflowServiceClient};

/// Adds the bearer token, if any, to every call of an [`ApiClient`].
#[derive(Debug, Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// The generated client, with the token added to every call.
pub type ApiClient = WorkflowServiceClient<InterceptedService<Channel, BearerToken>>;

/// Errors of connecting to the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not one.
    #[error("`{url}` is not a URL of the API: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The token cannot be sent as a header.
    #[error("the token is not a valid header value")]
    Token,
    /// The server could not be reached, or the TLS handshake failed.
    #[error("connecting to {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

/// A client of a Quark API server (`quark serve`).
#[derive(Debug, Clone)]
pub struct RemoteClient {
    api: ApiClient,
    channel: Channel,
    bearer: BearerToken,
}

/// A generated client of one of the other services, with the token added to every call.
pub type Authed = InterceptedService<Channel, BearerToken>;

impl RemoteClient {
    /// Connects to the server at `url` (`http://host:port`, or `https://` with `tls`), sending
    /// `token` with every call.
    pub async fn connect(
        url: &str,
        token: Option<&str>,
        tls: Option<ClientTlsConfig>,
    ) -> Result<RemoteClient, ConnectError> {
        let bad = |reason: String| ConnectError::Url {
            url: url.to_string(),
            reason,
        };
        let mut endpoint =
            Endpoint::from_shared(url.to_string()).map_err(|e| bad(e.to_string()))?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ConnectError::Connect {
                url: url.to_string(),
                source,
            })?;
        let token = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map(|mut v| {
                        // Kept out of Debug output and logs.
                        v.set_sensitive(true);
                        v
                    })
            })
            .transpose()
            .map_err(|_| ConnectError::Token)?;
        let bearer = BearerToken(token);
        Ok(RemoteClient {
            api: WorkflowServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            channel,
            bearer,
        })
    }

    /// The generated client, for the calls this type does not wrap.
    pub fn api(&self) -> ApiClient {
        self.api.clone()
    }

    /// The job service's generated client.
    pub fn jobs(&self) -> proto::job_service_client::JobServiceClient<Authed> {
        proto::job_service_client::JobServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }

    /// The saga service's generated client.
    pub fn sagas(&self) -> proto::saga_service_client::SagaServiceClient<Authed> {
        proto::saga_service_client::SagaServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }

    /// The schedule service's generated client.
    pub fn schedules(&self) -> proto::schedule_service_client::ScheduleServiceClient<Authed> {
        proto::schedule_service_client::ScheduleServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }

    /// The queue service's generated client (queues and dead letters).
    pub fn queues(&self) -> proto::queue_service_client::QueueServiceClient<Authed> {
        proto::queue_service_client::QueueServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        )
    }

    /// A page of instances matching `filter` (its `after` is a page token as the server gave
    /// it, or the command line's cursor), and the token of the next page if there is one.
    pub async fn list(
        &self,
        filter: &InstanceFilter,
        page_token: Option<String>,
    ) -> Result<(Vec<InstanceRecord>, Option<String>), ClientError> {
        let request = proto::ListWorkflowsRequest {
            workflow_type: filter.instance_type.clone().unwrap_or_default(),
            statuses: filter
                .statuses
                .iter()
                .map(|s| super::convert::status_out(*s) as i32)
                .collect(),
            created_from: filter.created_from.map(super::convert::time_out),
            created_until: filter.created_until.map(super::convert::time_out),
            page_size: filter.limit,
            page_token: page_token.unwrap_or_default(),
            id_prefix: filter.id_prefix.clone().unwrap_or_default(),
        };
        let page = self
            .api
            .clone()
            .list_workflows(request)
            .await
            .map_err(|s| error(s, ""))?
            .into_inner();
        let records = page
            .workflows
            .into_iter()
            .map(record)
            .collect::<Result<Vec<_>, _>>()?;
        let next = (!page.next_page_token.is_empty()).then_some(page.next_page_token);
        Ok((records, next))
    }

    /// The whole history of `instance_id`, as stored.
    pub async fn history(&self, instance_id: &str) -> Result<Vec<RecordedEvent>, ClientError> {
        let mut stream = self
            .api
            .clone()
            .get_workflow_history(proto::GetWorkflowHistoryRequest {
                instance_id: instance_id.to_string(),
                after_seq: 0,
                follow: false,
            })
            .await
            .map_err(|s| error(s, instance_id))?
            .into_inner();
        let mut events = Vec::new();
        while let Some(e) = stream.message().await.map_err(|s| error(s, instance_id))? {
            let event = serde_json::from_str(&e.detail_json).map_err(|err| {
                ClientError::Payload(format!("event {} of `{instance_id}`: {err}", e.seq))
            })?;
            events.push(RecordedEvent {
                instance_id: instance_id.to_string(),
                seq: e.seq,
                recorded_at: time(e.recorded_at)?,
                event,
                hash: e.hash,
            });
        }
        Ok(events)
    }
}

/// A status as a client error.
fn error(status: tonic::Status, instance_id: &str) -> ClientError {
    match status.code() {
        tonic::Code::NotFound if status.message().contains(instance_id) => {
            ClientError::NotFound(instance_id.to_string())
        }
        tonic::Code::AlreadyExists => ClientError::Store(quark_history::Error::DuplicateInstance {
            id: instance_id.to_string(),
        }),
        code => ClientError::Api {
            code: format!("{code:?}"),
            message: status.message().to_string(),
        },
    }
}

fn payload_in(p: Option<proto::Payload>) -> Result<Payload, ClientError> {
    super::convert::payload_in("payload", p).map_err(|s| ClientError::Payload(s.message().into()))
}

fn status_in(value: i32) -> Result<InstanceStatus, ClientError> {
    super::convert::status_in(value).map_err(|s| ClientError::Payload(s.message().into()))
}

fn time(t: Option<prost_types::Timestamp>) -> Result<quark_history::Timestamp, ClientError> {
    time_in("time", t.unwrap_or_default()).map_err(|s| ClientError::Payload(s.message().into()))
}

fn record(w: proto::Workflow) -> Result<InstanceRecord, ClientError> {
    let none_if_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(InstanceRecord {
        status: status_in(w.status)?,
        input: payload_in(w.input)?,
        output: w.output.map(|p| payload_in(Some(p))).transpose()?,
        created_at: time(w.created_at)?,
        updated_at: time(w.updated_at)?,
        blocked: w
            .blocked
            .map(|b| Ok::<_, ClientError>(BlockedTurn::new(b.task_id, b.error, time(b.since)?)))
            .transpose()?,
        id: w.instance_id,
        instance_type: w.workflow_type,
        version: w.version,
        parent_id: none_if_empty(w.parent_id),
        queue: w.queue,
        history_len: w.history_length,
        history_bytes: w.history_bytes,
        affinity: none_if_empty(w.affinity),
    })
}

impl Connection for RemoteClient {
    fn start_instance<'a>(
        &'a self,
        instance_type: &'a str,
        _version: u32,
        instance_id: String,
        input: Payload,
        options: StartOptions,
    ) -> BoxFuture<'a, Result<String, ClientError>> {
        Box::pin(async move {
            let id_reuse = match options.id_reuse {
                quark_history::IdReusePolicy::ReturnExisting => {
                    proto::IdReusePolicy::ReturnExisting
                }
                _ => proto::IdReusePolicy::RejectDuplicate,
            };
            let request = proto::StartWorkflowRequest {
                workflow_type: instance_type.to_string(),
                instance_id: instance_id.clone(),
                input: Some(payload_out(&input)),
                id_reuse: id_reuse as i32,
                queue: options.queue.unwrap_or_default(),
                priority: options.priority,
                start_at: options.start_at.map(super::convert::time_out),
            };
            let started = self
                .api
                .clone()
                .start_workflow(request)
                .await
                .map_err(|s| error(s, &instance_id))?;
            Ok(started.into_inner().instance_id)
        })
    }

    fn result_payload<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<(String, Payload), ClientError>> {
        Box::pin(async move {
            let ended = self
                .api
                .clone()
                .get_workflow_result(proto::GetWorkflowResultRequest {
                    instance_id: instance_id.to_string(),
                })
                .await
                .map_err(|s| error(s, instance_id))?
                .into_inner();
            let id = ended.instance_id.clone();
            match WorkflowStatus::try_from(ended.status) {
                Ok(WorkflowStatus::Completed) => Ok((id, payload_in(ended.output)?)),
                Ok(WorkflowStatus::Failed) => Err(ClientError::Failed {
                    id,
                    failure: Failure {
                        message: ended.error,
                        retryable: false,
                        details: ended
                            .error_details
                            .map(|d| payload_in(Some(d)))
                            .transpose()?,
                    },
                }),
                Ok(WorkflowStatus::Cancelled) => Err(ClientError::Cancelled {
                    id,
                    reason: ended.error,
                }),
                Ok(WorkflowStatus::Terminated) => Err(ClientError::Terminated {
                    id,
                    reason: ended.error,
                }),
                _ => Err(ClientError::Payload(format!(
                    "the API answered status {} for the end of `{id}`",
                    ended.status
                ))),
            }
        })
    }

    fn signal_payload<'a>(
        &'a self,
        instance_id: &'a str,
        name: &'a str,
        value: Payload,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            self.api
                .clone()
                .signal_workflow(proto::SignalWorkflowRequest {
                    instance_id: instance_id.to_string(),
                    name: name.to_string(),
                    value: Some(payload_out(&value)),
                })
                .await
                .map_err(|s| error(s, instance_id))?;
            Ok(())
        })
    }

    fn cancel<'a>(
        &'a self,
        instance_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            self.api
                .clone()
                .cancel_workflow(proto::CancelWorkflowRequest {
                    instance_id: instance_id.to_string(),
                    reason: reason.to_string(),
                })
                .await
                .map_err(|s| error(s, instance_id))?;
            Ok(())
        })
    }

    fn terminate<'a>(
        &'a self,
        instance_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            self.api
                .clone()
                .terminate_workflow(proto::TerminateWorkflowRequest {
                    instance_id: instance_id.to_string(),
                    reason: reason.to_string(),
                })
                .await
                .map_err(|s| error(s, instance_id))?;
            Ok(())
        })
    }

    fn describe<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<InstanceRecord, ClientError>> {
        Box::pin(async move {
            let described = self
                .api
                .clone()
                .describe_workflow(proto::DescribeWorkflowRequest {
                    instance_id: instance_id.to_string(),
                })
                .await
                .map_err(|s| error(s, instance_id))?
                .into_inner();
            let workflow = described
                .workflow
                .ok_or_else(|| ClientError::Payload("the API described no workflow".into()))?;
            record(workflow)
        })
    }

    fn query_payload<'a>(
        &'a self,
        instance_id: &'a str,
        name: &'a str,
        input: Payload,
    ) -> BoxFuture<'a, Result<Payload, ClientError>> {
        Box::pin(async move {
            let answered = self
                .api
                .clone()
                .query_workflow(proto::QueryWorkflowRequest {
                    instance_id: instance_id.to_string(),
                    name: name.to_string(),
                    input: Some(payload_out(&input)),
                })
                .await
                .map_err(|s| refused(s, instance_id))?
                .into_inner();
            payload_in(answered.answer)
        })
    }

    fn update_payload<'a>(
        &'a self,
        instance_id: &'a str,
        update_id: &'a str,
        name: &'a str,
        input: Payload,
    ) -> BoxFuture<'a, Result<Payload, ClientError>> {
        Box::pin(async move {
            let answered = self
                .api
                .clone()
                .update_workflow(proto::UpdateWorkflowRequest {
                    instance_id: instance_id.to_string(),
                    name: name.to_string(),
                    input: Some(payload_out(&input)),
                    update_id: update_id.to_string(),
                })
                .await
                .map_err(|s| refused(s, instance_id))?
                .into_inner();
            if !answered.error.is_empty() || answered.error_details.is_some() {
                let details = answered
                    .error_details
                    .map(|p| payload_in(Some(p)))
                    .transpose()?;
                return Err(ClientError::UpdateFailed {
                    id: instance_id.to_string(),
                    update: answered.update_id,
                    failure: quark_history::Failure {
                        message: answered.error,
                        retryable: false,
                        details,
                    },
                });
            }
            payload_in(answered.result)
        })
    }
}

/// The error of a refused query or update: FAILED_PRECONDITION is the instance's refusal.
fn refused(status: tonic::Status, instance_id: &str) -> ClientError {
    match status.code() {
        tonic::Code::FailedPrecondition => {
            // The server says whose refusal it is; the error says it again.
            let prefix = format!("instance `{instance_id}` refused the request: ");
            let message = status.message();
            ClientError::Rejected {
                id: instance_id.to_string(),
                reason: message.strip_prefix(&prefix).unwrap_or(message).to_string(),
            }
        }
        _ => error(status, instance_id),
    }
}

impl WorkflowClient for RemoteClient {
    fn connection(&self) -> Arc<dyn Connection> {
        Arc::new(self.clone())
    }
}
