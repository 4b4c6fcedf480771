//! Event-sourced entities: keyed, single-writer objects whose state is derived from a stream of
//! events in the journal.
//!
//! An entity type implements [`Entity`] (its state, its events and how an event changes the
//! state) and one [`Command`] per thing it can be asked to do (validate against the current
//! state, decide the events). [`Entities`] runs commands:
//!
//! - **One writer per key.** Commands for one key run one at a time in a process; across
//!   processes every append carries the version it was decided on, and a writer that lost the
//!   race gets a conflict, catches up on the events it missed and decides again against the fresh
//!   state. A stream is never appended to from a stale state.
//! - **State = snapshot + tail.** Every [`Entity::SNAPSHOT_EVERY`] events the state is snapshotted
//!   with its schema ([`Entity::SCHEMA`]); a load reads the newest snapshot of its schema and the
//!   events after it. A snapshot from another schema, or one that no longer decodes, is ignored and
//!   the state rebuilt from the events.
//! - **Warm.** Loaded entities stay in memory (bounded, like warm orchestrations), so a hot entity
//!   does not re-read its stream per command; [`Entities::live`] reports each one's footprint.
//! - **Time travel.** [`EntityRef::state_at`] is the state at any past version or time;
//!   [`EntityRef::diff`] the events between two versions and the states at both ends.
//!
//! A stream's id is `TYPE/key`. Its events are [`HistoryEvent::EntityEvent`](quark_history::HistoryEvent::EntityEvent)s in the same journal
//! as the workflows: the global order, the hash chain, `quark verify` and signed checkpoints cover
//! them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use quark_workflow::entity::{Command, Decision, Entities, Entity};
//! use serde::{Deserialize, Serialize};
//!
//! struct Account;
//!
//! #[derive(Debug, Default, Clone, Serialize, Deserialize)]
//! struct Balance { cents: i64 }
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! enum AccountEvent { Deposited { cents: i64 }, Withdrawn { cents: i64 } }
//!
//! impl Entity for Account {
//!     const TYPE: &'static str = "Account";
//!     type State = Balance;
//!     type Event = AccountEvent;
//!     type Rejection = String;
//!     fn apply(state: &mut Balance, event: &AccountEvent) {
//!         match event {
//!             AccountEvent::Deposited { cents } => state.cents += cents,
//!             AccountEvent::Withdrawn { cents } => state.cents -= cents,
//!         }
//!     }
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Withdraw { cents: i64 }
//!
//! impl Command<Account> for Withdraw {
//!     const NAME: &'static str = "Withdraw";
//!     type Reply = i64;
//!     fn handle(&self, state: &Balance) -> Result<Decision<AccountEvent, i64>, String> {
//!         if self.cents > state.cents {
//!             return Err(format!("balance {} is less than {}", state.cents, self.cents));
//!         }
//!         Ok(Decision::emit([AccountEvent::Withdrawn { cents: self.cents }])
//!             .reply(state.cents - self.cents))
//!     }
//! }
//!
//! let store = quark_workflow::quark_history::open("sqlite::memory:", Default::default()).await?;
//! let entities = Entities::new(store);
//! let alice = entities.entity::<Account>("alice");
//! assert!(alice.call(&Withdraw { cents: 5 }).await.unwrap_err().rejection().is_some());
//! assert_eq!(alice.state().await?.cents, 0);
//! # Ok(())
//! # }
//! ```

mod activity;
mod atomic;
mod cache;
mod error;
mod handle;
mod load;
mod orchestration;
mod personal;
mod retention;
#[cfg(test)]
mod tests;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use activity::ActivityEntity;
pub use atomic::{AtomicError, Atomically, Refusal, Replies, Reply};
pub use cache::LiveEntity;
pub use error::EntityError;
pub use handle::{At, CallMeta, Entities, EntityDiff, EntityRef, MAX_CONFLICT_RETRIES};
pub use load::StoredEvent;
pub(crate) use load::decode;
pub use orchestration::{OrchestrationEntity, command_activity};
pub(crate) use orchestration::{command_entry, stream_of_call};
pub use personal::Personal;
pub(crate) use personal::open_all;
pub use retention::{Archived, Retention, RetentionReport};

/// An event-sourced entity type: its state, its events and how an event changes the state.
///
/// `apply` must be a pure function of the state and the event: it runs when a command's events
/// are appended, on every load, and on every replay and time-travel read, and must reach the same
/// state each time.
pub trait Entity: Sized + Send + Sync + 'static {
    /// The type's name, the first part of its streams' ids (`Account` → `Account/alice`). Keep it
    /// stable: it is how stored streams find their code.
    const TYPE: &'static str;

    /// The schema of [`State`](Self::State). Bump it when the state's shape changes: snapshots of
    /// another schema are then ignored and states rebuilt from the events.
    const SCHEMA: u32 = 1;

    /// A snapshot is taken each time the stream's version passes a multiple of this (0: never).
    const SNAPSHOT_EVERY: u64 = 100;

    /// A snapshot is also taken once the events since the last one add up to this many stored
    /// bytes (0: never), so that a stream of large events does not wait for its hundredth.
    const SNAPSHOT_BYTES: usize = 256 * 1024;

    /// The state, as derived from the events; `Default` is the state of an empty stream.
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The events.
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Why a command can be refused (the domain error a handler returns).
    type Rejection: std::fmt::Debug + Send + Sync + 'static;

    /// Changes `state` by `event`.
    fn apply(state: &mut Self::State, event: &Self::Event);

    /// The subject (the person) whose data key seals the [`Personal`] fields of this entity's
    /// events and state: by default the entity's key. Erasing the subject
    /// ([`Entities::erase_subject`]) makes those fields unreadable for good.
    fn subject(key: &str) -> String {
        key.to_string()
    }

    /// The event's type name, stored beside it for readers that select by type. The default is
    /// the variant name of an enum of events as serde names it (`Deposited` for
    /// `AccountEvent::Deposited { .. }`), else the entity's type name.
    fn event_type(event: &Self::Event) -> String {
        match serde_json::to_value(event) {
            Ok(serde_json::Value::String(variant)) => variant,
            Ok(serde_json::Value::Object(map)) if map.len() == 1 => {
                map.keys().next().cloned().unwrap_or_default()
            }
            _ => Self::TYPE.to_string(),
        }
    }
}

/// Something an entity of type `E` can be asked to do: validated against the current state, it
/// decides the events to append and the reply.
///
/// `handle` may run more than once for one call (after a conflict with another writer it runs
/// again against the fresh state), so it must not have effects of its own: what it does is the
/// events it returns.
pub trait Command<E: Entity>: Send + Sync {
    /// The command's name, for logs and for the durable calls that carry it.
    const NAME: &'static str;

    /// What the caller gets back when the events are appended.
    type Reply: Send + 'static;

    /// Decides, against `state`, the events to append and the reply; or refuses, and nothing is
    /// appended.
    fn handle(&self, state: &E::State) -> Result<Decision<E::Event, Self::Reply>, E::Rejection>;
}

/// What a command decided: the events to append (none is fine) and the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<Ev, R> {
    /// The events, in order.
    pub events: Vec<Ev>,
    /// The reply.
    pub reply: R,
}

impl<Ev> Decision<Ev, ()> {
    /// Appends `events`, replying `()`; [`reply`](Self::reply) sets another reply.
    pub fn emit(events: impl IntoIterator<Item = Ev>) -> Self {
        Decision {
            events: events.into_iter().collect(),
            reply: (),
        }
    }

    /// Appends nothing, replying `()`.
    pub fn nothing() -> Self {
        Decision {
            events: Vec::new(),
            reply: (),
        }
    }
}

impl<Ev, R> Decision<Ev, R> {
    /// The same events, with `reply`.
    pub fn reply<R2>(self, reply: R2) -> Decision<Ev, R2> {
        Decision {
            events: self.events,
            reply,
        }
    }
}

/// The id of the stream of entity `E`'s `key`.
pub fn stream_id<E: Entity>(key: &str) -> String {
    format!("{}/{key}", E::TYPE)
}
