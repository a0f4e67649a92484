//! The payment authorizer: answers each request of `payments.requests` (keyed by order
//! id) with a `PaymentResult` on `payments.results`, by asking a payment gateway.
//!
//! - `PaymentRequested` → the gateway's charge → `APPROVED`, or `DECLINED` with the
//!   gateway's reason.
//! - `RefundRequested` → the gateway's refund → `REFUNDED`.
//!
//! A result's record timestamp (and its `at`) is when the gateway answered, not the
//! request's: the order saga takes its two inputs oldest first, so a `CancelOrder`
//! written while the charge was under way comes before the charge's answer, on a
//! replay under at_least_once as on the first run.
//!
//! Which gateway, and its settings, is the processor's `config:` block in
//! topology.yaml (see [`crate::payment_gateway`]): `simulated` (deterministic rules) or
//! `http` (a REST gateway).
//!
//! # Slow gateways
//!
//! A gateway call is an async job ([`Context::defer`]): the task of that partition
//! waits for it, in order, while the tasks of every other partition go on. The
//! request counts as processed (its offset committed, its result sent) only once the
//! answer is in; a crash or rebalance before that makes the request run again, and
//! the gateway sees the same payment id as its idempotency key, so a replay never
//! charges twice. The processor keeps no state: the gateway's idempotency is the
//! de-duplication, and the order saga ignores a repeated result.
//!
//! A request that cannot be a payment (tombstone, key other than its order id, a
//! negative amount, empty ids or currency) goes to the dead-letter topic without a
//! gateway call, as does one the gateway client could not even send. Any other
//! gateway failure leaves the payment's fate unknown (it may have been charged): the
//! instance stops with the gateway's error rather than guess, and the request runs
//! again, under the same idempotency key, once it is restarted. By default the HTTP
//! gateway is retried without end (a payment must be answered), so that stop takes a
//! refusal that needs an operator (bad credentials, a wrong URL) or a `max_attempts`.

use std::sync::Arc;

use orderflow_runtime::processor::{BuildError, ProcessorSpec};
use orderflow_runtime::{Context, Continuation, ProcessError, Processor, Record};

use crate::payment_gateway::{
    Charge, ChargeOutcome, GatewayConfig, GatewayError, PaymentGateway, Refund,
};
use crate::records::{PaymentCommand, PaymentOutcome, PaymentResult, topics};

/// The payment authorizer over one partition of `payments.requests`.
#[derive(Debug)]
pub struct PaymentAuthorizer {
    gateway: Arc<dyn PaymentGateway>,
}

impl PaymentAuthorizer {
    /// Builds the processor with the gateway its `config:` block names.
    pub fn build(spec: &ProcessorSpec) -> Result<Box<dyn Processor>, BuildError> {
        Ok(Box::new(PaymentAuthorizer {
            gateway: GatewayConfig::from_spec(spec)?,
        }))
    }

    /// The processor over a given gateway.
    pub fn with_gateway(gateway: Arc<dyn PaymentGateway>) -> Self {
        PaymentAuthorizer { gateway }
    }
}

impl Processor for PaymentAuthorizer {
    fn process(&mut self, record: &Record, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let command: PaymentCommand = record.value()?;
        let (payment_id, order_id, buyer_id, amount, currency) = match &command {
            PaymentCommand::PaymentRequested(r) => (
                &r.payment_id,
                &r.order_id,
                &r.buyer_id,
                r.amount,
                &r.currency,
            ),
            PaymentCommand::RefundRequested(r) => (
                &r.payment_id,
                &r.order_id,
                &r.buyer_id,
                r.amount,
                &r.currency,
            ),
        };
        if record.key != *order_id {
            return Err(ProcessError::invalid(format!(
                "record key {:?} is not the request's order id {order_id:?}",
                record.key
            )));
        }
        for (field, value) in [
            ("payment_id", payment_id),
            ("order_id", order_id),
            ("buyer_id", buyer_id),
            ("currency", currency),
        ] {
            if value.trim().is_empty() {
                return Err(ProcessError::invalid(format!("{field} is empty")));
            }
        }
        if amount < 0 {
            return Err(ProcessError::invalid(format!(
                "amount {amount} is negative"
            )));
        }
        let gateway = Arc::clone(&self.gateway);
        match command {
            PaymentCommand::PaymentRequested(r) => {
                let charge = Charge::from(&r);
                ctx.defer(async move {
                    let answer = gateway.charge(&charge).await;
                    let continuation: Continuation = Box::new(move |ctx: &mut Context<'_>| {
                        let (outcome, reason) = match answer {
                            Ok(ChargeOutcome::Approved) => (PaymentOutcome::Approved, None),
                            Ok(ChargeOutcome::Declined { reason }) => {
                                (PaymentOutcome::Declined, Some(reason))
                            }
                            Err(e) => return Err(unanswered("charge", &charge.payment_id, &e)),
                        };
                        answer_with(
                            ctx,
                            &charge.payment_id,
                            &charge.order_id,
                            outcome,
                            reason,
                            charge.amount,
                            &charge.currency,
                        )
                    });
                    continuation
                })
            }
            PaymentCommand::RefundRequested(r) => {
                let refund = Refund::from(&r);
                ctx.defer(async move {
                    let answer = gateway.refund(&refund).await;
                    let continuation: Continuation = Box::new(move |ctx: &mut Context<'_>| {
                        if let Err(e) = answer {
                            return Err(unanswered("refund", &refund.payment_id, &e));
                        }
                        answer_with(
                            ctx,
                            &refund.payment_id,
                            &refund.order_id,
                            PaymentOutcome::Refunded,
                            None,
                            refund.amount,
                            &refund.currency,
                        )
                    });
                    continuation
                })
            }
        }
    }
}

fn unanswered(what: &str, payment_id: &str, error: &GatewayError) -> ProcessError {
    let message =
        format!("the payment gateway did not answer the {what} of payment {payment_id}: {error}");
    match error {
        GatewayError::InvalidRequest { .. } => ProcessError::Invalid(message),
        _ => ProcessError::Fatal(format!(
            "{message} (the payment may or may not have been made: fix the gateway or its config and restart; the request runs again under the same idempotency key)"
        )),
    }
}

fn answer_with(
    ctx: &mut Context<'_>,
    payment_id: &str,
    order_id: &str,
    outcome: PaymentOutcome,
    reason: Option<String>,
    amount: i64,
    currency: &str,
) -> Result<(), ProcessError> {
    // Stamped when the answer came, never before its request: the saga takes its
    // inputs oldest first, and a cancel sent while the charge was under way must come
    // before the charge's answer on a replay as it did the first time.
    let at = ctx.wall_time().max(ctx.timestamp());
    let result = PaymentResult {
        payment_id: payment_id.to_string(),
        order_id: order_id.to_string(),
        outcome,
        reason,
        at,
        amount: Some(amount),
        currency: Some(currency.to_string()),
    };
    ctx.forward_at(topics::PAYMENTS_RESULTS, order_id, &result, at)
}
