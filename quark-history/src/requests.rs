//! Answers to requests into running orchestration instances: queries and updates.
//!
//! A request travels as a task of kind [`Request`](crate::TaskKind::Request) on its instance's
//! queue; the worker that runs it answers here. A query's answer is its value; an update's is
//! stored only when it is rejected (an accepted update is in the history: `UpdateAccepted`, then
//! `UpdateCompleted` with its result). The first answer to a request stands, so that a request
//! run twice (its worker died after answering) cannot be answered two ways; an update's answer
//! stays until it expires (a worker that runs the request again finds it), a query's is removed
//! by its caller.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::codec::Payload;
use crate::error::Result;

/// How long an answer nobody collected is kept: a caller that gave up does not leave it forever.
pub const ANSWERS_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// A query's value.
    Value(Payload),
    /// Refused, and why: a query or an update that has no handler, an update its validator
    /// rejected, a query whose handler failed, an instance that cannot take it. Nothing changed.
    Rejected(String),
}

/// Where requests' answers wait for their callers. A capability of every
/// [`Store`](crate::Store); sealed.
pub trait RequestStore: Send + Sync {
    /// Stores `answer` to request `id` of `instance_id` unless it has one, and returns the one
    /// that stands (one statement: the two cannot be told apart by a caller that reads between
    /// them). Answers older than [`ANSWERS_KEPT_FOR`] are dropped on the way.
    fn answer_request<'a>(
        &'a self,
        instance_id: &'a str,
        id: &'a str,
        answer: Answer,
    ) -> BoxFuture<'a, Result<Answer>>;

    /// The answer to request `id` of `instance_id`, if it has one.
    fn request_answer<'a>(
        &'a self,
        instance_id: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Answer>>>;

    /// Drops the answer to request `id` of `instance_id` (its caller has it); `true` if there
    /// was one.
    fn forget_answer<'a>(
        &'a self,
        instance_id: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool>>;
}

/// An answer as stored.
pub(crate) fn encode(answer: &Answer) -> Vec<u8> {
    // An enum of a string or a payload always serializes.
    postcard::to_allocvec(answer).unwrap_or_default()
}

/// A stored answer.
pub(crate) fn decode(bytes: &[u8]) -> Result<Answer> {
    postcard::from_bytes(bytes)
        .map_err(|e| crate::Error::Invalid(format!("a stored answer cannot be read: {e}")))
}

/// The time before which uncollected answers are dropped.
pub(crate) fn stale_before(now: Timestamp) -> Timestamp {
    Timestamp::from_micros(now.as_micros() - ANSWERS_KEPT_FOR.as_micros() as i64)
}
