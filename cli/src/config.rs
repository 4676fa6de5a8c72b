//! The one user-facing configuration file (`examples/tollgate.yaml`): from it
//! come the Envoy bootstrap, each filter's JSON configuration and the mock
//! backends `tollgate run` starts.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where clients reach the gateway.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Envoy's admin endpoint (stats, readiness); keep it on loopback.
    #[serde(default = "default_admin")]
    pub admin: String,
    pub backends: Vec<Backend>,
    /// Public model name → backend serving it (matched on `x-ai-model`, which
    /// the router filter sets from the body's `model`).
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// `x-model-tier` value → backend.
    #[serde(default)]
    pub tiers: BTreeMap<String, String>,
    /// Where requests matching no model or tier go, split by weight.
    pub default_route: Vec<WeightedBackend>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Each filter's own JSON configuration; a filter left out is not installed.
    #[serde(default)]
    pub filters: FilterConfigs,
}

fn default_listen() -> String {
    "127.0.0.1:10000".to_string()
}

fn default_admin() -> String {
    "127.0.0.1:9901".to_string()
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// OpenAI or an OpenAI-compatible server (vLLM, NIM, …).
    Openai,
    Anthropic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    pub provider: Provider,
    /// `http://host:port` or `https://host[:port]`.
    pub url: String,
    /// When true, `tollgate run` starts a mock upstream with this name at `url`.
    #[serde(default)]
    pub mock: bool,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    60_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    pub backend: String,
    pub weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub num_retries: u32,
    /// Upstream statuses that are retried (on top of connection failures).
    pub on_status: Vec<u16>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { num_retries: 2, on_status: vec![429, 500, 502, 503] }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FilterConfigs {
    pub router: Option<serde_json::Value>,
    pub meter: Option<serde_json::Value>,
    pub guard: Option<serde_json::Value>,
}

/// A parsed `scheme://host:port` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            bail!("`{url}` must start with http:// or https://");
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().with_context(|| format!("bad port in `{url}`"))?),
            None => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            bail!("`{url}` has no host");
        }
        Ok(Self { tls, host: host.to_string(), port })
    }
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self = serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config.validate().with_context(|| format!("checking {}", path.display()))?;
        Ok(config)
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    fn validate(&self) -> Result<()> {
        let mut names = BTreeSet::new();
        for backend in &self.backends {
            if backend.name.is_empty() || !backend.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
                // No dots: Envoy's stat tags cut cluster names at the first one.
                bail!("backends: name `{}` must be letters, digits, '-' or '_'", backend.name);
            }
            if !names.insert(backend.name.as_str()) {
                bail!("backends: `{}` is defined twice", backend.name);
            }
            Endpoint::parse(&backend.url).with_context(|| format!("backends.{}.url", backend.name))?;
        }
        let known = |what: &str, name: &str| -> Result<()> {
            if names.contains(name) {
                Ok(())
            } else {
                bail!("{what}: unknown backend `{name}`")
            }
        };
        for (model, backend) in &self.models {
            known(&format!("models.{model}"), backend)?;
        }
        for (tier, backend) in &self.tiers {
            known(&format!("tiers.{tier}"), backend)?;
        }
        if self.default_route.is_empty() {
            bail!("default_route: needs at least one backend");
        }
        for weighted in &self.default_route {
            known("default_route", &weighted.backend)?;
        }
        if self.default_route.iter().all(|w| w.weight == 0) {
            bail!("default_route: weights must not all be 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<GatewayConfig> {
        let config: GatewayConfig = serde_yaml::from_str(yaml)?;
        config.validate()?;
        Ok(config)
    }

    const MINIMAL: &str = "
backends:
  - {name: a, provider: openai, url: 'http://127.0.0.1:8001', mock: true}
default_route: [{backend: a, weight: 1}]
";

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.listen, "127.0.0.1:10000");
        assert_eq!(config.retry.num_retries, 2);
        assert!(config.filters.router.is_none());
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("https://api.openai.com").unwrap(),
            Endpoint { tls: true, host: "api.openai.com".into(), port: 443 }
        );
        assert_eq!(Endpoint::parse("http://localhost:8001/v1").unwrap().port, 8001);
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://:80").is_err());
        assert!(Endpoint::parse("http://h:port").is_err());
    }

    #[test]
    fn references_to_unknown_backends_are_refused() {
        let yaml = format!("{MINIMAL}tiers: {{fast: nope}}\n");
        let e = parse(&yaml).unwrap_err();
        assert_eq!(e.to_string(), "tiers.fast: unknown backend `nope`");
    }

    #[test]
    fn unknown_fields_and_duplicates_are_refused() {
        assert!(parse(&format!("{MINIMAL}tier: {{}}\n")).is_err());
        let twice = "
backends:
  - {name: a, provider: openai, url: 'http://h:1'}
  - {name: a, provider: openai, url: 'http://h:2'}
default_route: [{backend: a, weight: 1}]
";
        assert!(parse(twice).unwrap_err().to_string().contains("defined twice"));
    }
}
