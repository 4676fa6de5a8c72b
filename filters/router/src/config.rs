//! The router's configuration: what a platform team describes once (backends,
//! model groups with their targets and fallbacks, aliases, tiers), parsed,
//! validated and compiled into lookup tables once per plugin.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use tollgate_core::virtual_keys::parse_key_hash;
use tollgate_host::ConfigError;

const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Largest request body the router reads; larger ones get a 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Request header naming the caller's team, set by an authentication
    /// layer in front (never trust it from clients without one).
    #[serde(default = "default_team_header")]
    pub team_header: String,
    /// Virtual keys and their teams (`tollgate render` copies the guard's
    /// `identity.keys`): a request presenting one is of that key's team for
    /// tiers' `allowed_teams`, whatever `team_header` says. The guard, which
    /// runs after the router, gives the same key the same team.
    #[serde(default)]
    pub keys: Vec<TeamKey>,
    /// Headers carrying a virtual key, the first present wins (as the guard's).
    #[serde(default = "default_key_headers")]
    pub key_headers: Vec<String>,
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Public model name → the group of backends serving it.
    #[serde(default)]
    pub models: BTreeMap<String, ModelGroupConfig>,
    /// Other names for models (`gpt4` → `gpt-4-turbo`).
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// What wins when the body's model is not one of the tier's models.
    #[serde(default)]
    pub tier_model_conflict: ConflictPolicy,
    #[serde(default)]
    pub cooldown: CooldownConfig,
}

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

fn default_team_header() -> String {
    "x-tollgate-team".to_string()
}

fn default_key_headers() -> Vec<String> {
    vec!["authorization".into(), "x-api-key".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamKey {
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// The key's team; none: a key of no team, allowed only on open tiers.
    #[serde(default)]
    pub team: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openai,
    Anthropic,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub provider: Provider,
    /// Host header for the backend (its DNS name), when it is not a mock on loopback.
    #[serde(default)]
    pub authority: Option<String>,
    /// Path prefix before `/v1/...` (e.g. `/openai` for `https://host/openai`).
    #[serde(default)]
    pub path_prefix: String,
    /// Environment variable holding the backend's API key (given to the VM via
    /// `vm_config.environment_variables.host_env_keys`, never in the config).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Anthropic API version sent to Anthropic backends.
    #[serde(default = "default_anthropic_version")]
    pub anthropic_version: String,
}

fn default_anthropic_version() -> String {
    "2023-06-01".to_string()
}

// Hand-written so a key read into the config can never reach a log line.
impl fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendConfig")
            .field("provider", &self.provider)
            .field("authority", &self.authority)
            .field("path_prefix", &self.path_prefix)
            .field("api_key_env", &self.api_key_env)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Weighted random.
    #[default]
    SimpleShuffle,
    /// Fewest requests in flight (across worker threads).
    LeastBusy,
    /// Lowest moving-average time to first byte, random within a tolerance band.
    LatencyBased,
    /// Cheapest first; the others follow in price order as fallbacks.
    CostBased,
    /// Fewest tokens sent in the current minute.
    UsageBased,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelGroupConfig {
    #[serde(default)]
    pub strategy: Strategy,
    pub targets: Vec<TargetConfig>,
    /// Model groups tried, in order, when every target of this one failed.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// For latency-based: backends within this fraction of the fastest are
    /// picked at random, so one backend does not take all traffic.
    #[serde(default = "default_latency_tolerance")]
    pub latency_tolerance: f64,
}

fn default_latency_tolerance() -> f64 {
    0.2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub backend: String,
    /// The model id this backend knows the group by (default: the group's name).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Price per million input / output tokens, for cost-based routing.
    #[serde(default)]
    pub input_price: f64,
    #[serde(default)]
    pub output_price: f64,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// The tier's model when the request names none (or `auto`).
    pub model: String,
    /// Pins the tier to one backend of its model's group.
    #[serde(default)]
    pub backend: Option<String>,
    /// Other models the tier accepts as they are (its own model always).
    #[serde(default)]
    pub models: Vec<String>,
    /// Teams allowed to use the tier; empty means everyone.
    #[serde(default)]
    pub allowed_teams: Vec<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    /// Serve the model the body names.
    #[default]
    PreferModel,
    /// Serve the tier's model instead.
    PreferTier,
    /// Refuse with a 400.
    Reject,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct CooldownConfig {
    /// Failed attempts (429, 5xx) within one clock minute that put a backend
    /// in cool-down (LiteLLM's `allowed_fails` per minute).
    pub failures: u32,
    pub seconds: u64,
}

impl Default for CooldownConfig {
    fn default() -> Self {
        Self { failures: 3, seconds: 30 }
    }
}

/// A model group's target after validation.
#[derive(Debug, Clone)]
pub struct Target {
    pub backend: String,
    pub model: String,
    pub weight: u32,
    /// Blended price per million tokens (input and output averaged).
    pub price: f64,
}

#[derive(Debug)]
pub struct ModelGroup {
    pub name: String,
    pub strategy: Strategy,
    pub targets: Vec<Target>,
    pub fallbacks: Vec<String>,
    pub latency_tolerance: f64,
}

/// A backend with its credential read once at configuration time.
pub struct Backend {
    pub name: String,
    pub provider: Provider,
    pub authority: Option<String>,
    pub path_prefix: String,
    pub api_key: Option<String>,
    pub anthropic_version: String,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// The compiled configuration shared by every request of a plugin.
#[derive(Debug)]
pub struct Routing {
    pub max_body_bytes: usize,
    pub team_header: String,
    /// SHA-256 of a virtual key → its team.
    pub key_teams: HashMap<[u8; 32], Option<String>>,
    pub key_headers: Vec<String>,
    pub backends: HashMap<String, Backend>,
    pub groups: HashMap<String, ModelGroup>,
    pub aliases: HashMap<String, String>,
    pub tiers: HashMap<String, TierConfig>,
    pub conflict: ConflictPolicy,
    pub cooldown: CooldownConfig,
}

impl Routing {
    /// Validates and compiles; `read_env` supplies environment variables (the
    /// VM's own in wasm, a map in tests).
    pub fn compile(config: RouterConfig, read_env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        if config.max_body_bytes == 0 {
            return Err(ConfigError::new("max_body_bytes", "must be greater than 0"));
        }
        let mut backends = HashMap::new();
        for (name, backend) in config.backends {
            let api_key = match &backend.api_key_env {
                Some(var) => Some(read_env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    ConfigError::new(
                        format!("backends.{name}.api_key_env"),
                        format!("environment variable {var} is not set for the VM (list it in vm_config.environment_variables.host_env_keys)"),
                    )
                })?),
                None => None,
            };
            if !backend.path_prefix.is_empty() && !backend.path_prefix.starts_with('/') {
                return Err(ConfigError::new(format!("backends.{name}.path_prefix"), "must start with '/'"));
            }
            backends.insert(
                name.clone(),
                Backend {
                    name,
                    provider: backend.provider,
                    authority: backend.authority,
                    path_prefix: backend.path_prefix.trim_end_matches('/').to_string(),
                    api_key,
                    anthropic_version: backend.anthropic_version,
                },
            );
        }

        let mut groups = HashMap::new();
        for (name, group) in &config.models {
            let field = |rest: &str| format!("models.{name}.{rest}");
            if group.targets.is_empty() {
                return Err(ConfigError::new(field("targets"), "needs at least one target"));
            }
            if group.targets.iter().all(|t| t.weight == 0) {
                return Err(ConfigError::new(field("targets"), "weights must not all be 0"));
            }
            let mut targets = Vec::new();
            for (i, target) in group.targets.iter().enumerate() {
                if !backends.contains_key(&target.backend) {
                    return Err(ConfigError::new(
                        field(&format!("targets.{i}.backend")),
                        format!("unknown backend `{}`", target.backend),
                    ));
                }
                if target.input_price < 0.0 || target.output_price < 0.0 {
                    return Err(ConfigError::new(field(&format!("targets.{i}")), "prices must not be negative"));
                }
                targets.push(Target {
                    backend: target.backend.clone(),
                    model: target.model.clone().unwrap_or_else(|| name.clone()),
                    weight: target.weight,
                    price: (target.input_price + target.output_price) / 2.0,
                });
            }
            for (i, fallback) in group.fallbacks.iter().enumerate() {
                if !config.models.contains_key(fallback) || fallback == name {
                    return Err(ConfigError::new(
                        field(&format!("fallbacks.{i}")),
                        format!("`{fallback}` is not another model group"),
                    ));
                }
            }
            if !(0.0..=10.0).contains(&group.latency_tolerance) {
                return Err(ConfigError::new(field("latency_tolerance"), "must be between 0 and 10"));
            }
            groups.insert(
                name.clone(),
                ModelGroup {
                    name: name.clone(),
                    strategy: group.strategy,
                    targets,
                    fallbacks: group.fallbacks.clone(),
                    latency_tolerance: group.latency_tolerance,
                },
            );
        }

        for (alias, model) in &config.aliases {
            if !groups.contains_key(model) {
                return Err(ConfigError::new(format!("aliases.{alias}"), format!("unknown model `{model}`")));
            }
            if groups.contains_key(alias) {
                return Err(ConfigError::new(format!("aliases.{alias}"), "shadows a model of the same name"));
            }
        }
        for (tier, settings) in &config.tiers {
            let Some(group) = groups.get(&settings.model) else {
                return Err(ConfigError::new(format!("tiers.{tier}.model"), format!("unknown model `{}`", settings.model)));
            };
            if let Some(pinned) = &settings.backend {
                if !group.targets.iter().any(|t| &t.backend == pinned) {
                    return Err(ConfigError::new(
                        format!("tiers.{tier}.backend"),
                        format!("`{pinned}` does not serve `{}`", settings.model),
                    ));
                }
            }
            for model in &settings.models {
                if !groups.contains_key(model) && !config.aliases.contains_key(model) {
                    return Err(ConfigError::new(format!("tiers.{tier}.models"), format!("unknown model `{model}`")));
                }
            }
        }
        if config.cooldown.failures == 0 {
            return Err(ConfigError::new("cooldown.failures", "must be at least 1"));
        }
        let mut key_teams = HashMap::new();
        for (i, key) in config.keys.into_iter().enumerate() {
            let hash = parse_key_hash(&format!("keys.{i}.sha256"), &key.sha256)?;
            if key_teams.insert(hash, key.team).is_some() {
                return Err(ConfigError::new(format!("keys.{i}.sha256"), "the same key is configured twice"));
            }
        }

        Ok(Self {
            max_body_bytes: config.max_body_bytes,
            team_header: config.team_header.to_ascii_lowercase(),
            key_teams,
            key_headers: config.key_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            backends,
            groups,
            aliases: config.aliases.into_iter().collect(),
            tiers: config.tiers.into_iter().collect(),
            conflict: config.tier_model_conflict,
            cooldown: config.cooldown,
        })
    }

    /// The group a client's model name means, through aliases.
    pub fn group(&self, model: &str) -> Option<&ModelGroup> {
        let name = self.aliases.get(model).map_or(model, String::as_str);
        self.groups.get(name)
    }

    /// The order in which backends are tried for a group whose primary is
    /// `primary`: the primary, the group's other targets (cheapest first for
    /// cost-based groups), then each fallback group's targets. Every backend
    /// appears once. The local bootstrap and Gateway API manifests build one
    /// prioritised cluster per (group, primary) from this.
    pub fn attempt_order(&self, group: &ModelGroup, primary: &str) -> Vec<String> {
        let mut order = vec![primary.to_string()];
        let mut push_group = |group: &ModelGroup| {
            for target in crate::strategy::preference_order(group) {
                if !order.contains(&target.backend) {
                    order.push(target.backend.clone());
                }
            }
        };
        push_group(group);
        for fallback in &group.fallbacks {
            if let Some(fallback) = self.groups.get(fallback) {
                push_group(fallback);
            }
        }
        order
    }

    /// The model id to send to `backend` for a request routed to `group`: its
    /// own target in the group, else in the first fallback group it serves.
    /// Whether `value` in header `name` is a key this configuration gives a
    /// backend (as the per-attempt half writes it), not one a client sent.
    pub fn is_backend_credential(&self, name: &str, value: &str) -> bool {
        self.backends.values().any(|backend| match (&backend.api_key, backend.provider, name) {
            (Some(key), Provider::Openai, "authorization") => value.strip_prefix("Bearer ") == Some(key.as_str()),
            (Some(key), Provider::Anthropic, "x-api-key") => value == key,
            _ => false,
        })
    }

    pub fn model_for_backend<'a>(&'a self, group: &'a ModelGroup, backend: &str) -> Option<&'a str> {
        std::iter::once(group)
            .chain(group.fallbacks.iter().filter_map(|f| self.groups.get(f)))
            .find_map(|g| g.targets.iter().find(|t| t.backend == backend))
            .map(|t| t.model.as_str())
    }
}
