//! Properties: for random command sequences, the state loaded from a snapshot and the tail equals
//! the state folded from the whole stream and the state a model of the commands predicts; the
//! state at version N equals the first N events folded.

use std::sync::Arc;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::{At, Command, Decision, Entities, Entity};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    total: i64,
    changes: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Moved {
    Up(i64),
    Down(i64),
}

fn apply_counter(state: &mut Counter, event: &Moved) {
    match event {
        Moved::Up(n) => state.total += n,
        Moved::Down(n) => state.total -= n,
    }
    state.changes += 1;
}

/// Snapshots every third event.
struct Snapshotted;

impl Entity for Snapshotted {
    const TYPE: &'static str = "Counter";
    const SNAPSHOT_EVERY: u64 = 3;
    type State = Counter;
    type Event = Moved;
    type Rejection = String;
    fn apply(state: &mut Counter, event: &Moved) {
        apply_counter(state, event)
    }
}

/// The same streams read without any snapshot (another schema ignores them): the whole stream.
struct Folded;

impl Entity for Folded {
    const TYPE: &'static str = "Counter";
    const SCHEMA: u32 = 99;
    const SNAPSHOT_EVERY: u64 = 0;
    type State = Counter;
    type Event = Moved;
    type Rejection = String;
    fn apply(state: &mut Counter, event: &Moved) {
        apply_counter(state, event)
    }
}

/// Moves the counter by `n` (one or two events), refused below zero.
#[derive(Debug, Clone, Copy)]
struct Move(i64);

impl Command<Snapshotted> for Move {
    const NAME: &'static str = "Move";
    type Reply = ();
    fn handle(&self, state: &Counter) -> Result<Decision<Moved, ()>, String> {
        if state.total + self.0 < 0 {
            return Err(format!("{} would go below zero", state.total));
        }
        Ok(match self.0 {
            0 => Decision::nothing(),
            n if n > 0 && n % 2 == 0 => Decision::emit([Moved::Up(n / 2), Moved::Up(n / 2)]),
            n if n > 0 => Decision::emit([Moved::Up(n)]),
            n => Decision::emit([Moved::Down(-n)]),
        })
    }
}

fn moves() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(-20i64..30, 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn snapshot_and_tail_equal_the_whole_stream_and_time_travel_equals_a_prefix(
        moves in moves(),
        at in 0usize..100,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = quark_history::open("sqlite::memory:", Default::default()).await.unwrap();
            let writer = Entities::new(Arc::clone(&store)).entity::<Snapshotted>("c");
            let mut model = Counter::default();
            for n in &moves {
                let refused = writer.call(&Move(*n)).await.is_err();
                prop_assert_eq!(refused, model.total + n < 0);
                if !refused {
                    // The model of the decision above, event by event.
                    let events = match *n {
                        0 => vec![],
                        n if n > 0 && n % 2 == 0 => vec![Moved::Up(n / 2), Moved::Up(n / 2)],
                        n if n > 0 => vec![Moved::Up(n)],
                        n => vec![Moved::Down(-n)],
                    };
                    for e in &events {
                        apply_counter(&mut model, e);
                    }
                }
            }
            let fresh = Entities::new(Arc::clone(&store));
            let from_snapshot = fresh.entity::<Snapshotted>("c").state().await.unwrap();
            let whole = fresh.entity::<Folded>("c").state().await.unwrap();
            prop_assert_eq!(&from_snapshot, &whole);
            prop_assert_eq!(&from_snapshot, &model);

            let version = fresh.entity::<Folded>("c").version().await.unwrap();
            let n = (at as u64).min(version);
            let (travelled, v) = fresh
                .entity::<Snapshotted>("c")
                .state_at(At::Version(n))
                .await
                .unwrap();
            let mut prefix = Counter::default();
            for e in fresh.entity::<Folded>("c").events(0, Some(n)).await.unwrap() {
                apply_counter(&mut prefix, &e.event);
            }
            prop_assert_eq!(v, n);
            prop_assert_eq!(travelled, prefix);
            Ok(())
        })?;
    }
}
