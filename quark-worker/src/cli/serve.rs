//! `quark serve`: the gRPC API ([`crate::service`]) on the database the command line points at,
//! until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use quark_history::Store;
use serde::Serialize;

use super::output::Output;
use crate::service::{ServiceOptions, serve};

/// `quark serve`: every flag also reads an environment variable, for containers.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The address to serve gRPC on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:7411", env = "QUARK_LISTEN")]
    pub listen: SocketAddr,
    /// The largest request accepted, in bytes; a larger one is refused with
    /// OUT_OF_RANGE.
    #[arg(long, default_value_t = 4 * 1024 * 1024, env = "QUARK_MAX_REQUEST_BYTES")]
    pub max_request_bytes: usize,
    /// Lets every call through without a token, as admin: for development only, and refused
    /// on an address other than a loopback one.
    #[arg(long, env = "QUARK_NO_AUTH")]
    pub no_auth: bool,
}

/// What `quark serve` announces: a line of text, or one JSON object a line.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Announce {
    ApiServing { addr: String },
    ApiStopped { addr: String },
}

fn announce(out: &mut dyn Write, output: Output, event: &Announce) -> anyhow::Result<()> {
    if output != Output::Table {
        serde_json::to_writer(&mut *out, event)?;
        writeln!(out)?;
    } else {
        match event {
            Announce::ApiServing { addr } => writeln!(
                out,
                "API serving on {addr} (gRPC: quark.v1, health, reflection); Ctrl-C to stop"
            )?,
            Announce::ApiStopped { addr } => writeln!(out, "API on {addr} stopped")?,
        }
    }
    out.flush()?;
    Ok(())
}

pub(super) async fn run(
    store: Arc<dyn Store>,
    args: ServeArgs,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if args.no_auth && !args.listen.ip().is_loopback() {
        bail!(
            "--no-auth lets anyone who reaches {} do anything; it is only allowed on a loopback \
             address (127.0.0.1, ::1). Issue a token with `quark token create` instead",
            args.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?.to_string();
    let options = ServiceOptions::default()
        .max_request_bytes(args.max_request_bytes)
        .authenticate(!args.no_auth);
    announce(out, output, &Announce::ApiServing { addr: addr.clone() })?;
    serve(store, listener, options, crate::shutdown_signal()).await?;
    announce(out, output, &Announce::ApiStopped { addr })?;
    Ok(())
}
