//! The client's side of queries and updates: send the request as a task on the instance's
//! queue, then wait for its answer (a query's value, a refusal) or, for an accepted update, for
//! its `UpdateCompleted` in the history.

use std::time::Duration;

use quark_history::{Answer, HistoryEvent, HistoryRange, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{Client, ClientError};
use crate::request::{Query, Update};
use crate::task::{RequestKind, RequestTask, TaskPayload};

/// The longest a waiting request goes between two looks at its answer.
const MAX_LOOK_EVERY: Duration = Duration::from_millis(100);

impl Client {
    /// Asks `query` of instance `instance_id` with `input`, and waits for the answer: a value
    /// computed from the instance's state by a worker that runs its code. Nothing is recorded.
    /// An instance that has ended answers from its final state.
    ///
    /// [`ClientError::Rejected`] if the orchestration declares no such query or its handler
    /// fails. It waits as long as no worker answers: bound it with a timeout.
    pub async fn query<I: Serialize, O: DeserializeOwned>(
        &self,
        instance_id: &str,
        query: Query<I, O>,
        input: &I,
    ) -> Result<O, ClientError> {
        let input = Payload::json(input).map_err(|e| ClientError::Payload(e.to_string()))?;
        self.query_payload(instance_id, query.name(), input)
            .await?
            .decode()
            .map_err(|e| ClientError::Payload(e.to_string()))
    }

    /// [`query`](Self::query) by name, with the argument already encoded.
    pub async fn query_payload(
        &self,
        instance_id: &str,
        name: &str,
        input: Payload,
    ) -> Result<Payload, ClientError> {
        let id = uuid::Uuid::now_v7().to_string();
        self.send_request(instance_id, &id, RequestKind::Query, name, input)
            .await?;
        let mut waiting = Wait::new();
        loop {
            match self.store().request_answer(instance_id, &id).await? {
                Some(answer) => {
                    self.store().forget_answer(instance_id, &id).await?;
                    return match answer {
                        Answer::Value(value) => Ok(value),
                        Answer::Rejected(reason) => Err(ClientError::Rejected {
                            id: instance_id.to_string(),
                            reason,
                        }),
                    };
                }
                None => waiting.wait(self, instance_id).await?,
            }
        }
    }

    /// Sends `update` to instance `instance_id` with `input` and waits for its result. Its
    /// validator runs first: a rejected update is [`ClientError::Rejected`] and leaves no
    /// trace. An accepted one is recorded, its handler runs (through activities, timers and
    /// signals, if it waits on them), and what it returns is the result;
    /// [`ClientError::UpdateFailed`] if the handler returned an error.
    pub async fn update<I: Serialize, O: DeserializeOwned>(
        &self,
        instance_id: &str,
        update: Update<I, O>,
        input: &I,
    ) -> Result<O, ClientError> {
        let id = uuid::Uuid::now_v7().to_string();
        self.update_with_id(instance_id, &id, update, input).await
    }

    /// [`update`](Self::update) under an id of the caller's: sent again with the same id (after
    /// a lost answer, say), the update is not applied twice; the call waits for the result of
    /// the one already accepted.
    pub async fn update_with_id<I: Serialize, O: DeserializeOwned>(
        &self,
        instance_id: &str,
        update_id: &str,
        update: Update<I, O>,
        input: &I,
    ) -> Result<O, ClientError> {
        let input = Payload::json(input).map_err(|e| ClientError::Payload(e.to_string()))?;
        self.update_payload(instance_id, update_id, update.name(), input)
            .await?
            .decode()
            .map_err(|e| ClientError::Payload(e.to_string()))
    }

    /// [`update_with_id`](Self::update_with_id) by name, with the argument already encoded.
    pub async fn update_payload(
        &self,
        instance_id: &str,
        update_id: &str,
        name: &str,
        input: Payload,
    ) -> Result<Payload, ClientError> {
        if update_id.is_empty() {
            return Err(ClientError::Payload(
                "an update's id cannot be empty".into(),
            ));
        }
        let mut seen = self.update_seen(instance_id, update_id, 1).await?;
        if seen.result.is_none() && !seen.closed && !seen.accepted {
            self.send_request(instance_id, update_id, RequestKind::Update, name, input)
                .await?;
        }
        let mut waiting = Wait::new();
        loop {
            if let Some(result) = seen.result.take() {
                return result.map_err(|failure| ClientError::UpdateFailed {
                    id: instance_id.to_string(),
                    update: update_id.to_string(),
                    failure,
                });
            }
            // An update's answer is left to expire: a worker that runs the request again (it
            // died before completing the task) finds it, and does not validate it again.
            if let Some(Answer::Rejected(reason)) =
                self.store().request_answer(instance_id, update_id).await?
            {
                return Err(ClientError::Rejected {
                    id: instance_id.to_string(),
                    reason,
                });
            }
            // A handler that broke (a panic) blocks the instance: it will not complete.
            if seen.accepted
                && let Some(record) = self.store().get_instance(instance_id).await?
                && record.status == quark_history::InstanceStatus::Blocked
            {
                return Err(crate::client::blocked(record));
            }
            if seen.closed {
                let reason = if seen.accepted {
                    format!("the instance ended before update `{update_id}` completed")
                } else {
                    format!("the instance has ended; update `{update_id}` was not accepted")
                };
                return Err(ClientError::Rejected {
                    id: instance_id.to_string(),
                    reason,
                });
            }
            waiting.wait(self, instance_id).await?;
            let next = self
                .update_seen(instance_id, update_id, seen.next_seq)
                .await?;
            seen = Seen {
                accepted: seen.accepted || next.accepted,
                ..next
            };
        }
    }

    /// What the history of `instance_id` from `from` on says of update `update_id`.
    async fn update_seen(
        &self,
        instance_id: &str,
        update_id: &str,
        from: u64,
    ) -> Result<Seen, ClientError> {
        let events = self
            .store()
            .read_history(instance_id, HistoryRange::From(from))
            .await?;
        if from == 1 && events.is_empty() {
            return Err(ClientError::NotFound(instance_id.to_string()));
        }
        let mut seen = Seen {
            next_seq: events.last().map_or(from, |e| e.seq + 1),
            ..Seen::default()
        };
        for e in &events {
            match &e.event {
                HistoryEvent::UpdateAccepted { update_id: id, .. } if id == update_id => {
                    seen.accepted = true;
                }
                HistoryEvent::UpdateCompleted {
                    update_id: id,
                    result,
                    ..
                } if id == update_id => seen.result = Some(result.clone()),
                ev if ev.closing_status().is_some() => seen.closed = true,
                _ => {}
            }
        }
        Ok(seen)
    }

    async fn send_request(
        &self,
        instance_id: &str,
        id: &str,
        kind: RequestKind,
        name: &str,
        input: Payload,
    ) -> Result<(), ClientError> {
        let record = self.describe(instance_id).await?;
        let request = RequestTask {
            id: id.to_string(),
            instance_id: instance_id.to_string(),
            kind,
            name: name.to_string(),
            input,
        };
        let mut task = TaskPayload::request_task(request, &record.queue);
        // The worker where the instance last ran likely keeps it warm: it answers a query
        // without replaying the history.
        task.affinity = record.affinity;
        task.traceparent = crate::trace_context::traceparent();
        self.store().enqueue(vec![task]).await?;
        Ok(())
    }
}

/// What an instance's history says of one update.
#[derive(Debug, Default)]
struct Seen {
    accepted: bool,
    result: Option<Result<Payload, quark_history::Failure>>,
    closed: bool,
    /// Where to read on from.
    next_seq: u64,
}

/// The wait between two looks at a request's answer: short at first (a warm worker answers in
/// a few milliseconds), then longer. Under the test environment, it runs the work instead.
struct Wait {
    delay: Duration,
}

impl Wait {
    fn new() -> Self {
        Wait {
            delay: Duration::from_millis(2),
        }
    }

    async fn wait(&mut self, client: &Client, instance_id: &str) -> Result<(), ClientError> {
        match client.driver() {
            Some(driver) => {
                if driver.step().await? {
                    Ok(())
                } else {
                    Err(ClientError::Stuck {
                        id: instance_id.to_string(),
                        reason: "the request is not answered and nothing is left to run".into(),
                    })
                }
            }
            None => {
                tokio::time::sleep(self.delay).await;
                self.delay = (self.delay * 2).min(MAX_LOOK_EVERY);
                Ok(())
            }
        }
    }
}
