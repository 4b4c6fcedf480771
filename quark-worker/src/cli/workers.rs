//! `quark worker list`: the registered workers with what their heartbeats publish (memory,
//! pressure, warm state); and the parsing of the memory flags of `quark worker`.

use std::io::Write;
use std::sync::Arc;

use clap::Subcommand;
use quark_history::{Pressure, Store, Timestamp};
use serde::Serialize;

use super::output::{self, Output, rfc3339};
use crate::memory::{Thresholds, human};

/// `quark worker ...` besides running one.
#[derive(Debug, Clone, Subcommand)]
pub enum WorkerCommand {
    /// The registered workers: queues, memory and its pressure level, the warm state each keeps,
    /// and when each last heartbeated.
    List,
}

/// A worker as listed.
#[derive(Debug, Serialize)]
struct WorkerRow {
    id: String,
    queues: Vec<String>,
    /// `normal`, `warning`, `critical` or `reject` (claims paused).
    pressure: Pressure,
    rss_bytes: u64,
    memory_limit: u64,
    cached_instances: u64,
    cached_bytes: u64,
    live_entities: u64,
    entity_bytes: u64,
    labels: serde_json::Value,
    #[serde(serialize_with = "rfc3339")]
    heartbeat_at: Timestamp,
}

pub(super) async fn run(
    store: &Arc<dyn Store>,
    cmd: WorkerCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        WorkerCommand::List => {
            let now = store.config().clock.now();
            let rows: Vec<WorkerRow> = store
                .list_workers()
                .await?
                .into_iter()
                .map(|w| WorkerRow {
                    labels: serde_json::from_str(&w.labels)
                        .unwrap_or(serde_json::Value::String(w.labels.clone())),
                    id: w.id,
                    queues: w.queues,
                    pressure: w.load.pressure,
                    rss_bytes: w.load.rss_bytes,
                    memory_limit: w.load.memory_limit,
                    cached_instances: w.load.cached_instances,
                    cached_bytes: w.load.cached_bytes,
                    live_entities: w.load.live_entities,
                    entity_bytes: w.load.entity_bytes,
                    heartbeat_at: w.heartbeat_at,
                })
                .collect();
            output::rows(out, output, &rows, |out, rows| {
                if rows.is_empty() {
                    writeln!(out, "no workers registered")?;
                    return Ok(());
                }
                let mut table = output::table([
                    "WORKER",
                    "QUEUES",
                    "STATE",
                    "MEMORY",
                    "WARM RUNS",
                    "ENTITIES",
                    "HEARTBEAT",
                ]);
                for w in rows {
                    let state = match w.pressure {
                        Pressure::Reject => "reject (claims paused)".to_string(),
                        p => p.to_string(),
                    };
                    let memory = if w.memory_limit == 0 {
                        "-".to_string()
                    } else {
                        format!(
                            "{} / {} ({:.0}%)",
                            human(w.rss_bytes),
                            human(w.memory_limit),
                            w.rss_bytes as f64 * 100.0 / w.memory_limit as f64
                        )
                    };
                    let ago = now.since(w.heartbeat_at);
                    table.add_row([
                        w.id.clone(),
                        w.queues.join(","),
                        state,
                        memory,
                        format!("{} ({})", w.cached_instances, human(w.cached_bytes)),
                        format!("{} ({})", w.live_entities, human(w.entity_bytes)),
                        format!("{} ago", super::duration::show(ago)),
                    ]);
                }
                output::write_table(out, &table)
            })
        }
    }
}

/// A size in bytes: a number with an optional unit (`512MiB`, `2GiB`, `1.5G`, `800M`, `4096`).
/// Units are powers of 1024 whether written `G` or `GiB`.
pub(super) fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (say 512MiB, 2GiB or a number of bytes)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    let bytes = number * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Thresholds as percentages of the limit: `70,85,95`.
pub(super) fn parse_thresholds(text: &str) -> Result<Thresholds, String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let [warning, critical, reject] = parts.as_slice() else {
        return Err(format!(
            "{text:?}: give three percentages of the limit, warning,critical,reject (70,85,95)"
        ));
    };
    let percent = |p: &str| -> Result<f64, String> {
        p.trim_end_matches('%')
            .parse::<f64>()
            .map(|v| v / 100.0)
            .map_err(|_| format!("{p:?} is not a percentage"))
    };
    let thresholds = Thresholds {
        warning: percent(warning)?,
        critical: percent(critical)?,
        reject: percent(reject)?,
        ..Thresholds::default()
    };
    thresholds.validate()?;
    Ok(thresholds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_thresholds_parse_and_bad_ones_say_why() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5G").unwrap(), 3 << 29);
        assert!(parse_bytes("lots").unwrap_err().contains("not a size"));
        assert!(parse_bytes("3 parsecs").unwrap_err().contains("unit"));
        let t = parse_thresholds("60,80,90").unwrap();
        assert_eq!((t.warning, t.critical, t.reject), (0.6, 0.8, 0.9));
        assert!(
            parse_thresholds("90,80,95")
                .unwrap_err()
                .contains("out of order")
        );
        assert!(parse_thresholds("70,85").unwrap_err().contains("three"));
    }
}
