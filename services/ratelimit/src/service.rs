//! `ShouldRateLimit` with envoyproxy/ratelimit's semantics:
//!
//! 1. Each descriptor is looked up ([`crate::matching`]). Every matched rule's `replaces`
//!    names are collected (unlimited rules' too); then unlimited rules, and rules whose
//!    `name` some matched rule replaces, are dropped: they are neither counted nor
//!    reported.
//! 2. Hits: the descriptor's `hits_addend` if set (an explicit 0 reads the counter without
//!    charging it), else the request's, where 0 means 1.
//! 3. Every remaining limit's counter for the current window gets its hits, in one
//!    backend call; the count after the increment is compared: over limit when
//!    `count > requests_per_unit`. Windows are upstream's fixed ones, but for the year,
//!    which is the calendar year ([`crate::units`]).
//! 4. Statuses, one per descriptor in order: no limit → `OK` with neither limit nor
//!    remaining; unlimited → `OK` with `limit_remaining` u32::MAX; otherwise the code,
//!    `current_limit`, `limit_remaining` (0 when over) and `duration_until_reset`. A rule
//!    in `shadow_mode` reports `OK` even when over (and counts it in `shadow_mode`).
//! 5. Overall `OVER_LIMIT` when any descriptor is over, or when every `quota_mode`
//!    descriptor is (quota descriptors alone do not block); the global shadow mode turns
//!    it into `OK`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tollgate_ratelimit_proto::{
    Code, DescriptorStatus, RateLimit, RateLimitRequest, RateLimitResponse,
};

use crate::config::RateLimitConfig;
use crate::limiter::{Clock, Increment, Limiter};
use crate::matching::{lookup, Matched};
use crate::metrics::Metrics;
use crate::proto::rate_limit_service_server;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Prepended to every counter key (upstream's `CACHE_KEY_PREFIX`).
    pub cache_key_prefix: String,
    /// Every response `OK`, whatever the counters say (upstream's `SHADOW_MODE`).
    pub global_shadow_mode: bool,
    /// Share of the limit above which hits count as `near_limit` (upstream's 0.8).
    pub near_limit_ratio: f32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cache_key_prefix: String::new(),
            global_shadow_mode: false,
            near_limit_ratio: 0.8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceError {
    /// The request cannot be answered (empty domain, no descriptors, bad override).
    InvalidRequest(String),
    /// The counters' backend failed.
    Backend(String),
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceError::InvalidRequest(message) | ServiceError::Backend(message) => {
                f.write_str(message)
            }
        }
    }
}

pub struct RateLimitService {
    config: ArcSwap<RateLimitConfig>,
    limiter: Arc<dyn Limiter>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    settings: Settings,
}

impl RateLimitService {
    pub fn new(
        config: RateLimitConfig,
        limiter: Arc<dyn Limiter>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Self {
        RateLimitService {
            config: ArcSwap::from_pointee(config),
            limiter,
            clock,
            metrics,
            settings,
        }
    }

    /// Replaces the configuration; requests in flight finish with the one they started
    /// with. Counters are not touched.
    pub fn set_config(&self, config: RateLimitConfig) {
        self.config.store(Arc::new(config));
    }

    pub fn config(&self) -> Arc<RateLimitConfig> {
        self.config.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn limiter_name(&self) -> &'static str {
        self.limiter.name()
    }

    pub async fn should_rate_limit(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, ServiceError> {
        if request.domain.is_empty() {
            return Err(ServiceError::InvalidRequest(
                "rate limit domain must not be empty".into(),
            ));
        }
        if request.descriptors.is_empty() {
            return Err(ServiceError::InvalidRequest(
                "rate limit descriptor list must not be empty".into(),
            ));
        }
        let config = self.config.load();
        let count = request.descriptors.len();

        // 1. limits, unlimited, replaces
        let mut limits: Vec<Option<Matched>> = request
            .descriptors
            .iter()
            .map(|descriptor| lookup(&config.domains, &request.domain, descriptor, &self.metrics))
            .collect();
        let replaced: Vec<String> = limits
            .iter()
            .flatten()
            .flat_map(|matched| matched.rule.replaces.iter().cloned())
            .collect();
        let mut unlimited = vec![false; count];
        for (limit, is_unlimited) in limits.iter_mut().zip(unlimited.iter_mut()) {
            if limit.as_ref().is_some_and(|m| m.rule.unlimited) {
                *is_unlimited = true;
                *limit = None;
            }
        }
        for limit in limits.iter_mut() {
            if let Some(matched) = limit {
                if !matched.rule.name.is_empty() && replaced.contains(&matched.rule.name) {
                    *limit = None;
                }
            }
        }

        // 2. hits and 3. counters
        let now = self.clock.now();
        let mut increments = Vec::with_capacity(count);
        let mut hits = Vec::with_capacity(count);
        for (descriptor, limit) in request.descriptors.iter().zip(&limits) {
            let addend = descriptor
                .hits_addend
                .unwrap_or_else(|| u64::from(request.hits_addend.max(1)));
            hits.push(addend);
            let Some(matched) = limit else { continue };
            let Some(unit) = matched.rule.unit else {
                return Err(ServiceError::InvalidRequest(format!(
                    "descriptor limit override for {} has no valid unit",
                    matched.rule.full_key
                )));
            };
            let window = unit.window(now);
            increments.push(Increment {
                key: self.counter_key(&request.domain, descriptor, matched, window.start),
                hits: addend,
                ttl_seconds: window.seconds(),
                window_end: window.end,
            });
            matched
                .stats
                .total_hits
                .fetch_add(addend, Ordering::Relaxed);
        }
        let counts = self
            .limiter
            .increment(&increments)
            .await
            .map_err(|e| ServiceError::Backend(e.0))?;

        // 4. statuses
        let mut counts = counts.into_iter();
        let mut statuses = Vec::with_capacity(count);
        let mut over_limit = 0usize;
        let mut quota_total = 0usize;
        let mut quota_over = 0usize;
        for ((limit, is_unlimited), addend) in limits.iter().zip(&unlimited).zip(&hits) {
            if *is_unlimited {
                statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    current_limit: None,
                    limit_remaining: u32::MAX,
                    duration_until_reset: None,
                });
                continue;
            }
            let Some(matched) = limit else {
                statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    current_limit: None,
                    limit_remaining: 0,
                    duration_until_reset: None,
                });
                continue;
            };
            let Some(after) = counts.next() else {
                return Err(ServiceError::Backend(
                    "the backend returned fewer counts than counters".into(),
                ));
            };
            let status = self.status(matched, after, *addend, now);
            let over = status.code == Code::OverLimit as i32;
            if matched.rule.quota_mode {
                quota_total += 1;
                quota_over += usize::from(over);
            } else {
                over_limit += usize::from(over);
            }
            statuses.push(status);
        }

        // 5. overall
        let mut overall = if over_limit > 0 || (quota_total > 0 && quota_total == quota_over) {
            Code::OverLimit
        } else {
            Code::Ok
        };
        if overall == Code::OverLimit && self.settings.global_shadow_mode {
            overall = Code::Ok;
            self.metrics
                .global_shadow_mode
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            response_headers_to_add: Vec::new(),
            request_headers_to_add: Vec::new(),
        })
    }

    /// `prefix` + `domain_` + `key_value_` per entry + window start: upstream's key, so a
    /// Redis shared with envoyproxy/ratelimit sees the same counters.
    fn counter_key(
        &self,
        domain: &str,
        descriptor: &tollgate_ratelimit_proto::RateLimitDescriptor,
        matched: &Matched,
        window_start: i64,
    ) -> String {
        let mut key = String::with_capacity(64);
        key.push_str(&self.settings.cache_key_prefix);
        key.push_str(domain);
        key.push('_');
        for (index, entry) in descriptor.entries.iter().enumerate() {
            key.push_str(&entry.key);
            key.push('_');
            let value = match matched.shared_values.get(index) {
                Some(Some(shared)) => shared.as_str(),
                _ => entry.value.as_str(),
            };
            key.push_str(value);
            key.push('_');
        }
        key.push_str(&window_start.to_string());
        key
    }

    fn status(&self, matched: &Matched, after: u64, hits: u64, now: i64) -> DescriptorStatus {
        let rule = &matched.rule;
        let stats = &matched.stats;
        let limit = u64::from(rule.requests_per_unit);
        let before = after.saturating_sub(hits);
        // As upstream: floor(limit × ratio) in single precision.
        let near = (rule.requests_per_unit as f32 * self.settings.near_limit_ratio).floor() as u64;
        let over = after > limit;
        let (mut code, remaining) = if over {
            if before >= limit {
                stats.over_limit.fetch_add(hits, Ordering::Relaxed);
            } else {
                stats.over_limit.fetch_add(after - limit, Ordering::Relaxed);
                stats
                    .near_limit
                    .fetch_add(limit - near.max(before).min(limit), Ordering::Relaxed);
            }
            (Code::OverLimit, 0)
        } else {
            if after > near {
                let near_hits = if before >= near { hits } else { after - near };
                stats.near_limit.fetch_add(near_hits, Ordering::Relaxed);
            }
            stats.within_limit.fetch_add(hits, Ordering::Relaxed);
            (Code::Ok, u32::try_from(limit - after).unwrap_or(u32::MAX))
        };
        if over && rule.shadow_mode {
            code = Code::Ok;
            let shadowed = if before >= limit { hits } else { after - limit };
            stats.shadow_mode.fetch_add(shadowed, Ordering::Relaxed);
        }
        let unit = rule.unit;
        DescriptorStatus {
            code: code as i32,
            current_limit: Some(RateLimit {
                name: rule.name.clone(),
                requests_per_unit: rule.requests_per_unit,
                unit: unit.map(|u| u.to_proto() as i32).unwrap_or(0),
            }),
            limit_remaining: remaining,
            duration_until_reset: unit.map(|u| prost_types::Duration {
                seconds: u.until_reset(now),
                nanos: 0,
            }),
        }
    }
}

/// The gRPC face of [`RateLimitService`].
#[derive(Clone)]
pub struct GrpcService(pub Arc<RateLimitService>);

#[tonic::async_trait]
impl rate_limit_service_server::RateLimitService for GrpcService {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let started = Instant::now();
        let metrics = self.0.metrics();
        metrics.total_requests.fetch_add(1, Ordering::Relaxed);
        let result = self.0.should_rate_limit(request.get_ref()).await;
        metrics.observe_latency(started.elapsed());
        match result {
            Ok(response) => Ok(tonic::Response::new(response)),
            Err(ServiceError::InvalidRequest(message)) => {
                metrics.service_errors.fetch_add(1, Ordering::Relaxed);
                Err(tonic::Status::invalid_argument(message))
            }
            Err(ServiceError::Backend(message)) => {
                metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
                Err(tonic::Status::unavailable(message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{ManualClock, MemoryLimiter};
    use tollgate_ratelimit_proto::{RateLimitDescriptor, RateLimitOverride, Unit as ProtoUnit};

    /// 2023-11-14T22:00:00Z, the start of an hour (and of a minute).
    const HOUR_START: i64 = 1_699_999_200;

    struct Fixture {
        service: RateLimitService,
        limiter: Arc<MemoryLimiter>,
        clock: Arc<ManualClock>,
        metrics: Arc<Metrics>,
    }

    fn fixture_with(yaml: &str, settings: Settings) -> Fixture {
        let metrics = Arc::new(Metrics::default());
        let config = RateLimitConfig::from_yaml(yaml, &metrics).unwrap();
        let limiter = Arc::new(MemoryLimiter::new(4));
        let clock = Arc::new(ManualClock::new(HOUR_START));
        let service = RateLimitService::new(
            config,
            limiter.clone(),
            clock.clone(),
            metrics.clone(),
            settings,
        );
        Fixture {
            service,
            limiter,
            clock,
            metrics,
        }
    }

    fn fixture(yaml: &str) -> Fixture {
        fixture_with(yaml, Settings::default())
    }

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor::from_entries(entries.iter().copied())
    }

    fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
        RateLimitRequest {
            domain: domain.into(),
            descriptors,
            hits_addend: hits,
        }
    }

    impl Fixture {
        fn call(&self, request: &RateLimitRequest) -> RateLimitResponse {
            block_on(self.service.should_rate_limit(request)).unwrap()
        }
        fn one(&self, domain: &str, entries: &[(&str, &str)]) -> RateLimitResponse {
            self.call(&request(domain, vec![descriptor(entries)], 0))
        }
    }

    /// The memory backend's futures are ready at once.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(future)
    }

    fn codes(response: &RateLimitResponse) -> (Code, Vec<Code>) {
        (
            response.overall_code(),
            response.statuses.iter().map(|s| s.code()).collect(),
        )
    }

    const SEED: &str = include_str!("../../../examples/ratelimit/ai-gateway.yaml");

    #[test]
    fn seed_config_allows_100_per_user_per_hour_and_20_for_quality() {
        let f = fixture(SEED);
        for n in 1..=100u32 {
            let response = f.one("ai-gateway", &[("user_id", "alice")]);
            assert_eq!(response.overall_code(), Code::Ok, "request {n}");
            let status = &response.statuses[0];
            assert_eq!(status.limit_remaining, 100 - n);
            let limit = status.current_limit.as_ref().unwrap();
            assert_eq!(
                (limit.requests_per_unit, limit.unit()),
                (100, ProtoUnit::Hour)
            );
            assert_eq!(status.duration_until_reset.as_ref().unwrap().seconds, 3600);
        }
        let response = f.one("ai-gateway", &[("user_id", "alice")]);
        assert_eq!(codes(&response), (Code::OverLimit, vec![Code::OverLimit]));
        assert_eq!(response.statuses[0].limit_remaining, 0);
        // another user is untouched
        assert_eq!(
            f.one("ai-gateway", &[("user_id", "bob")]).overall_code(),
            Code::Ok
        );

        // the quality tier: Envoy sends both descriptors
        let both = |user: &str| {
            request(
                "ai-gateway",
                vec![
                    descriptor(&[("user_id", user)]),
                    descriptor(&[("user_id", user), ("model_tier", "quality")]),
                ],
                0,
            )
        };
        for n in 1..=20u32 {
            let response = f.call(&both("carol"));
            assert_eq!(
                codes(&response),
                (Code::Ok, vec![Code::Ok, Code::Ok]),
                "request {n}"
            );
            assert_eq!(response.statuses[1].limit_remaining, 20 - n);
        }
        let response = f.call(&both("carol"));
        assert_eq!(
            codes(&response),
            (Code::OverLimit, vec![Code::Ok, Code::OverLimit])
        );
        assert_eq!(response.statuses[0].limit_remaining, 100 - 21);
        // a tier without its own limit only has the user's
        let fast = request(
            "ai-gateway",
            vec![descriptor(&[("user_id", "carol"), ("model_tier", "fast")])],
            0,
        );
        let response = f.call(&fast);
        assert_eq!(codes(&response), (Code::Ok, vec![Code::Ok]));
        assert!(response.statuses[0].current_limit.is_none());
    }

    #[test]
    fn fixed_windows_reset_at_the_boundary_and_report_time_left() {
        let f = fixture(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n",
        );
        f.clock.set(HOUR_START + 30);
        let reset =
            |r: &RateLimitResponse| r.statuses[0].duration_until_reset.as_ref().unwrap().seconds;
        let response = f.one("d", &[("k", "v")]);
        assert_eq!((response.overall_code(), reset(&response)), (Code::Ok, 30));
        f.clock.set(HOUR_START + 59);
        assert_eq!(f.one("d", &[("k", "v")]).overall_code(), Code::Ok);
        let response = f.one("d", &[("k", "v")]);
        assert_eq!(
            (response.overall_code(), reset(&response)),
            (Code::OverLimit, 1)
        );
        // next minute: a new window
        f.clock.set(HOUR_START + 60);
        let response = f.one("d", &[("k", "v")]);
        assert_eq!(response.overall_code(), Code::Ok);
        assert_eq!(response.statuses[0].limit_remaining, 1);
        assert_eq!(reset(&response), 60);
    }

    #[test]
    fn every_unit_has_its_own_window() {
        for (unit, start, seconds) in [
            ("second", 30_000, 1),
            ("minute", 60 * 30_000, 60),
            ("hour", 3600 * 30_000, 3600),
            ("day", 86_400 * 30_000, 86_400),
            ("week", 604_800 * 30_000, 604_800),
            ("month", 2_592_000 * 30_000, 2_592_000),
            // the calendar year 2028, a leap year
            ("year", 1_830_297_600, 366 * 86_400),
        ] {
            let f = fixture(&format!(
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: {unit}, requests_per_unit: 1}}\n"
            ));
            f.clock.set(start);
            assert_eq!(f.one("d", &[("k", "v")]).overall_code(), Code::Ok, "{unit}");
            f.clock.set(start + seconds - 1);
            let response = f.one("d", &[("k", "v")]);
            assert_eq!(response.overall_code(), Code::OverLimit, "{unit}");
            assert_eq!(
                response.statuses[0]
                    .duration_until_reset
                    .as_ref()
                    .unwrap()
                    .seconds,
                1
            );
            f.clock.set(start + seconds);
            assert_eq!(f.one("d", &[("k", "v")]).overall_code(), Code::Ok, "{unit}");
        }
    }

    /// A guard budget's ledger counter: the calendar month in the descriptor, the year
    /// unit expiring it, read from `limit_remaining` under a `u32::MAX` override.
    fn month_ledger(user: &str, month: &str, hits: u64) -> RateLimitDescriptor {
        let mut d = descriptor(&[
            ("budget", "user-tokens"),
            ("user", user),
            ("month", month),
            ("ledger", "reserved"),
        ]);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: u32::MAX,
            unit: ProtoUnit::Year as i32,
        });
        d.hits_addend = Some(hits);
        d
    }

    #[test]
    fn a_calendar_month_keeps_counting_across_upstreams_365_day_boundary() {
        const DEC_17_2026: i64 = 1_797_465_600;
        const DEC_19_2026: i64 = 1_797_638_400;
        const JAN_1_2027: i64 = 1_798_761_600;
        let f = fixture(SEED);
        let ledger = |hits| request("ai-gateway", vec![month_ledger("ann", "2026-12", hits)], 0);
        let used = || {
            let response = f.call(&ledger(0));
            let status = &response.statuses[0];
            (
                u32::MAX - status.limit_remaining,
                status.duration_until_reset.as_ref().unwrap().seconds,
            )
        };
        f.clock.set(DEC_17_2026 + 43_200);
        f.call(&ledger(700));
        assert_eq!(used(), (700, JAN_1_2027 - DEC_17_2026 - 43_200));
        // 2026-12-18T00:00:00Z, where a 365-day window from the epoch turns, passes.
        f.clock.set(DEC_19_2026);
        assert_eq!(f.limiter.sweep(DEC_19_2026), 0, "the counter is kept");
        f.call(&ledger(300));
        assert_eq!(used(), (1_000, JAN_1_2027 - DEC_19_2026));
        // The counter goes with its year.
        assert_eq!(f.limiter.sweep(JAN_1_2027), 1);
    }

    #[test]
    fn metric_series_stay_constant_as_users_grow() {
        let f = fixture(
            "domain: d\ndescriptors:\n  - key: user_id\n    rate_limit: {unit: hour, requests_per_unit: 5}\n  - key: path\n    value: /users/*\n    rate_limit: {unit: minute, requests_per_unit: 5}\n",
        );
        let serve = |user: &str| {
            let path = format!("/users/{user}");
            f.call(&request(
                "d",
                vec![
                    descriptor(&[("user_id", user)]),
                    descriptor(&[("path", &path)]),
                    month_ledger(user, "2026-11", 10),
                ],
                0,
            ));
        };
        let series = || -> Vec<String> {
            f.metrics
                .render()
                .lines()
                .filter(|line| !line.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        serve("user-0");
        let first = series();
        for n in 1..1_000 {
            serve(&format!("user-{n}"));
        }
        let after = series();
        assert_eq!(after.len(), first.len(), "{after:#?}");
        assert!(
            after.iter().all(|line| !line.contains("user-")),
            "{after:#?}"
        );
        for descriptor in ["user_id", "path_/users/*", "budget.user.month.ledger"] {
            let line = format!(
                "ratelimit_service_rate_limit_total_hits{{domain=\"d\",descriptor=\"{descriptor}\"}} {}",
                if descriptor.starts_with("budget") { 10_000 } else { 1_000 }
            );
            assert!(after.contains(&line), "missing {line} in {after:#?}");
        }
    }

    #[test]
    fn hits_addend_request_level_and_per_descriptor() {
        let f = fixture(
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: hour, requests_per_unit: 10}\n  - key: b\n    rate_limit: {unit: hour, requests_per_unit: 10}\n",
        );
        // request level: 4 hits each, both descriptors
        let response = f.call(&request(
            "d",
            vec![descriptor(&[("a", "1")]), descriptor(&[("b", "1")])],
            4,
        ));
        let remaining: Vec<u32> = response
            .statuses
            .iter()
            .map(|s| s.limit_remaining)
            .collect();
        assert_eq!(remaining, vec![6, 6]);

        // a per-descriptor value overrides the request's, for that descriptor only
        let mut b = descriptor(&[("b", "1")]);
        b.hits_addend = Some(1);
        let response = f.call(&request("d", vec![descriptor(&[("a", "1")]), b], 4));
        let remaining: Vec<u32> = response
            .statuses
            .iter()
            .map(|s| s.limit_remaining)
            .collect();
        assert_eq!(remaining, vec![2, 5]);

        // an explicit 0 checks without charging
        let mut zero = descriptor(&[("a", "1")]);
        zero.hits_addend = Some(0);
        for _ in 0..3 {
            let response = f.call(&request("d", vec![zero.clone()], 4));
            assert_eq!(response.statuses[0].limit_remaining, 2);
            assert_eq!(response.overall_code(), Code::Ok);
        }

        // over when the count after the increment exceeds the limit: 8 + 3 = 11 > 10
        let response = f.call(&request("d", vec![descriptor(&[("a", "1")])], 3));
        assert_eq!(response.overall_code(), Code::OverLimit);
        // ... and the hits were counted anyway (as upstream): 11 now, a 0 check is over
        let response = f.call(&request("d", vec![zero.clone()], 0));
        assert_eq!(response.overall_code(), Code::OverLimit);

        // exactly at the limit is within it: 8 + 2 = 10
        let response = f.call(&request("d", vec![descriptor(&[("a", "2")])], 10));
        assert_eq!(
            (
                response.overall_code(),
                response.statuses[0].limit_remaining
            ),
            (Code::Ok, 0)
        );
        let response = f.call(&request("d", vec![descriptor(&[("a", "2")])], 0));
        assert_eq!(
            response.overall_code(),
            Code::OverLimit,
            "request hits_addend 0 means 1"
        );

        let stats = f.metrics.rule_stats("d", "d.a");
        assert_eq!(stats.total_hits.load(Ordering::Relaxed), 4 + 4 + 3 + 10 + 1);
    }

    #[test]
    fn large_hits_addend_is_one_charge() {
        let f = fixture(
            "domain: d\ndescriptors:\n  - key: tokens\n    rate_limit: {unit: day, requests_per_unit: 100000}\n",
        );
        let mut d = descriptor(&[("tokens", "team-a")]);
        d.hits_addend = Some(99_999);
        let response = f.call(&request("d", vec![d.clone()], 0));
        assert_eq!(response.statuses[0].limit_remaining, 1);
        d.hits_addend = Some(2);
        assert_eq!(
            f.call(&request("d", vec![d], 0)).overall_code(),
            Code::OverLimit
        );
    }

    #[test]
    fn shadow_mode_counts_but_says_ok() {
        let f = fixture(
            r#"
domain: example6
descriptors:
  - key: service
    descriptors:
      - key: user
        value: user-a
        rate_limit: {requests_per_unit: 1, unit: second}
        shadow_mode: true
      - key: user
        value: user-b
        rate_limit: {requests_per_unit: 1, unit: second}
"#,
        );
        for _ in 0..3 {
            f.one("example6", &[("service", "auth"), ("user", "user-a")]);
        }
        let response = f.one("example6", &[("service", "auth"), ("user", "user-a")]);
        assert_eq!(codes(&response), (Code::Ok, vec![Code::Ok]));
        assert_eq!(response.statuses[0].limit_remaining, 0);
        let stats = f
            .metrics
            .rule_stats("example6", "example6.service.user_user-a");
        assert_eq!(stats.over_limit.load(Ordering::Relaxed), 3);
        assert_eq!(stats.shadow_mode.load(Ordering::Relaxed), 3);

        f.one("example6", &[("service", "auth"), ("user", "user-b")]);
        let response = f.one("example6", &[("service", "auth"), ("user", "user-b")]);
        assert_eq!(codes(&response), (Code::OverLimit, vec![Code::OverLimit]));
    }

    #[test]
    fn global_shadow_mode_turns_over_limit_into_ok() {
        let f = fixture_with(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 0}\n",
            Settings {
                global_shadow_mode: true,
                ..Settings::default()
            },
        );
        let response = f.one("d", &[("k", "v")]);
        // the descriptor still says OVER_LIMIT; the overall answer is OK
        assert_eq!(codes(&response), (Code::Ok, vec![Code::OverLimit]));
        assert_eq!(f.metrics.global_shadow_mode.load(Ordering::Relaxed), 1);
    }

    const REPLACES: &str = r#"
domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          name: specific_limit
          requests_per_unit: 5
          unit: second
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces:
            - name: specific_limit
          requests_per_unit: 10
          unit: second
  - key: vip
    rate_limit:
      unlimited: true
      replaces:
        - name: specific_limit
"#;

    #[test]
    fn replaces_drops_the_named_limit_without_counting_it() {
        let f = fixture(REPLACES);
        let first = descriptor(&[("key_1", "value_1"), ("user", "bkthomps")]);
        let second = descriptor(&[("key_2", "value_2"), ("user", "bkthomps")]);
        // both: only the replacing 10/s limit applies; the 5/s one is not reported
        for n in 1..=10u32 {
            let response = f.call(&request("example7", vec![first.clone(), second.clone()], 0));
            assert_eq!(response.overall_code(), Code::Ok, "request {n}");
            assert!(response.statuses[0].current_limit.is_none());
            assert_eq!(response.statuses[0].limit_remaining, 0);
            assert_eq!(response.statuses[1].limit_remaining, 10 - n);
        }
        let response = f.call(&request("example7", vec![first.clone(), second.clone()], 0));
        assert_eq!(
            codes(&response),
            (Code::OverLimit, vec![Code::Ok, Code::OverLimit])
        );
        // the replaced limit was never charged: 5 requests alone still pass
        for n in 1..=5u32 {
            let response = f.call(&request("example7", vec![first.clone()], 0));
            assert_eq!(response.statuses[0].limit_remaining, 5 - n);
        }
        // an unlimited rule's replaces apply too
        let response = f.call(&request(
            "example7",
            vec![first, descriptor(&[("vip", "x")])],
            0,
        ));
        assert_eq!(codes(&response), (Code::Ok, vec![Code::Ok, Code::Ok]));
        assert!(response.statuses[0].current_limit.is_none());
        assert_eq!(response.statuses[1].limit_remaining, u32::MAX);
    }

    #[test]
    fn unlimited_is_ok_with_max_remaining_and_never_counted() {
        let f = fixture(
            "domain: internal\ndescriptors:\n  - key: ldap\n    rate_limit:\n      unlimited: true\n  - key: azure\n    rate_limit:\n      unit: minute\n      requests_per_unit: 100\n",
        );
        for _ in 0..5 {
            let response = f.one("internal", &[("ldap", "x")]);
            assert_eq!(codes(&response), (Code::Ok, vec![Code::Ok]));
            let status = &response.statuses[0];
            assert_eq!(status.limit_remaining, u32::MAX);
            assert!(status.current_limit.is_none() && status.duration_until_reset.is_none());
        }
        assert_eq!(
            f.metrics
                .rule_stats("internal", "internal.ldap")
                .total_hits
                .load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn no_match_and_unknown_domain_are_ok_without_limit() {
        let f = fixture(SEED);
        for response in [
            f.one("ai-gateway", &[("team", "x")]),
            f.one("elsewhere", &[("user_id", "alice")]),
        ] {
            assert_eq!(codes(&response), (Code::Ok, vec![Code::Ok]));
            assert_eq!(
                response.statuses[0],
                DescriptorStatus {
                    code: Code::Ok as i32,
                    current_limit: None,
                    limit_remaining: 0,
                    duration_until_reset: None,
                }
            );
        }
    }

    #[test]
    fn quota_mode_blocks_only_when_every_quota_descriptor_is_over() {
        let f = fixture(
            "domain: q\ndescriptors:\n  - key: a\n    quota_mode: true\n    rate_limit: {unit: hour, requests_per_unit: 1}\n  - key: b\n    quota_mode: true\n    rate_limit: {unit: hour, requests_per_unit: 2}\n",
        );
        let both = request(
            "q",
            vec![descriptor(&[("a", "1")]), descriptor(&[("b", "1")])],
            0,
        );
        assert_eq!(codes(&f.call(&both)), (Code::Ok, vec![Code::Ok, Code::Ok]));
        assert_eq!(
            codes(&f.call(&both)),
            (Code::Ok, vec![Code::OverLimit, Code::Ok])
        );
        assert_eq!(
            codes(&f.call(&both)),
            (Code::OverLimit, vec![Code::OverLimit, Code::OverLimit])
        );
    }

    #[test]
    fn limit_override_replaces_the_configured_limit() {
        let f = fixture(SEED);
        let mut d = descriptor(&[("user_id", "dave")]);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 1,
            unit: ProtoUnit::Minute as i32,
        });
        let response = f.call(&request("ai-gateway", vec![d.clone()], 0));
        let limit = response.statuses[0].current_limit.clone().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit()),
            (1, ProtoUnit::Minute)
        );
        assert_eq!(
            f.call(&request("ai-gateway", vec![d.clone()], 0))
                .overall_code(),
            Code::OverLimit
        );
        // an override without a unit is refused
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 1,
            unit: 0,
        });
        let error = block_on(
            f.service
                .should_rate_limit(&request("ai-gateway", vec![d], 0)),
        );
        assert!(matches!(error, Err(ServiceError::InvalidRequest(_))));
    }

    #[test]
    fn empty_domain_or_descriptors_are_errors() {
        let f = fixture(SEED);
        let no_domain = request("", vec![descriptor(&[("user_id", "a")])], 0);
        let no_descriptors = request("ai-gateway", vec![], 0);
        for (req, message) in [
            (no_domain, "rate limit domain must not be empty"),
            (
                no_descriptors,
                "rate limit descriptor list must not be empty",
            ),
        ] {
            assert_eq!(
                block_on(f.service.should_rate_limit(&req)),
                Err(ServiceError::InvalidRequest(message.into()))
            );
        }
    }

    #[test]
    fn share_threshold_shares_one_counter_between_matches() {
        let f = fixture(
            "domain: s\ndescriptors:\n  - key: files\n    value: files/*\n    share_threshold: true\n    rate_limit: {unit: hour, requests_per_unit: 2}\n  - key: docs\n    value: docs/*\n    rate_limit: {unit: hour, requests_per_unit: 1}\n",
        );
        assert_eq!(
            f.one("s", &[("files", "files/a.pdf")]).overall_code(),
            Code::Ok
        );
        assert_eq!(
            f.one("s", &[("files", "files/b.csv")]).overall_code(),
            Code::Ok
        );
        assert_eq!(
            f.one("s", &[("files", "files/c")]).overall_code(),
            Code::OverLimit
        );
        // without share_threshold each value has its own counter
        assert_eq!(f.one("s", &[("docs", "docs/a")]).overall_code(), Code::Ok);
        assert_eq!(f.one("s", &[("docs", "docs/b")]).overall_code(), Code::Ok);
    }

    #[test]
    fn counter_keys_match_upstreams_format() {
        let f = fixture_with(
            SEED,
            Settings {
                cache_key_prefix: "pfx:".into(),
                ..Settings::default()
            },
        );
        let d = descriptor(&[("user_id", "alice"), ("model_tier", "quality")]);
        let config = f.service.config();
        let matched = lookup(&config.domains, "ai-gateway", &d, &f.metrics).unwrap();
        assert_eq!(
            f.service
                .counter_key("ai-gateway", &d, &matched, HOUR_START),
            "pfx:ai-gateway_user_id_alice_model_tier_quality_1699999200"
        );
    }

    #[test]
    fn near_and_within_limit_stats() {
        let f = fixture(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 10}\n",
        );
        for _ in 0..12 {
            f.one("d", &[("k", "v")]);
        }
        let stats = f.metrics.rule_stats("d", "d.k");
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(load(&stats.total_hits), 12);
        assert_eq!(load(&stats.within_limit), 10);
        assert_eq!(load(&stats.near_limit), 2); // hits 9 and 10 (> floor(10 × 0.8))
        assert_eq!(load(&stats.over_limit), 2);
    }

    #[test]
    fn reload_swaps_configuration_and_keeps_counters() {
        let f = fixture(SEED);
        for _ in 0..20 {
            f.one("ai-gateway", &[("user_id", "erin")]);
        }
        let stricter = SEED.replace("requests_per_unit: 100", "requests_per_unit: 20");
        f.service
            .set_config(RateLimitConfig::from_yaml(&stricter, &f.metrics).unwrap());
        assert_eq!(
            f.one("ai-gateway", &[("user_id", "erin")]).overall_code(),
            Code::OverLimit
        );
    }
}
