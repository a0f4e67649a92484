//! The order-saga processor: one explicit state machine per order, driven by the
//! commands of `orders.commands` (`PlaceOrder`, `CancelOrder`), the gateway's answers
//! on `payments.results` and a wall-clock payment timeout. It publishes every change
//! of an order on `orders.events` and asks for charges and refunds on
//! `payments.requests`. Every input is keyed by order id, so one order lives on one
//! task and its inputs are applied one at a time, in order.
//!
//! # Placing an order
//!
//! A `PlaceOrder` for a new order id is checked against the `auth.users` global table
//! (keyed by user id) and the configured currencies. The rules, in the order they are
//! checked (the first one broken names the [`reasons`] code):
//!
//! 1. the buyer exists and is ACTIVE ([`reasons::BUYER_NOT_FOUND`]; a DELETED
//!    account counts as not found) and is a BUYER ([`reasons::NOT_A_BUYER`]);
//! 2. the seller exists and is ACTIVE ([`reasons::SELLER_NOT_FOUND`]) and is a SELLER
//!    ([`reasons::NOT_A_SELLER`]);
//! 3. there is at least one line ([`reasons::NO_ITEMS`]);
//! 4. line by line, the quantity is above zero ([`reasons::BAD_QUANTITY`]) and the
//!    unit price is not negative ([`reasons::BAD_PRICE`]);
//! 5. the currency is one of the configured codes, exactly as written there
//!    ([`reasons::UNKNOWN_CURRENCY`]; `eur` is not `EUR`);
//! 6. the total, `sum(quantity * unit_price)` in checked 64-bit arithmetic, does not
//!    overflow ([`reasons::TOTAL_OVERFLOW`]).
//!
//! A valid order gets `ORDERED` (version 1), a `PaymentRequested` for its total with
//! the payment id [`payment_id_for`] the order (derived from the order id, so a replay
//! asks for the very same payment and the gateway's idempotency key holds), and the
//! `payment-timeout` timer. An invalid one gets `REJECTED` (version 1) with the reason
//! and is kept, REJECTED for good: its order id stays taken. A REJECTED event's
//! `total` is the sum of the lines when it can be computed, else 0.
//!
//! # States and transitions
//!
//! [`Phase`] is where an order is; [`OrderState::status`] is the [`OrderStatus`] its
//! events show. `CANCELLED` remembers what became of the charge ([`Charge`]), because
//! the gateway may still answer after the saga gave up on it.
//!
//! | phase (status) | input | next phase | emits |
//! | --- | --- | --- | --- |
//! | none | valid `PlaceOrder` | `AWAITING_PAYMENT` (ORDERED) | `ORDERED`, `PaymentRequested`; timer set |
//! | none | invalid `PlaceOrder` | `REJECTED` | `REJECTED` with its reason |
//! | `AWAITING_PAYMENT` | `APPROVED` | `PAID` | `PAID`; timer cancelled |
//! | `AWAITING_PAYMENT` | `DECLINED` | `CANCELLED(DECLINED)` | `CANCELLED` `PAYMENT_DECLINED`; timer cancelled |
//! | `AWAITING_PAYMENT` | timer fires | `CANCELLED(UNANSWERED)` | `CANCELLED` `PAYMENT_TIMEOUT` |
//! | `AWAITING_PAYMENT` | `CancelOrder` | `CANCELLED(UNANSWERED)` | `CANCELLED` `BUYER_CANCELLED`; timer cancelled |
//! | `PAID` | `CancelOrder` | `REFUND_PENDING` (PAID) | `RefundRequested` (the command's reason, else `BUYER_CANCELLED`) |
//! | `REFUND_PENDING` | `REFUNDED` | `REFUNDED` | `REFUNDED` `BUYER_CANCELLED` |
//! | `CANCELLED(UNANSWERED)` | `APPROVED` | `CANCELLED(REFUND_REQUESTED)` | `RefundRequested` `LATE_APPROVAL`, no event |
//! | `CANCELLED(UNANSWERED)` | `DECLINED` | `CANCELLED(DECLINED)` | nothing |
//! | `CANCELLED(REFUND_REQUESTED)` | `REFUNDED` | `CANCELLED(REFUNDED)` | nothing |
//!
//! `CANCELLED`, `REFUNDED` and `REJECTED` are terminal: no event ever follows them.
//! A late approval of a cancelled order is money taken for nothing, so the saga gives
//! it back, but the order stays CANCELLED and its refund shows nowhere on
//! `orders.events`; the state notes it. Every event carries the order's buyer,
//! seller, lines, total, currency and reason; its `request_id` is the command's that
//! caused it (none for a payment result or the timer); `at` is the causing record's
//! timestamp (the due time for the timer); `version` is 1 for the order's first event
//! and one more for each next one.
//!
//! # What changes nothing
//!
//! - A command whose request id the order has seen already (a producer or edge
//!   retry), whatever it says: the order remembers every request id applied to it.
//! - A payment result the order has already applied (the same outcome again).
//! - A `CancelOrder` of a terminal order or of one whose refund is pending (its request
//!   id is still remembered).
//! - The timer firing for an order no longer awaiting payment.
//!
//! # A result before its order
//!
//! Under at_least_once the authorizer may answer a `PaymentRequested` the saga sent
//! before a crash, and the saga may read that answer before the replay of the
//! `PlaceOrder` that asked for it. Such a result, for an order id the saga does not
//! know yet and naming the payment id that order id derives, is parked in `orders`
//! (under a key no order id can have) and applied right after the order is placed;
//! the `payment-timeout` timer drops it if the order never comes.
//!
//! # Dead letters
//!
//! What the saga cannot apply is a [`ProcessError::Invalid`]: the record goes to the
//! dead-letter topic with the reason, and the order is untouched.
//!
//! - A tombstone on either input, or a value that does not decode.
//! - A record key that is not the record's order id (it sits on the wrong partition,
//!   where the order's state is not).
//! - A command with an empty request id or one with control characters.
//! - A `PlaceOrder` with a new request id for an order id that exists: order ids are
//!   not reused.
//! - A `CancelOrder` of an unknown order, or by anyone but the order's buyer (the HTTP
//!   edge only lets the buyer cancel, so anything else is a forged or broken record).
//! - A `PaymentResult` with another payment id than the order's (for an unknown
//!   order: than the one its order id derives); any result for a REJECTED order (no
//!   payment was asked for).
//! - A `PaymentResult` that contradicts what the order knows: `DECLINED` after the
//!   payment was `APPROVED` (the gateway refusing a refund looks like this; the refund
//!   stays pending for an operator), `APPROVED` after it was `DECLINED`, and
//!   `REFUNDED` when no refund was requested.
//!
//! # Stores
//!
//! | store | key | value |
//! | --- | --- | --- |
//! | `orders` | order id | the [`OrderState`] (JSON), terminal orders included |
//! | `order-saga-timers` | (the runtime's) | the pending `payment-timeout` per order id |
//!
//! Orders are kept for good: the store is what makes a replayed `PlaceOrder`
//! recognisable and keeps an order id from being placed twice.

use std::collections::BTreeSet;

use orderflow_runtime::context::GlobalTable;
use orderflow_runtime::processor::{BuildError, ProcessorSpec};
use orderflow_runtime::timer::Timer;
use orderflow_runtime::{Context, ProcessError, Processor, Record};
use serde::{Deserialize, Serialize};

use crate::ids::derived_uuid;
use crate::records::{
    CancelOrder, OrderCommand, OrderEvent, OrderItem, OrderStatus, PaymentCommand, PaymentOutcome,
    PaymentRequested, PaymentResult, PlaceOrder, RefundRequested, Role, User, UserStatus, topics,
};

/// The order table: order id → [`OrderState`].
pub const ORDERS_STORE: &str = "orders";

/// The wall-clock timer that cancels an order whose payment was not answered in time;
/// its delay is in topology.yaml.
pub const PAYMENT_TIMEOUT_TIMER: &str = "payment-timeout";

/// The `reason` codes of `orders.events` and of the saga's `RefundRequested`.
pub mod reasons {
    /// REJECTED: the buyer id is not in `auth.users`, or its account is DELETED.
    pub const BUYER_NOT_FOUND: &str = "BUYER_NOT_FOUND";
    /// REJECTED: the buyer's account is a SELLER account.
    pub const NOT_A_BUYER: &str = "NOT_A_BUYER";
    /// REJECTED: the seller id is not in `auth.users`, or its account is DELETED.
    pub const SELLER_NOT_FOUND: &str = "SELLER_NOT_FOUND";
    /// REJECTED: the seller's account is a BUYER account.
    pub const NOT_A_SELLER: &str = "NOT_A_SELLER";
    /// REJECTED: the order has no lines.
    pub const NO_ITEMS: &str = "NO_ITEMS";
    /// REJECTED: a line's quantity is zero or negative.
    pub const BAD_QUANTITY: &str = "BAD_QUANTITY";
    /// REJECTED: a line's unit price is negative.
    pub const BAD_PRICE: &str = "BAD_PRICE";
    /// REJECTED: the currency is not among the configured ones.
    pub const UNKNOWN_CURRENCY: &str = "UNKNOWN_CURRENCY";
    /// REJECTED: the total does not fit in a signed 64-bit count of minor units.
    pub const TOTAL_OVERFLOW: &str = "TOTAL_OVERFLOW";
    /// CANCELLED: the gateway declined the charge.
    pub const PAYMENT_DECLINED: &str = "PAYMENT_DECLINED";
    /// CANCELLED: no payment result within the payment timeout.
    pub const PAYMENT_TIMEOUT: &str = "PAYMENT_TIMEOUT";
    /// CANCELLED: the buyer cancelled before payment. Also the reason of the REFUNDED
    /// event after a cancel of a paid order, and of its `RefundRequested` when the
    /// command gave none.
    pub const BUYER_CANCELLED: &str = "BUYER_CANCELLED";
    /// `RefundRequested` only: the charge was approved after the order was cancelled.
    pub const LATE_APPROVAL: &str = "LATE_APPROVAL";

    /// Every reason a REJECTED event may carry, in the order the rules are checked.
    pub const REJECTIONS: [&str; 9] = [
        BUYER_NOT_FOUND,
        NOT_A_BUYER,
        SELLER_NOT_FOUND,
        NOT_A_SELLER,
        NO_ITEMS,
        BAD_QUANTITY,
        BAD_PRICE,
        UNKNOWN_CURRENCY,
        TOTAL_OVERFLOW,
    ];
}

/// The currencies accepted when the config names none: common ISO 4217 codes.
pub const DEFAULT_CURRENCIES: [&str; 25] = [
    "AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "HUF", "ILS", "INR",
    "JPY", "KRW", "MXN", "NOK", "NZD", "PLN", "SEK", "SGD", "TRY", "USD", "ZAR", "AED",
];

/// The `config:` block of an `order-saga` processor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSagaConfig {
    /// The ISO 4217 codes an order may be placed in: three upper-case letters each, at
    /// least one. Default [`DEFAULT_CURRENCIES`].
    #[serde(default = "default_currencies")]
    pub currencies: Vec<String>,
}

fn default_currencies() -> Vec<String> {
    DEFAULT_CURRENCIES.iter().map(|c| c.to_string()).collect()
}

impl Default for OrderSagaConfig {
    fn default() -> Self {
        OrderSagaConfig {
            currencies: default_currencies(),
        }
    }
}

/// The order saga. See the module docs.
#[derive(Debug, Clone)]
pub struct OrderSaga {
    currencies: BTreeSet<String>,
}

impl OrderSaga {
    /// A saga accepting the currencies of `config`; an empty list or a code that is not
    /// three upper-case ASCII letters is refused with the offending code.
    pub fn new(config: &OrderSagaConfig) -> Result<Self, String> {
        if config.currencies.is_empty() {
            return Err("at least one currency is needed".to_string());
        }
        if let Some(bad) = config
            .currencies
            .iter()
            .find(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(format!(
                "{bad:?} is not an ISO 4217 code (three upper-case letters)"
            ));
        }
        Ok(OrderSaga {
            currencies: config.currencies.iter().cloned().collect(),
        })
    }

    /// The builder registered in the catalog under `order-saga`.
    pub fn build(spec: &ProcessorSpec) -> Result<Box<dyn Processor>, BuildError> {
        let config: OrderSagaConfig = spec.config()?;
        let saga =
            OrderSaga::new(&config).map_err(|m| BuildError::at_config(spec, "currencies", m))?;
        Ok(Box::new(saga))
    }
}

/// The payment id of an order's one charge: a UUID-formatted string derived from the
/// order id, so a replayed `PlaceOrder` asks for the same payment and the gateway,
/// which uses it as its idempotency key, never charges twice.
pub fn payment_id_for(order_id: &str) -> String {
    derived_uuid("orderflow.payment-id.v1", &[order_id])
}

/// Where an order is in the saga.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Refused when placed. Terminal.
    Rejected,
    /// Placed, charge requested, no answer yet; the payment timeout is pending.
    AwaitingPayment,
    /// The charge was approved.
    Paid,
    /// Paid, then cancelled by the buyer: the refund is requested, not yet answered.
    /// Its events still show PAID.
    RefundPending,
    /// Paid, cancelled and refunded. Terminal.
    Refunded,
    /// Cancelled before payment (declined, timed out, or by the buyer). Terminal; the
    /// charge's fate is still tracked because the gateway may answer late.
    Cancelled(Charge),
}

/// What became of the charge of a cancelled order.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Charge {
    /// No answer (yet): the order was cancelled by the timeout or the buyer.
    Unanswered,
    /// Declined, before or after the order was cancelled.
    Declined,
    /// Approved after the order was cancelled: a refund is requested.
    RefundRequested,
    /// That late charge has been refunded.
    Refunded,
}

/// One order's state in the `orders` store.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrderState {
    /// The order id, the store key.
    pub order_id: String,
    /// The buyer's user id.
    pub buyer_id: String,
    /// The seller's user id.
    pub seller_id: String,
    /// The lines as placed.
    pub items: Vec<OrderItem>,
    /// ISO 4217 currency.
    pub currency: String,
    /// Sum of the lines, minor units (0 for a REJECTED order whose sum overflows).
    pub total: i64,
    /// The payment id of its charge ([`payment_id_for`] the order id), also for a
    /// REJECTED order, which never asks for it.
    pub payment_id: String,
    /// Where the order is.
    pub phase: Phase,
    /// The reason of its last event.
    pub reason: Option<String>,
    /// The version of its last event.
    pub version: i64,
    /// Every command request id applied to it, so a retry is recognised.
    pub request_ids: BTreeSet<String>,
}

impl OrderState {
    /// The status its events show.
    pub fn status(&self) -> OrderStatus {
        match self.phase {
            Phase::Rejected => OrderStatus::Rejected,
            Phase::AwaitingPayment => OrderStatus::Ordered,
            Phase::Paid | Phase::RefundPending => OrderStatus::Paid,
            Phase::Refunded => OrderStatus::Refunded,
            Phase::Cancelled(_) => OrderStatus::Cancelled,
        }
    }

    /// Whether no event can follow.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.phase,
            Phase::Rejected | Phase::Refunded | Phase::Cancelled(_)
        )
    }

    /// Moves to a phase whose event will carry `reason`.
    fn enter(&mut self, phase: Phase, reason: Option<&str>) {
        self.phase = phase;
        self.reason = reason.map(str::to_string);
    }

    fn on_cancel(&mut self, cancel: &CancelOrder) -> Vec<Effect> {
        match self.phase {
            Phase::AwaitingPayment => {
                self.enter(
                    Phase::Cancelled(Charge::Unanswered),
                    Some(reasons::BUYER_CANCELLED),
                );
                vec![Effect::StopTimeout, Effect::Publish]
            }
            Phase::Paid => {
                self.phase = Phase::RefundPending;
                let reason = cancel
                    .reason
                    .as_deref()
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or(reasons::BUYER_CANCELLED);
                vec![Effect::RequestRefund(reason.to_string())]
            }
            Phase::Rejected | Phase::RefundPending | Phase::Refunded | Phase::Cancelled(_) => {
                Vec::new()
            }
        }
    }

    fn on_timeout(&mut self) -> Vec<Effect> {
        if self.phase == Phase::AwaitingPayment {
            self.enter(
                Phase::Cancelled(Charge::Unanswered),
                Some(reasons::PAYMENT_TIMEOUT),
            );
            vec![Effect::Publish]
        } else {
            Vec::new()
        }
    }

    fn on_result(&mut self, outcome: PaymentOutcome) -> Result<Vec<Effect>, ProcessError> {
        use Charge::{Declined, RefundRequested, Refunded, Unanswered};
        use PaymentOutcome as Out;
        let order_id = self.order_id.clone();
        let conflict = |what: &str| {
            Err(ProcessError::invalid(format!(
                "payment result {outcome:?} for order {order_id:?} contradicts what it knows: {what}"
            )))
        };
        Ok(match (self.phase, outcome) {
            (Phase::Rejected, _) => {
                return Err(ProcessError::invalid(format!(
                    "payment result for order {:?}, which was rejected and asked for no payment",
                    self.order_id
                )));
            }
            (Phase::AwaitingPayment, Out::Approved) => {
                self.enter(Phase::Paid, None);
                vec![Effect::StopTimeout, Effect::Publish]
            }
            (Phase::AwaitingPayment, Out::Declined) => {
                self.enter(Phase::Cancelled(Declined), Some(reasons::PAYMENT_DECLINED));
                vec![Effect::StopTimeout, Effect::Publish]
            }
            (Phase::RefundPending, Out::Refunded) => {
                self.enter(Phase::Refunded, Some(reasons::BUYER_CANCELLED));
                vec![Effect::Publish]
            }
            (Phase::Cancelled(Unanswered), Out::Approved) => {
                self.phase = Phase::Cancelled(RefundRequested);
                vec![Effect::RequestRefund(reasons::LATE_APPROVAL.to_string())]
            }
            (Phase::Cancelled(Unanswered), Out::Declined) => {
                self.phase = Phase::Cancelled(Declined);
                Vec::new()
            }
            (Phase::Cancelled(RefundRequested), Out::Refunded) => {
                self.phase = Phase::Cancelled(Refunded);
                Vec::new()
            }
            // Answers already applied, again.
            (
                Phase::Paid
                | Phase::RefundPending
                | Phase::Refunded
                | Phase::Cancelled(RefundRequested | Refunded),
                Out::Approved,
            )
            | (Phase::Cancelled(Declined), Out::Declined)
            | (Phase::Refunded | Phase::Cancelled(Refunded), Out::Refunded) => Vec::new(),
            (
                Phase::Paid
                | Phase::RefundPending
                | Phase::Refunded
                | Phase::Cancelled(RefundRequested | Refunded),
                Out::Declined,
            ) => return conflict("the charge was approved"),
            (Phase::Cancelled(Declined), Out::Approved) => {
                return conflict("the charge was declined");
            }
            (
                Phase::AwaitingPayment | Phase::Paid | Phase::Cancelled(Unanswered | Declined),
                Out::Refunded,
            ) => {
                return conflict("no refund was requested");
            }
        })
    }

    /// The event showing the order as it is now.
    fn event(&self, at: i64, request_id: Option<&str>) -> OrderEvent {
        OrderEvent {
            order_id: self.order_id.clone(),
            buyer_id: self.buyer_id.clone(),
            seller_id: self.seller_id.clone(),
            status: self.status(),
            total: self.total,
            currency: self.currency.clone(),
            reason: self.reason.clone(),
            version: self.version,
            at,
            items: self.items.clone(),
            request_id: request_id.map(str::to_string),
        }
    }
}

/// What a transition asks for, applied in order once it is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    /// Publish the order's new status on `orders.events`, with the next version.
    Publish,
    /// Ask for the charge on `payments.requests`.
    RequestPayment,
    /// Ask for a refund of the charge, with this reason.
    RequestRefund(String),
    /// Start the payment timeout.
    StartTimeout,
    /// Stop the payment timeout.
    StopTimeout,
}

/// The sum of the lines, or `None` when it overflows.
fn order_total(items: &[OrderItem]) -> Option<i64> {
    items.iter().try_fold(0_i64, |sum, item| {
        i64::from(item.quantity)
            .checked_mul(item.unit_price)
            .and_then(|line| sum.checked_add(line))
    })
}

fn check_key(record: &Record, order_id: &str, what: &str) -> Result<(), ProcessError> {
    if record.key == order_id {
        Ok(())
    } else {
        Err(ProcessError::invalid(format!(
            "record key {:?} is not the {what}'s order id {order_id:?}: {} is keyed by order id",
            record.key, record.topic
        )))
    }
}

fn check_request_id(request_id: &str) -> Result<(), ProcessError> {
    if request_id.is_empty() || request_id.chars().any(char::is_control) {
        return Err(ProcessError::invalid(format!(
            "request id {request_id:?} cannot be remembered (empty or with control characters)"
        )));
    }
    Ok(())
}

fn load(ctx: &mut Context<'_>, order_id: &str) -> Result<Option<OrderState>, ProcessError> {
    ctx.store(ORDERS_STORE)?.get::<OrderState>(order_id)
}

/// The `orders` store key of the payment results parked for an order not placed yet.
/// A placed order id has no control characters (see `place`), so this never names
/// an order.
fn parked_key(order_id: &str) -> String {
    format!("\u{0}parked\u{0}{order_id}")
}

/// Keeps a result that came before its order: under at_least_once, after a crash,
/// the authorizer's answer to the saga's first run can be read before the replay of
/// the `PlaceOrder` that asked for it. Only a result naming the payment id the order
/// id derives is kept (anything else cannot be an answer to this saga); the
/// `payment-timeout` timer drops it if the order never comes.
fn park(ctx: &mut Context<'_>, result: &PaymentResult) -> Result<(), ProcessError> {
    if result.payment_id != payment_id_for(&result.order_id) {
        return Err(ProcessError::invalid(format!(
            "PaymentResult for unknown order {:?} names payment {:?}, which is not that order's",
            result.order_id, result.payment_id
        )));
    }
    let key = parked_key(&result.order_id);
    let store = ctx.store(ORDERS_STORE)?;
    let mut parked: Vec<PaymentResult> = store.get(&key)?.unwrap_or_default();
    if parked.iter().any(|p| p.outcome == result.outcome) {
        return Ok(());
    }
    parked.push(result.clone());
    store.put(&key, &parked)?;
    tracing::debug!(order_id = %result.order_id, outcome = ?result.outcome, "payment result parked until its order is placed");
    ctx.set_timer(PAYMENT_TIMEOUT_TIMER, &result.order_id)?;
    Ok(())
}

/// Applies the results parked for a just-placed order, in the order they came. One
/// that contradicts the order is dropped with a warning: it was an answer to a run
/// of the saga whose outcome the replay did not repeat.
fn apply_parked(ctx: &mut Context<'_>, state: &mut OrderState) -> Result<(), ProcessError> {
    let key = parked_key(&state.order_id);
    let Some(parked) = ctx.store(ORDERS_STORE)?.get::<Vec<PaymentResult>>(&key)? else {
        return Ok(());
    };
    ctx.store(ORDERS_STORE)?.delete(&key);
    for result in parked {
        let before = state.clone();
        match state.on_result(result.outcome) {
            Ok(effects) => apply(ctx, Some(&before), state, &effects, None)?,
            Err(e) => {
                *state = before;
                tracing::warn!(order_id = %state.order_id, error = %e, "a parked payment result is dropped");
            }
        }
    }
    Ok(())
}

fn unknown_order(order_id: &str, what: &str) -> ProcessError {
    ProcessError::invalid(format!("{what} for unknown order {order_id:?}"))
}

/// Carries out `effects` for `state`, then saves it if it differs from `before`
/// (`None`: a new order).
fn apply(
    ctx: &mut Context<'_>,
    before: Option<&OrderState>,
    state: &mut OrderState,
    effects: &[Effect],
    request_id: Option<&str>,
) -> Result<(), ProcessError> {
    for effect in effects {
        match effect {
            Effect::Publish => {
                state.version += 1;
                let event = state.event(ctx.timestamp(), request_id);
                ctx.forward(topics::ORDERS_EVENTS, &state.order_id, &event)?;
            }
            Effect::RequestPayment => {
                let request = PaymentCommand::PaymentRequested(PaymentRequested {
                    payment_id: state.payment_id.clone(),
                    order_id: state.order_id.clone(),
                    buyer_id: state.buyer_id.clone(),
                    amount: state.total,
                    currency: state.currency.clone(),
                    requested_at: ctx.timestamp(),
                });
                ctx.forward(topics::PAYMENTS_REQUESTS, &state.order_id, &request)?;
            }
            Effect::RequestRefund(reason) => {
                let request = PaymentCommand::RefundRequested(RefundRequested {
                    payment_id: state.payment_id.clone(),
                    order_id: state.order_id.clone(),
                    buyer_id: state.buyer_id.clone(),
                    amount: state.total,
                    currency: state.currency.clone(),
                    reason: Some(reason.clone()),
                    requested_at: ctx.timestamp(),
                });
                ctx.forward(topics::PAYMENTS_REQUESTS, &state.order_id, &request)?;
            }
            Effect::StartTimeout => {
                ctx.set_timer(PAYMENT_TIMEOUT_TIMER, &state.order_id)?;
            }
            Effect::StopTimeout => {
                ctx.cancel_timer(PAYMENT_TIMEOUT_TIMER, &state.order_id)?;
            }
        }
    }
    if before != Some(&*state) {
        ctx.store(ORDERS_STORE)?.put(&state.order_id, &*state)?;
    }
    Ok(())
}

impl OrderSaga {
    /// The first rule `place` breaks (see the module docs), or its total.
    fn validate(
        &self,
        place: &PlaceOrder,
        users: &GlobalTable<'_>,
    ) -> Result<Result<i64, &'static str>, ProcessError> {
        let active = |id: &str| -> Result<Option<User>, ProcessError> {
            Ok(users
                .get::<User>(id)?
                .filter(|u| u.status == UserStatus::Active))
        };
        match active(&place.buyer_id)? {
            None => return Ok(Err(reasons::BUYER_NOT_FOUND)),
            Some(u) if u.role != Role::Buyer => return Ok(Err(reasons::NOT_A_BUYER)),
            Some(_) => {}
        }
        match active(&place.seller_id)? {
            None => return Ok(Err(reasons::SELLER_NOT_FOUND)),
            Some(u) if u.role != Role::Seller => return Ok(Err(reasons::NOT_A_SELLER)),
            Some(_) => {}
        }
        if place.items.is_empty() {
            return Ok(Err(reasons::NO_ITEMS));
        }
        for item in &place.items {
            if item.quantity <= 0 {
                return Ok(Err(reasons::BAD_QUANTITY));
            }
            if item.unit_price < 0 {
                return Ok(Err(reasons::BAD_PRICE));
            }
        }
        if !self.currencies.contains(&place.currency) {
            return Ok(Err(reasons::UNKNOWN_CURRENCY));
        }
        Ok(order_total(&place.items).ok_or(reasons::TOTAL_OVERFLOW))
    }

    fn place(
        &self,
        record: &Record,
        place: &PlaceOrder,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        check_key(record, &place.order_id, "PlaceOrder")?;
        check_request_id(&place.request_id)?;
        if place.order_id.is_empty() || place.order_id.chars().any(char::is_control) {
            return Err(ProcessError::invalid(format!(
                "order id {:?} is empty or has control characters",
                place.order_id
            )));
        }
        if let Some(existing) = load(ctx, &place.order_id)? {
            if existing.request_ids.contains(&place.request_id) {
                tracing::debug!(order_id = %place.order_id, request_id = %place.request_id, "repeated PlaceOrder ignored");
                return Ok(());
            }
            return Err(ProcessError::invalid(format!(
                "order {:?} exists: a PlaceOrder with a new request id ({:?}) cannot place it again",
                place.order_id, place.request_id
            )));
        }
        let verdict = self.validate(place, &ctx.global(topics::AUTH_USERS)?)?;
        let (phase, reason, total, effects) = match verdict {
            Ok(total) => (
                Phase::AwaitingPayment,
                None,
                total,
                vec![
                    Effect::Publish,
                    Effect::RequestPayment,
                    Effect::StartTimeout,
                ],
            ),
            Err(reason) => (
                Phase::Rejected,
                Some(reason.to_string()),
                order_total(&place.items).unwrap_or(0),
                vec![Effect::Publish],
            ),
        };
        let mut state = OrderState {
            order_id: place.order_id.clone(),
            buyer_id: place.buyer_id.clone(),
            seller_id: place.seller_id.clone(),
            items: place.items.clone(),
            currency: place.currency.clone(),
            total,
            payment_id: payment_id_for(&place.order_id),
            phase,
            reason,
            version: 0,
            request_ids: BTreeSet::from([place.request_id.clone()]),
        };
        apply(ctx, None, &mut state, &effects, Some(&place.request_id))?;
        apply_parked(ctx, &mut state)
    }

    fn cancel(
        &self,
        record: &Record,
        cancel: &CancelOrder,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        check_key(record, &cancel.order_id, "CancelOrder")?;
        check_request_id(&cancel.request_id)?;
        let mut state = load(ctx, &cancel.order_id)?
            .ok_or_else(|| unknown_order(&cancel.order_id, "CancelOrder"))?;
        if cancel.requested_by != state.buyer_id {
            return Err(ProcessError::invalid(format!(
                "CancelOrder of order {:?} by {:?}, who is not its buyer",
                cancel.order_id, cancel.requested_by
            )));
        }
        if state.request_ids.contains(&cancel.request_id) {
            tracing::debug!(order_id = %cancel.order_id, request_id = %cancel.request_id, "repeated CancelOrder ignored");
            return Ok(());
        }
        let before = state.clone();
        state.request_ids.insert(cancel.request_id.clone());
        let effects = state.on_cancel(cancel);
        apply(
            ctx,
            Some(&before),
            &mut state,
            &effects,
            Some(&cancel.request_id),
        )
    }

    fn result(
        &self,
        record: &Record,
        result: &PaymentResult,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        check_key(record, &result.order_id, "PaymentResult")?;
        let Some(mut state) = load(ctx, &result.order_id)? else {
            return park(ctx, result);
        };
        if result.payment_id != state.payment_id {
            return Err(ProcessError::invalid(format!(
                "PaymentResult for order {:?} names payment {:?}, not the order's {:?}",
                result.order_id, result.payment_id, state.payment_id
            )));
        }
        let before = state.clone();
        let effects = state.on_result(result.outcome)?;
        apply(ctx, Some(&before), &mut state, &effects, None)
    }
}

impl Processor for OrderSaga {
    fn stores(&self) -> &'static [&'static str] {
        &[ORDERS_STORE]
    }

    fn timers(&self) -> &'static [&'static str] {
        &[PAYMENT_TIMEOUT_TIMER]
    }

    fn process(&mut self, record: &Record, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        match record.topic.as_str() {
            topics::ORDERS_COMMANDS => match record.value::<OrderCommand>()? {
                OrderCommand::PlaceOrder(place) => self.place(record, &place, ctx),
                OrderCommand::CancelOrder(cancel) => self.cancel(record, &cancel, ctx),
            },
            topics::PAYMENTS_RESULTS => self.result(record, &record.value()?, ctx),
            other => Err(ProcessError::Contract(format!(
                "order-saga reads orders.commands and payments.results, not {other:?}"
            ))),
        }
    }

    fn punctuate(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if timer.name != PAYMENT_TIMEOUT_TIMER {
            return Ok(());
        }
        let Some(mut state) = load(ctx, &timer.key)? else {
            let parked = parked_key(&timer.key);
            if ctx.store(ORDERS_STORE)?.delete(&parked) {
                tracing::warn!(order_id = %timer.key, "payment results parked for an order that was never placed are dropped after the payment timeout");
            } else {
                tracing::debug!(order_id = %timer.key, "payment timeout for an unknown order ignored");
            }
            return Ok(());
        };
        let before = state.clone();
        let effects = state.on_timeout();
        apply(ctx, Some(&before), &mut state, &effects, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(quantity: i32, unit_price: i64) -> OrderItem {
        OrderItem {
            product_id: "p".to_string(),
            quantity,
            unit_price,
        }
    }

    #[test]
    fn totals_use_checked_arithmetic() {
        assert_eq!(order_total(&[]), Some(0));
        assert_eq!(order_total(&[item(3, 1_999), item(1, 1)]), Some(5_998));
        assert_eq!(order_total(&[item(2, i64::MAX / 2 + 1)]), None);
        assert_eq!(order_total(&[item(1, i64::MAX), item(1, 1)]), None);
        assert_eq!(
            order_total(&[item(1, i64::MAX), item(1, 0)]),
            Some(i64::MAX)
        );
    }

    #[test]
    fn currency_config_is_checked() {
        assert!(OrderSaga::new(&OrderSagaConfig::default()).is_ok());
        for bad in [vec![], vec!["eur".to_string()], vec!["EURO".to_string()]] {
            let config = OrderSagaConfig { currencies: bad };
            assert!(OrderSaga::new(&config).is_err(), "{config:?}");
        }
    }

    #[test]
    fn the_default_currencies_are_iso_codes_without_repeats() {
        let set: BTreeSet<&str> = DEFAULT_CURRENCIES.into_iter().collect();
        assert_eq!(set.len(), DEFAULT_CURRENCIES.len());
        assert!(OrderSaga::new(&OrderSagaConfig::default()).is_ok());
    }
}
