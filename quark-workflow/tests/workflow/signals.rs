//! Orchestrations that signal each other (`ctx.send`): each signal arrives once, replays send
//! nothing again, a warm receiver continues in its sender's commit, and a signal nobody can
//! receive is dropped without stopping its sender.

use quark_history::{HistoryEvent, InstanceStatus};
use quark_workflow::runner::{HistoryWarning, Miss, RunEvent, WarmLimits};
use quark_workflow::testing::TestEnv;
use quark_workflow::{OrchestrationContext, OrchestrationError, Registry, Signal, orchestration};
use serde::{Deserialize, Serialize};

/// A ball passed between two players: who threw it, and the rally's count so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ball {
    from: String,
    count: u32,
}

const BALL: Signal<Ball> = Signal::new("ball");

/// Who to play with, how many throws in all, and whether this player serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Game {
    partner: String,
    throws: u32,
    serve: bool,
}

/// Throws the ball back until the rally reaches `throws`; returns the sum of the counts it saw.
#[orchestration]
async fn player(ctx: OrchestrationContext, game: Game) -> Result<u64, OrchestrationError> {
    let me = ctx.instance_id();
    let mut seen = 0u64;
    if game.serve {
        ctx.send(
            &game.partner,
            BALL,
            &Ball {
                from: me.clone(),
                count: 1,
            },
        )?;
    }
    loop {
        let ball = ctx.wait_for(BALL).await?;
        seen += u64::from(ball.count);
        if ball.count >= game.throws {
            return Ok(seen);
        }
        ctx.send(
            &ball.from,
            BALL,
            &Ball {
                from: me.clone(),
                count: ball.count + 1,
            },
        )?;
        if ball.count + 1 >= game.throws {
            return Ok(seen);
        }
    }
}

/// Sends one signal to `target` and returns.
#[orchestration]
async fn shout(ctx: OrchestrationContext, target: String) -> Result<String, OrchestrationError> {
    ctx.signal(&target, "hello", &"anyone?")?;
    Ok("shouted".into())
}

fn registry() -> Registry {
    Registry::new().register(player).register(shout)
}

async fn rally(env: &TestEnv, throws: u32) -> (u64, u64) {
    let client = env.client();
    let game = |partner: &str, serve| Game {
        partner: partner.into(),
        throws,
        serve,
    };
    // The receiver first: a signal to an instance that does not exist yet is dropped.
    client
        .start::<player>("b", &game("a", false))
        .await
        .unwrap();
    client.start::<player>("a", &game("b", true)).await.unwrap();
    let a: u64 = client.result("a").await.unwrap();
    let b: u64 = client.result("b").await.unwrap();
    (a, b)
}

fn count(history: &[quark_history::RecordedEvent], f: impl Fn(&HistoryEvent) -> bool) -> usize {
    history.iter().filter(|e| f(&e.event)).count()
}

async fn each_signal_arrives_once(env: &TestEnv) {
    let throws = 9;
    let (a, b) = rally(env, throws).await;
    // `a` serves 1 and sees the even counts, `b` the odd ones: 2+4+6+8 and 1+3+5+7+9.
    assert_eq!((a, b), (20, 25));
    for (id, sent, received) in [("a", 5, 4), ("b", 4, 5)] {
        let history = env.client().history(id).await.unwrap();
        let sends = count(&history, |e| matches!(e, HistoryEvent::SignalSent { .. }));
        let arrivals = count(
            &history,
            |e| matches!(e, HistoryEvent::SignalReceived { name, .. } if name == "ball"),
        );
        assert_eq!((sends, arrivals), (sent, received), "{id}: sent, received");
    }
}

#[tokio::test]
async fn two_warm_orchestrations_play_a_rally_and_each_signal_arrives_once() {
    let env = TestEnv::new(registry()).await.unwrap();
    each_signal_arrives_once(&env).await;
    // Both players stay warm. A throw continues its receiver in the thrower's commit; the
    // receiver's throw back, decided inside that commit, goes through the queue (a run is not
    // continued inside a commit that continues it already), and the turn it wakes continues the
    // other player again. So every other throw at least is delivered in memory.
    let here = env
        .run_events()
        .iter()
        .filter(|e| **e == RunEvent::DeliveredHere)
        .count();
    assert!(here >= 4, "{here} of 9 throws were delivered in memory");
    assert!(
        !env.run_events()
            .iter()
            .any(|e| matches!(e, RunEvent::Replayed(_))),
        "warm runs are never rebuilt"
    );
}

/// A place in a relay ring: who comes next, and how many laps to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Leg {
    next: String,
    laps: u32,
    first: bool,
}

/// Passes a baton (the number of hops so far) to the next member, `laps` times; the first member
/// starts the relay. Returns the hops it saw.
#[orchestration]
async fn runner(ctx: OrchestrationContext, leg: Leg) -> Result<u32, OrchestrationError> {
    let mut seen = 0;
    if leg.first {
        ctx.signal(&leg.next, "baton", &1u32)?;
    }
    for lap in 0..leg.laps {
        let hops: u32 = ctx.wait_for_signal("baton").await?;
        seen += 1;
        // The first member ends the relay after its last lap.
        if !(leg.first && lap + 1 == leg.laps) {
            ctx.signal(&leg.next, "baton", &(hops + 1))?;
        }
    }
    Ok(seen)
}

#[tokio::test]
async fn a_relay_of_warm_runs_continues_each_runner_in_the_commit_of_the_one_before() {
    let env = TestEnv::new(Registry::new().register(runner))
        .await
        .unwrap();
    let (size, laps) = (5usize, 3u32);
    let name = |i: usize| format!("r{}", i % size);
    for i in (0..size).rev() {
        let leg = Leg {
            next: name(i + 1),
            laps,
            first: i == 0,
        };
        env.client().start::<runner>(name(i), &leg).await.unwrap();
        // Each member's first turn runs (and parks, warm) before the next one starts.
        env.run_until_idle().await.unwrap();
    }
    for i in 0..size {
        let seen: u32 = env.client().result(&name(i)).await.unwrap();
        assert_eq!(seen, laps, "{}", name(i));
    }
    // A lap is five hops. The first member's turn continues the second, whose turn continues
    // the third, and so on; only the last hop of a lap, back to the member whose commit carries
    // the chain, goes through the queue. So four hops of five are delivered in memory.
    let here = env
        .run_events()
        .iter()
        .filter(|e| **e == RunEvent::DeliveredHere)
        .count();
    assert_eq!(here, (size - 1) * laps as usize);
}

#[tokio::test]
async fn replaying_every_turn_sends_each_signal_once() {
    // No live runs: each turn replays its history from the start, and a replay must not send
    // the signals of the turns it replays.
    let limits = WarmLimits {
        instances: 0,
        ..WarmLimits::default()
    };
    let env = TestEnv::with_limits(registry(), limits, HistoryWarning::default())
        .await
        .unwrap();
    each_signal_arrives_once(&env).await;
    assert!(
        !env.run_events().contains(&RunEvent::DeliveredHere),
        "nothing is warm, so nothing is delivered in memory"
    );
    // Every turn that finds code decisions in its history rebuilds its run, a cache miss: `a`'s
    // four turns after its serve, and `b`'s four after its first throw (`b` decided nothing
    // before that one). Nothing is kept, so each finds no run at all.
    let replays = env
        .run_events()
        .iter()
        .filter(|e| matches!(e, RunEvent::Replayed(_)))
        .count();
    assert_eq!(replays, 8);
    assert!(
        env.run_events()
            .iter()
            .filter(|e| matches!(e, RunEvent::Replayed(_)))
            .all(|e| *e == RunEvent::Replayed(Miss::NotWarm)),
        "{:?}",
        env.run_events()
    );
}

#[tokio::test]
async fn a_signal_to_an_instance_that_ended_or_never_was_is_dropped_and_the_sender_goes_on() {
    let env = TestEnv::new(registry()).await.unwrap();
    let client = env.client();
    // `done` ends at once: it waits for nothing after a rally of one.
    let over = Game {
        partner: "nobody".into(),
        throws: 0,
        serve: false,
    };
    client.start::<player>("done", &over).await.unwrap();
    client
        .send(
            "done",
            BALL,
            &Ball {
                from: "x".into(),
                count: 1,
            },
        )
        .await
        .unwrap();
    let _: u64 = client.result("done").await.unwrap();
    for target in ["done", "missing"] {
        let id = format!("shout-{target}");
        client
            .start::<shout>(id.as_str(), &target.to_string())
            .await
            .unwrap();
        let said: String = client.result(&id).await.unwrap();
        assert_eq!(said, "shouted");
        let history = client.history(&id).await.unwrap();
        assert_eq!(
            count(&history, |e| matches!(e, HistoryEvent::SignalSent { .. })),
            1
        );
    }
    let dropped = env
        .run_events()
        .iter()
        .filter(|e| **e == RunEvent::SignalDropped)
        .count();
    assert_eq!(dropped, 2);
    // The ended instance's history is closed: nothing was appended after its end.
    let done = client.history("done").await.unwrap();
    assert!(matches!(
        done.last().map(|e| &e.event),
        Some(HistoryEvent::WorkflowCompleted { .. })
    ));
    assert_eq!(
        client.describe("done").await.unwrap().status,
        InstanceStatus::Completed
    );
}

#[orchestration]
async fn narcissus(ctx: OrchestrationContext, _in: ()) -> Result<(), OrchestrationError> {
    ctx.signal(&ctx.instance_id(), "mirror", &())?;
    Ok(())
}

#[tokio::test]
async fn a_signal_to_itself_fails_the_orchestration_with_a_clear_message() {
    let env = TestEnv::new(Registry::new().register(narcissus))
        .await
        .unwrap();
    env.client().start::<narcissus>("n", &()).await.unwrap();
    let err = env.client().result::<()>("n").await.unwrap_err();
    assert!(err.to_string().contains("to itself"), "{err}");
}
