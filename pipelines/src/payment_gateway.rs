//! Payment gateways: what the payment authorizer charges and refunds through.
//!
//! [`PaymentGateway`] is an object-safe trait with boxed futures, shared as
//! `Arc<dyn PaymentGateway>`. Two are built in, chosen by the processor's `config:`
//! block ([`GatewayConfig`]):
//!
//! - [`SimulatedGateway`] (`gateway: simulated`, the default): deterministic rules, no
//!   network. A charge is declined with `AMOUNT_OVER_LIMIT` when its amount is over
//!   `decline_over` (100,000,000 minor units unless set), with `BUYER_BLOCKED` when
//!   its buyer is in `decline_buyers`, and with `DECLINED_BY_ISSUER` for a
//!   `decline_ratio` share of payment ids, chosen by a fixed hash of the id so a
//!   replay gets the same answer. Every other charge is approved; refunds always
//!   succeed. `latency` delays every answer.
//! - [`HttpGateway`] (`gateway: http`): a small REST protocol, below, that a real
//!   gateway or a shim in front of one speaks.
//!
//! # The HTTP protocol
//!
//! `url` is a base URL (`https://pay.example.com/v1`); requests go to paths under it.
//! Bodies are JSON, money in minor units.
//!
//! ```text
//! POST {url}/charges
//! Idempotency-Key: <paymentId>
//! Authorization: <the configured value, if any>
//! {"paymentId": "...", "orderId": "...", "buyerId": "...", "amount": 1250, "currency": "EUR"}
//!
//! 2xx {"status": "APPROVED" | "DECLINED", "reason": string | null}
//!
//! POST {url}/refunds
//! Idempotency-Key: refund:<paymentId>
//! {"paymentId": "...", "orderId": "...", "buyerId": "...", "amount": 1250, "currency": "EUR",
//!  "reason": string | null}
//!
//! 2xx {"status": "REFUNDED"}
//! ```
//!
//! The gateway must keep each idempotency key's first answer and give it again for a
//! repeated key, without charging again. That is what makes every retry below safe,
//! and a replay of `payments.requests` after a crash (the same payment id) never
//! charges twice.
//!
//! How answers are read:
//!
//! - **2xx**: the body above. `status` is read case-insensitively; a `DECLINED` without
//!   a reason gets `DECLINED`.
//! - **408, 409, 429, 5xx**, a connection that fails, and no full answer within
//!   `timeout` (per attempt): tried again after a backoff that starts at
//!   `initial_backoff` and doubles up to `max_backoff`. A `Retry-After` header in
//!   seconds replaces the backoff of that wait, capped at `max_backoff`. With
//!   `max_attempts` unset (the default) it tries until it gets an answer: a payment
//!   must be answered, and an error would leave the order waiting for its payment
//!   timeout while the charge may have gone through. Each retry logs a warning.
//! - **401, 403, 404, 405**: the gateway refused *us* (credentials, URL), not the
//!   payment, so declining would cancel every order for a configuration mistake:
//!   [`GatewayError::Refused`].
//! - **any other 4xx**: the gateway refused the request. A charge is declined with
//!   `GATEWAY_REFUSED_<status>`; a refund is [`GatewayError::Refused`] (a refund
//!   cannot be declined).
//! - **a 2xx whose body is not the answer above**, and 1xx/3xx (redirects are not
//!   followed: a redirected POST would become a GET): [`GatewayError::Protocol`], at
//!   once, not retried. The gateway answered, and did something; asking again would
//!   get the same unreadable answer forever, so the operator has to look. A body that
//!   breaks off mid-way is a failed connection and is retried.
//!
//! - A payment id that cannot be sent as a header value: [`GatewayError::InvalidRequest`],
//!   before anything is sent.
//!
//! Call an [`HttpGateway`] from one long-lived tokio runtime: its pooled connections
//! belong to the runtime that opened them (a call on a fresh runtime per record would
//! find them dead, and pay for a retry). Building one needs no runtime.
//!
//! There is no jitter in the backoff: it is deterministic, and the engine calls the
//! gateway from one task per partition, not from thousands of clients.

use std::collections::BTreeSet;
use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use orderflow_runtime::processor::{BuildError, ProcessorSpec};
use orderflow_runtime::topology::config::{format_duration, parse_duration};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::records::{PaymentRequested, RefundRequested};

/// The future a gateway call returns.
pub type GatewayFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>;

/// A payment gateway. Object-safe, so the authorizer holds an `Arc<dyn PaymentGateway>`
/// and does not care which one it has; calls may run concurrently.
pub trait PaymentGateway: fmt::Debug + Send + Sync + 'static {
    /// Charges the buyer. Calling it again with the same payment id must not charge
    /// again: the gateway gives the first answer.
    fn charge(&self, charge: &Charge) -> GatewayFuture<'_, ChargeOutcome>;

    /// Refunds a charged payment. Calling it again with the same payment id must not
    /// refund again.
    fn refund(&self, refund: &Refund) -> GatewayFuture<'_, RefundOutcome>;
}

/// A charge to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The payment id, the idempotency key.
    pub payment_id: String,
    /// The order it pays for.
    pub order_id: String,
    /// The buyer's user id.
    pub buyer_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
}

impl From<&PaymentRequested> for Charge {
    fn from(r: &PaymentRequested) -> Self {
        Charge {
            payment_id: r.payment_id.clone(),
            order_id: r.order_id.clone(),
            buyer_id: r.buyer_id.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
        }
    }
}

/// A refund to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// The payment being refunded; `refund:<payment_id>` is the idempotency key.
    pub payment_id: String,
    /// The order it was for.
    pub order_id: String,
    /// The buyer's user id.
    pub buyer_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// Why, if known.
    pub reason: Option<String>,
}

impl From<&RefundRequested> for Refund {
    fn from(r: &RefundRequested) -> Self {
        Refund {
            payment_id: r.payment_id.clone(),
            order_id: r.order_id.clone(),
            buyer_id: r.buyer_id.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
            reason: r.reason.clone(),
        }
    }
}

/// What a gateway answered to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// The buyer was charged.
    Approved,
    /// The buyer was not charged; `reason` is a code such as those in [`reasons`].
    Declined {
        /// Why.
        reason: String,
    },
}

/// What a gateway answered to a refund. A refund cannot be declined: a gateway that
/// refuses one gives a [`GatewayError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundOutcome {
    /// The money went back to the buyer.
    Refunded,
}

/// The decline reasons the built-in gateways give.
pub mod reasons {
    /// The amount is over the simulated gateway's `decline_over`.
    pub const AMOUNT_OVER_LIMIT: &str = "AMOUNT_OVER_LIMIT";
    /// The buyer is in the simulated gateway's `decline_buyers`.
    pub const BUYER_BLOCKED: &str = "BUYER_BLOCKED";
    /// The payment id fell in the simulated gateway's `decline_ratio`.
    pub const DECLINED_BY_ISSUER: &str = "DECLINED_BY_ISSUER";
    /// An HTTP gateway said DECLINED without a reason.
    pub const DECLINED: &str = "DECLINED";

    /// An HTTP gateway refused a charge with this 4xx status.
    pub fn gateway_refused(status: u16) -> String {
        format!("GATEWAY_REFUSED_{status}")
    }
}

/// Why a gateway call gave no outcome. Except for [`GatewayError::InvalidRequest`],
/// the payment's fate is not known to be "nothing happened", so the caller must not
/// answer the payment on its own (say, as declined): the safe course is to stop and
/// let an operator look, since a replay after the fix asks again under the same
/// idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The gateway could not be reached, or gave no usable answer, in `attempts`
    /// tries (only with `max_attempts` set).
    #[error("payment gateway gave no answer in {attempts} attempts; last: {last_error}")]
    Unavailable {
        /// How many attempts were made.
        attempts: u32,
        /// What went wrong on the last one.
        last_error: String,
    },
    /// The gateway refused the request itself: a refund with any 4xx but 408, 409 and
    /// 429, or any request with 401, 403, 404 or 405 (credentials, URL).
    #[error("payment gateway refused the {operation}: HTTP {status}: {body}")]
    Refused {
        /// `charge` or `refund`.
        operation: &'static str,
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The gateway answered something this protocol does not know.
    #[error("payment gateway answered the {operation} outside the protocol: {message}")]
    Protocol {
        /// `charge` or `refund`.
        operation: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The request could not be made at all (a payment id that cannot be a header
    /// value): nothing was sent, so the record, not the gateway, is at fault.
    #[error("cannot send the {operation} to the payment gateway: {message}")]
    InvalidRequest {
        /// `charge` or `refund`.
        operation: &'static str,
        /// What was wrong.
        message: String,
    },
}

/// A gateway setting that cannot work, named by its field in the `config:` block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct GatewayConfigError {
    /// The field, as written in the `config:` block.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl GatewayConfigError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        GatewayConfigError {
            field,
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------

/// Which gateway a [`GatewayConfig`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayKind {
    /// [`SimulatedGateway`].
    #[default]
    Simulated,
    /// [`HttpGateway`].
    Http,
}

/// The payment authorizer's `config:` block: which gateway, and its settings.
///
/// ```yaml
/// config:
///   gateway: ${PAYMENT_GATEWAY:-simulated}   # simulated | http
///   url: ${PAYMENT_GATEWAY_URL:-}            # http: the base URL
///   authorization: ${PAYMENT_GATEWAY_AUTH:-} # http: Authorization header value
///   timeout: 5s                              # http: per attempt
///   initial_backoff: 100ms                   # http: first retry delay, doubling
///   max_backoff: 5s                          # http: retry delay cap
///   max_attempts: 10                         # http: unset = until answered
///   decline_over: 100000000                  # simulated: minor units
///   decline_buyers: [buyer-1, buyer-2]       # simulated: or "buyer-1,buyer-2"
///   decline_ratio: 0.0                       # simulated: 0.0..=1.0 by payment id
///   latency: 0ms                             # simulated: per call
/// ```
///
/// Every field is optional. An empty value (what `${VAR:-}` gives) is the same as
/// leaving the field out. The settings of the gateway not chosen are accepted and
/// ignored, so one block serves both through `${PAYMENT_GATEWAY:-simulated}`.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `simulated` (the default) or `http`.
    #[serde(default)]
    pub gateway: Option<GatewayKind>,
    /// HTTP: the base URL, `http://` or `https://`. Required for `gateway: http`.
    #[serde(default)]
    pub url: Option<String>,
    /// HTTP: the `Authorization` header value, sent as is (`Bearer …`, `Basic …`).
    #[serde(default)]
    pub authorization: Option<String>,
    /// HTTP: how long one attempt may take, from connecting to the last body byte.
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
    /// HTTP: the wait before the first retry.
    #[serde(default, deserialize_with = "optional_duration")]
    pub initial_backoff: Option<Duration>,
    /// HTTP: the longest wait between attempts (also caps `Retry-After`).
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_backoff: Option<Duration>,
    /// HTTP: attempts before giving up with [`GatewayError::Unavailable`]; unset
    /// tries until answered.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Simulated: decline amounts over this many minor units.
    #[serde(default)]
    pub decline_over: Option<i64>,
    /// Simulated: decline these buyer ids. A list, or one comma-separated string.
    #[serde(default, deserialize_with = "string_list")]
    pub decline_buyers: Vec<String>,
    /// Simulated: the share of payment ids to decline, 0.0 to 1.0.
    #[serde(default)]
    pub decline_ratio: Option<f64>,
    /// Simulated: how long every call takes.
    #[serde(default, deserialize_with = "optional_duration")]
    pub latency: Option<Duration>,
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("gateway", &self.gateway)
            .field("url", &self.url)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_attempts", &self.max_attempts)
            .field("decline_over", &self.decline_over)
            .field("decline_buyers", &self.decline_buyers)
            .field("decline_ratio", &self.decline_ratio)
            .field("latency", &self.latency)
            .finish()
    }
}

impl GatewayConfig {
    /// Reads the processor's `config:` block and builds its gateway. Errors name the
    /// field, with its position in topology.yaml.
    pub fn from_spec(spec: &ProcessorSpec) -> Result<Arc<dyn PaymentGateway>, BuildError> {
        let config: GatewayConfig = spec.config()?;
        config
            .build()
            .map_err(|e| BuildError::at_config(spec, e.field, e.message))
    }

    /// Builds the gateway these settings describe.
    pub fn build(&self) -> Result<Arc<dyn PaymentGateway>, GatewayConfigError> {
        match self.gateway.unwrap_or_default() {
            GatewayKind::Simulated => {
                let defaults = SimulatedGatewayConfig::default();
                let config = SimulatedGatewayConfig {
                    decline_over: self.decline_over.unwrap_or(defaults.decline_over),
                    decline_buyers: self.decline_buyers.iter().cloned().collect(),
                    decline_ratio: self.decline_ratio.unwrap_or(defaults.decline_ratio),
                    latency: self.latency.unwrap_or(defaults.latency),
                };
                Ok(Arc::new(SimulatedGateway::new(config)?))
            }
            GatewayKind::Http => {
                let url = self
                    .url
                    .as_deref()
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| {
                        GatewayConfigError::new(
                            "url",
                            "gateway: http needs the gateway's base URL, and url is empty or \
                             missing (is the variable it comes from set?)",
                        )
                    })?;
                let defaults = HttpGatewayConfig::new(url);
                let config = HttpGatewayConfig {
                    timeout: self.timeout.unwrap_or(defaults.timeout),
                    initial_backoff: self.initial_backoff.unwrap_or(defaults.initial_backoff),
                    max_backoff: self.max_backoff.unwrap_or(defaults.max_backoff),
                    max_attempts: self.max_attempts,
                    authorization: self.authorization.clone().filter(|a| !a.is_empty()),
                    ..defaults
                };
                Ok(Arc::new(HttpGateway::new(config)?))
            }
        }
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(de)?
        .map(|text| parse_duration(&text).map_err(de::Error::custom))
        .transpose()
}

/// A list of strings written as a YAML list or as one comma-separated string (what an
/// environment variable can carry); empty items are dropped.
fn string_list<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings or a comma-separated string")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect())
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok(vec![n.to_string()])
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(vec![n.to_string()])
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                if !item.trim().is_empty() {
                    items.push(item.trim().to_string());
                }
            }
            Ok(items)
        }
    }

    de.deserialize_any(ListVisitor)
}

// ---------------------------------------------------------------------------------
// The simulated gateway
// ---------------------------------------------------------------------------------

/// The rules of a [`SimulatedGateway`].
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedGatewayConfig {
    /// Decline amounts over this many minor units. Default 100,000,000.
    pub decline_over: i64,
    /// Decline these buyers. Default none.
    pub decline_buyers: BTreeSet<String>,
    /// Decline this share of payment ids, 0.0 to 1.0. Default 0.0.
    pub decline_ratio: f64,
    /// How long every call takes. Default zero.
    pub latency: Duration,
}

impl Default for SimulatedGatewayConfig {
    fn default() -> Self {
        SimulatedGatewayConfig {
            decline_over: 100_000_000,
            decline_buyers: BTreeSet::new(),
            decline_ratio: 0.0,
            latency: Duration::ZERO,
        }
    }
}

/// A gateway with no network: deterministic rules, checked in this order: the amount
/// limit, the blocked buyers, the decline ratio. Refunds always succeed. Keeps no
/// state, so idempotency is free: the same charge always gets the same answer.
#[derive(Debug, Clone, Default)]
pub struct SimulatedGateway {
    config: SimulatedGatewayConfig,
}

impl SimulatedGateway {
    /// A simulated gateway with these rules.
    pub fn new(config: SimulatedGatewayConfig) -> Result<Self, GatewayConfigError> {
        if config.decline_over < 0 {
            return Err(GatewayConfigError::new(
                "decline_over",
                format!("must be 0 or more minor units, not {}", config.decline_over),
            ));
        }
        if !(0.0..=1.0).contains(&config.decline_ratio) {
            return Err(GatewayConfigError::new(
                "decline_ratio",
                format!("must be between 0.0 and 1.0, not {}", config.decline_ratio),
            ));
        }
        Ok(SimulatedGateway { config })
    }

    /// The answer to a charge, without the latency.
    pub fn decide(&self, charge: &Charge) -> ChargeOutcome {
        let reason = if charge.amount > self.config.decline_over {
            reasons::AMOUNT_OVER_LIMIT
        } else if self.config.decline_buyers.contains(&charge.buyer_id) {
            reasons::BUYER_BLOCKED
        } else if unit_interval(&charge.payment_id) < self.config.decline_ratio {
            reasons::DECLINED_BY_ISSUER
        } else {
            return ChargeOutcome::Approved;
        };
        ChargeOutcome::Declined {
            reason: reason.to_string(),
        }
    }

    async fn wait(&self) {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
    }
}

impl PaymentGateway for SimulatedGateway {
    fn charge(&self, charge: &Charge) -> GatewayFuture<'_, ChargeOutcome> {
        let outcome = self.decide(charge);
        Box::pin(async move {
            self.wait().await;
            Ok(outcome)
        })
    }

    fn refund(&self, _refund: &Refund) -> GatewayFuture<'_, RefundOutcome> {
        Box::pin(async move {
            self.wait().await;
            Ok(RefundOutcome::Refunded)
        })
    }
}

/// A payment id's place in [0, 1): 64-bit FNV-1a with a final mix, written out because
/// it must never change (a replay must get the same answer after an upgrade, and std's
/// hasher may change between releases).
fn unit_interval(payment_id: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"orderflow.simulated-decline.v1\0"
        .iter()
        .chain(payment_id.as_bytes())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV leaves the low bits of short inputs poorly mixed; this finalizer (invertible
    // xor-shifts and odd multipliers) spreads every input bit over the whole word.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    // The top 53 bits, exactly representable as an f64 fraction.
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

// ---------------------------------------------------------------------------------
// The HTTP gateway
// ---------------------------------------------------------------------------------

/// The settings of an [`HttpGateway`].
#[derive(Clone, PartialEq, Eq)]
pub struct HttpGatewayConfig {
    /// The base URL; `/charges` and `/refunds` go under it.
    pub url: String,
    /// The `Authorization` header value, if any.
    pub authorization: Option<String>,
    /// How long one attempt may take, from connecting to the last body byte.
    /// Default 5s.
    pub timeout: Duration,
    /// The wait before the first retry; each later wait doubles. Default 100ms.
    pub initial_backoff: Duration,
    /// The longest wait between attempts, also the cap on `Retry-After`. Default 5s.
    pub max_backoff: Duration,
    /// Attempts before giving up; `None` (the default) tries until answered.
    pub max_attempts: Option<u32>,
}

impl fmt::Debug for HttpGatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpGatewayConfig")
            .field("url", &self.url)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl HttpGatewayConfig {
    /// The defaults, for a gateway at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        HttpGatewayConfig {
            url: url.into(),
            authorization: None,
            timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

/// The wait before retry number `retry` (1 for the first retry): `initial` doubled
/// `retry - 1` times, at most `max`.
pub fn backoff_delay(initial: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 1u32
        .checked_shl(retry.saturating_sub(1))
        .unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

/// The wait before retry number `retry`: the server's `Retry-After` when it gave one,
/// else the backoff, either way at most `max`.
fn retry_delay(
    initial: Duration,
    max: Duration,
    retry: u32,
    retry_after: Option<Duration>,
) -> Duration {
    match retry_after {
        Some(wait) => wait.min(max),
        None => backoff_delay(initial, max, retry),
    }
}

/// `Retry-After` in seconds. The HTTP-date form is ignored (the backoff applies).
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The REST gateway of the module docs.
pub struct HttpGateway {
    client: reqwest::Client,
    charges_url: reqwest::Url,
    refunds_url: reqwest::Url,
    authorization: Option<HeaderValue>,
    config: HttpGatewayConfig,
}

impl fmt::Debug for HttpGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpGateway")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HttpGateway {
    /// A gateway with these settings; checks them, naming the field that is wrong.
    pub fn new(config: HttpGatewayConfig) -> Result<Self, GatewayConfigError> {
        let base = config.url.trim().trim_end_matches('/');
        let parsed = reqwest::Url::parse(base).map_err(|e| {
            GatewayConfigError::new("url", format!("{:?} is not a URL: {e}", config.url))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(GatewayConfigError::new(
                "url",
                format!("{:?} must start with http:// or https://", config.url),
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(GatewayConfigError::new(
                "url",
                format!(
                    "{:?} is a base URL: no query or fragment (`/charges` and `/refunds` go under it)",
                    config.url
                ),
            ));
        }
        let endpoint = |path: &str| {
            reqwest::Url::parse(&format!("{base}/{path}"))
                .map_err(|e| GatewayConfigError::new("url", format!("{:?}: {e}", config.url)))
        };
        let charges_url = endpoint("charges")?;
        let refunds_url = endpoint("refunds")?;
        if config.timeout.is_zero() {
            return Err(GatewayConfigError::new("timeout", "must be more than 0"));
        }
        if config.initial_backoff.is_zero() {
            return Err(GatewayConfigError::new(
                "initial_backoff",
                "must be more than 0 (0 would retry a gateway that is down in a tight loop)",
            ));
        }
        if config.max_backoff < config.initial_backoff {
            return Err(GatewayConfigError::new(
                "max_backoff",
                format!(
                    "{} is less than initial_backoff {}",
                    format_duration(config.max_backoff),
                    format_duration(config.initial_backoff)
                ),
            ));
        }
        if config.max_attempts == Some(0) {
            return Err(GatewayConfigError::new(
                "max_attempts",
                "must be at least 1 (leave it out to try until answered)",
            ));
        }
        let authorization = match &config.authorization {
            Some(value) => {
                let mut header = HeaderValue::from_str(value).map_err(|_| {
                    GatewayConfigError::new(
                        "authorization",
                        "is not a valid header value (control characters or a line break?)",
                    )
                })?;
                header.set_sensitive(true);
                Some(header)
            }
            None => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                GatewayConfigError::new("url", format!("cannot make an HTTP client: {e}"))
            })?;
        Ok(HttpGateway {
            client,
            charges_url,
            refunds_url,
            authorization,
            config,
        })
    }

    /// Posts `body` until an attempt gives an answer `read` accepts, or fails for
    /// good, or the attempts run out.
    async fn call<T>(
        &self,
        operation: &'static str,
        url: &reqwest::Url,
        idempotency_key: &str,
        body: &(impl Serialize + Sync),
        read: impl Fn(StatusCode, &[u8]) -> Attempt<T>,
    ) -> Result<T, GatewayError> {
        let mut attempt: u32 = 1;
        loop {
            let result = tokio::time::timeout(
                self.config.timeout,
                self.attempt(url, idempotency_key, body),
            )
            .await;
            let (last_error, retry_after) = match result {
                Err(_elapsed) => (
                    format!("no answer within {}", format_duration(self.config.timeout)),
                    None,
                ),
                Ok(Err(error)) if error.is_builder() => {
                    return Err(GatewayError::InvalidRequest {
                        operation,
                        message: chain(&error),
                    });
                }
                Ok(Err(error)) => (chain(&error), None),
                Ok(Ok((status, headers, bytes))) => match read(status, &bytes) {
                    Attempt::Answer(answer) => return Ok(answer),
                    Attempt::Fail(error) => return Err(error),
                    Attempt::Retry => (
                        format!("HTTP {status}: {}", snippet(&bytes)),
                        parse_retry_after(&headers),
                    ),
                },
            };
            if self.config.max_attempts.is_some_and(|max| attempt >= max) {
                return Err(GatewayError::Unavailable {
                    attempts: attempt,
                    last_error,
                });
            }
            let delay = retry_delay(
                self.config.initial_backoff,
                self.config.max_backoff,
                attempt,
                retry_after,
            );
            tracing::warn!(
                operation,
                idempotency_key,
                attempt,
                retry_in_ms = delay.as_millis() as u64,
                error = %last_error,
                "payment gateway call failed, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// One POST, its whole body read.
    async fn attempt(
        &self,
        url: &reqwest::Url,
        idempotency_key: &str,
        body: &(impl Serialize + Sync),
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), reqwest::Error> {
        let mut request = self
            .client
            .post(url.clone())
            .header("Idempotency-Key", idempotency_key)
            .header(ACCEPT, "application/json")
            .json(body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        Ok((status, headers, bytes.to_vec()))
    }
}

/// What one attempt came to.
enum Attempt<T> {
    /// The gateway answered.
    Answer(T),
    /// Worth another attempt.
    Retry,
    /// Not worth another attempt.
    Fail(GatewayError),
}

/// How a status that is not 2xx sorts, for both operations.
enum Failure {
    Retry,
    /// The gateway refused us (credentials, URL), whatever the operation.
    RefusedUs,
    /// The gateway refused the request.
    Refused,
    /// Not part of the protocol (1xx, 3xx).
    Unexpected,
}

fn sort_failure(status: StatusCode) -> Failure {
    match status.as_u16() {
        408 | 409 | 429 => Failure::Retry,
        401 | 403 | 404 | 405 => Failure::RefusedUs,
        _ if status.is_server_error() => Failure::Retry,
        _ if status.is_client_error() => Failure::Refused,
        _ => Failure::Unexpected,
    }
}

fn refused(operation: &'static str, status: StatusCode, body: &[u8]) -> GatewayError {
    GatewayError::Refused {
        operation,
        status: status.as_u16(),
        body: snippet(body),
    }
}

fn unexpected(operation: &'static str, message: String) -> GatewayError {
    GatewayError::Protocol { operation, message }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChargeBody<'a> {
    payment_id: &'a str,
    order_id: &'a str,
    buyer_id: &'a str,
    amount: i64,
    currency: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RefundBody<'a> {
    payment_id: &'a str,
    order_id: &'a str,
    buyer_id: &'a str,
    amount: i64,
    currency: &'a str,
    reason: Option<&'a str>,
}

#[derive(Deserialize)]
struct Reply {
    status: String,
    #[serde(default)]
    reason: Option<String>,
}

fn read_charge(status: StatusCode, body: &[u8]) -> Attempt<ChargeOutcome> {
    const OP: &str = "charge";
    if status.is_success() {
        let reply: Reply = match serde_json::from_slice(body) {
            Ok(reply) => reply,
            Err(e) => {
                return Attempt::Fail(unexpected(
                    OP,
                    format!(
                        "HTTP {status} with an unreadable body ({e}): {}",
                        snippet(body)
                    ),
                ));
            }
        };
        return match reply.status.to_ascii_uppercase().as_str() {
            "APPROVED" => Attempt::Answer(ChargeOutcome::Approved),
            "DECLINED" => Attempt::Answer(ChargeOutcome::Declined {
                reason: reply
                    .reason
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| reasons::DECLINED.to_string()),
            }),
            other => Attempt::Fail(unexpected(
                OP,
                format!("status {other:?}, expected APPROVED or DECLINED"),
            )),
        };
    }
    match sort_failure(status) {
        Failure::Retry => Attempt::Retry,
        Failure::RefusedUs => Attempt::Fail(refused(OP, status, body)),
        Failure::Refused => Attempt::Answer(ChargeOutcome::Declined {
            reason: reasons::gateway_refused(status.as_u16()),
        }),
        Failure::Unexpected => Attempt::Fail(unexpected(OP, format!("HTTP {status}"))),
    }
}

fn read_refund(status: StatusCode, body: &[u8]) -> Attempt<RefundOutcome> {
    const OP: &str = "refund";
    if status.is_success() {
        return match serde_json::from_slice::<Reply>(body) {
            Ok(reply) if reply.status.eq_ignore_ascii_case("REFUNDED") => {
                Attempt::Answer(RefundOutcome::Refunded)
            }
            Ok(reply) => Attempt::Fail(unexpected(
                OP,
                format!("status {:?}, expected REFUNDED", reply.status),
            )),
            Err(e) => Attempt::Fail(unexpected(
                OP,
                format!(
                    "HTTP {status} with an unreadable body ({e}): {}",
                    snippet(body)
                ),
            )),
        };
    }
    match sort_failure(status) {
        Failure::Retry => Attempt::Retry,
        Failure::RefusedUs | Failure::Refused => Attempt::Fail(refused(OP, status, body)),
        Failure::Unexpected => Attempt::Fail(unexpected(OP, format!("HTTP {status}"))),
    }
}

impl PaymentGateway for HttpGateway {
    fn charge(&self, charge: &Charge) -> GatewayFuture<'_, ChargeOutcome> {
        let charge = charge.clone();
        Box::pin(async move {
            let body = ChargeBody {
                payment_id: &charge.payment_id,
                order_id: &charge.order_id,
                buyer_id: &charge.buyer_id,
                amount: charge.amount,
                currency: &charge.currency,
            };
            self.call(
                "charge",
                &self.charges_url,
                &charge.payment_id,
                &body,
                read_charge,
            )
            .await
        })
    }

    fn refund(&self, refund: &Refund) -> GatewayFuture<'_, RefundOutcome> {
        let refund = refund.clone();
        Box::pin(async move {
            let body = RefundBody {
                payment_id: &refund.payment_id,
                order_id: &refund.order_id,
                buyer_id: &refund.buyer_id,
                amount: refund.amount,
                currency: &refund.currency,
                reason: refund.reason.as_deref(),
            };
            let key = format!("refund:{}", refund.payment_id);
            self.call("refund", &self.refunds_url, &key, &body, read_refund)
                .await
        })
    }
}

/// An error with its sources, `a: b: c`: reqwest's own message rarely says why.
fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The start of a response body, for messages.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_from_the_initial_delay() {
        let (initial, max) = (100 * MS, 5_000 * MS);
        let waits: Vec<Duration> = (1..=8).map(|n| backoff_delay(initial, max, n)).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000].map(|ms| ms * MS)
        );
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let max = Duration::from_secs(5);
        for retry in [31, 32, 33, 64, 1_000, u32::MAX] {
            assert_eq!(backoff_delay(100 * MS, max, retry), max, "retry {retry}");
        }
        assert_eq!(
            backoff_delay(Duration::MAX, Duration::MAX, u32::MAX),
            Duration::MAX
        );
        // Retry 0 does not exist; it reads as the first.
        assert_eq!(backoff_delay(100 * MS, max, 0), 100 * MS);
    }

    #[test]
    fn retry_after_replaces_the_backoff_capped_at_the_max() {
        let (initial, max) = (100 * MS, 5_000 * MS);
        assert_eq!(
            retry_delay(initial, max, 1, Some(Duration::from_secs(2))),
            2_000 * MS
        );
        assert_eq!(
            retry_delay(initial, max, 1, Some(Duration::from_secs(60))),
            max
        );
        assert_eq!(
            retry_delay(initial, max, 1, Some(Duration::ZERO)),
            Duration::ZERO
        );
        assert_eq!(retry_delay(initial, max, 3, None), 400 * MS);
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(parse_retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 3 "));
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&headers), None);
    }

    #[test]
    fn statuses_sort_as_documented() {
        let charge = |status: u16, body: &str| match read_charge(
            StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
        ) {
            Attempt::Answer(outcome) => format!("{outcome:?}"),
            Attempt::Retry => "retry".to_string(),
            Attempt::Fail(error) => format!("fail: {error}"),
        };
        assert_eq!(charge(200, r#"{"status":"APPROVED"}"#), "Approved");
        assert_eq!(
            charge(201, r#"{"status":"declined","reason":null}"#),
            r#"Declined { reason: "DECLINED" }"#
        );
        for status in [408, 409, 429, 500, 502, 503, 504] {
            assert_eq!(charge(status, ""), "retry", "{status}");
        }
        assert_eq!(
            charge(422, "no"),
            r#"Declined { reason: "GATEWAY_REFUSED_422" }"#
        );
        assert!(charge(401, "").starts_with("fail: payment gateway refused the charge: HTTP 401"));
        assert!(charge(200, "<html>").starts_with("fail: payment gateway answered"));
        assert!(charge(200, r#"{"status":"PENDING"}"#).contains("PENDING"));
        assert!(charge(302, "").starts_with("fail:"));
    }

    #[test]
    fn the_decline_hash_is_fixed() {
        // Pinned: a change here would give replayed payments other answers after an
        // upgrade.
        assert_eq!(unit_interval("payment-1"), 0.47504688600061573);
        assert_eq!(unit_interval(""), 0.022327065849471417);
        assert_eq!(
            unit_interval("00000000-0000-0000-0000-000000000000"),
            0.649219184970899
        );
    }

    #[test]
    fn snippets_are_short() {
        assert_eq!(snippet(b"  short  "), "short");
        let long = "é".repeat(500);
        assert_eq!(snippet(long.as_bytes()).chars().count(), 201);
    }
}
