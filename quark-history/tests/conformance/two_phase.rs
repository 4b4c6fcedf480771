//! Two-phase commit: the decision log on both backends, and the coordinator across two more
//! PostgreSQL servers (`bash .ci/clusters` makes them), crashed at each point of the protocol.
//! A crash is staged by stopping where the protocol would stop: branches left open (their
//! connections closed), prepared but undecided, decided but not finished, finished in one
//! participant only. Recovery must then finish every branch by the recorded decision, and
//! nothing may stay prepared.

use std::time::Duration;

use quark_history::Error;
use quark_history::sqlx::{self, PgPool};
use quark_history::testing::{ClusterDatabases, TestStore};
use quark_history::two_phase::{Branch, Coordinator, Decision, Participants};

use crate::support::conformance;

conformance!(
    the_first_decision_stands_and_a_commit_after_an_abort_fails,
    branches_commit_in_every_participant_or_in_none,
    recovery_finishes_every_crash_point_by_the_recorded_decision,
    a_late_coordinator_cannot_commit_what_recovery_gave_up,
    an_operator_resolves_by_hand_without_contradicting_a_decision,
    a_retried_attempt_gives_up_its_earlier_attempts_at_once,
    a_branch_whose_statement_failed_is_not_prepared,
);

async fn the_first_decision_stands_and_a_commit_after_an_abort_fails(t: &TestStore) {
    let id = t.store.coordinator_id().await.unwrap();
    assert_eq!(t.store.coordinator_id().await.unwrap(), id, "made once");
    let gid = format!("q2pc:{id}:k1");
    let names = vec!["a".to_string(), "b".to_string()];
    assert_eq!(t.store.decision(&gid).await.unwrap(), None);
    assert_eq!(
        t.store.decide(&gid, Decision::Abort, &names).await.unwrap(),
        Decision::Abort
    );
    assert_eq!(
        t.store
            .decide(&gid, Decision::Commit, &names)
            .await
            .unwrap(),
        Decision::Abort,
        "the first decision stands"
    );
    let record = t.store.decision(&gid).await.unwrap().unwrap();
    assert_eq!(record.participants, names);
    assert_eq!(record.decision, Decision::Abort);

    // A commit decided in the engine's transaction finds the abort and fails; nothing of the
    // transaction lands.
    let mut tx = t.store.begin_tx().await.unwrap();
    match tx.decide_commit(&gid, &names).await {
        Err(Error::Decided { decision, .. }) => assert_eq!(decision, Decision::Abort),
        other => panic!("a commit after an abort must fail, got {other:?}"),
    }
    drop(tx);

    // In a transaction that commits, the decision is there; rolled back, it is not.
    let other = format!("q2pc:{id}:k2");
    let mut tx = t.store.begin_tx().await.unwrap();
    tx.decide_commit(&other, &names).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(t.store.decision(&other).await.unwrap(), None);
    let mut tx = t.store.begin_tx().await.unwrap();
    tx.decide_commit(&other, &names).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        t.store.decision(&other).await.unwrap().unwrap().decision,
        Decision::Commit
    );
    assert_eq!(t.store.decisions().await.unwrap().len(), 2);
    assert!(t.store.forget_decision(&other).await.unwrap());
    assert!(!t.store.forget_decision(&other).await.unwrap());
}

/// Two banks on two servers, one account each, and a coordinator deciding in `t`'s log.
struct Banks {
    dbs: ClusterDatabases,
    a: PgPool,
    b: PgPool,
    coordinator: Coordinator,
}

impl Banks {
    async fn open(t: &TestStore) -> Option<Banks> {
        let dbs = ClusterDatabases::create(2).await?;
        let a = PgPool::connect(&dbs.urls[0]).await.unwrap();
        let b = PgPool::connect(&dbs.urls[1]).await.unwrap();
        for pool in [&a, &b] {
            sqlx::raw_sql(
                "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL);
                 INSERT INTO accounts VALUES ('x', 100);",
            )
            .execute(pool)
            .await
            .unwrap();
        }
        let participants =
            Participants::connect([("bank_a", &dbs.urls[0]), ("bank_b", &dbs.urls[1])]).unwrap();
        let coordinator = Coordinator::new(t.store.clone(), participants);
        Some(Banks {
            dbs,
            a,
            b,
            coordinator,
        })
    }

    async fn balances(&self) -> (i64, i64) {
        let read = "SELECT balance FROM accounts WHERE id = 'x'";
        (
            sqlx::query_scalar(read).fetch_one(&self.a).await.unwrap(),
            sqlx::query_scalar(read).fetch_one(&self.b).await.unwrap(),
        )
    }

    async fn prepared(&self) -> usize {
        let count = "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()";
        let a: i64 = sqlx::query_scalar(count).fetch_one(&self.a).await.unwrap();
        let b: i64 = sqlx::query_scalar(count).fetch_one(&self.b).await.unwrap();
        (a + b) as usize
    }

    /// Opens both branches of a transfer of `amount` from A to B.
    async fn transfer(&self, amount: i64) -> Vec<Branch> {
        vec![
            self.branch("bank_a", -amount).await,
            self.branch("bank_b", amount).await,
        ]
    }

    /// Opens a branch in `participant` that adds `amount` to its account.
    async fn branch(&self, participant: &str, amount: i64) -> Branch {
        let mut branch = self.coordinator.begin(participant).await.unwrap();
        sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = 'x'")
            .bind(amount)
            .execute(branch.connection())
            .await
            .unwrap();
        branch
    }

    async fn cleanup(self) {
        self.a.close().await;
        self.b.close().await;
        self.dbs.cleanup().await;
    }
}

async fn branches_commit_in_every_participant_or_in_none(t: &TestStore) {
    let Some(banks) = Banks::open(t).await else {
        return;
    };
    let moved = banks
        .coordinator
        .run("transfer-1", async |c: &Coordinator| {
            let mut branches = banks.transfer(30).await;
            // The coordinator is the one the branches were opened by.
            assert_eq!(c.participants().names().count(), 2);
            branches.reverse();
            Ok((30, branches))
        })
        .await
        .unwrap();
    assert_eq!(moved, 30);
    assert_eq!(banks.balances().await, (70, 130));
    assert_eq!(banks.prepared().await, 0);
    assert!(
        t.store.decisions().await.unwrap().is_empty(),
        "a finished commit's decision is forgotten"
    );

    // Work that fails before the decision leaves nothing in either bank.
    let failed = banks
        .coordinator
        .run("transfer-2", async |_: &Coordinator| {
            let _branches = banks.transfer(50).await;
            Err::<((), Vec<_>), _>(Error::Invalid("the transfer's check failed".into()))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(banks.balances().await, (70, 130));
    assert_eq!(banks.prepared().await, 0);
    banks.cleanup().await;
}

async fn recovery_finishes_every_crash_point_by_the_recorded_decision(t: &TestStore) {
    let Some(banks) = Banks::open(t).await else {
        return;
    };
    let c = &banks.coordinator;
    let names = ["bank_a".to_string(), "bank_b".to_string()];

    // Before any prepare: the coordinator's connections close, the servers roll back.
    drop(banks.transfer(10).await);
    assert_eq!(banks.balances().await, (100, 100));
    assert_eq!(banks.prepared().await, 0);

    // Between the prepares: A is prepared, B's branch is lost with its connection.
    let between = c.gid("between").await.unwrap();
    let mut branches = banks.transfer(10).await;
    let b = branches.pop().unwrap();
    let prepared_a = c.prepare(&between, branches).await.unwrap();
    drop(b);
    assert_eq!(prepared_a.participants(), &names[..1]);
    // Within the grace period it is left to its coordinator.
    let pass = c.recover(Duration::from_secs(3600)).await.unwrap();
    assert_eq!((pass.pending, pass.given_up), (1, 0));
    assert_eq!(banks.prepared().await, 1);
    // Past it, it is given up.
    let pass = c.recover(Duration::ZERO).await.unwrap();
    assert_eq!((pass.given_up, pass.rolled_back), (1, 1));
    assert_eq!(banks.prepared().await, 0);
    assert_eq!(banks.balances().await, (100, 100));

    // After the decision, before any commit prepared.
    let decided = c.gid("decided").await.unwrap();
    let prepared = c.prepare(&decided, banks.transfer(20).await).await.unwrap();
    assert_eq!(
        t.store
            .decide(&decided, Decision::Commit, prepared.participants())
            .await
            .unwrap(),
        Decision::Commit
    );
    let doubts = c.in_doubt().await.unwrap();
    assert_eq!(doubts.len(), 2);
    assert!(
        doubts
            .iter()
            .all(|d| d.gid == decided && d.decision == Some(Decision::Commit))
    );
    // A reader of A alone sees nothing yet: the branch is prepared, not committed.
    assert_eq!(banks.balances().await, (100, 100));
    let pass = c.recover(Duration::ZERO).await.unwrap();
    assert_eq!((pass.committed, pass.given_up, pass.forgotten), (2, 0, 1));
    assert_eq!(banks.balances().await, (80, 120));
    assert_eq!(banks.prepared().await, 0);
    assert!(c.in_doubt().await.unwrap().is_empty());

    // Between the commits: A's branch committed, B's still prepared.
    let half = c.gid("half").await.unwrap();
    let prepared = c.prepare(&half, banks.transfer(5).await).await.unwrap();
    t.store
        .decide(&half, Decision::Commit, prepared.participants())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("COMMIT PREPARED '{half}'")))
        .execute(&banks.a)
        .await
        .unwrap();
    assert_eq!(banks.balances().await, (75, 120), "money in flight");
    let pass = c.recover(Duration::ZERO).await.unwrap();
    assert_eq!((pass.committed, pass.forgotten), (1, 1));
    assert_eq!(banks.balances().await, (75, 125));
    assert_eq!(banks.prepared().await, 0);
    assert!(t.store.decision(&half).await.unwrap().is_none());
    banks.cleanup().await;
}

async fn a_late_coordinator_cannot_commit_what_recovery_gave_up(t: &TestStore) {
    let Some(banks) = Banks::open(t).await else {
        return;
    };
    let c = &banks.coordinator;
    let gid = c.gid("late").await.unwrap();
    let prepared = c.prepare(&gid, banks.transfer(40).await).await.unwrap();
    // The coordinator stalls; recovery takes it for dead.
    let pass = c.recover(Duration::ZERO).await.unwrap();
    assert_eq!(pass.given_up, 1);
    // It comes back and decides to commit in its engine transaction: refused.
    let mut tx = t.store.begin_tx().await.unwrap();
    let refused = tx.decide_commit(&gid, prepared.participants()).await;
    assert!(
        matches!(
            refused,
            Err(Error::Decided {
                decision: Decision::Abort,
                ..
            })
        ),
        "{refused:?}"
    );
    drop(tx);
    assert_eq!(banks.balances().await, (100, 100));
    assert_eq!(banks.prepared().await, 0);
    banks.cleanup().await;
}

async fn an_operator_resolves_by_hand_without_contradicting_a_decision(t: &TestStore) {
    let Some(banks) = Banks::open(t).await else {
        return;
    };
    let c = &banks.coordinator;
    // Undecided: the operator's decision is recorded and carried out.
    let gid = c.gid("by-hand").await.unwrap();
    let _prepared = c.prepare(&gid, banks.transfer(25).await).await.unwrap();
    assert_eq!(
        c.resolve(&gid, Decision::Commit).await.unwrap(),
        Decision::Commit
    );
    assert_eq!(banks.balances().await, (75, 125));
    assert_eq!(banks.prepared().await, 0);

    // Decided to abort: an operator asking to commit gets the abort carried out instead.
    let gid = c.gid("aborted").await.unwrap();
    let prepared = c.prepare(&gid, banks.transfer(25).await).await.unwrap();
    t.store
        .decide(&gid, Decision::Abort, prepared.participants())
        .await
        .unwrap();
    assert_eq!(
        c.resolve(&gid, Decision::Commit).await.unwrap(),
        Decision::Abort
    );
    assert_eq!(banks.balances().await, (75, 125));
    assert_eq!(banks.prepared().await, 0);
    assert!(c.resolve("not a gid", Decision::Commit).await.is_err());
    banks.cleanup().await;
}

async fn a_retried_attempt_gives_up_its_earlier_attempts_at_once(t: &TestStore) {
    let Some(banks) = Banks::open(t).await else {
        return;
    };
    let c = &banks.coordinator;
    // Attempt 1 of task 7 prepared A only (its worker died); attempt 2 prepared B only; task 70
    // (another task whose id starts alike) has its own, which touches no account.
    let first = c.attempt_gid(7, 1).await.unwrap();
    let _ = c
        .prepare(&first, vec![banks.branch("bank_a", -1).await])
        .await
        .unwrap();
    let second = c.attempt_gid(7, 2).await.unwrap();
    let _ = c
        .prepare(&second, vec![banks.branch("bank_b", 1).await])
        .await
        .unwrap();
    let other = c.attempt_gid(70, 1).await.unwrap();
    let _ = c
        .prepare(&other, vec![c.begin("bank_a").await.unwrap()])
        .await
        .unwrap();
    assert_eq!(banks.prepared().await, 3);

    assert_eq!(c.abandon_attempts(7, 3).await.unwrap(), 2);
    let left: Vec<String> = c
        .in_doubt()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.gid)
        .collect();
    assert_eq!(left, vec![other.clone()], "only task 70's stays");
    assert_eq!(
        t.store.decision(&first).await.unwrap().unwrap().decision,
        Decision::Abort
    );
    assert_eq!(banks.balances().await, (100, 100));
    c.resolve(&other, Decision::Abort).await.unwrap();
    banks.cleanup().await;
}

async fn a_branch_whose_statement_failed_is_not_prepared(t: &TestStore) {
    let Some(banks) = Banks::open(t).await else {
        return;
    };
    let c = &banks.coordinator;
    let mut a = c.begin("bank_a").await.unwrap();
    sqlx::query("UPDATE accounts SET balance = 0 WHERE id = 'x'")
        .execute(a.connection())
        .await
        .unwrap();
    // The caller catches the error and goes on: the server has aborted the transaction.
    let failed = sqlx::query("INSERT INTO accounts VALUES ('x', 1)")
        .execute(a.connection())
        .await;
    assert!(failed.is_err());
    let gid = c.gid("swallowed").await.unwrap();
    let err = c.prepare(&gid, vec![a]).await.unwrap_err();
    assert!(
        err.to_string().contains("failed before it was prepared"),
        "{err}"
    );
    assert_eq!(banks.prepared().await, 0);
    assert_eq!(banks.balances().await, (100, 100));
    // An unknown participant is named in the error.
    let err = c.begin("bank_z").await.unwrap_err();
    assert!(err.to_string().contains("bank_a, bank_b"), "{err}");
    banks.cleanup().await;
}
