//! Projections on Redis: entities on a `RedisLog`, a read model in Redis built through a consumer
//! group on the log's global stream, every event applied once and in order, across crashes of the
//! projector and takeovers of its lease.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::{Error, RedisLog};
use quark_workflow::WarmLimits;
use quark_workflow::entity::{Command, Decision, Entities, Entity};
use quark_workflow::projection::{
    ProjectionError, RedisPage, RedisProjection, RedisProjector, Writes,
};
use serde::{Deserialize, Serialize};

struct Account;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Deposited(i64);

impl Entity for Account {
    const TYPE: &'static str = "Account";
    type State = i64;
    type Event = Deposited;
    type Rejection = String;
    fn apply(state: &mut i64, event: &Deposited) {
        *state += event.0;
    }
}

#[derive(Serialize, Deserialize)]
struct Deposit(i64);

impl Command<Account> for Deposit {
    const NAME: &'static str = "Deposit";
    type Reply = i64;
    fn handle(&self, state: &i64) -> Result<Decision<Deposited, i64>, String> {
        Ok(Decision::emit([Deposited(self.0)]).reply(state + self.0))
    }
}

/// Balances per account in one hash, and how many events were applied; it refuses a page whose
/// events of one account are not the next versions it expects (out of order, or applied twice).
struct Balances {
    balances: String,
    applied: String,
    seen: Mutex<BTreeMap<String, u64>>,
}

impl Balances {
    fn new(log: &RedisLog) -> Self {
        Balances {
            balances: log.key("balances"),
            applied: log.key("applied"),
            seen: Mutex::new(BTreeMap::new()),
        }
    }
}

impl RedisProjection for Balances {
    const NAME: &'static str = "balances";

    fn apply(&self, page: &RedisPage<'_>, writes: &mut Writes) -> Result<(), ProjectionError> {
        let mut seen = self.seen.lock().unwrap();
        for e in page.entity_events::<Account>()? {
            let last = seen.entry(e.key.clone()).or_insert(0);
            if e.event.version != *last + 1 {
                return Err(ProjectionError::apply(
                    Self::NAME,
                    format!("{} version {} after {last}", e.key, e.event.version),
                ));
            }
            *last = e.event.version;
            let cents = e.event.event.0.to_string();
            writes.command([
                "HINCRBY",
                self.balances.as_str(),
                e.key.as_str(),
                cents.as_str(),
            ]);
            writes.command(["INCR", self.applied.as_str()]);
        }
        Ok(())
    }

    fn reset(&self, writes: &mut Writes) {
        self.seen.lock().unwrap().clear();
        writes.command(["DEL", self.balances.as_str(), self.applied.as_str()]);
    }
}

async fn fixture() -> Option<(RedisLog, redis::aio::MultiplexedConnection)> {
    let (log, _clock) = quark_history::testing::redis().await?;
    let conn = redis::Client::open(quark_history::testing::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    Some((log, conn))
}

async fn model(
    log: &RedisLog,
    conn: &mut redis::aio::MultiplexedConnection,
) -> (BTreeMap<String, i64>, i64) {
    let balances: BTreeMap<String, i64> = redis::cmd("HGETALL")
        .arg(log.key("balances"))
        .query_async(conn)
        .await
        .unwrap();
    let applied: Option<i64> = redis::cmd("GET")
        .arg(log.key("applied"))
        .query_async(conn)
        .await
        .unwrap();
    (balances, applied.unwrap_or(0))
}

/// Deposits `rounds` times into each of `accounts`, from two writers at once; returns the
/// balances the entities hold.
async fn deposit(log: &RedisLog, accounts: &[&str], rounds: i64) -> BTreeMap<String, i64> {
    let mut writers = Vec::new();
    for w in 0..2 {
        let entities = Entities::on_log(Arc::new(log.clone()), WarmLimits::default());
        let accounts: Vec<String> = accounts.iter().map(|a| a.to_string()).collect();
        writers.push(tokio::spawn(async move {
            for i in 0..rounds {
                for a in &accounts {
                    entities
                        .entity::<Account>(a.as_str())
                        .call(&Deposit(1 + w + i))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let entities = Entities::on_log(Arc::new(log.clone()), WarmLimits::default());
    let mut out = BTreeMap::new();
    for a in accounts {
        out.insert(
            a.to_string(),
            entities.entity::<Account>(*a).state().await.unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_projects_entities_into_redis_once_each_and_in_order_while_they_are_written() {
    let Some((log, mut conn)) = fixture().await else {
        return;
    };
    let projector = Arc::new(RedisProjector::new(log.clone(), Balances::new(&log)).page(7));
    // The projector runs beside the writers, catching what they append as they go.
    let running = {
        let projector = Arc::clone(&projector);
        tokio::spawn(async move {
            let mut applied = 0;
            for _ in 0..50 {
                applied += projector.catch_up(|_, _| {}).await.unwrap();
            }
            applied
        })
    };
    let expected = deposit(&log, &["alice", "bob", "carol"], 20).await;
    let during = running.await.unwrap();
    let after = projector.catch_up(|_, _| {}).await.unwrap();
    assert_eq!(during + after, 3 * 20 * 2);
    let (balances, applied) = model(&log, &mut conn).await;
    assert_eq!(balances, expected);
    assert_eq!(applied, 3 * 20 * 2);
    let status = projector.status().await.unwrap();
    assert_eq!((status.pending, status.behind_events), (0, Some(0)));

    // A rebuild from zero empties the model and reaches the same state: damage it first.
    let () = redis::cmd("HSET")
        .arg(log.key("balances"))
        .arg("alice")
        .arg(999)
        .query_async(&mut conn)
        .await
        .unwrap();
    let rebuilt = projector.rebuild(|_, _| {}).await.unwrap();
    assert_eq!(rebuilt, 120);
    assert_eq!(model(&log, &mut conn).await, (expected, 120));
    log.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_applies_a_crashed_projectors_page_once_when_the_next_holder_takes_over() {
    let Some((log, mut conn)) = fixture().await else {
        return;
    };
    let expected = deposit(&log, &["alice", "bob"], 5).await;
    // A projector takes the lease and a page, and dies before it acknowledges it: the page is
    // delivered and pending.
    log.take_lease(Balances::NAME, "crashed", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    log.create_group(Balances::NAME).await.unwrap();
    let page = log.read_group(Balances::NAME, 4, None).await.unwrap();
    assert_eq!(page.len(), 4);
    assert_eq!(log.group(Balances::NAME).await.unwrap().unwrap().pending, 4);

    // The next one cannot step while the dead one's lease lasts, then takes over, applies the
    // pending page first and everything after it: each event once.
    let next = RedisProjector::new(log.clone(), Balances::new(&log)).owner("next");
    assert!(matches!(
        next.catch_up(|_, _| {}).await,
        Err(ProjectionError::Busy { .. })
    ));
    quark_history::testing::eventually("the crashed projector's lease runs out", async || {
        next.catch_up(|_, _| {}).await.is_ok()
    })
    .await;
    assert_eq!(model(&log, &mut conn).await, (expected, 20));
    assert_eq!(log.group(Balances::NAME).await.unwrap().unwrap().pending, 0);
    log.destroy().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_refuses_the_writes_of_a_projector_whose_lease_was_taken_over() {
    let Some((log, mut conn)) = fixture().await else {
        return;
    };
    deposit(&log, &["alice"], 2).await;
    let stale = log
        .take_lease(Balances::NAME, "stale", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    log.create_group(Balances::NAME).await.unwrap();
    let page = log.read_group(Balances::NAME, 10, None).await.unwrap();
    assert_eq!(page.len(), 4);
    // Its lease runs out (deleted here, as expiry would) and another projector takes it.
    let () = redis::cmd("DEL")
        .arg(log.key(&format!("lease:{}", Balances::NAME)))
        .query_async(&mut conn)
        .await
        .unwrap();
    log.take_lease(Balances::NAME, "fresh", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    // The stale holder's page and writes are refused whole: nothing written, nothing acknowledged.
    let marker = log.key("marker");
    let writes = vec![vec![
        b"SET".to_vec(),
        marker.clone().into_bytes(),
        b"1".to_vec(),
    ]];
    let refused = log
        .ack_group(
            Balances::NAME,
            &stale,
            Duration::from_secs(60),
            &page,
            &writes,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::ProjectionMoved { .. }),
        "{refused:?}"
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg(&marker)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists);
    assert_eq!(log.group(Balances::NAME).await.unwrap().unwrap().pending, 4);
    log.destroy().await.unwrap();
}
