//! A payment gateway for tests: a real HTTP server on 127.0.0.1 (port 0) that speaks
//! the protocol of `orderflow_pipelines::payment_gateway` (see its module docs), on a
//! tokio runtime of its own thread, so sync tests (the `TestDriver`) can use it as
//! well as async ones.
//!
//! Include it from any test file of the workspace with
//!
//! ```ignore
//! #[path = "../../pipelines/tests/common/gateway_server.rs"] // from cli/tests
//! mod gateway_server;
//! ```
//!
//! It needs only `axum`, `tokio` and `serde_json`, and knows nothing of orderflow's
//! types: it checks the protocol from the wire.
//!
//! What it does:
//! - Keeps each idempotency key's first answer: a repeated key gets that answer again
//!   and is not counted again; a repeated key with a different request gets 422, as
//!   real gateways do. The key must be the payment id (`refund:<payment id>` for
//!   refunds), or the request gets 400.
//! - Decides charges with a rule given at start (`None` approves, `Some(reason)`
//!   declines); refunds a payment it approved, and answers 422 to a refund of any
//!   other.
//! - Counts: [`GatewayServer::charges`] (distinct charge keys answered, approved or
//!   declined), [`GatewayServer::refunds`], [`GatewayServer::requests`] (every
//!   request, faults included).
//! - Faults: [`GatewayServer::fail_next`] (503s, not recorded),
//!   [`GatewayServer::fail_next_with`] (any status, `Retry-After`),
//!   [`GatewayServer::reply_next`] (any status and body), [`GatewayServer::set_delay`]
//!   (every answer late) and [`GatewayServer::stall_next`] (record the charge, then
//!   hold the answer past the client's timeout: its retry must not charge twice).
//! - With [`GatewayServer::expect_authorization`], a request without that exact
//!   `Authorization` header gets 401.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// A charge as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub payment_id: String,
    pub order_id: String,
    pub buyer_id: String,
    pub amount: i64,
    pub currency: String,
}

/// A refund as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub payment_id: String,
    pub order_id: String,
    pub buyer_id: String,
    pub amount: i64,
    pub currency: String,
    pub reason: Option<String>,
}

/// A recorded charge and the answer it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCharge {
    pub request: ChargeRequest,
    /// `None` approved, `Some(reason)` declined.
    pub declined: Option<String>,
}

/// Decides a charge: `None` approves, `Some(reason)` declines.
pub type Rule = Box<dyn Fn(&ChargeRequest) -> Option<String> + Send + Sync>;

/// A canned answer for the next request.
#[derive(Debug, Clone)]
struct Fault {
    status: StatusCode,
    retry_after: Option<u64>,
    body: String,
}

#[derive(Default)]
struct Books {
    requests: usize,
    /// Charge idempotency key → the charge and its answer.
    charges: HashMap<String, RecordedCharge>,
    /// Refund idempotency key → the refund.
    refunds: HashMap<String, RefundRequest>,
    faults: VecDeque<Fault>,
    delay: Duration,
    /// Holds for the next recorded requests' answers.
    stalls: VecDeque<Duration>,
    authorization: Option<String>,
}

struct Shared {
    rule: Rule,
    books: Mutex<Books>,
}

impl Shared {
    fn books(&self) -> MutexGuard<'_, Books> {
        // A test that panicked while holding the lock must not hide behind a poison
        // error in the next assertion.
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running server; it stops when dropped.
pub struct GatewayServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GatewayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl GatewayServer {
    /// A server that approves every charge.
    pub fn start() -> Self {
        Self::with_rule(|_| None)
    }

    /// A server that declines, with the reason given, the charges `rule` picks.
    pub fn with_rule(
        rule: impl Fn(&ChargeRequest) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            rule: Box::new(rule),
            books: Mutex::new(Books::default()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("listener address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(shared.clone());
        let thread = std::thread::Builder::new()
            .name("gateway-server".to_string())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("gateway server runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    // Not a graceful shutdown: a stalled answer must not hold up the
                    // end of a test. Dropping the runtime drops the connections.
                    tokio::select! {
                        served = axum::serve(listener, app) => served.expect("gateway server"),
                        _ = stopped => {}
                    }
                });
            })
            .expect("gateway server thread");
        GatewayServer {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Distinct charges answered (approved or declined).
    pub fn charges(&self) -> usize {
        self.shared.books().charges.len()
    }

    /// Distinct charges approved.
    pub fn approved(&self) -> usize {
        let books = self.shared.books();
        books
            .charges
            .values()
            .filter(|c| c.declined.is_none())
            .count()
    }

    /// Distinct refunds made.
    pub fn refunds(&self) -> usize {
        self.shared.books().refunds.len()
    }

    /// Every request received, faults and repeats included.
    pub fn requests(&self) -> usize {
        self.shared.books().requests
    }

    /// The recorded charge of a payment id.
    pub fn charge(&self, payment_id: &str) -> Option<RecordedCharge> {
        self.shared.books().charges.get(payment_id).cloned()
    }

    /// The recorded refund of a payment id.
    pub fn refund(&self, payment_id: &str) -> Option<RefundRequest> {
        self.shared
            .books()
            .refunds
            .get(&format!("refund:{payment_id}"))
            .cloned()
    }

    /// Answers the next `n` requests 503, recording nothing.
    pub fn fail_next(&self, n: usize) {
        self.fail_next_with(n, 503, None);
    }

    /// Answers the next `n` requests with `status` (and `Retry-After: <seconds>`),
    /// recording nothing.
    pub fn fail_next_with(&self, n: usize, status: u16, retry_after_secs: Option<u64>) {
        let body = json!({"error": "injected fault"}).to_string();
        self.push_faults(n, status, retry_after_secs, body);
    }

    /// Answers the next `n` requests with `status` and this body, recording nothing.
    pub fn reply_next(&self, n: usize, status: u16, body: &str) {
        self.push_faults(n, status, None, body.to_string());
    }

    fn push_faults(&self, n: usize, status: u16, retry_after: Option<u64>, body: String) {
        let status = StatusCode::from_u16(status).expect("an HTTP status");
        let mut books = self.shared.books();
        for _ in 0..n {
            books.faults.push_back(Fault {
                status,
                retry_after,
                body: body.clone(),
            });
        }
    }

    /// Delays every answer by `delay` (zero to stop).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.books().delay = delay;
    }

    /// The next `n` requests that get past the faults are recorded (charged,
    /// refunded) at once, but answered only after `hold`: set it past the client's
    /// timeout to make it give up on an answer that was, in fact, given.
    pub fn stall_next(&self, n: usize, hold: Duration) {
        let mut books = self.shared.books();
        books.stalls.extend(std::iter::repeat_n(hold, n));
    }

    /// Answers 401 to requests without `Authorization: <value>`.
    pub fn expect_authorization(&self, value: &str) {
        self.shared.books().authorization = Some(value.to_string());
    }
}

impl Drop for GatewayServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/charges", post(charge))
        .route("/refunds", post(refund))
        .with_state(shared)
}

fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", HeaderValue::from_static("application/json"))],
        body.to_string(),
    )
        .into_response()
}

/// An answer other than the protocol's: a status, a body and maybe `Retry-After`.
#[derive(Debug)]
struct Reject {
    status: StatusCode,
    body: String,
    retry_after: Option<u64>,
}

impl Reject {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Reject {
            status,
            body: json!({"error": message.into()}).to_string(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Reject::new(StatusCode::BAD_REQUEST, message)
    }

    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [("content-type", HeaderValue::from_static("application/json"))],
            self.body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}

/// What every request goes through before its handler's own work: counting, faults,
/// authorization, the idempotency key. `Err` is the answer to give at once.
fn admit(shared: &Shared, headers: &HeaderMap) -> Result<(String, Duration), Reject> {
    let mut books = shared.books();
    books.requests += 1;
    if let Some(fault) = books.faults.pop_front() {
        return Err(Reject {
            status: fault.status,
            body: fault.body,
            retry_after: fault.retry_after,
        });
    }
    if let Some(expected) = &books.authorization {
        let given = headers.get("authorization").and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return Err(Reject::new(
                StatusCode::UNAUTHORIZED,
                "bad or missing Authorization",
            ));
        }
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| Reject::bad_request("missing Idempotency-Key"))?;
    Ok((key, books.delay))
}

fn string_field(body: &Value, name: &str) -> Result<String, Reject> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Reject::bad_request(format!("{name} must be a string")))
}

fn amount_field(body: &Value) -> Result<i64, Reject> {
    body.get("amount")
        .and_then(Value::as_i64)
        .ok_or_else(|| Reject::bad_request("amount must be an integer"))
}

fn parse_body(bytes: &[u8]) -> Result<Value, Reject> {
    let body: Value =
        serde_json::from_slice(bytes).map_err(|e| Reject::bad_request(format!("not JSON: {e}")))?;
    if !body.is_object() {
        return Err(Reject::bad_request("not a JSON object"));
    }
    Ok(body)
}

fn parse_charge(bytes: &[u8]) -> Result<ChargeRequest, Reject> {
    let body = parse_body(bytes)?;
    Ok(ChargeRequest {
        payment_id: string_field(&body, "paymentId")?,
        order_id: string_field(&body, "orderId")?,
        buyer_id: string_field(&body, "buyerId")?,
        amount: amount_field(&body)?,
        currency: string_field(&body, "currency")?,
    })
}

fn parse_refund(bytes: &[u8]) -> Result<RefundRequest, Reject> {
    let body = parse_body(bytes)?;
    let reason = match body.get("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Reject::bad_request("reason must be a string or null")),
    };
    Ok(RefundRequest {
        payment_id: string_field(&body, "paymentId")?,
        order_id: string_field(&body, "orderId")?,
        buyer_id: string_field(&body, "buyerId")?,
        amount: amount_field(&body)?,
        currency: string_field(&body, "currency")?,
        reason,
    })
}

fn charge_answer(charge: &RecordedCharge) -> Response {
    let body = match &charge.declined {
        None => json!({"status": "APPROVED", "reason": null}),
        Some(reason) => json!({"status": "DECLINED", "reason": reason}),
    };
    answer(StatusCode::OK, body)
}

async fn respond_after(wait: Duration, response: Response) -> Response {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    response
}

async fn charge(State(shared): State<Arc<Shared>>, headers: HeaderMap, bytes: Bytes) -> Response {
    let (key, delay) = match admit(&shared, &headers) {
        Ok(admitted) => admitted,
        Err(reject) => return reject.into_response(),
    };
    let request = match parse_charge(&bytes) {
        Ok(request) => request,
        Err(reject) => return respond_after(delay, reject.into_response()).await,
    };
    if key != request.payment_id {
        let message = format!("Idempotency-Key {key:?} is not the paymentId");
        return respond_after(delay, Reject::bad_request(message).into_response()).await;
    }
    // Decide outside the lock: the rule is the test's code.
    let decided = (shared.rule)(&request);
    let (response, stall) = {
        let mut books = shared.books();
        let response = match books.charges.get(&key) {
            Some(first) if first.request != request => Reject::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key reused with a different charge",
            )
            .into_response(),
            Some(first) => charge_answer(first),
            None => {
                let recorded = RecordedCharge {
                    request,
                    declined: decided,
                };
                let response = charge_answer(&recorded);
                books.charges.insert(key, recorded);
                response
            }
        };
        (response, books.stalls.pop_front().unwrap_or_default())
    };
    respond_after(delay + stall, response).await
}

async fn refund(State(shared): State<Arc<Shared>>, headers: HeaderMap, bytes: Bytes) -> Response {
    let (key, delay) = match admit(&shared, &headers) {
        Ok(admitted) => admitted,
        Err(reject) => return reject.into_response(),
    };
    let request = match parse_refund(&bytes) {
        Ok(request) => request,
        Err(reject) => return respond_after(delay, reject.into_response()).await,
    };
    if key != format!("refund:{}", request.payment_id) {
        let message = format!("Idempotency-Key {key:?} is not refund:<paymentId>");
        return respond_after(delay, Reject::bad_request(message).into_response()).await;
    }
    let (response, stall) = {
        let mut books = shared.books();
        let approved = books
            .charges
            .get(&request.payment_id)
            .is_some_and(|c| c.declined.is_none());
        let response = match books.refunds.get(&key) {
            Some(first) if *first != request => Reject::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key reused with a different refund",
            )
            .into_response(),
            Some(_) => answer(StatusCode::OK, json!({"status": "REFUNDED"})),
            None if !approved => Reject::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no approved charge with this paymentId",
            )
            .into_response(),
            None => {
                books.refunds.insert(key, request);
                answer(StatusCode::OK, json!({"status": "REFUNDED"}))
            }
        };
        (response, books.stalls.pop_front().unwrap_or_default())
    };
    respond_after(delay + stall, response).await
}
