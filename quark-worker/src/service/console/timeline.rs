//! The history of one instance as a timeline (inline SVG): a bar per activity, timer, child or
//! update from its start to its end, and the signals and other events as marks.

use std::fmt::Write;

use super::super::proto;
use super::html::esc;

/// A history event, its JSON body parsed.
pub(super) struct Event {
    pub(super) seq: u64,
    pub(super) at: Option<prost_types::Timestamp>,
    pub(super) kind: String,
    /// The event's fields (the JSON object under its kind).
    pub(super) body: serde_json::Value,
    /// The fields as compact JSON, cut to a table cell's length.
    pub(super) detail: String,
}

impl From<proto::HistoryEvent> for Event {
    fn from(e: proto::HistoryEvent) -> Event {
        let parsed: serde_json::Value = serde_json::from_str(&e.detail_json).unwrap_or_default();
        let body = parsed.get(&e.kind).cloned().unwrap_or(parsed);
        let mut detail = body.to_string();
        if detail.len() > 240 {
            let cut = detail.floor_char_boundary(237);
            detail.truncate(cut);
            detail.push('…');
        }
        Event {
            seq: e.seq,
            at: e.recorded_at,
            kind: e.kind,
            body,
            detail,
        }
    }
}

fn micros(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
}

/// The history as a timeline: one row per command (an activity, a timer, a child) or update,
/// a bar from its start to its end (to the last event while it is pending), and the signals
/// and other single events as marks on the first row.
pub(super) fn timeline(events: &[Event]) -> String {
    struct Bar {
        label: String,
        from: i64,
        to: Option<i64>,
        class: &'static str,
    }
    let mut bars: Vec<Bar> = Vec::new();
    let mut marks: Vec<(i64, String)> = Vec::new();
    let command = |e: &Event| e.body.get("command").and_then(serde_json::Value::as_u64);
    let update = |e: &Event| {
        e.body
            .get("update_id")
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let mut keys: Vec<String> = Vec::new();
    for e in events {
        let at = micros(e.at.as_ref());
        let text = |k: &str| {
            e.body
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (key, label, class) = match e.kind.as_str() {
            "ActivityScheduled" => (
                command(e).map(|c| format!("c{c}")),
                text("activity"),
                "activity",
            ),
            "TimerCreated" => (
                command(e).map(|c| format!("c{c}")),
                "timer".to_string(),
                "timer",
            ),
            "ChildStarted" => (
                command(e).map(|c| format!("c{c}")),
                text("instance_type"),
                "child",
            ),
            "UpdateAccepted" => (
                update(e).map(|u| format!("u{u}")),
                format!("update {}", text("name")),
                "update",
            ),
            "ActivityCompleted" | "ActivityFailed" | "TimerFired" | "TimerCancelled"
            | "ChildCompleted" | "ChildFailed" => {
                if let Some(i) =
                    command(e).and_then(|c| keys.iter().position(|k| *k == format!("c{c}")))
                {
                    bars[i].to = Some(at);
                    if e.kind.ends_with("Failed") {
                        bars[i].class = "failed";
                    }
                }
                continue;
            }
            "UpdateCompleted" => {
                if let Some(i) =
                    update(e).and_then(|u| keys.iter().position(|k| *k == format!("u{u}")))
                {
                    bars[i].to = Some(at);
                }
                continue;
            }
            "SignalReceived" => {
                marks.push((at, format!("signal {}", text("name"))));
                continue;
            }
            other => {
                marks.push((at, other.to_string()));
                continue;
            }
        };
        if let Some(key) = key {
            keys.push(key);
            bars.push(Bar {
                label,
                from: at,
                to: None,
                class,
            });
        }
    }
    let start = events.first().map_or(0, |e| micros(e.at.as_ref()));
    let end = events.last().map_or(0, |e| micros(e.at.as_ref()));
    let span = (end - start).max(1) as f64;
    const W: f64 = 900.0;
    const LABEL: f64 = 180.0;
    const ROW: f64 = 22.0;
    let x = |t: i64| LABEL + (t - start) as f64 / span * (W - LABEL - 10.0);
    let height = ROW * (bars.len() as f64 + 2.0);
    let mut out = format!(
        "<div class=\"live\" data-live=\"timeline\" id=\"timeline\"><svg class=\"timeline\" viewBox=\"0 0 {W} {height}\" \
         role=\"img\" aria-label=\"timeline of the history\">\
         <text x=\"4\" y=\"{}\" class=\"row-label\">events</text>",
        ROW * 0.7
    );
    for (at, label) in &marks {
        let _ = write!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{}\" r=\"4\" class=\"mark\"><title>{}</title></circle>",
            x(*at),
            ROW * 0.5,
            esc(label)
        );
    }
    for (i, bar) in bars.iter().enumerate() {
        let y = ROW * (i as f64 + 1.0);
        let (from, to) = (x(bar.from), x(bar.to.unwrap_or(end)));
        let pending = if bar.to.is_none() { " pending" } else { "" };
        let _ = write!(
            out,
            "<text x=\"4\" y=\"{:.1}\" class=\"row-label\">{}</text>\
             <rect x=\"{from:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" class=\"bar {}{pending}\">\
             <title>{}</title></rect>",
            y + ROW * 0.7,
            esc(&bar.label),
            y + 4.0,
            (to - from).max(3.0),
            ROW - 8.0,
            bar.class,
            esc(&bar.label)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{LABEL}\" y=\"{:.1}\" class=\"tick\">start</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" class=\"tick end\">+{:.3} s</text></svg></div>",
        height - 4.0,
        W - 10.0,
        height - 4.0,
        span / 1e6
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, secs: i64, kind: &str, body: serde_json::Value) -> Event {
        Event::from(proto::HistoryEvent {
            seq,
            recorded_at: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            kind: kind.into(),
            detail_json: serde_json::json!({ kind: body }).to_string(),
            hash: String::new(),
        })
    }

    #[test]
    fn the_timeline_draws_a_bar_per_command_and_marks_signals() {
        let events = [
            event(1, 0, "WorkflowStarted", serde_json::json!({})),
            event(
                2,
                1,
                "ActivityScheduled",
                serde_json::json!({"command": 1, "activity": "charge<x>"}),
            ),
            event(3, 5, "ActivityCompleted", serde_json::json!({"command": 1})),
            event(
                4,
                6,
                "SignalReceived",
                serde_json::json!({"name": "approve"}),
            ),
            event(5, 7, "TimerCreated", serde_json::json!({"command": 2})),
        ];
        let svg = timeline(&events);
        assert_eq!(svg.matches("<rect").count(), 2, "{svg}");
        assert!(svg.contains("charge&lt;x&gt;"), "escaped: {svg}");
        assert!(svg.contains("signal approve"));
        assert_eq!(
            svg.matches("pending").count(),
            1,
            "the timer has not fired: {svg}"
        );
        assert_eq!(
            svg.matches("<circle").count(),
            2,
            "started and the signal: {svg}"
        );
    }
}
