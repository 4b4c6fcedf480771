//! Cron schedules: a durable job enqueued at every tick of a cron expression.
//!
//! The guide is on [`Schedule`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use quark_history::{
    Fire, Missed, NewTask, ScheduleRecord, ScheduleSpec, TaskKind, Timestamp, Upserted,
};

use crate::client::{Client, ClientError};
use crate::definition::Activity;
use crate::job::JobOptions;

/// How old the most recent due tick may be and still fire as on time under [`Missed::Skip`]
/// (and without counting as missed under [`Missed::Backfill`]): one minute.
pub const LATE_TICK_GRACE: Duration = Duration::from_secs(60);

/// A schedule that cannot be declared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse. Fix it; the message says which field is wrong.
    #[error(
        "invalid cron expression `{expr}`: {reason} (expected 5 fields `min hour dom month dow`, 6 with seconds first, or 7 with a year last)"
    )]
    InvalidCron {
        /// The expression.
        expr: String,
        /// Why, as croner says it.
        reason: String,
    },
    /// The time zone is not an IANA zone name this build knows.
    #[error("unknown time zone `{0}`: expected an IANA name such as `UTC` or `Europe/Berlin`")]
    UnknownTimezone(String),
    /// The expression has no tick after the given time (a date that does not exist, or a year in
    /// the past): it would never fire.
    #[error("cron expression `{expr}` never fires after {after}")]
    NeverFires {
        /// The expression.
        expr: String,
        /// When the search started.
        after: Timestamp,
    },
}

/// When a schedule fires: a cron expression in a time zone, and what to do with missed ticks.
///
/// A schedule is a cron expression read in an IANA time zone, with a policy for ticks missed
/// while no worker ran ([`Missed`]). [`Client::schedule`] registers one against an activity, with
/// the job's input and [`JobOptions`], under a unique name; every worker fires the schedules in its
/// store (see `quark_worker::WorkerBuilder::schedules`), and a compare-and-set in the store makes
/// each tick enqueue exactly one job however many workers race for it.
///
/// - **Expressions** are [croner](https://docs.rs/croner)'s: five fields (`min hour dom month
///   dow`), or six with seconds first, or seven with a year last; ranges, steps, names (`MON`,
///   `JAN`), `L`, `W`, `#` and the `@hourly`-style nicknames. Day of month and day of week are
///   OR-ed, as in Vixie cron.
/// - **Time zones** are IANA names (`UTC`, the default, or `Europe/Berlin`); daylight saving time is
///   handled as croner does: a wall-clock time skipped by a spring-forward fires once, right
///   after the gap; a fixed time repeated by a fall-back fires once, at its first occurrence; an
///   interval (`0 */30 * * * *`) fires on elapsed time through the repeated hour.
/// - **Errors come at declaration**: an invalid expression, an unknown zone or an expression with
///   no tick left is a [`ScheduleError`] from [`Schedule::cron`] or [`Schedule::timezone`], never
///   a surprise at fire time.
/// - **A tick's job** runs the activity with the registered input, on the registered queue and
///   priority, and is enqueued visible at its tick (its `run_at` is the tick). Jobs of backfilled
///   ticks are separate jobs, oldest first.
/// - **Missed ticks**: the most recent due tick is *on time* if it is at most [`LATE_TICK_GRACE`]
///   old, and fires under either policy (a worker restart or a busy moment loses nothing). Every
///   other due tick is missed: [`Missed::Skip`] drops them, [`Missed::Backfill`]`(n)` enqueues
///   the `n` most recent of them. Then the schedule goes on with the next tick to come.
/// - **Registration is idempotent**: registering the same spec again (every worker at startup,
///   say) writes nothing; a changed input, queue, priority or policy keeps the next tick; a
///   changed expression or zone starts again from the next tick of the new timing.
///
/// ```no_run
/// # use quark_workflow::{ActivityContext, ActivityError, Client, JobOptions, Missed, Schedule, activity};
/// #[activity]
/// async fn send_report(_ctx: ActivityContext, team: String) -> Result<(), ActivityError> {
///     let _ = team;
///     Ok(())
/// }
///
/// # async fn demo(client: &Client) -> Result<(), Box<dyn std::error::Error>> {
/// // Every weekday at 09:00 in Berlin; after downtime, catch up on at most 3 missed reports.
/// let schedule = Schedule::cron("0 0 9 * * MON-FRI")?
///     .timezone("Europe/Berlin")?
///     .missed(Missed::Backfill(3));
/// client
///     .schedule::<send_report>("daily-report", &"ops".to_string(), JobOptions::default(), schedule)
///     .await?;
/// for s in client.schedules().await? {
///     println!("{} next at {}", s.spec.name, s.next_at);
/// }
/// client.unschedule("daily-report").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    tz: Tz,
    missed: Missed,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("cron", &self.expr)
            .field("timezone", &self.tz.name())
            .field("missed", &self.missed)
            .finish()
    }
}

impl Schedule {
    /// A schedule on cron expression `expr` (see [`Schedule`]), in UTC, skipping
    /// missed ticks. Fails on an expression that does not parse or never fires.
    pub fn cron(expr: &str) -> Result<Self, ScheduleError> {
        let expr = expr.trim();
        let cron = Cron::from_str(expr).map_err(|e| ScheduleError::InvalidCron {
            expr: expr.to_string(),
            reason: e.to_string(),
        })?;
        let schedule = Schedule {
            expr: expr.to_string(),
            cron,
            tz: Tz::UTC,
            missed: Missed::Skip,
        };
        schedule.check_fires()?;
        Ok(schedule)
    }

    /// Reads the expression in IANA time zone `name` (default `UTC`).
    pub fn timezone(mut self, name: &str) -> Result<Self, ScheduleError> {
        self.tz = Tz::from_str(name.trim())
            .map_err(|_| ScheduleError::UnknownTimezone(name.to_string()))?;
        self.check_fires()?;
        Ok(self)
    }

    /// Sets the missed-tick policy (default [`Missed::Skip`]).
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    /// The schedule a stored spec describes.
    pub fn from_spec(spec: &ScheduleSpec) -> Result<Self, ScheduleError> {
        Ok(Schedule::cron(&spec.cron)?
            .timezone(&spec.timezone)?
            .missed(spec.missed))
    }

    /// The expression, as given (trimmed).
    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// The time zone's IANA name.
    pub fn timezone_name(&self) -> &str {
        self.tz.name()
    }

    /// The missed-tick policy.
    pub fn missed_policy(&self) -> Missed {
        self.missed
    }

    fn check_fires(&self) -> Result<(), ScheduleError> {
        // The epoch rather than now: no clock read here, and an expression that has a tick
        // after now has one after the epoch.
        let from = Timestamp::EPOCH;
        match self.next_after(from) {
            Some(_) => Ok(()),
            None => Err(ScheduleError::NeverFires {
                expr: self.expr.clone(),
                after: from,
            }),
        }
    }

    fn zoned(&self, t: Timestamp) -> Option<DateTime<Tz>> {
        DateTime::<Utc>::from_timestamp_micros(t.as_micros()).map(|d| d.with_timezone(&self.tz))
    }

    /// The first tick strictly after `t`, or `None` if there is none.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let at = self.zoned(t)?;
        let next = self.cron.find_next_occurrence(&at, false).ok()?;
        Some(Timestamp::from_micros(next.timestamp_micros()))
    }

    /// The last tick at or before `t`, or `None` if there is none.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let at = self.zoned(t)?;
        let previous = self.cron.find_previous_occurrence(&at, true).ok()?;
        Some(Timestamp::from_micros(previous.timestamp_micros()))
    }

    /// The fire that a worker should attempt at `now` for schedule `name`, whose next tick in the
    /// store is `next_at` (due: `next_at <= now`). Its ticks follow the missed-tick policy (see
    /// the [`Schedule`] docs); its new `next_at` is the first tick after `now`
    /// ([`Timestamp::MAX`] if there is none).
    pub fn fire(&self, name: &str, next_at: Timestamp, now: Timestamp) -> Fire {
        let backfill = self.missed.backfill() as usize;
        // At most one on-time tick, and `backfill` missed ones.
        let keep = backfill.saturating_add(1);
        // Walk back from now: the due ticks, newest first, no more than the policy can use (a
        // per-second expression after a month of downtime has millions).
        let mut due = Vec::new();
        let mut tick = self.last_at_or_before(now);
        while let Some(t) = tick.filter(|t| *t >= next_at) {
            if due.len() == keep {
                break;
            }
            due.push(t);
            tick = t
                .as_micros()
                .checked_sub(1)
                .and_then(|before| self.last_at_or_before(Timestamp::from_micros(before)));
        }
        let on_time = due
            .first()
            .is_some_and(|t| now.since(*t) <= LATE_TICK_GRACE);
        if !on_time {
            // Every due tick is missed: `due` holds one more than the policy keeps.
            due.truncate(backfill);
        }
        let mut ticks = due;
        ticks.reverse();
        Fire {
            name: name.to_string(),
            expected_next_at: next_at,
            next_at: self.next_after(now).unwrap_or(Timestamp::MAX),
            ticks,
        }
    }

    /// The stored spec of this schedule under `name`, enqueueing `job` (a task of kind
    /// [`TaskKind::Job`], as [`job_task`](crate::runner::job_task) builds) at every tick.
    pub fn spec(&self, name: &str, job: &NewTask) -> Result<ScheduleSpec, ClientError> {
        if job.kind != TaskKind::Job {
            return Err(invalid(format!(
                "schedule `{name}` can only enqueue jobs, not {} tasks",
                job.kind
            )));
        }
        Ok(ScheduleSpec {
            name: name.to_string(),
            cron: self.expr.clone(),
            timezone: self.tz.name().to_string(),
            missed: self.missed,
            queue: job.queue.clone(),
            priority: job.priority,
            payload: job.payload.clone(),
        })
    }
}

fn invalid(message: String) -> ClientError {
    ClientError::Store(quark_history::Error::Invalid(message))
}

impl Client {
    /// Registers (or changes) schedule `name`: a job of activity `A` with `input` at every tick
    /// of `schedule`. Idempotent, so every process can register its schedules at startup; see the
    /// [schedule docs](crate::Schedule) for what a change keeps. `options` sets the queue,
    /// priority, retries and timeout of each tick's job; `run_at` and `delay` are refused (a
    /// tick's job runs at its tick).
    pub async fn schedule<A: Activity>(
        &self,
        name: &str,
        input: &A::Input,
        options: JobOptions,
        schedule: Schedule,
    ) -> Result<Upserted, ClientError> {
        if options.run_at.is_some() || options.delay.is_some() {
            return Err(invalid(format!(
                "schedule `{name}`: run_at and delay do not apply to scheduled jobs, which run at their ticks"
            )));
        }
        let now = self.store().config().clock.now();
        let job = crate::job::job_task::<A>(input, &options, now)?;
        self.schedule_job(name, &schedule, &job).await
    }

    /// Like [`schedule`](Self::schedule), with a job task built elsewhere (by activity name, as
    /// `quark schedule add` does).
    pub async fn schedule_job(
        &self,
        name: &str,
        schedule: &Schedule,
        job: &NewTask,
    ) -> Result<Upserted, ClientError> {
        let spec = schedule.spec(name, job)?;
        let now = self.store().config().clock.now();
        let next_at = schedule.next_after(now).ok_or_else(|| {
            ClientError::Store(quark_history::Error::Invalid(
                ScheduleError::NeverFires {
                    expr: schedule.expr.clone(),
                    after: now,
                }
                .to_string(),
            ))
        })?;
        Ok(self.store().upsert_schedule(spec, next_at).await?)
    }

    /// Removes schedule `name`; `false` if there was none. Jobs it already enqueued still run.
    pub async fn unschedule(&self, name: &str) -> Result<bool, ClientError> {
        Ok(self.store().remove_schedule(name).await?)
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRecord>, ClientError> {
        Ok(self.store().list_schedules().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z, a Thursday.
    const NEW_YEAR: Timestamp = Timestamp::from_micros(1_767_225_600_000_000);
    const SECOND: Duration = Duration::from_secs(1);
    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn at(offset: Duration) -> Timestamp {
        NEW_YEAR + offset
    }

    #[test]
    fn it_takes_five_six_and_seven_field_expressions() {
        let every_minute = Schedule::cron("* * * * *").unwrap();
        assert_eq!(every_minute.next_after(at(SECOND * 30)), Some(at(MINUTE)));
        let every_ten_seconds = Schedule::cron(" */10 * * * * * ").unwrap();
        assert_eq!(every_ten_seconds.expression(), "*/10 * * * * *");
        assert_eq!(
            every_ten_seconds.next_after(at(SECOND * 10)),
            Some(at(SECOND * 20)),
            "strictly after"
        );
        let in_2030 = Schedule::cron("0 0 0 1 1 * 2030").unwrap();
        assert_eq!(
            in_2030.next_after(NEW_YEAR).unwrap().to_string(),
            "2030-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            Schedule::cron("@hourly").unwrap().next_after(at(SECOND)),
            Some(at(MINUTE * 60))
        );
    }

    #[test]
    fn it_refuses_bad_expressions_zones_and_expressions_that_never_fire() {
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "* * * * * * * *",
            "every day",
            "*/0 * * * *",
        ] {
            match Schedule::cron(bad) {
                Err(ScheduleError::InvalidCron { expr, reason }) => {
                    assert_eq!(expr, bad.trim());
                    assert!(!reason.is_empty());
                }
                other => panic!("`{bad}` should be refused, got {other:?}"),
            }
        }
        let err = Schedule::cron("61 * * * *").unwrap_err().to_string();
        assert!(
            err.contains("`61 * * * *`") && err.contains("5 fields"),
            "{err}"
        );

        let zone = Schedule::cron("* * * * *")
            .unwrap()
            .timezone("Mars/Olympus_Mons");
        assert_eq!(
            zone.unwrap_err(),
            ScheduleError::UnknownTimezone("Mars/Olympus_Mons".into())
        );
        // A year in the past parses; registering it fails, as it has no tick after now.
        let past = Schedule::cron("0 0 0 1 1 * 2001").unwrap();
        assert_eq!(past.next_after(NEW_YEAR), None);
        assert!(matches!(
            Schedule::cron("0 0 31 2 *"),
            Err(ScheduleError::NeverFires { .. } | ScheduleError::InvalidCron { .. })
        ));
    }

    #[test]
    fn it_reads_the_expression_in_its_time_zone_across_daylight_saving_time() {
        let nine_in_berlin = Schedule::cron("0 9 * * *")
            .unwrap()
            .timezone("Europe/Berlin")
            .unwrap();
        assert_eq!(nine_in_berlin.timezone_name(), "Europe/Berlin");
        // Winter: UTC+1.
        assert_eq!(
            nine_in_berlin.next_after(NEW_YEAR).unwrap().to_string(),
            "2026-01-01T08:00:00.000000Z"
        );
        // Summer: UTC+2. 2026-07-01T00:00:00Z.
        let july = Timestamp::from_micros(1_782_864_000_000_000);
        assert_eq!(
            nine_in_berlin.next_after(july).unwrap().to_string(),
            "2026-07-01T07:00:00.000000Z"
        );
        // 02:30 does not exist on 2026-03-29 in Berlin: it fires once, right after the gap.
        let half_past_two = Schedule::cron("30 2 * * *")
            .unwrap()
            .timezone("Europe/Berlin")
            .unwrap();
        let march_28 = Timestamp::from_micros(1_774_656_000_000_000); // 2026-03-28T00:00:00Z
        let first = half_past_two.next_after(march_28).unwrap();
        let second = half_past_two.next_after(first).unwrap();
        let third = half_past_two.next_after(second).unwrap();
        assert_eq!(first.to_string(), "2026-03-28T01:30:00.000000Z");
        assert_eq!(second.to_string(), "2026-03-29T01:00:00.000000Z");
        assert_eq!(third.to_string(), "2026-03-30T00:30:00.000000Z");
    }

    #[test]
    fn a_fixed_time_repeated_by_a_fall_back_fires_once_and_an_interval_keeps_elapsed_time() {
        let berlin = |expr| {
            Schedule::cron(expr)
                .unwrap()
                .timezone("Europe/Berlin")
                .unwrap()
        };
        let ticks = |s: &Schedule, from: Timestamp, until: Timestamp| {
            let mut out = Vec::new();
            let mut t = from;
            while let Some(next) = s.next_after(t).filter(|n| *n < until) {
                out.push(next.to_string());
                t = next;
            }
            out
        };
        // 2026-10-25: 03:00 CEST becomes 02:00 CET, so 02:00-02:59 happens twice.
        let day_start = Timestamp::from_micros(1_792_879_200_000_000); // 2026-10-24T22:00:00Z
        let day_end = Timestamp::from_micros(1_792_969_200_000_000); // 2026-10-25T23:00:00Z
        assert_eq!(
            ticks(&berlin("30 2 * * *"), day_start, day_end),
            ["2026-10-25T00:30:00.000000Z"],
            "once, at the first 02:30"
        );
        let night = Timestamp::from_micros(1_792_886_400_000_000); // 2026-10-25T00:00:00Z
        let after = Timestamp::from_micros(1_792_897_200_000_000); // 2026-10-25T03:00:00Z
        assert_eq!(
            ticks(&berlin("0 */30 * * * *"), night, after),
            [
                "2026-10-25T00:30:00.000000Z",
                "2026-10-25T01:00:00.000000Z",
                "2026-10-25T01:30:00.000000Z",
                "2026-10-25T02:00:00.000000Z",
                "2026-10-25T02:30:00.000000Z",
            ],
            "every 30 minutes of elapsed time, through both 02:00 hours"
        );
    }

    #[test]
    fn an_on_time_tick_fires_under_either_policy() {
        for missed in [Missed::Skip, Missed::Backfill(3)] {
            let s = Schedule::cron("0 * * * * *").unwrap().missed(missed);
            let fire = s.fire("s", at(MINUTE), at(MINUTE + SECOND * 5));
            assert_eq!(fire.ticks, [at(MINUTE)], "{missed:?}");
            assert_eq!(fire.expected_next_at, at(MINUTE));
            assert_eq!(fire.next_at, at(MINUTE * 2));
        }
    }

    #[test]
    fn skip_drops_missed_ticks_and_keeps_only_an_on_time_one() {
        let s = Schedule::cron("0 * * * * *").unwrap();
        // Down from 00:01 to 00:10:30: the 00:10 tick is on time, 00:01..00:09 are dropped.
        let fire = s.fire("s", at(MINUTE), at(MINUTE * 10 + SECOND * 30));
        assert_eq!(fire.ticks, [at(MINUTE * 10)]);
        assert_eq!(fire.next_at, at(MINUTE * 11));
        // Hourly, down from 01:00 to 03:05: the 03:00 tick is 5 minutes late, past the grace.
        let hourly = Schedule::cron("0 0 * * * *").unwrap();
        let fire = hourly.fire("h", at(HOUR), at(HOUR * 3 + MINUTE * 5));
        assert!(fire.ticks.is_empty(), "{:?}", fire.ticks);
        assert_eq!(fire.next_at, at(HOUR * 4));
        // A tick exactly the grace period old is still on time; a microsecond more is not.
        let fire = hourly.fire("h", at(HOUR), at(HOUR + MINUTE));
        assert_eq!(fire.ticks, [at(HOUR)]);
        let fire = hourly.fire("h", at(HOUR), at(HOUR + MINUTE) + Duration::from_micros(1));
        assert!(fire.ticks.is_empty());
    }

    #[test]
    fn backfill_enqueues_the_n_most_recent_missed_ticks_oldest_first() {
        let s = Schedule::cron("0 * * * * *")
            .unwrap()
            .missed(Missed::Backfill(3));
        // Down from 00:01 to 00:10:30: on time 00:10, plus the 3 most recent missed.
        let fire = s.fire("s", at(MINUTE), at(MINUTE * 10 + SECOND * 30));
        assert_eq!(
            fire.ticks,
            [
                at(MINUTE * 7),
                at(MINUTE * 8),
                at(MINUTE * 9),
                at(MINUTE * 10)
            ]
        );
        // Nothing on time: the 3 most recent missed ticks.
        let hourly = Schedule::cron("0 0 * * * *")
            .unwrap()
            .missed(Missed::Backfill(3));
        let fire = hourly.fire("h", at(HOUR), at(HOUR * 5 + MINUTE * 5));
        assert_eq!(fire.ticks, [at(HOUR * 3), at(HOUR * 4), at(HOUR * 5)]);
        assert_eq!(fire.next_at, at(HOUR * 6));
        // Fewer missed than n: all of them, never one before next_at.
        let fire = s.fire("s", at(MINUTE * 8), at(MINUTE * 9 + SECOND));
        assert_eq!(fire.ticks, [at(MINUTE * 8), at(MINUTE * 9)]);
        // Backfill(0) is Skip.
        let none = Schedule::cron("0 * * * * *")
            .unwrap()
            .missed(Missed::Backfill(0));
        let fire = none.fire("s", at(MINUTE), at(MINUTE * 30 + SECOND * 30));
        assert_eq!(fire.ticks, [at(MINUTE * 30)], "only the on-time tick");
    }

    #[test]
    fn it_plans_a_fire_after_a_year_of_downtime_on_a_per_second_schedule_quickly() {
        let s = Schedule::cron("* * * * * *")
            .unwrap()
            .missed(Missed::Backfill(2));
        let year = Duration::from_secs(365 * 24 * 3600);
        let fire = s.fire("s", at(SECOND), at(year) + Duration::from_millis(250));
        assert_eq!(
            fire.ticks,
            [at(year - SECOND * 2), at(year - SECOND), at(year)]
        );
        assert_eq!(fire.next_at, at(year + SECOND));
    }

    #[test]
    fn a_schedule_only_enqueues_jobs() {
        let s = Schedule::cron("@daily").unwrap();
        let job = NewTask::new(TaskKind::Job, "reports")
            .priority(4)
            .payload(vec![1]);
        let spec = s.spec("d", &job).unwrap();
        assert_eq!(
            (spec.queue.as_str(), spec.priority, spec.payload.as_slice()),
            ("reports", 4, &[1u8][..])
        );
        assert_eq!(
            (spec.cron.as_str(), spec.timezone.as_str()),
            ("@daily", "UTC")
        );
        assert!(s.spec("d", &NewTask::new(TaskKind::Activity, "q")).is_err());
        assert_eq!(Schedule::from_spec(&spec).unwrap().expression(), "@daily");
    }
}
