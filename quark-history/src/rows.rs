//! Encoding and decoding of stored rows, shared by both backends.

use std::collections::BTreeSet;

use crate::clock::Timestamp;
use crate::codec::{CodecTag, Payload};
use crate::error::{Error, Result};
use crate::event::{HistoryEvent, RecordedEvent, SCHEMA_VERSION};
use crate::journal::{ChainBreak, chain_hash, to_hex};
use crate::queue::{MAX_TRACEPARENT, NewTask};
use crate::store::StoreConfig;

/// An event ready to insert.
pub(crate) struct EncodedEvent {
    pub(crate) seq: u64,
    pub(crate) kind: &'static str,
    pub(crate) codec: i16,
    pub(crate) bytes: Vec<u8>,
    pub(crate) hash: [u8; 32],
}

/// Encodes `events` to follow `prev_hash` from `next_seq` on, checking the size limit.
pub(crate) fn encode_events(
    config: &StoreConfig,
    mut prev_hash: [u8; 32],
    next_seq: u64,
    events: &[HistoryEvent],
) -> Result<Vec<EncodedEvent>> {
    let codec = config.codec;
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let bytes = codec.encode(event).map_err(Error::Encode)?;
            check_size(config, bytes.len())?;
            let seq = next_seq + i as u64;
            let hash = chain_hash(&prev_hash, seq, codec.as_i16(), &bytes);
            prev_hash = hash;
            Ok(EncodedEvent {
                seq,
                kind: event.kind(),
                codec: codec.as_i16(),
                bytes,
                hash,
            })
        })
        .collect()
}

pub(crate) fn check_size(config: &StoreConfig, size: usize) -> Result<()> {
    if size > config.max_payload_bytes {
        return Err(Error::PayloadTooLarge {
            size,
            limit: config.max_payload_bytes,
        });
    }
    Ok(())
}

/// Refuses a trace context longer than [`MAX_TRACEPARENT`] or with characters a `traceparent`
/// header cannot hold, before anything is written.
pub(crate) fn check_traceparent(traceparent: Option<&str>) -> Result<()> {
    match traceparent {
        Some(t) if !crate::queue::is_storable_traceparent(t) => Err(Error::Invalid(format!(
            "a traceparent is at most {MAX_TRACEPARENT} printable ASCII characters without spaces; got {t:?}"
        ))),
        _ => Ok(()),
    }
}

/// Checks a batch of tasks before any of it is written.
pub(crate) fn check_tasks(config: &StoreConfig, tasks: &[NewTask]) -> Result<()> {
    for task in tasks {
        check_size(config, task.payload.len())?;
        check_traceparent(task.traceparent.as_deref())?;
        if task.queue.is_empty() {
            return Err(Error::Invalid("a task needs a queue name".into()));
        }
        if task.lease_to.is_some() && (task.unique.is_some() || task.concurrency.is_some()) {
            return Err(Error::Invalid(
                "a task with a unique or concurrency key cannot be enqueued already leased".into(),
            ));
        }
        if task
            .concurrency
            .as_ref()
            .is_some_and(|(key, limit)| key.is_empty() || *limit == 0)
        {
            return Err(Error::Invalid(
                "a concurrency key needs a name and a limit of at least 1".into(),
            ));
        }
        if task.unique.as_ref().is_some_and(|u| u.key.is_empty()) {
            return Err(Error::Invalid("a unique key cannot be empty".into()));
        }
        if task.kind != crate::TaskKind::Job
            && (task.unique.is_some() || task.concurrency.is_some())
        {
            return Err(Error::Invalid(
                "only jobs take unique and concurrency keys".into(),
            ));
        }
        if task.kind == crate::TaskKind::Orchestration && task.instance_id.is_none() {
            return Err(Error::Invalid(
                "an orchestration task needs an instance id".into(),
            ));
        }
    }
    Ok(())
}

/// The queues and kinds that `tasks` make claimable at `now`, to announce after commit.
pub(crate) fn visible_queues(
    tasks: &[NewTask],
    now: Timestamp,
) -> BTreeSet<(String, crate::TaskKind)> {
    tasks
        .iter()
        .filter(|t| t.lease_to.is_none() && t.visible_at.is_none_or(|at| at <= now))
        .map(|t| (t.queue.clone(), t.kind))
        .collect()
}

/// Decodes a stored event row.
pub(crate) fn decode_event(
    instance_id: &str,
    seq: i64,
    schema: i16,
    codec: i16,
    bytes: &[u8],
    recorded_at: i64,
    hash: &[u8],
) -> Result<RecordedEvent> {
    let seq = seq as u64;
    if schema > SCHEMA_VERSION {
        return Err(Error::UnsupportedSchema {
            instance_id: instance_id.to_string(),
            seq,
            found: schema,
            supported: SCHEMA_VERSION,
        });
    }
    let decode_err = |source| Error::Decode {
        instance_id: instance_id.to_string(),
        seq,
        source,
    };
    let event = CodecTag::from_i16(codec)
        .and_then(|c| c.decode::<HistoryEvent>(bytes))
        .map_err(decode_err)?;
    Ok(RecordedEvent {
        instance_id: instance_id.to_string(),
        seq,
        recorded_at: Timestamp::from_micros(recorded_at),
        event,
        hash: to_hex(hash),
    })
}

/// Walks a chain of `(seq, codec, bytes, stored hash)` rows, in `seq` order, from `start` (the
/// first sequence number kept and the hash it links to: `(1, GENESIS)` unless retention removed
/// the events before it) against the head its instance records (`next_seq`, `last_hash`).
/// Returns how many rows were read up to the first problem, and the problem.
pub(crate) fn check_chain<'a>(
    rows: impl IntoIterator<Item = (i64, i16, &'a [u8], &'a [u8])>,
    start: (u64, [u8; 32]),
    head: (u64, [u8; 32]),
) -> (u64, Option<ChainBreak>) {
    let (next_seq, last_hash) = head;
    let (first, base) = start;
    let recorded = next_seq.saturating_sub(1);
    let mut prev = base;
    // The chain's hash at the recorded head's sequence number, once reached.
    let mut at_recorded = (recorded + 1 == first).then_some(base);
    let mut next = first;
    let mut read = 0;
    for (seq, codec, bytes, stored) in rows {
        read += 1;
        let seq = seq as u64;
        if seq > next {
            return (
                read,
                Some(ChainBreak::Missing {
                    from: next,
                    until: seq,
                }),
            );
        }
        let computed = chain_hash(&prev, seq, codec, bytes);
        if seq < next || stored != computed.as_slice() {
            return (read, Some(ChainBreak::Altered { seq }));
        }
        prev = computed;
        if seq == recorded {
            at_recorded = Some(computed);
        }
        next += 1;
    }
    let last = next - 1;
    let problem = if last < recorded {
        Some(ChainBreak::Truncated { last, recorded })
    } else if at_recorded != Some(last_hash) {
        Some(ChainBreak::HeadMismatch { last, recorded })
    } else if last > recorded {
        Some(ChainBreak::Beyond { last, recorded })
    } else {
        None
    };
    (read, problem)
}

/// A payload from a `(codec, bytes)` column pair.
pub(crate) fn payload(codec: i16, bytes: Vec<u8>) -> Result<Payload> {
    let tag = CodecTag::from_i16(codec).map_err(Error::Encode)?;
    Ok(Payload::from_bytes(tag, bytes))
}

/// The first 32 bytes of a stored hash, for the next link.
pub(crate) fn hash32(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(bytes);
    }
    out
}
