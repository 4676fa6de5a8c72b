//! Counters in Prometheus text format, named after envoyproxy/ratelimit's default
//! statsd→Prometheus mapping (`ratelimit_service_rate_limit_total_hits`, ...), with the
//! rule's path below its domain in one `descriptor` label instead of `key1`, `key2`.
//!
//! Per-rule counters live as long as the process, across configuration reloads, so a
//! reload never resets a series.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The counters of one rule (or of one detailed / value_to_metric name).
#[derive(Debug, Default)]
pub struct RuleStats {
    /// `domain.key_value.key`.
    pub key: String,
    pub domain: String,
    pub total_hits: AtomicU64,
    pub over_limit: AtomicU64,
    pub near_limit: AtomicU64,
    pub within_limit: AtomicU64,
    pub shadow_mode: AtomicU64,
}

/// Upper bounds of the ShouldRateLimit latency histogram, in microseconds.
const LATENCY_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000,
];

#[derive(Debug, Default)]
pub struct Metrics {
    rules: RwLock<HashMap<String, Arc<RuleStats>>>,
    domains_not_found: Mutex<HashMap<String, u64>>,
    pub total_requests: AtomicU64,
    pub redis_errors: AtomicU64,
    pub service_errors: AtomicU64,
    pub config_load_success: AtomicU64,
    pub config_load_error: AtomicU64,
    pub global_shadow_mode: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

fn lock_poisoned<T>(error: std::sync::PoisonError<T>) -> T {
    // A panic while holding the lock cannot leave these maps half-updated in a way that
    // matters for counters; keep serving.
    error.into_inner()
}

impl Metrics {
    /// The counters named `key` (`domain.path`), created on first use.
    pub fn rule_stats(&self, domain: &str, key: &str) -> Arc<RuleStats> {
        if let Some(stats) = self.rules.read().unwrap_or_else(lock_poisoned).get(key) {
            return stats.clone();
        }
        self.rules
            .write()
            .unwrap_or_else(lock_poisoned)
            .entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(RuleStats {
                    key: key.to_owned(),
                    domain: domain.to_owned(),
                    ..RuleStats::default()
                })
            })
            .clone()
    }

    pub fn domain_not_found(&self, domain: &str) {
        let mut map = self.domains_not_found.lock().unwrap_or_else(lock_poisoned);
        match map.get_mut(domain) {
            Some(count) => *count += 1,
            None => {
                map.insert(domain.to_owned(), 1);
            }
        }
    }

    pub fn observe_latency(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.latency_buckets) {
            if micros <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        };

        let _ = writeln!(
            out,
            "# HELP ratelimit_service_total_requests ShouldRateLimit calls.\n# TYPE ratelimit_service_total_requests counter"
        );
        let _ = writeln!(
            out,
            "ratelimit_service_total_requests{{grpc_method=\"ShouldRateLimit\"}} {}",
            self.total_requests.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ratelimit_service_should_rate_limit_error ShouldRateLimit calls answered with an error.\n# TYPE ratelimit_service_should_rate_limit_error counter"
        );
        for (kind, value) in [
            ("redis_error", &self.redis_errors),
            ("service_error", &self.service_errors),
        ] {
            let _ = writeln!(
                out,
                "ratelimit_service_should_rate_limit_error{{err_type=\"{kind}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "ratelimit_service_config_load_success",
            "Configuration loads that succeeded (the first one included).",
            &self.config_load_success,
        );
        counter(
            &mut out,
            "ratelimit_service_config_load_error",
            "Configuration loads refused; the previous configuration stays in force.",
            &self.config_load_error,
        );
        counter(
            &mut out,
            "ratelimit_service_global_shadow_mode",
            "Responses turned from OVER_LIMIT into OK by the global shadow mode.",
            &self.global_shadow_mode,
        );

        let _ = writeln!(
            out,
            "# HELP ratelimit_service_response_time_seconds ShouldRateLimit handling time.\n# TYPE ratelimit_service_response_time_seconds histogram"
        );
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                out,
                "ratelimit_service_response_time_seconds_bucket{{le=\"{}\"}} {}",
                *bound as f64 / 1e6,
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "ratelimit_service_response_time_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "ratelimit_service_response_time_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "ratelimit_service_response_time_seconds_count {count}");

        let mut rules: Vec<Arc<RuleStats>> = self
            .rules
            .read()
            .unwrap_or_else(lock_poisoned)
            .values()
            .cloned()
            .collect();
        rules.sort_by(|a, b| a.key.cmp(&b.key));
        for (stat, help) in [
            ("total_hits", "Hits counted against the rule."),
            ("over_limit", "Hits over the rule's limit."),
            (
                "near_limit",
                "Hits over the near-limit ratio but within the limit.",
            ),
            ("within_limit", "Hits within the limit."),
            (
                "shadow_mode",
                "Over-limit hits let through by the rule's shadow_mode.",
            ),
        ] {
            let name = format!("ratelimit_service_rate_limit_{stat}");
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for rule in &rules {
                let value = match stat {
                    "total_hits" => &rule.total_hits,
                    "over_limit" => &rule.over_limit,
                    "near_limit" => &rule.near_limit,
                    "within_limit" => &rule.within_limit,
                    _ => &rule.shadow_mode,
                };
                let descriptor = rule
                    .key
                    .strip_prefix(rule.domain.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .unwrap_or(&rule.key);
                let _ = writeln!(
                    out,
                    "{name}{{domain=\"{}\",descriptor=\"{}\"}} {}",
                    escape(&rule.domain),
                    escape(descriptor),
                    value.load(Ordering::Relaxed)
                );
            }
        }

        let not_found = self.domains_not_found.lock().unwrap_or_else(lock_poisoned);
        let mut domains: Vec<(&String, &u64)> = not_found.iter().collect();
        domains.sort();
        let _ = writeln!(
            out,
            "# HELP ratelimit_service_domain_not_found Descriptors for a domain no configuration has.\n# TYPE ratelimit_service_domain_not_found counter"
        );
        for (domain, count) in domains {
            let _ = writeln!(
                out,
                "ratelimit_service_domain_not_found{{domain=\"{}\"}} {count}",
                escape(domain)
            );
        }
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rule_counters_with_domain_and_descriptor_labels() {
        let metrics = Metrics::default();
        let stats = metrics.rule_stats("ai.gw", "ai.gw.user_id.model_tier_quality");
        stats.total_hits.fetch_add(3, Ordering::Relaxed);
        assert!(Arc::ptr_eq(
            &stats,
            &metrics.rule_stats("ai.gw", "ai.gw.user_id.model_tier_quality")
        ));
        metrics.observe_latency(Duration::from_micros(120));
        metrics.domain_not_found("x\"y");
        let text = metrics.render();
        assert!(text.contains(
            "ratelimit_service_rate_limit_total_hits{domain=\"ai.gw\",descriptor=\"user_id.model_tier_quality\"} 3\n"
        ));
        assert!(text.contains("ratelimit_service_response_time_seconds_bucket{le=\"0.0001\"} 0\n"));
        assert!(text.contains("ratelimit_service_response_time_seconds_bucket{le=\"0.00025\"} 1\n"));
        assert!(text.contains("ratelimit_service_response_time_seconds_count 1\n"));
        assert!(text.contains("ratelimit_service_domain_not_found{domain=\"x\\\"y\"} 1\n"));
    }
}
