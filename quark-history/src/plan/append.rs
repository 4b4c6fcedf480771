//! Where an append lands: after the instance's head, at the expected sequence number, never after
//! the event that ended the instance; its events chained to the head's hash.

use crate::clock::Timestamp;
use crate::codec::Payload;
use crate::commit::{Append, Expected};
use crate::error::{Error, Result};
use crate::event::HistoryEvent;
use crate::instance::InstanceStatus;
use crate::rows::{EncodedEvent, encode_events};
use crate::store::StoreConfig;

/// An instance's head as a commit read it under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InstanceHead {
    pub(crate) next_seq: u64,
    pub(crate) last_hash: [u8; 32],
    pub(crate) status: InstanceStatus,
}

impl InstanceHead {
    /// The status an append that leaves the instance at this head writes: its closing status if
    /// the append ended it, `None` (the row keeps its own) otherwise. Whether a running instance
    /// is blocked is not an append's to change: its turns' settles block and unblock it.
    pub(crate) fn written_status(&self) -> Option<&'static str> {
        self.status.is_closed().then(|| self.status.as_str())
    }
}

/// What one append writes.
pub(crate) struct Appended {
    /// The sequence numbers of its first and last event (`(next, next - 1)` when empty).
    pub(crate) range: (u64, u64),
    pub(crate) events: Vec<EncodedEvent>,
    /// The time its events are recorded at.
    pub(crate) at: Timestamp,
    /// The instance's head after it.
    pub(crate) head: InstanceHead,
    pub(crate) added_bytes: i64,
    /// The output of a completed instance.
    pub(crate) output: Option<Payload>,
}

/// Places `append` after the instance's head `from` (`None`: no such instance).
pub(crate) fn append(
    config: &StoreConfig,
    append: &Append,
    from: Option<&InstanceHead>,
    now: Timestamp,
) -> Result<Appended> {
    let id = &append.instance_id;
    let Some(from) = from else {
        return Err(Error::InstanceNotFound { id: id.clone() });
    };
    if let Expected::Seq(expected) = append.expected
        && expected != from.next_seq
    {
        return Err(Error::Conflict {
            id: id.clone(),
            expected,
            actual: from.next_seq,
        });
    }
    let at = append.at.unwrap_or(now);
    let encoded = encode_events(config, from.last_hash, from.next_seq, &append.events)?;
    let mut head = *from;
    let mut output = None;
    for event in &append.events {
        let entity_event = matches!(event, HistoryEvent::EntityEvent { .. });
        if entity_event != (head.status == InstanceStatus::Stream) {
            return Err(Error::Invalid(match entity_event {
                true => {
                    format!("`{id}` is a workflow instance: entity events go to entity streams")
                }
                false => format!(
                    "`{id}` is an entity stream: it holds entity events only, not {}",
                    event.kind()
                ),
            }));
        }
        if head.status.is_closed() {
            return Err(Error::InstanceClosed {
                id: id.clone(),
                status: head.status,
            });
        }
        if let Some(closing) = event.closing_status() {
            head.status = closing;
            if let HistoryEvent::WorkflowCompleted { output: out } = event {
                output = Some(out.clone());
            }
        }
    }
    if let Some(last) = encoded.last() {
        head.next_seq = last.seq + 1;
        head.last_hash = last.hash;
    }
    Ok(Appended {
        range: (from.next_seq, head.next_seq - 1),
        added_bytes: encoded.iter().map(|e| e.bytes.len() as i64).sum(),
        events: encoded,
        at,
        head,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{NOW, fresh, signal, terminated};

    fn append_to(expected: Expected, events: Vec<HistoryEvent>) -> Append {
        Append {
            instance_id: "i".into(),
            expected,
            events,
            at: None,
        }
    }

    #[test]
    fn it_chains_appended_events_to_the_head_and_closes_the_instance() {
        let config = StoreConfig::default();
        let events = vec![signal(), terminated()];
        let done = append(
            &config,
            &append_to(Expected::Seq(1), events),
            Some(&fresh()),
            NOW,
        )
        .unwrap();
        assert_eq!(done.range, (1, 2));
        assert_eq!(done.head.next_seq, 3);
        assert_eq!(done.head.last_hash, done.events[1].hash);
        assert_eq!(done.head.status, InstanceStatus::Terminated);
        assert_eq!(
            done.added_bytes,
            done.events
                .iter()
                .map(|e| e.bytes.len() as i64)
                .sum::<i64>()
        );
        let empty = append(
            &config,
            &append_to(Expected::Any, vec![]),
            Some(&done.head),
            NOW,
        )
        .unwrap();
        assert_eq!(empty.range, (3, 2));
    }

    #[test]
    fn it_refuses_an_append_that_conflicts_or_follows_the_end() {
        let config = StoreConfig::default();
        let conflict = append(
            &config,
            &append_to(Expected::Seq(4), vec![signal()]),
            Some(&fresh()),
            NOW,
        );
        assert!(matches!(
            conflict,
            Err(Error::Conflict {
                expected: 4,
                actual: 1,
                ..
            })
        ));
        let closed = InstanceHead {
            status: InstanceStatus::Completed,
            ..fresh()
        };
        let after = append(
            &config,
            &append_to(Expected::Any, vec![signal()]),
            Some(&closed),
            NOW,
        );
        assert!(matches!(after, Err(Error::InstanceClosed { .. })));
        let twice = append(
            &config,
            &append_to(Expected::Any, vec![terminated(), signal()]),
            Some(&fresh()),
            NOW,
        );
        assert!(matches!(twice, Err(Error::InstanceClosed { .. })));
        let missing = append(
            &config,
            &append_to(Expected::Any, vec![signal()]),
            None,
            NOW,
        );
        assert!(matches!(missing, Err(Error::InstanceNotFound { .. })));
    }
}
