//! Rate limits per client address: a token bucket for every request, and a stricter
//! one for the password routes (login, register) so guessing passwords is slow. A
//! refused request gets 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket's shape: it refills at `per_second` and holds at most `burst`.
/// A `per_second` of zero turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// How many requests may come at once after a quiet spell.
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const OFF: RateLimit = RateLimit {
        per_second: 0.0,
        burst: 0,
    };

    /// Whether the limit is on.
    pub fn is_on(&self) -> bool {
        self.per_second > 0.0 && self.burst > 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Keep at most this many idle clients' buckets; beyond it, full buckets are dropped
/// (a full bucket is what a new client gets anyway).
const MAX_TRACKED: usize = 50_000;

/// One token bucket per client address.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Limiter {
    /// A limiter of that shape.
    pub fn new(limit: RateLimit) -> Self {
        Limiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `client`; `Err` holds how long until one is there.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        if !self.limit.is_on() {
            return Ok(());
        }
        let burst = f64::from(self.limit.burst);
        let rate = self.limit.per_second;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_empties_refills_and_is_per_client() {
        let limiter = Limiter::new(RateLimit {
            per_second: 2.0,
            burst: 3,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(a, t0).is_ok());
        }
        let wait = limiter.check_at(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(
            limiter.check_at(b, t0).is_ok(),
            "another client has its own bucket"
        );
        assert!(limiter.check_at(a, t0 + Duration::from_millis(500)).is_ok());
        assert!(
            limiter
                .check_at(a, t0 + Duration::from_millis(500))
                .is_err()
        );
    }

    #[test]
    fn off_lets_everything_through() {
        let limiter = Limiter::new(RateLimit::OFF);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            assert!(limiter.check(a).is_ok());
        }
    }
}
