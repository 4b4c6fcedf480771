//! Entity commands from an orchestration: durable calls, recorded in its history.
//!
//! `ctx.entity::<Account>("alice").call(&Deposit(5))` schedules the built-in activity of that
//! command (registered with [`Registry::entity_command`](crate::Registry::entity_command)), which
//! decides the command against the entity's state and appends its events with the activity's
//! completion event, in one commit: the events are appended once, however often the activity is
//! retried, and a replay of the orchestration reads the recorded reply instead of calling again.

use std::marker::PhantomData;
use std::sync::Arc;

use quark_history::Payload;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::EntityError;
use super::{Command, Entity};
use crate::context::OrchestrationContext;
use crate::error::{ActivityError, OrchestrationError};
use crate::future::ActivityCall;
use crate::registry::{ActivityEntry, ErasedActivity};
use crate::{ActivityContext, ActivityOptions};

/// What an orchestration's entity call carries to its activity.
#[derive(Debug, Serialize, Deserialize)]
struct EntityCallInput {
    key: String,
    command: serde_json::Value,
}

/// The name of the built-in activity that runs command `C` on entity `E`: `entity:TYPE.NAME`.
pub fn command_activity<E: Entity, C: Command<E>>() -> String {
    format!("entity:{}.{}", E::TYPE, C::NAME)
}

/// The stream an activity call works on, if it is an entity's built-in command activity
/// (`activity` named by [`command_activity`], `input` as [`OrchestrationEntity::call`] encodes
/// it): its command runs best where that entity is live.
pub(crate) fn stream_of_call(activity: &str, input: &Payload) -> Option<String> {
    let (entity_type, _command) = activity.strip_prefix("entity:")?.rsplit_once('.')?;
    let call = input.decode::<EntityCallInput>().ok()?;
    Some(format!("{entity_type}/{}", call.key))
}

impl OrchestrationContext {
    /// Entity `E`'s instance `key`, for durable calls (see [`OrchestrationEntity::call`]).
    pub fn entity<E: Entity>(&self, key: impl Into<String>) -> OrchestrationEntity<'_, E> {
        OrchestrationEntity {
            ctx: self,
            key: key.into(),
            entity: PhantomData,
        }
    }
}

/// One entity, seen from an orchestration. See [`OrchestrationContext::entity`].
pub struct OrchestrationEntity<'a, E: Entity> {
    ctx: &'a OrchestrationContext,
    key: String,
    entity: PhantomData<fn() -> E>,
}

impl<E: Entity> std::fmt::Debug for OrchestrationEntity<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestrationEntity")
            .field("key", &self.key)
            .finish()
    }
}

impl<E: Entity> OrchestrationEntity<'_, E> {
    /// Runs `command` on the entity, durably: resolves to the reply, or to the entity's refusal
    /// (`Ok(Err(..))`: a domain outcome, recorded like a reply); the outer error is the call's
    /// own failure (no worker registered the command, its retries ran out). The events are
    /// caused by this call (`instance/command`) and correlated with this instance.
    #[track_caller]
    pub fn call<C>(&self, command: &C) -> ActivityCall<Result<C::Reply, E::Rejection>>
    where
        C: Command<E> + Serialize,
        C::Reply: DeserializeOwned,
        E::Rejection: DeserializeOwned,
    {
        let input = serde_json::to_value(command)
            .map_err(|e| e.to_string())
            .and_then(|command| {
                Payload::json(&EntityCallInput {
                    key: self.key.clone(),
                    command,
                })
                .map_err(|e| e.to_string())
            });
        match input {
            Ok(input) => self.ctx.call_by_name(
                &command_activity::<E, C>(),
                input,
                ActivityOptions::default(),
            ),
            Err(e) => ActivityCall::failed(OrchestrationError::Payload(format!(
                "entity command `{}`: {e}",
                C::NAME
            ))),
        }
    }
}

/// The built-in activity of command `C` on entity `E`: decides it in the attempt's context, so
/// its events go with the result. A refusal is a result (`Err` in the output); a stored event
/// that does not decode fails for good; anything else is retried.
pub(crate) fn command_entry<E, C>() -> ActivityEntry
where
    E: Entity,
    C: Command<E> + DeserializeOwned + 'static,
    C::Reply: Serialize,
    E::Rejection: Serialize,
{
    let run: ErasedActivity = Arc::new(|ctx: ActivityContext, input: Payload| {
        Box::pin(async move {
            let terminal = |what: &str, e: &dyn std::fmt::Display| {
                ActivityError::message(format!("entity command `{}`: {what}: {e}", C::NAME))
                    .terminal()
            };
            let input = input
                .decode::<EntityCallInput>()
                .map_err(|e| terminal("input", &e))?;
            let command: C =
                serde_json::from_value(input.command).map_err(|e| terminal("command", &e))?;
            let outcome = match ctx.entity::<E>(&input.key).call(&command).await {
                Ok(reply) => Ok(reply),
                Err(EntityError::Rejected(r)) => Err(r),
                Err(e @ EntityError::Decode { .. }) => return Err(terminal("stream", &e)),
                Err(e) => return Err(ActivityError::message(e.to_string())),
            };
            Payload::json(&outcome).map_err(|e| terminal("reply", &e))
        })
    });
    ActivityEntry {
        options: ActivityOptions::default(),
        run,
    }
}
