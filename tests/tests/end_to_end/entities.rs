//! The entity conformance suite: event-sourced entities over the SDK's `Entities`, on SQLite and
//! PostgreSQL alike. Two `Entities` over one store stand for two processes: each keeps its own
//! warm states, and only the journal is shared.

use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    Backend, Clock, Commit, Error, EventLog, Expected, HistoryEvent, ManualClock, Payload, RedisLog,
};
use quark_workflow::WarmLimits;
use quark_workflow::entity::{
    At, CallMeta, Command, Decision, Entities, Entity, EntityError, Personal,
};
use quark_workflow::projection::{Batch, Projection, ProjectionError, Projector};
use serde::{Deserialize, Serialize};

log_tests!(
    it_refuses_a_command_that_fails_validation_and_appends_nothing,
    it_decides_again_against_fresh_state_after_another_writer_appended,
    it_keeps_every_deposit_of_concurrent_writers_in_one_gapless_stream,
    it_loads_from_the_newest_snapshot_of_its_schema_and_rebuilds_without_one,
    it_travels_to_a_version_or_a_time_and_diffs_two_versions,
    it_names_the_stream_and_version_of_an_event_it_cannot_read,
    it_refuses_an_oversized_event_with_its_size_and_the_limit,
    it_keeps_a_bounded_set_of_live_entities_with_their_footprints,
    it_seals_personal_fields_and_reads_them_redacted_once_the_subject_is_erased,
    it_applies_a_message_from_outside_once_however_often_and_wherever_it_arrives,
    it_snapshots_by_the_size_of_the_events_since_the_last_snapshot,
    it_commits_a_batch_as_if_one_commit_followed_another,
    it_commits_commands_on_several_entities_together_or_not_at_all,
);

// Retention needs the projections' checkpoints, which only the SQL stores keep.
quark_history::backend_tests!(it_removes_old_events_a_snapshot_covers_after_archiving_them);

/// Runs each conformance test on the three event logs: SQLite, PostgreSQL, Redis Streams.
macro_rules! log_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let t = super::Fixture::sql(quark_history::testing::sqlite().await);
                    super::$name(&t).await;
                    t.cleanup().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(t) = quark_history::testing::postgres().await else { return };
                    let t = super::Fixture::sql(t);
                    super::$name(&t).await;
                    t.cleanup().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    let Some(t) = super::Fixture::redis().await else { return };
                    super::$name(&t).await;
                    t.cleanup().await;
                }
            }
        )*
    };
}
use log_tests;

/// One event log under test, with the ways to look at (and damage) what it stores that the
/// tests need: SQL for the stores, Redis commands for Redis.
struct Fixture {
    log: Arc<dyn EventLog>,
    clock: ManualClock,
    sql: Option<TestStore>,
    redis: Option<RedisLog>,
}

impl Fixture {
    fn sql(t: TestStore) -> Self {
        Fixture {
            log: Arc::clone(&t.store) as Arc<dyn EventLog>,
            clock: t.clock.clone(),
            sql: Some(t),
            redis: None,
        }
    }

    async fn redis() -> Option<Self> {
        let (log, clock) = quark_history::testing::redis().await?;
        Some(Fixture {
            log: Arc::new(log.clone()),
            clock,
            sql: None,
            redis: Some(log),
        })
    }

    async fn cleanup(self) {
        if let Some(t) = self.sql {
            t.cleanup().await;
        }
        if let Some(r) = self.redis {
            r.destroy().await.unwrap();
        }
    }

    /// Entities as a process of its own would have them (a cache of its own).
    fn entities(&self) -> Entities {
        self.entities_with(WarmLimits::default())
    }

    fn entities_with(&self, limits: WarmLimits) -> Entities {
        match &self.sql {
            Some(t) => Entities::with_limits(Arc::clone(&t.store), limits),
            None => Entities::on_log(Arc::clone(&self.log), limits),
        }
    }

    async fn assert_intact(&self, stream: &str) {
        let report = match (&self.sql, &self.redis) {
            (Some(t), _) => t.store.verify(stream).await.unwrap(),
            (_, Some(r)) => r.verify(stream).await.unwrap(),
            _ => unreachable!("a fixture has a log"),
        };
        assert!(report.is_intact(), "{report:?}");
    }

    async fn snapshot_versions(&self, stream: &str) -> Vec<u64> {
        match (&self.sql, &self.redis) {
            (Some(t), _) => {
                let n = t
                    .scalar(&format!(
                        "SELECT COUNT(*) FROM snapshots WHERE stream_id = '{stream}'"
                    ))
                    .await;
                let mut v = Vec::new();
                for i in 0..n {
                    v.push(
                        t.scalar(&format!(
                            "SELECT version FROM snapshots WHERE stream_id = '{stream}' \
                             ORDER BY version LIMIT 1 OFFSET {i}"
                        ))
                        .await as u64,
                    );
                }
                v
            }
            (_, Some(r)) => r.snapshot_versions(stream).await.unwrap(),
            _ => unreachable!("a fixture has a log"),
        }
    }

    /// Replaces the stored state of the snapshot at `version` (all: `None`) with `bytes`.
    async fn overwrite_snapshot(&self, stream: &str, version: Option<u64>, bytes: &[u8]) {
        match (&self.sql, &self.redis) {
            (Some(t), _) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let blob = match t.store.backend() {
                    Backend::Postgres => format!("'\\x{hex}'::bytea"),
                    _ => format!("X'{hex}'"),
                };
                let only = version.map_or(String::new(), |v| format!(" AND version = {v}"));
                t.execute(&format!(
                    "UPDATE snapshots SET state = {blob} WHERE stream_id = '{stream}'{only}"
                ))
                .await;
            }
            (_, Some(r)) => r
                .overwrite_snapshot_state(stream, version, bytes)
                .await
                .unwrap(),
            _ => unreachable!("a fixture has a log"),
        }
    }

    /// How many stored events and snapshots of `stream` hold `needle` in the clear.
    async fn leaked(&self, stream: &str, needle: &str) -> i64 {
        match (&self.sql, &self.redis) {
            (Some(t), _) => {
                let as_text = |column: &str| match t.store.backend() {
                    Backend::Postgres => format!("convert_from({column}, 'UTF8')"),
                    _ => column.to_string(),
                };
                let mut n = 0;
                for (table, id, column) in [
                    ("history", "instance_id", "payload"),
                    ("snapshots", "stream_id", "state"),
                ] {
                    n += t
                        .scalar(&format!(
                            "SELECT COUNT(*) FROM {table} WHERE {id} = '{stream}' \
                             AND CAST({} AS TEXT) LIKE '%{needle}%'",
                            as_text(column)
                        ))
                        .await;
                }
                n
            }
            (_, Some(r)) => r
                .stored_bytes(stream)
                .await
                .unwrap()
                .iter()
                .filter(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .count() as i64,
            _ => unreachable!("a fixture has a log"),
        }
    }
}

#[tokio::test]
async fn it_refuses_personal_data_without_a_master_key_and_writes_nothing() {
    let t = quark_history::testing::sqlite_with(quark_history::StoreConfig::default()).await;
    let ann = Entities::new(Arc::clone(&t.store)).entity::<Customer>("ann");
    let e = ann.call(&Register("ann@example.com")).await.unwrap_err();
    assert!(
        matches!(&e, EntityError::Store(Error::Invalid(m)) if m.contains("master key")),
        "{e:?}"
    );
    assert_eq!(ann.version().await.unwrap(), 0);
    // Data without personal fields needs no key.
    ann.call(&ChangePlan("pro")).await.unwrap();
    t.cleanup().await;
}

struct Account;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Balance {
    cents: i64,
    deposits: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Deposited { cents: i64, memo: String },
    Withdrawn { cents: i64 },
}

#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Insufficient { balance: i64, asked: i64 },
    NotPositive,
}

fn apply_account(state: &mut Balance, event: &AccountEvent) {
    match event {
        AccountEvent::Deposited { cents, .. } => {
            state.cents += cents;
            state.deposits += 1;
        }
        AccountEvent::Withdrawn { cents } => state.cents -= cents,
    }
}

impl Entity for Account {
    const TYPE: &'static str = "Account";
    const SNAPSHOT_EVERY: u64 = 10;
    type State = Balance;
    type Event = AccountEvent;
    type Rejection = Refused;
    fn apply(state: &mut Balance, event: &AccountEvent) {
        apply_account(state, event)
    }
}

/// The same streams under a new state schema: it must not trust the old schema's snapshots.
struct AccountV2;

impl Entity for AccountV2 {
    const TYPE: &'static str = "Account";
    const SCHEMA: u32 = 2;
    const SNAPSHOT_EVERY: u64 = 0;
    type State = Balance;
    type Event = AccountEvent;
    type Rejection = Refused;
    fn apply(state: &mut Balance, event: &AccountEvent) {
        apply_account(state, event)
    }
}

struct Deposit(i64, String);

impl<E: Entity<State = Balance, Event = AccountEvent, Rejection = Refused>> Command<E> for Deposit {
    const NAME: &'static str = "Deposit";
    type Reply = i64;
    fn handle(&self, state: &Balance) -> Result<Decision<AccountEvent, i64>, Refused> {
        if self.0 <= 0 {
            return Err(Refused::NotPositive);
        }
        let event = AccountEvent::Deposited {
            cents: self.0,
            memo: self.1.clone(),
        };
        Ok(Decision::emit([event]).reply(state.cents + self.0))
    }
}

fn deposit(cents: i64) -> Deposit {
    Deposit(cents, String::new())
}

struct Withdraw(i64);

impl Command<Account> for Withdraw {
    const NAME: &'static str = "Withdraw";
    type Reply = i64;
    fn handle(&self, state: &Balance) -> Result<Decision<AccountEvent, i64>, Refused> {
        if self.0 > state.cents {
            return Err(Refused::Insufficient {
                balance: state.cents,
                asked: self.0,
            });
        }
        Ok(Decision::emit([AccountEvent::Withdrawn { cents: self.0 }]).reply(state.cents - self.0))
    }
}

fn entities(t: &Fixture) -> Entities {
    t.entities()
}

async fn it_refuses_a_command_that_fails_validation_and_appends_nothing(t: &Fixture) {
    let alice = entities(t).entity::<Account>("alice");
    assert_eq!(alice.call(&deposit(30)).await.unwrap(), 30);
    assert_eq!(alice.call(&Withdraw(10)).await.unwrap(), 20);

    let refused = alice.call(&Withdraw(50)).await.unwrap_err();
    assert_eq!(
        refused.rejection(),
        Some(&Refused::Insufficient {
            balance: 20,
            asked: 50
        })
    );
    let refused = alice.call(&deposit(-1)).await.unwrap_err();
    assert_eq!(refused.rejection(), Some(&Refused::NotPositive));
    // Nothing of either refusal is in the journal; a fresh process sees the same state.
    assert_eq!(alice.version().await.unwrap(), 2);
    let fresh = entities(t).entity::<Account>("alice");
    assert_eq!(
        fresh.state().await.unwrap(),
        Balance {
            cents: 20,
            deposits: 1
        }
    );
    assert_eq!(
        t.log
            .read_stream("Account/alice", quark_history::HistoryRange::All)
            .await
            .unwrap()
            .len(),
        2
    );
    t.assert_intact("Account/alice").await;
}

async fn it_decides_again_against_fresh_state_after_another_writer_appended(t: &Fixture) {
    let a = entities(t).entity::<Account>("alice");
    let b = entities(t).entity::<Account>("alice");
    a.call(&deposit(10)).await.unwrap();
    // b appends behind a's back: a's warm state (10) is stale.
    b.call(&deposit(5)).await.unwrap();
    // Against the stale state this withdrawal is refused (10 < 15): a refusal is confirmed
    // against the journal before it is returned, and decided again against 15.
    let meta = CallMeta::caused_by("transfer-7").correlated("order-42");
    assert_eq!(a.call_with(&Withdraw(15), meta).await.unwrap(), 0);
    assert_eq!(a.version().await.unwrap(), 3);
    assert_eq!(b.state().await.unwrap().cents, 0);

    // b moves on again; a's deposit, decided on its stale state, conflicts at its commit, catches
    // up and is decided again: its reply is the balance after both.
    b.call(&deposit(7)).await.unwrap();
    assert_eq!(a.call(&deposit(1)).await.unwrap(), 8);
    assert_eq!(b.state().await.unwrap().cents, 8);
    assert_eq!(a.version().await.unwrap(), 5);

    let events = a.events(0, None).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(events[2].event, AccountEvent::Withdrawn { cents: 15 });
    assert_eq!(events[2].event_type, "Withdrawn");
    assert_eq!(events[2].causation.as_deref(), Some("transfer-7"));
    assert_eq!(events[2].correlation.as_deref(), Some("order-42"));
}

async fn it_keeps_every_deposit_of_concurrent_writers_in_one_gapless_stream(t: &Fixture) {
    const WRITERS: usize = 4;
    const EACH: i64 = 25;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        // One `Entities` per writer: four processes racing on one key.
        let alice = entities(t).entity::<Account>("alice");
        tasks.push(tokio::spawn(async move {
            let mut contended = 0;
            for i in 0..EACH {
                let memo = format!("writer {w}, deposit {i}");
                loop {
                    match alice.call(&Deposit(1, memo.clone())).await {
                        Ok(_) => break,
                        // Lost the race every time it retried: nothing was appended, so
                        // calling again cannot double the deposit.
                        Err(EntityError::Contended { .. }) => contended += 1,
                        Err(e) => panic!("deposit failed: {e}"),
                    }
                }
            }
            contended
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total = WRITERS as i64 * EACH;
    let alice = entities(t).entity::<Account>("alice");
    assert_eq!(
        alice.state().await.unwrap(),
        Balance {
            cents: total,
            deposits: total as u32
        }
    );
    let events = alice.events(0, None).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=total as u64).collect::<Vec<_>>()
    );
    // Each writer's deposits, once each.
    let mut memos: Vec<String> = events
        .iter()
        .map(|e| match &e.event {
            AccountEvent::Deposited { memo, .. } => memo.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    memos.sort();
    memos.dedup();
    assert_eq!(memos.len(), total as usize);
    t.assert_intact("Account/alice").await;
}

async fn it_loads_from_the_newest_snapshot_of_its_schema_and_rebuilds_without_one(t: &Fixture) {
    let alice = entities(t).entity::<Account>("alice");
    for _ in 0..25 {
        alice.call(&deposit(1)).await.unwrap();
    }
    // Every 10 events: at 10 and 20.
    assert_eq!(t.snapshot_versions("Account/alice").await, [10, 20]);
    // A load starts from the snapshot at 20: doctor it, and a fresh process shows it.
    let doctored = serde_json::to_vec(&Balance {
        cents: 1000,
        deposits: 20,
    })
    .unwrap();
    t.overwrite_snapshot("Account/alice", Some(20), &doctored)
        .await;
    let fresh = entities(t).entity::<Account>("alice");
    assert_eq!(fresh.state().await.unwrap().cents, 1005);

    // Another schema ignores the snapshots and reads every event.
    let v2 = entities(t).entity::<AccountV2>("alice");
    assert_eq!(v2.state().await.unwrap().cents, 25);

    // A snapshot that does not decode is skipped: the state is rebuilt from the events.
    t.overwrite_snapshot("Account/alice", None, &[0x00, 0xff])
        .await;
    let rebuilt = entities(t).entity::<Account>("alice");
    assert_eq!(
        rebuilt.state().await.unwrap(),
        Balance {
            cents: 25,
            deposits: 25
        }
    );
}

async fn it_travels_to_a_version_or_a_time_and_diffs_two_versions(t: &Fixture) {
    let alice = entities(t).entity::<Account>("alice");
    let mut times = Vec::new();
    for cents in [10, 20, 30] {
        t.clock.advance(Duration::from_secs(60));
        alice.call(&deposit(cents)).await.unwrap();
        times.push(t.clock.now());
    }
    alice.call(&Withdraw(5)).await.unwrap();

    for (version, cents) in [(0, 0), (1, 10), (2, 30), (3, 60), (4, 55)] {
        let (state, at) = alice.state_at(At::Version(version)).await.unwrap();
        assert_eq!((state.cents, at), (cents, version), "at version {version}");
    }
    // By time: after the second deposit and before the third.
    let between = quark_history::Timestamp::from_micros(times[1].as_micros() + 1);
    let (state, version) = alice.state_at(At::Time(between)).await.unwrap();
    assert_eq!((state.cents, version), (30, 2));
    let before_all = quark_history::Timestamp::from_micros(times[0].as_micros() - 1);
    assert_eq!(alice.state_at(At::Time(before_all)).await.unwrap().1, 0);

    let diff = alice.diff(1, 3).await.unwrap();
    assert_eq!((diff.before.cents, diff.after.cents), (10, 60));
    assert_eq!(
        diff.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [2, 3]
    );

    let past_end = alice.state_at(At::Version(9)).await.unwrap_err();
    assert!(
        matches!(&past_end, EntityError::Store(Error::Invalid(m)) if m.contains("4 events")),
        "{past_end:?}"
    );
    assert!(alice.diff(3, 1).await.is_err());
    // Time travel reads the journal; the live state is still the present.
    assert_eq!(alice.state().await.unwrap().cents, 55);
}

async fn it_names_the_stream_and_version_of_an_event_it_cannot_read(t: &Fixture) {
    let alice = entities(t).entity::<Account>("alice");
    alice.call(&deposit(10)).await.unwrap();
    // Another program appends an event this code cannot read.
    t.log
        .append_commits(vec![Commit::new().append(
            "Account/alice",
            Expected::Seq(2),
            [HistoryEvent::EntityEvent {
                event_type: "Frozen".into(),
                data:
                    Payload::json(&serde_json::json!({ "Frozen": { "until": "never" } })).unwrap(),
                causation: None,
                correlation: None,
            }],
        )])
        .await
        .pop()
        .unwrap()
        .unwrap();
    let e = alice.call(&deposit(1)).await.unwrap_err();
    assert!(
        matches!(&e, EntityError::Decode { stream, version: 2, message }
            if stream == "Account/alice" && message.contains("Frozen")),
        "{e:?}"
    );
    let e = entities(t)
        .entity::<Account>("alice")
        .state()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EntityError::Decode { version: 2, .. }),
        "{e:?}"
    );
    // The refused deposit appended nothing.
    assert_eq!(
        t.log
            .read_stream("Account/alice", quark_history::HistoryRange::All)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn it_refuses_an_oversized_event_with_its_size_and_the_limit(t: &Fixture) {
    let alice = entities(t).entity::<Account>("alice");
    alice.call(&deposit(10)).await.unwrap();
    let limit = t.log.log_config().max_payload_bytes;
    let huge = Deposit(1, "x".repeat(limit + 1));
    let e = alice.call(&huge).await.unwrap_err();
    assert!(
        matches!(&e, EntityError::Store(Error::PayloadTooLarge { size, limit: l })
            if *size > limit && *l == limit),
        "{e:?}"
    );
    assert_eq!(alice.version().await.unwrap(), 1);
    assert_eq!(alice.call(&deposit(1)).await.unwrap(), 11);
}

async fn it_keeps_a_bounded_set_of_live_entities_with_their_footprints(t: &Fixture) {
    let limits = WarmLimits {
        instances: 2,
        bytes: usize::MAX,
    };
    let live = t.entities_with(limits);
    for key in ["a", "b", "c"] {
        live.entity::<Account>(key).call(&deposit(5)).await.unwrap();
    }
    let kept = live.live();
    assert_eq!(
        kept.iter()
            .map(|l| l.stream_id.as_str())
            .collect::<Vec<_>>(),
        ["Account/b", "Account/c"]
    );
    let expected = serde_json::to_vec(&Balance {
        cents: 0,
        deposits: 0,
    })
    .unwrap()
    .len();
    for l in &kept {
        // Measured at load (the empty state), kept until the next snapshot.
        assert_eq!((l.footprint, l.version), (expected, 1), "{l:?}");
    }
    // The evicted one loads again, from the journal.
    assert_eq!(live.entity::<Account>("a").state().await.unwrap().cents, 5);
}

/// A customer whose email is personal; the plan is not.
struct Customer;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    email: Option<Personal<String>>,
    plan: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CustomerEvent {
    Registered { email: Personal<String> },
    PlanChanged { plan: String },
}

impl Entity for Customer {
    const TYPE: &'static str = "Customer";
    const SNAPSHOT_EVERY: u64 = 2;
    type State = Profile;
    type Event = CustomerEvent;
    type Rejection = String;
    fn apply(state: &mut Profile, event: &CustomerEvent) {
        match event {
            CustomerEvent::Registered { email } => state.email = Some(email.clone()),
            CustomerEvent::PlanChanged { plan } => state.plan = plan.clone(),
        }
    }
}

struct Register(&'static str);

impl Command<Customer> for Register {
    const NAME: &'static str = "Register";
    type Reply = ();
    fn handle(&self, _: &Profile) -> Result<Decision<CustomerEvent, ()>, String> {
        Ok(Decision::emit([CustomerEvent::Registered {
            email: self.0.to_string().into(),
        }]))
    }
}

struct ChangePlan(&'static str);

impl Command<Customer> for ChangePlan {
    const NAME: &'static str = "ChangePlan";
    type Reply = Option<Personal<String>>;
    fn handle(&self, state: &Profile) -> Result<Decision<CustomerEvent, Self::Reply>, String> {
        Ok(Decision::emit([CustomerEvent::PlanChanged {
            plan: self.0.to_string(),
        }])
        .reply(state.email.clone()))
    }
}

async fn it_seals_personal_fields_and_reads_them_redacted_once_the_subject_is_erased(t: &Fixture) {
    let entities = t.entities();
    let ann = entities.entity::<Customer>("ann");
    ann.call(&Register("ann@example.com")).await.unwrap();
    ann.call(&ChangePlan("pro")).await.unwrap();
    ann.call(&ChangePlan("team")).await.unwrap();
    let email = Some(Personal::Known("ann@example.com".to_string()));
    assert_eq!(ann.state().await.unwrap().email, email);

    // The journal and the snapshot hold ciphertext only (and the look would find the clear
    // text: the plan is stored as is).
    assert_eq!(t.leaked("Customer/ann", "ann@example.com").await, 0);
    assert!(t.leaked("Customer/ann", "team").await > 0);
    assert_eq!(t.snapshot_versions("Customer/ann").await.len(), 1);
    // A fresh process reads it back, from the snapshot and from the events.
    let fresh = t.entities().entity::<Customer>("ann");
    assert_eq!(fresh.state().await.unwrap().email, email);
    assert_eq!(fresh.state_at(At::Version(1)).await.unwrap().0.email, email);

    // Erased: the key is gone; everything else stays.
    assert!(entities.erase_subject("ann").await.unwrap());
    assert!(!entities.erase_subject("ann").await.unwrap());
    let redacted = Some(Personal::Redacted);
    for reader in [ann.clone(), t.entities().entity::<Customer>("ann")] {
        let profile = reader.state().await.unwrap();
        assert_eq!(
            (profile.email, profile.plan.as_str()),
            (redacted.clone(), "team")
        );
    }
    assert_eq!(
        ann.state_at(At::Version(1)).await.unwrap().0.email,
        redacted
    );
    // A command still works on the rest, and sees what was redacted.
    assert_eq!(ann.call(&ChangePlan("free")).await.unwrap(), redacted);
    // New personal data for an erased subject is not stored either.
    ann.call(&Register("ann@new.example.com")).await.unwrap();
    assert_eq!(ann.state().await.unwrap().email, redacted);
    assert_eq!(t.leaked("Customer/ann", "ann@new").await, 0);
    // The hash chain is over the ciphertext: erasure breaks nothing.
    t.assert_intact("Customer/ann").await;
    // A projection rebuilt after the erasure sees the redaction, not the address (the Redis
    // projections' suite shows the same of a consumer group).
    let Some(t) = &t.sql else { return };
    t.execute("CREATE TABLE emails (customer TEXT NOT NULL, email TEXT NOT NULL)")
        .await;
    let emails = Projector::new(Arc::clone(&t.store), Emails);
    emails.rebuild(|_, _| {}).await.unwrap();
    assert_eq!(
        t.scalar("SELECT COUNT(*) FROM emails WHERE email = 'redacted'")
            .await,
        2
    );
    assert_eq!(t.scalar("SELECT COUNT(*) FROM emails").await, 2);
}

/// Every registration's email, or `redacted`.
struct Emails;

impl Projection for Emails {
    const NAME: &'static str = "emails";

    async fn apply(&self, batch: &mut Batch<'_>) -> Result<(), ProjectionError> {
        for e in batch.entity_events::<Customer>()? {
            if let CustomerEvent::Registered { email } = e.event.event {
                let email = email.known().cloned().unwrap_or_else(|| "redacted".into());
                let sql = format!("INSERT INTO emails VALUES ('{}', '{email}')", e.key);
                let sql = quark_history::sqlx::AssertSqlSafe(sql);
                match batch.tx().backend() {
                    Backend::Postgres => {
                        quark_history::sqlx::query(sql)
                            .execute(batch.tx().postgres()?)
                            .await?;
                    }
                    _ => {
                        quark_history::sqlx::query(sql)
                            .execute(batch.tx().sqlite()?)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn reset(
        &self,
        tx: &mut quark_history::StoreTx,
        _version: u32,
    ) -> Result<(), ProjectionError> {
        let sql = "DELETE FROM emails";
        match tx.backend() {
            Backend::Postgres => {
                quark_history::sqlx::query(sql)
                    .execute(tx.postgres()?)
                    .await?;
            }
            _ => {
                quark_history::sqlx::query(sql)
                    .execute(tx.sqlite()?)
                    .await?;
            }
        }
        Ok(())
    }
}

async fn it_applies_a_message_from_outside_once_however_often_and_wherever_it_arrives(t: &Fixture) {
    use quark_history::Received;
    let a = entities(t).entity::<Account>("alice");
    let b = entities(t).entity::<Account>("alice");
    let first = a
        .call_once("msg-1", &deposit(5), CallMeta::default())
        .await
        .unwrap();
    assert!(matches!(first, Received::First(5)), "{first:?}");
    // Redelivered, to another process: nothing appended.
    let again = b
        .call_once("msg-1", &deposit(5), CallMeta::default())
        .await
        .unwrap();
    assert!(again.is_duplicate());
    // Four processes receive the same message at once: one applies it.
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let account = entities(t).entity::<Account>("alice");
            tokio::spawn(async move {
                account
                    .call_once("msg-2", &deposit(7), CallMeta::default())
                    .await
                    .unwrap()
                    .is_duplicate()
            })
        })
        .collect();
    let mut applied = 0;
    for r in racers {
        applied += usize::from(!r.await.unwrap());
    }
    assert_eq!(applied, 1);
    let fresh = entities(t).entity::<Account>("alice");
    assert_eq!(fresh.state().await.unwrap().cents, 12);
    let events = fresh.events(0, None).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].causation.as_deref(), Some("msg-1"));
    assert_eq!(events[1].causation.as_deref(), Some("msg-2"));
}

/// Accounts snapshotted by size alone: once the events since the last snapshot reach 300 bytes.
struct BigAccount;

impl Entity for BigAccount {
    const TYPE: &'static str = "BigAccount";
    const SNAPSHOT_EVERY: u64 = 0;
    const SNAPSHOT_BYTES: usize = 300;
    type State = Balance;
    type Event = AccountEvent;
    type Rejection = Refused;
    fn apply(state: &mut Balance, event: &AccountEvent) {
        apply_account(state, event)
    }
}

async fn it_snapshots_by_the_size_of_the_events_since_the_last_snapshot(t: &Fixture) {
    let versions = || t.snapshot_versions("BigAccount/a");
    let memo = "m".repeat(200);
    let a = entities(t).entity::<BigAccount>("a");
    for _ in 0..5 {
        a.call(&Deposit(1, memo.clone())).await.unwrap();
    }
    // Each event is over 200 bytes: every second one passes 300.
    assert_eq!(versions().await, [2, 4]);
    // A fresh process counts the tail it loaded (event 5) towards the next snapshot.
    let b = entities(t).entity::<BigAccount>("a");
    b.call(&Deposit(1, memo.clone())).await.unwrap();
    assert_eq!(versions().await, [2, 4, 6]);
    // Small events take longer to add up.
    b.call(&deposit(1)).await.unwrap();
    assert_eq!(versions().await, [2, 4, 6]);
}

async fn it_removes_old_events_a_snapshot_covers_after_archiving_them(t: &TestStore) {
    use quark_workflow::entity::Retention;
    let entities = Entities::new(Arc::clone(&t.store));
    let alice = entities.entity::<Account>("alice");
    for _ in 0..33 {
        alice.call(&deposit(1)).await.unwrap();
    }
    // No snapshot yet: left alone.
    let bare = entities.entity::<AccountV2>("bob");
    bare.call(&deposit(1)).await.unwrap();
    // A projection that has applied nothing holds everything back.
    let projections = quark_history::ProjectionStore::register_projection(&*t.store, "p", 1)
        .await
        .unwrap();
    assert_eq!(projections.checkpoint, quark_history::GlobalPosition::START);
    let dir = std::env::temp_dir().join(format!("quark-retention-{}", uuid_like(t)));
    let keep_5 = Retention {
        max_count: Some(5),
        batch: 7,
        ..Retention::default()
    };
    let held = entities
        .apply_retention::<Account>(&keep_5, &dir)
        .await
        .unwrap();
    assert_eq!(held.removed, 0);
    assert!(
        held.skipped
            .iter()
            .any(|(s, why)| s == "Account/alice" && why.contains("projection"))
    );
    assert!(
        held.skipped
            .iter()
            .any(|(s, why)| s == "Account/bob" && why.contains("snapshot"))
    );
    // Once it has applied them, they go: the newest 5 stay, but not past the snapshot at 30.
    let lease = t
        .store
        .lease_projection("p", 1, "test", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    // (Final once no older transaction is open anywhere on the server.)
    quark_history::testing::eventually("every deposit is final", async || {
        t.store
            .read_all(lease.checkpoint, 10_000)
            .await
            .unwrap()
            .len()
            == 34
    })
    .await;
    let all = t.store.read_all(lease.checkpoint, 10_000).await.unwrap();
    let mut tx = t.store.begin_tx().await.unwrap();
    t.store
        .advance_projection(
            &mut tx,
            "p",
            1,
            "test",
            lease.checkpoint,
            all.last().unwrap().position,
            all.len() as u64,
            None,
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let done = entities
        .apply_retention::<Account>(&keep_5, &dir)
        .await
        .unwrap();
    assert_eq!(done.removed, 28);
    let range = &done.archived[0];
    assert_eq!(
        (range.stream.as_str(), range.first, range.last),
        ("Account/alice", 1, 28)
    );
    // The archive holds them, as stored, and its hashes check.
    let archived = std::fs::read(&range.file).unwrap();
    assert_eq!(blake3::hash(&archived).to_hex().to_string(), range.blake3);
    assert_eq!(archived.iter().filter(|b| **b == b'\n').count(), 28);
    let manifest = std::fs::read(done.manifest.as_ref().unwrap()).unwrap();
    assert_eq!(
        Some(blake3::hash(&manifest).to_hex().to_string()),
        done.manifest_blake3
    );
    // The entity loads, the chain of what is left verifies, and new commands append.
    let fresh = Entities::new(Arc::clone(&t.store)).entity::<Account>("alice");
    assert_eq!(fresh.state().await.unwrap().cents, 33);
    assert!(t.store.verify("Account/alice").await.unwrap().is_intact());
    fresh.call(&deposit(1)).await.unwrap();
    assert!(t.store.verify("Account/alice").await.unwrap().is_intact());
    // The removed past is gone from reads, with a clear error, but the snapshot's is there.
    let gone = fresh.state_at(At::Version(25)).await.unwrap_err();
    assert!(format!("{gone}").contains("retention"), "{gone}");
    assert_eq!(fresh.state_at(At::Version(30)).await.unwrap().0.cents, 30);
    // A row deleted behind retention's back is still caught.
    t.execute("DELETE FROM history WHERE instance_id = 'Account/alice' AND seq = 31")
        .await;
    assert_eq!(
        t.store.verify("Account/alice").await.unwrap().problem,
        Some(quark_history::ChainBreak::Missing {
            from: 31,
            until: 32
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn uuid_like(t: &TestStore) -> String {
    format!("{}-{:?}", t.store.backend(), std::thread::current().id())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
}

async fn it_commits_a_batch_as_if_one_commit_followed_another(t: &Fixture) {
    for s in ["a", "b", "c", "d"] {
        t.log
            .open_stream(&format!("Account/{s}"), "Account")
            .await
            .unwrap();
    }
    let event = || HistoryEvent::EntityEvent {
        event_type: "Deposited".into(),
        data: Payload::json(&AccountEvent::Deposited {
            cents: 1,
            memo: String::new(),
        })
        .unwrap(),
        causation: None,
        correlation: None,
    };
    let append = |s: &str, at: u64| {
        Commit::new().append(format!("Account/{s}"), Expected::Seq(at), [event()])
    };
    let results = t
        .log
        .append_commits(vec![
            append("a", 1),
            append("b", 1),
            // Needs the first: in order, it lands.
            append("a", 2),
            // Decided on the same version as the one before it: in order, it conflicts.
            append("a", 2),
            append("c", 1).receive("batch-message"),
            // The same message again, to another stream: a duplicate, nothing written.
            append("d", 1).receive("batch-message"),
        ])
        .await;
    let outcome: Vec<&str> = results
        .iter()
        .map(|r| match r {
            Ok(_) => "ok",
            Err(Error::Conflict { .. }) => "conflict",
            Err(Error::AlreadyReceived { .. }) => "duplicate",
            Err(e) => panic!("{e}"),
        })
        .collect();
    assert_eq!(outcome, ["ok", "ok", "ok", "conflict", "ok", "duplicate"]);
    let mut versions = Vec::new();
    for s in ["a", "b", "c", "d"] {
        versions.push(t.log.stream_version(&format!("Account/{s}")).await.unwrap());
    }
    assert_eq!(versions, [2, 1, 1, 0]);
    // An append of no events checks the version all the same (what an atomic batch relies on
    // for a command that decided nothing), and writes nothing.
    let empty =
        |at: u64| Commit::new().append("Account/a", Expected::Seq(at), Vec::<HistoryEvent>::new());
    let results = t.log.append_commits(vec![empty(2), empty(3)]).await;
    assert!(
        matches!(results[0], Err(Error::Conflict { .. })),
        "{:?}",
        results[0]
    );
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert_eq!(t.log.stream_version("Account/a").await.unwrap(), 2);
}

async fn it_commits_commands_on_several_entities_together_or_not_at_all(t: &Fixture) {
    let entities = t.entities();
    let alice = entities.entity::<Account>("alice");
    let bob = entities.entity::<Account>("bob");
    alice.call(&deposit(50)).await.unwrap();

    // A transfer: the debit and the credit land together.
    let mut batch = entities.atomically();
    let debit = batch.call(&alice, Withdraw(30));
    let credit = batch.call(&bob, deposit(30));
    let mut replies = batch
        .meta(CallMeta::caused_by("transfer-1"))
        .commit()
        .await
        .unwrap();
    assert_eq!((replies.take(debit), replies.take(credit)), (20, 30));
    assert_eq!(
        bob.events(0, None).await.unwrap()[0].causation.as_deref(),
        Some("transfer-1")
    );

    // One refusal and nothing lands, not the credit decided before it either.
    let mut batch = entities.atomically();
    batch.call(&bob, deposit(100));
    batch.call(&alice, Withdraw(100));
    let e = batch.commit().await.unwrap_err();
    let EntityError::Rejected(refusal) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        (refusal.index, refusal.stream.as_str()),
        (1, "Account/alice")
    );
    assert_eq!(
        refusal.rejection::<Refused>(),
        Some(&Refused::Insufficient {
            balance: 20,
            asked: 100
        })
    );
    assert_eq!(
        t.entities()
            .entity::<Account>("bob")
            .version()
            .await
            .unwrap(),
        1
    );

    // Another process moved alice: refused on the kept state (20), the batch confirms against
    // the journal and decides again (25).
    t.entities()
        .entity::<Account>("alice")
        .call(&deposit(5))
        .await
        .unwrap();
    let mut batch = entities.atomically();
    let debit = batch.call(&alice, Withdraw(25));
    batch.call(&bob, deposit(25));
    assert_eq!(batch.commit().await.unwrap().take(debit), 0);

    // Transfers both ways from two processes at once: conflicts are decided again, locks taken
    // in opposite orders do not deadlock, and no money appears or vanishes.
    let total = || async {
        let fresh = t.entities();
        let a = fresh
            .entity::<Account>("alice")
            .state()
            .await
            .unwrap()
            .cents;
        let b = fresh.entity::<Account>("bob").state().await.unwrap().cents;
        (a, b)
    };
    let (a, b) = total().await;
    assert_eq!((a, b), (0, 55));
    let mut tasks = Vec::new();
    for (from, to) in [("bob", "alice"), ("alice", "bob")] {
        let process = t.entities();
        tasks.push(tokio::spawn(async move {
            let (from, to) = (
                process.entity::<Account>(from),
                process.entity::<Account>(to),
            );
            let mut moved = 0;
            for _ in 0..10 {
                let mut batch = process.atomically();
                batch.call(&from, Withdraw(1));
                batch.call(&to, deposit(1));
                match batch.commit().await {
                    Ok(_) => moved += 1,
                    Err(EntityError::Rejected(_)) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            moved
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (a, b) = total().await;
    assert_eq!(a + b, 55, "alice {a}, bob {b}");
    assert!(a >= 0 && b >= 0);
    t.assert_intact("Account/alice").await;
    t.assert_intact("Account/bob").await;
    // One command per entity in a batch.
    let mut batch = entities.atomically();
    batch.call(&alice, deposit(1));
    batch.call(&alice, deposit(1));
    assert!(matches!(
        batch.commit().await,
        Err(EntityError::Store(Error::Invalid(m))) if m.contains("one command per entity")
    ));
}

/// The hash chain of a Redis stream names an event removed behind the log's back, as the SQL
/// stores' does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_names_an_event_removed_from_a_redis_stream() {
    let Some(t) = Fixture::redis().await else {
        return;
    };
    let alice = t.entities().entity::<Account>("alice");
    for _ in 0..3 {
        alice.call(&deposit(1)).await.unwrap();
    }
    let redis = t.redis.as_ref().unwrap();
    assert!(redis.verify("Account/alice").await.unwrap().is_intact());
    let mut conn = redis::Client::open(quark_history::testing::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let events = redis.key("s:Account/alice");
    let removed: i64 = redis::cmd("XDEL")
        .arg(&events)
        .arg("0-2")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let report = redis.verify("Account/alice").await.unwrap();
    assert_eq!(
        report.problem,
        Some(quark_history::ChainBreak::Missing { from: 2, until: 3 }),
        "{report:?}"
    );
    // The last one gone too: the head still records three events.
    let _: i64 = redis::cmd("XDEL")
        .arg(&events)
        .arg("0-3")
        .query_async(&mut conn)
        .await
        .unwrap();
    let report = redis.verify("Account/alice").await.unwrap();
    assert!(
        matches!(
            report.problem,
            Some(quark_history::ChainBreak::Truncated {
                last: 1,
                recorded: 3
            })
        ),
        "{report:?}"
    );
    t.cleanup().await;
}

/// Two processes on one Redis log: each keeps the heads it appended last, and one that another
/// process moved since is a conflict at the append, decided again, never a broken chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_appends_after_another_process_moved_a_redis_stream_it_appended_to() {
    let Some(t) = Fixture::redis().await else {
        return;
    };
    let redis = t.redis.as_ref().unwrap();
    let other = RedisLog::connect_with_prefix(
        &quark_history::testing::redis_url(),
        redis.prefix(),
        quark_history::StoreConfig::default().master_key(quark_history::testing::test_master_key()),
    )
    .await
    .unwrap();
    let here = t.entities().entity::<Account>("alice");
    let there = Entities::on_log(Arc::new(other), WarmLimits::default()).entity::<Account>("alice");
    assert_eq!(here.call(&deposit(1)).await.unwrap(), 1);
    assert_eq!(there.call(&deposit(10)).await.unwrap(), 11);
    // `here` kept the head at version 1 and its state at 1 cent: its append conflicts, catches
    // up and lands at version 3 with the balance after both.
    assert_eq!(here.call(&deposit(100)).await.unwrap(), 111);
    assert_eq!(there.call(&deposit(1000)).await.unwrap(), 1111);
    assert_eq!(here.version().await.unwrap(), 4);
    assert!(redis.verify("Account/alice").await.unwrap().is_intact());
    t.cleanup().await;
}
