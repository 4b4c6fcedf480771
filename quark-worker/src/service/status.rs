//! Store and client errors as gRPC statuses: the code says what the caller can do (fix the
//! request, retry, give up), the message says what happened. An internal error is logged here
//! with its whole chain, and the caller gets its top line.

use quark_history::Error;
use quark_workflow::ClientError;
use tonic::Status;

/// The status of a store error.
pub(crate) fn store(e: Error) -> Status {
    let message = e.to_string();
    match e {
        Error::DuplicateInstance { .. } | Error::Duplicate { .. } => {
            Status::already_exists(message)
        }
        Error::InstanceNotFound { .. } => Status::not_found(message),
        Error::InstanceClosed { .. } => Status::failed_precondition(message),
        Error::JobState { .. } => Status::failed_precondition(message),
        Error::TaskNotFound { .. } => Status::not_found(message),
        Error::PayloadTooLarge { .. } => Status::invalid_argument(message),
        Error::Invalid(_) | Error::Encode(_) => Status::invalid_argument(message),
        ref e if e.is_retryable() => Status::unavailable(message),
        e => internal(&e),
    }
}

/// The status of a client error.
pub(crate) fn client(e: ClientError) -> Status {
    match e {
        ClientError::Store(e) => store(e),
        ClientError::NotFound(id) => Status::not_found(format!("no instance `{id}`")),
        ClientError::Payload(m) => Status::invalid_argument(m),
        e @ ClientError::Rejected { .. } => Status::failed_precondition(e.to_string()),
        e => internal(&e),
    }
}

/// INTERNAL, logged with the error's whole chain.
pub(crate) fn internal(e: &(dyn std::error::Error + 'static)) -> Status {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    tracing::error!(error = %chain, "API call failed");
    Status::internal(e.to_string())
}
