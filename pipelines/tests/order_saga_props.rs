#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property test of the order saga through the real topology.yaml: random
//! interleavings, over a few orders, of placements (valid and invalid), repeated
//! commands, cancels (by the buyer and by someone else), payment results from a fake
//! authorizer answering the saga's requests late, out of order and more than once,
//! wall-clock advances past the payment timeout, and crashes. Checked on what the saga
//! wrote:
//!
//! - at most one terminal event per order (CANCELLED, REJECTED, REFUNDED), nothing
//!   after it, and nothing but REFUNDED after PAID;
//! - never PAID without an APPROVED result for the order piped before;
//! - at most one `PaymentRequested` per order (never two charges), after its ORDERED,
//!   for its total;
//! - a `RefundRequested` only after the order was PAID, or after an APPROVED arrived
//!   for a cancelled order, and at most one per order; REFUNDED only after its refund
//!   was requested and answered;
//! - versions 1, 2, 3, … with no gaps, and the order's fields the same in each event;
//! - no result of an honest gateway is ever dead-lettered;
//! - once everything is answered and the timeout has passed, every placed order is
//!   PAID or terminal, and its stored state matches its last event.
//!
//! `PROPTEST_CASES` sets the number of cases (default 128, a few seconds).

use std::collections::BTreeMap;
#[path = "common/saga_topology.rs"]
mod saga_topology;

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use orderflow_pipelines::order_saga::{
    Charge, ORDERS_STORE, OrderState, PAYMENT_TIMEOUT_TIMER, Phase, payment_id_for, reasons,
};
use orderflow_pipelines::records::{
    CancelOrder, OrderCommand, OrderEvent, OrderItem, OrderStatus, PaymentCommand, PaymentOutcome,
    PaymentResult, PlaceOrder, Role, User, UserStatus, topics,
};
use orderflow_runtime::TestDriver;
use orderflow_runtime::driver::dlq_headers;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use saga_topology::saga_driver;

const SAGA: &str = "order-saga";
const ORDERS: [&str; 3] = ["o1", "o2", "o3"];
const BUYER: &str = "buyer-1";
const SELLER: &str = "seller-1";

/// What a placement looks like.
#[derive(Debug, Clone, Copy)]
enum PlaceKind {
    Valid,
    UnknownBuyer,
    NoItems,
    UnknownCurrency,
    TotalOverflow,
}

/// One step of a run.
#[derive(Debug, Clone)]
enum Action {
    /// Place an order with request id `<order>-p<request>`.
    Place {
        order: usize,
        request: u8,
        kind: PlaceKind,
    },
    /// Cancel an order with request id `<order>-c<request>`, by its buyer or not.
    Cancel {
        order: usize,
        request: u8,
        by_buyer: bool,
    },
    /// Pipe an earlier command again (index modulo how many there were).
    RepeatCommand(usize),
    /// The authorizer answers one outstanding request (index modulo how many).
    /// `approve` decides a charge the first time the authorizer sees it.
    Answer { pick: usize, approve: bool },
    /// Pipe an earlier result again.
    RepeatResult(usize),
    /// Move the wall clock on.
    Advance(Duration),
    /// Crash and restore every task.
    Restart,
}

fn action() -> impl Strategy<Value = Action> {
    let order = 0..ORDERS.len();
    let kind = prop_oneof![
        6 => Just(PlaceKind::Valid),
        1 => Just(PlaceKind::UnknownBuyer),
        1 => Just(PlaceKind::NoItems),
        1 => Just(PlaceKind::UnknownCurrency),
        1 => Just(PlaceKind::TotalOverflow),
    ];
    let delay = prop_oneof![
        (0_u64..5_000).prop_map(Duration::from_millis),
        (25_000_u64..45_000).prop_map(Duration::from_millis),
    ];
    prop_oneof![
        4 => (order.clone(), 0_u8..2, kind)
            .prop_map(|(order, request, kind)| Action::Place { order, request, kind }),
        2 => (order, 0_u8..3, prop::bool::weighted(0.8))
            .prop_map(|(order, request, by_buyer)| Action::Cancel { order, request, by_buyer }),
        2 => any::<usize>().prop_map(Action::RepeatCommand),
        6 => (any::<usize>(), any::<bool>())
            .prop_map(|(pick, approve)| Action::Answer { pick, approve }),
        2 => any::<usize>().prop_map(Action::RepeatResult),
        3 => delay.prop_map(Action::Advance),
        1 => Just(Action::Restart),
    ]
}

fn user(id: &str, role: Role) -> User {
    User {
        id: id.to_string(),
        email: format!("{id}@example.com"),
        role,
        display_name: id.to_string(),
        status: UserStatus::Active,
        created_at: 0,
        updated_at: 0,
        password_hash: String::new(),
    }
}

fn place_command(order_id: &str, request: u8, kind: PlaceKind) -> OrderCommand {
    let mut items = vec![
        OrderItem {
            product_id: "p-1".to_string(),
            quantity: 2,
            unit_price: 1_500,
        },
        OrderItem {
            product_id: "p-2".to_string(),
            quantity: 1,
            unit_price: 999,
        },
    ];
    let mut buyer = BUYER;
    let mut currency = "EUR";
    match kind {
        PlaceKind::Valid => {}
        PlaceKind::UnknownBuyer => buyer = "nobody",
        PlaceKind::NoItems => items.clear(),
        PlaceKind::UnknownCurrency => currency = "XXX",
        PlaceKind::TotalOverflow => items[0].unit_price = i64::MAX,
    }
    OrderCommand::PlaceOrder(PlaceOrder {
        request_id: format!("{order_id}-p{request}"),
        order_id: order_id.to_string(),
        buyer_id: buyer.to_string(),
        seller_id: SELLER.to_string(),
        items,
        currency: currency.to_string(),
        placed_at: 0,
    })
}

/// What happened, in the order it happened.
#[derive(Debug, Clone)]
enum Seen {
    /// A result piped in.
    Result(PaymentResult),
    /// An event the saga wrote.
    Event(OrderEvent),
    /// A request the saga wrote.
    Request(PaymentCommand),
}

/// The driver, a fake payment authorizer, and the log of what happened.
struct Run {
    driver: TestDriver,
    commands: Vec<(String, OrderCommand)>,
    results: Vec<PaymentResult>,
    /// Requests the authorizer has not answered yet.
    outstanding: Vec<PaymentCommand>,
    /// The authorizer's decision for each charge: it answers a payment id alike every
    /// time, as a gateway with an idempotency key does.
    decisions: BTreeMap<String, PaymentOutcome>,
    timeline: Vec<Seen>,
}

impl Run {
    fn new() -> Result<Self> {
        // The real topology without its payment authorizer: this test plays it.
        let mut driver = saga_driver(&std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../topology.yaml"
        ))?)?;
        for u in [user(BUYER, Role::Buyer), user(SELLER, Role::Seller)] {
            driver.pipe(topics::AUTH_USERS, &u.id.clone(), &u)?;
        }
        Ok(Run {
            driver,
            commands: Vec::new(),
            results: Vec::new(),
            outstanding: Vec::new(),
            decisions: BTreeMap::new(),
            timeline: Vec::new(),
        })
    }

    fn timeout(&self) -> Duration {
        self.driver.topology().processors[SAGA].timers[PAYMENT_TIMEOUT_TIMER].after
    }

    /// Moves what the saga wrote into the timeline and the authorizer's inbox.
    fn collect(&mut self) -> Result<()> {
        for r in self
            .driver
            .read_output::<OrderEvent>(topics::ORDERS_EVENTS)?
        {
            let event = r.value.context("tombstone on orders.events")?;
            ensure!(
                r.key == event.order_id,
                "event keyed {:?}: {event:?}",
                r.key
            );
            self.timeline.push(Seen::Event(event));
        }
        for r in self
            .driver
            .read_output::<PaymentCommand>(topics::PAYMENTS_REQUESTS)?
        {
            let request = r.value.context("tombstone on payments.requests")?;
            self.outstanding.push(request.clone());
            self.timeline.push(Seen::Request(request));
        }
        Ok(())
    }

    fn command(&mut self, command: OrderCommand) -> Result<()> {
        let key = match &command {
            OrderCommand::PlaceOrder(c) => c.order_id.clone(),
            OrderCommand::CancelOrder(c) => c.order_id.clone(),
        };
        self.driver.pipe(topics::ORDERS_COMMANDS, &key, &command)?;
        self.commands.push((key, command));
        self.collect()
    }

    fn result(&mut self, result: PaymentResult) -> Result<()> {
        self.timeline.push(Seen::Result(result.clone()));
        self.driver
            .pipe(topics::PAYMENTS_RESULTS, &result.order_id.clone(), &result)?;
        self.results.push(result);
        self.collect()
    }

    /// The authorizer answers one outstanding request.
    fn answer(&mut self, pick: usize, approve: bool) -> Result<()> {
        if self.outstanding.is_empty() {
            return Ok(());
        }
        let request = self.outstanding.remove(pick % self.outstanding.len());
        let (payment_id, order_id, outcome) = match &request {
            PaymentCommand::PaymentRequested(p) => {
                let outcome = *self
                    .decisions
                    .entry(p.payment_id.clone())
                    .or_insert(if approve {
                        PaymentOutcome::Approved
                    } else {
                        PaymentOutcome::Declined
                    });
                (&p.payment_id, &p.order_id, outcome)
            }
            PaymentCommand::RefundRequested(r) => {
                (&r.payment_id, &r.order_id, PaymentOutcome::Refunded)
            }
        };
        let result = PaymentResult {
            payment_id: payment_id.clone(),
            order_id: order_id.clone(),
            outcome,
            reason: None,
            at: self.driver.wall_time(),
            amount: None,
            currency: None,
        };
        self.result(result)
    }

    fn step(&mut self, action: &Action) -> Result<()> {
        match action {
            Action::Place {
                order,
                request,
                kind,
            } => self.command(place_command(ORDERS[*order], *request, *kind)),
            Action::Cancel {
                order,
                request,
                by_buyer,
            } => {
                let order_id = ORDERS[*order];
                self.command(OrderCommand::CancelOrder(CancelOrder {
                    request_id: format!("{order_id}-c{request}"),
                    order_id: order_id.to_string(),
                    requested_by: if *by_buyer { BUYER } else { SELLER }.to_string(),
                    reason: None,
                }))
            }
            Action::RepeatCommand(i) => {
                if self.commands.is_empty() {
                    return Ok(());
                }
                let (key, command) = self.commands[i % self.commands.len()].clone();
                self.driver.pipe(topics::ORDERS_COMMANDS, &key, &command)?;
                self.collect()
            }
            Action::Answer { pick, approve } => self.answer(*pick, *approve),
            Action::RepeatResult(i) => {
                if self.results.is_empty() {
                    return Ok(());
                }
                let result = self.results[i % self.results.len()].clone();
                self.result(result)
            }
            Action::Advance(by) => {
                self.driver.advance_wall_clock(*by)?;
                self.collect()
            }
            Action::Restart => {
                self.driver.restart()?;
                self.collect()
            }
        }
    }

    /// Answers everything and lets every timeout pass, until nothing is left to do.
    fn settle(&mut self, approve: bool) -> Result<()> {
        for _ in 0..10 {
            while !self.outstanding.is_empty() {
                self.answer(0, approve)?;
            }
            self.driver.advance_wall_clock(self.timeout())?;
            self.collect()?;
            if self.outstanding.is_empty() && self.driver.pending_timers(SAGA) == 0 {
                return Ok(());
            }
        }
        bail!(
            "the saga did not settle: {} requests outstanding, {} timers pending",
            self.outstanding.len(),
            self.driver.pending_timers(SAGA)
        )
    }
}

fn is_terminal(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::Cancelled | OrderStatus::Rejected | OrderStatus::Refunded
    )
}

/// What the timeline has shown of one order so far.
#[derive(Debug, Default)]
struct OrderSeen {
    first: Option<OrderEvent>,
    last: Option<OrderEvent>,
    approved: bool,
    refunded_result: bool,
    paid: bool,
    cancelled: bool,
    charges: usize,
    refunds: usize,
}

/// Checks the invariants of the module docs over the whole timeline; returns each
/// order's last event.
fn check_timeline(timeline: &[Seen]) -> Result<BTreeMap<String, OrderEvent>> {
    let mut orders: BTreeMap<String, OrderSeen> = BTreeMap::new();
    for (at, seen) in timeline.iter().enumerate() {
        match seen {
            Seen::Result(r) => {
                let o = orders.entry(r.order_id.clone()).or_default();
                match r.outcome {
                    PaymentOutcome::Approved => o.approved = true,
                    PaymentOutcome::Refunded => o.refunded_result = true,
                    PaymentOutcome::Declined => {}
                }
            }
            Seen::Event(e) => {
                let o = orders.entry(e.order_id.clone()).or_default();
                let previous = o.last.as_ref();
                let version = previous.map_or(0, |p| p.version);
                ensure!(
                    e.version == version + 1,
                    "#{at}: version {} after {version}: {e:?}",
                    e.version
                );
                if let Some(p) = previous {
                    ensure!(
                        !is_terminal(p.status),
                        "#{at}: {e:?} after the terminal {p:?}"
                    );
                    ensure!(
                        p.status != OrderStatus::Paid || e.status == OrderStatus::Refunded,
                        "#{at}: {:?} after PAID",
                        e.status
                    );
                }
                if let Some(f) = &o.first {
                    ensure!(
                        (&e.buyer_id, &e.seller_id, e.total, &e.currency, &e.items)
                            == (&f.buyer_id, &f.seller_id, f.total, &f.currency, &f.items),
                        "#{at}: the order's fields changed: {f:?} then {e:?}"
                    );
                } else {
                    ensure!(
                        matches!(e.status, OrderStatus::Ordered | OrderStatus::Rejected),
                        "#{at}: an order starts ORDERED or REJECTED: {e:?}"
                    );
                    o.first = Some(e.clone());
                }
                match e.status {
                    OrderStatus::Paid => {
                        ensure!(o.approved, "#{at}: PAID without an APPROVED result: {e:?}");
                        o.paid = true;
                    }
                    OrderStatus::Refunded => ensure!(
                        o.refunds == 1 && o.refunded_result,
                        "#{at}: REFUNDED without a refund requested and answered: {e:?}"
                    ),
                    OrderStatus::Cancelled => o.cancelled = true,
                    OrderStatus::Ordered | OrderStatus::Rejected => {}
                }
                o.last = Some(e.clone());
            }
            Seen::Request(PaymentCommand::PaymentRequested(p)) => {
                let o = orders.entry(p.order_id.clone()).or_default();
                o.charges += 1;
                ensure!(o.charges == 1, "#{at}: a second charge: {p:?}");
                let first = o.first.as_ref().context("a charge before any event")?;
                ensure!(
                    first.status == OrderStatus::Ordered && first.total == p.amount,
                    "#{at}: charge {p:?} for {first:?}"
                );
                ensure!(p.payment_id == payment_id_for(&p.order_id));
            }
            Seen::Request(PaymentCommand::RefundRequested(r)) => {
                let o = orders.entry(r.order_id.clone()).or_default();
                o.refunds += 1;
                ensure!(o.refunds == 1, "#{at}: a second refund: {r:?}");
                ensure!(
                    o.paid || (o.approved && o.cancelled),
                    "#{at}: a refund of an order neither PAID nor approved after its cancel: {r:?}"
                );
                if !o.paid {
                    ensure!(r.reason.as_deref() == Some(reasons::LATE_APPROVAL));
                }
                ensure!(r.payment_id == payment_id_for(&r.order_id));
            }
        }
    }
    Ok(orders
        .into_iter()
        .filter_map(|(id, o)| o.last.map(|last| (id, last)))
        .collect())
}

fn run(actions: &[Action], approve_at_the_end: bool) -> Result<()> {
    let mut run = Run::new()?;
    for action in actions {
        run.step(action)
            .with_context(|| format!("during {action:?}"))?;
    }
    run.settle(approve_at_the_end)?;
    let last = check_timeline(&run.timeline)?;

    for (order_id, event) in &last {
        ensure!(
            event.status == OrderStatus::Paid || is_terminal(event.status),
            "order {order_id} ends {:?}",
            event.status
        );
        let state = run
            .driver
            .store(ORDERS_STORE)
            .get::<OrderState>(order_id)?
            .with_context(|| format!("order {order_id} has events but no state"))?;
        ensure!(
            (state.status(), state.version) == (event.status, event.version),
            "order {order_id}: stored {state:?}, last event {event:?}"
        );
        ensure!(
            !matches!(
                state.phase,
                Phase::AwaitingPayment
                    | Phase::RefundPending
                    | Phase::Cancelled(Charge::RefundRequested)
            ),
            "order {order_id} still waits for an answer after everything was answered: {state:?}"
        );
    }
    ensure!(
        run.driver.store(ORDERS_STORE).len() == last.len(),
        "every stored order has events"
    );
    for dead in run.driver.dead_letters(SAGA)? {
        ensure!(
            dead.header(dlq_headers::SOURCE_TOPIC) == Some(topics::ORDERS_COMMANDS),
            "an honest gateway's result was dead-lettered: {:?}",
            dead.header(dlq_headers::ERROR)
        );
    }
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs for the default to find: keep failing cases
        // next to this file, as `order_saga_props.regressions`.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_saga_keeps_its_invariants(
        actions in prop::collection::vec(action(), 1..80),
        approve_at_the_end in any::<bool>(),
    ) {
        run(&actions, approve_at_the_end).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    }
}

/// A fixed run through the paths the random ones should hit, so a broken harness
/// cannot pass by never reaching them.
#[test]
fn the_harness_reaches_every_path() -> Result<()> {
    let mut run = Run::new()?;
    let actions = [
        // o1: paid, cancelled, refunded.
        Action::Place {
            order: 0,
            request: 0,
            kind: PlaceKind::Valid,
        },
        Action::Answer {
            pick: 0,
            approve: true,
        },
        Action::Cancel {
            order: 0,
            request: 0,
            by_buyer: true,
        },
        Action::RepeatCommand(0),
        // o2: timed out, then approved late and refunded.
        Action::Place {
            order: 1,
            request: 0,
            kind: PlaceKind::Valid,
        },
        Action::Advance(run.timeout()),
        Action::Restart,
        // o3: rejected; a cancel by someone else is a dead letter.
        Action::Place {
            order: 2,
            request: 0,
            kind: PlaceKind::TotalOverflow,
        },
        Action::Cancel {
            order: 2,
            request: 0,
            by_buyer: false,
        },
    ];
    for action in &actions {
        run.step(action)?;
    }
    run.settle(true)?;
    let last = check_timeline(&run.timeline)?;
    let statuses: Vec<(&str, OrderStatus)> =
        last.iter().map(|(k, e)| (k.as_str(), e.status)).collect();
    assert_eq!(
        statuses,
        [
            ("o1", OrderStatus::Refunded),
            ("o2", OrderStatus::Cancelled),
            ("o3", OrderStatus::Rejected)
        ]
    );
    let refunds = run
        .timeline
        .iter()
        .filter(|s| matches!(s, Seen::Request(PaymentCommand::RefundRequested(_))))
        .count();
    assert_eq!(refunds, 2, "o1's and o2's late one");
    assert_eq!(run.driver.dead_letters(SAGA)?.len(), 1);
    assert_eq!(
        run.driver
            .store(ORDERS_STORE)
            .get::<OrderState>("o2")?
            .map(|s| s.phase),
        Some(Phase::Cancelled(Charge::Refunded))
    );
    // And the checker itself refuses a broken timeline.
    let mut broken = run.timeline.clone();
    let paid = broken
        .iter()
        .position(|s| matches!(s, Seen::Event(e) if e.status == OrderStatus::Paid))
        .unwrap();
    broken.retain(|s| !matches!(s, Seen::Result(r) if r.outcome == PaymentOutcome::Approved && r.order_id == "o1"));
    assert!(paid > 0 && check_timeline(&broken).is_err());
    Ok(())
}
