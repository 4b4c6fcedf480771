//! The API's tokens: stored without their secrets, a taken id refused, each revoked once.

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{Clock, Scope, TokenRecord};

use crate::support::conformance;

conformance!(it_stores_tokens_without_secrets_and_revokes_each_once);

async fn it_stores_tokens_without_secrets_and_revokes_each_once(t: &TestStore) {
    let token = |id: &str, scope| TokenRecord {
        id: id.into(),
        name: format!("{id} token"),
        scope,
        secret_hash: format!("hash-of-{id}"),
        rate_limit: (scope == Scope::Admin).then_some(100),
        created_at: quark_history::Timestamp::from_micros(0),
        revoked_at: None,
        namespace: (scope == Scope::Read).then(|| "acme".to_string()),
    };
    let first = t
        .store
        .create_token(token("a1", Scope::Read))
        .await
        .unwrap();
    assert_eq!(first.created_at, t.clock.now(), "stamped by the store");
    t.clock.advance(Duration::from_secs(1));
    t.store
        .create_token(token("b2", Scope::Admin))
        .await
        .unwrap();
    let taken = t
        .store
        .create_token(token("a1", Scope::Admin))
        .await
        .unwrap_err();
    assert!(
        taken.to_string().contains("token id `a1` is taken"),
        "{taken}"
    );
    assert_eq!(
        t.store.token("a1").await.unwrap().unwrap().scope,
        Scope::Read,
        "a taken id leaves the first token as it was"
    );

    t.clock.advance(Duration::from_secs(1));
    assert!(t.store.revoke_token("a1").await.unwrap());
    assert!(!t.store.revoke_token("a1").await.unwrap(), "revoked once");
    assert!(!t.store.revoke_token("zz").await.unwrap(), "no such token");
    let listed = t.store.list_tokens().await.unwrap();
    let summary: Vec<(&str, Scope, &str, Option<u32>, bool)> = listed
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                r.scope,
                r.secret_hash.as_str(),
                r.rate_limit,
                r.revoked_at.is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a1", Scope::Read, "hash-of-a1", None, true),
            ("b2", Scope::Admin, "hash-of-b2", Some(100), false)
        ]
    );
    assert_eq!(listed[0].revoked_at, Some(t.clock.now()));
    assert_eq!(
        (
            listed[0].namespace.as_deref(),
            listed[1].namespace.as_deref()
        ),
        (Some("acme"), None),
        "a token's namespace is kept"
    );
    let bad = TokenRecord {
        namespace: Some("Not A Namespace".into()),
        ..token("c3", Scope::Read)
    };
    let refused = t.store.create_token(bad).await.unwrap_err();
    assert!(
        refused.to_string().contains("is not a namespace"),
        "{refused}"
    );
    assert!(t.store.token("c3").await.unwrap().is_none());
    assert!(t.store.token("zz").await.unwrap().is_none());
}
