//! The HTTP edge over a real socket with a real client, against a real running
//! orderflow (the processors of topology.yaml on the test broker, see `common`):
//! every route, each error status of the contract, the token attacks, the privacy
//! rule, orders that get PAID, DECLINED and cancelled, rate limits, readiness,
//! request ids, metrics and the OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{hs256_tokens, system, unique_email};
use orderflow_connectors::auth::{AccessSubject, JwtConfig, Tokens};
use orderflow_connectors::http::{HttpSettings, HttpState, RateLimit, router};
use orderflow_pipelines::records::Role;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

const PASSWORD: &str = "correct horse battery";

/// Settings for the shared edge: no rate limits (every test comes from 127.0.0.1),
/// generous waits for a loaded machine.
fn settings() -> HttpSettings {
    HttpSettings {
        reply_timeout: Duration::from_secs(30),
        order_wait: Duration::from_secs(5),
        client_rate: RateLimit::OFF,
        password_rate: RateLimit::OFF,
        ..HttpSettings::default()
    }
}

/// An edge under test.
#[derive(Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
    tokens: Arc<Tokens>,
}

/// One answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[track_caller]
    fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "{self:?}");
        self
    }

    /// Asserts an error answer: status, code, and the contract's shape.
    #[track_caller]
    fn expect_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.code(), code, "{self:?}");
        assert!(self.body["error"]["message"].is_string(), "{self:?}");
        self
    }

    #[track_caller]
    fn expect_field(&self, field: &str) -> &Self {
        self.expect_error(422, "INVALID_FIELD");
        assert_eq!(self.body["error"]["field"], field, "{self:?}");
        self
    }
}

async fn api_with(settings: HttpSettings, tokens: Arc<Tokens>) -> Api {
    let sys = system();
    let state = HttpState::new(
        sys.streams.clone(),
        tokens.clone(),
        sys.metrics.clone(),
        settings,
    );
    Api {
        base: sys.serve(router(state)).await,
        http: reqwest::Client::new(),
        tokens,
    }
}

/// The edge most tests share, with a client of the calling test's own (a client's
/// connections live on the runtime that made them, and each test has its own).
async fn api() -> Api {
    static API: OnceCell<Api> = OnceCell::const_new();
    let shared = API
        .get_or_init(|| api_with(settings(), hs256_tokens()))
        .await;
    Api {
        http: reqwest::Client::new(),
        ..shared.clone()
    }
}

impl Api {
    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            r = r.bearer_auth(token);
        }
        r
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(self.request(Method::GET, path, token)).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.send(self.request(Method::POST, path, token).json(&body))
            .await
    }

    async fn register(&self, email: &str, role: &str) -> Answer {
        self.post(
            "/auth/register",
            None,
            json!({"email": email, "password": PASSWORD, "role": role, "displayName": "Tester"}),
        )
        .await
    }

    async fn login(&self, email: &str, password: &str) -> Answer {
        self.post(
            "/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    /// A registered and signed-in account.
    async fn account(&self, role: &str) -> Account {
        let email = unique_email(&role.to_lowercase());
        let registered = self.register(&email, role).await;
        registered.expect(201);
        let login = self.login(&email, PASSWORD).await;
        login.expect(200);
        Account {
            id: registered.body["id"].as_str().unwrap().to_string(),
            email,
            access: login.body["accessToken"].as_str().unwrap().to_string(),
            refresh: login.body["refreshToken"].as_str().unwrap().to_string(),
        }
    }

    async fn place(&self, buyer: &Account, seller: &Account, unit_price: i64) -> Answer {
        self.post(
            "/orders",
            Some(&buyer.access),
            json!({
                "sellerId": seller.id,
                "items": [{"productId": "sku-1", "quantity": 1, "unitPrice": unit_price}],
                "currency": "EUR"
            }),
        )
        .await
    }

    /// Polls the order until it has `status`.
    async fn wait_status(&self, token: &str, order_id: &str, status: &str) -> Answer {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let answer = self.get(&format!("/orders/{order_id}"), Some(token)).await;
            if answer.status == 200 && answer.body["status"] == status {
                return answer;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} did not become {status}: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[derive(Debug, Clone)]
struct Account {
    id: String,
    email: String,
    access: String,
    refresh: String,
}

fn subject(account: &Account, role: Role) -> AccessSubject {
    AccessSubject {
        user_id: account.id.clone(),
        email: account.email.clone(),
        role,
        session_id: "any-session".into(),
    }
}

fn segments(token: &str) -> (Value, Value, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let decode =
        |s: &str| serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap();
    (decode(parts[0]), decode(parts[1]), parts[2].to_string())
}

fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[tokio::test]
async fn register_and_login() {
    let api = api().await;
    let email = unique_email("ada");
    let mixed = email.replacen("ada", "AdA", 1);
    let registered = api.register(&format!("  {mixed} "), "BUYER").await;
    registered.expect(201);
    assert_eq!(registered.body["email"], email.as_str());
    assert_eq!(registered.body["role"], "BUYER");
    assert_eq!(registered.body["displayName"], "Tester");
    let id = registered.body["id"].as_str().unwrap().to_string();
    assert!(!id.is_empty());

    api.register(&email.to_uppercase(), "SELLER")
        .await
        .expect_error(409, "EMAIL_TAKEN");

    let login = api.login(&mixed, PASSWORD).await;
    login.expect(200);
    assert_eq!(login.body["tokenType"], "Bearer");
    let access = login.body["accessToken"].as_str().unwrap();
    assert!(login.body["refreshToken"].is_string());
    let me = api.get(&format!("/auth/user/{id}"), Some(access)).await;
    me.expect(200);
    assert_eq!(me.body["id"], id.as_str());
    assert_eq!(me.body["email"], email.as_str());
    assert_eq!(me.body["role"], "BUYER");
    assert_eq!(me.body["displayName"], "Tester");
    assert!(me.body.get("passwordHash").is_none() && !me.body.to_string().contains("argon2"));

    let wrong = api.login(&email, "not the password").await;
    wrong.expect_error(401, "INVALID_CREDENTIALS");
    assert!(
        wrong.header("www-authenticate").starts_with("Bearer"),
        "{wrong:?}"
    );
    let unknown = api.login(&unique_email("nobody"), PASSWORD).await;
    unknown.expect_error(401, "INVALID_CREDENTIALS");
    assert_eq!(
        unknown.body["error"]["message"],
        wrong.body["error"]["message"]
    );

    // Invalid fields are named.
    let fresh = unique_email("fresh");
    for (body, field) in [
        (
            json!({"email": "nope", "password": PASSWORD, "role": "BUYER"}),
            "email",
        ),
        (
            json!({"email": fresh, "password": "short", "role": "BUYER"}),
            "password",
        ),
        (
            json!({"email": fresh, "password": PASSWORD, "role": "ADMIN"}),
            "role",
        ),
        (json!({"email": fresh, "password": PASSWORD}), "role"),
        (
            json!({"email": fresh, "password": PASSWORD, "role": "BUYER", "displayName": " "}),
            "displayName",
        ),
    ] {
        api.post("/auth/register", None, body)
            .await
            .expect_field(field);
    }
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let api = api().await;
    let a = api.account("BUYER").await;
    let me = format!("/auth/user/{}", a.id);

    let first = api
        .post("/auth/refresh", None, json!({"refreshToken": a.refresh}))
        .await;
    first.expect(200);
    let access2 = first.body["accessToken"].as_str().unwrap().to_string();
    let refresh2 = first.body["refreshToken"].as_str().unwrap().to_string();
    assert_ne!(refresh2, a.refresh);
    api.get(&me, Some(&access2)).await.expect(200);

    // The old one again: reuse, and the whole family is revoked …
    api.post("/auth/refresh", None, json!({"refreshToken": a.refresh}))
        .await
        .expect_error(401, "REFRESH_REUSED");
    // … so the legitimate newer one is refused too.
    let newer = api
        .post("/auth/refresh", None, json!({"refreshToken": refresh2}))
        .await;
    newer.expect(401);
    assert_eq!(newer.code(), "SESSION_REVOKED", "{newer:?}");

    // Tokens of the wrong kind, or no token at all.
    api.post("/auth/refresh", None, json!({"refreshToken": access2}))
        .await
        .expect_error(401, "TOKEN_WRONG_TYPE");
    api.post("/auth/refresh", None, json!({"refreshToken": "garbage"}))
        .await
        .expect_error(401, "TOKEN_MALFORMED");
    api.get(&me, Some(&a.refresh))
        .await
        .expect_error(401, "TOKEN_WRONG_TYPE");
}

#[tokio::test]
async fn logout_revokes_the_session_only() {
    let api = api().await;
    let a = api.account("SELLER").await;
    let other = api.login(&a.email, PASSWORD).await;
    other.expect(200);

    api.send(api.request(Method::POST, "/auth/logout", Some(&a.access)))
        .await
        .expect(204);
    api.post("/auth/refresh", None, json!({"refreshToken": a.refresh}))
        .await
        .expect_error(401, "SESSION_REVOKED");
    // The other session goes on.
    api.post(
        "/auth/refresh",
        None,
        json!({"refreshToken": other.body["refreshToken"]}),
    )
    .await
    .expect(200);

    let anonymous = api
        .send(api.request(Method::POST, "/auth/logout", None))
        .await;
    anonymous.expect_error(401, "UNAUTHENTICATED");
    assert_eq!(anonymous.header("www-authenticate"), "Bearer");
}

#[tokio::test]
async fn token_attacks_are_refused() {
    let api = api().await;
    let a = api.account("BUYER").await;
    let me = format!("/auth/user/{}", a.id);
    api.get(&me, Some(&a.access)).await.expect(200);

    // No token, or not a bearer one.
    let none = api.get(&me, None).await;
    none.expect_error(401, "UNAUTHENTICATED");
    assert_eq!(none.header("www-authenticate"), "Bearer");
    let basic = api
        .send(
            api.request(Method::GET, &me, None)
                .header("authorization", "Basic YTpi"),
        )
        .await;
    basic.expect_error(401, "UNAUTHENTICATED");

    // Expired, and not valid yet.
    let now = SystemTime::now();
    let expired = api
        .tokens
        .issue_access_at(&subject(&a, Role::Buyer), now - Duration::from_secs(3600));
    let answer = api.get(&me, Some(&expired)).await;
    answer.expect_error(401, "TOKEN_EXPIRED");
    assert!(
        answer.header("www-authenticate").contains("invalid_token"),
        "{answer:?}"
    );
    let future = api
        .tokens
        .issue_access_at(&subject(&a, Role::Buyer), now + Duration::from_secs(3600));
    api.get(&me, Some(&future))
        .await
        .expect_error(401, "TOKEN_NOT_YET_VALID");

    // Signed with another secret.
    let stranger = Tokens::new(
        &JwtConfig::hs256(b"another secret that is long enough for HS256".to_vec()).unwrap(),
    )
    .unwrap();
    let forged = stranger.issue_access(&subject(&a, Role::Buyer));
    api.get(&me, Some(&forged))
        .await
        .expect_error(401, "TOKEN_BAD_SIGNATURE");

    // Right secret, wrong issuer.
    let mut config = JwtConfig::hs256(common::SECRET.to_vec()).unwrap();
    config.issuer = "someone-else".into();
    let elsewhere = Tokens::new(&config)
        .unwrap()
        .issue_access(&subject(&a, Role::Buyer));
    api.get(&me, Some(&elsewhere))
        .await
        .expect_error(401, "TOKEN_WRONG_ISSUER");

    // alg: none, with the genuine claims and no signature.
    let (_, claims, signature) = segments(&a.access);
    let unsigned = format!(
        "{}.{}.",
        encode(&json!({"alg": "none", "typ": "JWT"})),
        encode(&claims)
    );
    api.get(&me, Some(&unsigned))
        .await
        .expect_error(401, "TOKEN_WRONG_ALGORITHM");

    // The role claim changed to SELLER, the genuine signature kept.
    let (header, mut claims, _) = segments(&a.access);
    claims["role"] = json!("SELLER");
    let tampered = format!("{}.{}.{signature}", encode(&header), encode(&claims));
    api.get(&me, Some(&tampered))
        .await
        .expect_error(401, "TOKEN_BAD_SIGNATURE");
    let seller_only = api.get("/orders?role=seller", Some(&tampered)).await;
    seller_only.expect_error(401, "TOKEN_BAD_SIGNATURE");
}

#[tokio::test]
async fn an_rs256_edge_refuses_hs256_signed_with_its_public_key() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let public = std::fs::read(keys.join("rs256-public.pem")).unwrap();
    let private = std::fs::read(keys.join("rs256-private.pem")).unwrap();
    let tokens = Arc::new(Tokens::new(&JwtConfig::rs256(private, public.clone())).unwrap());
    let api = api_with(settings(), tokens).await;

    let a = api.account("BUYER").await;
    let me = format!("/auth/user/{}", a.id);
    let (header, claims, _) = segments(&a.access);
    assert_eq!(header["alg"], "RS256");
    api.get(&me, Some(&a.access)).await.expect(200);

    // The classic confusion: HS256 with the RSA public key as the HMAC secret.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    api.get(&me, Some(&confused))
        .await
        .expect_error(401, "TOKEN_WRONG_ALGORITHM");
    // And an HS256 token of the HS256 edge is no good here either.
    let hs = hs256_tokens().issue_access(&subject(&a, Role::Buyer));
    api.get(&me, Some(&hs))
        .await
        .expect_error(401, "TOKEN_WRONG_ALGORITHM");
}

#[tokio::test]
async fn a_buyer_is_visible_to_sellers_it_bought_from_only() {
    let api = api().await;
    let seller = api.account("SELLER").await;
    let other_seller = api.account("SELLER").await;
    let buyer = api.account("BUYER").await;
    let other_buyer = api.account("BUYER").await;
    let buyer_path = format!("/auth/user/{}", buyer.id);

    api.get(&buyer_path, Some(&buyer.access)).await.expect(200);
    api.get(&buyer_path, Some(&seller.access))
        .await
        .expect_error(403, "FORBIDDEN");
    api.get(&buyer_path, Some(&other_buyer.access))
        .await
        .expect_error(403, "FORBIDDEN");
    let seller_record = api
        .get(&format!("/auth/user/{}", seller.id), Some(&buyer.access))
        .await;
    seller_record.expect(200);
    assert_eq!(seller_record.body["role"], "SELLER");
    api.get(
        &format!("/auth/user/{}", uuid::Uuid::new_v4()),
        Some(&buyer.access),
    )
    .await
    .expect_error(404, "NOT_FOUND");

    let placed = api.place(&buyer, &seller, 1_000).await;
    placed.expect(202);
    let order_id = placed.body["orderId"].as_str().unwrap();
    api.wait_status(&buyer.access, order_id, "PAID").await;

    // The relation follows the PAID event through buyer-relations.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = api.get(&buyer_path, Some(&seller.access)).await;
        if answer.status == 200 {
            assert_eq!(answer.body["id"], buyer.id.as_str());
            break;
        }
        answer.expect_error(403, "FORBIDDEN");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the seller never got to see the buyer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.get(&buyer_path, Some(&other_seller.access))
        .await
        .expect_error(403, "FORBIDDEN");
}

#[tokio::test]
async fn orders_get_paid_declined_and_cancelled() {
    let api = api().await;
    let seller = api.account("SELLER").await;
    let buyer = api.account("BUYER").await;
    let stranger = api.account("BUYER").await;

    let placed = api
        .post(
            "/orders",
            Some(&buyer.access),
            json!({
                "sellerId": seller.id,
                "items": [{"productId": "sku-1", "quantity": 2, "unitPrice": 1250}],
                "currency": "EUR"
            }),
        )
        .await;
    placed.expect(202);
    let paid_id = placed.body["orderId"].as_str().unwrap().to_string();
    assert_eq!(placed.header("location"), format!("/orders/{paid_id}"));
    assert!(
        ["PENDING", "ORDERED", "PAID"].contains(&placed.body["status"].as_str().unwrap()),
        "{placed:?}"
    );
    let paid = api.wait_status(&buyer.access, &paid_id, "PAID").await;
    assert_eq!(paid.body["orderId"], paid_id.as_str());
    assert_eq!(paid.body["buyerId"], buyer.id.as_str());
    assert_eq!(paid.body["sellerId"], seller.id.as_str());
    assert_eq!(paid.body["total"], 2500);
    assert_eq!(paid.body["currency"], "EUR");
    assert_eq!(paid.body["reason"], Value::Null);
    assert!(paid.body["version"].as_i64().unwrap() >= 2);
    assert_eq!(paid.body["items"][0]["quantity"], 2);

    // Over PAYMENT_DECLINE_OVER (100,000,000 minor units): declined, so cancelled.
    let declined = api.place(&buyer, &seller, 100_000_001).await;
    declined.expect(202);
    let declined_id = declined.body["orderId"].as_str().unwrap().to_string();
    let cancelled = api
        .wait_status(&buyer.access, &declined_id, "CANCELLED")
        .await;
    assert_eq!(cancelled.body["reason"], "PAYMENT_DECLINED");

    // Who may see an order.
    api.get(&format!("/orders/{paid_id}"), Some(&seller.access))
        .await
        .expect(200);
    api.get(&format!("/orders/{paid_id}"), Some(&stranger.access))
        .await
        .expect_error(403, "FORBIDDEN");
    api.get(
        &format!("/orders/{}", uuid::Uuid::new_v4()),
        Some(&buyer.access),
    )
    .await
    .expect_error(404, "NOT_FOUND");

    // Lists: by default from the caller's role.
    let ids = |answer: &Answer| -> Vec<String> {
        answer.body["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["orderId"].as_str().unwrap().to_string())
            .collect()
    };
    let mine = api.get("/orders", Some(&buyer.access)).await;
    mine.expect(200);
    assert_eq!(ids(&mine).len(), 2);
    assert!(ids(&mine).contains(&paid_id) && ids(&mine).contains(&declined_id));
    let sold = api.get("/orders", Some(&seller.access)).await;
    assert_eq!(ids(&sold).len(), 2);
    let as_buyer = api.get("/orders?role=buyer", Some(&seller.access)).await;
    assert!(ids(&as_buyer).is_empty());
    let explicit = api.get("/orders?role=seller", Some(&seller.access)).await;
    assert_eq!(ids(&explicit).len(), 2);
    api.get("/orders?role=admin", Some(&buyer.access))
        .await
        .expect_field("role");
    let one = api.get("/orders?limit=1", Some(&buyer.access)).await;
    assert_eq!(ids(&one).len(), 1);

    // Only BUYERs place orders.
    api.place(&seller, &seller, 100)
        .await
        .expect_error(403, "FORBIDDEN");

    // Cancel: its buyer only, not twice, not an order that is over.
    let cancel = |id: &str| format!("/orders/{id}/cancel");
    api.send(api.request(Method::POST, &cancel(&paid_id), Some(&seller.access)))
        .await
        .expect_error(403, "FORBIDDEN");
    api.send(api.request(Method::POST, &cancel(&paid_id), Some(&stranger.access)))
        .await
        .expect_error(403, "FORBIDDEN");
    api.send(api.request(
        Method::POST,
        &cancel(&uuid::Uuid::new_v4().to_string()),
        Some(&buyer.access),
    ))
    .await
    .expect_error(404, "NOT_FOUND");
    let cancelled = api
        .post(
            &cancel(&paid_id),
            Some(&buyer.access),
            json!({"reason": "changed my mind"}),
        )
        .await;
    cancelled.expect(202);
    assert_eq!(cancelled.body["orderId"], paid_id.as_str());
    api.wait_status(&buyer.access, &paid_id, "REFUNDED").await;
    api.send(api.request(Method::POST, &cancel(&paid_id), Some(&buyer.access)))
        .await
        .expect_error(409, "ORDER_FINAL");
    api.send(api.request(Method::POST, &cancel(&declined_id), Some(&buyer.access)))
        .await
        .expect_error(409, "ORDER_FINAL");
}

#[tokio::test]
async fn bad_requests_get_the_contract_statuses() {
    let api = api().await;
    let buyer = api.account("BUYER").await;
    let token = Some(buyer.access.as_str());
    let item = json!({"productId": "p", "quantity": 1, "unitPrice": 100});
    let order = |patch: Value| {
        let mut body = json!({"sellerId": "s-1", "items": [item], "currency": "EUR"});
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    for (patch, field) in [
        (json!({"items": []}), "items"),
        (
            json!({"items": [{"productId": "p", "quantity": 0, "unitPrice": 1}]}),
            "items[0].quantity",
        ),
        (
            json!({"items": [item, {"productId": "p", "quantity": -2, "unitPrice": 1}]}),
            "items[1].quantity",
        ),
        (
            json!({"items": [{"productId": "p", "quantity": 1, "unitPrice": -1}]}),
            "items[0].unitPrice",
        ),
        (
            json!({"items": [{"productId": "p", "quantity": "two", "unitPrice": 1}]}),
            "items[0].quantity",
        ),
        (
            json!({"items": [{"productId": "p", "unitPrice": 1}]}),
            "items[0].quantity",
        ),
        (json!({"currency": "eur"}), "currency"),
        (json!({"currency": "EURO"}), "currency"),
        (json!({"sellerId": null}), "sellerId"),
        (json!({"sellerId": ""}), "sellerId"),
    ] {
        api.post("/orders", token, order(patch))
            .await
            .expect_field(field);
    }

    // 400: not JSON, or not declared as JSON.
    let malformed = api
        .send(
            api.request(Method::POST, "/orders", token)
                .header("content-type", "application/json")
                .body("{\"sellerId\": "),
        )
        .await;
    malformed.expect_error(400, "MALFORMED_JSON");
    api.send(
        api.request(Method::POST, "/auth/login", None)
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await
    .expect_error(400, "BAD_CONTENT_TYPE");
    api.send(api.request(Method::POST, "/auth/register", None).body("{}"))
        .await
        .expect_error(400, "BAD_CONTENT_TYPE");

    // 413: over the 64 KiB body limit.
    let huge = "x".repeat(70 * 1024);
    api.post(
        "/auth/register",
        None,
        json!({"email": unique_email("huge"), "password": PASSWORD, "role": "BUYER", "displayName": huge}),
    )
    .await
    .expect_error(413, "PAYLOAD_TOO_LARGE");
    api.post("/orders", token, order(json!({"sellerId": huge})))
        .await
        .expect_error(413, "PAYLOAD_TOO_LARGE");

    // A path id that is not UTF-8 once decoded.
    api.get("/orders/%FF%FE", token)
        .await
        .expect_error(400, "BAD_PATH");

    // 404 and 405 in the same shape.
    api.get("/no/such/route", None)
        .await
        .expect_error(404, "NOT_FOUND");
    let wrong_method = api
        .send(api.request(Method::DELETE, "/orders", token))
        .await;
    wrong_method.expect_error(405, "METHOD_NOT_ALLOWED");
    let mut allowed: Vec<&str> = wrong_method.header("allow").split(',').collect();
    allowed.sort_unstable();
    assert_eq!(allowed, ["GET", "HEAD", "POST"], "{wrong_method:?}");
    api.get("/auth/login", None)
        .await
        .expect_error(405, "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let tight_passwords = HttpSettings {
        password_rate: RateLimit {
            per_second: 1.0 / 3600.0,
            burst: 2,
        },
        login_grace: Duration::from_millis(200),
        trust_forwarded_for: true,
        ..settings()
    };
    let api = api_with(tight_passwords, hs256_tokens()).await;
    let email = unique_email("guessed");
    let guess = |from: &'static str| {
        let api = api.clone();
        let email = email.clone();
        async move {
            api.send(
                api.request(Method::POST, "/auth/login", None)
                    .header("x-forwarded-for", from)
                    .json(&json!({"email": email, "password": "guess"})),
            )
            .await
        }
    };
    guess("203.0.113.7")
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    guess("203.0.113.7")
        .await
        .expect_error(401, "INVALID_CREDENTIALS");
    let limited = guess("203.0.113.7").await;
    limited.expect_error(429, "RATE_LIMITED");
    let retry: u64 = limited.header("retry-after").parse().unwrap();
    assert!(retry >= 1, "{limited:?}");
    // Another client is not held back by it.
    guess("203.0.113.8")
        .await
        .expect_error(401, "INVALID_CREDENTIALS");

    let tight_clients = HttpSettings {
        client_rate: RateLimit {
            per_second: 0.01,
            burst: 3,
        },
        ..settings()
    };
    let api = api_with(tight_clients, hs256_tokens()).await;
    for _ in 0..3 {
        api.get("/orders", None).await.expect(401);
    }
    let limited = api.get("/orders", None).await;
    limited.expect_error(429, "RATE_LIMITED");
    assert!(limited.header("retry-after").parse::<u64>().unwrap() >= 1);
    // Probes are never limited.
    api.get("/health", None).await.expect(200);
    api.get("/ready", None).await.expect(200);
    let metrics = api.get("/metrics", None).await;
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("orderflow_http_rate_limited_total{limit=\"client\"}"),
        "{text}"
    );
    assert!(
        text.contains("orderflow_http_rate_limited_total{limit=\"password\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn no_reply_in_time_is_503() {
    let impatient = HttpSettings {
        reply_timeout: Duration::from_millis(1),
        ..settings()
    };
    let api = api_with(impatient, hs256_tokens()).await;
    let answer = api.register(&unique_email("impatient"), "BUYER").await;
    answer.expect_error(503, "NO_REPLY");
    assert_eq!(answer.header("retry-after"), "1");
}

#[tokio::test]
async fn readiness_follows_the_streams_and_draining() {
    let sys = system();
    let api = api().await;
    let ready = api.get("/ready", None).await;
    ready.expect(200);
    assert_eq!(ready.body["status"], "ready");
    api.get("/health", None).await.expect(200);

    // A draining edge says so at once and stops taking requests.
    let state = HttpState::new(
        sys.streams.clone(),
        hs256_tokens(),
        sys.metrics.clone(),
        settings(),
    );
    state.drain();
    let base = sys.serve(router(state)).await;
    let draining = Api {
        base,
        http: reqwest::Client::new(),
        tokens: hs256_tokens(),
    };
    draining
        .get("/ready", None)
        .await
        .expect_error(503, "NOT_READY");
    draining
        .login(&unique_email("late"), PASSWORD)
        .await
        .expect_error(503, "NOT_READY");
    draining.get("/health", None).await.expect(200);

    // A fresh view of the streams starts behind and turns ready once caught up.
    let fresh = sys.fresh_streams().await;
    let state = HttpState::new(fresh, hs256_tokens(), sys.metrics.clone(), settings());
    let base = sys.serve(router(state)).await;
    let fresh = Api {
        base,
        http: reqwest::Client::new(),
        tokens: hs256_tokens(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = fresh.get("/ready", None).await;
        if answer.status == 200 {
            break;
        }
        answer.expect_error(503, "NOT_READY");
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn request_ids_metrics_and_the_openapi_document() {
    let api = api().await;
    let echoed = api
        .send(
            api.request(Method::GET, "/health", None)
                .header("x-request-id", "test-42"),
        )
        .await;
    assert_eq!(echoed.header("x-request-id"), "test-42");
    let generated = api.get("/no/such/route", None).await;
    let id = generated.header("x-request-id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{generated:?}");
    let replaced = api
        .send(
            api.request(Method::GET, "/health", None)
                .header("x-request-id", "forged\"log line"),
        )
        .await;
    assert!(
        uuid::Uuid::parse_str(replaced.header("x-request-id")).is_ok(),
        "{replaced:?}"
    );

    let metrics = api.get("/metrics", None).await;
    metrics.expect(200);
    assert!(metrics.header("content-type").starts_with("text/plain"));
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains(
            "orderflow_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "orderflow_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("orderflow_http_request_duration_seconds_bucket"),
        "{text}"
    );
    // The engine's own series are in the same registry.
    assert!(text.contains("orderflow_records_in_total"), "{text}");

    let doc = api.get("/openapi.json", None).await;
    doc.expect(200);
    let paths = doc.body["paths"].as_object().unwrap();
    for (path, method) in [
        ("/auth/register", "post"),
        ("/auth/login", "post"),
        ("/auth/refresh", "post"),
        ("/auth/logout", "post"),
        ("/auth/user/{userId}", "get"),
        ("/orders", "post"),
        ("/orders", "get"),
        ("/orders/{orderId}", "get"),
        ("/orders/{orderId}/cancel", "post"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} not in {doc:?}"
        );
    }
    assert_eq!(
        paths.len(),
        12,
        "a route in the document that the edge does not serve?"
    );
    let error = &doc.body["components"]["schemas"]["ErrorBody"];
    assert!(error["properties"]["error"].is_object(), "{error}");
    assert!(
        paths["/orders"]["post"]["responses"]["422"].is_object(),
        "the error statuses are documented"
    );
}

/// Collects the fields of every span opened while it is the default subscriber.
struct SpanFields(Arc<std::sync::Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

impl tracing::Subscriber for SpanFields {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Fields(format!("{} ", span.metadata().name()));
        span.record(&mut fields);
        let mut spans = self.0.lock().unwrap();
        spans.push(fields.0);
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn the_request_id_is_in_the_request_span() {
    use tower::ServiceExt as _;
    let sys = system();
    let app = router(HttpState::new(
        sys.streams.clone(),
        hs256_tokens(),
        sys.metrics.clone(),
        settings(),
    ));
    let spans = Arc::new(std::sync::Mutex::new(Vec::new()));
    let _guard = tracing::subscriber::set_default(SpanFields(spans.clone()));

    let given = axum::http::Request::get("/health")
        .header("x-request-id", "span-test-7")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.clone().oneshot(given).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "span-test-7");
    let generated = axum::http::Request::get("/orders/x")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(generated).await.unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    let spans = spans.lock().unwrap().clone();
    let http: Vec<&String> = spans.iter().filter(|s| s.starts_with("http ")).collect();
    assert_eq!(http.len(), 2, "{spans:?}");
    assert!(
        http[0].contains("request_id=\"span-test-7\"") && http[0].contains("route=\"/health\""),
        "{spans:?}"
    );
    assert!(
        http[1].contains(&format!("request_id=\"{id}\""))
            && http[1].contains("route=\"/orders/{orderId}\""),
        "{spans:?}"
    );
}
