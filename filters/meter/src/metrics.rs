//! The meter's Envoy stats. Labels are encoded in the stat name as
//! `.<label>.<value>` pairs (`ai_gateway_tokens_total.model.llama-70b.team.search.direction.input`)
//! and turned into Prometheus labels by the bootstrap's `stats_tags`
//! (`tollgate telemetry`). Metric ids are defined once per label combination
//! and cached for the VM's life.

use crate::config::Compiled;
use std::cell::RefCell;
use std::collections::HashMap;
use tollgate_host::{Host, MetricKind};

/// Counter: tokens by model, team and direction (`input` / `output`).
pub const TOKENS: &str = "ai_gateway_tokens_total";
/// Counter: prompt tokens read from the provider's cache (a subset of input).
pub const CACHED_INPUT_TOKENS: &str = "ai_gateway_cached_input_tokens_total";
/// Counter: exact cost in nano-dollars, by model and team.
pub const COST: &str = "ai_gateway_cost_nanodollars_total";
/// Histogram: cost of each request in nano-dollars, by model and team.
pub const REQUEST_COST: &str = "ai_gateway_request_cost_nanodollars";
/// Counter: requests by model, team, tier, backend, status and cache status.
pub const REQUESTS: &str = "ai_gateway_requests_total";
/// Histogram: request duration (ms), by model.
pub const DURATION: &str = "ai_gateway_request_duration_milliseconds";
/// Histogram: time to first token (ms), by model.
pub const TTFT: &str = "ai_gateway_time_to_first_token_milliseconds";
/// Histogram: time per output token after the first (µs), by model.
pub const TPOT: &str = "ai_gateway_time_per_output_token_microseconds";
/// Counter: requests by model and where their token counts came from
/// (`reported`, `estimated`, `none`).
pub const USAGE_SOURCE: &str = "ai_gateway_usage_source_total";

/// Every metric family with its labels, in stat-name order; the bootstrap's
/// tag regexes and the dashboard check are derived from the same words.
pub const FAMILIES: &[(&str, MetricKind, &[&str])] = &[
    (TOKENS, MetricKind::Counter, &["model", "team", "direction"]),
    (CACHED_INPUT_TOKENS, MetricKind::Counter, &["model", "team"]),
    (COST, MetricKind::Counter, &["model", "team"]),
    (REQUEST_COST, MetricKind::Histogram, &["model", "team"]),
    (REQUESTS, MetricKind::Counter, &["model", "team", "tier", "backend", "status", "cache"]),
    (DURATION, MetricKind::Histogram, &["model"]),
    (TTFT, MetricKind::Histogram, &["model"]),
    (TPOT, MetricKind::Histogram, &["model"]),
    (USAGE_SOURCE, MetricKind::Counter, &["model", "source"]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Input,
    Output,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }
}

/// Where a request's token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The provider's `usage`.
    Reported,
    /// Counted by the meter (usage missing, stream cut, body unreadable).
    Estimated,
    /// No tokens: an error response, a cache hit, an API without tokens.
    None,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Self::Reported => "reported",
            Self::Estimated => "estimated",
            Self::None => "none",
        }
    }
}

/// Cache status of a request, as the guard reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cache {
    Hit,
    Miss,
    None,
}

impl Cache {
    pub fn parse(value: &str) -> Self {
        match value.trim().to_ascii_lowercase().as_str() {
            "hit" => Self::Hit,
            "miss" => Self::Miss,
            _ => Self::None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::None => "none",
        }
    }
}

/// One label combination of one family. Models, teams and tiers are indices
/// into the configured label sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Tokens { model: usize, team: usize, direction: Direction },
    CachedInput { model: usize, team: usize },
    Cost { model: usize, team: usize },
    RequestCost { model: usize, team: usize },
    Requests { model: usize, team: usize, tier: usize, backend: String, status: u32, cache: Cache },
    Duration { model: usize },
    Ttft { model: usize },
    Tpot { model: usize },
    UsageSource { model: usize, source: Source },
}

impl Key {
    fn kind(&self) -> MetricKind {
        match self {
            Self::RequestCost { .. } | Self::Duration { .. } | Self::Ttft { .. } | Self::Tpot { .. } => MetricKind::Histogram,
            _ => MetricKind::Counter,
        }
    }

    /// The stat name, labels in [`FAMILIES`] order.
    pub fn name(&self, config: &Compiled) -> String {
        let m = |i: &usize| config.models.label(*i).to_string();
        let t = |i: &usize| config.teams.label(*i).to_string();
        match self {
            Self::Tokens { model, team, direction } => {
                format!("{TOKENS}.model.{}.team.{}.direction.{}", m(model), t(team), direction.label())
            }
            Self::CachedInput { model, team } => format!("{CACHED_INPUT_TOKENS}.model.{}.team.{}", m(model), t(team)),
            Self::Cost { model, team } => format!("{COST}.model.{}.team.{}", m(model), t(team)),
            Self::RequestCost { model, team } => format!("{REQUEST_COST}.model.{}.team.{}", m(model), t(team)),
            Self::Requests { model, team, tier, backend, status, cache } => format!(
                "{REQUESTS}.model.{}.team.{}.tier.{}.backend.{}.status.{}.cache.{}",
                m(model),
                t(team),
                config.tiers.label(*tier),
                backend,
                status,
                cache.label()
            ),
            Self::Duration { model } => format!("{DURATION}.model.{}", m(model)),
            Self::Ttft { model } => format!("{TTFT}.model.{}", m(model)),
            Self::Tpot { model } => format!("{TPOT}.model.{}", m(model)),
            Self::UsageSource { model, source } => format!("{USAGE_SOURCE}.model.{}.source.{}", m(model), source.label()),
        }
    }
}

/// Most label combinations defined up front (so the series exist, at 0,
/// before the first request); beyond, they are defined on first use.
const PREDEFINE_LIMIT: usize = 2000;

/// Metric ids by label combination, for one VM.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: RefCell<HashMap<Key, u32>>,
}

impl Metrics {
    /// Defines the per-model-and-team families for every configured
    /// combination, so dashboards and `increase()` see them from 0.
    pub fn predefine(&self, host: &dyn Host, config: &Compiled) {
        let combos = config.models.len() * config.teams.len();
        if combos.saturating_mul(6) > PREDEFINE_LIMIT {
            return;
        }
        for model in 0..config.models.len() {
            for team in 0..config.teams.len() {
                for key in [
                    Key::Tokens { model, team, direction: Direction::Input },
                    Key::Tokens { model, team, direction: Direction::Output },
                    Key::CachedInput { model, team },
                    Key::Cost { model, team },
                    Key::RequestCost { model, team },
                ] {
                    self.id(host, config, key);
                }
            }
            self.id(host, config, Key::Duration { model });
        }
    }

    fn id(&self, host: &dyn Host, config: &Compiled, key: Key) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(&key) {
            return Some(*id);
        }
        match host.define_metric(key.kind(), &key.name(config)) {
            Ok(id) => {
                self.ids.borrow_mut().insert(key, id);
                Some(id)
            }
            Err(e) => {
                log::warn!("meter: {e}");
                None
            }
        }
    }

    pub fn add(&self, host: &dyn Host, config: &Compiled, key: Key, delta: u64) {
        if delta == 0 {
            // Still define it, so the series exists.
            self.id(host, config, key);
            return;
        }
        if let Some(id) = self.id(host, config, key) {
            let delta = i64::try_from(delta).unwrap_or(i64::MAX);
            if let Err(e) = host.increment_metric(id, delta) {
                log::warn!("meter: {e}");
            }
        }
    }

    pub fn record(&self, host: &dyn Host, config: &Compiled, key: Key, value: u64) {
        if let Some(id) = self.id(host, config, key) {
            if let Err(e) = host.record_metric(id, value) {
                log::warn!("meter: {e}");
            }
        }
    }

    /// Number of label combinations defined so far.
    pub fn defined(&self) -> usize {
        self.ids.borrow().len()
    }
}
