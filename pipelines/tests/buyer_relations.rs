//! The buyer-relations processor through the real topology.yaml: PAID order events
//! become buyer→seller relations, every other status is ignored, and an id that
//! cannot be part of a relation key is a dead letter.

use anyhow::{Context as _, Result};
use orderflow_pipelines::buyer_relations::relation_key;
use orderflow_pipelines::catalog;
use orderflow_pipelines::records::{BuyerSeller, OrderEvent, OrderStatus, topics};
use orderflow_runtime::TestDriver;
use orderflow_runtime::driver::dlq_headers;

fn driver() -> Result<TestDriver> {
    Ok(TestDriver::from_file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../topology.yaml"),
        &catalog(),
    )?)
}

fn event(
    order_id: &str,
    buyer_id: &str,
    seller_id: &str,
    status: OrderStatus,
    version: i64,
    at: i64,
) -> OrderEvent {
    OrderEvent {
        order_id: order_id.to_string(),
        buyer_id: buyer_id.to_string(),
        seller_id: seller_id.to_string(),
        status,
        total: 4_200,
        currency: "EUR".to_string(),
        reason: None,
        version,
        at,
        items: Vec::new(),
        request_id: None,
    }
}

fn relations(driver: &mut TestDriver) -> Result<Vec<(String, BuyerSeller)>> {
    driver
        .read_output::<BuyerSeller>(topics::AUTH_RELATIONS)?
        .into_iter()
        .map(|r| Ok((r.key, r.value.context("a relation is never a tombstone")?)))
        .collect()
}

#[test]
fn a_paid_event_becomes_a_relation_keyed_buyer_and_seller() -> Result<()> {
    let mut driver = driver()?;
    driver.pipe(
        topics::ORDERS_EVENTS,
        "o1",
        &event("o1", "b1", "s1", OrderStatus::Ordered, 1, 1_000),
    )?;
    driver.pipe(
        topics::ORDERS_EVENTS,
        "o1",
        &event("o1", "b1", "s1", OrderStatus::Paid, 2, 2_000),
    )?;

    let out = relations(&mut driver)?;
    assert_eq!(
        out,
        [(
            "b1:s1".to_string(),
            BuyerSeller {
                buyer_id: "b1".to_string(),
                seller_id: "s1".to_string(),
                first_paid_order_id: "o1".to_string(),
                since: 2_000,
            }
        )]
    );
    assert_eq!(relation_key("b1", "s1"), "b1:s1");
    Ok(())
}

#[test]
fn other_statuses_produce_nothing() -> Result<()> {
    let mut driver = driver()?;
    for (version, status) in [
        OrderStatus::Ordered,
        OrderStatus::Cancelled,
        OrderStatus::Refunded,
        OrderStatus::Rejected,
    ]
    .into_iter()
    .enumerate()
    {
        driver.pipe(
            topics::ORDERS_EVENTS,
            "o1",
            &event("o1", "b1", "s1", status, version as i64 + 1, 1_000),
        )?;
    }
    assert!(relations(&mut driver)?.is_empty());
    // A refund after the payment does not take the relation back: nothing is written.
    driver.pipe(
        topics::ORDERS_EVENTS,
        "o2",
        &event("o2", "b1", "s1", OrderStatus::Paid, 2, 2_000),
    )?;
    driver.pipe(
        topics::ORDERS_EVENTS,
        "o2",
        &event("o2", "b1", "s1", OrderStatus::Refunded, 3, 3_000),
    )?;
    let out = relations(&mut driver)?;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.first_paid_order_id, "o2");
    assert!(driver.dead_letters("buyer-relations")?.is_empty());
    Ok(())
}

#[test]
fn stateless_relations_are_rewritten_by_later_paid_orders_and_replays() -> Result<()> {
    let mut driver = driver()?;
    let paid = event("o1", "b1", "s1", OrderStatus::Paid, 2, 2_000);
    driver.pipe(topics::ORDERS_EVENTS, "o1", &paid)?;
    // The same event again (a replay): the very same record.
    driver.pipe(topics::ORDERS_EVENTS, "o1", &paid)?;
    // Another paid order of the same pair: the key is written again with that order,
    // and compaction keeps it; readers only care that the key is there.
    driver.pipe(
        topics::ORDERS_EVENTS,
        "o2",
        &event("o2", "b1", "s1", OrderStatus::Paid, 2, 5_000),
    )?;
    // Another seller is another relation.
    driver.pipe(
        topics::ORDERS_EVENTS,
        "o3",
        &event("o3", "b1", "s2", OrderStatus::Paid, 2, 6_000),
    )?;

    let out = relations(&mut driver)?;
    let summary: Vec<(&str, &str, i64)> = out
        .iter()
        .map(|(k, r)| (k.as_str(), r.first_paid_order_id.as_str(), r.since))
        .collect();
    assert_eq!(
        summary,
        [
            ("b1:s1", "o1", 2_000),
            ("b1:s1", "o1", 2_000),
            ("b1:s1", "o2", 5_000),
            ("b1:s2", "o3", 6_000)
        ]
    );
    Ok(())
}

#[test]
fn an_id_that_breaks_the_relation_key_is_a_dead_letter() -> Result<()> {
    let mut driver = driver()?;
    driver.pipe(
        topics::ORDERS_EVENTS,
        "o1",
        &event("o1", "b:1", "s1", OrderStatus::Paid, 2, 2_000),
    )?;
    driver.pipe(
        topics::ORDERS_EVENTS,
        "o2",
        &event("o2", "b1", "", OrderStatus::Paid, 2, 2_000),
    )?;
    // Not PAID: ignored before any check.
    driver.pipe(
        topics::ORDERS_EVENTS,
        "o3",
        &event("o3", "b:1", "s1", OrderStatus::Ordered, 1, 2_000),
    )?;

    assert!(relations(&mut driver)?.is_empty());
    let dead = driver.dead_letters("buyer-relations")?;
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].key, "o1");
    assert_eq!(dead[0].header(dlq_headers::ERROR_KIND), Some("invalid"));
    assert_eq!(
        dead[0].header(dlq_headers::SOURCE_TOPIC),
        Some(topics::ORDERS_EVENTS)
    );
    assert!(
        dead[0]
            .header(dlq_headers::ERROR)
            .is_some_and(|e| e.contains("buyer_id"))
    );
    assert!(
        dead[1]
            .header(dlq_headers::ERROR)
            .is_some_and(|e| e.contains("seller_id"))
    );
    Ok(())
}

#[test]
fn a_config_block_is_refused() -> Result<()> {
    let yaml = r#"
app: test
topics:
  orders.events:
    partitions: 1
    value: schemas/orders.events.avsc
  auth.relations:
    partitions: 1
    cleanup: compact
    value: schemas/auth.relations.avsc
processors:
  buyer-relations:
    kind: buyer-relations
    inputs: [orders.events]
    outputs: [auth.relations]
    config:
      keep_first: true
"#;
    let error = TestDriver::from_yaml(yaml, concat!(env!("CARGO_MANIFEST_DIR"), "/.."), &catalog())
        .err()
        .context("an unknown config field must be refused")?;
    assert!(error.to_string().contains("keep_first"), "{error}");
    Ok(())
}
