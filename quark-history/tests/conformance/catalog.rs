//! The catalog of registered types: what workers publish is what a process without the code
//! reads back, the last registration of a name wins, and kinds do not collide.

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{Clock, RegisteredType, TypeKind};

use crate::support::conformance;

conformance!(it_keeps_the_last_registration_of_each_type,);

async fn it_keeps_the_last_registration_of_each_type(t: &TestStore) {
    assert!(t.store.registered_types().await.unwrap().is_empty());
    let first = t.clock.now();
    t.store
        .publish_types(vec![
            RegisteredType::new(TypeKind::Orchestration, "order", 1, "orders", "w1"),
            RegisteredType::new(TypeKind::Activity, "charge", 0, "payments", "w1")
                .options(r#"{"queue":"payments"}"#),
            // An activity may share an orchestration's name: kinds are apart.
            RegisteredType::new(TypeKind::Activity, "order", 0, "default", "w1"),
        ])
        .await
        .unwrap();
    let order = t
        .store
        .registered_type(TypeKind::Orchestration, "order")
        .await
        .unwrap()
        .expect("order is registered");
    assert_eq!(
        (
            order.version,
            order.queue.as_str(),
            order.worker_id.as_str()
        ),
        (1, "orders", "w1")
    );
    assert_eq!(order.registered_at, first);

    // A newer worker registers version 2 of `order` on another queue.
    t.clock.advance(Duration::from_secs(5));
    t.store
        .publish_types(vec![RegisteredType::new(
            TypeKind::Orchestration,
            "order",
            2,
            "orders-v2",
            "w2",
        )])
        .await
        .unwrap();
    let all = t.store.registered_types().await.unwrap();
    let listed: Vec<(TypeKind, &str, u32, &str, &str)> = all
        .iter()
        .map(|r| {
            (
                r.kind,
                r.name.as_str(),
                r.version,
                r.queue.as_str(),
                r.worker_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (TypeKind::Orchestration, "order", 2, "orders-v2", "w2"),
            (TypeKind::Activity, "charge", 0, "payments", "w1"),
            (TypeKind::Activity, "order", 0, "default", "w1"),
        ]
    );
    assert_eq!(all[0].registered_at, t.clock.now());
    assert_eq!(all[1].options, r#"{"queue":"payments"}"#);
    assert_eq!(all[0].options, "");
    assert!(
        t.store
            .registered_type(TypeKind::Orchestration, "charge")
            .await
            .unwrap()
            .is_none(),
        "charge is an activity, not an orchestration"
    );
}
