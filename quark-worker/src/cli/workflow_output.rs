//! What the `workflow` commands print, whether they read the database or a server
//! (`--server`): the same views, tables and JSON either way.

use std::io::Write;

use quark_history::{InstanceRecord, RecordedEvent, Timestamp};
use serde::Serialize;

use super::output::{self, Output, rfc3339, table, write_table};

/// An instance, as listed and described.
#[derive(Debug, Serialize)]
pub(super) struct InstanceView {
    id: String,
    instance_type: String,
    version: u32,
    status: &'static str,
    queue: String,
    history_len: u64,
    history_bytes: u64,
    input: Option<serde_json::Value>,
    output: Option<serde_json::Value>,
    parent_id: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    created_at: Timestamp,
    #[serde(serialize_with = "rfc3339")]
    updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked: Option<BlockedView>,
    /// Where the next page starts, for `--after`.
    cursor: String,
}

#[derive(Debug, Serialize)]
struct BlockedView {
    task_id: i64,
    error: String,
    #[serde(serialize_with = "rfc3339")]
    since: Timestamp,
}

impl From<InstanceRecord> for InstanceView {
    fn from(i: InstanceRecord) -> Self {
        InstanceView {
            cursor: format!("{}/{}", i.created_at.as_micros(), i.id),
            input: i.input.decode().ok(),
            output: i.output.as_ref().and_then(|o| o.decode().ok()),
            id: i.id,
            instance_type: i.instance_type,
            version: i.version,
            status: i.status.as_str(),
            queue: i.queue,
            history_len: i.history_len,
            history_bytes: i.history_bytes,
            parent_id: i.parent_id,
            created_at: i.created_at,
            updated_at: i.updated_at,
            blocked: i.blocked.map(|b| BlockedView {
                task_id: b.task_id,
                error: b.error,
                since: b.since,
            }),
        }
    }
}

/// What a command that changes an instance did.
#[derive(Debug, Serialize)]
pub(super) struct Changed {
    pub(super) id: String,
    /// `started`, `signalled`, `cancel_requested` or `terminated`.
    pub(super) action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) instance_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) signal: Option<String>,
}

impl Changed {
    fn new(id: String, action: &'static str) -> Changed {
        Changed {
            id,
            action,
            instance_type: None,
            signal: None,
        }
    }

    /// `id` was started as an instance of `instance_type`.
    pub(super) fn started(id: String, instance_type: String) -> Changed {
        Changed {
            instance_type: Some(instance_type),
            ..Changed::new(id, "started")
        }
    }

    /// `id` received signal `name`.
    pub(super) fn signalled(id: String, name: String) -> Changed {
        Changed {
            signal: Some(name),
            ..Changed::new(id, "signalled")
        }
    }

    /// `id` was asked to cancel.
    pub(super) fn cancel_requested(id: String) -> Changed {
        Changed::new(id, "cancel_requested")
    }

    /// `id` was terminated.
    pub(super) fn terminated(id: String) -> Changed {
        Changed::new(id, "terminated")
    }
}

/// What `workflow start|signal|cancel|terminate` print.
pub(super) fn print_changed(
    out: &mut dyn Write,
    output: Output,
    changed: &Changed,
) -> anyhow::Result<()> {
    output::one(out, output, changed, |out, c| {
        match c.action {
            "started" => writeln!(
                out,
                "started {} ({})",
                c.id,
                c.instance_type.as_deref().unwrap_or("")
            )?,
            "signalled" => writeln!(
                out,
                "signalled {}: {}",
                c.id,
                c.signal.as_deref().unwrap_or("")
            )?,
            "cancel_requested" => writeln!(out, "cancellation requested for {}", c.id)?,
            _ => writeln!(out, "terminated {}", c.id)?,
        }
        Ok(())
    })
}

/// What `workflow list` prints: a page, and where the next one starts if it is full.
pub(super) fn print_list(
    out: &mut dyn Write,
    output: Output,
    page: Vec<InstanceRecord>,
    limit: u32,
) -> anyhow::Result<()> {
    let page: Vec<InstanceView> = page.into_iter().map(InstanceView::from).collect();
    output::rows(out, output, &page, |out, page| {
        let mut t = table(["id", "type", "status", "events", "created"]);
        for i in page {
            t.add_row([
                i.id.clone(),
                i.instance_type.clone(),
                i.status.to_string(),
                i.history_len.to_string(),
                i.created_at.to_string(),
            ]);
        }
        write_table(out, &t)?;
        if page.len() as u32 == limit
            && let Some(last) = page.last()
        {
            writeln!(out, "\nmore: --after {}", last.cursor)?;
        }
        Ok(())
    })
}

/// What `workflow describe` prints.
pub(super) fn print_describe(
    out: &mut dyn Write,
    output: Output,
    instance: InstanceRecord,
) -> anyhow::Result<()> {
    output::one(out, output, &InstanceView::from(instance), describe)
}

/// What `workflow history` prints: a table, or the events as the replayer reads them.
pub(super) fn print_history(
    out: &mut dyn Write,
    output: Output,
    history: &[RecordedEvent],
) -> anyhow::Result<()> {
    output::rows(out, output, history, |out, history| {
        let mut t = table(["seq", "recorded at", "event", "detail"]);
        for e in history {
            let detail = serde_json::to_value(&e.event)?;
            let detail = detail
                .as_object()
                .and_then(|o| o.values().next())
                .map(|v| v.to_string())
                .unwrap_or_default();
            let detail: String = detail.chars().take(100).collect();
            t.add_row([
                e.seq.to_string(),
                e.recorded_at.to_string(),
                e.event.kind().to_string(),
                detail,
            ]);
        }
        write_table(out, &t)
    })
}

fn describe(out: &mut dyn Write, i: &InstanceView) -> anyhow::Result<()> {
    writeln!(
        out,
        "id:       {}\ntype:     {} (version {})\nstatus:   {}",
        i.id, i.instance_type, i.version, i.status
    )?;
    if let Some(turn) = &i.blocked {
        writeln!(
            out,
            "blocked:  since {}, by dead turn {} (fix the code, deploy it, then \
             `quark dlq redrive {}`)\nerror:    {}",
            turn.since, turn.task_id, turn.task_id, turn.error
        )?;
    }
    writeln!(
        out,
        "created:  {}\nupdated:  {}",
        i.created_at, i.updated_at
    )?;
    writeln!(
        out,
        "history:  {} events, {} bytes",
        i.history_len, i.history_bytes
    )?;
    let json = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .map_or_else(|| "(not JSON)".to_string(), |v| v.to_string())
    };
    writeln!(out, "input:    {}", json(&i.input))?;
    if i.output.is_some() {
        writeln!(out, "output:   {}", json(&i.output))?;
    }
    if let Some(p) = &i.parent_id {
        writeln!(out, "parent:   {p}")?;
    }
    Ok(())
}

/// What `workflow query|update` print: the answer, and what it answers.
#[derive(Debug, Serialize)]
pub(super) struct Answered {
    pub(super) id: String,
    /// `query` or `update`.
    pub(super) kind: &'static str,
    pub(super) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) update_id: Option<String>,
    /// The query's answer or the update's result, as JSON (or a note on a binary value).
    pub(super) answer: serde_json::Value,
}

impl Answered {
    fn value(p: &quark_history::Payload) -> serde_json::Value {
        p.decode().unwrap_or_else(|_| {
            serde_json::Value::String(format!("<{} bytes of {:?}>", p.len(), p.codec()))
        })
    }

    /// Query `name` of `id` answered `answer`.
    pub(super) fn query(id: String, name: String, answer: &quark_history::Payload) -> Answered {
        Answered {
            id,
            kind: "query",
            name,
            update_id: None,
            answer: Self::value(answer),
        }
    }

    /// Update `name` (`update_id`) of `id` returned `result`.
    pub(super) fn update(
        id: String,
        name: String,
        update_id: String,
        result: &quark_history::Payload,
    ) -> Answered {
        Answered {
            id,
            kind: "update",
            name,
            update_id: Some(update_id),
            answer: Self::value(result),
        }
    }
}

/// What `workflow query|update` print: the answer as JSON on one line, or the whole record.
pub(super) fn print_answer(
    out: &mut dyn Write,
    output: Output,
    answered: Answered,
) -> anyhow::Result<()> {
    output::one(out, output, &answered, |out, a| {
        writeln!(out, "{}", a.answer)?;
        Ok(())
    })
}
