//! The order routes: place (BUYERs), read one (its buyer or seller), list the
//! caller's, cancel (its buyer). Placing and cancelling publish to `orders.commands`
//! keyed by order id; reads come from the orders view kept from `orders.events`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use orderflow_pipelines::records::{
    CancelOrder, OrderCommand, OrderEvent, OrderItem, OrderStatus, PlaceOrder, Role, topics,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::HttpState;
use super::command::{new_id, now_ms, publish};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, BuyerCaller, Caller, OptionalJson, PathId};

/// The most lines one order may have.
pub const MAX_ITEMS: usize = 100;

/// Where an order is; `PENDING` until its first event is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApiOrderStatus {
    /// Accepted by this edge; the saga has not answered yet.
    Pending,
    /// Accepted by the saga; payment requested.
    Ordered,
    /// Paid.
    Paid,
    /// Cancelled before payment, declined, or timed out (see `reason`).
    Cancelled,
    /// Cancelled after payment and refunded.
    Refunded,
    /// Invalid (unknown buyer or seller, bad items; see `reason`).
    Rejected,
}

impl From<OrderStatus> for ApiOrderStatus {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::Ordered => ApiOrderStatus::Ordered,
            OrderStatus::Paid => ApiOrderStatus::Paid,
            OrderStatus::Cancelled => ApiOrderStatus::Cancelled,
            OrderStatus::Refunded => ApiOrderStatus::Refunded,
            OrderStatus::Rejected => ApiOrderStatus::Rejected,
        }
    }
}

/// One order line.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiItem {
    /// The product.
    #[schema(example = "sku-1")]
    pub product_id: String,
    /// How many, at least 1.
    #[schema(example = 2)]
    pub quantity: i64,
    /// Price of one, in minor units (cents), at least 0.
    #[schema(example = 1250)]
    pub unit_price: i64,
}

/// `POST /orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlaceOrderRequest {
    /// The seller's user id.
    pub seller_id: String,
    /// The lines, 1 to 100.
    pub items: Vec<ApiItem>,
    /// ISO 4217 code of every price, e.g. `EUR`.
    #[schema(example = "EUR")]
    pub currency: String,
}

/// A placed order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacedOrder {
    /// The new order's id (the key on `orders.commands`).
    pub order_id: String,
    /// Its status when answered: its first event's, or `PENDING`.
    pub status: ApiOrderStatus,
}

/// An order as its buyer and seller see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    /// The order's id.
    pub order_id: String,
    /// Where it is.
    pub status: ApiOrderStatus,
    /// The buyer's user id.
    pub buyer_id: String,
    /// The seller's user id.
    pub seller_id: String,
    /// Sum of the lines, minor units.
    pub total: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Why cancelled or rejected, e.g. `PAYMENT_TIMEOUT`.
    pub reason: Option<String>,
    /// 1 for the first event, one more per change.
    pub version: i64,
    /// The lines.
    pub items: Vec<ApiItem>,
    /// When it last changed, epoch milliseconds.
    pub updated_at: i64,
}

impl From<OrderEvent> for OrderView {
    fn from(e: OrderEvent) -> Self {
        OrderView {
            order_id: e.order_id,
            status: e.status.into(),
            buyer_id: e.buyer_id,
            seller_id: e.seller_id,
            total: e.total,
            currency: e.currency,
            reason: e.reason,
            version: e.version,
            items: e
                .items
                .into_iter()
                .map(|i| ApiItem {
                    product_id: i.product_id,
                    quantity: i64::from(i.quantity),
                    unit_price: i.unit_price,
                })
                .collect(),
            updated_at: e.at,
        }
    }
}

/// The caller's orders.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderList {
    /// Most recently changed first.
    pub orders: Vec<OrderView>,
}

/// `GET /orders` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `buyer` (orders the caller placed) or `seller` (orders placed with the
    /// caller); default from the caller's role.
    pub role: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    pub limit: Option<String>,
}

/// `POST /orders/{orderId}/cancel` (the body may be left out).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CancelRequest {
    /// Why, if the buyer wants to say.
    pub reason: Option<String>,
}

/// The lines as the command carries them, or 422 naming the field.
fn check_order(body: &PlaceOrderRequest, buyer_id: &str) -> Result<Vec<OrderItem>, ApiError> {
    let seller_id = body.seller_id.trim();
    if seller_id.is_empty() {
        return Err(ApiError::invalid_field(
            "sellerId",
            "sellerId must not be empty",
        ));
    }
    if seller_id == buyer_id {
        return Err(ApiError::invalid_field(
            "sellerId",
            "a buyer cannot order from itself",
        ));
    }
    if body.items.is_empty() {
        return Err(ApiError::invalid_field(
            "items",
            "an order needs at least one item",
        ));
    }
    if body.items.len() > MAX_ITEMS {
        return Err(ApiError::invalid_field(
            "items",
            format!("an order has at most {MAX_ITEMS} items"),
        ));
    }
    let c = body.currency.as_bytes();
    if c.len() != 3 || !c.iter().all(u8::is_ascii_uppercase) {
        return Err(ApiError::invalid_field(
            "currency",
            "currency must be an ISO 4217 code: three upper-case letters, like EUR",
        ));
    }
    let mut total: i64 = 0;
    let mut items = Vec::with_capacity(body.items.len());
    for (i, item) in body.items.iter().enumerate() {
        let product_id = item.product_id.trim();
        if product_id.is_empty() {
            return Err(ApiError::invalid_field(
                format!("items[{i}].productId"),
                "productId must not be empty",
            ));
        }
        let quantity = i32::try_from(item.quantity)
            .ok()
            .filter(|q| *q >= 1)
            .ok_or_else(|| {
                ApiError::invalid_field(
                    format!("items[{i}].quantity"),
                    format!("quantity must be between 1 and {}", i32::MAX),
                )
            })?;
        if item.unit_price < 0 {
            return Err(ApiError::invalid_field(
                format!("items[{i}].unitPrice"),
                "unitPrice must not be negative",
            ));
        }
        total = item
            .unit_price
            .checked_mul(i64::from(quantity))
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| ApiError::invalid_field("items", "the order total is too large"))?;
        items.push(OrderItem {
            product_id: product_id.to_string(),
            quantity,
            unit_price: item.unit_price,
        });
    }
    Ok(items)
}

/// Places an order. Answered once its first event is known or the order wait is
/// over, whichever comes first.
#[utoipa::path(post, path = "/orders", tag = "orders",
    security(("bearer" = [])),
    request_body = PlaceOrderRequest,
    responses(
        (status = 202, description = "Accepted; `Location` names the order", body = PlacedOrder),
        (status = 400, description = "Malformed JSON or not JSON", body = ErrorBody),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "The caller is not a BUYER", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = ErrorBody),
        (status = 503, description = "Not ready, or the command could not be sent", body = ErrorBody),
    ))]
pub async fn place(
    State(state): State<HttpState>,
    BuyerCaller(caller): BuyerCaller,
    ApiJson(body): ApiJson<PlaceOrderRequest>,
) -> Result<Response, ApiError> {
    let items = check_order(&body, &caller.user_id)?;
    let order_id = new_id();
    let command = OrderCommand::PlaceOrder(PlaceOrder {
        request_id: new_id(),
        order_id: order_id.clone(),
        buyer_id: caller.user_id.clone(),
        seller_id: body.seller_id.trim().to_string(),
        items,
        currency: body.currency,
        placed_at: now_ms(),
    });
    publish(
        &state,
        topics::ORDERS_COMMANDS,
        &order_id,
        &command,
        "the order",
    )
    .await?;
    let event = state
        .streams
        .orders()
        .wait_for(&order_id, 1, state.settings.order_wait)
        .await;
    let status = event.map_or(ApiOrderStatus::Pending, |e| e.status.into());
    tracing::info!(order = %order_id, buyer = %caller.user_id, ?status, "http: order placed");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(PlacedOrder {
            order_id: order_id.clone(),
            status,
        }),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/orders/{order_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The order, if the caller is its buyer or seller.
fn order_of(state: &HttpState, caller: &Caller, order_id: &str) -> Result<OrderEvent, ApiError> {
    let order = state
        .streams
        .orders()
        .get(order_id)
        .ok_or_else(|| ApiError::not_found("no such order"))?;
    if order.buyer_id != caller.user_id && order.seller_id != caller.user_id {
        return Err(ApiError::forbidden(
            "only the order's buyer and seller may see it",
        ));
    }
    Ok(order)
}

/// One order.
#[utoipa::path(get, path = "/orders/{orderId}", tag = "orders",
    security(("bearer" = [])),
    params(("orderId" = String, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not the order's buyer or seller", body = ErrorBody),
        (status = 404, description = "No such order (yet)", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<HttpState>,
    caller: Caller,
    PathId(order_id): PathId,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(order_of(&state, &caller, &order_id)?.into()))
}

/// The caller's orders, as buyer or as seller.
#[utoipa::path(get, path = "/orders", tag = "orders",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "The orders, most recently changed first", body = OrderList),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 422, description = "`role` is not buyer or seller, or `limit` is out of range", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<HttpState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<OrderList>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BAD_QUERY", e.body_text()))?;
    let as_buyer = match params
        .role
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => caller.role == Role::Buyer,
        Some("buyer") => true,
        Some("seller") => false,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "role",
                "role must be buyer or seller",
            ));
        }
    };
    let limit = match params.limit.as_deref() {
        None => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid_field("limit", "limit must be between 1 and 1000"))?,
    };
    let orders = if as_buyer {
        state.streams.orders().of_buyer(&caller.user_id)
    } else {
        state.streams.orders().of_seller(&caller.user_id)
    };
    Ok(Json(OrderList {
        orders: orders
            .into_iter()
            .take(limit)
            .map(OrderView::from)
            .collect(),
    }))
}

/// Cancels an order: before payment it is CANCELLED, after it refunded. Answered once
/// the cancellation's event is known or the order wait is over.
#[utoipa::path(post, path = "/orders/{orderId}/cancel", tag = "orders",
    security(("bearer" = [])),
    params(("orderId" = String, Path, description = "The order's id")),
    request_body(content = Option<CancelRequest>, description = "May be left out"),
    responses(
        (status = 202, description = "Accepted; `status` is the latest known", body = PlacedOrder),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not the order's buyer", body = ErrorBody),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Already cancelled, refunded or rejected (`ORDER_FINAL`)", body = ErrorBody),
        (status = 503, description = "Not ready, or the command could not be sent", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<HttpState>,
    caller: Caller,
    PathId(order_id): PathId,
    OptionalJson(body): OptionalJson<CancelRequest>,
) -> Result<(StatusCode, Json<PlacedOrder>), ApiError> {
    let order = order_of(&state, &caller, &order_id)?;
    if order.buyer_id != caller.user_id {
        return Err(ApiError::forbidden("only the order's buyer may cancel it"));
    }
    if matches!(
        order.status,
        OrderStatus::Cancelled | OrderStatus::Refunded | OrderStatus::Rejected
    ) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ORDER_FINAL",
            format!(
                "the order is already {}",
                ApiOrderStatus::from(order.status).name()
            ),
        ));
    }
    let command = OrderCommand::CancelOrder(CancelOrder {
        request_id: new_id(),
        order_id: order_id.clone(),
        requested_by: caller.user_id.clone(),
        reason: body
            .and_then(|b| b.reason)
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty()),
    });
    publish(
        &state,
        topics::ORDERS_COMMANDS,
        &order_id,
        &command,
        "the cancellation",
    )
    .await?;
    let latest = state
        .streams
        .orders()
        .wait_for(&order_id, order.version + 1, state.settings.order_wait)
        .await
        .unwrap_or(order);
    Ok((
        StatusCode::ACCEPTED,
        Json(PlacedOrder {
            order_id,
            status: latest.status.into(),
        }),
    ))
}

impl ApiOrderStatus {
    /// The status as the API spells it.
    pub fn name(self) -> &'static str {
        match self {
            ApiOrderStatus::Pending => "PENDING",
            ApiOrderStatus::Ordered => "ORDERED",
            ApiOrderStatus::Paid => "PAID",
            ApiOrderStatus::Cancelled => "CANCELLED",
            ApiOrderStatus::Refunded => "REFUNDED",
            ApiOrderStatus::Rejected => "REJECTED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(items: Vec<(&str, i64, i64)>, currency: &str) -> PlaceOrderRequest {
        PlaceOrderRequest {
            seller_id: "s".into(),
            items: items
                .into_iter()
                .map(|(p, q, u)| ApiItem {
                    product_id: p.into(),
                    quantity: q,
                    unit_price: u,
                })
                .collect(),
            currency: currency.into(),
        }
    }

    fn field_of(e: &ApiError) -> String {
        format!("{e:?}")
    }

    #[test]
    fn each_bad_field_is_named() {
        let ok = check_order(&order(vec![("a", 2, 150), ("b", 1, 0)], "EUR"), "b1").unwrap();
        assert_eq!(ok.len(), 2);
        for (body, field) in [
            (order(vec![], "EUR"), "\"items\""),
            (order(vec![("a", 0, 1)], "EUR"), "items[0].quantity"),
            (
                order(vec![("a", 1, 1), ("b", -3, 1)], "EUR"),
                "items[1].quantity",
            ),
            (order(vec![("a", 1, -1)], "EUR"), "items[0].unitPrice"),
            (order(vec![("", 1, 1)], "EUR"), "items[0].productId"),
            (order(vec![("a", 1, 1)], "eur"), "currency"),
            (order(vec![("a", 1, 1)], "EURO"), "currency"),
            (
                order(vec![("a", i64::from(i32::MAX), i64::MAX)], "EUR"),
                "\"items\"",
            ),
        ] {
            let e = check_order(&body, "b1").unwrap_err();
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert!(field_of(&e).contains(field), "{field}: {e:?}");
        }
        let mut own = order(vec![("a", 1, 1)], "EUR");
        own.seller_id = "b1".into();
        assert!(field_of(&check_order(&own, "b1").unwrap_err()).contains("sellerId"));
        own.seller_id = " ".into();
        assert!(field_of(&check_order(&own, "b1").unwrap_err()).contains("sellerId"));
    }
}
