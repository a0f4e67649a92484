//! The payment authorizer through the real topology.yaml, with the simulated gateway
//! and with the HTTP gateway against a real HTTP server that counts charges: every
//! request is answered on `payments.results`, a replayed payment id is charged once,
//! a flaky gateway is retried, and a request that cannot be a payment is a dead
//! letter without a gateway call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/gateway_server.rs"]
mod gateway_server;

use std::path::Path;

use gateway_server::GatewayServer;
use orderflow_pipelines::catalog;
use orderflow_pipelines::records::{
    OrderCommand, OrderEvent, OrderItem, OrderStatus, PaymentCommand, PaymentOutcome,
    PaymentRequested, PaymentResult, PlaceOrder, RefundRequested, Role, User, UserStatus, topics,
};
use orderflow_runtime::TestDriver;
use orderflow_runtime::driver::dlq_headers;
use orderflow_runtime::topology::load_str;

const AUTHORIZER: &str = "payment-authorizer";

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The real topology.yaml with these variables set (and no others).
fn driver(vars: &[(&str, &str)]) -> TestDriver {
    let text = std::fs::read_to_string(root().join("topology.yaml")).unwrap();
    let env = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let topology = load_str(&text, "topology.yaml", root(), &env, &catalog()).unwrap();
    TestDriver::new(topology, &catalog()).unwrap()
}

fn charge(order: &str, buyer: &str, amount: i64) -> PaymentCommand {
    PaymentCommand::PaymentRequested(PaymentRequested {
        payment_id: format!("pay-{order}"),
        order_id: order.into(),
        buyer_id: buyer.into(),
        amount,
        currency: "EUR".into(),
        requested_at: 1_000,
    })
}

fn refund(order: &str, buyer: &str, amount: i64) -> PaymentCommand {
    PaymentCommand::RefundRequested(RefundRequested {
        payment_id: format!("pay-{order}"),
        order_id: order.into(),
        buyer_id: buyer.into(),
        amount,
        currency: "EUR".into(),
        reason: Some("BUYER_CANCELLED".into()),
        requested_at: 2_000,
    })
}

fn results(d: &mut TestDriver) -> Vec<(String, PaymentOutcome, Option<String>)> {
    d.read_output::<PaymentResult>(topics::PAYMENTS_RESULTS)
        .unwrap()
        .into_iter()
        .map(|r| {
            let v = r.value.unwrap();
            assert_eq!(r.key, v.order_id);
            (v.order_id, v.outcome, v.reason)
        })
        .collect()
}

#[test]
fn the_simulated_gateway_approves_declines_and_refunds() {
    let mut d = driver(&[("PAYMENT_DECLINE_BUYERS", "blocked-buyer")]);
    d.pipe(topics::PAYMENTS_REQUESTS, "o1", &charge("o1", "b1", 5_000))
        .unwrap();
    d.pipe(
        topics::PAYMENTS_REQUESTS,
        "o2",
        &charge("o2", "b1", 100_000_001),
    )
    .unwrap();
    d.pipe(
        topics::PAYMENTS_REQUESTS,
        "o3",
        &charge("o3", "blocked-buyer", 10),
    )
    .unwrap();
    d.pipe(topics::PAYMENTS_REQUESTS, "o1", &refund("o1", "b1", 5_000))
        .unwrap();
    assert_eq!(
        results(&mut d),
        [
            ("o1".to_string(), PaymentOutcome::Approved, None),
            (
                "o2".to_string(),
                PaymentOutcome::Declined,
                Some("AMOUNT_OVER_LIMIT".to_string())
            ),
            (
                "o3".to_string(),
                PaymentOutcome::Declined,
                Some("BUYER_BLOCKED".to_string())
            ),
            ("o1".to_string(), PaymentOutcome::Refunded, None),
        ]
    );
    let first = d
        .records::<PaymentResult>(topics::PAYMENTS_RESULTS)
        .unwrap()
        .remove(0)
        .value
        .unwrap();
    assert_eq!(first.payment_id, "pay-o1");
    assert_eq!(first.amount, Some(5_000));
    assert_eq!(first.currency.as_deref(), Some("EUR"));
}

/// A result is stamped with the time the gateway answered (the driver's wall clock),
/// never before its request: the saga takes its inputs oldest first, so a cancel
/// written while the charge was under way must sort before the charge's answer.
#[test]
fn a_result_is_stamped_when_the_answer_came_never_before_its_request() {
    let mut d = driver(&[]);
    let now = d.wall_time();
    d.pipe_at(
        topics::PAYMENTS_REQUESTS,
        "o1",
        &charge("o1", "b1", 5_000),
        now - 60_000,
    )
    .unwrap();
    d.pipe_at(
        topics::PAYMENTS_REQUESTS,
        "o2",
        &charge("o2", "b1", 5_000),
        now + 60_000,
    )
    .unwrap();
    let stamps: Vec<(String, i64, i64)> = d
        .read_output::<PaymentResult>(topics::PAYMENTS_RESULTS)
        .unwrap()
        .into_iter()
        .map(|r| {
            let v = r.value.unwrap();
            (v.order_id, r.timestamp, v.at)
        })
        .collect();
    assert_eq!(
        stamps,
        [
            ("o1".to_string(), now, now),
            ("o2".to_string(), now + 60_000, now + 60_000)
        ]
    );
}

#[test]
fn a_request_that_cannot_be_a_payment_is_a_dead_letter() {
    let server = GatewayServer::start();
    let url = server.url();
    let mut d = driver(&[("PAYMENT_GATEWAY", "http"), ("PAYMENT_GATEWAY_URL", &url)]);
    // Keyed by another order: it sits on the wrong partition for its saga.
    d.pipe(topics::PAYMENTS_REQUESTS, "other", &charge("o1", "b1", 10))
        .unwrap();
    d.pipe(topics::PAYMENTS_REQUESTS, "o2", &charge("o2", "b1", -1))
        .unwrap();
    d.pipe(topics::PAYMENTS_REQUESTS, "o3", &charge("o3", "", 10))
        .unwrap();
    assert!(results(&mut d).is_empty());
    let letters = d.dead_letters(AUTHORIZER).unwrap();
    assert_eq!(letters.len(), 3);
    let messages: Vec<String> = letters
        .iter()
        .map(|l| l.header(dlq_headers::ERROR).unwrap().to_string())
        .collect();
    assert!(
        messages[0].contains("is not the request's order id"),
        "{messages:?}"
    );
    assert!(messages[1].contains("negative"), "{messages:?}");
    assert!(messages[2].contains("buyer_id is empty"), "{messages:?}");
    assert_eq!(server.requests(), 0, "no gateway call for a bad request");
}

#[test]
fn the_http_gateway_charges_a_replayed_payment_once() {
    let server =
        GatewayServer::with_rule(|c| (c.amount > 9_000).then(|| "INSUFFICIENT_FUNDS".to_string()));
    let url = server.url();
    let mut d = driver(&[("PAYMENT_GATEWAY", "http"), ("PAYMENT_GATEWAY_URL", &url)]);
    d.pipe(topics::PAYMENTS_REQUESTS, "o1", &charge("o1", "b1", 5_000))
        .unwrap();
    // The same request again (a producer retry, a replay after a crash): the same
    // answer, no second charge.
    d.pipe(topics::PAYMENTS_REQUESTS, "o1", &charge("o1", "b1", 5_000))
        .unwrap();
    d.pipe(topics::PAYMENTS_REQUESTS, "o2", &charge("o2", "b2", 9_500))
        .unwrap();
    d.pipe(topics::PAYMENTS_REQUESTS, "o1", &refund("o1", "b1", 5_000))
        .unwrap();
    assert_eq!(
        results(&mut d),
        [
            ("o1".to_string(), PaymentOutcome::Approved, None),
            ("o1".to_string(), PaymentOutcome::Approved, None),
            (
                "o2".to_string(),
                PaymentOutcome::Declined,
                Some("INSUFFICIENT_FUNDS".to_string())
            ),
            ("o1".to_string(), PaymentOutcome::Refunded, None),
        ]
    );
    assert_eq!(server.charges(), 2);
    assert_eq!(server.approved(), 1);
    assert_eq!(server.refunds(), 1);
    assert_eq!(server.requests(), 4);
}

#[test]
fn a_flaky_gateway_is_retried_until_it_answers() {
    let server = GatewayServer::start();
    server.fail_next(3);
    let url = server.url();
    let mut d = driver(&[("PAYMENT_GATEWAY", "http"), ("PAYMENT_GATEWAY_URL", &url)]);
    d.pipe(topics::PAYMENTS_REQUESTS, "o1", &charge("o1", "b1", 100))
        .unwrap();
    assert_eq!(
        results(&mut d),
        [("o1".to_string(), PaymentOutcome::Approved, None)]
    );
    assert_eq!(server.requests(), 4);
    assert_eq!(server.approved(), 1);
    assert!(d.dead_letters(AUTHORIZER).unwrap().is_empty());
}

#[test]
fn a_gateway_that_refuses_our_credentials_stops_the_instance() {
    let server = GatewayServer::start();
    server.expect_authorization("Bearer right");
    let url = server.url();
    let mut d = driver(&[
        ("PAYMENT_GATEWAY", "http"),
        ("PAYMENT_GATEWAY_URL", &url),
        ("PAYMENT_GATEWAY_AUTHORIZATION", "Bearer wrong"),
    ]);
    // Whether the payment was made is unknown to us: no guess (no DECLINED, no dead
    // letter), the instance stops and names the gateway's refusal.
    let error = d
        .pipe(topics::PAYMENTS_REQUESTS, "o1", &charge("o1", "b1", 100))
        .unwrap_err()
        .to_string();
    assert!(error.contains("401"), "{error}");
    assert!(results(&mut d).is_empty());
    assert!(d.dead_letters(AUTHORIZER).unwrap().is_empty());
}

#[test]
fn with_the_saga_an_order_is_paid_or_declined_through_the_gateway() {
    // The whole topology.yaml: the saga asks, the authorizer answers, the saga decides.
    let mut d = driver(&[]);
    for (id, role) in [("b1", Role::Buyer), ("s1", Role::Seller)] {
        let user = User {
            id: id.into(),
            email: format!("{id}@example.com"),
            role,
            display_name: id.into(),
            status: UserStatus::Active,
            created_at: 0,
            updated_at: 0,
            password_hash: "x".into(),
        };
        d.pipe(topics::AUTH_USERS, id, &user).unwrap();
    }
    for (order, unit_price) in [("cheap", 1_000), ("dear", 200_000_000)] {
        let place = OrderCommand::PlaceOrder(PlaceOrder {
            request_id: format!("r-{order}"),
            order_id: order.into(),
            buyer_id: "b1".into(),
            seller_id: "s1".into(),
            items: vec![OrderItem {
                product_id: "p".into(),
                quantity: 1,
                unit_price,
            }],
            currency: "EUR".into(),
            placed_at: 0,
        });
        d.pipe(topics::ORDERS_COMMANDS, order, &place).unwrap();
    }
    let last: std::collections::BTreeMap<String, (OrderStatus, Option<String>, i64)> = d
        .records::<OrderEvent>(topics::ORDERS_EVENTS)
        .unwrap()
        .into_iter()
        .map(|r| {
            let e = r.value.unwrap();
            (e.order_id, (e.status, e.reason, e.version))
        })
        .collect();
    assert_eq!(last["cheap"], (OrderStatus::Paid, None, 2));
    assert_eq!(
        last["dear"],
        (OrderStatus::Cancelled, Some("PAYMENT_DECLINED".into()), 2)
    );
}
