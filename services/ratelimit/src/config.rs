//! envoyproxy/ratelimit's YAML configuration format, read unchanged: parsing, validation
//! (with the same rules and error wording as upstream where it has them) and compilation
//! into the lookup tree of [`crate::matching`], once per load.
//!
//! ```yaml
//! domain: ai-gateway
//! descriptors:
//!   - key: user_id            # required
//!     value: ...              # optional; `*` matches any run of characters
//!     rate_limit:             # optional
//!       unit: hour            # second | minute | hour | day | week | month | year
//!       requests_per_unit: 100
//!       unlimited: false      # true: never counted, always OK (no unit allowed)
//!       name: ...             # for `replaces`
//!       replaces: [{name: ...}]
//!     shadow_mode: false      # count and report, but never say OVER_LIMIT
//!     quota_mode: false
//!     detailed_metric: false
//!     value_to_metric: false
//!     share_threshold: false  # wildcard matches share one counter
//!     metadata: {...}         # accepted, not used
//!     descriptors: [...]      # nested
//! ```
//!
//! One file holds one domain. A configuration is a file, or a directory whose `*.yaml` /
//! `*.yml` files are loaded together (a domain may appear in only one of them), as
//! upstream loads its runtime directory.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::matching::{Domain, Node, Rule, Wildcard};
use crate::metrics::Metrics;
use crate::units::Unit;

/// A configuration error: the file and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn error(file: &str, message: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{file}: {message}"))
}

/// A YAML scalar read as text, as upstream's yaml.v2 decodes `value: 123` or
/// `value: true` into a string field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or another scalar")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlRoot {
    #[serde(default)]
    domain: Option<Text>,
    #[serde(default)]
    descriptors: Option<Vec<YamlDescriptor>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlDescriptor {
    #[serde(default)]
    key: Option<Text>,
    #[serde(default)]
    value: Option<Text>,
    #[serde(default)]
    rate_limit: Option<YamlRateLimit>,
    #[serde(default)]
    descriptors: Option<Vec<YamlDescriptor>>,
    #[serde(default)]
    shadow_mode: Option<bool>,
    #[serde(default)]
    quota_mode: Option<bool>,
    #[serde(default)]
    detailed_metric: Option<bool>,
    #[serde(default)]
    value_to_metric: Option<bool>,
    #[serde(default)]
    share_threshold: Option<bool>,
    /// Upstream returns it as dynamic metadata when an option is on; accepted, unused.
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlRateLimit {
    #[serde(default)]
    requests_per_unit: Option<u32>,
    #[serde(default)]
    unit: Option<Text>,
    #[serde(default)]
    unlimited: Option<bool>,
    #[serde(default)]
    name: Option<Text>,
    #[serde(default)]
    replaces: Option<Vec<YamlReplaces>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlReplaces {
    #[serde(default)]
    name: Option<Text>,
}

fn text(value: &Option<Text>) -> &str {
    value.as_ref().map(|t| t.0.as_str()).unwrap_or("")
}

/// A loaded configuration: every domain's lookup tree.
#[derive(Debug, Default)]
pub struct RateLimitConfig {
    pub(crate) domains: HashMap<String, Domain>,
}

impl RateLimitConfig {
    /// Parses and compiles one or more files given as `(name, content)`; the name is only
    /// used in error messages.
    pub fn from_sources(
        sources: &[(String, String)],
        metrics: &Metrics,
    ) -> Result<RateLimitConfig, ConfigError> {
        let mut config = RateLimitConfig::default();
        for (name, content) in sources {
            let root: YamlRoot = serde_yaml::from_str(content)
                .map_err(|e| error(name, format!("error loading config file: {e}")))?;
            let domain = text(&root.domain).to_owned();
            if domain.is_empty() {
                return Err(error(name, "config file cannot have empty domain"));
            }
            if config.domains.contains_key(&domain) {
                return Err(error(
                    name,
                    format!("duplicate domain '{domain}' in config file"),
                ));
            }
            let mut node = Node::default();
            load_descriptors(
                name,
                &domain,
                &mut node,
                &format!("{domain}."),
                root.descriptors.as_deref().unwrap_or(&[]),
                metrics,
            )?;
            config.domains.insert(domain, Domain { root: node });
        }
        Ok(config)
    }

    /// Parses one YAML document (tests and tools).
    pub fn from_yaml(content: &str, metrics: &Metrics) -> Result<RateLimitConfig, ConfigError> {
        Self::from_sources(&[("config".to_owned(), content.to_owned())], metrics)
    }

    /// Domain names, sorted (logs, debugging).
    pub fn domain_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.domains.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

fn load_descriptors(
    file: &str,
    domain: &str,
    parent: &mut Node,
    parent_key: &str,
    descriptors: &[YamlDescriptor],
    metrics: &Metrics,
) -> Result<(), ConfigError> {
    for descriptor in descriptors {
        let key = text(&descriptor.key);
        if key.is_empty() {
            return Err(error(file, "descriptor has empty key"));
        }
        // The composite key: `key` alone, or `key_value`.
        let value = text(&descriptor.value);
        let final_key = if value.is_empty() {
            key.to_owned()
        } else {
            format!("{key}_{value}")
        };
        let full_key = format!("{parent_key}{final_key}");
        if parent.children.contains_key(&final_key) {
            return Err(error(
                file,
                format!("duplicate descriptor composite key '{full_key}'"),
            ));
        }

        let rule = match &descriptor.rate_limit {
            None => None,
            Some(rate_limit) => Some(Arc::new(compile_rule(
                file, domain, &full_key, descriptor, rate_limit, metrics,
            )?)),
        };

        let share_threshold = descriptor.share_threshold.unwrap_or(false);
        let is_wildcard = final_key.contains('*');
        if share_threshold && !is_wildcard {
            return Err(error(
                file,
                format!(
                    "share_threshold can only be used with wildcard values (containing '*'), but found key '{final_key}'"
                ),
            ));
        }
        if is_wildcard {
            parent.wildcards.push(Wildcard::new(&final_key));
        }

        let mut node = Node {
            limit: rule,
            value_to_metric: descriptor.value_to_metric.unwrap_or(false),
            share_threshold_pattern: (share_threshold && is_wildcard).then(|| final_key.clone()),
            ..Node::default()
        };
        load_descriptors(
            file,
            domain,
            &mut node,
            &format!("{full_key}."),
            descriptor.descriptors.as_deref().unwrap_or(&[]),
            metrics,
        )?;
        parent.children.insert(final_key, node);
    }
    Ok(())
}

fn compile_rule(
    file: &str,
    domain: &str,
    full_key: &str,
    descriptor: &YamlDescriptor,
    rate_limit: &YamlRateLimit,
    metrics: &Metrics,
) -> Result<Rule, ConfigError> {
    let unlimited = rate_limit.unlimited.unwrap_or(false);
    let unit_name = text(&rate_limit.unit);
    let unit = Unit::from_name(unit_name);
    if unlimited {
        if unit.is_some() {
            return Err(error(
                file,
                "should not specify rate limit unit when unlimited",
            ));
        }
    } else if unit.is_none() {
        return Err(error(
            file,
            format!("invalid rate limit unit '{unit_name}'"),
        ));
    }
    let name = text(&rate_limit.name).to_owned();
    let mut replaces = Vec::new();
    for replaced in rate_limit.replaces.as_deref().unwrap_or(&[]) {
        let replaced = text(&replaced.name);
        if replaced.is_empty() {
            return Err(error(file, "should not have an empty replaces entry"));
        }
        if replaced == name {
            return Err(error(
                file,
                "replaces should not contain name of same descriptor",
            ));
        }
        replaces.push(replaced.to_owned());
    }
    Ok(Rule {
        full_key: full_key.to_owned(),
        requests_per_unit: rate_limit.requests_per_unit.unwrap_or(0),
        unit,
        name,
        replaces,
        unlimited,
        shadow_mode: descriptor.shadow_mode.unwrap_or(false),
        quota_mode: descriptor.quota_mode.unwrap_or(false),
        detailed_metric: descriptor.detailed_metric.unwrap_or(false),
        stats: metrics.rule_stats(domain, full_key),
    })
}

/// Where the configuration comes from: one file, or every `*.yaml`/`*.yml` file in a
/// directory.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
}

impl ConfigSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ConfigSource { path: path.into() }
    }

    /// The files' names and contents, in a stable order.
    pub fn read(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let files = self.files()?;
        let mut sources = Vec::with_capacity(files.len());
        for file in files {
            let name = file.display().to_string();
            let content = std::fs::read_to_string(&file)
                .map_err(|e| error(&name, format!("cannot read: {e}")))?;
            sources.push((name, content));
        }
        Ok(sources)
    }

    fn files(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let name = self.path.display().to_string();
        let metadata =
            std::fs::metadata(&self.path).map_err(|e| error(&name, format!("cannot read: {e}")))?;
        if !metadata.is_dir() {
            return Ok(vec![self.path.clone()]);
        }
        let entries =
            std::fs::read_dir(&self.path).map_err(|e| error(&name, format!("cannot list: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| is_yaml(path) && path.is_file())
            .collect();
        files.sort();
        Ok(files)
    }

    /// Reads and compiles the configuration.
    pub fn load(&self, metrics: &Metrics) -> Result<RateLimitConfig, ConfigError> {
        RateLimitConfig::from_sources(&self.read()?, metrics)
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<RateLimitConfig, ConfigError> {
        RateLimitConfig::from_yaml(yaml, &Metrics::default())
    }

    #[test]
    fn seed_config_loads_unchanged() {
        let text = include_str!("../../../examples/ratelimit/ai-gateway.yaml");
        let config = load(text).unwrap();
        assert_eq!(config.domain_names(), vec!["ai-gateway"]);
        let root = &config.domains["ai-gateway"].root;
        let user = &root.children["user_id"];
        let rule = user.limit.as_ref().unwrap();
        assert_eq!((rule.requests_per_unit, rule.unit), (100, Some(Unit::Hour)));
        let quality = user.children["model_tier_quality"].limit.as_ref().unwrap();
        assert_eq!(
            (quality.requests_per_unit, quality.unit),
            (20, Some(Unit::Hour))
        );
        assert_eq!(quality.full_key, "ai-gateway.user_id.model_tier_quality");
    }

    #[test]
    fn scalars_of_any_type_are_text_and_units_ignore_case() {
        let config = load(
            "domain: d\ndescriptors:\n  - key: port\n    value: 8080\n    rate_limit: {unit: SECOND, requests_per_unit: 1}\n  - key: flag\n    value: true\n    rate_limit: {unit: Week, requests_per_unit: 1}\n",
        )
        .unwrap();
        let root = &config.domains["d"].root;
        assert!(root.children.contains_key("port_8080"));
        assert_eq!(
            root.children["flag_true"].limit.as_ref().unwrap().unit,
            Some(Unit::Week)
        );
    }

    #[test]
    fn invalid_configurations_are_refused_with_upstreams_reasons() {
        let cases: &[(&str, &str)] = &[
            ("descriptors: []", "config file cannot have empty domain"),
            ("", "config file cannot have empty domain"),
            ("domain: d\ndescriptors:\n  - value: v", "descriptor has empty key"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}",
                "invalid rate limit unit 'fortnight'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {requests_per_unit: 1}",
                "invalid rate limit unit ''",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: unknown, requests_per_unit: 1}",
                "invalid rate limit unit 'unknown'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: hour}",
                "should not specify rate limit unit when unlimited",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n  - key: k",
                "duplicate descriptor composite key 'd.k'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    value: v\n    descriptors:\n      - key: a\n      - key: a",
                "duplicate descriptor composite key 'd.k_v.a'",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1, replaces: [{name: ''}]}",
                "should not have an empty replaces entry",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1, name: a, replaces: [{name: a}]}",
                "replaces should not contain name of same descriptor",
            ),
            (
                "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n    rate_limit: {unit: hour, requests_per_unit: 1}",
                "share_threshold can only be used with wildcard values",
            ),
            ("domain: d\nfoo: 1", "unknown field `foo`"),
            (
                "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: -1}",
                "error loading config file",
            ),
            ("domain: [d", "error loading config file"),
        ];
        for (yaml, expected) in cases {
            let message = load(yaml).err().map(|e| e.0).unwrap_or_default();
            assert!(
                message.contains(expected),
                "config {yaml:?}: expected {expected:?}, got {message:?}"
            );
        }
    }

    #[test]
    fn every_upstream_key_is_accepted() {
        load(
            r#"
domain: everything
descriptors:
  - key: a
    value: "v*"
    shadow_mode: true
    quota_mode: false
    detailed_metric: true
    value_to_metric: true
    share_threshold: true
    metadata: {team: x, nested: {list: [1, 2]}}
    rate_limit:
      name: first
      replaces: [{name: other}]
      unit: minute
      requests_per_unit: 5
    descriptors:
      - key: b
        rate_limit: {unlimited: true}
"#,
        )
        .unwrap();
    }

    #[test]
    fn a_directory_loads_every_yaml_file_and_refuses_duplicate_domains() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "domain: a\ndescriptors: []\n").unwrap();
        std::fs::write(dir.path().join("b.yml"), "domain: b\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
        let source = ConfigSource::new(dir.path());
        let config = source.load(&Metrics::default()).unwrap();
        assert_eq!(config.domain_names(), vec!["a", "b"]);

        std::fs::write(dir.path().join("c.yaml"), "domain: a\n").unwrap();
        let message = source.load(&Metrics::default()).unwrap_err().0;
        assert!(message.contains("duplicate domain 'a'"), "{message}");
    }
}
