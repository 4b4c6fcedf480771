//! Entity commands inside an activity: decided now, appended with the activity's result.
//!
//! An activity is at least once, so an entity append of its own would happen once per attempt.
//! Instead the events go into the commit that records the activity's result (in its transaction,
//! for a transactional activity), at the version they were decided on: both land or neither does,
//! and a completed activity never runs again. If the stream moved on meanwhile, that commit
//! conflicts and the attempt runs again against the fresh state. This is also how an
//! orchestration's [`entity`](crate::OrchestrationContext::entity) calls run: as a built-in
//! activity per registered command.

use std::marker::PhantomData;

use quark_history::{Append, Expected, HistoryEvent};

use super::error::{EntityError, from_store};
use super::handle::CallMeta;
use super::load::{decode, load, open_events};
use super::{Command, Entity, personal, stream_id};
use crate::activity::ActivityContext;

impl ActivityContext {
    /// Entity `E`'s instance `key`, for commands whose events are appended with this activity's
    /// result, exactly once (see [`ActivityEntity::call`]).
    pub fn entity<E: Entity>(&self, key: &str) -> ActivityEntity<'_, E> {
        ActivityEntity {
            ctx: self,
            key: key.to_string(),
            stream: stream_id::<E>(key),
            entity: PhantomData,
        }
    }
}

/// One entity, seen from an activity attempt. See [`ActivityContext::entity`].
pub struct ActivityEntity<'a, E: Entity> {
    ctx: &'a ActivityContext,
    key: String,
    stream: String,
    entity: PhantomData<fn() -> E>,
}

impl<E: Entity> std::fmt::Debug for ActivityEntity<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityEntity")
            .field("stream", &self.stream)
            .finish()
    }
}

impl<E: Entity> ActivityEntity<'_, E> {
    /// Decides `command` against the entity's current state (with the events this attempt
    /// already decided for it) and returns its reply; its events are appended with the
    /// activity's result. Caused by this activity's step (`instance/command`).
    pub async fn call<C: Command<E>>(
        &self,
        command: &C,
    ) -> Result<C::Reply, EntityError<E::Rejection>> {
        let info = self.ctx.info();
        let meta = CallMeta::caused_by(format!("{}/{}", info.instance_id, info.command))
            .correlated(info.instance_id.clone());
        self.call_with(command, meta).await
    }

    /// [`call`](Self::call), stamping the events with `meta`.
    pub async fn call_with<C: Command<E>>(
        &self,
        command: &C,
        meta: CallMeta,
    ) -> Result<C::Reply, EntityError<E::Rejection>> {
        let effects = self.ctx.effects();
        let Some(store) = effects.store().cloned() else {
            return Err(EntityError::Store(quark_history::Error::Invalid(
                "this activity context has no store: entity commands run on a worker or TestEnv"
                    .into(),
            )));
        };
        if let Some(shard) = effects
            .shard_elsewhere(&self.stream)
            .await
            .map_err(EntityError::Store)?
        {
            // Its events would land in this shard's database, where the entity does not live.
            return Err(EntityError::Store(quark_history::Error::Invalid(format!(
                "entity `{}` lives on shard `{shard}`, not on this activity's: an activity \
                 writes entities of its own shard only; call it from the orchestration \
                 (`ctx.entity`), whose commands run on the entity's shard",
                self.stream
            ))));
        }
        // The process's live entity (one read of what was appended since it was used), else a
        // load from the newest snapshot.
        let mut loaded = match effects.entities() {
            Some(entities) => {
                entities
                    .entity::<E>(self.key.clone())
                    .current_loaded()
                    .await?
            }
            None => load::<E, E::Rejection>(&*store, &self.stream, None).await?,
        };
        // What this attempt decided before, on top of the stored state.
        let staged: Option<(u64, Vec<HistoryEvent>)> = effects
            .appends()
            .iter()
            .find(|a| a.instance_id == self.stream)
            .map(|a| match a.expected {
                Expected::Seq(next) => (next - 1, a.events.clone()),
                Expected::Any => (loaded.version, a.events.clone()),
            });
        let base = match &staged {
            Some((base, events)) => {
                if *base != loaded.version {
                    // The stream moved on since this attempt's first decision on it: that
                    // decision will conflict at the commit, and the attempt runs again.
                    return Err(from_store(quark_history::Error::Conflict {
                        id: self.stream.clone(),
                        expected: base + 1,
                        actual: loaded.version + 1,
                    }));
                }
                let mut recorded: Vec<quark_history::RecordedEvent> = events
                    .iter()
                    .enumerate()
                    .map(|(i, event)| quark_history::RecordedEvent {
                        instance_id: self.stream.clone(),
                        seq: base + 1 + i as u64,
                        recorded_at: store.config().clock.now(),
                        event: event.clone(),
                        hash: String::new(),
                    })
                    .collect();
                open_events(&*store, &mut recorded)
                    .await
                    .map_err(from_store)?;
                for r in recorded {
                    E::apply(&mut loaded.state, &decode::<E, E::Rejection>(r)?.event);
                }
                *base
            }
            None => loaded.version,
        };
        let decision = command
            .handle(&loaded.state)
            .map_err(EntityError::Rejected)?;
        if decision.events.is_empty() {
            return Ok(decision.reply);
        }
        let mut recorded = Vec::with_capacity(decision.events.len());
        for event in &decision.events {
            recorded.push(HistoryEvent::EntityEvent {
                event_type: E::event_type(event),
                data: personal::encode::<E, _>(&*store, &self.key, event).await?,
                causation: meta.causation.clone(),
                correlation: meta.correlation.clone(),
            });
        }
        if staged.is_none() {
            // The stream's row must exist for the append; opening it is idempotent and
            // appends nothing.
            store
                .open_stream(&self.stream, E::TYPE)
                .await
                .map_err(from_store)?;
        }
        let mut appends = effects.appends();
        match appends.iter_mut().find(|a| a.instance_id == self.stream) {
            Some(append) => append.events.extend(recorded),
            None => appends.push(Append {
                instance_id: self.stream.clone(),
                expected: Expected::Seq(base + 1),
                events: recorded,
                at: None,
            }),
        }
        Ok(decision.reply)
    }
}
