//! The decision log of two-phase commits: one row per global id that was decided.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::clock::Timestamp;
use crate::error::{Error, Result};

/// Every global id Quark prepares starts with this, then the log's id and a `:`.
pub const GID_PREFIX: &str = "q2pc:";

/// How long an `abort` decision is kept after its branches are finished. It is what refuses a
/// coordinator that comes back late (its decision to commit finds the abort and fails), so it
/// outlives any lease by far.
pub const ABORTS_KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

/// What was decided for a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Every branch commits.
    Commit,
    /// Every branch rolls back.
    Abort,
}

impl Decision {
    /// As stored: `commit` or `abort`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Commit => "commit",
            Decision::Abort => "abort",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Decision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "commit" => Ok(Decision::Commit),
            "abort" => Ok(Decision::Abort),
            other => Err(Error::Invalid(format!(
                "`{other}` is not a decision (commit or abort)"
            ))),
        }
    }
}

/// A decision as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    /// The transaction's global id.
    pub gid: String,
    /// What was decided.
    pub decision: Decision,
    /// The participants it was prepared in (for a decision to commit, all of them), by name.
    pub participants: Vec<String>,
    /// When.
    pub decided_at: Timestamp,
}

/// The decision log of two-phase commits, in the engine's database. A capability of every
/// [`Store`](crate::Store); sealed.
pub trait DecisionStore: Send + Sync {
    /// This log's id, made the first time it is asked for: the global ids it decides start with
    /// [`GID_PREFIX`], the id and `:`.
    fn coordinator_id(&self) -> BoxFuture<'_, Result<String>>;

    /// Records `decision` for `gid` unless one stands, and returns the one that stands (one
    /// statement: concurrent callers are serialized by the database and all read the first).
    fn decide<'a>(
        &'a self,
        gid: &'a str,
        decision: Decision,
        participants: &'a [String],
    ) -> BoxFuture<'a, Result<Decision>>;

    /// The decision for `gid`, if one was recorded (and not yet forgotten).
    fn decision<'a>(&'a self, gid: &'a str) -> BoxFuture<'a, Result<Option<DecisionRecord>>>;

    /// Every decision recorded and not yet forgotten, oldest first.
    fn decisions(&self) -> BoxFuture<'_, Result<Vec<DecisionRecord>>>;

    /// Drops the decision for `gid` (its branches are all finished); `true` if there was one.
    fn forget_decision<'a>(&'a self, gid: &'a str) -> BoxFuture<'a, Result<bool>>;
}

/// The participants' names as stored.
pub(crate) fn join_names(names: &[String]) -> String {
    names.join(",")
}

/// The participants' names from their stored form.
pub(crate) fn split_names(stored: &str) -> Vec<String> {
    stored
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks a participant's name: letters, digits, `_` and `-`, at most 63 bytes.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn check_participant_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "`{name}` is not a participant name: use 1 to 63 letters, digits, `_` or `-`"
        )))
    }
}

/// Checks a global id before it is spelled into a statement (`PREPARE TRANSACTION` takes a
/// literal): Quark's own form, at most 200 bytes, of letters, digits, `:`, `.` and `-`.
pub(crate) fn check_gid(gid: &str) -> Result<()> {
    let ok = gid.starts_with(GID_PREFIX)
        && gid.len() <= 200
        && gid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "`{gid}` is not a global id of Quark's two-phase commits (q2pc:LOG:KEY)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_are_checked_before_they_reach_a_statement() {
        assert!(check_participant_name("bank_a").is_ok());
        assert!(check_participant_name("bank a").is_err());
        assert!(check_participant_name("").is_err());
        assert!(check_participant_name("a,b").is_err());
        assert!(check_gid("q2pc:0190abcd:t12.3").is_ok());
        assert!(check_gid("q2pc:x'; DROP TABLE t; --").is_err());
        assert!(check_gid("other:1").is_err());
        assert_eq!(
            split_names(&join_names(&["a".into(), "b".into()])),
            vec!["a".to_string(), "b".to_string()]
        );
        assert_eq!("abort".parse::<Decision>().unwrap(), Decision::Abort);
        assert!("maybe".parse::<Decision>().is_err());
    }
}
