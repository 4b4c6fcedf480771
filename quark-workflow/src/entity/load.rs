//! Reading an entity's state from the journal: the newest usable snapshot, then the events after
//! it; and the events of a stream, decoded as the entity's own.

use quark_history::{
    EventLog, HistoryEvent, HistoryRange, Payload, RecordedEvent, Snapshot, Timestamp,
};

use super::Entity;
use super::error::{EntityError, from_store};

/// An entity's state at a version of its stream.
pub(crate) struct Loaded<E: Entity> {
    pub(crate) state: E::State,
    pub(crate) version: u64,
    /// Whether the stream's row is known to exist (a write must open it first).
    pub(crate) opened: bool,
    /// The stored size of the events applied since the snapshot the state started from (or
    /// since the last one taken): what [`Entity::SNAPSHOT_BYTES`] bounds.
    pub(crate) tail_bytes: usize,
}

impl<E: Entity> Clone for Loaded<E> {
    fn clone(&self) -> Self {
        Loaded {
            state: self.state.clone(),
            version: self.version,
            opened: self.opened,
            tail_bytes: self.tail_bytes,
        }
    }
}

/// One of a stream's events, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent<Ev> {
    /// Its version: the position in the stream, from 1.
    pub version: u64,
    /// When it was appended.
    pub recorded_at: Timestamp,
    /// Its type name.
    pub event_type: String,
    /// The event.
    pub event: Ev,
    /// What caused it.
    pub causation: Option<String>,
    /// The conversation it belongs to.
    pub correlation: Option<String>,
    /// Its stored size in bytes (as encoded, personal fields sealed).
    pub size: usize,
}

/// Decodes a recorded event of stream `stream` as one of `E`'s.
pub(crate) fn decode<E: Entity, R: std::fmt::Debug>(
    recorded: RecordedEvent,
) -> Result<StoredEvent<E::Event>, EntityError<R>> {
    let bad = |message: String| EntityError::Decode {
        stream: recorded.instance_id.clone(),
        version: recorded.seq,
        message,
    };
    let HistoryEvent::EntityEvent {
        event_type,
        data,
        causation,
        correlation,
    } = recorded.event
    else {
        return Err(bad(format!(
            "a {} event, not an entity event",
            recorded.event.kind()
        )));
    };
    let size = data.as_bytes().len();
    let event = data.decode::<E::Event>().map_err(|e| {
        bad(format!(
            "a `{event_type}` event does not decode as {}'s events: {e}",
            E::TYPE
        ))
    })?;
    Ok(StoredEvent {
        version: recorded.seq,
        recorded_at: recorded.recorded_at,
        event_type,
        event,
        causation,
        correlation,
        size,
    })
}

/// The events of `stream` with versions in `(after, until]` (`until: None`: to the end).
pub(crate) async fn events<E: Entity, R: std::fmt::Debug>(
    store: &dyn EventLog,
    stream: &str,
    after: u64,
    until: Option<u64>,
) -> Result<Vec<StoredEvent<E::Event>>, EntityError<R>> {
    let range = HistoryRange::Seq {
        from: after + 1,
        until: until.map_or(u64::MAX, |u| u.saturating_add(1)),
    };
    let mut recorded = store.read_stream(stream, range).await.map_err(from_store)?;
    open_events(store, &mut recorded)
        .await
        .map_err(from_store)?;
    recorded.into_iter().map(decode::<E, R>).collect()
}

/// The state of `stream` at version `until` (`None`: now): the newest snapshot of `E`'s schema at
/// or before it, then the events after the snapshot. A snapshot that does not decode is skipped
/// with a warning and the state rebuilt from the events.
pub(crate) async fn load<E: Entity, R: std::fmt::Debug>(
    store: &dyn EventLog,
    stream: &str,
    until: Option<u64>,
) -> Result<Loaded<E>, EntityError<R>> {
    let snapshot = store
        .load_snapshot(stream, E::SCHEMA, until.unwrap_or(u64::MAX))
        .await
        .map_err(from_store)?;
    let snapshot = match snapshot {
        Some(mut s) => {
            super::personal::open_all(store, &mut [&mut s.state])
                .await
                .map_err(from_store)?;
            Some(s)
        }
        None => None,
    };
    let (mut state, mut version) = match snapshot.map(decode_snapshot::<E>) {
        Some(Ok(start)) => start,
        Some(Err(message)) => {
            tracing::warn!(
                stream,
                schema = E::SCHEMA,
                "{message}; rebuilding the state from the stream's events"
            );
            (E::State::default(), 0)
        }
        None => (E::State::default(), 0),
    };
    let mut tail_bytes = 0;
    let tail = events::<E, R>(store, stream, version, until).await?;
    if let Some(first) = tail.first()
        && first.version != version + 1
    {
        // Retention removed events that no snapshot of this schema covers.
        return Err(EntityError::Store(quark_history::Error::Invalid(format!(
            "stream `{stream}`: events {} to {} were removed by retention, and no snapshot of \
             schema {} at or before version {} is left to start from",
            version + 1,
            first.version - 1,
            E::SCHEMA,
            until.map_or_else(|| "now".to_string(), |u| u.to_string()),
        ))));
    }
    for e in tail {
        E::apply(&mut state, &e.event);
        version = e.version;
        tail_bytes += e.size;
    }
    Ok(Loaded {
        state,
        version,
        opened: false,
        tail_bytes,
    })
}

/// Opens the sealed personal fields of the entity events among `recorded`, in place.
pub(crate) async fn open_events(
    store: &dyn EventLog,
    recorded: &mut [RecordedEvent],
) -> Result<(), quark_history::Error> {
    let mut payloads: Vec<&mut Payload> = recorded
        .iter_mut()
        .filter_map(|r| match &mut r.event {
            HistoryEvent::EntityEvent { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    super::personal::open_all(store, &mut payloads).await
}

fn decode_snapshot<E: Entity>(snapshot: Snapshot) -> Result<(E::State, u64), String> {
    snapshot
        .state
        .decode::<E::State>()
        .map(|state| (state, snapshot.version))
        .map_err(|e| {
            format!(
                "the snapshot of `{}` at version {} does not decode: {e}",
                snapshot.stream_id, snapshot.version
            )
        })
}

/// The state encoded as the store encodes payloads: what a snapshot stores, and the measure of a
/// live entity's footprint.
pub(crate) fn encode_state<E: Entity>(
    store: &dyn EventLog,
    state: &E::State,
) -> Result<Payload, quark_history::Error> {
    Payload::encode(store.log_config().codec, state).map_err(quark_history::Error::Encode)
}
