//! Per-user rate limits: one token bucket per user and route class (placing orders, claiming
//! coupons, sending learning heartbeats), keyed by the user id of the caller's token, so one
//! client that hammers a route is refused with 429 `rate_limited` and a `Retry-After` while
//! every other user keeps their own full bucket.
//!
//! Guarantees:
//! - Over any window of `t` seconds a user gets at most `burst + rate * t` requests of one
//!   class past the limiter (GCRA, `governor`); the refusal names the wait, rounded up to whole
//!   seconds and at least 1.
//! - Memory is bounded: a user's bucket is kept only while it differs from a full one, plus
//!   one token interval (at most `(burst + 1) / rate` seconds after the last request); idle
//!   buckets are swept on access, at most every `SWEEP_INTERVAL`, and the map is shrunk after.
//!   A map that still holds `keys_max` users after a sweep refuses every request of that class
//!   with 503 `overloaded` (fail closed) until a sweep frees room: that many users each active
//!   within the last few seconds is more than one node serves, and refusing is cheaper than
//!   growing without bound.
//! - The check runs after authentication (it needs the user id) and before the body is parsed.
//! - Every refusal is counted per class and reason (`tianji_rate_limited_total`).

use super::auth::Caller;
use super::errors::ApiError;
use super::AppState;
use crate::domain::UserId;
use crate::metrics::RateLimitMetrics;
use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, ResponseError};
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::future::{ready, Ready};
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often idle buckets are swept while requests arrive.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often a full map is swept again while it stays full (each sweep walks the whole map).
pub const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// The most requests per second or per minute a rate may name, and the largest burst.
pub const RATE_COUNT_MAX: u32 = 1_000_000;

/// A sustained rate and a burst: `count` requests per `per`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: NonZeroU32,
    per: Duration,
    burst: NonZeroU32,
}

impl Rate {
    /// `count` per second with `burst`; `None` if either is zero.
    pub fn per_second(count: u32, burst: u32) -> Option<Rate> {
        Some(Rate { count: NonZeroU32::new(count)?, per: Duration::from_secs(1), burst: NonZeroU32::new(burst)? })
    }

    /// Parses a setting: `off` or `0` (no limit, `Ok(None)`), or `N/s` or `N/m` with an
    /// optional `,BURST` (the burst is `N` when not given): `5/s,10`, `120/m`.
    pub fn parse(raw: &str) -> Result<Option<Rate>, String> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("off") || raw == "0" {
            return Ok(None);
        }
        let expected = || format!("expected off, or N/s or N/m with an optional ,BURST (e.g. 5/s,10), got {raw:?}");
        let (rate, burst) = match raw.split_once(',') {
            Some((rate, burst)) => (rate.trim(), Some(burst.trim())),
            None => (raw, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(expected)?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return Err(expected()),
        };
        let number = |text: &str| -> Result<NonZeroU32, String> {
            let value: u32 = text.trim().parse().map_err(|_| expected())?;
            if !(1..=RATE_COUNT_MAX).contains(&value) {
                return Err(format!("counts must be between 1 and {RATE_COUNT_MAX}, got {value}"));
            }
            Ok(NonZeroU32::new(value).expect("checked to be at least 1 above"))
        };
        let count = number(count)?;
        let burst = match burst {
            Some(burst) => number(burst)?,
            None => count,
        };
        Ok(Some(Rate { count, per, burst }))
    }

    /// The quota: one token back every `per / count`, at most `burst` held.
    pub fn quota(&self) -> Quota {
        let interval = self.per / self.count.get();
        assert!(!interval.is_zero(), "RATE_COUNT_MAX keeps the interval above zero");
        Quota::with_period(interval).expect("a non-zero period").allow_burst(self.burst)
    }
}

/// The rate-limit settings, checked at start (see `config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// `POST /v1/orders`, per user.
    pub orders: Option<Rate>,
    /// `POST /v1/coupons/receive`, per user.
    pub coupons: Option<Rate>,
    /// `POST /v1/learning/heartbeats`, per user.
    pub heartbeats: Option<Rate>,
    /// Reads that go to the database (`GET /v1/orders`, `/v1/orders/{id}`, `/v1/coupons`), per
    /// user.
    pub reads: Option<Rate>,
    /// The most users one route class tracks at once.
    pub keys_max: usize,
}

impl Default for RateLimitSettings {
    /// For a real sale (see the README): a person orders or claims a few times a second at most
    /// (a click, a retry), a player beats every 15 s, a page of orders or coupons is read a few
    /// times a second at most.
    fn default() -> Self {
        RateLimitSettings {
            orders: Rate::per_second(5, 10),
            coupons: Rate::per_second(5, 10),
            heartbeats: Rate::per_second(1, 5),
            reads: Rate::per_second(20, 40),
            keys_max: 262_144,
        }
    }
}

/// Why a request did not pass its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This user is over the rate; a request can pass after `retry_after`.
    RateLimited { retry_after: Duration },
    /// The map holds `keys_max` users even after a sweep.
    Full,
}

/// The buckets of one route class, one per user, with bounded memory.
pub struct UserBuckets<C: Clock = DefaultClock> {
    limiter: RateLimiter<UserId, DashMapStateStore<UserId>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    start: C::Instant,
    keys_max: usize,
    /// Nanoseconds after `start` of the last sweep.
    swept_at_nanos: AtomicU64,
    refused_total: AtomicU64,
    metrics: RateLimitMetrics,
}

impl UserBuckets<DefaultClock> {
    pub fn new(rate: Rate, keys_max: usize) -> Self {
        Self::with_clock(rate, keys_max, DefaultClock::default())
    }
}

impl<C: Clock + Clone> UserBuckets<C> {
    /// Buckets that read time from `clock` (a `FakeRelativeClock` in tests).
    pub fn with_clock(rate: Rate, keys_max: usize, clock: C) -> Self {
        assert!(keys_max > 0, "at least one user can be tracked");
        let start = clock.now();
        UserBuckets {
            limiter: RateLimiter::dashmap_with_clock(rate.quota(), clock.clone()),
            clock,
            start,
            keys_max,
            swept_at_nanos: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            metrics: RateLimitMetrics::noop(),
        }
    }

    /// Counts this class's refusals on `metrics`.
    pub fn measured(mut self, metrics: RateLimitMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Takes one token from `user`'s bucket.
    pub fn check(&self, user: UserId) -> Result<(), Refusal> {
        let now = self.clock.now();
        let since_start = now.duration_since(self.start).as_u64();
        let full = self.limiter.len() >= self.keys_max;
        let interval = if full { FULL_SWEEP_INTERVAL } else { SWEEP_INTERVAL };
        if full || since_start.saturating_sub(self.swept_at_nanos.load(Ordering::Relaxed)) >= nanos(interval) {
            self.sweep_if_due(since_start, interval);
        }
        if self.limiter.len() >= self.keys_max {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            self.metrics.keys_full.increment(1);
            return Err(Refusal::Full);
        }
        self.limiter.check_key(&user).map_err(|not_until| {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            self.metrics.rate_limited.increment(1);
            Refusal::RateLimited { retry_after: not_until.wait_time_from(self.clock.now()) }
        })
    }

    /// Users with a bucket that is not full (an estimate under concurrent checks).
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Requests refused so far, for either reason.
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    /// Drops the buckets that are full again and gives the memory back; one caller sweeps,
    /// the others go on.
    fn sweep_if_due(&self, since_start: u64, interval: Duration) {
        let swept_at = self.swept_at_nanos.load(Ordering::Relaxed);
        if since_start.saturating_sub(swept_at) < nanos(interval) {
            return;
        }
        let won = self.swept_at_nanos.compare_exchange(swept_at, since_start, Ordering::AcqRel, Ordering::Relaxed);
        if won.is_err() {
            return;
        }
        let before = self.limiter.len();
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        tracing::debug!(before, after = self.limiter.len(), "rate-limit buckets swept");
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The buckets of every limited route class; a class set `off` has none.
pub struct RateLimits {
    orders: Option<UserBuckets>,
    coupons: Option<UserBuckets>,
    heartbeats: Option<UserBuckets>,
    reads: Option<UserBuckets>,
}

impl RateLimits {
    /// The limits of `settings`, counting refusals on `metrics`.
    pub fn new(settings: &RateLimitSettings, metrics: &crate::metrics::Metrics) -> Self {
        // A class set `off` still registers its counters: they stay 0, and a dashboard's
        // series exist on every node.
        let buckets = |rate: Option<Rate>, class: &'static str| {
            let metrics = RateLimitMetrics::new(metrics, class);
            rate.map(|rate| UserBuckets::new(rate, settings.keys_max).measured(metrics))
        };
        RateLimits {
            orders: buckets(settings.orders, Orders::NAME),
            coupons: buckets(settings.coupons, Coupons::NAME),
            heartbeats: buckets(settings.heartbeats, Heartbeats::NAME),
            reads: buckets(settings.reads, Reads::NAME),
        }
    }
}

/// A class of routes that shares one bucket per user.
pub trait RouteClass {
    const NAME: &'static str;
    fn buckets(limits: &RateLimits) -> Option<&UserBuckets>;
}

/// `POST /v1/orders`.
pub struct Orders;
/// `POST /v1/coupons/receive`.
pub struct Coupons;
/// `POST /v1/learning/heartbeats`.
pub struct Heartbeats;
/// Reads that go to the database: `GET /v1/orders`, `/v1/orders/{id}`, `/v1/coupons`.
pub struct Reads;

impl RouteClass for Orders {
    const NAME: &'static str = "orders";
    fn buckets(limits: &RateLimits) -> Option<&UserBuckets> {
        limits.orders.as_ref()
    }
}

impl RouteClass for Coupons {
    const NAME: &'static str = "coupons";
    fn buckets(limits: &RateLimits) -> Option<&UserBuckets> {
        limits.coupons.as_ref()
    }
}

impl RouteClass for Heartbeats {
    const NAME: &'static str = "heartbeats";
    fn buckets(limits: &RateLimits) -> Option<&UserBuckets> {
        limits.heartbeats.as_ref()
    }
}

impl RouteClass for Reads {
    const NAME: &'static str = "reads";
    fn buckets(limits: &RateLimits) -> Option<&UserBuckets> {
        limits.reads.as_ref()
    }
}

/// The authenticated caller of a route of class `R`, past `R`'s bucket. Use it in place of
/// `Caller`: it authenticates first (401 before 429) and derefs to the `Caller`.
pub struct RateLimited<R> {
    caller: Caller,
    _class: PhantomData<R>,
}

impl<R> Deref for RateLimited<R> {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl<R: RouteClass> FromRequest for RateLimited<R> {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        ready(admit::<R>(request, payload))
    }
}

fn admit<R: RouteClass>(request: &HttpRequest, payload: &mut Payload) -> Result<RateLimited<R>, actix_web::Error> {
    let caller = Caller::from_request(request, payload).into_inner()?;
    let state = request
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal("AppState missing from app data"))?;
    let Some(buckets) = R::buckets(&state.limits) else {
        return Ok(RateLimited { caller, _class: PhantomData });
    };
    match buckets.check(caller.user_id) {
        Ok(()) => Ok(RateLimited { caller, _class: PhantomData }),
        Err(Refusal::RateLimited { retry_after }) => {
            tracing::debug!(user_id = %caller.user_id, class = R::NAME, ?retry_after, "rate limited");
            Err(rate_limited(R::NAME, retry_after))
        }
        Err(Refusal::Full) => {
            tracing::warn!(class = R::NAME, "rate-limit map full: request refused");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "too many active users right now; retry shortly",
            )
            .into())
        }
    }
}

/// 429 `rate_limited` with `Retry-After` in whole seconds, rounded up, at least 1.
fn rate_limited(class: &str, retry_after: Duration) -> actix_web::Error {
    let seconds = retry_after_secs(retry_after);
    let error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many {class} requests from this user; retry in {seconds} s"),
    );
    let mut response = error.error_response();
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    actix_web::error::InternalError::from_response(error, response).into()
}

/// A wait in whole seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn user(id: i64) -> UserId {
        UserId::new(id)
    }

    fn buckets(rate: &str, keys_max: usize) -> (UserBuckets<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let rate = Rate::parse(rate).unwrap().unwrap();
        (UserBuckets::with_clock(rate, keys_max, clock.clone()), clock)
    }

    #[test]
    fn settings_parse() {
        let cases: &[(&str, Result<Option<Rate>, ()>)] = &[
            ("off", Ok(None)),
            ("OFF", Ok(None)),
            ("0", Ok(None)),
            ("5/s,10", Ok(Rate::per_second(5, 10))),
            (" 5/s , 10 ", Ok(Rate::per_second(5, 10))),
            ("5/s", Ok(Rate::per_second(5, 5))),
            ("5", Err(())),
            ("5/h", Err(())),
            ("0/s", Err(())),
            ("5/s,0", Err(())),
            ("-1/s", Err(())),
            ("5/s,x", Err(())),
            ("1000001/s", Err(())),
        ];
        for (raw, expected) in cases {
            assert_eq!(Rate::parse(raw).map_err(|_| ()), *expected, "{raw}");
        }
        let per_minute = Rate::parse("120/m,3").unwrap().unwrap();
        assert_eq!(per_minute.quota().replenish_interval(), Duration::from_millis(500));
        assert_eq!(per_minute.quota().burst_size().get(), 3);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let cases = [(0, 1), (1, 1), (999_999_999, 1), (1_000_000_000, 1), (1_000_000_001, 2), (2_500_000_000, 3)];
        for (wait_nanos, seconds) in cases {
            assert_eq!(retry_after_secs(Duration::from_nanos(wait_nanos)), seconds, "{wait_nanos} ns");
        }
    }

    /// Ten times the rate for ten seconds: exactly the burst plus one per interval pass.
    #[test]
    fn a_user_at_ten_times_the_rate_gets_burst_plus_rate_times_time() {
        let (buckets, clock) = buckets("5/s,10", 16);
        let (mut accepted, mut refused) = (0, 0);
        // 50 requests a second for 10 s: one every 20 ms.
        for _ in 0..500 {
            match buckets.check(user(1)) {
                Ok(()) => accepted += 1,
                Err(Refusal::RateLimited { retry_after }) => {
                    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(200));
                    refused += 1;
                }
                Err(Refusal::Full) => panic!("one user never fills the map"),
            }
            clock.advance(Duration::from_millis(20));
        }
        // 10 at once, then one per 200 ms over the 9.98 s after the first request.
        assert_eq!(accepted, 10 + 49);
        assert_eq!(accepted + refused, 500);
        assert_eq!(buckets.refused_total(), refused as u64);
    }

    #[test]
    fn one_user_over_the_rate_leaves_others_their_full_burst() {
        let (buckets, _clock) = buckets("5/s,10", 16);
        for _ in 0..10 {
            buckets.check(user(1)).unwrap();
        }
        assert!(matches!(buckets.check(user(1)), Err(Refusal::RateLimited { .. })));
        for _ in 0..10 {
            buckets.check(user(2)).expect("another user has their own bucket");
        }
        assert!(matches!(buckets.check(user(2)), Err(Refusal::RateLimited { .. })));
    }

    #[test]
    fn retry_after_is_the_wait_for_one_token() {
        let (buckets, clock) = buckets("1/m,1", 16);
        buckets.check(user(1)).unwrap();
        clock.advance(Duration::from_secs(15));
        assert_eq!(buckets.check(user(1)), Err(Refusal::RateLimited { retry_after: Duration::from_secs(45) }));
        clock.advance(Duration::from_secs(45));
        assert_eq!(buckets.check(user(1)), Ok(()));
    }

    #[test]
    fn idle_buckets_are_swept() {
        let (buckets, clock) = buckets("5/s,10", 1_000);
        for id in 1..=100 {
            buckets.check(user(id)).unwrap();
        }
        assert_eq!(buckets.len(), 100);
        // Still within SWEEP_INTERVAL: nothing is swept yet, however idle.
        clock.advance(SWEEP_INTERVAL - Duration::from_millis(1));
        buckets.check(user(1)).unwrap();
        assert_eq!(buckets.len(), 100);
        // The next check after the interval sweeps: only user 1 (active 1 ms ago) stays,
        // plus the caller of this check.
        clock.advance(Duration::from_millis(1));
        buckets.check(user(500)).unwrap();
        assert_eq!(buckets.len(), 2);
        // An idle user comes back to a full bucket.
        for _ in 0..10 {
            buckets.check(user(2)).unwrap();
        }
    }

    #[test]
    fn a_full_map_refuses_until_a_sweep_frees_room() {
        let (buckets, clock) = buckets("1/s,5", 3);
        for id in 1..=3 {
            buckets.check(user(id)).unwrap();
        }
        // Every bucket is still in use (1 s per token): the map stays full.
        assert_eq!(buckets.check(user(4)), Err(Refusal::Full));
        assert_eq!(buckets.check(user(1)), Err(Refusal::Full), "fails closed for everyone");
        assert_eq!(buckets.len(), 3, "the map never grows past keys_max");
        // A bucket is full again 1 s on and swept one token interval later, on the first
        // check after FULL_SWEEP_INTERVAL.
        clock.advance(Duration::from_secs(2));
        assert_eq!(buckets.check(user(4)), Ok(()));
        assert_eq!(buckets.len(), 1);
        assert_eq!(buckets.refused_total(), 2);
    }
}
