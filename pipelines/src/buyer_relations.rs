//! The buyer-relations processor: every PAID `OrderEvent` on `orders.events` becomes a
//! `BuyerSeller` record on the compacted `auth.relations`, keyed
//! `<buyerId>:<sellerId>`, which is what lets a seller see a buyer's record.
//!
//! It is stateless on purpose. `orders.events` is keyed by order id, so two orders of
//! the same buyer and seller may sit on different partitions: remembering "the first
//! paid order" of a pair would need a store keyed by the pair, and so a repartition
//! by that key, which DESIGN.md rules out. Instead each PAID event (re)writes the
//! pair's key, and compaction keeps the latest. Consumers must therefore read
//! `auth.relations` as a *set* of relations: the presence of a key is the fact, and
//! `first_paid_order_id`/`since` name *a* paid order that established it (the first
//! one while the pair has one order; with several, the latest paid one wins
//! compaction). A replayed PAID event writes the very same record again, so replays
//! are harmless. A later CANCELLED, REFUNDED or REJECTED event leaves the relation in
//! place: the buyer did buy from that seller, and nothing ever writes a tombstone.

use orderflow_runtime::processor::{BuildError, ProcessorSpec};
use orderflow_runtime::{Context, ProcessError, Processor, Record};
use serde::Deserialize;

use crate::records::{BuyerSeller, OrderEvent, OrderStatus, topics};

/// The `config:` block of a `buyer-relations` processor: it takes no settings, and a
/// misspelt one is an error rather than silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuyerRelationsConfig {}

/// Turns PAID order events into buyer→seller relations. See the module docs.
#[derive(Debug, Default)]
pub struct BuyerRelations;

impl BuyerRelations {
    /// The builder registered in the catalog under `buyer-relations`.
    pub fn build(spec: &ProcessorSpec) -> Result<Box<dyn Processor>, BuildError> {
        let BuyerRelationsConfig {} = spec.config()?;
        Ok(Box::new(BuyerRelations))
    }
}

/// The key of a relation on `auth.relations`: `<buyerId>:<sellerId>`. The HTTP edge
/// looks a pair up with the same function.
pub fn relation_key(buyer_id: &str, seller_id: &str) -> String {
    format!("{buyer_id}:{seller_id}")
}

/// A user id that can stand on either side of the `:` of a relation key.
fn check_id(field: &str, id: &str, order_id: &str) -> Result<(), ProcessError> {
    if id.is_empty() || id.contains(':') {
        return Err(ProcessError::invalid(format!(
            "PAID event of order {order_id:?}: {field} {id:?} cannot be part of a relation key (empty or contains ':')"
        )));
    }
    Ok(())
}

impl Processor for BuyerRelations {
    fn process(&mut self, record: &Record, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let event: OrderEvent = record.value()?;
        if event.status != OrderStatus::Paid {
            return Ok(());
        }
        check_id("buyer_id", &event.buyer_id, &event.order_id)?;
        check_id("seller_id", &event.seller_id, &event.order_id)?;
        let key = relation_key(&event.buyer_id, &event.seller_id);
        let relation = BuyerSeller {
            buyer_id: event.buyer_id,
            seller_id: event.seller_id,
            first_paid_order_id: event.order_id,
            since: event.at,
        };
        ctx.forward(topics::AUTH_RELATIONS, &key, &relation)
    }
}
