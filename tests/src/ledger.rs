//! The entity the entity chaos test's writer processes and the test itself share: an account
//! that only takes deposits, so that its balance is the count of deposits applied.

use quark_workflow::entity::{Command, Decision, Entity};
use serde::{Deserialize, Serialize};

/// An account.
#[derive(Debug)]
pub struct Account;

/// Its balance.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    /// Cents.
    pub cents: i64,
}

/// Its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// Money came in.
    Deposited(i64),
}

impl Entity for Account {
    const TYPE: &'static str = "ChaosAccount";
    const SNAPSHOT_EVERY: u64 = 25;
    type State = Balance;
    type Event = AccountEvent;
    type Rejection = String;
    fn apply(state: &mut Balance, AccountEvent::Deposited(c): &AccountEvent) {
        state.cents += c;
    }
}

/// Deposits `.0` cents.
#[derive(Debug, Serialize, Deserialize)]
pub struct Deposit(pub i64);

impl Command<Account> for Deposit {
    const NAME: &'static str = "Deposit";
    type Reply = i64;
    fn handle(&self, state: &Balance) -> Result<Decision<AccountEvent, i64>, String> {
        Ok(Decision::emit([AccountEvent::Deposited(self.0)]).reply(state.cents + self.0))
    }
}

/// The key of a writer's `n`th message: five accounts shared by every writer.
pub fn key_of(n: u64) -> String {
    format!("k{}", n % 5)
}
