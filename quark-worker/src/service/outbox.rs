//! `quark.v1.OutboxService`: the transactional outbox read, and dead messages re-driven.

use std::sync::Arc;

use quark_history::{MessageState, OutboxFilter, Scope, Store};
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::convert::{page_size, time_out};
use super::proto::{self, outbox_service_server::OutboxService};
use super::status;

/// The implementation of `quark.v1.OutboxService` over a store.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
}

impl Outbox {
    /// The service over `store`, its calls checked by `auth`.
    pub fn new(store: Arc<dyn Store>, auth: Arc<Authenticator>) -> Outbox {
        Outbox { store, auth }
    }
}

fn state_out(s: MessageState) -> proto::MessageState {
    match s {
        MessageState::Pending => proto::MessageState::Pending,
        MessageState::Sent => proto::MessageState::Sent,
        MessageState::Dead => proto::MessageState::Dead,
        _ => proto::MessageState::Unspecified,
    }
}

#[tonic::async_trait]
impl OutboxService for Outbox {
    async fn list_outbox_messages(
        &self,
        request: Request<proto::ListOutboxMessagesRequest>,
    ) -> Result<Response<proto::ListOutboxMessagesResponse>, Status> {
        self.auth
            .check(&request, "ListOutboxMessages", Scope::Read)
            .await?
            .cluster_wide("the outbox")?;
        let r = request.into_inner();
        let state = match proto::MessageState::try_from(r.state) {
            Ok(proto::MessageState::Unspecified) => None,
            Ok(proto::MessageState::Pending) => Some(MessageState::Pending),
            Ok(proto::MessageState::Sent) => Some(MessageState::Sent),
            Ok(proto::MessageState::Dead) => Some(MessageState::Dead),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "state: {} is not a message state",
                    r.state
                )));
            }
        };
        let messages = self
            .store
            .list_outbox(OutboxFilter {
                state,
                ordering_key: (!r.ordering_key.is_empty()).then(|| r.ordering_key.clone()),
                limit: page_size(r.page_size),
            })
            .await
            .map_err(status::store)?;
        Ok(Response::new(proto::ListOutboxMessagesResponse {
            messages: messages
                .into_iter()
                .map(|m| proto::OutboxMessageInfo {
                    id: m.id,
                    destination: m.destination.to_string(),
                    ordering_key: m.ordering_key,
                    idempotency_key: m.idempotency_key,
                    state: state_out(m.state) as i32,
                    attempts: m.attempts,
                    next_attempt_at: Some(time_out(m.next_attempt_at)),
                    last_error: m.last_error.unwrap_or_default(),
                    payload_bytes: m.payload.len() as u64,
                })
                .collect(),
        }))
    }

    async fn redrive_outbox_messages(
        &self,
        request: Request<proto::RedriveOutboxMessagesRequest>,
    ) -> Result<Response<proto::RedriveOutboxMessagesResponse>, Status> {
        self.auth
            .check(&request, "RedriveOutboxMessages", Scope::Admin)
            .await?
            .cluster_wide("the outbox")?;
        let r = request.into_inner();
        if r.message_ids.is_empty() || r.message_ids.len() > 1000 {
            return Err(Status::invalid_argument(
                "message_ids: name between 1 and 1,000 messages",
            ));
        }
        let mut results = Vec::with_capacity(r.message_ids.len());
        // As for dead tasks: once the database goes away, the rest say they were not tried.
        let mut unreachable: Option<String> = None;
        for id in r.message_ids {
            if let Some(why) = &unreachable {
                results.push(proto::RedrivenMessage {
                    message_id: id,
                    redriven: false,
                    error: format!("not tried: {why}"),
                });
                continue;
            }
            let outcome = self.store.redrive_message(id).await;
            if let Err(e) = &outcome
                && e.is_retryable()
            {
                unreachable = Some(e.to_string());
            }
            results.push(proto::RedrivenMessage {
                message_id: id,
                redriven: outcome.is_ok(),
                error: outcome.err().map(|e| e.to_string()).unwrap_or_default(),
            });
        }
        Ok(Response::new(proto::RedriveOutboxMessagesResponse {
            results,
        }))
    }
}
