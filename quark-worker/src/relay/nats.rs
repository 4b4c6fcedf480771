//! A minimal NATS client over a tokio `TcpStream`, enough for JetStream publishing with
//! deduplication: `CONNECT` (with headers and no-responders), one `SUB` on a private reply inbox,
//! `HPUB` with headers, `PING`/`PONG`, `+OK`/`-ERR`, `MSG`/`HMSG`.
//!
//! Why not `async-nats`: publishing a message and waiting for its JetStream ack is a few lines of
//! the text protocol, while the crate would bring its own TLS, nkeys and a large tree of
//! dependencies into every worker. What this client does not do: TLS, authentication, cluster
//! discovery and reconnection (the relay reconnects by making a new client after an error), and
//! more than one request in flight per connection.

use std::io;

use quark_history::ClaimedMessage;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// An answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status of a header-only answer (`503`: no responders).
    pub status: Option<u16>,
    /// The answer's headers.
    pub headers: Vec<(String, String)>,
    /// The answer's body.
    pub payload: Vec<u8>,
}

/// Why a JetStream publish failed.
#[derive(Debug)]
pub(crate) enum PublishError {
    /// The connection failed; its state is unknown.
    Io(io::Error),
    /// The server answered with a refusal (no stream for the subject, a stream error).
    Refused(String),
}

/// A connection to one NATS server.
#[derive(Debug)]
pub struct NatsClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    inbox: String,
    next: u64,
}

fn protocol(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl NatsClient {
    /// Connects to `url` (`host:port` or `nats://host:port`) and subscribes to a private inbox.
    pub async fn connect(url: &str) -> io::Result<Self> {
        let addr = url.strip_prefix("nats://").unwrap_or(url);
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        let mut client = NatsClient {
            reader: BufReader::new(read),
            writer,
            inbox: format!("_INBOX.{}", uuid::Uuid::now_v7().simple()),
            next: 0,
        };
        let info = client.read_line().await?;
        if !info.starts_with("INFO") {
            return Err(protocol(format!(
                "expected INFO from the server, got {info:?}"
            )));
        }
        let connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "headers": true,
            "no_responders": true,
            "protocol": 1,
            "name": "quark-outbox",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
        });
        let hello = format!("CONNECT {connect}\r\nPING\r\nSUB {}.* 1\r\n", client.inbox);
        client.writer.write_all(hello.as_bytes()).await?;
        loop {
            let line = client.read_line().await?;
            match line.as_str() {
                "PONG" => break,
                "PING" => client.writer.write_all(b"PONG\r\n").await?,
                l if l.starts_with("-ERR") => {
                    return Err(protocol(format!("NATS refused the connection: {l}")));
                }
                _ => {}
            }
        }
        Ok(client)
    }

    async fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "NATS closed the connection",
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Publishes `payload` to `subject` with `headers` and waits for the answer on a private
    /// reply subject.
    pub async fn request(
        &mut self,
        subject: &str,
        headers: &[(String, String)],
        payload: &[u8],
    ) -> io::Result<Reply> {
        if subject.is_empty() || subject.contains(char::is_whitespace) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid NATS subject {subject:?}"),
            ));
        }
        self.next += 1;
        let reply_to = format!("{}.{}", self.inbox, self.next);
        let mut frame = Vec::with_capacity(payload.len() + 128);
        if headers.is_empty() {
            frame.extend_from_slice(
                format!("PUB {subject} {reply_to} {}\r\n", payload.len()).as_bytes(),
            );
        } else {
            let mut block = String::from("NATS/1.0\r\n");
            for (name, value) in headers {
                block.push_str(&format!("{name}: {value}\r\n"));
            }
            block.push_str("\r\n");
            frame.extend_from_slice(
                format!(
                    "HPUB {subject} {reply_to} {} {}\r\n",
                    block.len(),
                    block.len() + payload.len()
                )
                .as_bytes(),
            );
            frame.extend_from_slice(block.as_bytes());
        }
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.writer.write_all(&frame).await?;
        loop {
            let line = self.read_line().await?;
            let mut words = line.split_ascii_whitespace();
            match words.next() {
                Some("PING") => self.writer.write_all(b"PONG\r\n").await?,
                Some("MSG") => {
                    // MSG <subject> <sid> [reply-to] <#bytes>
                    let words: Vec<&str> = words.collect();
                    let (subject, len) = match words.as_slice() {
                        [s, _, len] | [s, _, _, len] => (s.to_string(), len.parse::<usize>()),
                        _ => return Err(protocol(format!("malformed {line:?}"))),
                    };
                    let len = len.map_err(|_| protocol(format!("malformed {line:?}")))?;
                    let body = self.read_body(len).await?;
                    if subject == reply_to {
                        return Ok(Reply {
                            status: None,
                            headers: Vec::new(),
                            payload: body,
                        });
                    }
                }
                Some("HMSG") => {
                    // HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
                    let words: Vec<&str> = words.collect();
                    let (subject, hlen, tlen) = match words.as_slice() {
                        [s, _, h, t] | [s, _, _, h, t] => {
                            (s.to_string(), h.parse::<usize>(), t.parse::<usize>())
                        }
                        _ => return Err(protocol(format!("malformed {line:?}"))),
                    };
                    let (Ok(hlen), Ok(tlen)) = (hlen, tlen) else {
                        return Err(protocol(format!("malformed {line:?}")));
                    };
                    if hlen > tlen {
                        return Err(protocol(format!("malformed {line:?}")));
                    }
                    let mut body = self.read_body(tlen).await?;
                    if subject == reply_to {
                        let payload = body.split_off(hlen);
                        let (status, headers) = parse_headers(&body);
                        return Ok(Reply {
                            status,
                            headers,
                            payload,
                        });
                    }
                }
                Some("-ERR") => return Err(protocol(format!("NATS error: {line}"))),
                // +OK, PONG, INFO updates: nothing to do.
                _ => {}
            }
        }
    }

    async fn read_body(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut body = vec![0u8; len + 2];
        self.reader.read_exact(&mut body).await?;
        body.truncate(len);
        Ok(body)
    }

    /// Publishes a message to JetStream with `Nats-Msg-Id` set to its idempotency key, and waits
    /// for the stream's ack (a duplicate within the stream's window is acked too, not stored).
    pub(crate) async fn publish_jetstream(
        &mut self,
        subject: &str,
        m: &ClaimedMessage,
    ) -> Result<(), PublishError> {
        let mut headers: Vec<(String, String)> = m
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("nats-msg-id"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers.push(("Nats-Msg-Id".into(), m.idempotency_key.clone()));
        let reply = self
            .request(subject, &headers, &m.payload)
            .await
            .map_err(PublishError::Io)?;
        if reply.status == Some(503) {
            return Err(PublishError::Refused(format!(
                "no JetStream stream takes subject `{subject}` (no responders)"
            )));
        }
        let ack: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(|_| {
            PublishError::Refused(format!(
                "not a JetStream ack from `{subject}`: {:?}",
                String::from_utf8_lossy(&reply.payload)
            ))
        })?;
        if let Some(error) = ack.get("error") {
            return Err(PublishError::Refused(format!("JetStream refused: {error}")));
        }
        if ack.get("stream").is_none() {
            return Err(PublishError::Refused(format!(
                "not a JetStream ack from `{subject}`: {ack}"
            )));
        }
        Ok(())
    }
}

/// Parses a `NATS/1.0 [status]` header block.
fn parse_headers(block: &[u8]) -> (Option<u16>, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(block);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|first| first.split_ascii_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_the_status_and_headers_of_a_header_block() {
        let (status, headers) = parse_headers(b"NATS/1.0 503\r\n\r\n");
        assert_eq!((status, headers.len()), (Some(503), 0));
        let (status, headers) = parse_headers(b"NATS/1.0\r\nNats-Msg-Id: k1\r\n\r\n");
        assert_eq!(status, None);
        assert_eq!(headers, [("Nats-Msg-Id".to_string(), "k1".to_string())]);
    }
}
