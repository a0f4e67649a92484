//! The payment gateways: the simulated one's rules (amount limit, blocked buyers, a
//! decline ratio that gives a replay the same answer, latency); the HTTP one against a
//! real HTTP server (tests/common/gateway_server.rs): approve, decline, refund,
//! retries after 503s, a timed-out attempt whose retry does not charge twice, replays,
//! refusals, giving up after max_attempts, Retry-After; and the `config:` block, whose
//! errors name the field and its line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/gateway_server.rs"]
mod gateway_server;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gateway_server::GatewayServer;
use orderflow_pipelines::payment_gateway::{
    Charge, ChargeOutcome, GatewayConfig, GatewayError, HttpGateway, HttpGatewayConfig,
    PaymentGateway, Refund, RefundOutcome, SimulatedGateway, SimulatedGatewayConfig, reasons,
};
use orderflow_runtime::processor::{BuildError, ProcessorSpec};
use orderflow_runtime::topology::yaml::{Node, Pos};

const MS: Duration = Duration::from_millis(1);

fn charge(payment_id: &str, buyer_id: &str, amount: i64) -> Charge {
    Charge {
        payment_id: payment_id.to_string(),
        order_id: format!("order-of-{payment_id}"),
        buyer_id: buyer_id.to_string(),
        amount,
        currency: "EUR".to_string(),
    }
}

fn refund_of(charge: &Charge) -> Refund {
    Refund {
        payment_id: charge.payment_id.clone(),
        order_id: charge.order_id.clone(),
        buyer_id: charge.buyer_id.clone(),
        amount: charge.amount,
        currency: charge.currency.clone(),
        reason: Some("buyer cancelled".to_string()),
    }
}

fn declined(reason: &str) -> ChargeOutcome {
    ChargeOutcome::Declined {
        reason: reason.to_string(),
    }
}

// ---------------------------------------------------------------------------------
// Simulated
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn simulated_declines_amounts_over_the_limit() {
    let gateway = SimulatedGateway::default();
    let limit = 100_000_000;
    assert_eq!(
        gateway.charge(&charge("p1", "b", limit)).await,
        Ok(ChargeOutcome::Approved)
    );
    assert_eq!(
        gateway.charge(&charge("p2", "b", limit + 1)).await,
        Ok(declined(reasons::AMOUNT_OVER_LIMIT))
    );

    let strict = SimulatedGateway::new(SimulatedGatewayConfig {
        decline_over: 500,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        strict.charge(&charge("p3", "b", 501)).await,
        Ok(declined(reasons::AMOUNT_OVER_LIMIT))
    );
    assert_eq!(
        strict.charge(&charge("p4", "b", 500)).await,
        Ok(ChargeOutcome::Approved)
    );
}

#[tokio::test]
async fn simulated_declines_listed_buyers_and_always_refunds() {
    let gateway = SimulatedGateway::new(SimulatedGatewayConfig {
        decline_buyers: BTreeSet::from(["mallory".to_string()]),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        gateway.charge(&charge("p1", "mallory", 10)).await,
        Ok(declined(reasons::BUYER_BLOCKED))
    );
    assert_eq!(
        gateway.charge(&charge("p2", "alice", 10)).await,
        Ok(ChargeOutcome::Approved)
    );
    // The limit is checked first.
    assert_eq!(
        gateway.charge(&charge("p3", "mallory", 200_000_000)).await,
        Ok(declined(reasons::AMOUNT_OVER_LIMIT))
    );
    assert_eq!(
        gateway
            .refund(&refund_of(&charge("p1", "mallory", 10)))
            .await,
        Ok(RefundOutcome::Refunded)
    );
}

#[tokio::test]
async fn simulated_ratio_is_decided_by_payment_id_so_replays_agree() {
    let config = SimulatedGatewayConfig {
        decline_ratio: 0.3,
        ..Default::default()
    };
    let first = SimulatedGateway::new(config.clone()).unwrap();
    let second = SimulatedGateway::new(config).unwrap();
    let mut declines = 0;
    for i in 0..2_000 {
        let c = charge(&format!("payment-{i}"), &format!("buyer-{}", i % 7), 100);
        let answer = first.charge(&c).await.unwrap();
        assert_eq!(first.charge(&c).await.unwrap(), answer, "replay of {i}");
        assert_eq!(
            second.charge(&c).await.unwrap(),
            answer,
            "other instance, {i}"
        );
        // The same payment id with another buyer or amount: the same answer.
        let other = Charge {
            buyer_id: "someone".to_string(),
            amount: 5,
            ..c.clone()
        };
        assert_eq!(first.decide(&other), answer);
        match answer {
            ChargeOutcome::Approved => {}
            ChargeOutcome::Declined { reason } => {
                assert_eq!(reason, reasons::DECLINED_BY_ISSUER);
                declines += 1;
            }
        }
    }
    assert!((500..=700).contains(&declines), "{declines} of 2000 at 0.3");

    let none = SimulatedGateway::new(SimulatedGatewayConfig::default()).unwrap();
    let all = SimulatedGateway::new(SimulatedGatewayConfig {
        decline_ratio: 1.0,
        ..Default::default()
    })
    .unwrap();
    for i in 0..200 {
        let c = charge(&format!("p-{i}"), "b", 1);
        assert_eq!(none.decide(&c), ChargeOutcome::Approved);
        assert_eq!(all.decide(&c), declined(reasons::DECLINED_BY_ISSUER));
    }
}

#[tokio::test]
async fn simulated_latency_delays_every_call() {
    let gateway = SimulatedGateway::new(SimulatedGatewayConfig {
        latency: 80 * MS,
        ..Default::default()
    })
    .unwrap();
    let started = Instant::now();
    gateway.charge(&charge("p", "b", 1)).await.unwrap();
    assert!(started.elapsed() >= 80 * MS, "{:?}", started.elapsed());
    let started = Instant::now();
    gateway
        .refund(&refund_of(&charge("p", "b", 1)))
        .await
        .unwrap();
    assert!(started.elapsed() >= 80 * MS, "{:?}", started.elapsed());
}

#[test]
fn simulated_rules_are_checked() {
    let error = SimulatedGateway::new(SimulatedGatewayConfig {
        decline_ratio: 1.5,
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(error.field, "decline_ratio");
    let error = SimulatedGateway::new(SimulatedGatewayConfig {
        decline_over: -1,
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(error.field, "decline_over");
}

// ---------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------

/// A gateway for `server` that retries quickly, with at most `max_attempts`.
fn http(server: &GatewayServer, max_attempts: Option<u32>) -> HttpGateway {
    HttpGateway::new(HttpGatewayConfig {
        timeout: Duration::from_secs(2),
        initial_backoff: 10 * MS,
        max_backoff: 50 * MS,
        max_attempts,
        ..HttpGatewayConfig::new(server.url())
    })
    .unwrap()
}

#[tokio::test]
async fn http_approves_and_sends_the_protocol() {
    let server = GatewayServer::start();
    let gateway = http(&server, Some(3));
    let c = charge("pay-1", "alice", 1_250);
    assert_eq!(gateway.charge(&c).await, Ok(ChargeOutcome::Approved));
    assert_eq!(
        (server.charges(), server.approved(), server.requests()),
        (1, 1, 1)
    );
    let recorded = server.charge("pay-1").unwrap();
    assert_eq!(recorded.request.order_id, "order-of-pay-1");
    assert_eq!(recorded.request.buyer_id, "alice");
    assert_eq!(recorded.request.amount, 1_250);
    assert_eq!(recorded.request.currency, "EUR");
}

#[tokio::test]
async fn http_declines_with_the_gateways_reason() {
    let server =
        GatewayServer::with_rule(|c| (c.buyer_id == "mallory").then(|| "CARD_STOLEN".to_string()));
    let gateway = http(&server, Some(3));
    assert_eq!(
        gateway.charge(&charge("pay-1", "mallory", 10)).await,
        Ok(declined("CARD_STOLEN"))
    );
    assert_eq!(
        gateway.charge(&charge("pay-2", "alice", 10)).await,
        Ok(ChargeOutcome::Approved)
    );
    assert_eq!((server.charges(), server.approved()), (2, 1));

    // A DECLINED without a reason.
    server.reply_next(1, 200, r#"{"status":"DECLINED","reason":null}"#);
    assert_eq!(
        gateway.charge(&charge("pay-3", "alice", 10)).await,
        Ok(declined(reasons::DECLINED))
    );
}

#[tokio::test]
async fn http_refunds_once() {
    let server = GatewayServer::start();
    let gateway = http(&server, Some(3));
    let c = charge("pay-1", "alice", 700);
    gateway.charge(&c).await.unwrap();
    assert_eq!(
        gateway.refund(&refund_of(&c)).await,
        Ok(RefundOutcome::Refunded)
    );
    assert_eq!(
        gateway.refund(&refund_of(&c)).await,
        Ok(RefundOutcome::Refunded)
    );
    assert_eq!(server.refunds(), 1);
    let recorded = server.refund("pay-1").unwrap();
    assert_eq!(recorded.amount, 700);
    assert_eq!(recorded.reason.as_deref(), Some("buyer cancelled"));

    // A refund of nothing the gateway charged is refused, and a refund cannot be
    // declined: it is an error.
    let error = gateway
        .refund(&refund_of(&charge("never-charged", "alice", 1)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            GatewayError::Refused {
                operation: "refund",
                status: 422,
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn http_retries_after_503s() {
    let server = GatewayServer::start();
    let gateway = http(&server, None);
    server.fail_next(3);
    assert_eq!(
        gateway.charge(&charge("pay-1", "alice", 10)).await,
        Ok(ChargeOutcome::Approved)
    );
    assert_eq!((server.requests(), server.charges()), (4, 1));

    // 408, 409, 429 and 500 are retried as well, refunds too.
    for status in [408, 409, 429, 500] {
        server.fail_next_with(1, status, None);
    }
    let c = charge("pay-1", "alice", 10);
    assert_eq!(
        gateway.refund(&refund_of(&c)).await,
        Ok(RefundOutcome::Refunded)
    );
    assert_eq!((server.requests(), server.refunds()), (9, 1));
}

#[tokio::test]
async fn http_retry_after_a_timeout_does_not_charge_twice() {
    let server = GatewayServer::start();
    let gateway = HttpGateway::new(HttpGatewayConfig {
        timeout: 200 * MS,
        initial_backoff: 10 * MS,
        max_attempts: Some(5),
        ..HttpGatewayConfig::new(server.url())
    })
    .unwrap();
    // The first attempt is charged, but its answer comes long after the client gave
    // up; the retry, under the same idempotency key, gets the first answer.
    server.stall_next(1, Duration::from_secs(5));
    let started = Instant::now();
    assert_eq!(
        gateway.charge(&charge("pay-1", "alice", 10)).await,
        Ok(ChargeOutcome::Approved)
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((server.requests(), server.charges()), (2, 1));

    // A slow answer (every one late) runs into the timeout every time.
    server.set_delay(Duration::from_secs(1));
    let error = gateway
        .charge(&charge("pay-2", "alice", 10))
        .await
        .unwrap_err();
    match &error {
        GatewayError::Unavailable {
            attempts,
            last_error,
        } => {
            assert_eq!(*attempts, 5);
            assert!(
                last_error.contains("no answer within 200ms"),
                "{last_error}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Charged once, on the first attempt, however many attempts timed out.
    assert_eq!(server.charges(), 2);
}

#[tokio::test]
async fn http_replay_of_a_payment_charges_once_with_the_first_answer() {
    let decline = Arc::new(AtomicBool::new(true));
    let rule = decline.clone();
    let server = GatewayServer::with_rule(move |_| {
        rule.load(Ordering::SeqCst)
            .then(|| "INSUFFICIENT_FUNDS".to_string())
    });
    let c = charge("pay-1", "alice", 10);
    let answer = http(&server, Some(3)).charge(&c).await.unwrap();
    assert_eq!(answer, declined("INSUFFICIENT_FUNDS"));
    // The issuer would say yes now, but the payment was answered: a replay (a new
    // gateway, as after a restart) gets the same answer and charges nothing.
    decline.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(http(&server, Some(3)).charge(&c).await.unwrap(), answer);
    }
    assert_eq!(
        (server.charges(), server.approved(), server.requests()),
        (1, 0, 4)
    );
}

#[tokio::test]
async fn http_refusals() {
    let server = GatewayServer::start();
    let gateway = http(&server, None);
    // A 4xx is the gateway refusing this charge: declined, not retried.
    server.fail_next_with(1, 422, None);
    assert_eq!(
        gateway.charge(&charge("pay-1", "alice", 10)).await,
        Ok(declined("GATEWAY_REFUSED_422"))
    );
    server.fail_next_with(1, 402, None);
    assert_eq!(
        gateway.charge(&charge("pay-2", "alice", 10)).await,
        Ok(declined("GATEWAY_REFUSED_402"))
    );
    assert_eq!((server.requests(), server.charges()), (2, 0));

    // 401 is the gateway refusing us, not the payment: an error.
    server.expect_authorization("Bearer s3cret");
    let error = gateway
        .charge(&charge("pay-3", "alice", 10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            GatewayError::Refused {
                operation: "charge",
                status: 401,
                ..
            }
        ),
        "{error}"
    );
    let authorized = HttpGateway::new(HttpGatewayConfig {
        authorization: Some("Bearer s3cret".to_string()),
        ..HttpGatewayConfig::new(server.url())
    })
    .unwrap();
    assert_eq!(
        authorized.charge(&charge("pay-3", "alice", 10)).await,
        Ok(ChargeOutcome::Approved)
    );
    assert!(!format!("{authorized:?}").contains("s3cret"));

    // A wrong path is 404: an error too.
    let wrong = HttpGateway::new(HttpGatewayConfig::new(format!("{}/v9", server.url()))).unwrap();
    let error = wrong
        .charge(&charge("pay-4", "alice", 10))
        .await
        .unwrap_err();
    assert!(
        matches!(error, GatewayError::Refused { status: 404, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn http_an_unreadable_answer_is_an_error_at_once() {
    let server = GatewayServer::start();
    let gateway = http(&server, None);
    server.reply_next(1, 200, "<html>maintenance</html>");
    let error = gateway
        .charge(&charge("pay-1", "alice", 10))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, GatewayError::Protocol { operation: "charge", message } if message.contains("maintenance")),
        "{error}"
    );
    server.reply_next(1, 200, r#"{"status":"PENDING"}"#);
    let error = gateway
        .charge(&charge("pay-1", "alice", 10))
        .await
        .unwrap_err();
    assert!(matches!(error, GatewayError::Protocol { .. }), "{error}");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn http_a_payment_id_that_cannot_be_sent_is_an_invalid_request() {
    let server = GatewayServer::start();
    let gateway = http(&server, None);
    let error = gateway
        .charge(&charge("pay\n1", "alice", 10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            GatewayError::InvalidRequest {
                operation: "charge",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn http_gives_up_after_max_attempts() {
    let server = GatewayServer::start();
    let gateway = http(&server, Some(3));
    server.fail_next(10);
    let error = gateway
        .charge(&charge("pay-1", "alice", 10))
        .await
        .unwrap_err();
    match &error {
        GatewayError::Unavailable {
            attempts,
            last_error,
        } => {
            assert_eq!(*attempts, 3);
            assert!(last_error.contains("503"), "{last_error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((server.requests(), server.charges()), (3, 0));

    // Nobody listening: connection errors, retried, then given up.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let nobody = HttpGateway::new(HttpGatewayConfig {
        initial_backoff: 10 * MS,
        max_attempts: Some(2),
        ..HttpGatewayConfig::new(format!("http://127.0.0.1:{port}"))
    })
    .unwrap();
    let error = nobody
        .charge(&charge("pay-1", "alice", 10))
        .await
        .unwrap_err();
    assert!(
        matches!(error, GatewayError::Unavailable { attempts: 2, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn http_honours_retry_after_up_to_max_backoff() {
    let server = GatewayServer::start();
    // The wait would be 10ms without Retry-After; max_backoff is the default 5s.
    let gateway = HttpGateway::new(HttpGatewayConfig {
        initial_backoff: 10 * MS,
        ..HttpGatewayConfig::new(server.url())
    })
    .unwrap();
    server.fail_next_with(1, 429, Some(1));
    let started = Instant::now();
    assert_eq!(
        gateway.charge(&charge("pay-1", "alice", 10)).await,
        Ok(ChargeOutcome::Approved)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Retry-After beyond max_backoff waits max_backoff.
    let capped = HttpGateway::new(HttpGatewayConfig {
        initial_backoff: 10 * MS,
        max_backoff: 300 * MS,
        ..HttpGatewayConfig::new(server.url())
    })
    .unwrap();
    server.fail_next_with(1, 503, Some(3_600));
    let started = Instant::now();
    assert_eq!(
        capped.charge(&charge("pay-2", "alice", 10)).await,
        Ok(ChargeOutcome::Approved)
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= 300 * MS && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[test]
fn the_server_serves_sync_tests() {
    // No runtime in this test: the server has its own; the client gets a small one.
    let server = GatewayServer::start();
    server.fail_next(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gateway: Arc<dyn PaymentGateway> = Arc::new(http(&server, Some(2)));
    let answer = runtime.block_on(gateway.charge(&charge("pay-1", "alice", 10)));
    assert_eq!(answer, Ok(ChargeOutcome::Approved));
    assert_eq!((server.requests(), server.charges()), (2, 1));
}

// ---------------------------------------------------------------------------------
// The config: block
// ---------------------------------------------------------------------------------

/// A spec for processor `payments` whose `config:` block is `yaml` (written at line 2,
/// column 3 of a topology file, as if under `processors.payments.config`).
fn spec(yaml: &str) -> ProcessorSpec {
    let mut node = Node::parse(yaml).unwrap();
    let mut errors = Vec::new();
    node.substitute(&|_| None, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    ProcessorSpec {
        name: "payments".to_string(),
        kind: "payment-authorizer".to_string(),
        config: Some(node),
        path: "processors.payments".to_string(),
        pos: Pos { line: 1, column: 1 },
    }
}

fn build(yaml: &str) -> Result<Arc<dyn PaymentGateway>, BuildError> {
    GatewayConfig::from_spec(&spec(yaml))
}

fn build_error(yaml: &str) -> BuildError {
    build(yaml).expect_err("the config should not build")
}

#[test]
fn config_defaults_to_the_simulated_gateway() {
    let no_block = ProcessorSpec {
        config: None,
        ..spec("{}")
    };
    let gateway = GatewayConfig::from_spec(&no_block).unwrap();
    assert!(
        format!("{gateway:?}").contains("SimulatedGateway"),
        "{gateway:?}"
    );
    let gateway =
        build("gateway: ${PAYMENT_GATEWAY:-simulated}\nurl: ${PAYMENT_GATEWAY_URL:-}\n").unwrap();
    let debug = format!("{gateway:?}");
    assert!(debug.contains("decline_over: 100000000"), "{debug}");
}

#[test]
fn config_reads_every_simulated_setting() {
    let gateway = build(
        "gateway: simulated\ndecline_over: 5000\ndecline_buyers: [mallory, 42]\ndecline_ratio: 0.25\nlatency: 20ms\n",
    )
    .unwrap();
    let debug = format!("{gateway:?}");
    for part in [
        "decline_over: 5000",
        "\"42\"",
        "\"mallory\"",
        "decline_ratio: 0.25",
        "latency: 20ms",
    ] {
        assert!(debug.contains(part), "{part} in {debug}");
    }
    // A comma-separated string, as an environment variable gives it.
    let gateway = build("decline_buyers: ${BLOCKED:-mallory, trudy}\n").unwrap();
    let debug = format!("{gateway:?}");
    assert!(debug.contains(r#"{"mallory", "trudy"}"#), "{debug}");
}

#[test]
fn config_reads_every_http_setting() {
    let gateway = build(
        "gateway: http\nurl: https://pay.example.com/v1/\nauthorization: Bearer abc\ntimeout: 250ms\ninitial_backoff: 20ms\nmax_backoff: 2s\nmax_attempts: 7\n",
    )
    .unwrap();
    let debug = format!("{gateway:?}");
    for part in [
        "https://pay.example.com/v1/",
        "timeout: 250ms",
        "initial_backoff: 20ms",
        "max_backoff: 2s",
        "max_attempts: Some(7)",
        "<redacted>",
    ] {
        assert!(debug.contains(part), "{part} in {debug}");
    }
    assert!(!debug.contains("abc"), "{debug}");
    let defaults = format!(
        "{:?}",
        build("gateway: http\nurl: http://127.0.0.1:9\n").unwrap()
    );
    for part in [
        "timeout: 5s",
        "initial_backoff: 100ms",
        "max_backoff: 5s",
        "max_attempts: None",
        "authorization: None",
    ] {
        assert!(defaults.contains(part), "{part} in {defaults}");
    }
}

#[test]
fn config_http_without_url_names_the_url() {
    for yaml in [
        "gateway: http\n",
        "gateway: http\nurl:\n",
        "gateway: http\nurl: \"\"\n",
        "gateway: http\nurl: ${PAYMENT_GATEWAY_URL:-}\n",
    ] {
        let error = build_error(yaml);
        assert_eq!(error.path, "processors.payments.config.url", "{yaml}");
        assert!(error.message.contains("url is empty or missing"), "{error}");
    }
    let error = build_error("gateway: http\nurl: ftp://pay.example.com\n");
    assert_eq!(error.path, "processors.payments.config.url");
    assert_eq!(error.pos, Some(Pos { line: 2, column: 6 }));
    assert!(error.message.contains("http:// or https://"), "{error}");
    let error = build_error("gateway: http\nurl: not a url\n");
    assert_eq!(error.path, "processors.payments.config.url");
}

#[test]
fn config_unknown_gateway_names_the_field() {
    let error = build_error("gateway: paypal\n");
    assert_eq!(error.path, "processors.payments.config.gateway");
    assert_eq!(
        error.pos,
        Some(Pos {
            line: 1,
            column: 10
        })
    );
    assert!(error.message.contains("paypal"), "{error}");
    assert!(error.message.contains("simulated"), "{error}");
}

#[test]
fn config_unknown_field_names_the_field() {
    let error = build_error("gateway: http\nurl: http://x\nretries: 3\n");
    assert_eq!(error.path, "processors.payments.config.retries");
    assert_eq!(error.pos, Some(Pos { line: 3, column: 1 }));
    assert!(error.message.contains("unknown field `retries`"), "{error}");
}

#[test]
fn config_bad_values_name_the_field() {
    let cases = [
        ("timeout: soon\n", "timeout", "invalid duration"),
        (
            "gateway: http\nurl: http://x\ntimeout: 0ms\n",
            "timeout",
            "more than 0",
        ),
        (
            "gateway: http\nurl: http://x\ninitial_backoff: 0s\n",
            "initial_backoff",
            "more than 0",
        ),
        (
            "gateway: http\nurl: http://x\ninitial_backoff: 2s\nmax_backoff: 1s\n",
            "max_backoff",
            "less than initial_backoff 2s",
        ),
        (
            "gateway: http\nurl: http://x\nmax_attempts: 0\n",
            "max_attempts",
            "at least 1",
        ),
        ("max_attempts: -2\n", "max_attempts", "invalid value"),
        (
            "gateway: http\nurl: http://x\nauthorization: \"a\\nb\"\n",
            "authorization",
            "header value",
        ),
        (
            "decline_ratio: 1.5\n",
            "decline_ratio",
            "between 0.0 and 1.0",
        ),
        ("decline_over: -3\n", "decline_over", "0 or more"),
        ("decline_over: lots\n", "decline_over", "invalid type"),
    ];
    for (yaml, field, words) in cases {
        let error = build_error(yaml);
        assert_eq!(
            error.path,
            format!("processors.payments.config.{field}"),
            "{yaml}"
        );
        assert!(error.message.contains(words), "{yaml}: {error}");
        assert!(error.pos.is_some(), "{yaml}");
    }
}

#[test]
fn config_error_without_a_spec() {
    let config = GatewayConfig {
        gateway: Some(orderflow_pipelines::payment_gateway::GatewayKind::Http),
        ..Default::default()
    };
    let error = config.build().unwrap_err();
    assert_eq!(error.field, "url");
    assert!(error.to_string().starts_with("url: "), "{error}");
}
