//! Finding the limit for a descriptor, with envoyproxy/ratelimit's rules:
//!
//! - Each level of the configuration is keyed by the composite `key_value` of a
//!   descriptor with a value and `key` of one without. For each entry of the request's
//!   descriptor, the walk tries `key_value` exactly, then the level's wildcard patterns in
//!   configuration order (each `*` matches any run of characters, also across the `_`
//!   joining key and value, as upstream matches the composite string), then `key` alone:
//!   the most specific match at that level.
//! - A limit applies only when it sits at the depth of the descriptor's last entry
//!   (`(a, b)` does not match a limit configured at `a` alone); the walk stops as soon as
//!   a level has no match or no nested descriptors.
//! - A descriptor that carries its own `limit` (Envoy's override) uses it as is, if the
//!   domain is known; it is never in shadow mode.
//!
//! Metric names follow upstream: `domain.key_value.key` from the configuration path (a
//! wildcard level by its pattern, never the request's value), the request's values
//! only where the configuration asks for them (`detailed_metric`, or levels marked
//! `value_to_metric`). Except for overrides: upstream names them `domain.key_value…`
//! with the request's values, a series per user for per-user overrides (the guard's
//! budgets); here they are named by their entries' keys alone, so the number of series
//! stays bounded by the configurations of the service and its callers.

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_ratelimit_proto::RateLimitDescriptor;

use crate::metrics::{Metrics, RuleStats};
use crate::units::Unit;

#[derive(Debug, Default)]
pub struct Domain {
    pub(crate) root: Node,
}

/// One level of the configuration tree.
#[derive(Debug, Default)]
pub struct Node {
    pub(crate) children: HashMap<String, Node>,
    /// Patterns over the composite keys of `children`, in configuration order.
    pub(crate) wildcards: Vec<Wildcard>,
    pub(crate) limit: Option<Arc<Rule>>,
    pub(crate) value_to_metric: bool,
    /// The node's composite key when `share_threshold` is on (it has a wildcard).
    pub(crate) share_threshold_pattern: Option<String>,
}

#[derive(Debug)]
pub struct Wildcard {
    pub(crate) key: String,
    parts: Vec<String>,
}

impl Wildcard {
    pub fn new(key: &str) -> Self {
        Wildcard {
            key: key.to_owned(),
            parts: key.split('*').map(str::to_owned).collect(),
        }
    }

    /// Upstream's `wildcardMatch`: the value starts with the first literal part, ends
    /// with the last, and holds the middle ones in order in between.
    pub fn matches(&self, value: &str) -> bool {
        let (Some(first), Some(last)) = (self.parts.first(), self.parts.last()) else {
            return false;
        };
        if self.parts.len() == 1 {
            return first == value;
        }
        if !value.starts_with(first.as_str()) || !value.ends_with(last.as_str()) {
            return false;
        }
        let fixed: usize = self.parts.iter().map(String::len).sum();
        if value.len() < fixed {
            return false;
        }
        let Some(mut remaining) = value.get(first.len()..value.len() - last.len()) else {
            return false;
        };
        let middle = self.parts.iter().skip(1).take(self.parts.len() - 2);
        for part in middle {
            match remaining.find(part.as_str()) {
                Some(index) => match remaining.get(index + part.len()..) {
                    Some(rest) => remaining = rest,
                    None => return false,
                },
                None => return false,
            }
        }
        true
    }
}

/// A configured (or overriding) limit.
#[derive(Debug)]
pub struct Rule {
    /// `domain.key_value.key`: the stats name.
    pub full_key: String,
    pub requests_per_unit: u32,
    /// None only for `unlimited` rules (and invalid overrides, refused by the service).
    pub unit: Option<Unit>,
    pub name: String,
    pub replaces: Vec<String>,
    pub unlimited: bool,
    pub shadow_mode: bool,
    pub quota_mode: bool,
    pub detailed_metric: bool,
    pub stats: Arc<RuleStats>,
}

/// The outcome of a lookup that found a limit.
#[derive(Debug, Clone)]
pub struct Matched {
    pub rule: Arc<Rule>,
    /// The stats of this match: the rule's own, or those of a detailed / value_to_metric
    /// name.
    pub stats: Arc<RuleStats>,
    /// Per entry of the descriptor, the wildcard value that replaces the request's in the
    /// counter key (`share_threshold`); empty when none does.
    pub shared_values: Vec<Option<String>>,
}

/// Looks up the limit for one descriptor. `None`: unknown domain, or no limit at the
/// descriptor's depth.
pub fn lookup(
    domains: &HashMap<String, Domain>,
    domain: &str,
    descriptor: &RateLimitDescriptor,
    metrics: &Metrics,
) -> Option<Matched> {
    let Some(config) = domains.get(domain) else {
        metrics.domain_not_found(domain);
        return None;
    };

    if let Some(limit) = &descriptor.limit {
        let full_key = override_stats_key(domain, descriptor);
        let stats = metrics.rule_stats(domain, &full_key);
        let rule = Arc::new(Rule {
            full_key,
            requests_per_unit: limit.requests_per_unit,
            unit: Unit::from_proto(limit.unit),
            name: String::new(),
            replaces: Vec::new(),
            unlimited: false,
            shadow_mode: false,
            quota_mode: false,
            detailed_metric: false,
            stats: stats.clone(),
        });
        return Some(Matched {
            rule,
            stats,
            shared_values: Vec::new(),
        });
    }

    let entries = &descriptor.entries;
    let mut level = &config.root;
    let mut found: Option<Arc<Rule>> = None;
    let mut shared_values: Vec<Option<String>> = Vec::new();
    let mut detailed_key = String::from(domain);
    let mut value_key = String::from(domain);

    for (index, entry) in entries.iter().enumerate() {
        let mut composite = String::with_capacity(entry.key.len() + entry.value.len() + 1);
        composite.push_str(&entry.key);
        composite.push('_');
        composite.push_str(&entry.value);
        detailed_key.push('.');
        detailed_key.push_str(&composite);

        let mut next = level.children.get(&composite);
        let mut wildcard_key: Option<&str> = None;
        if next.is_none() {
            for wildcard in &level.wildcards {
                if wildcard.matches(&composite) {
                    next = level.children.get(&wildcard.key);
                    wildcard_key = Some(&wildcard.key);
                    break;
                }
            }
        }
        let matched_with_value = next.is_some();
        if next.is_none() {
            next = level.children.get(&entry.key);
        }

        let key_prefix_len = entry.key.len() + 1;
        let mut shared_here: Option<&str> = None;
        if let (Some(_), Some(node)) = (wildcard_key, next) {
            if let Some(pattern) = &node.share_threshold_pattern {
                let value = pattern.get(key_prefix_len..).unwrap_or(pattern.as_str());
                if shared_values.is_empty() {
                    shared_values = vec![None; entries.len()];
                }
                if let Some(slot) = shared_values.get_mut(index) {
                    *slot = Some(value.to_owned());
                }
                shared_here = Some(value);
            }
        }

        value_key.push('.');
        value_key.push_str(&entry.key);
        if let Some(node) = next {
            let value = match wildcard_key {
                Some(pattern) => match shared_here {
                    Some(shared) => shared,
                    None if node.value_to_metric => entry.value.as_str(),
                    None => pattern.get(key_prefix_len..).unwrap_or(""),
                },
                None if matched_with_value => entry.value.as_str(),
                None if node.value_to_metric => entry.value.as_str(),
                None => "",
            };
            if !value.is_empty() {
                value_key.push('_');
                value_key.push_str(value);
            }
        }

        if let Some(node) = next {
            if let Some(rule) = &node.limit {
                if index + 1 == entries.len() {
                    found = Some(rule.clone());
                }
            }
        }

        match next {
            Some(node) if !node.children.is_empty() => level = node,
            _ => break,
        }
    }

    let rule = found?;
    let stats = if rule.detailed_metric {
        let key = if shared_values.is_empty() {
            detailed_key
        } else {
            shared_detailed_key(domain, descriptor, &shared_values)
        };
        metrics.rule_stats(domain, &key)
    } else if value_key != rule.full_key {
        metrics.rule_stats(domain, &value_key)
    } else {
        rule.stats.clone()
    };
    Some(Matched {
        rule,
        stats,
        shared_values,
    })
}

/// `domain.k1.k2`: the stats name of a limit override, from its entries' keys only (the
/// values are the caller's: users, keys, months).
fn override_stats_key(domain: &str, descriptor: &RateLimitDescriptor) -> String {
    let mut key = String::from(domain);
    for entry in &descriptor.entries {
        key.push('.');
        key.push_str(&entry.key);
    }
    key
}

fn shared_detailed_key(
    domain: &str,
    descriptor: &RateLimitDescriptor,
    shared_values: &[Option<String>],
) -> String {
    let mut key = String::from(domain);
    for (index, entry) in descriptor.entries.iter().enumerate() {
        key.push('.');
        key.push_str(&entry.key);
        let value = match shared_values.get(index) {
            Some(Some(shared)) => shared.as_str(),
            _ => entry.value.as_str(),
        };
        if !value.is_empty() {
            key.push('_');
            key.push_str(value);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitConfig;
    use tollgate_ratelimit_proto::RateLimitOverride;

    const CONFIG: &str = r#"
domain: test
descriptors:
  # upstream README example 3: key/value before key
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}

  # example 2: placeholders and nesting
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}

  # example 4: depth must match
  - key: key
    value: value
    rate_limit: {unit: second, requests_per_unit: 300}

  # wildcards: trailing, middle, several; first in order wins
  - key: path
    value: /api/*/action
    rate_limit: {unit: minute, requests_per_unit: 21}
  - key: path
    value: /api/*
    rate_limit: {unit: minute, requests_per_unit: 22}
  - key: route
    value: /api/*/resource/*/action
    rate_limit: {unit: minute, requests_per_unit: 23}
  - key: path
    value: exact
    rate_limit: {unit: minute, requests_per_unit: 24}

  # a wildcard level with nested descriptors
  - key: files
    value: "files/*"
    share_threshold: true
    descriptors:
      - key: user
        rate_limit: {unit: hour, requests_per_unit: 25}

  # a whitelisted key: no limit, no children
  - key: internal

  - key: service
    descriptors:
      - key: user
        value: user-a
        shadow_mode: true
        rate_limit: {unit: second, requests_per_unit: 10}
      - key: user
        value: user-b
        rate_limit: {unit: second, requests_per_unit: 20}
"#;

    fn config() -> RateLimitConfig {
        RateLimitConfig::from_yaml(CONFIG, &Metrics::default()).unwrap()
    }

    fn find(config: &RateLimitConfig, domain: &str, entries: &[(&str, &str)]) -> Option<Matched> {
        let descriptor = RateLimitDescriptor::from_entries(entries.iter().copied());
        lookup(&config.domains, domain, &descriptor, &Metrics::default())
    }

    #[test]
    fn table_of_matches() {
        let config = config();
        // (entries, expected requests_per_unit or None, expected rule key)
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<(u32, &'a str)>);
        let cases: &[Case] = &[
            (
                &[("remote_address", "10.0.0.1")],
                Some((10, "test.remote_address")),
            ),
            (
                &[("remote_address", "50.0.0.5")],
                Some((0, "test.remote_address_50.0.0.5")),
            ),
            (
                &[("message_type", "marketing"), ("to_number", "2061111111")],
                Some((5, "test.message_type_marketing.to_number")),
            ),
            (
                &[("to_number", "2061111111")],
                Some((100, "test.to_number")),
            ),
            // a placeholder without limit at the descriptor's depth
            (&[("message_type", "marketing")], None),
            // unknown value for a key that only has values configured
            (
                &[("message_type", "transactional"), ("to_number", "1")],
                None,
            ),
            // example 4: more entries than configured levels
            (&[("key", "value"), ("subkey", "subvalue")], None),
            (&[("key", "value")], Some((300, "test.key_value"))),
            (&[("key", "other")], None),
            // wildcards
            (
                &[("path", "/api/123/action")],
                Some((21, "test.path_/api/*/action")),
            ),
            (
                &[("path", "/api/123/other")],
                Some((22, "test.path_/api/*")),
            ),
            (&[("path", "/api/")], Some((22, "test.path_/api/*"))),
            (&[("path", "/apx")], None),
            (&[("path", "exact")], Some((24, "test.path_exact"))),
            (
                &[("route", "/api/v1/resource/123/action")],
                Some((23, "test.route_/api/*/resource/*/action")),
            ),
            (&[("route", "/api/v1/resource/123/other")], None),
            (
                &[("files", "files/a.pdf"), ("user", "u")],
                Some((25, "test.files_files/*.user")),
            ),
            (&[("files", "other/a.pdf"), ("user", "u")], None),
            (&[("internal", "x")], None),
            (
                &[("service", "s"), ("user", "user-a")],
                Some((10, "test.service.user_user-a")),
            ),
            (&[("service", "s"), ("user", "user-c")], None),
            (&[], None),
        ];
        for (entries, expected) in cases {
            let found = find(&config, "test", entries)
                .map(|m| (m.rule.requests_per_unit, m.rule.full_key.clone()));
            let expected = expected.map(|(n, key)| (n, key.to_owned()));
            assert_eq!(found, expected, "entries {entries:?}");
        }
        assert!(find(&config, "other-domain", &[("remote_address", "1")]).is_none());
    }

    #[test]
    fn seed_config_matches_user_and_quality_tier() {
        let config = RateLimitConfig::from_yaml(
            include_str!("../../../examples/ratelimit/ai-gateway.yaml"),
            &Metrics::default(),
        )
        .unwrap();
        let limit = |entries: &[(&str, &str)]| {
            find(&config, "ai-gateway", entries).map(|m| m.rule.requests_per_unit)
        };
        assert_eq!(limit(&[("user_id", "alice")]), Some(100));
        assert_eq!(
            limit(&[("user_id", "alice"), ("model_tier", "quality")]),
            Some(20)
        );
        assert_eq!(limit(&[("user_id", "alice"), ("model_tier", "fast")]), None);
        assert_eq!(limit(&[("model_tier", "quality")]), None);
    }

    #[test]
    fn wildcard_patterns() {
        let cases = [
            ("k_v*", "k_v", true),
            ("k_v*", "k_value", true),
            ("k_v*", "k_", false),
            ("k_*", "k_", true),
            ("k_a*b*c", "k_abc", true),
            ("k_a*b*c", "k_aXbYc", true),
            ("k_a*b*c", "k_acb", false),
            ("k_ab*ba", "k_aba", false), // prefix and suffix may not overlap
            ("k_*x*", "k_yyxyy", true),
            ("k_*x*", "k_yyy", false),
            ("k_plain", "k_plain", true),
            ("k_plain", "k_plainer", false),
            // as upstream, the pattern spans the composite `key_value`
            ("k_*", "k_x_y", true),
        ];
        for (pattern, value, expected) in cases {
            assert_eq!(
                Wildcard::new(pattern).matches(value),
                expected,
                "{pattern} ~ {value}"
            );
        }
    }

    #[test]
    fn share_threshold_shares_the_wildcard_value() {
        let config = config();
        let matched = find(&config, "test", &[("files", "files/a.pdf"), ("user", "u")]).unwrap();
        assert_eq!(
            matched.shared_values,
            vec![Some("files/*".to_owned()), None]
        );
        let plain = find(&config, "test", &[("path", "/api/1/action")]).unwrap();
        assert!(plain.shared_values.is_empty());
    }

    #[test]
    fn override_uses_the_descriptors_limit_if_the_domain_is_known() {
        let config = config();
        let mut descriptor = RateLimitDescriptor::from_entries([("anything", "x"), ("more", "")]);
        descriptor.limit = Some(RateLimitOverride {
            requests_per_unit: 42,
            unit: Unit::Minute.to_proto() as i32,
        });
        let metrics = Metrics::default();
        let matched = lookup(&config.domains, "test", &descriptor, &metrics).unwrap();
        assert_eq!(matched.rule.requests_per_unit, 42);
        assert_eq!(matched.rule.unit, Some(Unit::Minute));
        assert!(!matched.rule.shadow_mode);
        assert_eq!(matched.rule.full_key, "test.anything.more");
        assert!(Arc::ptr_eq(
            &matched.stats,
            &metrics.rule_stats("test", "test.anything.more")
        ));
        assert!(lookup(&config.domains, "nope", &descriptor, &metrics).is_none());
    }

    #[test]
    fn metric_names_follow_detailed_metric_and_value_to_metric() {
        let yaml = r#"
domain: m
descriptors:
  - key: key1
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: route
    value_to_metric: true
    descriptors:
      - key: http_method
        value_to_metric: true
        descriptors:
          - key: subject_id
            rate_limit: {unit: minute, requests_per_unit: 60}
  - key: user
    descriptors:
      - key: action
        value: "read*"
        rate_limit: {unit: minute, requests_per_unit: 100}
"#;
        let metrics = Metrics::default();
        let config = RateLimitConfig::from_yaml(yaml, &metrics).unwrap();
        let name = |entries: &[(&str, &str)]| {
            let descriptor = RateLimitDescriptor::from_entries(entries.iter().copied());
            lookup(&config.domains, "m", &descriptor, &metrics)
                .unwrap()
                .stats
                .key
                .clone()
        };
        assert_eq!(name(&[("key1", "unspecified")]), "m.key1_unspecified");
        assert_eq!(
            name(&[
                ("route", "api"),
                ("http_method", "GET"),
                ("subject_id", "123")
            ]),
            "m.route_api.http_method_GET.subject_id"
        );
        assert_eq!(
            name(&[("user", "alice"), ("action", "readfile")]),
            "m.user.action_read*"
        );
    }
}
