//! `quark checkpoint ...`: signed checkpoints over the global order (see
//! [`quark_history::checkpoint`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use quark_history::checkpoint::{self, Checkpoint, CheckpointCheck, SigningKey};
use quark_history::{GlobalPosition, Store};
use serde::Serialize;

use super::output::{self, Output};

/// `quark checkpoint ...`
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Makes a new Ed25519 signing key (PKCS#8) and prints its public key. Keep the key file
    /// away from the database; give the public key to whoever will check the checkpoints.
    Keygen {
        /// Where to write the key (created; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Signs a checkpoint of the global order: a Merkle root over the events after `--after` up to
    /// `--until` (default: every event final now). Prints it as JSON.
    Create {
        /// The signing key (from `quark checkpoint keygen`).
        #[arg(long, env = "QUARK_CHECKPOINT_KEY")]
        key: PathBuf,
        /// The range (chain checkpoints by starting each after the last one's `until`).
        #[command(flatten)]
        range: super::events::Range,
        /// Also write it to this file (created; never overwritten).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Checks a checkpoint against the events the database holds now, and its signature against
    /// the public key you trust. Fails if either does not hold.
    Verify {
        /// The checkpoint file.
        file: PathBuf,
        /// The public key you trust (hex, as `keygen` printed it). Without it the key in the file
        /// is used, which proves only that the file is self-consistent, not who signed it.
        #[arg(long, env = "QUARK_CHECKPOINT_PUBLIC_KEY")]
        public_key: Option<String>,
    },
}

/// Writes `bytes` to a new file at `path`, refusing to replace one.
/// On Unix the file is made readable by its owner only, before anything is written to it.
fn create_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// `quark checkpoint keygen`: needs no database.
pub(super) fn keygen(path: &Path, output: Output, out: &mut dyn Write) -> anyhow::Result<()> {
    let pkcs8 = checkpoint::generate_key()?;
    create_new(path, &pkcs8)?;
    #[derive(Serialize)]
    struct Generated {
        key_file: String,
        public_key: String,
    }
    let generated = Generated {
        key_file: path.display().to_string(),
        public_key: SigningKey::from_pkcs8(&pkcs8)?.public_key_hex(),
    };
    output::one(out, output, &generated, |out, g| {
        writeln!(out, "key written to {}", g.key_file)?;
        writeln!(out, "public key: {}", g.public_key)?;
        Ok(())
    })
}

/// A progress bar on a terminal (hidden otherwise), counting events.
fn progress(verb: &str) -> indicatif::ProgressBar {
    indicatif::ProgressBar::no_length().with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {verb} {{pos}} events ({{per_sec}})"
        ))
        .expect("a valid template"),
    )
}

pub(super) async fn run(
    store: &Arc<dyn Store>,
    command: CheckpointCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match command {
        CheckpointCommand::Keygen { out: path } => keygen(&path, output, out),
        CheckpointCommand::Create {
            key,
            range,
            out: file,
        } => {
            let pkcs8 =
                std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
            let key = SigningKey::from_pkcs8(&pkcs8)?;
            let bar = progress("hashed");
            let made = checkpoint::create(
                store.as_ref(),
                &key,
                range.after.unwrap_or(GlobalPosition::START),
                range.until,
                &mut |n| bar.set_position(n),
            )
            .await?;
            bar.finish_and_clear();
            if let Some(file) = file {
                create_new(&file, &serde_json::to_vec_pretty(&made)?)?;
            }
            // The checkpoint is the output, whatever the format: a script keeps it as it is.
            let json = match output {
                Output::Jsonl => serde_json::to_string(&made)?,
                _ => serde_json::to_string_pretty(&made)?,
            };
            writeln!(out, "{json}")?;
            Ok(())
        }
        CheckpointCommand::Verify { file, public_key } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let checkpoint: Checkpoint = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a checkpoint", file.display()))?;
            let bar = progress("checked");
            let verdict = checkpoint::check(
                store.as_ref(),
                &checkpoint,
                public_key.as_deref(),
                &mut |n| bar.set_position(n),
            )
            .await?;
            bar.finish_and_clear();
            if output != Output::Table {
                #[derive(Serialize)]
                struct Checked<'a> {
                    #[serde(flatten)]
                    verdict: &'a CheckpointCheck,
                    /// Whether the signature was checked against a key the caller trusts, not
                    /// the one in the file.
                    trusted_key: bool,
                }
                let checked = Checked {
                    verdict: &verdict,
                    trusted_key: public_key.is_some(),
                };
                output::one(out, output, &checked, |_, _| Ok(()))?;
            }
            let range = format!("{} to {}", checkpoint.after, checkpoint.until);
            match verdict {
                CheckpointCheck::Holds { events } => {
                    if output == Output::Table {
                        writeln!(
                            out,
                            "checkpoint holds: {events} events after {range}, signed by {}{}",
                            checkpoint.public_key,
                            if public_key.is_none() {
                                " (the key in the file: pass --public-key to check who signed it)"
                            } else {
                                ""
                            }
                        )?;
                    }
                    Ok(())
                }
                CheckpointCheck::BadSignature => bail!(
                    "the checkpoint's signature does not verify{}: the file was changed or signed \
                     by another key",
                    if public_key.is_some() {
                        " with the trusted key"
                    } else {
                        ""
                    }
                ),
                CheckpointCheck::Differs {
                    events_now,
                    events_then,
                    first_chunk,
                    chunk_starts_at,
                } => bail!(
                    "history was rewritten after {range}: {events_now} events now, {events_then} \
                     signed; the first difference is in chunk {first_chunk} (events {} to {} of \
                     the range{})",
                    first_chunk * checkpoint::CHUNK as u64 + 1,
                    (first_chunk + 1) * checkpoint::CHUNK as u64,
                    chunk_starts_at
                        .map(|p| format!(", starting at {p} now"))
                        .unwrap_or_default()
                ),
                other => bail!("unexpected verdict {other:?}"),
            }
        }
    }
}
