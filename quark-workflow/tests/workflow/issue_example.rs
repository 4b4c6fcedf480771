//! The shape of the orchestration in the design brief, typed end to end, run in the test
//! environment: validation, a charge with retries, two activities joined, a signal with a timeout,
//! a durable hour-long sleep.

use std::time::Duration;

use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry, activity,
    orchestration,
};
use serde::{Deserialize, Serialize};

/// How an order is paid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payment {
    card: String,
    cents: u64,
}

/// An order to ship.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    id: String,
    email: String,
    payment: Payment,
}

/// The card network's receipt for a charge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt(String);

/// How an order ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderResult {
    /// It did not validate.
    Invalid,
    /// It was charged, approved and shipped.
    Shipped {
        /// The charge's receipt.
        receipt: Receipt,
        /// The parcel's tracking id.
        parcel: String,
        /// Who approved it.
        approved_by: String,
    },
}

/// A person's approval, sent as a signal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approval {
    by: String,
}

#[activity]
async fn validate_order(_ctx: ActivityContext, order: Order) -> Result<bool, ActivityError> {
    Ok(order.payment.cents > 0)
}

#[activity(
    retry(max_attempts = 5, initial = "1s", max = "1m"),
    start_to_close = "30s"
)]
async fn charge_card(ctx: ActivityContext, payment: Payment) -> Result<Receipt, ActivityError> {
    if ctx.attempt() < 2 {
        return Err(ActivityError::message("gateway timeout"));
    }
    Ok(Receipt(format!("{}:{}", payment.card, payment.cents)))
}

#[activity]
async fn ship(_ctx: ActivityContext, id: String) -> Result<String, ActivityError> {
    Ok(format!("parcel-{id}"))
}

#[activity]
async fn email(_ctx: ActivityContext, to: String) -> Result<(), ActivityError> {
    let _ = to;
    Ok(())
}

#[orchestration]
async fn process_order(
    ctx: OrchestrationContext,
    order: Order,
) -> Result<OrderResult, OrchestrationError> {
    if !ctx.call(validate_order, &order).await? {
        return Ok(OrderResult::Invalid);
    }
    let receipt = ctx.call(charge_card, &order.payment).await?;
    let (shipped, emailed) = ctx
        .join2(ctx.call(ship, &order.id), ctx.call(email, &order.email))
        .await;
    let (parcel, ()) = (shipped?, emailed?);
    let approval: Option<Approval> = ctx
        .wait_for_signal("approval")
        .timeout(Duration::from_secs(86_400))
        .await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    let approved_by = approval.map_or_else(|| "nobody (timed out)".to_string(), |a| a.by);
    Ok(OrderResult::Shipped {
        receipt,
        parcel,
        approved_by,
    })
}

fn order(cents: u64) -> Order {
    Order {
        id: "o-1".into(),
        email: "ada@example.com".into(),
        payment: Payment {
            card: "4242".into(),
            cents,
        },
    }
}

fn registry() -> Registry {
    Registry::new()
        .register(process_order)
        .register(validate_order)
        .register(charge_card)
        .register(ship)
        .register(email)
}

#[tokio::test]
async fn the_brief_s_order_runs_with_a_signal_and_with_its_timeout() {
    let env = TestEnv::new(registry()).await.unwrap();
    let approved = process_order::start(env.client(), "approved", order(500))
        .await
        .unwrap();
    env.run_until_idle().await.unwrap();
    approved
        .signal("approval", &Approval { by: "grace".into() })
        .await
        .unwrap();
    let result = approved.result().await.unwrap();
    assert_eq!(
        result,
        OrderResult::Shipped {
            receipt: Receipt("4242:500".into()),
            parcel: "parcel-o-1".into(),
            approved_by: "grace".into()
        }
    );

    let waited = process_order::start(env.client(), "timed-out", order(700))
        .await
        .unwrap();
    match waited.result().await.unwrap() {
        OrderResult::Shipped { approved_by, .. } => assert_eq!(approved_by, "nobody (timed out)"),
        other => panic!("unexpected {other:?}"),
    }
    let invalid = process_order::start(env.client(), "invalid", order(0))
        .await
        .unwrap();
    assert_eq!(invalid.result().await.unwrap(), OrderResult::Invalid);
}
