//! The coordinator: prepares branches, decides in the engine's log, finishes branches by the
//! decision, and recovers what a crash left prepared.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::decision::{ABORTS_KEPT_FOR, GID_PREFIX, check_gid};
use super::{Branch, Decision, Participants};
use crate::error::{Error, Result};
use crate::store::Store;

/// The coordinator of two-phase transactions across [`Participants`], deciding in `store`'s log.
#[derive(Debug, Clone)]
pub struct Coordinator {
    store: Arc<dyn Store>,
    participants: Participants,
    id: Arc<tokio::sync::OnceCell<String>>,
}

/// Branches that are all prepared under one global id, waiting for the decision.
#[derive(Debug)]
#[must_use = "prepared branches hold their locks until they are finished"]
pub struct Prepared {
    gid: String,
    participants: Vec<String>,
}

impl Prepared {
    /// The global id.
    pub fn gid(&self) -> &str {
        &self.gid
    }

    /// The participants it is prepared in, in order.
    pub fn participants(&self) -> &[String] {
        &self.participants
    }
}

/// A branch prepared in a participant and not yet finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InDoubt {
    /// The transaction's global id.
    pub gid: String,
    /// The participant it is prepared in.
    pub participant: String,
    /// How long ago it was prepared (by the participant's clock).
    pub age: Duration,
    /// The decision recorded for it, if any: none means its coordinator has not decided (yet).
    pub decision: Option<Decision>,
}

/// What one recovery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Branches committed by a recorded decision to commit.
    pub committed: usize,
    /// Branches rolled back (a recorded abort, or one given up on after the grace period).
    pub rolled_back: usize,
    /// Transactions given up on: prepared with no decision past the grace period.
    pub given_up: usize,
    /// Prepared branches left alone: undecided and younger than the grace period.
    pub pending: usize,
    /// Decisions forgotten: every branch of theirs is finished.
    pub forgotten: usize,
    /// Participants that could not be reached, with the error; their branches wait for the
    /// next pass.
    pub unreachable: Vec<(String, String)>,
}

impl Coordinator {
    /// A coordinator of transactions across `participants`, deciding in `store`'s log.
    pub fn new(store: Arc<dyn Store>, participants: Participants) -> Self {
        Coordinator {
            store,
            participants,
            id: Arc::default(),
        }
    }

    /// The participants.
    pub fn participants(&self) -> &Participants {
        &self.participants
    }

    /// The prefix of every global id this coordinator's log decides: `q2pc:LOG:`.
    pub async fn prefix(&self) -> Result<String> {
        let id = self
            .id
            .get_or_try_init(|| self.store.coordinator_id())
            .await?;
        Ok(format!("{GID_PREFIX}{id}:"))
    }

    /// The global id of a transaction of this log named `key` (letters, digits, `.`, `-`).
    pub async fn gid(&self, key: &str) -> Result<String> {
        let gid = format!("{}{key}", self.prefix().await?);
        check_gid(&gid)?;
        Ok(gid)
    }

    /// The global id of attempt `attempt` of task `task_id` (a transactional activity's).
    pub async fn attempt_gid(&self, task_id: i64, attempt: u32) -> Result<String> {
        self.gid(&format!("t{task_id}.{attempt}")).await
    }

    /// Opens a branch in participant `name`.
    pub async fn begin(&self, name: &str) -> Result<Branch> {
        self.participants.begin(name).await
    }

    /// Prepares every branch as `gid`, in the participants' order. If one fails, those already
    /// prepared are rolled back (they have no decision, so nothing can commit them) and the rest
    /// are dropped, and the error is returned.
    pub async fn prepare(&self, gid: &str, branches: Vec<Branch>) -> Result<Prepared> {
        check_gid(gid)?;
        let mut by_name: BTreeMap<String, Branch> = BTreeMap::new();
        for branch in branches {
            let name = branch.participant().to_owned();
            if by_name.insert(name.clone(), branch).is_some() {
                return Err(Error::Invalid(format!(
                    "two branches in participant `{name}`: one transaction has one branch per \
                     participant"
                )));
            }
        }
        let mut done: Vec<String> = Vec::with_capacity(by_name.len());
        let mut branches = by_name.into_iter();
        for (name, branch) in branches.by_ref() {
            if let Err(e) = branch.prepare(gid).await {
                drop(branches);
                for name in &done {
                    // Best effort: recovery gives up on what this leaves prepared.
                    let _ = self.participants.finish(name, gid, Decision::Abort).await;
                }
                return Err(e);
            }
            done.push(name);
        }
        Ok(Prepared {
            gid: gid.to_owned(),
            participants: done,
        })
    }

    /// Finishes `prepared` by `decision` in every participant, then forgets the decision. A
    /// participant that cannot be reached is left to recovery, and the error returned: the
    /// outcome is decided either way.
    pub async fn finish(&self, prepared: Prepared, decision: Decision) -> Result<()> {
        self.finish_gid(&prepared.gid, &prepared.participants, decision)
            .await
            .map(|_| ())
    }

    /// Finishes `gid` in `participants` by `decision`; forgets a decision to commit once every
    /// branch is finished. Returns how many branches it finished.
    async fn finish_gid(
        &self,
        gid: &str,
        participants: &[String],
        decision: Decision,
    ) -> Result<usize> {
        let mut finished = 0;
        let mut failed = None;
        for name in participants {
            match self.participants.finish(name, gid, decision).await {
                Ok(true) => finished += 1,
                Ok(false) => {}
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        // A decision to abort is kept: it refuses a coordinator that comes back late.
        if decision == Decision::Commit {
            self.store.forget_decision(gid).await?;
        }
        Ok(finished)
    }

    /// Settles `gid`, whose coordinator is gone or gave up: a decision that stands is carried
    /// out; with none, the transaction is given up (a decision to abort is recorded; a
    /// coordinator deciding to commit at the same moment finds it, or this finds its). Returns
    /// the decision carried out.
    pub async fn settle(&self, gid: &str, participants: &[String]) -> Result<Decision> {
        check_gid(gid)?;
        let standing = self
            .store
            .decide(gid, Decision::Abort, participants)
            .await?;
        self.finish_gid(gid, participants, standing).await?;
        Ok(standing)
    }

    /// Runs `work` as one two-phase transaction named `key` outside an activity: `work` opens the
    /// branches it needs with [`begin`](Self::begin) and returns them; they are prepared, the
    /// decision to commit is recorded in its own transaction in the log, and they are
    /// committed. An error before the decision rolls every branch back.
    pub async fn run<T>(
        &self,
        key: &str,
        work: impl AsyncFnOnce(&Self) -> Result<(T, Vec<Branch>)>,
    ) -> Result<T> {
        let gid = self.gid(key).await?;
        let (value, branches) = work(self).await?;
        let prepared = self.prepare(&gid, branches).await?;
        match self
            .store
            .decide(&gid, Decision::Commit, &prepared.participants)
            .await
        {
            Ok(Decision::Commit) => {}
            Ok(decision) => {
                self.finish(prepared, decision).await?;
                return Err(Error::Decided { gid, decision });
            }
            Err(e) => {
                // The decision may or may not be written: settle by what the log says.
                let _ = self.settle(&gid, &prepared.participants).await;
                return Err(e);
            }
        }
        self.finish(prepared, Decision::Commit).await?;
        Ok(value)
    }

    /// Every branch of this log's transactions prepared in a participant, with its decision.
    /// A participant that cannot be reached fails the call.
    pub async fn in_doubt(&self) -> Result<Vec<InDoubt>> {
        let prefix = self.prefix().await?;
        let mut out = Vec::new();
        for name in self.participants.names() {
            for (gid, age) in self.participants.prepared(name, &prefix).await? {
                let decision = self.store.decision(&gid).await?.map(|d| d.decision);
                out.push(InDoubt {
                    gid,
                    participant: name.to_owned(),
                    age,
                    decision,
                });
            }
        }
        Ok(out)
    }

    /// An operator's decision for `gid`: recorded unless one stands, then carried out in every
    /// participant that holds it. Returns the decision carried out, which is the one that
    /// stood if there was one (a recorded decision is never contradicted).
    pub async fn resolve(&self, gid: &str, decision: Decision) -> Result<Decision> {
        check_gid(gid)?;
        let mut holders = Vec::new();
        for name in self.participants.names() {
            if self
                .participants
                .prepared(name, gid)
                .await?
                .iter()
                .any(|(g, _)| g == gid)
            {
                holders.push(name.to_owned());
            }
        }
        let standing = self.store.decide(gid, decision, &holders).await?;
        self.finish_gid(gid, &holders, standing).await?;
        Ok(standing)
    }

    /// Gives up at once on the branches that earlier attempts of task `task_id` left prepared
    /// (their worker died or lost the lease: none of them can decide any more, since a decision
    /// is written with the attempt's result under its lease). Returns how many it rolled back.
    pub async fn abandon_attempts(&self, task_id: i64, attempt: u32) -> Result<usize> {
        let prefix = format!("{}t{task_id}.", self.prefix().await?);
        let mut by_gid: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in self.participants.names() {
            for (gid, _) in self.participants.prepared(name, &prefix).await? {
                let earlier = gid[prefix.len()..]
                    .parse::<u32>()
                    .is_ok_and(|a| a < attempt);
                if earlier {
                    by_gid.entry(gid).or_default().push(name.to_owned());
                }
            }
        }
        let mut rolled_back = 0;
        for (gid, names) in by_gid {
            let standing = self.store.decide(&gid, Decision::Abort, &names).await?;
            let n = self.finish_gid(&gid, &names, standing).await?;
            if standing == Decision::Abort {
                rolled_back += n;
            }
        }
        Ok(rolled_back)
    }

    /// One recovery pass: every branch of this log prepared in a reachable participant is
    /// finished by its decision, or given up on if it has none and was prepared more than
    /// `grace` ago (younger ones may still be decided by their coordinator); then decisions
    /// whose branches are all finished are forgotten (a decision to abort after
    /// [`ABORTS_KEPT_FOR`]).
    pub async fn recover(&self, grace: Duration) -> Result<Recovered> {
        let prefix = self.prefix().await?;
        let mut report = Recovered::default();
        // Decisions first, then what is prepared: a decision read here was made before the
        // listing, so a branch of it that the listing misses is finished for good.
        let decisions = self.store.decisions().await?;
        let mut prepared: BTreeMap<String, Vec<(String, Duration)>> = BTreeMap::new();
        let mut reached = BTreeSet::new();
        for name in self.participants.names() {
            match self.participants.prepared(name, &prefix).await {
                Ok(list) => {
                    reached.insert(name.to_owned());
                    for (gid, age) in list {
                        prepared
                            .entry(gid)
                            .or_default()
                            .push((name.to_owned(), age));
                    }
                }
                Err(e) => report.unreachable.push((name.to_owned(), e.to_string())),
            }
        }
        let known: BTreeMap<&str, Decision> = decisions
            .iter()
            .map(|d| (d.gid.as_str(), d.decision))
            .collect();
        // What this pass leaves prepared (undecided, or a participant failed to finish it).
        let mut left = BTreeSet::new();
        for (gid, holders) in &prepared {
            let names: Vec<String> = holders.iter().map(|(n, _)| n.clone()).collect();
            let decision = match known.get(gid.as_str()) {
                Some(d) => *d,
                None => {
                    // Decided since the decisions were read?
                    match self.store.decision(gid).await? {
                        Some(d) => d.decision,
                        None if holders.iter().all(|(_, age)| *age < grace) => {
                            report.pending += holders.len();
                            left.insert(gid.clone());
                            continue;
                        }
                        None => {
                            let standing = self.store.decide(gid, Decision::Abort, &names).await?;
                            if standing == Decision::Abort {
                                report.given_up += 1;
                            }
                            standing
                        }
                    }
                }
            };
            for name in &names {
                match self.participants.finish(name, gid, decision).await {
                    Ok(true) if decision == Decision::Commit => report.committed += 1,
                    Ok(true) => report.rolled_back += 1,
                    Ok(false) => {}
                    Err(e) => {
                        left.insert(gid.clone());
                        report.unreachable.push((name.clone(), e.to_string()));
                    }
                }
            }
        }
        let now = self.store.config().clock.now();
        for d in &decisions {
            if !d.gid.starts_with(&prefix) || left.contains(&d.gid) {
                continue;
            }
            // Every participant it names must have been listed (and did not hold it).
            if !d.participants.iter().all(|p| reached.contains(p)) {
                continue;
            }
            let expired =
                now.as_micros() - d.decided_at.as_micros() > ABORTS_KEPT_FOR.as_micros() as i64;
            if (d.decision == Decision::Commit || expired)
                && self.store.forget_decision(&d.gid).await?
            {
                report.forgotten += 1;
            }
        }
        Ok(report)
    }
}
