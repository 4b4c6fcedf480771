//! Rust callbacks registered on the worker by name: `callback:<name>` destinations, for tests and
//! in-process consumers.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use quark_history::ClaimedMessage;

use super::DeliveryError;

type BoxedFn =
    dyn Fn(ClaimedMessage) -> BoxFuture<'static, Result<(), DeliveryError>> + Send + Sync;

/// A registered callback. It receives each message (with its idempotency key and attempt) and may
/// be called again for the same message after a crash or a lost lease: deduplicate by
/// `message.idempotency_key` if that matters.
#[derive(Clone)]
pub struct Callback(Arc<BoxedFn>);

impl fmt::Debug for Callback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Callback")
    }
}

impl Callback {
    pub(crate) fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(ClaimedMessage) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), DeliveryError>> + Send + 'static,
    {
        Callback(Arc::new(move |m| Box::pin(f(m))))
    }

    pub(crate) async fn call(&self, message: ClaimedMessage) -> Result<(), DeliveryError> {
        (self.0)(message).await
    }
}
