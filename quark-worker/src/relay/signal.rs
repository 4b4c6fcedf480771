//! Delivery to another Quark orchestration, as a signal.
//!
//! One commit appends `SignalReceived`, enqueues the instance's orchestration task (as
//! `Client::signal` does) and records `outbox:<idempotency key>` in the inbox. A re-send of the
//! same message finds the id recorded, writes nothing, and counts as delivered: the orchestration
//! sees the signal once.

use quark_history::{
    ClaimedMessage, CodecTag, Commit, Error, Expected, HistoryEvent, NewTask, Payload, Store,
};

use super::DeliveryError;

/// The inbox id a relayed signal is recorded under.
pub(crate) fn inbox_id(message: &ClaimedMessage) -> String {
    format!("outbox:{}", message.idempotency_key)
}

pub(crate) async fn deliver(
    store: &dyn Store,
    instance: &str,
    name: &str,
    message: &ClaimedMessage,
) -> Result<(), DeliveryError> {
    if serde_json::from_slice::<serde_json::Value>(&message.payload).is_err() {
        return Err(DeliveryError::permanent(
            "a signal's payload must be JSON (use OutboxMessage::json)",
        ));
    }
    let record = match store.get_instance(instance).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            return Err(DeliveryError::permanent(format!(
                "no orchestration instance `{instance}`"
            )));
        }
        Err(e) => return Err(DeliveryError::retry(e.to_string())),
    };
    let event = HistoryEvent::SignalReceived {
        name: name.to_string(),
        payload: Payload::from_bytes(CodecTag::Json, message.payload.clone()),
    };
    let commit = Commit::new()
        .append(instance, Expected::Any, [event])
        .enqueue(NewTask::orchestration(&record.queue, instance))
        .receive(inbox_id(message));
    match store.commit(commit).await {
        Ok(_) => Ok(()),
        // Delivered before (a re-send after a crash or a lost lease).
        Err(Error::AlreadyReceived { .. }) => Ok(()),
        Err(e @ (Error::InstanceClosed { .. } | Error::InstanceNotFound { .. })) => {
            Err(DeliveryError::permanent(e.to_string()))
        }
        Err(e) => Err(DeliveryError::retry(e.to_string())),
    }
}
