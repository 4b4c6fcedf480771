//! What crosses shards through the outbox, besides signals: children, entity commands, and what
//! they answer.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::HistoryEvent;
use crate::instance::NewInstance;
use crate::outbox::{Destination, OutboxMessage};
use crate::queue::{NewTask, TaskKind};

/// The payload of an outbox message to a Quark instance on another shard
/// ([`Destination::Instance`]). It is written in the commit of the turn that caused it, so it
/// exists if and only if that turn committed; the relay delivers it into the instance's shard,
/// where a re-send changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Crossing {
    /// Start this instance (a child whose parent lives on another shard), unless it exists.
    Start(NewInstance),
    /// Append these events to the instance and wake it: a child's end for its parent, a notice
    /// (a cancellation) for a child, an entity command's result for its orchestration.
    Events(Vec<HistoryEvent>),
    /// Enqueue this activity task on the destination's shard: an entity command of an
    /// orchestration on another shard, sent to its entity (the destination is the entity's
    /// stream, whose events the command appends there). Its result comes back as `Events`.
    Activity {
        /// The orchestration that scheduled it.
        instance: String,
        /// Its queue.
        queue: String,
        /// Its priority.
        priority: i32,
        /// The task's payload.
        payload: Vec<u8>,
        /// The trace context it continues.
        traceparent: Option<String>,
    },
}

impl Crossing {
    /// The outbox message that carries this to `instance` (JSON, so that `quark outbox` shows
    /// it readably). Its ordering key is the destination's: what one instance is told arrives in
    /// the order it was written, a child's start before any notice to it.
    pub fn message(&self, instance: &str) -> Result<OutboxMessage> {
        let payload = serde_json::to_vec(self)
            .map_err(|e| Error::Invalid(format!("news for `{instance}`: {e}")))?;
        Ok(OutboxMessage::new(
            Destination::Instance {
                instance: instance.to_string(),
            },
            payload,
        )
        .header("content-type", "application/json"))
    }

    /// The crossing that carries activity task `task` of an orchestration to another shard.
    pub fn activity(task: &NewTask) -> Result<Self> {
        let instance = task.instance_id.clone().ok_or_else(|| {
            Error::Invalid("an activity task sent across shards needs its instance".into())
        })?;
        Ok(Crossing::Activity {
            instance,
            queue: task.queue.clone(),
            priority: task.priority,
            payload: task.payload.clone(),
            traceparent: task.traceparent.clone(),
        })
    }

    /// The task an [`Activity`](Self::Activity) crossing enqueues (`None` for the others).
    pub fn task(&self) -> Option<NewTask> {
        let Crossing::Activity {
            instance,
            queue,
            priority,
            payload,
            traceparent,
        } = self
        else {
            return None;
        };
        let mut task = NewTask::new(TaskKind::Activity, queue.clone()).instance(instance.clone());
        task.priority = *priority;
        task.payload = payload.clone();
        task.traceparent = traceparent.clone();
        Some(task)
    }

    /// Reads a message's payload.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        serde_json::from_slice(payload).map_err(|e| {
            Error::Invalid(format!(
                "a message to an instance must carry a start or events: {e}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Payload;
    use crate::event::ParentRef;

    #[test]
    fn a_crossing_reads_back_as_written() {
        let mut child = NewInstance::new("p-1:order", "crash_order", Payload::json(&3).unwrap());
        child.parent = Some(ParentRef {
            instance_id: "p-1".into(),
            command: 4,
        });
        let start = Crossing::Start(child);
        let message = start.message("p-1:order").unwrap();
        assert_eq!(message.destination.to_string(), "instance:p-1:order");
        assert_eq!(Crossing::decode(&message.payload).unwrap(), start);
        let end = Crossing::Events(vec![HistoryEvent::ChildCompleted {
            command: 4,
            output: Payload::json(&9).unwrap(),
        }]);
        let message = end.message("p-1").unwrap();
        assert_eq!(Crossing::decode(&message.payload).unwrap(), end);
        assert_eq!(end.task(), None);
        let mut task = NewTask::new(TaskKind::Activity, "orders").instance("p-1");
        task.priority = 3;
        task.payload = vec![1, 2, 3];
        task.traceparent = Some("00-abc-def-01".into());
        let command = Crossing::activity(&task).unwrap();
        let message = command.message("Account/alice").unwrap();
        assert_eq!(
            Crossing::decode(&message.payload).unwrap().task(),
            Some(task)
        );
        assert!(Crossing::activity(&NewTask::new(TaskKind::Activity, "orders")).is_err());
        let said = Crossing::decode(br#"{"Other":1}"#).unwrap_err().to_string();
        assert!(said.contains("must carry a start or events"), "{said}");
    }
}
