#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The order saga through the real topology.yaml: placing (every rejection reason),
//! payment approved and declined, the wall-clock payment timeout, cancels before and
//! after payment, late approvals refunded, repeated commands and results, versions,
//! dead letters for what cannot be applied, the currencies config, and a crash
//! restored from the changelogs.

#[path = "common/saga_topology.rs"]
mod saga_topology;

use std::time::Duration;

use anyhow::{Context as _, Result};
use orderflow_pipelines::catalog;
use orderflow_pipelines::order_saga::{
    Charge, ORDERS_STORE, OrderState, PAYMENT_TIMEOUT_TIMER, Phase, payment_id_for, reasons,
};
use orderflow_pipelines::records::{
    BuyerSeller, CancelOrder, OrderCommand, OrderEvent, OrderItem, OrderStatus, PaymentCommand,
    PaymentOutcome, PaymentRequested, PaymentResult, PlaceOrder, RefundRequested, Role, User,
    UserStatus, topics,
};
use orderflow_runtime::TestDriver;
use orderflow_runtime::driver::{START_WALL_TIME, dlq_headers};
use saga_topology::saga_driver;

const SAGA: &str = "order-saga";
const T0: i64 = START_WALL_TIME;
const BUYER: &str = "buyer-1";
const OTHER_BUYER: &str = "buyer-2";
const SELLER: &str = "seller-1";
const GONE_BUYER: &str = "buyer-deleted";
const GONE_SELLER: &str = "seller-deleted";

fn topology_path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../topology.yaml").to_string()
}

fn user(id: &str, role: Role, status: UserStatus) -> User {
    User {
        id: id.to_string(),
        email: format!("{id}@example.com"),
        role,
        display_name: id.to_string(),
        status,
        created_at: T0 - 1_000,
        updated_at: T0 - 1_000,
        password_hash: String::new(),
    }
}

/// Puts the users every test places orders with in the `auth.users` table.
fn seed(driver: &mut TestDriver) -> Result<()> {
    for u in [
        user(BUYER, Role::Buyer, UserStatus::Active),
        user(OTHER_BUYER, Role::Buyer, UserStatus::Active),
        user(SELLER, Role::Seller, UserStatus::Active),
        user(GONE_BUYER, Role::Buyer, UserStatus::Deleted),
        user(GONE_SELLER, Role::Seller, UserStatus::Deleted),
    ] {
        driver.pipe_at(topics::AUTH_USERS, &u.id.clone(), &u, T0 - 1_000)?;
    }
    Ok(())
}

/// A driver over the repo's topology.yaml with the users seeded.
fn driver() -> Result<TestDriver> {
    let mut driver = saga_driver(&std::fs::read_to_string(topology_path())?)?;
    seed(&mut driver)?;
    Ok(driver)
}

/// The payment timeout as topology.yaml sets it (30s unless the environment says).
fn timeout(driver: &TestDriver) -> Duration {
    driver.topology().processors[SAGA].timers[PAYMENT_TIMEOUT_TIMER].after
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap()
}

fn item(product: &str, quantity: i32, unit_price: i64) -> OrderItem {
    OrderItem {
        product_id: product.to_string(),
        quantity,
        unit_price,
    }
}

/// Two lines, 2 x 15.00 + 1 x 9.99 = 39.99 EUR.
fn lines() -> Vec<OrderItem> {
    vec![item("p-1", 2, 1_500), item("p-2", 1, 999)]
}

const TOTAL: i64 = 3_999;

fn place_order(request_id: &str, order_id: &str) -> PlaceOrder {
    PlaceOrder {
        request_id: request_id.to_string(),
        order_id: order_id.to_string(),
        buyer_id: BUYER.to_string(),
        seller_id: SELLER.to_string(),
        items: lines(),
        currency: "EUR".to_string(),
        placed_at: T0,
    }
}

fn place(request_id: &str, order_id: &str) -> OrderCommand {
    OrderCommand::PlaceOrder(place_order(request_id, order_id))
}

fn cancel(request_id: &str, order_id: &str, by: &str, reason: Option<&str>) -> OrderCommand {
    OrderCommand::CancelOrder(CancelOrder {
        request_id: request_id.to_string(),
        order_id: order_id.to_string(),
        requested_by: by.to_string(),
        reason: reason.map(str::to_string),
    })
}

fn result_for(order_id: &str, payment_id: &str, outcome: PaymentOutcome) -> PaymentResult {
    PaymentResult {
        payment_id: payment_id.to_string(),
        order_id: order_id.to_string(),
        outcome,
        reason: None,
        at: T0,
        amount: None,
        currency: None,
    }
}

/// Pipes a command keyed by its order id, as the HTTP edge does.
fn send(driver: &mut TestDriver, command: &OrderCommand) -> Result<()> {
    let order_id = match command {
        OrderCommand::PlaceOrder(c) => c.order_id.clone(),
        OrderCommand::CancelOrder(c) => c.order_id.clone(),
    };
    Ok(driver.pipe(topics::ORDERS_COMMANDS, &order_id, command)?)
}

/// Pipes the gateway's answer for the order's own payment.
fn answer(driver: &mut TestDriver, order_id: &str, outcome: PaymentOutcome) -> Result<()> {
    let result = result_for(order_id, &payment_id_for(order_id), outcome);
    Ok(driver.pipe(topics::PAYMENTS_RESULTS, order_id, &result)?)
}

fn events(driver: &mut TestDriver) -> Result<Vec<OrderEvent>> {
    driver
        .read_output::<OrderEvent>(topics::ORDERS_EVENTS)?
        .into_iter()
        .map(|r| {
            let event = r.value.context("an order event is never a tombstone")?;
            assert_eq!(r.key, event.order_id, "events are keyed by order id");
            assert_eq!(r.timestamp, event.at, "an event's timestamp is its `at`");
            Ok(event)
        })
        .collect()
}

fn requests(driver: &mut TestDriver) -> Result<Vec<PaymentCommand>> {
    driver
        .read_output::<PaymentCommand>(topics::PAYMENTS_REQUESTS)?
        .into_iter()
        .map(|r| {
            let request = r.value.context("a payment request is never a tombstone")?;
            let order_id = match &request {
                PaymentCommand::PaymentRequested(p) => &p.order_id,
                PaymentCommand::RefundRequested(p) => &p.order_id,
            };
            assert_eq!(&r.key, order_id, "requests are keyed by order id");
            Ok(request)
        })
        .collect()
}

fn state(driver: &TestDriver, order_id: &str) -> Result<OrderState> {
    driver
        .store(ORDERS_STORE)
        .get::<OrderState>(order_id)?
        .with_context(|| format!("no state for order {order_id}"))
}

fn one<T: std::fmt::Debug>(mut items: Vec<T>) -> T {
    assert_eq!(items.len(), 1, "expected exactly one record: {items:?}");
    items.pop().unwrap()
}

/// The ORDERED event of `place_order(request_id, order_id)` piped at `at`.
fn ordered(request_id: &str, order_id: &str, at: i64) -> OrderEvent {
    OrderEvent {
        order_id: order_id.to_string(),
        buyer_id: BUYER.to_string(),
        seller_id: SELLER.to_string(),
        status: OrderStatus::Ordered,
        total: TOTAL,
        currency: "EUR".to_string(),
        reason: None,
        version: 1,
        at,
        items: lines(),
        request_id: Some(request_id.to_string()),
    }
}

/// The event after `previous` that says `status` for `reason`, caused by `request_id`.
fn next(
    previous: &OrderEvent,
    status: OrderStatus,
    reason: Option<&str>,
    request_id: Option<&str>,
    at: i64,
) -> OrderEvent {
    OrderEvent {
        status,
        reason: reason.map(str::to_string),
        version: previous.version + 1,
        at,
        request_id: request_id.map(str::to_string),
        ..previous.clone()
    }
}

fn refund(order_id: &str, reason: &str, at: i64) -> PaymentCommand {
    PaymentCommand::RefundRequested(RefundRequested {
        payment_id: payment_id_for(order_id),
        order_id: order_id.to_string(),
        buyer_id: BUYER.to_string(),
        amount: TOTAL,
        currency: "EUR".to_string(),
        reason: Some(reason.to_string()),
        requested_at: at,
    })
}

fn dead_errors(driver: &TestDriver) -> Result<Vec<String>> {
    Ok(driver
        .dead_letters(SAGA)?
        .iter()
        .map(|d| {
            assert_eq!(d.header(dlq_headers::ERROR_KIND), Some("invalid"));
            assert_eq!(d.header(dlq_headers::PROCESSOR), Some(SAGA));
            d.header(dlq_headers::ERROR).unwrap_or_default().to_string()
        })
        .collect())
}

/// Places order `o1` and drains its ORDERED event and payment request.
fn placed(driver: &mut TestDriver) -> Result<OrderEvent> {
    send(driver, &place("r1", "o1"))?;
    requests(driver)?;
    Ok(one(events(driver)?))
}

// ---------------------------------------------------------------------------------
// Placing
// ---------------------------------------------------------------------------------

#[test]
fn a_valid_order_is_ordered_and_its_payment_requested() -> Result<()> {
    let mut driver = driver()?;
    driver.pipe_at(topics::ORDERS_COMMANDS, "o1", &place("r1", "o1"), T0 + 5)?;

    assert_eq!(one(events(&mut driver)?), ordered("r1", "o1", T0 + 5));
    assert_eq!(
        one(requests(&mut driver)?),
        PaymentCommand::PaymentRequested(PaymentRequested {
            payment_id: payment_id_for("o1"),
            order_id: "o1".to_string(),
            buyer_id: BUYER.to_string(),
            amount: TOTAL,
            currency: "EUR".to_string(),
            requested_at: T0 + 5,
        })
    );
    assert_eq!(driver.pending_timers(SAGA), 1, "the payment timeout is set");
    let saved = state(&driver, "o1")?;
    assert_eq!(saved.phase, Phase::AwaitingPayment);
    assert_eq!(saved.status(), OrderStatus::Ordered);
    assert_eq!(saved.version, 1);
    assert_eq!(saved.total, TOTAL);
    assert_eq!(saved.payment_id, payment_id_for("o1"));
    assert!(saved.request_ids.contains("r1"));
    assert!(driver.dead_letters(SAGA)?.is_empty());
    Ok(())
}

#[test]
fn payment_ids_are_uuid_shaped_deterministic_and_distinct() {
    let id = payment_id_for("o1");
    assert_eq!(id.len(), 36);
    for (i, c) in id.char_indices() {
        if [8, 13, 18, 23].contains(&i) {
            assert_eq!(c, '-', "{id}");
        } else {
            assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{id}");
        }
    }
    assert_eq!(id, payment_id_for("o1"));
    assert_ne!(id, payment_id_for("o2"));
    assert_ne!(id, payment_id_for("o1 "));
}

/// A PlaceOrder by `buyer` from `seller` (order and request id to be filled in).
fn order(buyer: &str, seller: &str, items: Vec<OrderItem>, currency: &str) -> PlaceOrder {
    PlaceOrder {
        request_id: String::new(),
        order_id: String::new(),
        buyer_id: buyer.to_string(),
        seller_id: seller.to_string(),
        items,
        currency: currency.to_string(),
        placed_at: T0,
    }
}

/// [`order`] as order `order_id`, placed by request `req-<order_id>`.
fn custom(
    order_id: &str,
    buyer: &str,
    seller: &str,
    items: Vec<OrderItem>,
    currency: &str,
) -> OrderCommand {
    OrderCommand::PlaceOrder(PlaceOrder {
        request_id: format!("req-{order_id}"),
        order_id: order_id.to_string(),
        ..order(buyer, seller, items, currency)
    })
}

#[test]
fn every_broken_rule_rejects_the_order_with_its_reason() -> Result<()> {
    let mut driver = driver()?;
    let max = i64::MAX;
    let overflow = vec![item("p", 1, max), item("q", 1, 1)];
    let negative_line = vec![item("p", 1, 5), item("q", -2, 100)];
    // (reason, the total its REJECTED event carries, the order)
    #[rustfmt::skip]
    let cases = [
        (reasons::BUYER_NOT_FOUND, TOTAL, order("nobody", SELLER, lines(), "EUR")),
        (reasons::BUYER_NOT_FOUND, TOTAL, order(GONE_BUYER, SELLER, lines(), "EUR")),
        (reasons::NOT_A_BUYER, TOTAL, order(SELLER, SELLER, lines(), "EUR")),
        (reasons::SELLER_NOT_FOUND, TOTAL, order(BUYER, "nobody", lines(), "EUR")),
        (reasons::SELLER_NOT_FOUND, TOTAL, order(BUYER, GONE_SELLER, lines(), "EUR")),
        (reasons::NOT_A_SELLER, TOTAL, order(BUYER, OTHER_BUYER, lines(), "EUR")),
        (reasons::NO_ITEMS, 0, order(BUYER, SELLER, vec![], "EUR")),
        (reasons::BAD_QUANTITY, 0, order(BUYER, SELLER, vec![item("p", 0, 100)], "EUR")),
        (reasons::BAD_QUANTITY, -195, order(BUYER, SELLER, negative_line, "EUR")),
        (reasons::BAD_PRICE, -1, order(BUYER, SELLER, vec![item("p", 1, -1)], "EUR")),
        (reasons::UNKNOWN_CURRENCY, TOTAL, order(BUYER, SELLER, lines(), "XXX")),
        (reasons::UNKNOWN_CURRENCY, TOTAL, order(BUYER, SELLER, lines(), "eur")),
        (reasons::TOTAL_OVERFLOW, 0, order(BUYER, SELLER, overflow.clone(), "EUR")),
        (reasons::TOTAL_OVERFLOW, 0, order(BUYER, SELLER, vec![item("p", i32::MAX, max)], "EUR")),
        // Several rules broken: the first in the documented order names the reason.
        (reasons::BUYER_NOT_FOUND, 0, order("nobody", "nobody", vec![], "XXX")),
        (reasons::NO_ITEMS, 0, order(BUYER, SELLER, vec![], "XXX")),
        (reasons::BAD_PRICE, -1, order(BUYER, SELLER, vec![item("p", 1, -1)], "XXX")),
        (reasons::UNKNOWN_CURRENCY, 0, order(BUYER, SELLER, overflow, "XXX")),
    ];
    for (i, (reason, total, p)) in cases.iter().enumerate() {
        let p = PlaceOrder {
            request_id: format!("req-{i}"),
            order_id: format!("x{i}"),
            ..p.clone()
        };
        send(&mut driver, &OrderCommand::PlaceOrder(p.clone()))?;
        assert_eq!(
            one(events(&mut driver)?),
            OrderEvent {
                order_id: p.order_id.clone(),
                buyer_id: p.buyer_id.clone(),
                seller_id: p.seller_id.clone(),
                status: OrderStatus::Rejected,
                total: *total,
                currency: p.currency.clone(),
                reason: Some(reason.to_string()),
                version: 1,
                at: T0,
                items: p.items.clone(),
                request_id: Some(p.request_id.clone()),
            },
            "case {i}"
        );
        assert_eq!(state(&driver, &p.order_id)?.phase, Phase::Rejected);
    }
    assert!(
        requests(&mut driver)?.is_empty(),
        "no rejected order is charged"
    );
    assert_eq!(driver.pending_timers(SAGA), 0);
    assert!(driver.dead_letters(SAGA)?.is_empty());
    for reason in reasons::REJECTIONS {
        assert!(
            cases.iter().any(|(r, ..)| *r == reason),
            "no case for {reason}"
        );
    }
    Ok(())
}

#[test]
fn a_rejected_order_keeps_its_id_for_good() -> Result<()> {
    let mut driver = driver()?;
    let command = custom("x1", BUYER, SELLER, vec![], "EUR");
    send(&mut driver, &command)?;
    assert_eq!(one(events(&mut driver)?).status, OrderStatus::Rejected);

    // The same request again: nothing.
    send(&mut driver, &command)?;
    // The buyer cancelling it: nothing (terminal).
    send(&mut driver, &cancel("c1", "x1", BUYER, None))?;
    assert!(events(&mut driver)?.is_empty());
    assert!(dead_errors(&driver)?.is_empty());

    // A new request for the same order id, valid this time: refused.
    send(&mut driver, &place("r2", "x1"))?;
    // A payment result for it: no payment was asked for.
    answer(&mut driver, "x1", PaymentOutcome::Approved)?;
    assert!(events(&mut driver)?.is_empty());
    assert!(requests(&mut driver)?.is_empty());
    let errors = dead_errors(&driver)?;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("exists"), "{}", errors[0]);
    assert!(errors[1].contains("rejected"), "{}", errors[1]);
    assert_eq!(state(&driver, "x1")?.phase, Phase::Rejected);
    Ok(())
}

#[test]
fn the_currencies_come_from_the_config() -> Result<()> {
    let text = std::fs::read_to_string(topology_path())?;
    let anchor = "  order-saga:\n    kind: order-saga\n";
    assert!(
        text.contains(anchor),
        "topology.yaml moved the order-saga entry"
    );
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

    let only_eur = text.replace(
        anchor,
        &format!("{anchor}    config:\n      currencies: [EUR]\n"),
    );
    let mut restricted = saga_driver(&only_eur)?;
    seed(&mut restricted)?;
    send(
        &mut restricted,
        &custom("o1", BUYER, SELLER, lines(), "USD"),
    )?;
    send(
        &mut restricted,
        &custom("o2", BUYER, SELLER, lines(), "EUR"),
    )?;
    let got = events(&mut restricted)?;
    assert_eq!(got[0].reason.as_deref(), Some(reasons::UNKNOWN_CURRENCY));
    assert_eq!(got[1].status, OrderStatus::Ordered);

    // The default list has USD.
    let mut driver = driver()?;
    send(&mut driver, &custom("o1", BUYER, SELLER, lines(), "USD"))?;
    assert_eq!(one(events(&mut driver)?).status, OrderStatus::Ordered);

    for (bad, says) in [
        ("[eur]", "\"eur\" is not an ISO 4217 code"),
        ("[]", "at least one currency"),
        ("EUR", "invalid type"),
    ] {
        let yaml = text.replace(
            anchor,
            &format!("{anchor}    config:\n      currencies: {bad}\n"),
        );
        let error = TestDriver::from_yaml(&yaml, base, &catalog())
            .err()
            .with_context(|| format!("currencies: {bad} was accepted"))?
            .to_string();
        assert!(
            error.contains("processors.order-saga.config.currencies"),
            "{error}"
        );
        assert!(error.contains(says), "{error}");
    }
    let yaml = text.replace(
        anchor,
        &format!("{anchor}    config:\n      currency: [EUR]\n"),
    );
    assert!(TestDriver::from_yaml(&yaml, base, &catalog()).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------
// Payment results and the timeout
// ---------------------------------------------------------------------------------

#[test]
fn an_approved_payment_makes_the_order_paid() -> Result<()> {
    let mut driver = driver()?;
    let first = placed(&mut driver)?;
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;

    assert_eq!(
        one(events(&mut driver)?),
        next(&first, OrderStatus::Paid, None, None, T0)
    );
    assert!(requests(&mut driver)?.is_empty());
    assert_eq!(driver.pending_timers(SAGA), 0, "the timeout is cancelled");
    assert_eq!(state(&driver, "o1")?.phase, Phase::Paid);

    // The PAID event reached buyer-relations.
    let relations = driver.read_output::<BuyerSeller>(topics::AUTH_RELATIONS)?;
    assert_eq!(one(relations).key, format!("{BUYER}:{SELLER}"));

    // Paid in time: the timeout does nothing any more.
    driver.advance_wall_clock(timeout(&driver) * 2)?;
    assert!(events(&mut driver)?.is_empty());
    Ok(())
}

#[test]
fn a_declined_payment_cancels_the_order() -> Result<()> {
    let mut driver = driver()?;
    let first = placed(&mut driver)?;
    answer(&mut driver, "o1", PaymentOutcome::Declined)?;

    assert_eq!(
        one(events(&mut driver)?),
        next(
            &first,
            OrderStatus::Cancelled,
            Some(reasons::PAYMENT_DECLINED),
            None,
            T0
        )
    );
    assert!(requests(&mut driver)?.is_empty());
    assert_eq!(driver.pending_timers(SAGA), 0);
    assert_eq!(
        state(&driver, "o1")?.phase,
        Phase::Cancelled(Charge::Declined)
    );
    driver.advance_wall_clock(timeout(&driver) * 2)?;
    assert!(events(&mut driver)?.is_empty());
    Ok(())
}

#[test]
fn repeated_results_change_nothing() -> Result<()> {
    let mut driver = driver()?;
    placed(&mut driver)?;
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    assert_eq!(one(events(&mut driver)?).status, OrderStatus::Paid);
    let paid = state(&driver, "o1")?;
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    assert!(events(&mut driver)?.is_empty());
    assert!(requests(&mut driver)?.is_empty());
    assert_eq!(state(&driver, "o1")?, paid);

    send(&mut driver, &place("r1", "o2"))?;
    answer(&mut driver, "o2", PaymentOutcome::Declined)?;
    assert_eq!(events(&mut driver)?.len(), 2);
    answer(&mut driver, "o2", PaymentOutcome::Declined)?;
    assert!(events(&mut driver)?.is_empty());
    assert!(dead_errors(&driver)?.is_empty());
    Ok(())
}

#[test]
fn no_answer_within_the_timeout_cancels_the_order() -> Result<()> {
    let mut driver = driver()?;
    let first = placed(&mut driver)?;
    let after = timeout(&driver);

    driver.advance_wall_clock(after - Duration::from_millis(1))?;
    assert!(events(&mut driver)?.is_empty(), "not yet");
    assert_eq!(driver.pending_timers(SAGA), 1);

    driver.advance_wall_clock(Duration::from_millis(1))?;
    assert_eq!(
        one(events(&mut driver)?),
        next(
            &first,
            OrderStatus::Cancelled,
            Some(reasons::PAYMENT_TIMEOUT),
            None,
            T0 + ms(after)
        )
    );
    assert!(requests(&mut driver)?.is_empty());
    assert_eq!(driver.pending_timers(SAGA), 0);
    assert_eq!(
        state(&driver, "o1")?.phase,
        Phase::Cancelled(Charge::Unanswered)
    );

    driver.advance_wall_clock(after * 3)?;
    assert!(events(&mut driver)?.is_empty(), "it fires once");

    // A decline arriving after the timeout: noted, nothing to say.
    answer(&mut driver, "o1", PaymentOutcome::Declined)?;
    assert!(events(&mut driver)?.is_empty());
    assert!(requests(&mut driver)?.is_empty());
    assert_eq!(
        state(&driver, "o1")?.phase,
        Phase::Cancelled(Charge::Declined)
    );
    // ...and an approval contradicting that decline is a dead letter.
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    assert!(requests(&mut driver)?.is_empty());
    assert_eq!(dead_errors(&driver)?.len(), 1);
    Ok(())
}

#[test]
fn a_late_approval_is_refunded_and_the_order_stays_cancelled() -> Result<()> {
    let mut driver = driver()?;
    placed(&mut driver)?;
    let after = timeout(&driver);
    driver.advance_wall_clock(after)?;
    let cancelled = one(events(&mut driver)?);
    assert_eq!(cancelled.reason.as_deref(), Some(reasons::PAYMENT_TIMEOUT));

    // The gateway approves after all: the money goes back, the order stays CANCELLED.
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    assert!(events(&mut driver)?.is_empty());
    assert_eq!(
        one(requests(&mut driver)?),
        refund("o1", reasons::LATE_APPROVAL, T0 + ms(after))
    );
    assert_eq!(
        state(&driver, "o1")?.phase,
        Phase::Cancelled(Charge::RefundRequested)
    );

    // Once only.
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    assert!(requests(&mut driver)?.is_empty());

    // The refund's result: noted in the state, nothing visible.
    answer(&mut driver, "o1", PaymentOutcome::Refunded)?;
    answer(&mut driver, "o1", PaymentOutcome::Refunded)?;
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    assert!(events(&mut driver)?.is_empty());
    assert!(requests(&mut driver)?.is_empty());
    let saved = state(&driver, "o1")?;
    assert_eq!(saved.phase, Phase::Cancelled(Charge::Refunded));
    assert_eq!(saved.status(), OrderStatus::Cancelled);
    assert_eq!(saved.version, 2);
    assert!(dead_errors(&driver)?.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------
// Cancels
// ---------------------------------------------------------------------------------

#[test]
fn a_cancel_before_payment_cancels_the_order() -> Result<()> {
    let mut driver = driver()?;
    let first = placed(&mut driver)?;
    send(
        &mut driver,
        &cancel("c1", "o1", BUYER, Some("changed my mind")),
    )?;

    assert_eq!(
        one(events(&mut driver)?),
        next(
            &first,
            OrderStatus::Cancelled,
            Some(reasons::BUYER_CANCELLED),
            Some("c1"),
            T0
        )
    );
    assert!(requests(&mut driver)?.is_empty(), "nothing was charged yet");
    assert_eq!(driver.pending_timers(SAGA), 0);
    driver.advance_wall_clock(timeout(&driver) * 2)?;
    assert!(events(&mut driver)?.is_empty());

    // The charge went through anyway: refunded, still CANCELLED.
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    assert!(events(&mut driver)?.is_empty());
    let late = one(requests(&mut driver)?);
    let PaymentCommand::RefundRequested(late) = late else {
        panic!("expected a refund, got {late:?}")
    };
    assert_eq!(late.reason.as_deref(), Some(reasons::LATE_APPROVAL));
    Ok(())
}

#[test]
fn a_cancel_after_payment_is_refunded() -> Result<()> {
    let mut driver = driver()?;
    let first = placed(&mut driver)?;
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    let paid = one(events(&mut driver)?);

    send(
        &mut driver,
        &cancel("c1", "o1", BUYER, Some("changed my mind")),
    )?;
    assert!(
        events(&mut driver)?.is_empty(),
        "PAID until the money is back"
    );
    assert_eq!(
        one(requests(&mut driver)?),
        refund("o1", "changed my mind", T0)
    );
    let pending = state(&driver, "o1")?;
    assert_eq!(pending.phase, Phase::RefundPending);
    assert_eq!(pending.status(), OrderStatus::Paid);

    // Another cancel while the refund is pending: nothing.
    send(&mut driver, &cancel("c2", "o1", BUYER, None))?;
    assert!(events(&mut driver)?.is_empty());
    assert!(requests(&mut driver)?.is_empty());

    answer(&mut driver, "o1", PaymentOutcome::Refunded)?;
    let refunded = one(events(&mut driver)?);
    assert_eq!(
        refunded,
        next(
            &paid,
            OrderStatus::Refunded,
            Some(reasons::BUYER_CANCELLED),
            None,
            T0
        )
    );
    assert_eq!(
        [first.version, paid.version, refunded.version],
        [1, 2, 3],
        "one version per event, no gaps"
    );

    // Terminal: nothing moves it any more.
    answer(&mut driver, "o1", PaymentOutcome::Refunded)?;
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    send(&mut driver, &cancel("c3", "o1", BUYER, None))?;
    driver.advance_wall_clock(timeout(&driver) * 2)?;
    assert!(events(&mut driver)?.is_empty());
    assert!(requests(&mut driver)?.is_empty());
    assert_eq!(state(&driver, "o1")?.phase, Phase::Refunded);
    assert!(dead_errors(&driver)?.is_empty());
    Ok(())
}

#[test]
fn a_cancel_without_a_reason_refunds_for_buyer_cancelled() -> Result<()> {
    let mut driver = driver()?;
    placed(&mut driver)?;
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    send(&mut driver, &cancel("c1", "o1", BUYER, None))?;
    assert_eq!(
        one(requests(&mut driver)?),
        refund("o1", reasons::BUYER_CANCELLED, T0)
    );
    Ok(())
}

#[test]
fn a_cancel_by_anyone_but_the_buyer_is_a_dead_letter() -> Result<()> {
    let mut driver = driver()?;
    placed(&mut driver)?;
    let before = state(&driver, "o1")?;
    send(&mut driver, &cancel("c1", "o1", SELLER, None))?;
    send(&mut driver, &cancel("c2", "o1", OTHER_BUYER, None))?;

    assert!(events(&mut driver)?.is_empty());
    assert!(requests(&mut driver)?.is_empty());
    assert_eq!(state(&driver, "o1")?, before, "the order is untouched");
    let dead = driver.dead_letters(SAGA)?;
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].key, "o1");
    assert_eq!(
        dead[0].header(dlq_headers::SOURCE_TOPIC),
        Some(topics::ORDERS_COMMANDS)
    );
    assert!(
        dead_errors(&driver)?
            .iter()
            .all(|e| e.contains("not its buyer"))
    );

    // Refused requests are not remembered: the buyer may use the id.
    send(&mut driver, &cancel("c1", "o1", BUYER, None))?;
    assert_eq!(one(events(&mut driver)?).status, OrderStatus::Cancelled);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Repeats and dead letters
// ---------------------------------------------------------------------------------

#[test]
fn repeated_commands_change_nothing() -> Result<()> {
    let mut driver = driver()?;
    send(&mut driver, &place("r1", "o1"))?;
    send(&mut driver, &place("r1", "o1"))?;
    assert_eq!(one(events(&mut driver)?).version, 1);
    assert_eq!(one(requests(&mut driver)?), requests_of_o1_placed());

    send(&mut driver, &cancel("c1", "o1", BUYER, None))?;
    assert_eq!(one(events(&mut driver)?).status, OrderStatus::Cancelled);
    let cancelled = state(&driver, "o1")?;
    // Every earlier request again, in any order: nothing.
    send(&mut driver, &cancel("c1", "o1", BUYER, None))?;
    send(&mut driver, &place("r1", "o1"))?;
    send(
        &mut driver,
        &cancel("c1", "o1", BUYER, Some("different words")),
    )?;
    assert!(events(&mut driver)?.is_empty());
    assert!(requests(&mut driver)?.is_empty());
    assert_eq!(state(&driver, "o1")?, cancelled);
    assert_eq!(
        cancelled.request_ids.iter().collect::<Vec<_>>(),
        ["c1", "r1"]
    );
    assert!(dead_errors(&driver)?.is_empty());
    Ok(())
}

fn requests_of_o1_placed() -> PaymentCommand {
    PaymentCommand::PaymentRequested(PaymentRequested {
        payment_id: payment_id_for("o1"),
        order_id: "o1".to_string(),
        buyer_id: BUYER.to_string(),
        amount: TOTAL,
        currency: "EUR".to_string(),
        requested_at: T0,
    })
}

#[test]
fn a_result_for_another_payment_is_a_dead_letter() -> Result<()> {
    let mut driver = driver()?;
    placed(&mut driver)?;
    let before = state(&driver, "o1")?;

    let wrong = result_for("o1", &payment_id_for("o2"), PaymentOutcome::Approved);
    driver.pipe(topics::PAYMENTS_RESULTS, "o1", &wrong)?;
    // For an order the saga does not know, naming a payment that is not that order's.
    let unknown = result_for("o9", &payment_id_for("o8"), PaymentOutcome::Approved);
    driver.pipe(topics::PAYMENTS_RESULTS, "o9", &unknown)?;
    // A refund nobody asked for.
    answer(&mut driver, "o1", PaymentOutcome::Refunded)?;

    assert!(events(&mut driver)?.is_empty());
    assert!(requests(&mut driver)?.is_empty());
    assert_eq!(state(&driver, "o1")?, before);
    let errors = dead_errors(&driver)?;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].contains("names payment"), "{}", errors[0]);
    assert!(errors[1].contains("unknown order"), "{}", errors[1]);
    assert!(
        errors[2].contains("no refund was requested"),
        "{}",
        errors[2]
    );
    let dead = driver.dead_letters(SAGA)?;
    assert_eq!(
        dead[0].header(dlq_headers::SOURCE_TOPIC),
        Some(topics::PAYMENTS_RESULTS)
    );

    // The order is still waiting for its own payment.
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    assert_eq!(one(events(&mut driver)?).status, OrderStatus::Paid);

    // A decline contradicting that approval (a refused refund looks like this).
    answer(&mut driver, "o1", PaymentOutcome::Declined)?;
    assert!(events(&mut driver)?.is_empty());
    assert_eq!(state(&driver, "o1")?.phase, Phase::Paid);
    assert!(dead_errors(&driver)?[3].contains("contradicts"));
    Ok(())
}

#[test]
fn records_that_cannot_be_applied_are_dead_letters() -> Result<()> {
    let mut driver = driver()?;
    // Keyed by another order id: on the wrong partition for the order's state.
    driver.pipe(topics::ORDERS_COMMANDS, "o2", &place("r1", "o1"))?;
    // No request id to remember.
    send(&mut driver, &place("", "o1"))?;
    send(&mut driver, &place("r\u{0}1", "o1"))?;
    // Tombstones and bytes that are no record.
    driver.pipe_raw(topics::ORDERS_COMMANDS, "o1", None, T0)?;
    driver.pipe_raw(topics::PAYMENTS_RESULTS, "o1", None, T0)?;
    driver.pipe_raw(
        topics::ORDERS_COMMANDS,
        "o1",
        Some(vec![0, 0, 0, 0, 1, 7]),
        T0,
    )?;
    // A cancel of an order that does not exist.
    send(&mut driver, &cancel("c1", "o1", BUYER, None))?;
    assert!(events(&mut driver)?.is_empty());

    // Now place it, and send mis-keyed cancels and results.
    placed(&mut driver)?;
    driver.pipe(
        topics::ORDERS_COMMANDS,
        "o2",
        &cancel("c1", "o1", BUYER, None),
    )?;
    let result = result_for("o1", &payment_id_for("o1"), PaymentOutcome::Approved);
    driver.pipe(topics::PAYMENTS_RESULTS, "o2", &result)?;
    send(&mut driver, &cancel("", "o1", BUYER, None))?;

    assert!(events(&mut driver)?.is_empty());
    assert!(requests(&mut driver)?.is_empty());
    let dead = driver.dead_letters(SAGA)?;
    assert_eq!(dead.len(), 10);
    let errors: Vec<String> = dead
        .iter()
        .map(|d| d.header(dlq_headers::ERROR).unwrap_or_default().to_string())
        .collect();
    assert!(
        errors[0].contains("is not the PlaceOrder's order id"),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("request id"), "{}", errors[1]);
    assert!(errors[2].contains("request id"), "{}", errors[2]);
    assert!(errors[3].contains("tombstone"), "{}", errors[3]);
    assert!(errors[4].contains("tombstone"), "{}", errors[4]);
    assert!(errors[6].contains("unknown order"), "{}", errors[6]);
    assert!(
        errors[7].contains("CancelOrder's order id"),
        "{}",
        errors[7]
    );
    assert!(
        errors[8].contains("PaymentResult's order id"),
        "{}",
        errors[8]
    );
    assert!(errors[9].contains("request id"), "{}", errors[9]);
    assert_eq!(state(&driver, "o1")?.phase, Phase::AwaitingPayment);
    assert!(
        driver
            .store(ORDERS_STORE)
            .get::<OrderState>("o2")?
            .is_none()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Crash and restore
// ---------------------------------------------------------------------------------

#[test]
fn the_state_survives_a_restart() -> Result<()> {
    let mut driver = driver()?;
    send(&mut driver, &place("r1", "o1"))?;
    send(&mut driver, &place("r2", "o2"))?;
    send(&mut driver, &place("r3", "o3"))?;
    answer(&mut driver, "o3", PaymentOutcome::Approved)?;
    let placed = events(&mut driver)?;
    assert_eq!(placed.len(), 4);
    requests(&mut driver)?;
    let saved = driver.store(ORDERS_STORE).entries::<OrderState>()?;

    driver.restart()?;
    assert_eq!(driver.store(ORDERS_STORE).entries::<OrderState>()?, saved);
    assert_eq!(driver.pending_timers(SAGA), 2, "o1's and o2's timeouts");

    // Repeats are still recognised, versions go on, and the timeout still fires.
    send(&mut driver, &place("r1", "o1"))?;
    answer(&mut driver, "o3", PaymentOutcome::Approved)?;
    assert!(events(&mut driver)?.is_empty());
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    send(&mut driver, &cancel("c3", "o3", BUYER, None))?;
    let paid = one(events(&mut driver)?);
    assert_eq!((paid.order_id.as_str(), paid.version), ("o1", 2));
    assert_eq!(
        one(requests(&mut driver)?),
        refund("o3", reasons::BUYER_CANCELLED, T0)
    );

    driver.restart()?;
    driver.advance_wall_clock(timeout(&driver))?;
    answer(&mut driver, "o3", PaymentOutcome::Refunded)?;
    let after = events(&mut driver)?;
    assert_eq!(after.len(), 2);
    assert_eq!(
        (
            after[0].order_id.as_str(),
            after[0].status,
            after[0].version
        ),
        ("o2", OrderStatus::Cancelled, 2)
    );
    assert_eq!(after[0].reason.as_deref(), Some(reasons::PAYMENT_TIMEOUT));
    assert_eq!(
        (
            after[1].order_id.as_str(),
            after[1].status,
            after[1].version
        ),
        ("o3", OrderStatus::Refunded, 3)
    );
    assert!(dead_errors(&driver)?.is_empty());
    Ok(())
}

#[test]
fn a_result_that_comes_before_its_order_is_applied_when_the_order_comes() -> Result<()> {
    // Under at_least_once, after a crash, the answer to the first run's payment
    // request can be read before the replay of the PlaceOrder that asked for it.
    let mut driver = driver()?;
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    answer(&mut driver, "o1", PaymentOutcome::Approved)?;
    assert!(events(&mut driver)?.is_empty());
    assert!(dead_errors(&driver)?.is_empty(), "parked, not dead");

    send(&mut driver, &place("r1", "o1"))?;
    let seen = events(&mut driver)?;
    let statuses: Vec<OrderStatus> = seen.iter().map(|e| e.status).collect();
    assert_eq!(statuses, [OrderStatus::Ordered, OrderStatus::Paid]);
    assert_eq!(seen[1].version, 2);
    assert_eq!(state(&driver, "o1")?.phase, Phase::Paid);
    // Nothing is left parked: the store holds the order alone.
    assert_eq!(driver.store(ORDERS_STORE).len(), 1);
    assert_eq!(
        driver.pending_timers(SAGA),
        0,
        "no payment timeout for a paid order"
    );
    Ok(())
}

#[test]
fn a_parked_result_whose_order_never_comes_is_dropped_at_the_timeout() -> Result<()> {
    let mut driver = driver()?;
    answer(&mut driver, "o1", PaymentOutcome::Declined)?;
    assert_eq!(driver.store(ORDERS_STORE).len(), 1, "parked");
    let after = timeout(&driver) + Duration::from_millis(1);
    driver.advance_wall_clock(after)?;
    assert_eq!(driver.store(ORDERS_STORE).len(), 0, "dropped");
    assert!(events(&mut driver)?.is_empty());
    assert!(dead_errors(&driver)?.is_empty());
    Ok(())
}

#[test]
fn an_order_id_with_control_characters_is_a_dead_letter() -> Result<()> {
    let mut driver = driver()?;
    send(&mut driver, &place("r1", "o\u{0}1"))?;
    assert!(events(&mut driver)?.is_empty());
    assert!(dead_errors(&driver)?[0].contains("control characters"));
    Ok(())
}
