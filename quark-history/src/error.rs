//! The store's errors.

use crate::InstanceStatus;
use crate::codec::CodecError;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An instance with this id exists and the id reuse policy forbids another.
    /// Pick another id, or start with `IdReusePolicy::ReturnExisting`.
    #[error("instance `{id}` already exists")]
    DuplicateInstance {
        /// The id.
        id: String,
    },
    /// No instance has this id. Check the id, or the database the client points at.
    #[error("no instance `{id}`")]
    InstanceNotFound {
        /// The id.
        id: String,
    },
    /// The instance has ended; nothing more can be appended to it.
    #[error("instance `{id}` is {status}; it accepts no more events")]
    InstanceClosed {
        /// The id.
        id: String,
        /// Its final status.
        status: InstanceStatus,
    },
    /// Someone else appended to the history first. Re-read the history and decide again.
    #[error(
        "append conflict on `{id}`: expected next sequence number {expected}, the history is at {actual}"
    )]
    Conflict {
        /// The instance.
        id: String,
        /// The next sequence number the caller expected.
        expected: u64,
        /// The actual next sequence number.
        actual: u64,
    },
    /// A projection's checkpoint moved under its writer: its lease was taken by another worker
    /// (it expired), or the checkpoint is no longer where the writer read from. Roll the read
    /// model's transaction back; the lease holder applies those events.
    #[error(
        "projection `{name}` v{version} moved under this writer: its lease or checkpoint changed"
    )]
    ProjectionMoved {
        /// The projection.
        name: String,
        /// Its version.
        version: u32,
    },
    /// The lease on a task is no longer held: it expired and the task was claimed again, or it was
    /// completed. The work done under it must be thrown away; the new holder redoes it.
    #[error("lease lost on task {task_id} (attempt {attempt})")]
    LeaseLost {
        /// The task.
        task_id: i64,
        /// The attempt (fencing token) of the lost lease.
        attempt: u32,
    },
    /// A job with the same unique key exists and its policy is `Reject`.
    #[error("a job with unique key `{key}` already exists (job {existing})")]
    Duplicate {
        /// The key.
        key: String,
        /// The job holding it.
        existing: i64,
    },
    /// The task was asked to stop (a cancelled job, or a running activity of an instance that
    /// ended). Its lease is still held (and was extended): settle it as usual and the store
    /// records it as cancelled.
    #[error("task {task_id} was cancelled")]
    CancelRequested {
        /// The task.
        task_id: i64,
    },
    /// A job operation that its state does not allow (pausing a running job, cancelling a
    /// completed one).
    #[error("cannot {action} job {id}: it is {state}")]
    JobState {
        /// The job.
        id: i64,
        /// Its state.
        state: crate::JobState,
        /// What was asked.
        action: &'static str,
    },
    /// No task has this id (in the dead-letter list, for a re-drive).
    #[error("no task {task_id}")]
    TaskNotFound {
        /// The task id.
        task_id: i64,
    },
    /// A payload or an encoded event is larger than the store accepts. Store large data elsewhere
    /// and pass a reference, or raise `StoreConfig::max_payload_bytes`.
    #[error("payload of {size} bytes is over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The size that was refused.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A request is malformed (an orchestration task without an instance id, an empty queue name, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A stored event cannot be decoded. The row was written by another program or edited by hand;
    /// `verify` tells whether the chain still holds.
    #[error("event {seq} of instance `{instance_id}` cannot be decoded: {source}")]
    Decode {
        /// The instance.
        instance_id: String,
        /// The event's sequence number.
        seq: u64,
        /// Why.
        #[source]
        source: CodecError,
    },
    /// A stored event was written by a newer version of Quark. Upgrade this process.
    #[error(
        "event {seq} of instance `{instance_id}` has schema version {found}; this build reads up to {supported}"
    )]
    UnsupportedSchema {
        /// The instance.
        instance_id: String,
        /// The event's sequence number.
        seq: u64,
        /// The stored version.
        found: i16,
        /// The newest version this build reads.
        supported: i16,
    },
    /// An event or payload could not be encoded.
    #[error("encode: {0}")]
    Encode(#[source] CodecError),
    /// The database could not be reached or the connection dropped. Retryable: the operation had
    /// no effect, or its transaction was rolled back.
    #[error("database connection: {0}")]
    Connection(#[source] sqlx::Error),
    /// The TLS handshake with the database failed: an unknown certificate authority, a name that
    /// the certificate does not cover, or a server without TLS under `sslmode=require`. Not
    /// retryable: check `sslmode`, `sslrootcert` and the server's certificate.
    #[error(
        "TLS with the database failed: {0} (check sslmode, sslrootcert and the server's certificate)"
    )]
    Tls(#[source] sqlx::Error),
    /// The database refused the transaction for a transient reason (serialization failure, deadlock,
    /// lock timeout). Retryable.
    #[error("transient database error: {0}")]
    Transient(#[source] sqlx::Error),
    /// Any other database error. Not retryable as is.
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    /// An outbox message with this idempotency key exists. Keys are unique; reuse one only for
    /// the same message (and then do not send it again), or leave it unset for a fresh UUID.
    #[error("an outbox message with idempotency key `{key}` already exists")]
    MessageExists {
        /// The key.
        key: String,
    },
    /// This inbox message id was already recorded within the deduplication window: the message
    /// was handled before. Nothing was written; treat the message as done.
    #[error("message `{message_id}` was already received")]
    AlreadyReceived {
        /// The id.
        message_id: String,
    },
    /// No outbox message with this id (or not in the state the operation needs).
    #[error("no {state}outbox message {id}")]
    MessageNotFound {
        /// The id.
        id: i64,
        /// The state looked for, with a trailing space (`"dead "`), or empty.
        state: &'static str,
    },
    /// Applying the schema migrations failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Another process serves this worker id and still heartbeats, from another host (or
    /// container). Give each process its own id; if that process is dead, its registration
    /// expires after two of its heartbeat intervals (`expires_in`) and the id is free.
    #[error(
        "worker id `{worker_id}` is in use by a live process ({scope}); it expires in {expires_in:?} unless that process heartbeats"
    )]
    WorkerIdInUse {
        /// The id.
        worker_id: String,
        /// Where the other process runs (its host and lock scope).
        scope: String,
        /// How long until its registration expires, if it stops heartbeating now.
        expires_in: std::time::Duration,
    },
    /// An event log that is not a SQL database (Redis) failed or could not be reached.
    /// `retryable` when the operation had no effect (the server could not be reached, or refused
    /// before running it).
    #[error("{backend}: {message}")]
    Log {
        /// Where the log is kept (`redis`).
        backend: &'static str,
        /// What went wrong.
        message: String,
        /// Whether the same call may succeed if tried again.
        retryable: bool,
    },
    /// Another process registered this worker id since this one did (a restart of the same id,
    /// while this one was thought dead): this process must stop. Its leases are fenced; whatever
    /// it still commits under them is refused.
    #[error("worker id `{worker_id}` was taken over by another process; this one must stop")]
    Superseded {
        /// The id.
        worker_id: String,
    },
    /// A lease on a role ([`Store::lead`](crate::Store::lead)) expired or passed to another
    /// holder before the work done under it was committed: nothing was changed. The old holder
    /// stops acting in the role; whoever holds it now decides again.
    #[error("the lease on `{role}` of epoch {epoch} is no longer held; nothing was changed")]
    NotLeader {
        /// The role.
        role: String,
        /// The epoch that was lost.
        epoch: u64,
    },
    /// A two-phase transaction was decided otherwise before its coordinator could decide to
    /// commit it (recovery or an operator gave up on it): none of its branches commits. Running
    /// the work again, under a new global id, may succeed.
    #[error("two-phase transaction `{gid}` was already decided: {decision}")]
    Decided {
        /// The transaction's global id.
        gid: String,
        /// The decision that stands.
        decision: crate::two_phase::Decision,
    },
}

impl Error {
    /// Whether the same call may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Connection(_)
                | Error::Transient(_)
                | Error::Conflict { .. }
                | Error::Decided { .. }
                | Error::Log {
                    retryable: true,
                    ..
                }
        )
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // A handshake that failed for want of a connection (the server went away) is worth
            // retrying; one the server or its certificate refused is not.
            sqlx::Error::Tls(tls) if !carries_io(tls.as_ref()) => Error::Tls(e),
            sqlx::Error::Tls(_) => Error::Connection(e),
            sqlx::Error::Io(io) if refused_certificate(io) => Error::Tls(e),
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => Error::Connection(e),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // Serialization failure, deadlock, lock not available.
                Some("40001" | "40P01" | "55P03") => Error::Transient(e),
                // Admin shutdown, crash shutdown, cannot connect now, connection failures.
                Some(code) if code.starts_with("08") || code.starts_with("57P") => {
                    Error::Connection(e)
                }
                // SQLITE_BUSY, SQLITE_LOCKED.
                Some("5" | "6" | "261" | "517") => Error::Transient(e),
                _ => Error::Database(e),
            },
            _ => Error::Database(e),
        }
    }
}

/// Whether an I/O error is the TLS stack refusing the server's certificate (an unknown authority,
/// a name it does not cover, none at all) or the server's TLS: configuration that retrying would
/// only meet again. The TLS stack reports these as I/O errors carrying its own error. A connection
/// that drops mid-handshake or mid-query (a terminated backend, a failover) is not one of them.
fn refused_certificate(io: &std::io::Error) -> bool {
    #[cfg(feature = "postgres")]
    {
        io.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|tls| {
                matches!(
                    tls,
                    rustls::Error::InvalidCertificate(_)
                        | rustls::Error::NoCertificatesPresented
                        | rustls::Error::UnsupportedNameType
                        | rustls::Error::PeerIncompatible(_)
                )
            })
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = io;
        false
    }
}

/// Whether an error or one of its causes is an I/O error.
fn carries_io(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        next = e.source();
    }
    false
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;

    fn io(
        kind: std::io::ErrorKind,
        inner: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(kind, inner))
    }

    #[test]
    fn a_refused_certificate_is_a_tls_error_and_not_retried() {
        let refused = io(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let e = Error::from(refused);
        assert!(matches!(e, Error::Tls(_)), "{e:?}");
        assert!(!e.is_retryable());
        let e = Error::from(sqlx::Error::Tls("server does not support TLS".into()));
        assert!(matches!(e, Error::Tls(_)) && !e.is_retryable(), "{e:?}");
    }

    #[test]
    fn a_connection_lost_under_tls_is_retried() {
        // What a terminated backend looks like on an encrypted connection: an alert or an end of
        // stream from the TLS stack, or a handshake cut short.
        for lost in [
            io(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(rustls::AlertDescription::InternalError),
            ),
            io(
                std::io::ErrorKind::UnexpectedEof,
                "peer closed connection without close_notify",
            ),
            sqlx::Error::Tls(Box::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            ))),
        ] {
            let e = Error::from(lost);
            assert!(matches!(e, Error::Connection(_)), "{e:?}");
            assert!(e.is_retryable());
        }
    }
}
