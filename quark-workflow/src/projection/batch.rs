//! A page of the global order, as a projection applies it.

use quark_history::{GlobalEvent, GlobalPosition, HistoryEvent, StoreTx};

use super::ProjectionError;
use crate::entity::{Entity, StoredEvent};

/// A page of events for a [`Projection`](super::Projection) to apply, with the transaction to
/// write the read model in.
pub struct Batch<'a> {
    pub(super) tx: &'a mut StoreTx,
    pub(super) events: &'a [GlobalEvent],
    pub(super) version: u32,
    pub(super) name: &'static str,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("projection", &self.name)
            .field("version", &self.version)
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Batch<'_> {
    /// The read model's transaction: the checkpoint moves in it too.
    pub fn tx(&mut self) -> &mut StoreTx {
        self.tx
    }

    /// The page's events, in global order: every event, of workflows and entities alike.
    pub fn events(&self) -> &[GlobalEvent] {
        self.events
    }

    /// The version of the projection being built (name its tables after it).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The page's events of entity type `E`, decoded, with each one's key and position, in global
    /// order. An event of `E`'s streams that does not decode fails the page, naming its stream
    /// and version.
    pub fn entity_events<E: Entity>(
        &self,
    ) -> Result<Vec<ProjectedEvent<E::Event>>, ProjectionError> {
        entity_events::<E>(self.name, self.events)
    }
}

/// The events of entity type `E` among `events`, decoded, for projection `name`.
pub(super) fn entity_events<E: Entity>(
    name: &str,
    events: &[GlobalEvent],
) -> Result<Vec<ProjectedEvent<E::Event>>, ProjectionError> {
    {
        let prefix = format!("{}/", E::TYPE);
        let mut out = Vec::new();
        for e in events {
            let Some(key) = e.event.instance_id.strip_prefix(&prefix) else {
                continue;
            };
            if !matches!(e.event.event, HistoryEvent::EntityEvent { .. }) {
                continue;
            }
            let decoded = crate::entity::decode::<E, String>(e.event.clone())
                .map_err(|err| ProjectionError::apply(name, err))?;
            out.push(ProjectedEvent {
                key: key.to_string(),
                position: e.position,
                event: decoded,
            });
        }
        Ok(out)
    }
}

/// An entity event as a projection sees it. See [`Batch::entity_events`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectedEvent<Ev> {
    /// The entity's key (the stream id without its type).
    pub key: String,
    /// Its position in the global order.
    pub position: GlobalPosition,
    /// The event, with its version, time and causation.
    pub event: StoredEvent<Ev>,
}
