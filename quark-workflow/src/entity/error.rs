//! What can go wrong with an entity command or read.

/// An entity command or read that did not succeed. Whatever the variant, nothing of a failed
/// command was appended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntityError<R: std::fmt::Debug> {
    /// The command's handler refused it against the current state: the domain's own error.
    #[error("the command was refused: {0:?}")]
    Rejected(R),
    /// Other writers appended to the stream each time this command was decided, as many times as
    /// it was retried. Nothing was appended; retry later, or spread the writers over more keys.
    #[error(
        "stream `{stream}` kept moving under the command: {attempts} attempts, all in conflict"
    )]
    Contended {
        /// The stream.
        stream: String,
        /// How many times the command was decided.
        attempts: u32,
    },
    /// A stored event could not be read as this code's event type: the stream holds events this
    /// build does not understand (an older or newer event schema, or a different entity type).
    #[error("stream `{stream}`, event {version}: {message}")]
    Decode {
        /// The stream.
        stream: String,
        /// The version (sequence number) of the event.
        version: u64,
        /// What did not decode.
        message: String,
    },
    /// The store refused or failed: a payload over the limit, a lost connection, a key held by a
    /// workflow instance. See [`quark_history::Error`].
    #[error(transparent)]
    Store(#[from] quark_history::Error),
}

impl<R: std::fmt::Debug> EntityError<R> {
    /// The domain error, if the handler refused the command.
    pub fn rejection(&self) -> Option<&R> {
        match self {
            EntityError::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

/// A store error in an entity's terms: an undecodable event names its stream and version.
pub(crate) fn from_store<R: std::fmt::Debug>(e: quark_history::Error) -> EntityError<R> {
    match e {
        quark_history::Error::Decode {
            instance_id,
            seq,
            source,
        } => EntityError::Decode {
            stream: instance_id,
            version: seq,
            message: source.to_string(),
        },
        other => EntityError::Store(other),
    }
}
