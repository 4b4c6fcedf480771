//! The live runs' safety rule: nothing builds on a run ahead of an unwritten commit.

use super::*;
use crate::executor_tests::OrderV1;
use crate::sim::{ID, claimed, order_started as started};
use quark_history::Payload;

fn completed(command: u64) -> HistoryEvent {
    HistoryEvent::ActivityCompleted {
        command,
        output: Payload::json(&"receipt").unwrap(),
        attempt: 1,
    }
}

fn report(event: HistoryEvent, at: Timestamp, started_here: bool) -> Report {
    Report {
        event,
        at,
        started_here,
    }
}

fn order_registry() -> Arc<Registry> {
    let mut registry = Registry::new();
    registry.add_orchestration::<OrderV1>();
    Arc::new(registry)
}

/// The first turn of `id` (an order just started at `at`) on `live`: its turn and the token
/// its commit is confirmed and acknowledged with.
async fn first_turn(
    live: &LiveInstances,
    registry: &Arc<Registry>,
    id: &str,
    at: Timestamp,
) -> (Box<Turn>, u64) {
    let Some(LiveTurn::Turn(turn, _, token)) = live
        .turn(id, &claimed("default"), registry, 1, vec![started(at)])
        .await
    else {
        panic!("no turn");
    };
    (turn, token)
}

#[tokio::test]
async fn a_run_with_a_commit_in_flight_is_not_replaced_and_takes_only_its_own_confirmation() {
    let live = LiveInstances::new(1, WarmLimits::default(), HistoryWarning::default());
    let registry = order_registry();
    let at = Timestamp::from_millis(5);
    let (_, token) = first_turn(&live, &registry, ID, at).await;
    // Another turn of the instance claimed meanwhile, from the whole history (a read-ahead, or
    // a miss): it runs on a run that is not kept, and the live run stays.
    let again = live
        .turn(ID, &claimed("default"), &registry, 1, vec![started(at)])
        .await;
    let Some(LiveTurn::Cold(cold)) = again else {
        panic!("the live run was replaced while its commit was in flight");
    };
    assert_eq!(cold.commit.appends[0].events.len(), 1, "the same decision");
    // So is a continuation that brings the whole history.
    let replaced = live
        .continue_with(
            ID,
            &claimed("default"),
            &registry,
            Some(vec![started(at)]),
            report(completed(1), at, true),
        )
        .await;
    assert!(replaced.is_none(), "a continuation replaced the live run");
    // A confirmation under another turn's token does not reach the run: it still waits.
    live.confirm(ID, token + 100, 2, Timestamp::from_millis(9));
    let early = live
        .continue_with(
            ID,
            &claimed("default"),
            &registry,
            None,
            report(completed(1), at, true),
        )
        .await;
    assert!(early.is_none(), "the run took another turn's confirmation");
    // Its own does. Its activity, claimed from the queue, proves nothing: another run's commit
    // could have recorded that command.
    live.confirm(ID, token, 2, at);
    let claimed_there = live
        .continue_with(
            ID,
            &claimed("default"),
            &registry,
            None,
            report(completed(1), at, false),
        )
        .await;
    assert!(
        claimed_there.is_none(),
        "a queued activity proved the commit"
    );
    // Started here by the commit, it proves the commit written.
    let (seq, _, _, _) = live
        .continue_with(
            ID,
            &claimed("default"),
            &registry,
            None,
            report(completed(1), at, true),
        )
        .await
        .expect("the live run continues on its own commit");
    assert_eq!(seq, 3);
}

#[tokio::test]
async fn a_run_ahead_of_an_unwritten_commit_is_built_on_only_once_the_commit_is_proven_written() {
    let live = LiveInstances::new(1, WarmLimits::default(), HistoryWarning::default());
    let registry = order_registry();
    let at = Timestamp::from_millis(5);
    let (turn, token) = first_turn(&live, &registry, ID, at).await;
    assert_eq!(
        turn.commit.appends[0].events.len(),
        1,
        "charge_card, command 1"
    );
    // The run takes the turn's events in ahead of the commit.
    live.confirm(ID, token, 2, at);
    // An activity the commit did not schedule reports back: the commit may still fail, and
    // a continuation fenced after its events could land on other events. Refused.
    let other = live
        .continue_with(
            ID,
            &claimed("default"),
            &registry,
            None,
            report(completed(7), at, true),
        )
        .await;
    assert!(other.is_none());
    // The commit's own activity reports back: its task exists, so the commit was written.
    let (seq, turn, _, second) = live
        .continue_with(
            ID,
            &claimed("default"),
            &registry,
            None,
            report(completed(1), at, true),
        )
        .await
        .expect("continued on the written commit");
    assert_eq!(seq, 3);
    assert!(matches!(
        turn.commit.appends[0].events[0],
        HistoryEvent::TimerCreated { command: 2, .. }
    ));
    // That continuation's commit is in flight in turn: the timer it set (which no activity
    // of it can prove) waits for its acknowledgement.
    live.confirm(ID, second, 4, at);
    let fired = HistoryEvent::TimerFired { command: 2 };
    let early = live
        .continue_with(
            ID,
            &claimed("default"),
            &registry,
            None,
            report(fired.clone(), at, true),
        )
        .await;
    assert!(early.is_none());
    live.ack(ID, token);
    live.ack(ID, second);
    let (seq, turn, _, _) = live
        .continue_with(
            ID,
            &claimed("default"),
            &registry,
            None,
            report(fired, at, true),
        )
        .await
        .expect("continued once acknowledged");
    assert_eq!(seq, 5);
    assert!(matches!(
        &turn.commit.appends[0].events[0],
        HistoryEvent::ActivityScheduled { command: 3, activity, .. } if activity == "ship"
    ));
}

/// A turn of a new `order` instance `id`, its commit written (confirmed and acknowledged).
async fn settled_turn(live: &LiveInstances, registry: &Arc<Registry>, id: &str) {
    let at = Timestamp::from_millis(5);
    let mut event = started(at);
    event.instance_id = id.into();
    let mut task = claimed("default");
    task.instance_id = Some(id.into());
    let Some(LiveTurn::Turn(turn, _, token)) = live.turn(id, &task, registry, 1, vec![event]).await
    else {
        panic!("no turn");
    };
    let first = turn.commit.appends[0].events.len() as u64;
    live.confirm(id, token, first + 1, at);
    live.ack(id, token);
    // Both are posted to the run's thread: wait for them.
    live.on_thread(id, |_| ()).await;
}

fn live_ids(live: &LiveInstances) -> Vec<String> {
    let mut ids: Vec<String> = live
        .instances()
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_runner_short_of_memory_keeps_no_new_runs_and_sheds_the_coldest_bytes_first() {
    let live = LiveInstances::new(2, WarmLimits::default(), HistoryWarning::default());
    let registry = order_registry();
    for id in ["a", "b"] {
        settled_turn(&live, &registry, id).await;
    }
    assert_eq!(live_ids(&live), ["a", "b"]);

    live.admit_new(false);
    settled_turn(&live, &registry, "c").await;
    assert_eq!(
        live_ids(&live),
        ["a", "b"],
        "a new run was kept while refusing"
    );
    live.admit_new(true);
    settled_turn(&live, &registry, "c").await;
    assert_eq!(live_ids(&live), ["a", "b", "c"]);

    // Every run has the same footprint: the one used least recently goes first ("a"), and
    // asking for one byte evicts one run.
    let footprint = live.bytes() / 3;
    assert!(footprint > 0);
    let victims = live.victims(1);
    assert_eq!(victims, ["a"]);
    let freed = live.evict(victims).await;
    assert_eq!(
        freed,
        Evicted {
            count: 1,
            bytes: footprint
        }
    );
    assert_eq!(live_ids(&live), ["b", "c"]);
    assert_eq!(live.bytes(), 2 * footprint);
    // Enough bytes for everything: everything goes.
    let freed = live.evict(live.victims(usize::MAX)).await;
    assert_eq!(freed.count, 2);
    assert_eq!((live.len(), live.bytes()), (0, 0));
}

#[tokio::test]
async fn a_turn_waiting_for_a_run_s_commit_in_flight_goes_on_once_it_is_acknowledged_or_dropped() {
    // One orchestration thread: jobs for every instance run in the order they are posted, so
    // waiting for `settled` of an instance with no run proves the jobs posted before it ran.
    let live = LiveInstances::new(1, WarmLimits::default(), HistoryWarning::default());
    let registry = order_registry();
    let at = Timestamp::from_millis(5);
    let (_, token) = first_turn(&live, &registry, ID, at).await;
    let mut waiting = live.settled(ID);
    live.confirm(ID, token, 2, at);
    live.settled("nobody").await.unwrap();
    assert_eq!(
        waiting.try_recv(),
        Ok(None),
        "confirmed but not acknowledged: the commit may still fail"
    );
    // The next turn would find the run busy.
    let busy = live
        .turn(ID, &claimed("default"), &registry, 3, Vec::new())
        .await;
    assert!(matches!(busy, Some(LiveTurn::Miss(Miss::Busy))));
    live.ack(ID, token);
    waiting.await.expect("settled once acknowledged");
    assert!(live.settled(ID).await.is_ok(), "nothing in flight now");

    // A run dropped while a turn waits settles it too (the turn then replays).
    let other = "order-2";
    first_turn(&live, &registry, other, at).await;
    let waiting = live.settled(other);
    live.forget(other);
    waiting.await.expect("settled once dropped");
}
