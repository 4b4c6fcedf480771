//! Where an operator's command works: on the database, or through a server (`--server`). The
//! commands that can do both ask their place for the same records and print them the same way.

use std::sync::Arc;

use quark_history::Store;

use crate::service::RemoteClient;

/// Where a command works.
pub(super) enum Place<'a> {
    /// On the database, with its credentials.
    Database(&'a Arc<dyn Store>),
    /// Through the API, with a token.
    Server(&'a RemoteClient),
}

/// A refusal of the API, as the command's error.
pub(super) fn api(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("the API answered {:?}: {}", status.code(), status.message())
}
