//! NATS JetStream delivery on `async-nats`: one connection per relay, made on the first `nats:`
//! message and kept (the client reconnects by itself after a server restart or a network cut,
//! and buffers publishes meanwhile); TLS (`tls://` URLs, a required-TLS option, extra roots, a
//! client certificate), user and password, token, and `.creds` files.
//!
//! Each message is published with its headers and `Nats-Msg-Id` set to its idempotency key, and
//! counts as delivered once the stream acknowledges it: a re-send within the stream's duplicate
//! window is acknowledged without being stored twice. Deliveries of different keys publish on the
//! one connection at once, each waiting for its own ack.

use std::path::PathBuf;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use quark_history::ClaimedMessage;
use tokio::sync::OnceCell;

use super::DeliveryError;

/// How a relay connects to NATS; see [`OutboxRelay::nats`] and the options beside it.
///
/// [`OutboxRelay::nats`]: super::OutboxRelay::nats
#[derive(Clone, Debug)]
pub(crate) struct NatsOptions {
    /// `host:port`, `nats://host:port` or `tls://host:port`; several separated by commas.
    pub(crate) url: String,
    pub(crate) auth: NatsAuth,
    pub(crate) require_tls: bool,
    pub(crate) roots: Vec<PathBuf>,
    pub(crate) client_certificate: Option<(PathBuf, PathBuf)>,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            url: "127.0.0.1:4222".into(),
            auth: NatsAuth::None,
            require_tls: false,
            roots: Vec::new(),
            client_certificate: None,
        }
    }
}

/// How a relay authenticates to NATS.
#[derive(Clone)]
pub(crate) enum NatsAuth {
    None,
    UserPassword(String, String),
    Token(String),
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        f.write_str(match self {
            NatsAuth::None => "none",
            NatsAuth::UserPassword(..) => "user and password",
            NatsAuth::Token(_) => "token",
            NatsAuth::CredentialsFile(_) => "credentials file",
        })
    }
}

/// The NATS connection of one relay.
pub(crate) struct Nats {
    options: NatsOptions,
    context: OnceCell<jetstream::Context>,
}

impl Nats {
    pub(crate) fn new(options: NatsOptions) -> Self {
        Nats {
            options,
            context: OnceCell::new(),
        }
    }

    /// The JetStream context, connecting on first use. A failed first connection is tried again
    /// by the next delivery.
    async fn context(&self) -> Result<&jetstream::Context, DeliveryError> {
        self.context
            .get_or_try_init(|| async {
                let client = self
                    .connect_options()
                    .await?
                    .connect(&self.options.url)
                    .await;
                let client = client.map_err(|e| {
                    DeliveryError::retry(format!(
                        "cannot connect to NATS at {}: {e}",
                        self.options.url
                    ))
                })?;
                Ok(jetstream::new(client))
            })
            .await
    }

    async fn connect_options(&self) -> Result<async_nats::ConnectOptions, DeliveryError> {
        let o = &self.options;
        let mut options = async_nats::ConnectOptions::new().name("quark-outbox");
        options = match &o.auth {
            NatsAuth::None => options,
            NatsAuth::UserPassword(user, password) => {
                options.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(token) => options.token(token.clone()),
            NatsAuth::CredentialsFile(path) => {
                options.credentials_file(path).await.map_err(|e| {
                    DeliveryError::retry(format!(
                        "reading the NATS credentials file {}: {e}",
                        path.display()
                    ))
                })?
            }
        };
        for root in &o.roots {
            options = options.add_root_certificates(root.clone());
        }
        if let Some((cert, key)) = &o.client_certificate {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options.require_tls(o.require_tls))
    }

    /// Publishes `m` to `subject` and waits for the stream's acknowledgement.
    pub(crate) async fn publish(
        &self,
        subject: &str,
        m: &ClaimedMessage,
    ) -> Result<(), DeliveryError> {
        let context = self.context().await?;
        let ack = context
            .send_publish(subject.to_string(), message(m))
            .await
            .map_err(|e| refused(subject, e.kind(), &e))?;
        ack.await
            .map_err(|e| refused(subject, e.kind(), &e))
            .map(|_| ())
    }
}

impl Nats {
    /// Publishes a window's messages (to `subjects`, one each) in order on the one connection,
    /// without waiting for each ack, then waits for the acks in order, each bounded by `timeout`:
    /// the results up to and including the first failure.
    ///
    /// The server takes one connection's publishes in the order they were written. If one in the
    /// middle fails (its ack lost in a timeout, say), the ones after it are reported as not tried
    /// and sent again later with the same `Nats-Msg-Id`, which the stream deduplicates.
    pub(crate) async fn publish_window(
        &self,
        subjects: Vec<&str>,
        window: &[ClaimedMessage],
        timeout: std::time::Duration,
    ) -> Vec<Result<(), DeliveryError>> {
        let context = match self.context().await {
            Ok(context) => context,
            Err(e) => return vec![Err(e)],
        };
        let mut acks = Vec::with_capacity(window.len());
        let mut results = Vec::with_capacity(window.len());
        for (subject, m) in subjects.iter().zip(window) {
            match tokio::time::timeout(
                timeout,
                context.send_publish(subject.to_string(), message(m)),
            )
            .await
            {
                Ok(Ok(ack)) => acks.push((*subject, ack)),
                Ok(Err(e)) => {
                    results.push(Err(refused(subject, e.kind(), &e)));
                    break;
                }
                Err(_) => {
                    results.push(Err(DeliveryError::retry(format!(
                        "NATS {subject}: publishing timed out after {timeout:?}"
                    ))));
                    break;
                }
            }
        }
        let failed_to_send = results.pop();
        for (subject, ack) in acks {
            let result = match tokio::time::timeout(timeout, ack).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(refused(subject, e.kind(), &e)),
                Err(_) => Err(DeliveryError::retry(format!(
                    "NATS {subject}: no ack within {timeout:?}"
                ))),
            };
            let failed = result.is_err();
            results.push(result);
            if failed {
                return results;
            }
        }
        results.extend(failed_to_send);
        results
    }
}

/// The JetStream message for `m`: its payload and headers, and its idempotency key as
/// `Nats-Msg-Id`.
fn message(m: &ClaimedMessage) -> jetstream::message::PublishMessage {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in &m.headers {
        headers.insert(name.as_str(), value.as_str());
    }
    jetstream::message::PublishMessage::build()
        .payload(m.payload.clone().into())
        .headers(headers)
        .message_id(&m.idempotency_key)
}

/// What a refused publish means for the message.
fn refused(subject: &str, kind: PublishErrorKind, e: &dyn std::fmt::Display) -> DeliveryError {
    match kind {
        // Will not fit however often it is sent.
        PublishErrorKind::MaxPayloadExceeded => {
            DeliveryError::permanent(format!("NATS {subject}: {e}"))
        }
        // A stream may be created for the subject later; the server may come back.
        _ => DeliveryError::retry(format!("NATS {subject}: {e}")),
    }
}
