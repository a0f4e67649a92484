//! The processor kinds this program knows, by the `kind` name topology.yaml uses: an
//! explicit map, one line per kind.

use orderflow_runtime::Catalog;

use crate::buyer_relations::BuyerRelations;
use crate::chat_fanout::ChatFanout;
use crate::order_saga::OrderSaga;
use crate::payment_authorizer::PaymentAuthorizer;
use crate::user_cache::UserCache;

/// Every processor kind of orderflow.
pub fn catalog() -> Catalog {
    let mut catalog = Catalog::new();
    catalog
        .register("buyer-relations", BuyerRelations::build)
        .register("chat-fanout", ChatFanout::build)
        .register("order-saga", OrderSaga::build)
        .register("payment-authorizer", PaymentAuthorizer::build)
        .register("user-cache", UserCache::build);
    catalog
}
