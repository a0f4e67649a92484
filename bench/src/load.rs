//! The jobs' input records, generated deterministically from a seed index and
//! framed with the registry's schema ids: the users, order events, order commands,
//! payment results and registrations every engine (ours and the peers) reads.

use orderflow_pipelines::ids::derived_uuid;
use orderflow_pipelines::order_saga::payment_id_for;
use orderflow_pipelines::records::{
    AuthCommand, OrderCommand, OrderEvent, OrderItem, OrderStatus, PaymentOutcome, PaymentResult,
    PlaceOrder, RegisterUser, Role, User, UserStatus, topics,
};
use orderflow_runtime::wire::TopicSerde;

/// A fixed credential hash: the user-cache stores it and never checks it.
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$YmVuY2hzYWx0YmVuY2g$0aR5L4i1y0b8n1J0m7o9Q2Qd0pUqJYcM3vYb8lE1T8U";

/// How many buyers and sellers the saga's orders are spread over.
pub const BUYERS: usize = 1000;
/// See [`BUYERS`].
pub const SELLERS: usize = 100;

fn buyer_id(i: usize) -> String {
    derived_uuid("bench.buyer.v1", &[&(i % BUYERS).to_string()])
}

fn seller_id(i: usize) -> String {
    derived_uuid("bench.seller.v1", &[&(i % SELLERS).to_string()])
}

fn order_id(set: &str, i: usize) -> String {
    derived_uuid("bench.order.v1", &[set, &i.to_string()])
}

fn items(i: usize) -> Vec<OrderItem> {
    vec![
        OrderItem {
            product_id: format!("p-{}", i % 997),
            quantity: 1 + (i % 3) as i32,
            unit_price: 1250 + (i % 50) as i64,
        },
        OrderItem {
            product_id: format!("p-{}", (i * 7) % 997),
            quantity: 1,
            unit_price: 399,
        },
    ]
}

fn total(items: &[OrderItem]) -> i64 {
    items
        .iter()
        .map(|it| i64::from(it.quantity) * it.unit_price)
        .sum()
}

fn encode<T: orderflow_runtime::avro::AvroRecord>(
    serde: &TopicSerde,
    topic: &str,
    record: &T,
) -> Vec<u8> {
    serde
        .encode(topic, record)
        .unwrap_or_else(|e| panic!("the bench's own {topic} record does not fit its schema: {e}"))
}

/// The buyers and sellers of the saga's orders, for `auth.users`.
pub fn users(serde: &TopicSerde, now: i64) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    let buyers = (0..BUYERS).map(|i| (buyer_id(i), Role::Buyer, i));
    let sellers = (0..SELLERS).map(|i| (seller_id(i), Role::Seller, i));
    buyers.chain(sellers).map(move |(id, role, i)| {
        let user = User {
            id: id.clone(),
            email: format!(
                "{}{i}@bench.example",
                if role == Role::Buyer {
                    "buyer"
                } else {
                    "seller"
                }
            ),
            role,
            display_name: format!("Bench {role:?} {i}"),
            status: UserStatus::Active,
            created_at: now,
            updated_at: now,
            password_hash: HASH.to_string(),
        };
        let value = encode(serde, topics::AUTH_USERS, &user);
        (id, value)
    })
}

/// B0/B1's input: `n` order events, exactly every second one PAID.
pub fn order_events(
    serde: &TopicSerde,
    n: usize,
    now: i64,
) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    (0..n).map(move |i| {
        let id = order_id("events", i);
        let items = items(i);
        let paid = i % 2 == 0;
        let event = OrderEvent {
            order_id: id.clone(),
            buyer_id: buyer_id(i),
            seller_id: seller_id(i),
            status: if paid {
                OrderStatus::Paid
            } else {
                OrderStatus::Ordered
            },
            total: total(&items),
            currency: "EUR".to_string(),
            reason: None,
            version: if paid { 2 } else { 1 },
            at: now,
            items,
            request_id: Some(derived_uuid(
                "bench.request.v1",
                &["events", &i.to_string()],
            )),
        };
        let value = encode(serde, topics::ORDERS_EVENTS, &event);
        (id, value)
    })
}

/// How many of [`order_events`]`(n)` are PAID.
pub fn paid_events(n: usize) -> usize {
    n.div_ceil(2)
}

/// B3's orders: `n` valid PlaceOrder commands over [`users`].
pub fn place_orders(
    serde: &TopicSerde,
    n: usize,
    now: i64,
) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    (0..n).map(move |i| {
        let id = order_id("saga", i);
        let command = OrderCommand::PlaceOrder(PlaceOrder {
            request_id: derived_uuid("bench.request.v1", &["saga", &i.to_string()]),
            order_id: id.clone(),
            buyer_id: buyer_id(i),
            seller_id: seller_id(i),
            items: items(i),
            currency: "EUR".to_string(),
            placed_at: now,
        });
        let value = encode(serde, topics::ORDERS_COMMANDS, &command);
        (id, value)
    })
}

/// B3's payment answers: one APPROVED result with the right payment id per order of
/// [`place_orders`].
pub fn approvals(
    serde: &TopicSerde,
    n: usize,
    now: i64,
) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    (0..n).map(move |i| {
        let id = order_id("saga", i);
        let result = PaymentResult {
            payment_id: payment_id_for(&id),
            order_id: id.clone(),
            outcome: PaymentOutcome::Approved,
            reason: None,
            at: now,
            amount: Some(total(&items(i))),
            currency: Some("EUR".to_string()),
        };
        let value = encode(serde, topics::PAYMENTS_RESULTS, &result);
        (id, value)
    })
}

/// B2's input: `n` registrations of distinct emails, keyed by email.
pub fn registrations(
    serde: &TopicSerde,
    n: usize,
    from: usize,
) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    (from..from + n).map(move |i| {
        let email = format!("user{i}@bench.example");
        let command = AuthCommand::RegisterUser(RegisterUser {
            request_id: derived_uuid("bench.request.v1", &["users", &i.to_string()]),
            email: email.clone(),
            password_hash: HASH.to_string(),
            role: if i % 10 == 0 {
                Role::Seller
            } else {
                Role::Buyer
            },
            display_name: format!("Bench user {i}"),
        });
        let value = encode(serde, topics::AUTH_COMMANDS, &command);
        (email, value)
    })
}
