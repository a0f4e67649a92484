//! Every Avro schema in `schemas/` against the Rust type that carries its topic: each
//! file parses, each file has exactly one Rust type, every record and union branch
//! round-trips through the Avro body unchanged, a Rust field that drifts from the
//! schema is caught, and union branches are chosen by record name.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use apache_avro::Schema;
use apache_avro::types::Value;
use orderflow_pipelines::records::*;
use orderflow_runtime::avro::{AvroRecord, read_body, schema_name, write_body};
use serde::{Deserialize, Serialize};

/// The Rust type that carries each topic, and the check that exercises it with sample
/// values. A schema file without a row here fails `every_schema_file_has_one_rust_type`.
struct Carrier {
    topic: &'static str,
    rust_type: &'static str,
    check: fn(&Schema) -> Result<()>,
}

const CARRIERS: &[Carrier] = &[
    Carrier {
        topic: topics::AUTH_COMMANDS,
        rust_type: "AuthCommand",
        check: check_auth_commands,
    },
    Carrier {
        topic: topics::AUTH_USERS,
        rust_type: "User",
        check: check_auth_users,
    },
    Carrier {
        topic: topics::AUTH_RELATIONS,
        rust_type: "BuyerSeller",
        check: check_auth_relations,
    },
    Carrier {
        topic: topics::ORDERS_COMMANDS,
        rust_type: "OrderCommand",
        check: check_orders_commands,
    },
    Carrier {
        topic: topics::ORDERS_EVENTS,
        rust_type: "OrderEvent",
        check: check_orders_events,
    },
    Carrier {
        topic: topics::PAYMENTS_REQUESTS,
        rust_type: "PaymentCommand",
        check: check_payments_requests,
    },
    Carrier {
        topic: topics::PAYMENTS_RESULTS,
        rust_type: "PaymentResult",
        check: check_payments_results,
    },
    Carrier {
        topic: topics::CHAT_MESSAGES,
        rust_type: "ChatMessage",
        check: check_chat_messages,
    },
    Carrier {
        topic: topics::CHAT_DELIVERIES,
        rust_type: "ChatDelivery",
        check: check_chat_deliveries,
    },
    Carrier {
        topic: topics::EDGE_REPLIES,
        rust_type: "Reply",
        check: check_edge_replies,
    },
];

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

/// Every `*.avsc` in `schemas/`, as (topic, schema text), sorted by topic.
fn schema_files() -> Result<Vec<(String, String)>> {
    let dir = schemas_dir();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(topic) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".avsc"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        files.push((topic.to_string(), text));
    }
    files.sort();
    Ok(files)
}

fn load_schema(topic: &str) -> Result<Schema> {
    let path = schemas_dir().join(format!("{topic}.avsc"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Schema::parse_str(&text).with_context(|| format!("parsing {}", path.display()))
}

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// `value` → `to_avro` → Avro body → `read_body` (writer = reader = `schema`) →
/// `from_avro`, and the result must equal `value`.
fn round_trip<T: AvroRecord + PartialEq + Debug>(schema: &Schema, value: &T) -> Result<Value> {
    let avro = value
        .to_avro(schema)
        .with_context(|| format!("to_avro {value:?}"))?;
    let mut body = Vec::new();
    write_body(schema, avro.clone(), &mut body).with_context(|| format!("write {value:?}"))?;
    let read = read_body(schema, Some(schema), &body).with_context(|| format!("read {value:?}"))?;
    if let (Value::Union(written, _), Value::Union(resolved, _)) = (&avro, &read) {
        // apache-avro's reader-schema resolution (Value::resolve) drops the writer's
        // branch and takes the first reader branch the value fits by shape; read_body
        // must match union branches by record name instead.
        ensure!(
            written == resolved,
            "read_body(writer, Some(reader)) turned union branch {} into {}; \
             apache-avro resolves union branches by shape, read_body must match them \
             by name",
            union_branch_name(schema, &avro)?,
            union_branch_name(schema, &read)?
        );
    }
    ensure!(
        read == avro,
        "the body read back differs from what was written:\n{read:?}\n{avro:?}"
    );
    let back = T::from_avro(&read).with_context(|| format!("from_avro {read:?}"))?;
    ensure!(
        &back == value,
        "round trip changed the value:\n before {value:?}\n after  {back:?}"
    );
    // The producers' path (serde straight to bytes) writes the very same body.
    let mut direct = Vec::new();
    value
        .encode_body(schema, &mut direct)
        .with_context(|| format!("encode_body {value:?}"))?;
    ensure!(
        direct == body,
        "encode_body wrote other bytes than to_avro + write_body for {value:?}:\n{direct:?}\n{body:?}"
    );
    Ok(avro)
}

/// Round-trips a union-topic value and checks it was written as the branch named
/// `branch` (e.g. `orderflow.DeleteUser`).
fn round_trip_branch<T: AvroRecord + PartialEq + Debug>(
    schema: &Schema,
    value: &T,
    branch: &str,
) -> Result<()> {
    let avro = round_trip(schema, value)?;
    let written = union_branch_name(schema, &avro)?;
    ensure!(
        written == branch,
        "{value:?} was written as {written}, not {branch}"
    );
    Ok(())
}

/// The record name of the union branch a `Value::Union` was written as.
fn union_branch_name(schema: &Schema, value: &Value) -> Result<String> {
    let (Schema::Union(union), Value::Union(index, _)) = (schema, value) else {
        bail!("not a union value of a union schema: {value:?}");
    };
    union
        .variants()
        .get(*index as usize)
        .and_then(schema_name)
        .with_context(|| format!("union branch {index} has no name"))
}

/// The field names of the record named `full_name` anywhere in `schema`.
fn schema_fields(schema: &Schema, full_name: &str) -> Option<BTreeSet<String>> {
    match schema {
        Schema::Record(record) => {
            if record.name.fullname(None) == full_name {
                return Some(record.fields.iter().map(|f| f.name.clone()).collect());
            }
            record
                .fields
                .iter()
                .find_map(|f| schema_fields(&f.schema, full_name))
        }
        Schema::Union(union) => union
            .variants()
            .iter()
            .find_map(|v| schema_fields(v, full_name)),
        Schema::Array(array) => schema_fields(&array.items, full_name),
        _ => None,
    }
}

/// The field names serde gives a Rust record, before any schema is applied.
fn rust_fields<T: Serialize + Debug>(value: &T) -> Result<BTreeSet<String>> {
    match apache_avro::to_value(value)? {
        Value::Record(fields) => Ok(fields.into_iter().map(|(name, _)| name).collect()),
        other => bail!("{value:?} is not a record: {other:?}"),
    }
}

/// The Rust type `T` has exactly the fields of the schema record `full_name`: no field
/// renamed, removed or added. (Round trips catch most drift too, but a field with a
/// schema default can slip through encoding; this names the field.)
fn same_fields<T: Serialize + Debug>(schema: &Schema, full_name: &str, sample: &T) -> Result<()> {
    let in_schema =
        schema_fields(schema, full_name).with_context(|| format!("no record {full_name}"))?;
    let in_rust = rust_fields(sample)?;
    ensure!(
        in_schema == in_rust,
        "{full_name}: only in the schema {:?}, only in Rust {:?}",
        in_schema.difference(&in_rust).collect::<Vec<_>>(),
        in_rust.difference(&in_schema).collect::<Vec<_>>()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Samples and per-topic checks
// ---------------------------------------------------------------------------------

const T0: i64 = 1_732_600_000_123;

fn register_user(role: Role) -> RegisterUser {
    RegisterUser {
        request_id: "req-1".into(),
        email: "ada@example.com".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        role,
        display_name: "Ada Lovelace".into(),
    }
}

fn update_profile(full: bool) -> UpdateProfile {
    UpdateProfile {
        request_id: "req-2".into(),
        email: "ada@example.com".into(),
        display_name: full.then(|| "Ada L.".into()),
        password_hash: full.then(|| "$argon2id$new".into()),
    }
}

fn delete_user() -> DeleteUser {
    DeleteUser {
        request_id: "req-3".into(),
        email: "ada@example.com".into(),
    }
}

fn start_session() -> StartSession {
    StartSession {
        request_id: "req-4".into(),
        email: "ada@example.com".into(),
        user_id: "6f1c2a4e-0000-4000-8000-000000000001".into(),
        family_id: "fam-1".into(),
        token_id: "tok-1".into(),
        expires_at: T0 + 86_400_000,
    }
}

fn rotate_session() -> RotateSession {
    RotateSession {
        request_id: "req-5".into(),
        email: "ada@example.com".into(),
        family_id: "fam-1".into(),
        token_id: "tok-1".into(),
        next_token_id: "tok-2".into(),
        expires_at: T0 + 2 * 86_400_000,
    }
}

fn end_session() -> EndSession {
    EndSession {
        request_id: "req-6".into(),
        email: "ada@example.com".into(),
        family_id: "fam-1".into(),
    }
}

fn items(n: usize) -> Vec<OrderItem> {
    (0..n)
        .map(|i| OrderItem {
            product_id: format!("prod-{i}"),
            quantity: i32::try_from(i + 1).unwrap_or(i32::MAX),
            unit_price: 1_999 * (i as i64 + 1),
        })
        .collect()
}

fn place_order(n_items: usize) -> PlaceOrder {
    PlaceOrder {
        request_id: "req-4".into(),
        order_id: "order-1".into(),
        buyer_id: "buyer-1".into(),
        seller_id: "seller-1".into(),
        items: items(n_items),
        currency: "EUR".into(),
        placed_at: T0,
    }
}

fn cancel_order(reason: Option<&str>) -> CancelOrder {
    CancelOrder {
        request_id: "req-5".into(),
        order_id: "order-1".into(),
        requested_by: "buyer-1".into(),
        reason: reason.map(Into::into),
    }
}

fn payment_requested() -> PaymentRequested {
    PaymentRequested {
        payment_id: "pay-1".into(),
        order_id: "order-1".into(),
        buyer_id: "buyer-1".into(),
        amount: 100_000_001,
        currency: "EUR".into(),
        requested_at: T0,
    }
}

fn refund_requested(reason: Option<&str>) -> RefundRequested {
    RefundRequested {
        payment_id: "pay-1".into(),
        order_id: "order-1".into(),
        buyer_id: "buyer-1".into(),
        amount: 5_997,
        currency: "EUR".into(),
        reason: reason.map(Into::into),
        requested_at: T0 + 1,
    }
}

fn check_auth_commands(schema: &Schema) -> Result<()> {
    same_fields(
        schema,
        "orderflow.RegisterUser",
        &register_user(Role::Buyer),
    )?;
    same_fields(schema, "orderflow.UpdateProfile", &update_profile(true))?;
    same_fields(schema, "orderflow.DeleteUser", &delete_user())?;
    for role in [Role::Buyer, Role::Seller] {
        let value = AuthCommand::RegisterUser(register_user(role));
        round_trip_branch(schema, &value, "orderflow.RegisterUser")?;
    }
    for full in [false, true] {
        let value = AuthCommand::UpdateProfile(update_profile(full));
        round_trip_branch(schema, &value, "orderflow.UpdateProfile")?;
    }
    let value = AuthCommand::DeleteUser(delete_user());
    round_trip_branch(schema, &value, "orderflow.DeleteUser")?;
    same_fields(schema, "orderflow.StartSession", &start_session())?;
    same_fields(schema, "orderflow.RotateSession", &rotate_session())?;
    same_fields(schema, "orderflow.EndSession", &end_session())?;
    let value = AuthCommand::StartSession(start_session());
    round_trip_branch(schema, &value, "orderflow.StartSession")?;
    let value = AuthCommand::RotateSession(rotate_session());
    round_trip_branch(schema, &value, "orderflow.RotateSession")?;
    let value = AuthCommand::EndSession(end_session());
    round_trip_branch(schema, &value, "orderflow.EndSession")
}

fn check_auth_users(schema: &Schema) -> Result<()> {
    let user = User {
        id: "6f1c2a4e-0000-4000-8000-000000000001".into(),
        email: "ada@example.com".into(),
        role: Role::Buyer,
        display_name: "Ada".into(),
        status: UserStatus::Active,
        created_at: T0,
        updated_at: T0 + 5,
        password_hash: "$argon2id$hash".into(),
    };
    same_fields(schema, "orderflow.User", &user)?;
    round_trip(schema, &user)?;
    let deleted = User {
        role: Role::Seller,
        status: UserStatus::Deleted,
        ..user
    };
    round_trip(schema, &deleted)?;
    Ok(())
}

fn check_auth_relations(schema: &Schema) -> Result<()> {
    let relation = BuyerSeller {
        buyer_id: "buyer-1".into(),
        seller_id: "seller-1".into(),
        first_paid_order_id: "order-1".into(),
        since: T0,
    };
    same_fields(schema, "orderflow.BuyerSeller", &relation)?;
    round_trip(schema, &relation)?;
    Ok(())
}

fn check_orders_commands(schema: &Schema) -> Result<()> {
    same_fields(schema, "orderflow.PlaceOrder", &place_order(1))?;
    same_fields(schema, "orderflow.OrderItem", &items(1)[0])?;
    same_fields(schema, "orderflow.CancelOrder", &cancel_order(None))?;
    for n in [0, 1, 3] {
        let value = OrderCommand::PlaceOrder(place_order(n));
        round_trip_branch(schema, &value, "orderflow.PlaceOrder")?;
    }
    for reason in [None, Some("changed my mind")] {
        let value = OrderCommand::CancelOrder(cancel_order(reason));
        round_trip_branch(schema, &value, "orderflow.CancelOrder")?;
    }
    Ok(())
}

fn check_orders_events(schema: &Schema) -> Result<()> {
    let statuses = [
        OrderStatus::Ordered,
        OrderStatus::Paid,
        OrderStatus::Cancelled,
        OrderStatus::Refunded,
        OrderStatus::Rejected,
    ];
    for (version, status) in (1..).zip(statuses) {
        let minimal = OrderEvent {
            order_id: "order-1".into(),
            buyer_id: "buyer-1".into(),
            seller_id: "seller-1".into(),
            status,
            total: 5_997,
            currency: "EUR".into(),
            reason: None,
            version,
            at: T0 + version,
            items: Vec::new(),
            request_id: None,
        };
        same_fields(schema, "orderflow.OrderEvent", &minimal)?;
        round_trip(schema, &minimal)?;
        let full = OrderEvent {
            reason: Some("PAYMENT_TIMEOUT".into()),
            items: items(3),
            request_id: Some("req-4".into()),
            ..minimal
        };
        round_trip(schema, &full)?;
    }
    same_fields(schema, "orderflow.OrderItem", &items(1)[0])
}

fn check_payments_requests(schema: &Schema) -> Result<()> {
    same_fields(schema, "orderflow.PaymentRequested", &payment_requested())?;
    same_fields(schema, "orderflow.RefundRequested", &refund_requested(None))?;
    let value = PaymentCommand::PaymentRequested(payment_requested());
    round_trip_branch(schema, &value, "orderflow.PaymentRequested")?;
    for reason in [None, Some("buyer cancelled")] {
        let value = PaymentCommand::RefundRequested(refund_requested(reason));
        round_trip_branch(schema, &value, "orderflow.RefundRequested")?;
    }
    Ok(())
}

fn check_payments_results(schema: &Schema) -> Result<()> {
    for outcome in [
        PaymentOutcome::Approved,
        PaymentOutcome::Declined,
        PaymentOutcome::Refunded,
    ] {
        let minimal = PaymentResult {
            payment_id: "pay-1".into(),
            order_id: "order-1".into(),
            outcome,
            reason: None,
            at: T0,
            amount: None,
            currency: None,
        };
        same_fields(schema, "orderflow.PaymentResult", &minimal)?;
        round_trip(schema, &minimal)?;
        let full = PaymentResult {
            reason: Some("insufficient funds".into()),
            amount: Some(i64::MAX),
            currency: Some("JPY".into()),
            ..minimal
        };
        round_trip(schema, &full)?;
    }
    Ok(())
}

fn check_chat_messages(schema: &Schema) -> Result<()> {
    for body in ["", "héllo, 世界 👋"] {
        let message = ChatMessage {
            message_id: "msg-1".into(),
            room_id: "dm:buyer-1:seller-1".into(),
            sender_id: "buyer-1".into(),
            body: body.into(),
            sent_at: T0,
        };
        same_fields(schema, "orderflow.ChatMessage", &message)?;
        round_trip(schema, &message)?;
    }
    Ok(())
}

fn check_chat_deliveries(schema: &Schema) -> Result<()> {
    let delivery = ChatDelivery {
        message_id: "msg-1".into(),
        room_id: "dm:buyer-1:seller-1".into(),
        sender_id: "buyer-1".into(),
        recipient_id: "seller-1".into(),
        body: "is it in stock?".into(),
        // Before 1970: timestamp-millis is a signed long.
        sent_at: -1,
    };
    same_fields(schema, "orderflow.ChatDelivery", &delivery)?;
    round_trip(schema, &delivery)?;
    Ok(())
}

fn check_edge_replies(schema: &Schema) -> Result<()> {
    let minimal = Reply {
        request_id: "req-1".into(),
        ok: true,
        code: None,
        message: None,
        entity_id: None,
        at: T0,
    };
    same_fields(schema, "orderflow.Reply", &minimal)?;
    round_trip(schema, &minimal)?;
    let created = Reply {
        entity_id: Some("6f1c2a4e-0000-4000-8000-000000000001".into()),
        ..minimal.clone()
    };
    round_trip(schema, &created)?;
    let refused = Reply {
        ok: false,
        code: Some("EMAIL_TAKEN".into()),
        message: Some("an account with this email exists".into()),
        ..minimal
    };
    round_trip(schema, &refused)?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[test]
fn every_schema_file_parses() -> Result<()> {
    let files = schema_files()?;
    ensure!(
        !files.is_empty(),
        "no *.avsc in {}",
        schemas_dir().display()
    );
    for (topic, text) in &files {
        let schema = Schema::parse_str(text).with_context(|| format!("parsing {topic}.avsc"))?;
        // Every named type is in the orderflow namespace.
        let names = match &schema {
            Schema::Union(union) => union.variants().iter().map(schema_name).collect(),
            other => vec![schema_name(other)],
        };
        for name in names {
            let name = name.with_context(|| format!("{topic}.avsc: an unnamed top-level type"))?;
            ensure!(
                name.starts_with("orderflow."),
                "{topic}.avsc: {name} is not in namespace orderflow"
            );
        }
    }
    Ok(())
}

#[test]
fn every_schema_file_has_one_rust_type() -> Result<()> {
    let files: BTreeSet<String> = schema_files()?.into_iter().map(|(t, _)| t).collect();
    for topic in &files {
        let claims: Vec<&str> = CARRIERS
            .iter()
            .filter(|c| c.topic == topic)
            .map(|c| c.rust_type)
            .collect();
        ensure!(
            claims.len() == 1,
            "schemas/{topic}.avsc is claimed by {claims:?}; add exactly one row to CARRIERS"
        );
    }
    let carried: BTreeSet<String> = CARRIERS.iter().map(|c| c.topic.to_string()).collect();
    let declared: BTreeSet<String> = topics::ALL.iter().map(|t| t.to_string()).collect();
    ensure!(
        carried == files,
        "CARRIERS rows without a schema file: {:?}",
        carried.difference(&files).collect::<Vec<_>>()
    );
    ensure!(
        declared == files,
        "topics::ALL and schemas/ differ: only in topics::ALL {:?}, only in schemas/ {:?}",
        declared.difference(&files).collect::<Vec<_>>(),
        files.difference(&declared).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn every_record_and_union_branch_round_trips() -> Result<()> {
    let mut failures = Vec::new();
    for carrier in CARRIERS {
        let outcome = load_schema(carrier.topic).and_then(|schema| (carrier.check)(&schema));
        if let Err(error) = outcome {
            failures.push(format!(
                "{} ({}): {error:#}",
                carrier.topic, carrier.rust_type
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// `timestamp-millis` fields are `Value::TimestampMillis` once resolved against the
/// schema, and apache-avro's serde path hands them to Rust as plain `i64`. Enums are
/// `Value::Enum` with the schema's symbol.
#[test]
fn timestamps_and_enums_have_their_avro_types() -> Result<()> {
    let schema = load_schema(topics::AUTH_USERS)?;
    let user = User {
        id: "u1".into(),
        email: "ada@example.com".into(),
        role: Role::Seller,
        display_name: "Ada".into(),
        status: UserStatus::Deleted,
        created_at: T0,
        updated_at: T0 + 1,
        password_hash: "h".into(),
    };
    let Value::Record(fields) = user.to_avro(&schema)? else {
        bail!("User is not a record");
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    ensure!(field("created_at") == Some(Value::TimestampMillis(T0)));
    ensure!(field("updated_at") == Some(Value::TimestampMillis(T0 + 1)));
    ensure!(field("role") == Some(Value::Enum(1, "SELLER".into())));
    ensure!(field("status") == Some(Value::Enum(1, "DELETED".into())));
    ensure!(User::from_avro(&Value::Record(fields.clone()))? == user);

    // A symbol the Rust enum does not know is refused, not mapped to a neighbour.
    let mut unknown = fields;
    for (name, value) in &mut unknown {
        if name == "role" {
            *value = Value::Enum(2, "ADMIN".into());
        }
    }
    ensure!(User::from_avro(&Value::Record(unknown)).is_err());
    Ok(())
}

/// A local copy of `ChatMessage` with `room_id` renamed: encoding refuses it, because
/// the schema's required `room_id` has no value.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct ChatMessageRenamed {
    message_id: String,
    room: String,
    sender_id: String,
    body: String,
    sent_at: i64,
}
impl AvroRecord for ChatMessageRenamed {}

/// A local copy of `ChatMessage` with `body` removed.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct ChatMessageWithoutBody {
    message_id: String,
    room_id: String,
    sender_id: String,
    sent_at: i64,
}
impl AvroRecord for ChatMessageWithoutBody {}

/// A local copy of `Reply` with the optional `code` renamed, refusing unknown fields as
/// the real records do. Encoding succeeds (the schema default fills `code` and the
/// renamed field is silently dropped), so it is decoding that catches it.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct ReplyRenamed {
    request_id: String,
    ok: bool,
    error_code: Option<String>,
    message: Option<String>,
    entity_id: Option<String>,
    at: i64,
}
impl AvroRecord for ReplyRenamed {}

#[test]
fn a_rust_field_that_drifts_from_the_schema_is_refused() -> Result<()> {
    let schema = load_schema(topics::CHAT_MESSAGES)?;
    let renamed = ChatMessageRenamed {
        message_id: "m".into(),
        room: "r".into(),
        sender_id: "s".into(),
        body: "b".into(),
        sent_at: T0,
    };
    let error = renamed
        .to_avro(&schema)
        .err()
        .context("a value without room_id was accepted")?;
    ensure!(error.to_string().contains("room_id"), "{error}");
    ensure!(same_fields(&schema, "orderflow.ChatMessage", &renamed).is_err());
    let mut out = vec![7];
    let error = renamed
        .encode_body(&schema, &mut out)
        .err()
        .context("encode_body accepted a value without room_id")?;
    ensure!(
        out == [7],
        "a failed encode_body left bytes behind: {out:?} ({error})"
    );

    let without_body = ChatMessageWithoutBody {
        message_id: "m".into(),
        room_id: "r".into(),
        sender_id: "s".into(),
        sent_at: T0,
    };
    let error = without_body
        .to_avro(&schema)
        .err()
        .context("a value without body was accepted")?;
    ensure!(error.to_string().contains("body"), "{error}");
    ensure!(
        without_body.encode_body(&schema, &mut Vec::new()).is_err(),
        "encode_body accepted a value without body"
    );

    let schema = load_schema(topics::EDGE_REPLIES)?;
    let reply = ReplyRenamed {
        request_id: "req".into(),
        ok: false,
        error_code: Some("EMAIL_TAKEN".into()),
        message: None,
        entity_id: None,
        at: T0,
    };
    ensure!(same_fields(&schema, "orderflow.Reply", &reply).is_err());
    ensure!(round_trip(&schema, &reply).is_err());
    Ok(())
}

/// Union branches are picked by record name, not by shape. A shape-based pick (plain
/// `resolve` against the union) takes the first branch the value fits, which is wrong
/// whenever one record's fields are a subset of another's: `DeleteUser`'s fields fit
/// `UpdateProfile` (whose extra fields default to null), and `RefundRequested`'s fit
/// `PaymentRequested` (resolve ignores the extra `reason`), which would turn a refund
/// into a charge.
#[test]
fn union_branches_are_chosen_by_name() -> Result<()> {
    let auth = load_schema(topics::AUTH_COMMANDS)?;
    let delete = AuthCommand::DeleteUser(delete_user());
    let back = AuthCommand::from_avro(&delete.to_avro(&auth)?)?;
    ensure!(back == delete, "DeleteUser came back as {back:?}");
    let update = AuthCommand::UpdateProfile(update_profile(false));
    let back = AuthCommand::from_avro(&update.to_avro(&auth)?)?;
    ensure!(back == update, "UpdateProfile came back as {back:?}");
    let end = AuthCommand::EndSession(end_session());
    let back = AuthCommand::from_avro(&end.to_avro(&auth)?)?;
    ensure!(back == end, "EndSession came back as {back:?}");

    let payments = load_schema(topics::PAYMENTS_REQUESTS)?;
    let refund = PaymentCommand::RefundRequested(refund_requested(None));
    let back = PaymentCommand::from_avro(&refund.to_avro(&payments)?)?;
    ensure!(back == refund, "RefundRequested came back as {back:?}");

    // The same through an Avro body read with a reader schema, as a consumer reads it.
    round_trip_branch(&auth, &delete, "orderflow.DeleteUser")?;
    round_trip_branch(&auth, &update, "orderflow.UpdateProfile")?;
    round_trip_branch(&payments, &refund, "orderflow.RefundRequested")?;

    // The hazard the by-name choice avoids: resolving by shape picks the wrong branch.
    let by_shape = apache_avro::to_value(delete_user())?.resolve(&auth)?;
    ensure!(
        union_branch_name(&auth, &by_shape)? == "orderflow.UpdateProfile",
        "apache-avro no longer resolves DeleteUser by shape as UpdateProfile; \
         the explanation above this test is out of date"
    );
    let by_shape = apache_avro::to_value(refund_requested(None))?.resolve(&payments)?;
    ensure!(
        union_branch_name(&payments, &by_shape)? == "orderflow.PaymentRequested",
        "apache-avro no longer resolves RefundRequested by shape as PaymentRequested; \
         the explanation above this test is out of date"
    );

    // A union value whose index is out of range for the Rust enum is refused.
    let stray = Value::Union(7, Box::new(Value::Null));
    ensure!(AuthCommand::from_avro(&stray).is_err());
    Ok(())
}

/// Reads a record written by an older schema without the optional fields added to
/// `OrderEvent` (`items`, `request_id`): the reader's defaults fill them in.
#[test]
fn order_event_from_an_older_writer_gets_the_defaults() -> Result<()> {
    let reader = load_schema(topics::ORDERS_EVENTS)?;
    let path = schemas_dir().join("orders.events.avsc");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let fields = json["fields"]
        .as_array_mut()
        .context("OrderEvent has no fields")?;
    fields.retain(|f| f["name"] != "items" && f["name"] != "request_id");
    let writer = Schema::parse(&json)?;

    let event = OrderEvent {
        order_id: "order-1".into(),
        buyer_id: "buyer-1".into(),
        seller_id: "seller-1".into(),
        status: OrderStatus::Paid,
        total: 100,
        currency: "EUR".into(),
        reason: None,
        version: 2,
        at: T0,
        items: Vec::new(),
        request_id: None,
    };
    let mut body = Vec::new();
    write_body(&writer, event.to_avro(&writer)?, &mut body)?;
    let read = read_body(&writer, Some(&reader), &body)?;
    ensure!(OrderEvent::from_avro(&read)? == event);
    Ok(())
}
