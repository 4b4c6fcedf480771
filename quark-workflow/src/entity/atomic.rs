//! Commands on several entities, decided together and appended in one commit: a transfer that
//! debits one account and credits another lands whole or not at all.

use std::any::Any;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use quark_history::{Commit, Error, Expected, HistoryEvent, Received};

use super::cache::Slot;
use super::error::EntityError;
use super::handle::{CallMeta, Entities, EntityRef, MAX_CONFLICT_RETRIES};
use super::load::Loaded;
use super::{Command, Entity, personal};

/// What a held slot keeps: an entity's loaded state, type-erased.
type Held = Option<Box<dyn Any + Send>>;

/// A command's events as the journal records them: its stream, the version they follow, them.
type Recorded = (String, u64, Vec<HistoryEvent>);

/// A command of an [`Atomically`] batch that its entity refused: which one, and the entity's own
/// rejection (downcast it with [`rejection`](Self::rejection)).
pub struct Refusal {
    /// The command's place in the batch, from 0.
    pub index: usize,
    /// The entity's stream.
    pub stream: String,
    rejection: Box<dyn Any + Send + Sync>,
    shown: String,
}

impl Refusal {
    /// The rejection, as the entity's [`Entity::Rejection`] type.
    pub fn rejection<R: 'static>(&self) -> Option<&R> {
        self.rejection.downcast_ref::<R>()
    }
}

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command {} on `{}`: {}",
            self.index, self.stream, self.shown
        )
    }
}

/// Why an [`Atomically`] batch did not commit; nothing of it was appended.
pub type AtomicError = EntityError<Refusal>;

/// The reply of one command of a batch: take it from the [`Replies`] once the batch committed.
#[derive(Debug)]
pub struct Reply<R> {
    index: usize,
    reply: PhantomData<fn() -> R>,
}

/// The replies of a committed batch.
#[derive(Debug, Default)]
pub struct Replies(Vec<Option<Box<dyn Any + Send>>>);

impl Replies {
    /// The reply of `reply`'s command.
    pub fn take<R: 'static>(&mut self, reply: Reply<R>) -> R {
        let boxed = self
            .0
            .get_mut(reply.index)
            .and_then(Option::take)
            .expect("each reply is taken once, from the batch that made it");
        *boxed
            .downcast::<R>()
            .expect("a reply has the type its command declares")
    }
}

/// Commands on several entities, decided together against their current states and appended in
/// one commit, each stream at the version its command was decided on: all of them or none.
/// Made by [`Entities::atomically`].
///
/// If another writer moved any of the streams, the batch catches up and decides every command
/// again, as a single command does. A command that appends nothing still has its stream's version
/// checked at the commit, so every decision of the batch was made on states that were all current
/// at once. One command per entity; the streams are locked in a fixed order, so batches over the
/// same entities in different orders do not deadlock.
pub struct Atomically {
    entities: Entities,
    steps: Vec<Box<dyn Step>>,
    meta: CallMeta,
}

impl std::fmt::Debug for Atomically {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Atomically")
            .field(
                "streams",
                &self.steps.iter().map(|s| s.stream()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Entities {
    /// A batch of commands on several entities, committed together
    /// ([`Atomically::commit`]).
    pub fn atomically(&self) -> Atomically {
        Atomically {
            entities: self.clone(),
            steps: Vec::new(),
            meta: CallMeta::default(),
        }
    }
}

impl Atomically {
    /// Adds `command` on `entity`; its reply is taken from the batch's [`Replies`].
    pub fn call<E: Entity, C>(&mut self, entity: &EntityRef<E>, command: C) -> Reply<C::Reply>
    where
        C: Command<E> + 'static,
        E::Rejection: Send + Sync,
    {
        self.steps.push(Box::new(Step1::<E, C> {
            entity: entity.clone(),
            command,
            decided: None,
        }));
        Reply {
            index: self.steps.len() - 1,
            reply: PhantomData,
        }
    }

    /// Stamps the batch's events with `meta`.
    pub fn meta(mut self, meta: CallMeta) -> Self {
        self.meta = meta;
        self
    }

    /// Decides every command and appends their events in one commit. A refusal of any command
    /// appends nothing and names it ([`EntityError::Rejected`] with a [`Refusal`]).
    pub async fn commit(self) -> Result<Replies, AtomicError> {
        match self.run(None).await? {
            Received::First(replies) => Ok(replies),
            Received::Duplicate => Err(EntityError::Store(Error::Invalid(
                "a batch without a message id was taken for a duplicate".into(),
            ))),
        }
    }

    /// [`commit`](Self::commit), once per `message_id` (the inbox: see
    /// [`EntityRef::call_once`]); a repeat returns [`Received::Duplicate`] and appends nothing.
    pub async fn commit_once(mut self, message_id: &str) -> Result<Received<Replies>, AtomicError> {
        if self.meta.causation.is_none() {
            self.meta.causation = Some(message_id.to_string());
        }
        self.run(Some(message_id)).await
    }

    async fn run(mut self, message_id: Option<&str>) -> Result<Received<Replies>, AtomicError> {
        let mut order: Vec<usize> = (0..self.steps.len()).collect();
        order.sort_by(|a, b| self.steps[*a].stream().cmp(self.steps[*b].stream()));
        if let Some(w) = order
            .windows(2)
            .find(|w| self.steps[w[0]].stream() == self.steps[w[1]].stream())
        {
            return Err(EntityError::Store(Error::Invalid(format!(
                "one command per entity in an atomic batch: `{}` has two",
                self.steps[w[0]].stream()
            ))));
        }
        // Locked in stream order: two batches over the same entities cannot wait on each other.
        let slots: Vec<Slot> = order
            .iter()
            .map(|i| self.entities.slot(self.steps[*i].stream()))
            .collect();
        let mut guards = Vec::with_capacity(slots.len());
        for slot in &slots {
            guards.push(slot.lock().await);
        }
        // The guard of step `i`.
        let mut at = vec![0; order.len()];
        for (position, i) in order.iter().enumerate() {
            at[*i] = position;
        }
        let mut fresh = guards.iter().all(|g| g.is_none());
        let outcome = async {
            let mut attempts = 0;
            loop {
                attempts += 1;
                let mut refused = None;
                let mut appends = false;
                for (i, step) in self.steps.iter_mut().enumerate() {
                    match step.decide(&mut guards[at[i]], i).await? {
                        Ok(events) => appends |= events,
                        Err(refusal) => {
                            refused = Some(refusal);
                            break;
                        }
                    }
                }
                // A refusal or a reply decided on a kept state is confirmed against the journal.
                if (refused.is_some() || !appends) && !fresh {
                    fresh = true;
                    for (i, step) in self.steps.iter_mut().enumerate() {
                        step.catch_up(&mut guards[at[i]]).await?;
                    }
                    continue;
                }
                if let Some(refusal) = refused {
                    return Err(EntityError::Rejected(refusal));
                }
                let mut commit = Commit::new();
                for step in &mut self.steps {
                    let (stream, from, events) = step.recorded(&self.meta).await?;
                    commit = commit.append(stream, Expected::Seq(from + 1), events);
                }
                if let Some(id) = message_id {
                    commit = commit.receive(id);
                }
                match self.entities.commit(commit).await {
                    Ok(_) => {
                        let mut replies = Vec::with_capacity(self.steps.len());
                        for (i, step) in self.steps.iter_mut().enumerate() {
                            replies.push(Some(step.committed(&mut guards[at[i]]).await));
                        }
                        return Ok(Received::First(Replies(replies)));
                    }
                    Err(Error::AlreadyReceived { .. }) => return Ok(Received::Duplicate),
                    Err(Error::Conflict { id, .. }) if attempts < MAX_CONFLICT_RETRIES => {
                        tracing::debug!(stream = %id, attempts, "atomic batch in conflict; deciding again");
                        fresh = true;
                        for (i, step) in self.steps.iter_mut().enumerate() {
                            step.catch_up(&mut guards[at[i]]).await?;
                        }
                    }
                    Err(Error::Conflict { id, .. }) => {
                        return Err(EntityError::Contended {
                            stream: id,
                            attempts,
                        });
                    }
                    Err(e) => return Err(super::error::from_store(e)),
                }
            }
        }
        .await;
        if let Err(e) = &outcome
            && !matches!(e, EntityError::Rejected(_))
        {
            // The journal may differ from the kept states: load them afresh next time.
            for g in &mut guards {
                **g = None;
            }
        }
        outcome
    }
}

/// One command of a batch, with its entity's type erased.
trait Step: Send {
    fn stream(&self) -> &str;
    /// Decides against the kept state (loaded if there is none): whether it appends, or the
    /// refusal.
    fn decide<'a>(
        &'a mut self,
        held: &'a mut Held,
        index: usize,
    ) -> BoxFuture<'a, Result<Result<bool, Refusal>, AtomicError>>;
    /// Applies what was appended since the kept state's version.
    fn catch_up<'a>(&'a mut self, held: &'a mut Held) -> BoxFuture<'a, Result<(), AtomicError>>;
    /// The decided events as the journal records them, with the version they follow.
    fn recorded<'a>(
        &'a mut self,
        meta: &'a CallMeta,
    ) -> BoxFuture<'a, Result<Recorded, AtomicError>>;
    /// After the commit: applies the decided events to the kept state; returns the reply.
    fn committed<'a>(&'a mut self, held: &'a mut Held) -> BoxFuture<'a, Box<dyn Any + Send>>;
}

struct Decided<E: Entity, R> {
    events: Vec<E::Event>,
    reply: R,
    from: u64,
    /// Whether an event is stored without a personal field (its subject is erased).
    stored_differs: bool,
    bytes: usize,
}

struct Step1<E: Entity, C: Command<E>> {
    entity: EntityRef<E>,
    command: C,
    decided: Option<Decided<E, C::Reply>>,
}

fn erase<E: Entity>(e: EntityError<E::Rejection>) -> AtomicError {
    match e {
        EntityError::Rejected(_) => {
            EntityError::Store(Error::Invalid("a refusal outside a decision".into()))
        }
        EntityError::Contended { stream, attempts } => EntityError::Contended { stream, attempts },
        EntityError::Decode {
            stream,
            version,
            message,
        } => EntityError::Decode {
            stream,
            version,
            message,
        },
        EntityError::Store(e) => EntityError::Store(e),
    }
}

fn loaded_mut<E: Entity>(held: &mut Held) -> Option<&mut Loaded<E>> {
    held.as_mut().and_then(|b| b.downcast_mut::<Loaded<E>>())
}

impl<E, C> Step for Step1<E, C>
where
    E: Entity,
    E::Rejection: Send + Sync,
    C: Command<E> + 'static,
{
    fn stream(&self) -> &str {
        self.entity.stream_id()
    }

    fn decide<'a>(
        &'a mut self,
        held: &'a mut Held,
        index: usize,
    ) -> BoxFuture<'a, Result<Result<bool, Refusal>, AtomicError>> {
        Box::pin(async move {
            let loaded = self.entity.loaded(held, true).await.map_err(erase::<E>)?;
            match self.command.handle(&loaded.state) {
                Ok(d) => {
                    let appends = !d.events.is_empty();
                    self.decided = Some(Decided {
                        events: d.events,
                        reply: d.reply,
                        from: loaded.version,
                        stored_differs: false,
                        bytes: 0,
                    });
                    Ok(Ok(appends))
                }
                Err(rejection) => {
                    self.decided = None;
                    Ok(Err(Refusal {
                        index,
                        stream: self.entity.stream_id().to_string(),
                        shown: format!("{rejection:?}"),
                        rejection: Box::new(rejection),
                    }))
                }
            }
        })
    }

    fn catch_up<'a>(&'a mut self, held: &'a mut Held) -> BoxFuture<'a, Result<(), AtomicError>> {
        Box::pin(async move {
            let loaded = self.entity.loaded(held, true).await.map_err(erase::<E>)?;
            self.entity.catch_up(loaded).await.map_err(erase::<E>)
        })
    }

    fn recorded<'a>(
        &'a mut self,
        meta: &'a CallMeta,
    ) -> BoxFuture<'a, Result<Recorded, AtomicError>> {
        Box::pin(async move {
            let Some(decided) = self.decided.as_mut() else {
                return Err(EntityError::Store(Error::Invalid(
                    "a batch's command was committed undecided".into(),
                )));
            };
            let mut recorded = Vec::with_capacity(decided.events.len());
            decided.stored_differs = false;
            decided.bytes = 0;
            for event in &decided.events {
                let (data, redacted) =
                    personal::encode_sealed::<E, _>(self.entity.log(), self.entity.key(), event)
                        .await
                        .map_err(EntityError::Store)?;
                decided.stored_differs |= redacted;
                decided.bytes += data.as_bytes().len();
                recorded.push(HistoryEvent::EntityEvent {
                    event_type: E::event_type(event),
                    data,
                    causation: meta.causation.clone(),
                    correlation: meta.correlation.clone(),
                });
            }
            Ok((self.entity.stream_id().to_string(), decided.from, recorded))
        })
    }

    fn committed<'a>(&'a mut self, held: &'a mut Held) -> BoxFuture<'a, Box<dyn Any + Send>> {
        Box::pin(async move {
            let decided = self
                .decided
                .take()
                .expect("a committed command was decided");
            let from = decided.from;
            if decided.stored_differs {
                // Read back what was stored, at the next load.
                *held = None;
            } else if let Some(loaded) = loaded_mut::<E>(held) {
                for event in &decided.events {
                    E::apply(&mut loaded.state, event);
                }
                loaded.version = from + decided.events.len() as u64;
                loaded.tail_bytes += decided.bytes;
                self.entity.after_append(loaded, from).await;
            }
            Box::new(decided.reply) as Box<dyn Any + Send>
        })
    }
}
