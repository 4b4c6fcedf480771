//! Projections on Redis: a read model in Redis, built from a [`RedisLog`] through a consumer group.
//!
//! A [`RedisProjection`] turns a page of the global order into Redis commands ([`Writes`]); a
//! [`RedisProjector`] runs it as the one consumer of the projection's group on the global stream.
//! The page's commands and its acknowledgement run in one script on the server, fenced by the
//! projector's lease (see [`RedisLog::ack_group`]): a crash before the script leaves the page
//! pending, and the next holder applies it again before anything newer; a projector whose lease
//! another took writes nothing. So every event is applied once, in order.
//!
//! Keep the read model's keys under the log's prefix ([`RedisLog::key`]): in a Redis Cluster a
//! script's keys must share a slot.

use std::time::Duration;

use quark_history::{GlobalEvent, GlobalPosition, LeaseToken, RedisLog};
use tokio::sync::Mutex;

use super::ProjectionError;
use super::batch::{ProjectedEvent, entity_events};
use super::projector::{CatchUp, open_page};
use crate::entity::Entity;

/// A read model in Redis, built from the global order of a [`RedisLog`].
pub trait RedisProjection: Send + Sync + 'static {
    /// The projection's name: its consumer group's. Keep it stable.
    const NAME: &'static str;

    /// The commands that apply `page` to the read model. They run after the page is decided and
    /// together with its acknowledgement; an error leaves the page pending, to be applied again.
    fn apply(&self, page: &RedisPage<'_>, writes: &mut Writes) -> Result<(), ProjectionError>;

    /// The commands that empty the read model before a rebuild from zero (`DEL` of its keys).
    fn reset(&self, writes: &mut Writes) {
        let _ = writes;
    }
}

/// A page of the global order, as a [`RedisProjection`] applies it.
#[derive(Debug)]
pub struct RedisPage<'a> {
    events: &'a [GlobalEvent],
    name: &'static str,
}

impl RedisPage<'_> {
    /// The page's events, in global order.
    pub fn events(&self) -> &[GlobalEvent] {
        self.events
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

/// Redis commands that change a read model: each one its name and arguments.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Writes {
    commands: Vec<Vec<Vec<u8>>>,
}

impl Writes {
    /// Adds a command: `writes.command(["HINCRBY", key, field, "5"])`. Make commands that cannot
    /// fail on well-formed input (`HSET`, `HINCRBY`, `SADD`, `ZADD`, `DEL`): Redis does not roll
    /// back the commands of a script that ran before one that failed.
    pub fn command<A: AsRef<[u8]>>(&mut self, args: impl IntoIterator<Item = A>) -> &mut Self {
        self.commands
            .push(args.into_iter().map(|a| a.as_ref().to_vec()).collect());
        self
    }

    /// How many commands there are.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// How far a Redis projection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisProjectionStatus {
    /// Events delivered and not yet applied (a crashed holder's page).
    pub pending: u64,
    /// Events not yet delivered (`None` when Redis cannot tell, after entries were deleted).
    pub behind_events: Option<u64>,
    /// The last event delivered.
    pub delivered: Option<GlobalPosition>,
}

/// Runs a [`RedisProjection`]: one holder at a time (a lease), every event once, in order.
#[derive(Debug)]
pub struct RedisProjector<P: RedisProjection> {
    log: RedisLog,
    projection: P,
    owner: String,
    page: u32,
    lease: Duration,
    token: Mutex<Option<LeaseToken>>,
}

impl<P: RedisProjection> RedisProjector<P> {
    /// A projector of `projection` over `log`, with a fresh owner id, pages of 1000 events and a
    /// 30 s lease.
    pub fn new(log: RedisLog, projection: P) -> Self {
        RedisProjector {
            log,
            projection,
            owner: format!("projector-{}", uuid::Uuid::now_v7().simple()),
            page: 1000,
            lease: Duration::from_secs(30),
            token: Mutex::new(None),
        }
    }

    /// Names the holder of the lease (a worker's id).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// The most events one step applies.
    pub fn page(mut self, events: u32) -> Self {
        self.page = events.max(1);
        self
    }

    /// How long the lease lasts without a step: after a crash, the next holder waits this long.
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease = ttl;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    async fn hold(&self) -> Result<Option<LeaseToken>, ProjectionError> {
        match self
            .log
            .take_lease(P::NAME, &self.owner, self.lease)
            .await?
        {
            Ok(token) => {
                let mut held = self.token.lock().await;
                if held.is_none() {
                    self.log.create_group(P::NAME).await?;
                }
                *held = Some(token.clone());
                Ok(Some(token))
            }
            Err(_) => Ok(None),
        }
    }

    /// Applies the next page (a crashed holder's pending page first), waiting up to `block` for
    /// one if there is none.
    pub async fn step(&self, block: Option<Duration>) -> Result<CatchUp, ProjectionError> {
        let Some(token) = self.hold().await? else {
            return Ok(CatchUp::Busy);
        };
        let mut page = self.log.read_group(P::NAME, self.page, block).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            return Ok(CatchUp::CaughtUp);
        };
        open_page(&self.log, &mut page).await?;
        let mut writes = Writes::default();
        self.projection.apply(
            &RedisPage {
                events: &page,
                name: P::NAME,
            },
            &mut writes,
        )?;
        self.log
            .ack_group(P::NAME, &token, self.lease, &page, &writes.commands)
            .await?;
        Ok(CatchUp::Applied {
            events: page.len() as u64,
            checkpoint: last,
        })
    }

    /// Steps until nothing is left to deliver, calling `progress` with the count and position
    /// after each page; returns how many events it applied. Fails with
    /// [`ProjectionError::Busy`] if another holder has the lease.
    pub async fn catch_up(
        &self,
        mut progress: impl FnMut(u64, GlobalPosition),
    ) -> Result<u64, ProjectionError> {
        let mut applied = 0;
        loop {
            match self.step(None).await? {
                CatchUp::Applied { events, checkpoint } => {
                    applied += events;
                    progress(applied, checkpoint);
                }
                CatchUp::CaughtUp => return Ok(applied),
                CatchUp::Busy => return Err(self.busy().await),
            }
        }
    }

    async fn busy(&self) -> ProjectionError {
        ProjectionError::Busy {
            name: P::NAME.to_string(),
            version: 1,
            held: "leased by another projector".to_string(),
        }
    }

    /// Empties the read model ([`RedisProjection::reset`]) and builds it again from the start of
    /// the global stream. Fails with [`ProjectionError::Busy`] if another holder has the lease.
    pub async fn rebuild(
        &self,
        progress: impl FnMut(u64, GlobalPosition),
    ) -> Result<u64, ProjectionError> {
        let Some(token) = self.hold().await? else {
            return Err(self.busy().await);
        };
        let mut writes = Writes::default();
        self.projection.reset(&mut writes);
        self.log
            .ack_group(P::NAME, &token, self.lease, &[], &writes.commands)
            .await?;
        self.log.reset_group(P::NAME).await?;
        self.catch_up(progress).await
    }

    /// Waits until the read model holds `position` (an entity command's events), or `timeout`.
    pub async fn wait_for(
        &self,
        position: GlobalPosition,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let started = tokio::time::Instant::now();
        loop {
            let status = self.status().await?;
            if status.pending == 0 && status.delivered.is_some_and(|d| d >= position) {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(ProjectionError::Timeout {
                    name: P::NAME.to_string(),
                    target: position,
                    at: status.delivered.unwrap_or_default(),
                    waited: started.elapsed(),
                });
            }
            // Polls the group's state; the timeout bounds the wait.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How far the projection is.
    pub async fn status(&self) -> Result<RedisProjectionStatus, ProjectionError> {
        let group = self.log.group(P::NAME).await?;
        Ok(match group {
            Some(g) => RedisProjectionStatus {
                pending: g.pending,
                behind_events: g.lag,
                delivered: g.last_delivered.split_once('-').and_then(|(ms, seq)| {
                    Some(GlobalPosition {
                        tx: ms.parse().ok()?,
                        position: seq.parse().ok()?,
                    })
                }),
            },
            None => RedisProjectionStatus {
                pending: 0,
                behind_events: None,
                delivered: None,
            },
        })
    }

    /// Gives the lease up, so that another projector can take over at once.
    pub async fn release(&self) -> Result<(), ProjectionError> {
        if let Some(token) = self.token.lock().await.take() {
            self.log.release_lease(P::NAME, &token).await?;
        }
        Ok(())
    }
}
