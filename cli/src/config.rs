//! The one user-facing configuration file (`examples/tollgate.yaml`): from it
//! come the Envoy bootstrap, each filter's JSON configuration and the mock
//! backends `tollgate run` starts.

use anyhow::{anyhow, bail, Context, Result};
use tollgate_router::config::{RouterConfig, Routing};
use serde::Deserialize;
use std::collections::BTreeSet;
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
    /// Public model name → model group (strategy, targets, fallbacks), in the
    /// router's own words: this section goes to the router filter as it is.
    #[serde(default)]
    pub models: serde_json::Map<String, serde_json::Value>,
    /// Other names for models, passed to the router as they are.
    #[serde(default)]
    pub aliases: serde_json::Map<String, serde_json::Value>,
    /// `x-model-tier` value → tier (its model, pinned backend, allowed teams).
    #[serde(default)]
    pub tiers: serde_json::Map<String, serde_json::Value>,
    /// Where requests matching no model or tier go, split by weight.
    pub default_route: Vec<WeightedBackend>,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Each filter's own JSON configuration; a filter left out is not installed.
    #[serde(default)]
    pub filters: FilterConfigs,
    /// The rate-limit service the guard calls (`tollgate run` starts it).
    #[serde(default)]
    pub ratelimit: Option<RateLimitService>,
}

/// The rate-limit service (services/ratelimit) the guard filter calls over
/// gRPC: the Envoy bootstrap gets an HTTP/2 cluster for it, named as the
/// guard's `cluster` (default `ratelimit`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitService {
    /// envoyproxy/ratelimit configuration: a file, or a directory of `*.yaml`
    /// (a relative path is relative to the working directory).
    #[serde(default)]
    pub config: Option<std::path::PathBuf>,
    /// Redis URL for counters shared by replicas; in memory without it.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Where `tollgate run` starts it: gRPC, and HTTP (/healthcheck, /metrics).
    #[serde(default = "default_ratelimit_listen")]
    pub listen: String,
    #[serde(default = "default_ratelimit_http_listen")]
    pub http_listen: String,
    /// `host:port` of a service that is already running: `tollgate run`
    /// starts none and the cluster points there.
    #[serde(default)]
    pub address: Option<String>,
}

fn default_ratelimit_listen() -> String {
    "127.0.0.1:8081".to_string()
}

fn default_ratelimit_http_listen() -> String {
    "127.0.0.1:8080".to_string()
}

impl RateLimitService {
    /// The address the guard's cluster points at.
    pub fn target(&self) -> &str {
        self.address.as_deref().unwrap_or(&self.listen)
    }
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
    /// Deadline for a whole response from this backend, streams included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Environment variable holding the backend's API key; the router sends
    /// it in the provider's header. Only the variable's name enters configs.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the API key (e.g. a mounted secret); `tollgate run` reads
    /// it and hands it to Envoy's environment, never to a config.
    #[serde(default)]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Path for active health checks (none: passive checks only).
    #[serde(default)]
    pub health_check_path: Option<String>,
    /// Extra arguments for the mock (fault injection in tests and demos).
    #[serde(default)]
    pub mock_args: Vec<String>,
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
    /// A `retry-after` from the backend is honoured up to this many seconds.
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after_seconds: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { num_retries: 2, on_status: vec![429, 500, 502, 503], max_retry_after_seconds: default_max_retry_after() }
    }
}

fn default_max_retry_after() -> u64 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub interval_seconds: u64,
    /// Failed checks in a row before an endpoint is taken out.
    pub unhealthy_threshold: u32,
    /// How often an endpoint that is out is checked again (Envoy's
    /// `unhealthy_interval`): a check that timed out while Envoy's main thread
    /// was busy (loading the wasm modules at start) costs seconds of
    /// misrouting, not a whole interval.
    #[serde(default = "default_unhealthy_interval_seconds")]
    pub unhealthy_interval_seconds: u64,
}

fn default_unhealthy_interval_seconds() -> u64 {
    5
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self { interval_seconds: 30, unhealthy_threshold: 3, unhealthy_interval_seconds: default_unhealthy_interval_seconds() }
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
    /// Path before `/v1/...`, without a trailing slash ("" for none).
    pub path: String,
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
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let path = if path.trim_end_matches('/').is_empty() { String::new() } else { format!("/{}", path.trim_end_matches('/')) };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().with_context(|| format!("bad port in `{url}`"))?),
            None => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            bail!("`{url}` has no host");
        }
        Ok(Self { tls, host: host.to_string(), port, path })
    }
}

impl Backend {
    /// The environment variable the router reads this backend's key from:
    /// `api_key_env`, or the one through which `tollgate run` hands Envoy a
    /// key read from `api_key_file`.
    pub fn key_variable(&self) -> Option<String> {
        match (&self.api_key_env, &self.api_key_file) {
            (Some(var), _) => Some(var.clone()),
            (None, Some(_)) => Some(format!("TOLLGATE_API_KEY_{}", self.name.to_ascii_uppercase().replace('-', "_"))),
            (None, None) => None,
        }
    }
}

impl GatewayConfig {
    /// Environment variables holding the backends' keys.
    pub fn key_variables(&self) -> Vec<String> {
        self.backends.iter().filter_map(Backend::key_variable).collect()
    }

    /// The router filter's JSON configuration: its own settings from
    /// `filters.router`, plus what this file says about backends, models,
    /// aliases and tiers.
    pub fn router_config(&self) -> Result<serde_json::Value> {
        let mut config = match &self.filters.router {
            Some(serde_json::Value::Object(settings)) => settings.clone(),
            Some(serde_json::Value::Null) | None => serde_json::Map::new(),
            Some(_) => bail!("filters.router: must be an object"),
        };
        let mut backends = serde_json::Map::new();
        for backend in &self.backends {
            let endpoint = Endpoint::parse(&backend.url)?;
            let mut entry = serde_json::json!({
                "provider": match backend.provider { Provider::Openai => "openai", Provider::Anthropic => "anthropic" },
                "path_prefix": endpoint.path,
            });
            if !backend.mock {
                let default_port = if endpoint.tls { 443 } else { 80 };
                let authority =
                    if endpoint.port == default_port { endpoint.host.clone() } else { format!("{}:{}", endpoint.host, endpoint.port) };
                entry["authority"] = serde_json::Value::String(authority);
            }
            if let Some(variable) = backend.key_variable() {
                entry["api_key_env"] = serde_json::Value::String(variable);
            }
            backends.insert(backend.name.clone(), entry);
        }
        config.insert("backends".into(), serde_json::Value::Object(backends));
        config.insert("models".into(), serde_json::Value::Object(self.models.clone()));
        config.insert("aliases".into(), serde_json::Value::Object(self.aliases.clone()));
        config.insert("tiers".into(), serde_json::Value::Object(self.tiers.clone()));
        // The guard's virtual keys with their teams, so a key's team decides
        // tiers' allowed_teams before the guard (after the router) sets it.
        if let Some(identity) = self.filters.guard.as_ref().and_then(|g| g.get("identity")) {
            if let Some(keys) = identity.get("keys").and_then(serde_json::Value::as_array) {
                let keys = keys
                    .iter()
                    .map(|key| {
                        let mut entry = serde_json::Map::new();
                        for field in ["sha256", "team"] {
                            if let Some(value) = key.get(field) {
                                entry.insert(field.into(), value.clone());
                            }
                        }
                        serde_json::Value::Object(entry)
                    })
                    .collect();
                config.insert("keys".into(), serde_json::Value::Array(keys));
            }
            if let Some(headers) = identity.get("key_headers") {
                config.insert("key_headers".into(), headers.clone());
            }
        }
        Ok(serde_json::Value::Object(config))
    }

    /// The guard filter's JSON configuration: `filters.guard`, with the
    /// meter's price table as its `prices` unless it sets its own, so both
    /// price a request alike.
    pub fn guard_config(&self) -> Result<Option<serde_json::Value>> {
        let mut config = match &self.filters.guard {
            None => return Ok(None),
            Some(serde_json::Value::Object(settings)) => settings.clone(),
            Some(serde_json::Value::Null) => serde_json::Map::new(),
            Some(_) => bail!("filters.guard: must be an object"),
        };
        if !config.contains_key("prices") {
            if let Some(prices) = self.filters.meter.as_ref().and_then(|m| m.get("models")) {
                config.insert("prices".into(), prices.clone());
            }
        }
        Ok(Some(serde_json::Value::Object(config)))
    }

    /// The Envoy cluster the guard calls, when its configuration calls the
    /// rate-limit service at all (it has request limits or budgets).
    pub fn guard_cluster(&self) -> Result<Option<String>> {
        let Some(guard) = self.guard_config()? else { return Ok(None) };
        let calls = ["rate_limits", "budgets"]
            .iter()
            .any(|k| guard.get(k).and_then(serde_json::Value::as_array).is_some_and(|a| !a.is_empty()));
        if !calls {
            return Ok(None);
        }
        Ok(Some(guard.get("cluster").and_then(serde_json::Value::as_str).unwrap_or("ratelimit").to_string()))
    }

    /// The router's compiled view of this file (keys are not read here).
    pub fn routing(&self) -> Result<Routing> {
        let json = self.router_config()?.to_string();
        let config: RouterConfig = tollgate_core::config::parse(json.as_bytes()).map_err(|e| anyhow!("{e}"))?;
        Routing::compile(config, &|_| Some("not-read-at-render-time".to_string())).map_err(|e| anyhow!("{e}"))
    }

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
        let check = &self.health_check;
        for (field, seconds) in [("interval_seconds", check.interval_seconds), ("unhealthy_interval_seconds", check.unhealthy_interval_seconds)] {
            if seconds == 0 {
                bail!("health_check.{field}: must be at least 1");
            }
        }
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
        if let Some(router) = self.filters.router.as_ref().and_then(|r| r.as_object()) {
            for derived in ["backends", "models", "aliases", "tiers"] {
                if router.contains_key(derived) {
                    bail!("filters.router.{derived}: set `{derived}` at the top level; the router's copy is derived from it");
                }
            }
            for derived in ["keys", "key_headers"] {
                if router.contains_key(derived) {
                    bail!("filters.router.{derived}: set it in filters.guard.identity; the router's copy is derived from it");
                }
            }
        }
        // Models, aliases and tiers are checked by the router's own compiler,
        // so this file and the filter can never disagree on what they mean.
        self.routing()?;
        if self.default_route.is_empty() {
            bail!("default_route: needs at least one backend");
        }
        for weighted in &self.default_route {
            known("default_route", &weighted.backend)?;
        }
        if self.default_route.iter().all(|w| w.weight == 0) {
            bail!("default_route: weights must not all be 0");
        }
        if let Some(cluster) = self.guard_cluster()? {
            let Some(service) = &self.ratelimit else {
                bail!("filters.guard calls a rate-limit service (cluster `{cluster}`): add a `ratelimit:` section");
            };
            if service.address.is_none() && service.config.is_none() {
                bail!("ratelimit: needs `config` (the service's rules) or the `address` of a running service");
            }
            if self.backend(&cluster).is_some() {
                bail!("filters.guard.cluster: `{cluster}` is also a backend's name");
            }
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
        assert_eq!(config.health_check.unhealthy_interval_seconds, 5);
        let zero = format!("{MINIMAL}health_check: {{interval_seconds: 30, unhealthy_threshold: 3, unhealthy_interval_seconds: 0}}\n");
        assert!(parse(&zero).unwrap_err().to_string().contains("health_check.unhealthy_interval_seconds"));
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("https://api.openai.com").unwrap(),
            Endpoint { tls: true, host: "api.openai.com".into(), port: 443, path: String::new() }
        );
        let azure = Endpoint::parse("http://localhost:8001/openai/").unwrap();
        assert_eq!((azure.port, azure.path.as_str()), (8001, "/openai"));
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://:80").is_err());
        assert!(Endpoint::parse("http://h:port").is_err());
    }

    #[test]
    fn references_to_unknown_names_are_refused_naming_the_field() {
        let yaml = format!("{MINIMAL}models: {{m: {{targets: [{{backend: nope}}]}}}}\n");
        let e = parse(&yaml).unwrap_err();
        assert_eq!(e.to_string(), "invalid configuration at `models.m.targets.0.backend`: unknown backend `nope`");
        let yaml = format!("{MINIMAL}models: {{m: {{targets: [{{backend: a}}]}}}}\ntiers: {{fast: {{model: nope}}}}\n");
        assert!(parse(&yaml).unwrap_err().to_string().contains("`tiers.fast.model`"));
        let yaml = format!("{MINIMAL}default_route: [{{backend: nope, weight: 1}}]\n");
        assert!(parse(&yaml).is_err());
    }

    #[test]
    fn the_router_config_is_derived_from_the_file() {
        let yaml = "
backends:
  - {name: a, provider: openai, url: 'http://127.0.0.1:8001', mock: true}
  - {name: claude, provider: anthropic, url: 'https://api.anthropic.com', api_key_env: ANTHROPIC_API_KEY}
  - {name: azure, provider: openai, url: 'https://example.openai.azure.com:8443/openai', api_key_file: /run/secrets/azure}
models: {m: {targets: [{backend: a}, {backend: claude, model: claude-x}]}}
aliases: {mm: m}
default_route: [{backend: a, weight: 1}]
filters: {router: {max_body_bytes: 10}}
";
        let config = parse(yaml).unwrap();
        let router = config.router_config().unwrap();
        assert_eq!(router["max_body_bytes"], 10);
        assert_eq!(router["aliases"]["mm"], "m");
        assert_eq!(router["backends"]["a"], serde_json::json!({"provider": "openai", "path_prefix": ""}));
        assert_eq!(router["backends"]["claude"]["authority"], "api.anthropic.com");
        assert_eq!(router["backends"]["claude"]["api_key_env"], "ANTHROPIC_API_KEY");
        assert_eq!(router["backends"]["azure"]["authority"], "example.openai.azure.com:8443");
        assert_eq!(router["backends"]["azure"]["path_prefix"], "/openai");
        assert_eq!(router["backends"]["azure"]["api_key_env"], "TOLLGATE_API_KEY_AZURE");
        assert_eq!(config.key_variables(), ["ANTHROPIC_API_KEY", "TOLLGATE_API_KEY_AZURE"]);
        let twice = yaml.replace("filters: {router: {max_body_bytes: 10}}", "filters: {router: {models: {}}}");
        assert!(parse(&twice).unwrap_err().to_string().contains("filters.router.models"));
        assert!(router.get("keys").is_none(), "no guard, no keys");
    }

    #[test]
    fn the_router_gets_the_guards_virtual_keys_with_their_teams_only() {
        let yaml = format!(
            "{MINIMAL}filters:
  router: {{}}
  guard:
    identity:
      key_headers: [x-api-key]
      keys: [{{sha256: '{hash}', id: k1, user: alice, team: search}}, {{sha256: '{hash2}', id: k2, user: bob}}]
",
            hash = "a".repeat(64),
            hash2 = "b".repeat(64)
        );
        let router = parse(&yaml).unwrap().router_config().unwrap();
        assert_eq!(router["keys"], serde_json::json!([{"sha256": "a".repeat(64), "team": "search"}, {"sha256": "b".repeat(64)}]));
        assert_eq!(router["key_headers"], serde_json::json!(["x-api-key"]));
        let own = yaml.replace("router: {}", "router: {keys: []}");
        assert!(parse(&own).unwrap_err().to_string().contains("filters.router.keys"));
    }

    #[test]
    fn a_guard_that_calls_the_rate_limit_service_needs_one() {
        let guard = "filters: {guard: {budgets: [{name: b, tokens: 10, window: day}]}}\n";
        let e = parse(&format!("{MINIMAL}{guard}")).unwrap_err();
        assert!(e.to_string().contains("add a `ratelimit:` section"), "{e}");
        let config = parse(&format!("{MINIMAL}{guard}ratelimit: {{config: examples/ratelimit/ai-gateway.yaml}}\n")).unwrap();
        assert_eq!(config.guard_cluster().unwrap().as_deref(), Some("ratelimit"));
        assert_eq!(config.ratelimit.as_ref().unwrap().target(), "127.0.0.1:8081");
        let e = parse(&format!("{MINIMAL}{guard}ratelimit: {{}}\n")).unwrap_err();
        assert!(e.to_string().contains("needs `config`"), "{e}");
        // A guard with nothing to ask the service needs none.
        assert!(parse(&format!("{MINIMAL}filters: {{guard: {{}}}}\n")).unwrap().guard_cluster().unwrap().is_none());
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
