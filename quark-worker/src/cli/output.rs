//! How a command writes what it found or did: a table for people, JSON or JSON lines for programs.
//!
//! JSON is always a derived `Serialize` struct of the command's own (never a store type as it is
//! stored), with every time as an RFC 3339 string in UTC, so that a script reads the same shape
//! from every command.

use std::io::Write;

use clap::ValueEnum;
use comfy_table::Table;
use quark_history::Timestamp;
use serde::Serialize;

/// An output format (`--output`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned text for people.
    #[default]
    Table,
    /// One JSON document: an array for lists, an object for one thing.
    Json,
    /// One JSON object a line (a list's rows, or the one thing), for streaming tools.
    Jsonl,
}

/// A table with a header and no borders. Columns are as wide as their widest cell, so a long id
/// widens its column instead of pushing the rest of its row out of line.
pub(super) fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header);
    // Two spaces between columns and none before the first, so that a line starts with its id.
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Writes a table without the trailing spaces of its last column.
pub(super) fn write_table(out: &mut dyn Write, table: &Table) -> anyhow::Result<()> {
    writeln!(out, "{}", table.trim_fmt())?;
    Ok(())
}

/// Writes `rows`: a JSON array, a JSON object a line, or `text` for people.
pub(super) fn rows<T: Serialize>(
    out: &mut dyn Write,
    output: Output,
    rows: &[T],
    text: impl FnOnce(&mut dyn Write, &[T]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match output {
        Output::Table => text(out, rows)?,
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, rows)?;
            writeln!(out)?;
        }
        Output::Jsonl => {
            for row in rows {
                serde_json::to_writer(&mut *out, row)?;
                writeln!(out)?;
            }
        }
    }
    Ok(())
}

/// Writes one thing: a JSON object (pretty, or on one line), or `text` for people.
pub(super) fn one<T: Serialize>(
    out: &mut dyn Write,
    output: Output,
    value: &T,
    text: impl FnOnce(&mut dyn Write, &T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match output {
        Output::Table => text(out, value)?,
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, value)?;
            writeln!(out)?;
        }
        Output::Jsonl => {
            serde_json::to_writer(&mut *out, value)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

/// A time as people and scripts read it: RFC 3339 in UTC, `never` for [`Timestamp::MAX`].
pub(super) fn time(at: Timestamp) -> String {
    if at == Timestamp::MAX {
        "never".into()
    } else {
        at.to_string()
    }
}

/// `#[serde(serialize_with = "rfc3339")]`: a time as an RFC 3339 string; [`Timestamp::MAX`]
/// ("never") as `null`.
pub(super) fn rfc3339<S: serde::Serializer>(at: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    if *at == Timestamp::MAX {
        s.serialize_none()
    } else {
        s.collect_str(at)
    }
}

/// [`rfc3339`] for an optional time.
pub(super) fn rfc3339_opt<S: serde::Serializer>(
    at: &Option<Timestamp>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct At {
        #[serde(serialize_with = "rfc3339")]
        at: Timestamp,
        #[serde(serialize_with = "rfc3339_opt")]
        maybe: Option<Timestamp>,
    }

    #[test]
    fn it_writes_times_as_rfc3339_strings() {
        let at = At {
            at: Timestamp::from_micros(1_000_000),
            maybe: Some(Timestamp::MAX),
        };
        assert_eq!(
            serde_json::to_string(&at).unwrap(),
            r#"{"at":"1970-01-01T00:00:01.000000Z","maybe":null}"#
        );
    }

    #[test]
    fn it_aligns_columns_past_long_ids() {
        let mut t = table(["id", "status"]);
        t.add_row([
            "a-very-long-instance-id-that-is-longer-than-forty-characters",
            "running",
        ]);
        t.add_row(["short", "failed"]);
        let text = t.trim_fmt();
        let columns: Vec<usize> = text.lines().map(|l| l.rfind(' ').unwrap()).collect();
        assert!(columns.windows(2).all(|w| w[0] == w[1]), "{text}");
    }
}
