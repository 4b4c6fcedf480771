//! The console's job pages: jobs by queue and state, with their throughput and latency over time,
//! and the controls of one job (cancel, retry, pause, resume).

use std::fmt::Write;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use tonic::Status;

use super::super::proto::{self, job_service_server::JobService};
use super::html::{self, attr, esc};
use super::{Console, Posted, done, done_notice, field, ok, query, signed_in};

pub(super) fn routes() -> Router<Console> {
    Router::new()
        .route("/ui/jobs", get(jobs))
        .route("/ui/jobs/{id}/{action}", post(job_action))
}

const JOB_STATES: [(proto::JobState, &str); 10] = [
    (proto::JobState::Pending, "pending"),
    (proto::JobState::Scheduled, "scheduled"),
    (proto::JobState::Retrying, "retrying"),
    (proto::JobState::Paused, "paused"),
    (proto::JobState::Waiting, "waiting"),
    (proto::JobState::Running, "running"),
    (proto::JobState::Cancelling, "cancelling"),
    (proto::JobState::Completed, "completed"),
    (proto::JobState::Cancelled, "cancelled"),
    (proto::JobState::Dead, "dead"),
];

fn job_state(value: i32) -> &'static str {
    JOB_STATES
        .iter()
        .find(|(s, _)| *s as i32 == value)
        .map_or("unknown", |(_, n)| n)
}

fn micros(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
}

/// Throughput (jobs finished a minute) and latency (seconds from due to finished, on average)
/// over time, from the jobs that finished: `BUCKETS` buckets over the span they cover.
fn job_chart(finished: &[proto::Job]) -> String {
    const BUCKETS: usize = 30;
    let points: Vec<(i64, f64)> = finished
        .iter()
        .filter_map(|j| {
            let end = micros(j.finished_at.as_ref())?;
            let due = micros(j.run_at.as_ref()).or(micros(j.created_at.as_ref()))?;
            Some((end, (end - due).max(0) as f64 / 1e6))
        })
        .collect();
    if points.len() < 2 {
        return html::notice(
            "ok",
            "Too few finished jobs yet for a chart of throughput and latency.",
        );
    }
    let start = points.iter().map(|p| p.0).min().unwrap_or(0);
    let end = points.iter().map(|p| p.0).max().unwrap_or(0);
    let width = ((end - start) / BUCKETS as i64).max(1_000_000);
    let mut counts = [0u32; BUCKETS + 1];
    let mut waits = [0f64; BUCKETS + 1];
    for (at, wait) in &points {
        let i = (((at - start) / width) as usize).min(BUCKETS);
        counts[i] += 1;
        waits[i] += wait;
    }
    let minutes = width as f64 / 60e6;
    let throughput = html::Series {
        name: "finished per minute",
        points: counts
            .iter()
            .enumerate()
            .map(|(i, n)| (i as f64, f64::from(*n) / minutes))
            .collect(),
    };
    let latency = html::Series {
        name: "latency",
        points: counts
            .iter()
            .zip(&waits)
            .enumerate()
            .filter(|(_, (n, _))| **n > 0)
            .map(|(i, (n, w))| (i as f64, w / f64::from(*n)))
            .collect(),
    };
    let label = |t: i64| {
        let full = quark_history::Timestamp::from_micros(t).to_string();
        full.get(..16).unwrap_or(&full).replace('T', " ")
    };
    html::line_chart(
        "Jobs over time",
        &[throughput, latency],
        (&label(start), &label(end)),
        &["/min", " s"],
    )
}

async fn jobs(
    State(console): State<Console>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let fields = query(raw.as_deref());
        let (queue, state) = (field(&fields, "queue"), field(&fields, "state"));
        let states = JOB_STATES
            .iter()
            .filter(|(_, n)| *n == state)
            .map(|(s, _)| *s as i32)
            .collect();
        let listed = console
            .jobs
            .list_jobs(session.call(proto::ListJobsRequest {
                queue: queue.to_string(),
                states,
                page_size: 100,
                page_token: field(&fields, "page").to_string(),
            }))
            .await?
            .into_inner();
        let finished = console
            .jobs
            .list_jobs(session.call(proto::ListJobsRequest {
                queue: queue.to_string(),
                states: vec![
                    proto::JobState::Completed as i32,
                    proto::JobState::Dead as i32,
                ],
                page_size: 1000,
                page_token: String::new(),
            }))
            .await?
            .into_inner()
            .jobs;
        let csrf = session.csrf();
        let mut state_options = String::from("<option value=\"\">any state</option>");
        for (_, name) in JOB_STATES {
            let selected = if name == state { " selected" } else { "" };
            let _ = write!(
                state_options,
                "<option value=\"{name}\"{selected}>{name}</option>"
            );
        }
        let mut body = done_notice(&fields);
        let _ = write!(
            body,
            "<form method=\"get\" action=\"/ui/jobs\" class=\"filters\">\
             <label>Queue <input name=\"queue\" value=\"{}\" placeholder=\"any queue\"></label>\
             <label>State <select name=\"state\">{state_options}</select></label>\
             <button type=\"submit\">Filter</button></form>",
            attr(queue)
        );
        body.push_str("<div class=\"live\" data-live=\"chart\" id=\"chart\">");
        body.push_str(&job_chart(&finished));
        body.push_str("</div>");
        let rows: Vec<Vec<String>> = listed
            .jobs
            .iter()
            .map(|j| {
                let s = job_state(j.state);
                let base = format!("/ui/jobs/{}", j.id);
                let mut actions = String::new();
                if matches!(
                    s,
                    "pending" | "scheduled" | "retrying" | "paused" | "waiting" | "running"
                ) {
                    actions.push_str(&html::form(
                        &format!("{base}/cancel"),
                        &csrf,
                        "",
                        "Cancel",
                        Some("Cancel this job?"),
                    ));
                }
                if matches!(s, "dead" | "cancelled") {
                    actions.push_str(&html::form(
                        &format!("{base}/retry"),
                        &csrf,
                        "",
                        "Retry",
                        None,
                    ));
                }
                if matches!(s, "pending" | "scheduled" | "retrying") {
                    actions.push_str(&html::form(
                        &format!("{base}/pause"),
                        &csrf,
                        "",
                        "Pause",
                        None,
                    ));
                }
                if s == "paused" {
                    actions.push_str(&html::form(
                        &format!("{base}/resume"),
                        &csrf,
                        "",
                        "Resume",
                        None,
                    ));
                }
                let progress = j.progress.as_ref().map_or(String::new(), |p| {
                    let percent = p.percent.map_or(String::new(), |v| format!("{v:.0} % "));
                    esc(&format!("{percent}{}", p.message))
                });
                vec![
                    j.id.to_string(),
                    esc(&j.activity),
                    esc(&j.queue),
                    html::badge(s),
                    j.attempts.to_string(),
                    progress,
                    html::time(j.created_at.as_ref()),
                    html::time(j.finished_at.as_ref()),
                    esc(&j.error),
                    actions,
                ]
            })
            .collect();
        body.push_str(&html::table(
            "jobs",
            &[
                "Id", "Activity", "Queue", "State", "Attempts", "Progress", "Created", "Finished",
                "Error", "",
            ],
            &rows,
            "No job matches these filters.",
        ));
        ok("Jobs", "/ui/jobs", &session, &body)
    })
    .await
}

async fn job_action(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((id, action)): Path<(i64, String)>,
    body: Bytes,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        Posted::check(&session, &body)?;
        let j = &console.jobs;
        match action.as_str() {
            "cancel" => drop(
                j.cancel_job(session.call(proto::CancelJobRequest { job_id: id }))
                    .await?,
            ),
            "retry" => drop(
                j.retry_job(session.call(proto::RetryJobRequest { job_id: id }))
                    .await?,
            ),
            "pause" => drop(
                j.pause_job(session.call(proto::PauseJobRequest { job_id: id }))
                    .await?,
            ),
            "resume" => drop(
                j.resume_job(session.call(proto::ResumeJobRequest { job_id: id }))
                    .await?,
            ),
            other => return Err(Status::not_found(format!("no action `{other}`"))),
        }
        done("/ui/jobs", &format!("Job {id}: {action} done."))
    })
    .await
}
