//! Ordered delivery in the inbox: messages that carry a sequence number per key are applied in
//! sequence order, once each.
//!
//! Every key has a row with the number it applies next (`inbox_keys`). A message with that number
//! is applied at once; one further ahead is stored (`inbox_held`) until the numbers before it have
//! been applied; one behind is a duplicate. A gap is not waited on for ever: once a held message of
//! the key has waited longer than the gap timeout, the missing numbers before it are declared lost
//! (`inbox_lost`, a `tracing` warning and the caller's receipt) and the held messages after the gap
//! are applied. A message whose number was declared lost and that turns up later is reported as
//! late and not applied: applying it would break the order the key's later messages were applied
//! in.
//!
//! Each call is one write transaction on the engine's database that first locks the key's row
//! (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite has one writer), so concurrent consumers of one
//! key take turns, and the handler's writes commit together with the advance of the key, or not at
//! all.

use std::collections::VecDeque;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::inbox::{DEFAULT_INBOX_WINDOW, InboxStore};
use crate::store::StoreConfig;

/// How long a gap is waited for by default: 5 minutes.
pub const DEFAULT_GAP_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// At most this many keys are swept by one [`SequencedInbox::expire_gaps`].
const SWEEP_KEYS: u32 = 256;

/// A message handed to the handler of a [`SequencedInbox`]: the one just received, or a held one
/// whose turn came.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivered {
    /// The ordering key.
    pub key: String,
    /// Its sequence number within the key.
    pub seq: u64,
    /// Its message id.
    pub message_id: String,
    /// The body.
    pub payload: Vec<u8>,
    /// When it was received (for a held message: when it was first stored).
    pub received_at: Timestamp,
}

/// Sequence numbers of a key that were given up on after the gap timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LostGap {
    /// Its id (the order of declaration).
    pub id: i64,
    /// The ordering key.
    pub key: String,
    /// The first missing sequence number.
    pub first: u64,
    /// The last missing sequence number (inclusive).
    pub last: u64,
    /// When it was declared lost.
    pub declared_at: Timestamp,
    /// How many deliveries of its numbers arrived after it was declared (each reported as
    /// [`Arrival::Late`] and not applied).
    pub late_arrivals: u64,
}

/// Why a message was a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DuplicateOf {
    /// Its sequence number was already applied (or lies before the key's first number).
    Applied,
    /// A message with its sequence number is already held.
    Held,
    /// Its message id was seen within the deduplication window (with another sequence number).
    MessageId,
}

/// What became of the message passed to [`SequencedInbox::receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Arrival {
    /// It was applied (its number is in [`SeqReceipt::applied`]).
    Applied,
    /// It is stored until the key reaches it; the key waits for `waiting_for`.
    Held {
        /// The sequence number the key applies next.
        waiting_for: u64,
    },
    /// Nothing was done with it.
    Duplicate(DuplicateOf),
    /// Its number was declared lost before it arrived: it was not applied.
    Late {
        /// The lost gap it belongs to.
        gap: LostGap,
    },
}

/// What one [`SequencedInbox::receive`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct SeqReceipt {
    /// What became of the message received.
    pub arrival: Arrival,
    /// The sequence numbers applied, in order: this message's and the held ones after it.
    pub applied: Vec<u64>,
    /// Gaps declared lost by this call (their timeout had passed).
    pub lost: Vec<LostGap>,
}

/// What one [`SequencedInbox::expire_gaps`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct GapSweep {
    /// Gaps declared lost.
    pub lost: Vec<LostGap>,
    /// The held messages applied after them, as `(key, seq)` in the order applied.
    pub applied: Vec<(String, u64)>,
}

/// A store that keeps per-key order for a [`SequencedInbox`]: [`PostgresStore`] and
/// [`SqliteStore`]. Sealed (as [`InboxStore`] is); its methods are the shared SQL.
///
/// [`PostgresStore`]: crate::PostgresStore
/// [`SqliteStore`]: crate::SqliteStore
pub trait SequencedStore: InboxStore {
    /// The store's settings (its clock and payload limit).
    #[doc(hidden)]
    fn order_config(&self) -> &StoreConfig;

    /// Creates the key's row with `start` unless it exists, locks it, and returns its next number.
    #[doc(hidden)]
    fn lock_key<'a>(
        &'a self,
        conn: &'a mut <Self::Db as sqlx::Database>::Connection,
        key: &'a str,
        start: i64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64>>;

    /// Sets the key's next number.
    #[doc(hidden)]
    fn set_next<'a>(
        &'a self,
        conn: &'a mut <Self::Db as sqlx::Database>::Connection,
        key: &'a str,
        next: i64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<()>>;

    /// The key's held messages, by sequence number.
    #[doc(hidden)]
    fn held<'a>(
        &'a self,
        conn: &'a mut <Self::Db as sqlx::Database>::Connection,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Delivered>>>;

    /// Stores a message that is ahead of its key.
    #[doc(hidden)]
    fn hold<'a>(
        &'a self,
        conn: &'a mut <Self::Db as sqlx::Database>::Connection,
        message: &'a Delivered,
    ) -> BoxFuture<'a, Result<()>>;

    /// Deletes a held message once it is applied.
    #[doc(hidden)]
    fn unhold<'a>(
        &'a self,
        conn: &'a mut <Self::Db as sqlx::Database>::Connection,
        key: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<()>>;

    /// Records `first..=last` of the key as lost.
    #[doc(hidden)]
    fn declare_lost<'a>(
        &'a self,
        conn: &'a mut <Self::Db as sqlx::Database>::Connection,
        key: &'a str,
        first: i64,
        last: i64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<LostGap>>;

    /// The lost gap holding `seq`, with its late arrivals counted up by one.
    #[doc(hidden)]
    fn count_late<'a>(
        &'a self,
        conn: &'a mut <Self::Db as sqlx::Database>::Connection,
        key: &'a str,
        seq: i64,
    ) -> BoxFuture<'a, Result<Option<LostGap>>>;

    /// Lost gaps, newest first.
    #[doc(hidden)]
    fn list_lost(&self, limit: u32) -> BoxFuture<'_, Result<Vec<LostGap>>>;

    /// Keys with a message held since before `before`.
    #[doc(hidden)]
    fn expired_keys(&self, before: Timestamp, limit: u32) -> BoxFuture<'_, Result<Vec<String>>>;
}

/// One step of draining a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Declare `first..=last` lost.
    Lose(i64, i64),
    /// Apply the held message with this number.
    Apply(i64),
}

/// What to do with a key's held messages (`(seq, received_at)`, by seq) when it expects `next`: the
/// ones that follow on are applied; a gap is declared lost if a held message after it was received
/// before `cutoff` (it has waited longer than the timeout).
fn plan(mut next: i64, held: &[(i64, Timestamp)], cutoff: Timestamp) -> Vec<Step> {
    let expired_up_to = held
        .iter()
        .filter(|(_, at)| *at < cutoff)
        .map(|(seq, _)| *seq)
        .max();
    let mut steps = Vec::new();
    for &(seq, _) in held {
        if seq < next {
            continue;
        }
        if seq > next {
            if expired_up_to.is_some_and(|limit| seq <= limit) {
                steps.push(Step::Lose(next, seq - 1));
            } else {
                break;
            }
        }
        steps.push(Step::Apply(seq));
        next = seq + 1;
    }
    steps
}

fn to_i64(seq: u64, what: &str) -> Result<i64> {
    match i64::try_from(seq) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Error::Invalid(format!(
            "{what} {seq}: sequence numbers run from 1 to {}",
            i64::MAX
        ))),
    }
}

/// The consumer side with order: messages carrying a sequence number per key are applied in
/// sequence order, each once, and a gap holds the messages after it until it fills or the gap
/// timeout declares it lost.
///
/// Each call is one transaction: the message received and every held message that becomes
/// applicable after it are applied by the handler in that transaction, together with the advance
/// of the key. If the handler fails, the whole call rolls back (nothing is applied, held or
/// advanced) and its error is returned; the message can be received again. A held message whose
/// handler always fails therefore stops its key, as order demands; it is not skipped.
///
/// Sequence numbers of a key start at [`first_seq`](Self::first_seq) (1 unless set) when the key
/// is first seen; they are not taken from the first message to arrive, which may not be the first
/// one sent.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> quark_history::Result<()> {
/// use quark_history::sqlx::SqliteConnection;
/// use quark_history::{Arrival, Delivered, SequencedInbox, SqliteStore};
///
/// let store = SqliteStore::in_memory().await?;
/// let inbox = SequencedInbox::new();
/// let mut seen = Vec::new();
/// let mut apply = async |_conn: &mut SqliteConnection, m: &Delivered| {
///     // Write the message's effects on `conn`: they commit with the key's advance.
///     seen.push(m.seq);
///     Ok::<_, quark_history::Error>(())
/// };
/// // Number 2 arrives first and is held until 1 comes.
/// let early = inbox.receive(&store, "account-7", 2, "m-2", b"b", &mut apply).await?;
/// assert_eq!(early.arrival, Arrival::Held { waiting_for: 1 });
/// let filled = inbox.receive(&store, "account-7", 1, "m-1", b"a", &mut apply).await?;
/// assert_eq!(filled.applied, [1, 2]);
/// assert_eq!(seen, [1, 2]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SequencedInbox {
    window: Duration,
    gap_timeout: Duration,
    first_seq: u64,
}

impl Default for SequencedInbox {
    fn default() -> Self {
        SequencedInbox::new()
    }
}

impl SequencedInbox {
    /// A sequenced inbox: 7-day id window, 5-minute gap timeout, keys start at 1.
    pub fn new() -> Self {
        SequencedInbox {
            window: DEFAULT_INBOX_WINDOW,
            gap_timeout: DEFAULT_GAP_TIMEOUT,
            first_seq: 1,
        }
    }

    /// Sets the message id deduplication window (as [`Inbox::window`](crate::Inbox::window); the
    /// ids share the inbox's table).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets how long a held message waits for the numbers before it before they are declared lost.
    pub fn gap_timeout(mut self, timeout: Duration) -> Self {
        self.gap_timeout = timeout;
        self
    }

    /// Sets the number a key starts at when it is first seen (1 by default). Keys already seen
    /// keep their place.
    pub fn first_seq(mut self, seq: u64) -> Self {
        self.first_seq = seq;
        self
    }

    /// Receives message `seq` of `key`: applies it with `handler` if it is the key's next (then
    /// every held message that follows on), holds it durably if it is ahead, and reports it if it
    /// is a duplicate or late. Gaps of the key whose timeout passed are declared lost on the way.
    /// See the type's docs for the transaction.
    pub async fn receive<S, E>(
        &self,
        store: &S,
        key: &str,
        seq: u64,
        message_id: &str,
        payload: &[u8],
        mut handler: impl AsyncFnMut(
            &mut <S::Db as sqlx::Database>::Connection,
            &Delivered,
        ) -> Result<(), E>,
    ) -> Result<SeqReceipt, E>
    where
        S: SequencedStore,
        E: From<Error>,
    {
        if key.is_empty() || message_id.is_empty() {
            return Err(Error::Invalid("a key or message id may not be empty".into()).into());
        }
        let seq_n = to_i64(seq, "sequence number")?;
        let start = to_i64(self.first_seq, "first sequence number")?;
        crate::rows::check_size(store.order_config(), payload.len())?;
        let now = store.order_config().clock.now();

        let mut tx = store.begin_write().await?;
        let conn = &mut *tx;
        let mut next = store.lock_key(conn, key, start, now).await?;
        let before = next;
        let mut held: VecDeque<Delivered> = store.held(conn, key).await?.into();
        let mut applied = Vec::new();
        let arrival = if seq_n < next {
            match store.count_late(conn, key, seq_n).await? {
                Some(gap) => {
                    tracing::warn!(
                        key,
                        seq,
                        message_id,
                        first = gap.first,
                        last = gap.last,
                        "inbox: a message arrived after its sequence number was declared lost; not applied"
                    );
                    Arrival::Late { gap }
                }
                None => Arrival::Duplicate(DuplicateOf::Applied),
            }
        } else if held.iter().any(|h| h.seq == seq) {
            Arrival::Duplicate(DuplicateOf::Held)
        } else if !store.record_in(conn, message_id, self.window).await? {
            Arrival::Duplicate(DuplicateOf::MessageId)
        } else {
            let message = Delivered {
                key: key.to_string(),
                seq,
                message_id: message_id.to_string(),
                payload: payload.to_vec(),
                received_at: now,
            };
            if seq_n == next {
                handler(conn, &message).await?;
                applied.push(seq);
                next += 1;
                Arrival::Applied
            } else {
                store.hold(conn, &message).await?;
                let at = held.partition_point(|h| h.seq < seq);
                held.insert(at, message);
                Arrival::Held {
                    waiting_for: next as u64,
                }
            }
        };
        let mut lost = Vec::new();
        self.drain(
            store,
            conn,
            key,
            (&mut next, held),
            now,
            &mut handler,
            (&mut applied, &mut lost),
        )
        .await?;
        if next != before {
            store.set_next(conn, key, next, now).await?;
        }
        tx.commit().await.map_err(Error::from)?;
        let arrival = match arrival {
            Arrival::Held { .. } if applied.contains(&seq) => Arrival::Applied,
            Arrival::Held { .. } => Arrival::Held {
                waiting_for: next as u64,
            },
            other => other,
        };
        Ok(SeqReceipt {
            arrival,
            applied,
            lost,
        })
    }

    /// Declares lost the gaps whose timeout passed on keys that nothing more was received for, and
    /// applies the held messages after them with `handler`: for a maintenance loop to call now
    /// and then. Each key is its own transaction; at most 256 keys are swept per call (call again
    /// while it finds some). A handler error stops the sweep: keys swept before it stay committed,
    /// the failing key is rolled back.
    pub async fn expire_gaps<S, E>(
        &self,
        store: &S,
        mut handler: impl AsyncFnMut(
            &mut <S::Db as sqlx::Database>::Connection,
            &Delivered,
        ) -> Result<(), E>,
    ) -> Result<GapSweep, E>
    where
        S: SequencedStore,
        E: From<Error>,
    {
        let start = to_i64(self.first_seq, "first sequence number")?;
        let now = store.order_config().clock.now();
        let keys = store
            .expired_keys(now - self.gap_timeout, SWEEP_KEYS)
            .await?;
        let mut sweep = GapSweep::default();
        for key in keys {
            let mut tx = store.begin_write().await?;
            let conn = &mut *tx;
            let mut next = store.lock_key(conn, &key, start, now).await?;
            let before = next;
            let held: VecDeque<Delivered> = store.held(conn, &key).await?.into();
            let mut applied = Vec::new();
            self.drain(
                store,
                conn,
                &key,
                (&mut next, held),
                now,
                &mut handler,
                (&mut applied, &mut sweep.lost),
            )
            .await?;
            if next != before {
                store.set_next(conn, &key, next, now).await?;
            }
            tx.commit().await.map_err(Error::from)?;
            sweep
                .applied
                .extend(applied.into_iter().map(|seq| (key.clone(), seq)));
        }
        Ok(sweep)
    }

    /// Gaps declared lost, newest first.
    pub async fn lost_gaps<S: SequencedStore>(store: &S, limit: u32) -> Result<Vec<LostGap>> {
        store.list_lost(limit).await
    }

    /// Applies the held messages that follow on from `next`, declaring lost the gaps whose timeout
    /// passed.
    #[allow(clippy::too_many_arguments)]
    async fn drain<S, E>(
        &self,
        store: &S,
        conn: &mut <S::Db as sqlx::Database>::Connection,
        key: &str,
        (next, mut held): (&mut i64, VecDeque<Delivered>),
        now: Timestamp,
        handler: &mut impl AsyncFnMut(
            &mut <S::Db as sqlx::Database>::Connection,
            &Delivered,
        ) -> Result<(), E>,
        (applied, lost): (&mut Vec<u64>, &mut Vec<LostGap>),
    ) -> Result<(), E>
    where
        S: SequencedStore,
        E: From<Error>,
    {
        let index: Vec<(i64, Timestamp)> =
            held.iter().map(|h| (h.seq as i64, h.received_at)).collect();
        for step in plan(*next, &index, now - self.gap_timeout) {
            match step {
                Step::Lose(first, last) => {
                    let gap = store.declare_lost(conn, key, first, last, now).await?;
                    tracing::warn!(
                        key,
                        first,
                        last,
                        timeout_secs = self.gap_timeout.as_secs(),
                        "inbox: sequence numbers declared lost after the gap timeout; applying the messages after them"
                    );
                    lost.push(gap);
                }
                Step::Apply(seq) => {
                    while held.front().is_some_and(|h| (h.seq as i64) < seq) {
                        held.pop_front();
                    }
                    let Some(message) = held.pop_front() else {
                        break;
                    };
                    handler(conn, &message).await?;
                    store.unhold(conn, key, seq).await?;
                    applied.push(message.seq);
                    *next = seq + 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_micros(1_000_000);

    #[test]
    fn it_applies_what_follows_on_and_stops_at_a_gap_that_has_not_timed_out() {
        let held = [(1, T0), (2, T0), (4, T0)];
        assert_eq!(
            plan(1, &held, T0),
            [Step::Apply(1), Step::Apply(2)],
            "received at the cutoff is not past it"
        );
        assert_eq!(plan(3, &[(4, T0)], T0), []);
    }

    #[test]
    fn it_declares_every_gap_below_the_latest_expired_message_lost() {
        let late = Timestamp::from_micros(5_000_000);
        let cutoff = Timestamp::from_micros(2_000_000);
        // 9 waited too long: the gaps before 5 and before 9 go, and 10 follows on; 12 is young and
        // its gap is kept.
        let held = [(5, late), (9, T0), (10, late), (12, late)];
        assert_eq!(
            plan(3, &held, cutoff),
            [
                Step::Lose(3, 4),
                Step::Apply(5),
                Step::Lose(6, 8),
                Step::Apply(9),
                Step::Apply(10),
            ]
        );
    }

    #[test]
    fn it_refuses_sequence_numbers_outside_the_stored_range() {
        assert!(to_i64(0, "seq").is_err());
        assert!(to_i64(u64::MAX, "seq").is_err());
        assert_eq!(to_i64(7, "seq").unwrap(), 7);
    }
}
