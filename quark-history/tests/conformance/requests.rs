//! Answers to queries and updates: the first answer stands, a collected one is gone, and one
//! nobody collects is dropped after an hour.

use quark_history::testing::TestStore;
use quark_history::{ANSWERS_KEPT_FOR, Answer, Payload};

use crate::support::conformance;

conformance!(the_first_answer_stands_until_collected_or_stale);

async fn the_first_answer_stands_until_collected_or_stale(t: &TestStore) {
    let value = Answer::Value(Payload::json(&serde_json::json!({"items": 3})).unwrap());
    assert_eq!(t.store.request_answer("cart-1", "q1").await.unwrap(), None);
    let stood = t
        .store
        .answer_request("cart-1", "q1", value.clone())
        .await
        .unwrap();
    assert_eq!(stood, value);
    // A request run twice is answered once: the second answer does not replace the first.
    let again = t
        .store
        .answer_request("cart-1", "q1", Answer::Rejected("too late".into()))
        .await
        .unwrap();
    assert_eq!(again, value, "the first answer stands");
    assert_eq!(
        t.store.request_answer("cart-1", "q1").await.unwrap(),
        Some(value)
    );

    let rejected = Answer::Rejected("quantity must be positive".into());
    t.store
        .answer_request("cart-1", "u1", rejected.clone())
        .await
        .unwrap();
    assert!(t.store.forget_answer("cart-1", "q1").await.unwrap());
    assert!(
        !t.store.forget_answer("cart-1", "q1").await.unwrap(),
        "already gone"
    );
    assert_eq!(t.store.request_answer("cart-1", "q1").await.unwrap(), None);
    assert_eq!(
        t.store.request_answer("cart-1", "u1").await.unwrap(),
        Some(rejected)
    );
    // Ids are the instance's: another instance's request of the same id has its own answer.
    assert_eq!(t.store.request_answer("cart-2", "u1").await.unwrap(), None);
    let other = Answer::Rejected("cart-2's own".into());
    assert_eq!(
        t.store
            .answer_request("cart-2", "u1", other.clone())
            .await
            .unwrap(),
        other
    );

    // Nobody collects `u1`: the next answer given after the retention drops it.
    t.clock
        .advance(ANSWERS_KEPT_FOR + std::time::Duration::from_secs(1));
    t.store
        .answer_request("cart-2", "q2", Answer::Rejected("no handler".into()))
        .await
        .unwrap();
    assert_eq!(t.store.request_answer("cart-1", "u1").await.unwrap(), None);
    assert!(
        t.store
            .request_answer("cart-2", "q2")
            .await
            .unwrap()
            .is_some()
    );
}
