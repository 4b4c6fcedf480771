//! Webhook delivery: a minimal HTTP/1.1 client over a tokio `TcpStream`.
//!
//! One `POST` per message on a fresh connection (`Connection: close`), the body sent with
//! `Content-Length`, the idempotency key in `Idempotency-Key`, the message's headers passed on.
//! Only the status line of the answer is read: 2xx is delivered; 4xx other than 408 and 429 will
//! never succeed, so the message dies; anything else (5xx, 408, 429, a 3xx, which is not
//! followed, a malformed answer, a refused connection, a timeout) is retried.
//!
//! `https://` URLs are refused with a permanent error for now: there is no TLS stack in Quark's
//! dependencies yet. Put a TLS-terminating proxy on localhost in front of such a webhook.

use std::time::Duration;

use quark_history::ClaimedMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::DeliveryError;

/// The headers the client writes itself; a message's own headers of these names are dropped.
const RESERVED: [&str; 6] = [
    "host",
    "content-length",
    "connection",
    "idempotency-key",
    "transfer-encoding",
    "content-type",
];

/// A parsed `http://` URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// `host:port`, to connect to.
    pub(crate) addr: String,
    /// The `Host` header.
    pub(crate) host: String,
    /// Path and query, starting with `/`.
    pub(crate) path: String,
}

pub(crate) fn parse(url: &str) -> Result<Target, DeliveryError> {
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return Err(DeliveryError::permanent(format!(
                "{url}: https:// webhooks are not supported yet (no TLS client); use http:// or a local TLS-terminating proxy"
            )));
        }
        return Err(DeliveryError::permanent(format!(
            "{url}: a webhook URL must start with http://"
        )));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(DeliveryError::permanent(format!(
            "{url}: expected http://host[:port]/path (no credentials in the URL)"
        )));
    }
    let tail = tail.split('#').next().unwrap_or("");
    let path = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(DeliveryError::permanent(format!(
            "{url}: the path has whitespace or control characters"
        )));
    }
    // A port is what follows the last `:` outside an IPv6 literal's brackets.
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let addr = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        addr,
        host: authority.to_string(),
        path,
    })
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

fn request(target: &Target, m: &ClaimedMessage) -> Vec<u8> {
    let content_type = m
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map_or("application/octet-stream", |(_, v)| v.as_str());
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: quark-outbox\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nIdempotency-Key: {}\r\nConnection: close\r\n",
        target.path,
        target.host,
        m.payload.len(),
        m.idempotency_key,
    );
    for (name, value) in &m.headers {
        // Names and values were checked for line breaks when the message was written.
        if !RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&m.payload);
    bytes
}

/// Reads up to the end of the status line and returns the status code.
async fn read_status(stream: &mut TcpStream) -> Result<u16, DeliveryError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        if buf.len() > 8 * 1024 {
            return Err(DeliveryError::retry("webhook answer has no status line"));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| DeliveryError::retry(format!("reading the webhook's answer: {e}")))?;
        if n == 0 {
            return Err(DeliveryError::retry(
                "the webhook closed the connection without answering",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(DeliveryError::retry(format!(
            "malformed status line from the webhook: {line:?}"
        ))),
    }
}

/// Posts `m` to `url`; the whole exchange is bounded by `timeout`.
pub(crate) async fn post(
    url: &str,
    m: &ClaimedMessage,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let target = parse(url)?;
    let exchange = async {
        let mut stream = TcpStream::connect(&target.addr)
            .await
            .map_err(|e| DeliveryError::retry(format!("connecting to {}: {e}", target.addr)))?;
        stream
            .write_all(&request(&target, m))
            .await
            .map_err(|e| DeliveryError::retry(format!("sending to {}: {e}", target.addr)))?;
        read_status(&mut stream).await
    };
    let status = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            DeliveryError::retry(format!("webhook {url} timed out after {timeout:?}"))
        })??;
    classify(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_parses_http_urls_and_refuses_https_clearly() {
        assert_eq!(
            parse("http://127.0.0.1:8080/hooks/a?x=1").unwrap(),
            Target {
                addr: "127.0.0.1:8080".into(),
                host: "127.0.0.1:8080".into(),
                path: "/hooks/a?x=1".into()
            }
        );
        assert_eq!(parse("http://example.com").unwrap().addr, "example.com:80");
        assert_eq!(parse("http://example.com?q").unwrap().path, "/?q");
        assert_eq!(parse("http://[::1]/x").unwrap().addr, "[::1]:80");
        assert_eq!(parse("http://[::1]:9/x").unwrap().addr, "[::1]:9");
        match parse("https://example.com/x") {
            Err(DeliveryError::Permanent(e)) => assert!(e.contains("not supported"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(parse("http://user:pw@host/").is_err());
        assert!(parse("ftp://host/").is_err());
    }

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
}
