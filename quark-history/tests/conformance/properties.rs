//! Properties: codec round trips for every event, and "a task is never held by two live leases".

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use quark_history::{
    CallSite, ClaimRequest, Clock, CodecTag, Commit, Error, Failure, HistoryEvent, Lease, NewTask,
    ParentRef, Payload, TaskKind, Timestamp,
};

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z0-9 ]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        json_value().prop_map(|v| Payload::json(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..32)
            .prop_map(|b| Payload::from_bytes(CodecTag::Postcard, b)),
    ]
}

fn site() -> impl Strategy<Value = Option<CallSite>> {
    prop::option::of(
        ("[a-z/]{1,12}\\.rs", 1u32..5000, 1u32..200).prop_map(|(file, line, column)| CallSite {
            file,
            line,
            column,
        }),
    )
}

fn failure() -> impl Strategy<Value = Failure> {
    (".{0,24}", any::<bool>(), prop::option::of(payload())).prop_map(
        |(message, retryable, details)| Failure {
            message,
            retryable,
            details,
        },
    )
}

fn event() -> impl Strategy<Value = HistoryEvent> {
    let name = "[a-z_]{1,10}";
    let cmd = any::<u64>();
    prop_oneof![
        (
            name,
            any::<u32>(),
            payload(),
            prop::option::of((name, cmd)),
            prop::option::of(name)
        )
            .prop_map(|(instance_type, version, input, parent, continued_from)| {
                HistoryEvent::WorkflowStarted {
                    instance_type,
                    version,
                    input,
                    parent: parent.map(|(instance_id, command)| ParentRef {
                        instance_id,
                        command,
                    }),
                    continued_from,
                }
            }),
        (cmd, name, payload(), name, site()).prop_map(|(command, activity, input, queue, site)| {
            HistoryEvent::ActivityScheduled {
                command,
                activity,
                input,
                queue,
                site,
            }
        }),
        (cmd, payload(), any::<u32>()).prop_map(|(command, output, attempt)| {
            HistoryEvent::ActivityCompleted {
                command,
                output,
                attempt,
            }
        }),
        (cmd, failure(), any::<u32>()).prop_map(|(command, failure, attempt)| {
            HistoryEvent::ActivityFailed {
                command,
                failure,
                attempt,
            }
        }),
        (cmd, any::<i64>(), site()).prop_map(|(command, at, site)| HistoryEvent::TimerCreated {
            command,
            fire_at: Timestamp::from_micros(at),
            site
        }),
        cmd.prop_map(|command| HistoryEvent::TimerFired { command }),
        cmd.prop_map(|command| HistoryEvent::TimerCancelled { command }),
        (name, payload())
            .prop_map(|(name, payload)| HistoryEvent::SignalReceived { name, payload }),
        (cmd, name, name, payload(), site()).prop_map(
            |(command, instance_id, instance_type, input, site)| {
                HistoryEvent::ChildStarted {
                    command,
                    instance_id,
                    instance_type,
                    input,
                    site,
                }
            }
        ),
        (cmd, payload())
            .prop_map(|(command, output)| HistoryEvent::ChildCompleted { command, output }),
        (cmd, failure())
            .prop_map(|(command, failure)| HistoryEvent::ChildFailed { command, failure }),
        (cmd, payload(), site()).prop_map(|(command, value, site)| {
            HistoryEvent::SideEffectRecorded {
                command,
                value,
                site,
            }
        }),
        (cmd, name).prop_map(|(command, patch)| HistoryEvent::PatchMarker { command, patch }),
        ".{0,16}".prop_map(|reason| HistoryEvent::CancelRequested { reason }),
        (name, payload()).prop_map(|(new_instance_id, input)| HistoryEvent::ContinuedAsNew {
            new_instance_id,
            input
        }),
        payload().prop_map(|output| HistoryEvent::WorkflowCompleted { output }),
        failure().prop_map(|failure| HistoryEvent::WorkflowFailed { failure }),
        ".{0,16}".prop_map(|reason| HistoryEvent::WorkflowCancelled { reason }),
        ".{0,16}".prop_map(|reason| HistoryEvent::WorkflowTerminated { reason }),
    ]
}

proptest! {
    #[test]
    fn every_event_round_trips_through_json(event in event()) {
        let bytes = CodecTag::Json.encode(&event).unwrap();
        let back: HistoryEvent = CodecTag::Json.decode(&bytes).unwrap();
        prop_assert_eq!(back, event);
    }

    #[test]
    fn every_event_round_trips_through_postcard(event in event()) {
        let bytes = CodecTag::Postcard.encode(&event).unwrap();
        let back: HistoryEvent = CodecTag::Postcard.decode(&bytes).unwrap();
        prop_assert_eq!(back, event);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Claim { worker: u8, limit: u32 },
    Complete { pick: usize },
    Extend { pick: usize },
    Advance { secs: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 1u32..4).prop_map(|(worker, limit)| Op::Claim { worker, limit }),
        any::<usize>().prop_map(|pick| Op::Complete { pick }),
        any::<usize>().prop_map(|pick| Op::Extend { pick }),
        (1u64..15).prop_map(|secs| Op::Advance { secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random claims, completions, extensions and clock jumps: a claim never returns a task while
    /// another lease on it is live, a settle or extension succeeds exactly when its lease is the
    /// newest one, and a completed task never comes back.
    #[test]
    fn a_task_is_never_held_by_two_live_leases(ops in prop::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let t = quark_history::testing::sqlite().await;
            let lease_for = Duration::from_secs(10);
            t.store.enqueue((0..4).map(|_| NewTask::new(TaskKind::Activity, "q")).collect()).await.unwrap();
            // task -> (newest attempt, its expiry); every lease handed out; completed tasks.
            let mut newest: HashMap<i64, (u32, Timestamp)> = HashMap::new();
            let mut leases: Vec<Lease> = Vec::new();
            let mut done: Vec<i64> = Vec::new();
            for op in ops {
                let now = t.clock.now();
                match op {
                    Op::Claim { worker, limit } => {
                        let claimed = t.store
                            .claim(ClaimRequest::new(format!("w{worker}"), ["q"]).limit(limit).lease(lease_for))
                            .await
                            .unwrap();
                        for c in claimed {
                            let id = c.lease.task_id;
                            assert!(!done.contains(&id), "completed task {id} came back");
                            if let Some((attempt, expires)) = newest.get(&id) {
                                assert!(*expires <= now, "task {id} handed out while attempt {attempt} is live");
                                assert!(c.lease.attempt > *attempt, "attempts only grow");
                            }
                            newest.insert(id, (c.lease.attempt, now + lease_for));
                            leases.push(c.lease);
                        }
                    }
                    Op::Complete { pick } | Op::Extend { pick } if !leases.is_empty() => {
                        let lease = leases[pick % leases.len()].clone();
                        let is_newest = newest.get(&lease.task_id).map(|(a, _)| *a) == Some(lease.attempt)
                            && !done.contains(&lease.task_id);
                        let result = match op {
                            Op::Complete { .. } => t.store.commit(Commit::new().complete(lease.clone())).await.map(|_| None),
                            _ => t.store.extend_lease(&lease, lease_for).await.map(Some),
                        };
                        match result {
                            Ok(extended) => {
                                assert!(is_newest, "a stale lease settled: {lease:?}");
                                match extended {
                                    Some(until) => { newest.insert(lease.task_id, (lease.attempt, until)); }
                                    None => done.push(lease.task_id),
                                }
                            }
                            Err(Error::LeaseLost { .. }) => assert!(!is_newest, "the newest lease was refused: {lease:?}"),
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                    }
                    Op::Advance { secs } => t.clock.advance(Duration::from_secs(secs)),
                    _ => {}
                }
            }
        });
    }
}
