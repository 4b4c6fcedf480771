//! Between the API's messages and Quark's own types. What comes in is checked here: a malformed
//! field is INVALID_ARGUMENT naming the field, before anything is read or written.

use quark_history::{CodecTag, InstanceRecord, InstanceStatus, Payload, Timestamp};
use tonic::Status;

use super::proto;

/// A payload from a request: `field` names it in the error. An absent payload is JSON `null`;
/// a JSON payload must be valid JSON (a postcard one is checked by whoever decodes it).
pub(crate) fn payload_in(field: &str, p: Option<proto::Payload>) -> Result<Payload, Status> {
    let Some(p) = p else {
        return Ok(Payload::unit());
    };
    let codec = match p.codec.as_str() {
        "" | "json" => CodecTag::Json,
        "postcard" => CodecTag::Postcard,
        other => {
            return Err(Status::invalid_argument(format!(
                "{field}: unknown codec `{other}` (expected \"json\" or \"postcard\")"
            )));
        }
    };
    if codec == CodecTag::Json
        && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&p.data)
    {
        return Err(Status::invalid_argument(format!(
            "{field}: not valid JSON: {e}"
        )));
    }
    Ok(Payload::from_bytes(codec, p.data))
}

/// A payload for a response.
pub(crate) fn payload_out(p: &Payload) -> proto::Payload {
    proto::Payload {
        codec: match p.codec() {
            CodecTag::Postcard => "postcard",
            _ => "json",
        }
        .to_string(),
        data: p.as_bytes().to_vec(),
    }
}

/// A time for a response.
pub(crate) fn time_out(t: Timestamp) -> prost_types::Timestamp {
    let micros = t.as_micros();
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// A time from a request; `field` names it in the error.
pub(crate) fn time_in(field: &str, t: prost_types::Timestamp) -> Result<Timestamp, Status> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(Status::invalid_argument(format!(
            "{field}: nanos {} out of range",
            t.nanos
        )));
    }
    t.seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(t.nanos / 1_000)))
        .map(Timestamp::from_micros)
        .ok_or_else(|| Status::invalid_argument(format!("{field}: out of range")))
}

/// A status for a response.
pub(crate) fn status_out(s: InstanceStatus) -> proto::WorkflowStatus {
    use proto::WorkflowStatus as W;
    match s {
        InstanceStatus::Running => W::Running,
        InstanceStatus::Blocked => W::Blocked,
        InstanceStatus::Completed => W::Completed,
        InstanceStatus::Failed => W::Failed,
        InstanceStatus::Cancelled => W::Cancelled,
        InstanceStatus::Terminated => W::Terminated,
        InstanceStatus::ContinuedAsNew => W::ContinuedAsNew,
        // Streams are not listed as workflows; a describe of one is refused before this.
        _ => W::Unspecified,
    }
}

/// A status from a request.
pub(crate) fn status_in(value: i32) -> Result<InstanceStatus, Status> {
    use proto::WorkflowStatus as W;
    match W::try_from(value) {
        Ok(W::Running) => Ok(InstanceStatus::Running),
        Ok(W::Blocked) => Ok(InstanceStatus::Blocked),
        Ok(W::Completed) => Ok(InstanceStatus::Completed),
        Ok(W::Failed) => Ok(InstanceStatus::Failed),
        Ok(W::Cancelled) => Ok(InstanceStatus::Cancelled),
        Ok(W::Terminated) => Ok(InstanceStatus::Terminated),
        Ok(W::ContinuedAsNew) => Ok(InstanceStatus::ContinuedAsNew),
        Ok(W::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "statuses: {value} is not a workflow status"
        ))),
    }
}

/// An instance for a response.
pub(crate) fn workflow_out(r: &InstanceRecord) -> proto::Workflow {
    proto::Workflow {
        instance_id: r.id.clone(),
        workflow_type: r.instance_type.clone(),
        version: r.version,
        status: status_out(r.status) as i32,
        input: Some(payload_out(&r.input)),
        output: r.output.as_ref().map(payload_out),
        parent_id: r.parent_id.clone().unwrap_or_default(),
        queue: r.queue.clone(),
        history_length: r.history_len,
        history_bytes: r.history_bytes,
        affinity: r.affinity.clone().unwrap_or_default(),
        created_at: Some(time_out(r.created_at)),
        updated_at: Some(time_out(r.updated_at)),
        blocked: r.blocked.as_ref().map(|b| proto::BlockedTurn {
            task_id: b.task_id,
            error: b.error.clone(),
            since: Some(time_out(b.since)),
        }),
    }
}

/// The page token after `(created_at, id)`: opaque to callers (it reads as the command line's
/// `--after` cursor, `MICROS/ID`).
pub(crate) fn page_token_out(created_at: Timestamp, id: &str) -> String {
    format!("{}/{id}", created_at.as_micros())
}

/// The cursor of a page token.
pub(crate) fn page_token_in(token: &str) -> Result<Option<(Timestamp, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument("page_token: not a token this server gave out");
    let (micros, id) = token.split_once('/').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    Ok(Some((Timestamp::from_micros(micros), id.to_string())))
}

/// A required string field: present and not blank.
pub(crate) fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(value)
}

/// A duration from a request; `field` names it in the error.
pub(crate) fn duration_in(
    field: &str,
    d: prost_types::Duration,
) -> Result<std::time::Duration, Status> {
    std::time::Duration::try_from(d).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// A duration for a response.
pub(crate) fn duration_out(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// A page size: 0 is 100, more than 1,000 is 1,000.
pub(crate) fn page_size(n: u32) -> u32 {
    match n {
        0 => 100,
        n => n.min(1000),
    }
}
