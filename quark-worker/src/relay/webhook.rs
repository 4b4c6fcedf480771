//! Webhook delivery on `reqwest`: `http://` and `https://` (rustls), connections kept alive and
//! reused per host, the system's proxy settings (`HTTPS_PROXY`, `NO_PROXY`) or an explicit one.
//!
//! Each message is one `POST` of its payload, with its headers passed on and these set by Quark:
//! `Idempotency-Key` and `webhook-id` (the idempotency key: the same on every re-send), and, when a
//! signing secret is configured, `webhook-timestamp` and `webhook-signature` as the Standard
//! Webhooks specification lays them out (the scheme Svix uses; Stripe's differs only in the header
//! format): `v1,` and the base64 HMAC-SHA256, under the secret, of `{id}.{timestamp}.{body}`. A
//! receiver recomputes it to know that Quark sent the body, and refuses old timestamps to stop
//! replays. The libraries of that specification verify it in most languages.
//!
//! The answer's status decides: 2xx is delivered; 4xx other than 408 and 429 will never succeed,
//! so the message dies; anything else (5xx, 408, 429, a redirect, which is not followed, a refused
//! connection, a timeout, a TLS failure) is retried.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use quark_history::{ClaimedMessage, Timestamp};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::DeliveryError;

/// The headers Quark sets itself; a message's own headers of these names are dropped.
const RESERVED: [&str; 9] = [
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "content-type",
    "idempotency-key",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// How the relay posts to webhooks: see [`OutboxRelay::webhook_secret`] and the options beside it.
///
/// [`OutboxRelay::webhook_secret`]: super::OutboxRelay::webhook_secret
#[derive(Clone, Default)]
pub(crate) struct WebhookOptions {
    /// The signing secret as given (see [`secret_bytes`]).
    pub(crate) secret: Option<String>,
    /// Extra trusted roots, PEM.
    pub(crate) roots: Vec<Vec<u8>>,
    /// An explicit proxy URL (else the environment's).
    pub(crate) proxy: Option<String>,
}

/// The webhook client of one relay: one connection pool for all its deliveries.
pub(crate) struct Webhooks {
    client: reqwest::Client,
    secret: Option<ring::hmac::Key>,
}

impl Webhooks {
    /// A client with these options; `timeout` bounds one delivery.
    pub(crate) fn new(options: &WebhookOptions, timeout: Duration) -> Result<Self, String> {
        // reqwest's rustls is built without a crypto provider of its own, so that Quark uses one
        // (ring, which sqlx's TLS uses too) and compiles no second. If the application installed
        // another process-wide default first, that one serves, and this call changes nothing.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("quark-outbox/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60));
        for pem in &options.roots {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| format!("a webhook root certificate is not valid PEM: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some(proxy) = &options.proxy {
            let proxy =
                reqwest::Proxy::all(proxy).map_err(|e| format!("webhook proxy `{proxy}`: {e}"))?;
            builder = builder.proxy(proxy);
        }
        let client = builder
            .build()
            .map_err(|e| format!("building the webhook client: {e}"))?;
        let secret = match &options.secret {
            Some(s) => Some(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &secret_bytes(s)?,
            )),
            None => None,
        };
        Ok(Webhooks { client, secret })
    }

    /// Posts `m` to `url`, signed (with a secret) as of `now`: the store's clock, which is the
    /// wall clock outside tests.
    pub(crate) async fn post(
        &self,
        url: &str,
        m: &ClaimedMessage,
        now: Timestamp,
    ) -> Result<(), DeliveryError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| DeliveryError::permanent(format!("{url}: not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(DeliveryError::permanent(format!(
                "{url}: a webhook URL must start with http:// or https://"
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(DeliveryError::permanent(format!(
                "{url}: no credentials in a webhook URL (they would be stored in the outbox); \
                 put them in a header"
            )));
        }
        let headers = self.headers(m, now.as_micros().div_euclid(1_000_000))?;
        let answer = self
            .client
            .post(parsed)
            .headers(headers)
            .body(m.payload.clone())
            .send()
            .await
            .map_err(|e| DeliveryError::retry(format!("webhook {url}: {}", chain(&e))))?;
        classify(answer.status().as_u16())
    }

    /// The request's headers at `timestamp` (Unix seconds).
    fn headers(&self, m: &ClaimedMessage, timestamp: i64) -> Result<HeaderMap, DeliveryError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &m.headers {
            if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
                continue;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                DeliveryError::permanent(format!("header name `{name}` is not valid HTTP: {e}"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|e| {
                DeliveryError::permanent(format!("header `{name}` has a value HTTP refuses: {e}"))
            })?;
            headers.insert(name, value);
        }
        let content_type = m
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map_or("application/octet-stream", |(_, v)| v.as_str());
        let set = |headers: &mut HeaderMap, name: &'static str, value: &str| {
            let value = HeaderValue::from_str(value).map_err(|e| {
                DeliveryError::permanent(format!("header `{name}` has a value HTTP refuses: {e}"))
            })?;
            headers.insert(name, value);
            Ok::<_, DeliveryError>(())
        };
        set(&mut headers, "content-type", content_type)?;
        set(&mut headers, "idempotency-key", &m.idempotency_key)?;
        set(&mut headers, "webhook-id", &m.idempotency_key)?;
        if let Some(key) = &self.secret {
            let timestamp = timestamp.to_string();
            set(&mut headers, "webhook-timestamp", &timestamp)?;
            let signature = sign(key, &m.idempotency_key, &timestamp, &m.payload);
            set(&mut headers, "webhook-signature", &signature)?;
        }
        Ok(headers)
    }
}

/// `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
fn sign(key: &ring::hmac::Key, id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut context = ring::hmac::Context::with_key(key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.as_bytes());
    context.update(b".");
    context.update(body);
    format!("v1,{}", BASE64.encode(context.sign().as_ref()))
}

/// A signing secret as users write it: `whsec_` and base64 (the Standard Webhooks form), or any
/// other string, taken as its bytes.
pub(crate) fn secret_bytes(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => BASE64
            .decode(encoded)
            .map_err(|e| format!("a `whsec_` webhook secret must be base64 after the prefix: {e}")),
        None if secret.is_empty() => Err("the webhook secret is empty".into()),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// An error and its causes, one line: reqwest's own message alone ("error sending request")
/// hides whether it was DNS, a refused connection or a certificate.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a status code means for the message.
pub(crate) fn classify(status: u16) -> Result<(), DeliveryError> {
    match status {
        200..=299 => Ok(()),
        408 | 429 => Err(DeliveryError::retry(format!("webhook answered {status}"))),
        400..=499 => Err(DeliveryError::permanent(format!(
            "webhook answered {status}"
        ))),
        _ => Err(DeliveryError::retry(format!("webhook answered {status}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_retries_5xx_408_and_429_and_gives_up_on_other_4xx() {
        assert!(classify(204).is_ok());
        for s in [500, 503, 408, 429, 301] {
            assert!(matches!(classify(s), Err(DeliveryError::Retry(_))), "{s}");
        }
        for s in [400, 404, 410, 422] {
            assert!(
                matches!(classify(s), Err(DeliveryError::Permanent(_))),
                "{s}"
            );
        }
    }

    #[test]
    fn it_signs_as_the_standard_webhooks_specification_does() {
        // The specification's published example: this secret, id, timestamp and body give this
        // signature.
        let secret = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn it_reads_whsec_secrets_as_base64_and_others_as_bytes() {
        assert_eq!(secret_bytes("whsec_aGk=").unwrap(), b"hi");
        assert_eq!(secret_bytes("plain").unwrap(), b"plain");
        assert!(secret_bytes("whsec_***").is_err());
        assert!(secret_bytes("").is_err());
    }
}
