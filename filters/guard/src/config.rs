//! The guard's JSON configuration, validated and compiled once per plugin.
//!
//! ```json
//! {
//!   "domain": "ai-gateway", "cluster": "ratelimit", "timeout_ms": 100, "failure_mode": "allow",
//!   "identity": {"require_key": false, "user_header": "x-user-id",
//!                "keys": [{"sha256": "<hex of SHA-256(key)>", "id": "alice-1", "user": "alice", "team": "search"}]},
//!   "rate_limits": [{"descriptor": [{"key": "user_id", "from": "user"}]},
//!                   {"descriptor": [{"key": "user_id", "from": "user"}, {"key": "model_tier", "from": "tier"}]}],
//!   "budgets": [{"name": "key-monthly", "per": ["key"], "usd": 100, "window": "calendar_month"},
//!               {"name": "gpt-4-turbo", "per": ["model"], "models": ["gpt-4-turbo"], "usd": 50, "window": "calendar_month"}],
//!   "prices": {"gpt-4-turbo": {"input": 10, "output": 30}}
//! }
//! ```

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tollgate_core::prices::{Price, PriceConfig};
use tollgate_core::virtual_keys::parse_key_hash;
use tollgate_host::ConfigError;
use tollgate_ratelimit_proto::Unit;

/// Largest budget, in counts (tokens, or `usd_per_count` units). The guard
/// reads its ledger counters from `limit_remaining` (a u32) under a limit
/// override of `u32::MAX`, and a window's reservations (which include
/// refunded and rejected ones) must stay readable: half the range for the
/// budget leaves the other half for reservations that are later refunded.
pub const MAX_BUDGET_COUNTS: u64 = (u32::MAX / 2) as u64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Rate-limit domain every descriptor is sent under.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Envoy cluster (HTTP/2) of the rate-limit service.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Deadline of each call to the service.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What a request gets when the service fails or is late: `allow`
    /// (fail open: admitted, unlimited) or `deny` (fail closed: `failure_status`).
    #[serde(default)]
    pub failure_mode: FailureMode,
    #[serde(default = "default_failure_status")]
    pub failure_status: u32,
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Request limits: descriptors sent with one hit each; the limits live
    /// in the rate-limit service's configuration.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    /// Token and dollar budgets, enforced by the guard on counters the
    /// service keeps (see the crate documentation).
    #[serde(default)]
    pub budgets: Vec<BudgetConfig>,
    /// Completion tokens reserved for a request that sets no `max_tokens`.
    #[serde(default = "default_completion_tokens")]
    pub default_completion_tokens: u64,
    /// Prices, US dollars per million tokens (the meter's table); models not
    /// listed cost nothing against dollar budgets.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceConfig>,
    /// Request header with the model the router resolved; else the body's.
    #[serde(default = "default_model_header")]
    pub model_header: String,
    /// Request headers naming the tier, first present wins (the router's
    /// resolved tier, then the client's).
    #[serde(default = "default_tier_headers")]
    pub tier_headers: Vec<String>,
    /// Largest request body read for the estimate, and largest response body
    /// kept to read its usage.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Settlements later than this close to their window's end are dropped
    /// rather than risk landing in the next window (clock skew between Envoy
    /// and the service).
    #[serde(default = "default_settle_margin_seconds")]
    pub settle_margin_seconds: u64,
}

fn default_domain() -> String {
    "ai-gateway".into()
}
fn default_cluster() -> String {
    "ratelimit".into()
}
fn default_timeout_ms() -> u64 {
    100
}
fn default_failure_status() -> u32 {
    503
}
fn default_completion_tokens() -> u64 {
    256
}
fn default_model_header() -> String {
    "x-ai-model".into()
}
fn default_tier_headers() -> Vec<String> {
    vec!["x-ai-tier".into(), "x-model-tier".into()]
}
fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_settle_margin_seconds() -> u64 {
    2
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Refuse (401) requests without a configured key.
    #[serde(default)]
    pub require_key: bool,
    /// Headers carrying the caller's key, first present wins (`Bearer ` is dropped).
    #[serde(default = "default_key_headers")]
    pub key_headers: Vec<String>,
    /// Virtual keys, stored as the hex SHA-256 of the key.
    #[serde(default)]
    pub keys: Vec<VirtualKey>,
    /// Header naming the user when no configured key does (set by an
    /// authentication filter in front, or trusted from clients locally).
    #[serde(default = "default_user_header")]
    pub user_header: Option<String>,
    /// Header naming the team: read like `user_header`, and set by the guard
    /// to the key's team for the filters after it and the meter.
    #[serde(default = "default_team_header")]
    pub team_header: String,
    /// Remove a configured key's header before the request goes upstream
    /// (the router sets a backend's own key where it has one).
    #[serde(default = "yes")]
    pub strip_key: bool,
    /// When keys are not required, an unknown key still identifies its
    /// caller for `key` descriptors and budgets, as `sha256:` and the first
    /// 16 hex digits of its hash.
    #[serde(default = "yes")]
    pub unknown_keys_as_ids: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            require_key: false,
            key_headers: default_key_headers(),
            keys: Vec::new(),
            user_header: default_user_header(),
            team_header: default_team_header(),
            strip_key: true,
            unknown_keys_as_ids: true,
        }
    }
}

fn default_key_headers() -> Vec<String> {
    vec!["authorization".into(), "x-api-key".into()]
}
fn default_user_header() -> Option<String> {
    Some("x-user-id".into())
}
fn default_team_header() -> String {
    "x-tollgate-team".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualKey {
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// The key's id: the value of `key` descriptors (never the key itself).
    pub id: String,
    /// The key's user (default: the key's id).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub team: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    User,
    Team,
    /// The key's id.
    Key,
    /// The resolved model.
    Model,
    Tier,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Team => "team",
            Self::Key => "key",
            Self::Model => "model",
            Self::Tier => "tier",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Entries of the descriptor, in order. A descriptor with an entry whose
    /// source the request lacks is not sent (as Envoy's own actions do).
    pub descriptor: Vec<EntryConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    pub key: String,
    /// Where the value comes from…
    #[serde(default)]
    pub from: Option<Source>,
    /// …or a fixed value.
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    /// 30 days, fixed windows from the Unix epoch (envoyproxy/ratelimit's month).
    Month,
    /// The calendar year in UTC, as Tollgate's rate-limit service counts its
    /// `year` (envoyproxy/ratelimit's is 365 days from the Unix epoch).
    Year,
    /// The calendar month in UTC.
    CalendarMonth,
}

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
            Self::CalendarMonth => "calendar month",
        }
    }

    /// The unit of the service's counter.
    pub fn unit(self) -> Unit {
        match self {
            Self::Second => Unit::Second,
            Self::Minute => Unit::Minute,
            Self::Hour => Unit::Hour,
            Self::Day => Unit::Day,
            Self::Week => Unit::Week,
            Self::Month => Unit::Month,
            // The calendar month is named in the descriptor; the service's
            // year (the calendar year, which holds the month whole) only
            // expires the counter.
            Self::Year | Self::CalendarMonth => Unit::Year,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Names the budget in descriptors, errors and headers.
    pub name: String,
    /// One budget per value of these (none: one budget for everything).
    #[serde(default)]
    pub per: Vec<Source>,
    /// Only requests for these models count (default: every model).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// A token budget (prompt + completion tokens)…
    #[serde(default)]
    pub tokens: Option<u64>,
    /// …or a dollar budget, in US dollars.
    #[serde(default)]
    pub usd: Option<f64>,
    pub window: Window,
    /// Dollars per count of a dollar budget's counters (default one
    /// micro-dollar); a coarser unit allows budgets past $2,147.
    #[serde(default)]
    pub usd_per_count: Option<f64>,
    /// Lease this share of the budget to each worker at a time (e.g. 0.001),
    /// which then admits requests from it without calling the service until
    /// it is used up. Off by default: every request is checked. A lease is
    /// reserved in the budget's ledger, so the budget holds; what a worker
    /// holds and does not use is unavailable to the others until the
    /// worker's next call or the window's end.
    #[serde(default)]
    pub lease_fraction: Option<f64>,
}

// ---- compiled -------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryValue {
    From(Source),
    Fixed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: EntryValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Tokens,
    /// Nano-dollars per count.
    Usd { nanos_per_count: u64 },
}

#[derive(Debug, Clone)]
pub struct Budget {
    pub name: String,
    pub per: Vec<Source>,
    pub models: Option<HashSet<String>>,
    pub amount: Amount,
    /// In counts.
    pub limit: u64,
    pub window: Window,
    /// Counts leased to a worker at a time (0: no leases).
    pub lease: u64,
}

#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: String,
    pub user: String,
    pub team: Option<String>,
}

#[derive(Debug)]
pub struct Identity {
    pub require_key: bool,
    pub key_headers: Vec<String>,
    pub keys: HashMap<[u8; 32], KeyInfo>,
    pub user_header: Option<String>,
    pub team_header: String,
    pub strip_key: bool,
    pub unknown_keys_as_ids: bool,
}

#[derive(Debug)]
pub struct Compiled {
    pub domain: String,
    pub cluster: String,
    pub timeout: Duration,
    pub failure_mode: FailureMode,
    pub failure_status: u32,
    pub identity: Identity,
    pub rate_limits: Vec<Vec<Entry>>,
    pub budgets: Vec<Budget>,
    pub default_completion_tokens: u64,
    pub prices: HashMap<String, Price>,
    pub model_header: String,
    pub tier_headers: Vec<String>,
    pub max_body_bytes: usize,
    pub settle_margin_seconds: i64,
    /// Whether any descriptor or budget needs the model.
    pub needs_model: bool,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new(field, message)
}

/// Letters, digits and `-_.:@/` only: values become parts of counter keys
/// and stat names.
fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 128 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:@/".contains(c)) {
        return Err(err(field, format!("`{name}` must be 1–128 letters, digits or `-_.:@/`")));
    }
    Ok(())
}

fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(err(field, format!("`{name}` is not a header name")));
    }
    Ok(name.to_ascii_lowercase())
}

impl GuardConfig {
    pub fn compile(self) -> Result<Compiled, ConfigError> {
        check_name("domain", &self.domain)?;
        if self.cluster.is_empty() {
            return Err(err("cluster", "must name the rate-limit service's cluster"));
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return Err(err("timeout_ms", "must be 1..=60000"));
        }
        if !(400..=599).contains(&self.failure_status) {
            return Err(err("failure_status", "must be an HTTP error status (400..=599)"));
        }
        if self.default_completion_tokens == 0 {
            return Err(err("default_completion_tokens", "must be at least 1"));
        }
        if self.max_body_bytes == 0 {
            return Err(err("max_body_bytes", "must be at least 1"));
        }
        let identity = self.identity.compile()?;

        let mut needs_model = false;
        let mut rate_limits = Vec::with_capacity(self.rate_limits.len());
        for (i, limit) in self.rate_limits.into_iter().enumerate() {
            let field = format!("rate_limits.{i}.descriptor");
            if limit.descriptor.is_empty() {
                return Err(err(field, "needs at least one entry"));
            }
            let mut entries = Vec::new();
            for (j, entry) in limit.descriptor.into_iter().enumerate() {
                let field = format!("{field}.{j}");
                check_name(&format!("{field}.key"), &entry.key)?;
                let value = match (entry.from, entry.value) {
                    (Some(source), None) => {
                        needs_model |= source == Source::Model;
                        EntryValue::From(source)
                    }
                    (None, Some(value)) => {
                        check_name(&format!("{field}.value"), &value)?;
                        EntryValue::Fixed(value)
                    }
                    _ => return Err(err(field, "needs exactly one of `from` and `value`")),
                };
                entries.push(Entry { key: entry.key, value });
            }
            rate_limits.push(entries);
        }

        let mut names = HashSet::new();
        let mut budgets = Vec::with_capacity(self.budgets.len());
        for (i, budget) in self.budgets.into_iter().enumerate() {
            let field = format!("budgets.{i}");
            check_name(&format!("{field}.name"), &budget.name)?;
            if !names.insert(budget.name.clone()) {
                return Err(err(format!("{field}.name"), format!("`{}` is defined twice", budget.name)));
            }
            let mut seen = HashSet::new();
            for (j, source) in budget.per.iter().enumerate() {
                if !seen.insert(*source) {
                    return Err(err(format!("{field}.per.{j}"), format!("`{}` is listed twice", source.name())));
                }
            }
            needs_model |= budget.per.contains(&Source::Model) || budget.models.is_some();
            let models = match budget.models {
                Some(models) if models.is_empty() => {
                    return Err(err(format!("{field}.models"), "lists no model (leave it out for every model)"))
                }
                Some(models) => Some(models.into_iter().collect()),
                None => None,
            };
            let (amount, limit) = match (budget.tokens, budget.usd) {
                (Some(tokens), None) => {
                    if budget.usd_per_count.is_some() {
                        return Err(err(format!("{field}.usd_per_count"), "applies to dollar budgets only"));
                    }
                    (Amount::Tokens, tokens)
                }
                (None, Some(usd)) => {
                    let per_count = budget.usd_per_count.unwrap_or(0.000_001);
                    let nanos_per_count = per_count * 1e9;
                    if !nanos_per_count.is_finite() || !(1.0..=1e12).contains(&nanos_per_count) {
                        return Err(err(format!("{field}.usd_per_count"), "must be between 0.000000001 and 1000 dollars"));
                    }
                    let nanos_per_count = nanos_per_count.round() as u64;
                    if !usd.is_finite() || usd < 0.0 {
                        return Err(err(format!("{field}.usd"), "must be a non-negative number of dollars"));
                    }
                    let counts = (usd * 1e9 / nanos_per_count as f64).round();
                    if counts > MAX_BUDGET_COUNTS as f64 {
                        return Err(err(
                            format!("{field}.usd"),
                            format!(
                                "${usd} is more than {MAX_BUDGET_COUNTS} counts of ${per_count}; set a coarser `usd_per_count`"
                            ),
                        ));
                    }
                    (Amount::Usd { nanos_per_count }, counts as u64)
                }
                _ => return Err(err(field, "needs exactly one of `tokens` and `usd`")),
            };
            if limit == 0 {
                return Err(err(field, "a budget of 0 refuses everything: remove the model or the caller instead"));
            }
            if limit > MAX_BUDGET_COUNTS {
                return Err(err(format!("{field}.tokens"), format!("must be at most {MAX_BUDGET_COUNTS}")));
            }
            let lease = match budget.lease_fraction {
                None => 0,
                Some(f) if f.is_finite() && f > 0.0 && f <= 0.5 => ((limit as f64 * f).floor() as u64).max(1),
                Some(_) => return Err(err(format!("{field}.lease_fraction"), "must be in (0, 0.5]")),
            };
            budgets.push(Budget { name: budget.name, per: budget.per, models, amount, limit, window: budget.window, lease });
        }

        let mut prices = HashMap::new();
        for (model, price) in &self.prices {
            let compiled = price.compile().map_err(|(sub, message)| err(format!("prices.{model}.{sub}"), message))?;
            prices.insert(model.clone(), compiled);
        }
        let model_header = header_name("model_header", &self.model_header)?;
        let tier_headers = self
            .tier_headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_name(&format!("tier_headers.{i}"), h))
            .collect::<Result<_, _>>()?;
        Ok(Compiled {
            domain: self.domain,
            cluster: self.cluster,
            timeout: Duration::from_millis(self.timeout_ms),
            failure_mode: self.failure_mode,
            failure_status: self.failure_status,
            identity,
            rate_limits,
            budgets,
            default_completion_tokens: self.default_completion_tokens,
            prices,
            model_header,
            tier_headers,
            max_body_bytes: self.max_body_bytes,
            settle_margin_seconds: i64::try_from(self.settle_margin_seconds).unwrap_or(i64::MAX),
            needs_model,
        })
    }
}

impl IdentityConfig {
    fn compile(self) -> Result<Identity, ConfigError> {
        let key_headers = self
            .key_headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_name(&format!("identity.key_headers.{i}"), h))
            .collect::<Result<Vec<_>, _>>()?;
        if self.require_key && self.keys.is_empty() {
            return Err(err("identity.keys", "require_key is set but no key is configured"));
        }
        if self.require_key && key_headers.is_empty() {
            return Err(err("identity.key_headers", "require_key is set but no header carries keys"));
        }
        let mut keys = HashMap::new();
        let mut ids = HashSet::new();
        for (i, key) in self.keys.into_iter().enumerate() {
            let field = format!("identity.keys.{i}");
            let hash = parse_key_hash(&format!("{field}.sha256"), &key.sha256)?;
            check_name(&format!("{field}.id"), &key.id)?;
            if !ids.insert(key.id.clone()) {
                return Err(err(format!("{field}.id"), format!("`{}` is used twice", key.id)));
            }
            if let Some(user) = &key.user {
                check_name(&format!("{field}.user"), user)?;
            }
            if let Some(team) = &key.team {
                check_name(&format!("{field}.team"), team)?;
            }
            let info = KeyInfo { user: key.user.unwrap_or_else(|| key.id.clone()), id: key.id, team: key.team };
            if keys.insert(hash, info).is_some() {
                return Err(err(format!("{field}.sha256"), "the same key is configured twice"));
            }
        }
        let user_header = match self.user_header {
            Some(h) if h.is_empty() => None,
            Some(h) => Some(header_name("identity.user_header", &h)?),
            None => None,
        };
        Ok(Identity {
            require_key: self.require_key,
            key_headers,
            keys,
            user_header,
            team_header: header_name("identity.team_header", &self.team_header)?,
            strip_key: self.strip_key,
            unknown_keys_as_ids: self.unknown_keys_as_ids,
        })
    }
}

impl Compiled {
    pub fn price(&self, model: Option<&str>) -> Option<Price> {
        model.and_then(|m| self.prices.get(m)).copied()
    }
}
