//! A pure, in-memory driver for replay tests: records histories by running orchestrations live
//! (activities answered by closures, timers fired in time order), then checks that those
//! histories replay, incrementally and in full.

use std::collections::BTreeMap;
use std::sync::Arc;

use quark_history::{Failure, HistoryEvent, Payload, RecordedEvent, TaskKind, Timestamp};

use crate::command::is_command_event;
use crate::definition::Orchestration;
use crate::executor::{Executor, Outcome, Replay, replay};
use crate::registry::{ErasedOrchestration, Registry};
use crate::task::TaskPayload;

type Responder = Arc<dyn Fn(&str, &Payload) -> Result<Payload, Failure> + Send + Sync>;

pub(crate) const ID: &str = "wf-1";

pub(crate) fn recorded(seq: u64, at: Timestamp, event: HistoryEvent) -> RecordedEvent {
    RecordedEvent {
        instance_id: ID.into(),
        seq,
        recorded_at: at,
        event,
        hash: String::new(),
    }
}

/// The first event of an `order` (the executor tests' `OrderV1`) for 500 cents, recorded at `at`.
pub(crate) fn order_started(at: Timestamp) -> RecordedEvent {
    recorded(
        1,
        at,
        HistoryEvent::WorkflowStarted {
            instance_type: "order".into(),
            version: 1,
            input: Payload::json(&500u32).unwrap(),
            parent: None,
            continued_from: None,
        },
    )
}

/// A claimed orchestration task of instance [`ID`] on queue `queue`.
pub(crate) fn claimed(queue: &str) -> quark_history::ClaimedTask {
    quark_history::ClaimedTask {
        lease: quark_history::Lease {
            task_id: 1,
            attempt: 1,
            worker: "w".into(),
        },
        kind: TaskKind::Orchestration,
        queue: queue.into(),
        instance_id: Some(ID.into()),
        priority: 0,
        created_at: Timestamp::EPOCH,
        visible_at: Timestamp::EPOCH,
        lease_expires_at: Timestamp::EPOCH,
        payload: Vec::new(),
        traceparent: None,
    }
}

/// Replays `history` against the registered orchestration its first event names.
pub(crate) fn run(registry: &Registry, history: &[RecordedEvent]) -> Replay {
    let HistoryEvent::WorkflowStarted { instance_type, .. } = &history[0].event else {
        panic!("event 1 is not WorkflowStarted");
    };
    let orchestration = registry.orchestration(instance_type).expect("registered");
    replay(orchestration.as_ref(), ID, "default", history)
}

/// A live run that records a history.
pub(crate) struct Sim {
    pub(crate) registry: Registry,
    pub(crate) history: Vec<RecordedEvent>,
    pub(crate) now: Timestamp,
    respond: Responder,
    /// External results not yet delivered, in the order their tasks were enqueued.
    activities: Vec<HistoryEvent>,
    /// Timers not yet fired, by fire time then command id.
    timers: BTreeMap<(Timestamp, u64), ()>,
    pub(crate) outcome: Outcome,
    /// Deliver activity results newest first (default: in the order they were scheduled).
    pub(crate) newest_first: bool,
    /// The live run, fed only the events that are new at each turn, as a warm worker feeds it;
    /// every turn checks that it decides what a replay of the whole history decides.
    live: Option<(Executor, Arc<dyn ErasedOrchestration>)>,
    /// Whether each live turn is checked against a replay of the whole history (off for code
    /// that decides on `is_replaying`, which differs between the two by design).
    pub(crate) check_cold: bool,
}

impl Sim {
    pub(crate) fn start<O: Orchestration>(
        registry: Registry,
        input: &O::Input,
        respond: impl Fn(&str, &Payload) -> Result<Payload, Failure> + Send + Sync + 'static,
    ) -> Sim {
        let mut sim = Sim {
            registry,
            history: Vec::new(),
            now: Timestamp::from_millis(1_000_000),
            respond: Arc::new(respond),
            activities: Vec::new(),
            timers: BTreeMap::new(),
            outcome: Outcome::Waiting,
            newest_first: false,
            live: None,
            check_cold: true,
        };
        sim.push(HistoryEvent::WorkflowStarted {
            instance_type: O::NAME.into(),
            version: O::VERSION,
            input: Payload::json(input).unwrap(),
            parent: None,
            continued_from: None,
        });
        sim
    }

    pub(crate) fn push(&mut self, event: HistoryEvent) {
        self.now = self.now + std::time::Duration::from_millis(1);
        let seq = self.history.len() as u64 + 1;
        self.history.push(recorded(seq, self.now, event));
    }

    /// Runs one turn and records what it decided.
    pub(crate) fn turn(&mut self) -> &Outcome {
        let cold = run(&self.registry, &self.history);
        let r = self.live_turn(&cold);
        for t in &r.tasks {
            match TaskPayload::from_bytes(&t.payload).unwrap() {
                TaskPayload::Activity(a) => {
                    assert_eq!(t.kind, TaskKind::Activity);
                    let event = match (self.respond)(&a.activity, &a.input) {
                        Ok(output) => HistoryEvent::ActivityCompleted {
                            command: a.command,
                            output,
                            attempt: 1,
                        },
                        Err(failure) => HistoryEvent::ActivityFailed {
                            command: a.command,
                            failure,
                            attempt: 1,
                        },
                    };
                    self.activities.push(event);
                }
                TaskPayload::Timer(tm) => {
                    assert_eq!(t.visible_at, Some(tm.fire_at));
                    self.timers.insert((tm.fire_at, tm.command), ());
                }
                TaskPayload::Job(j) => panic!("a turn never enqueues a job, got {}", j.activity),
                TaskPayload::Request(r) => panic!("a turn never enqueues a request, got {}", r.id),
            }
        }
        for e in r.new_events {
            if let HistoryEvent::TimerCancelled { command } = e {
                self.timers.retain(|(_, c), _| *c != command);
            }
            self.push(e);
        }
        self.outcome = r.outcome;
        &self.outcome
    }

    /// Runs the turn on the live run (fed only the events that are new, as a warm worker feeds
    /// it) and checks that it decides what the replay `cold` of the whole history decides: the
    /// same events (fresh side-effect values aside), tasks and outcome. The live run's turn is
    /// the one recorded.
    fn live_turn(&mut self, cold: &Replay) -> Replay {
        let HistoryEvent::WorkflowStarted { instance_type, .. } = &self.history[0].event else {
            return cold.clone();
        };
        let orchestration = self
            .registry
            .orchestration(instance_type)
            .expect("registered");
        // New code (a deploy, in a test) starts a new run, as a restarted worker would.
        if self
            .live
            .as_ref()
            .is_some_and(|(_, code)| !Arc::ptr_eq(code, orchestration))
        {
            self.live = None;
        }
        let (live, _) = self
            .live
            .get_or_insert_with(|| (Executor::new(ID, "default"), orchestration.clone()));
        let from = usize::try_from(live.next_seq() - 1).unwrap_or(0);
        live.feed(orchestration.as_ref(), &self.history[from..]);
        assert!(!live.is_stale(), "the live run went stale");
        let warm = live.turn("default");
        if !self.check_cold {
            if !matches!(warm.outcome, Outcome::Waiting) {
                self.live = None;
            }
            return warm;
        }
        assert_eq!(
            normalize(&warm.new_events),
            normalize(&cold.new_events),
            "the live run decided other events than a replay"
        );
        assert_eq!(
            std::mem::discriminant(&warm.outcome),
            std::mem::discriminant(&cold.outcome),
            "the live run ended elsewhere: {:?} against {:?}",
            warm.outcome,
            cold.outcome
        );
        assert_eq!(warm.tasks.len(), cold.tasks.len(), "other tasks");
        assert_eq!(warm.children.len(), cold.children.len(), "other children");
        assert_eq!(warm.notices, cold.notices, "other notices");
        assert_eq!(warm.signals, cold.signals, "signals sent");
        if !matches!(warm.outcome, Outcome::Waiting) {
            self.live = None;
        }
        warm
    }

    /// Delivers the next external event: an activity result, else the earliest timer.
    pub(crate) fn deliver(&mut self) -> bool {
        if !self.activities.is_empty() {
            let next = if self.newest_first {
                self.activities.len() - 1
            } else {
                0
            };
            let e = self.activities.remove(next);
            self.push(e);
            return true;
        }
        let Some(((at, command), ())) = self.timers.pop_first() else {
            return false;
        };
        self.now = self.now.max(at);
        self.push(HistoryEvent::TimerFired { command });
        true
    }

    /// Runs turns, delivering one external event between them, until the run ends or waits for
    /// something only the test can give (a signal).
    pub(crate) fn run(&mut self) -> &Outcome {
        loop {
            // A broken executor can re-emit commands forever; fail instead of hanging.
            assert!(
                self.history.len() < 5_000,
                "runaway history: {} events",
                self.history.len()
            );
            self.turn();
            if !matches!(self.outcome, Outcome::Waiting) || !self.deliver() {
                return &self.outcome;
            }
        }
    }
}

/// Checks that `history` replays against `registry` both ways:
/// - incrementally: every prefix that ends before a block of decided events (commands, timer
///   cancellations, the end) must yield exactly that block, as the live turn did;
/// - in full: nothing new, and the same outcome.
///
/// Returns the first nondeterminism of each way, if any.
pub(crate) fn check_replays(
    registry: &Registry,
    history: &[RecordedEvent],
) -> (Option<String>, Option<String>) {
    let decided = |e: &HistoryEvent| {
        is_command_event(e)
            || matches!(e, HistoryEvent::TimerCancelled { .. })
            || (e.closing_status().is_some()
                && !matches!(e, HistoryEvent::WorkflowTerminated { .. }))
    };
    let mut incremental = None;
    let mut k = 1;
    while k <= history.len() {
        let r = run(registry, &history[..k]);
        if let Outcome::Nondeterminism(n) = &r.outcome {
            incremental = Some(n.to_string());
            break;
        }
        let block: Vec<_> = history[k..]
            .iter()
            .take_while(|e| decided(&e.event))
            .map(|e| e.event.clone())
            .collect();
        // With no decision right after event `k`, more events arrived before the live turn ran;
        // that turn, later, must still have made every decision this one makes.
        let expected = if block.is_empty() && !r.new_events.is_empty() {
            let later = history[k..]
                .iter()
                .skip_while(|e| !decided(&e.event))
                .take_while(|e| decided(&e.event))
                .map(|e| e.event.clone())
                .collect::<Vec<_>>();
            let split = |events: &[HistoryEvent]| {
                let events = normalize(events);
                let closing = events
                    .iter()
                    .find(|e| e.closing_status().is_some())
                    .cloned();
                let mut commands = events;
                commands.retain(is_command_event);
                (commands, closing)
            };
            let ((cmds_now, end_now), (cmds_then, end_then)) =
                (split(&r.new_events), split(&later));
            later.is_empty()
                || (cmds_then.starts_with(&cmds_now) && (end_now.is_none() || end_now == end_then))
        } else {
            normalize(&r.new_events) == normalize(&block)
        };
        if !expected {
            let mismatch = format!(
                "the turn after event {k} emits {:?}; the history has {block:?}",
                r.new_events
            );
            incremental = Some(mismatch);
            break;
        }
        k += block.len().max(1);
    }
    let full = run(registry, history);
    let full = match full.outcome {
        Outcome::Nondeterminism(n) => Some(n.to_string()),
        _ => {
            assert!(
                full.new_events.is_empty(),
                "full replay emitted {:?}",
                full.new_events
            );
            None
        }
    };
    (incremental, full)
}

/// Checks that new code picks up an instance recorded by old code at any point: every prefix that
/// ends after a decision of the old code (and the full history) replays without nondeterminism.
/// (What the new code decides next may differ: that is what `patched` is for.)
pub(crate) fn check_upgrade(registry: &Registry, history: &[RecordedEvent]) -> Option<String> {
    (1..=history.len())
        .filter(|&k| k == history.len() || is_command_event(&history[k - 1].event))
        .find_map(|k| match run(registry, &history[..k]).outcome {
            Outcome::Nondeterminism(n) => Some(format!("prefix of {k} events: {n}")),
            _ => None,
        })
}

/// Events as compared across code versions: call sites move when code changes, and a fresh side
/// effect (`random`, `uuid`) differs from the recorded one by design.
fn normalize(events: &[HistoryEvent]) -> Vec<HistoryEvent> {
    let mut events = events.to_vec();
    for e in &mut events {
        match e {
            HistoryEvent::ActivityScheduled { site, .. }
            | HistoryEvent::TimerCreated { site, .. }
            | HistoryEvent::ChildStarted { site, .. }
            | HistoryEvent::SignalSent { site, .. } => *site = None,
            HistoryEvent::SideEffectRecorded { site, value, .. } => {
                *site = None;
                *value = Payload::unit();
            }
            _ => {}
        }
    }
    events
}
