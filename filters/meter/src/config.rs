//! The meter's JSON configuration, validated and compiled once per plugin.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tollgate_core::prices::{Price, PriceConfig};
use tollgate_core::tokens::{Encoding, EncodingTable};
use tollgate_host::ConfigError;

/// Label value for anything not in the configured lists.
pub const OTHER: &str = "other";
/// Tier label when the request names no tier.
pub const NO_TIER: &str = "none";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// Price table: public model name → prices in $ per million tokens.
    /// These models (sanitised) are the `model` label values; others are `other`.
    #[serde(default)]
    pub models: BTreeMap<String, PriceConfig>,
    /// Teams reported as `team` label values; others are `other`.
    #[serde(default)]
    pub teams: Vec<String>,
    /// Tiers reported as `tier` label values; others are `other`, none is `none`.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Request header naming the caller's team (set by the guard).
    #[serde(default = "default_team_header")]
    pub team_header: String,
    /// Request header naming the tier the client asked for.
    #[serde(default = "default_tier_header")]
    pub tier_header: String,
    /// Request header with the tier the router decided (it drops any a
    /// client sent); when absent, `tier_header`.
    #[serde(default = "default_decided_tier_header")]
    pub decided_tier_header: String,
    /// Request header with the model the router resolved (aliases, tiers);
    /// when absent, the body's `model`.
    #[serde(default = "default_model_header")]
    pub model_header: String,
    /// Request header with the backend the router chose; when absent, the
    /// Envoy cluster.
    #[serde(default = "default_backend_header")]
    pub backend_header: String,
    /// Request headers holding the caller's key, first present wins
    /// (`Bearer ` is stripped); logged only as a salted SHA-256 id.
    #[serde(default = "default_key_headers")]
    pub key_headers: Vec<String>,
    /// Salt of the key id.
    #[serde(default)]
    pub key_id_salt: String,
    /// Encoding for estimates when no prefix in `encodings` matches.
    #[serde(default = "default_encoding")]
    pub default_encoding: Encoding,
    /// Model-name prefix → encoding (longest prefix wins).
    #[serde(default)]
    pub encodings: BTreeMap<String, Encoding>,
    /// Ask OpenAI-style upstreams for a usage chunk on streams whose client did
    /// not (and remove it from what the client receives).
    #[serde(default = "yes")]
    pub include_usage: bool,
    /// Add `x-tollgate-*` usage and cost headers to non-streamed responses.
    #[serde(default = "yes")]
    pub usage_headers: bool,
    /// Largest non-streamed response whose headers wait for its body, so the
    /// usage headers can be added; larger ones pass unheld (no headers).
    #[serde(default = "default_max_held_response_bytes")]
    pub max_held_response_bytes: usize,
    /// Largest response body kept for parsing; past it, usage comes from the
    /// body's tail or an estimate.
    #[serde(default = "default_max_parsed_body_bytes")]
    pub max_parsed_body_bytes: usize,
    /// Largest request body read for the prompt estimate and the usage
    /// option; larger bodies pass unread.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
}

fn default_team_header() -> String {
    "x-tollgate-team".into()
}
fn default_tier_header() -> String {
    "x-model-tier".into()
}
fn default_decided_tier_header() -> String {
    "x-ai-tier".into()
}
fn default_model_header() -> String {
    "x-ai-model".into()
}
fn default_backend_header() -> String {
    "x-ai-backend".into()
}
fn default_key_headers() -> Vec<String> {
    vec!["authorization".into(), "x-api-key".into()]
}
fn default_encoding() -> Encoding {
    Encoding::O200kBase
}
fn yes() -> bool {
    true
}
fn default_max_held_response_bytes() -> usize {
    256 * 1024
}
fn default_max_parsed_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_request_bytes() -> usize {
    4 * 1024 * 1024
}

/// A label value safe in an Envoy stat name: dots are the name's separators
/// and everything but letters, digits, `_` and `-` becomes `_`.
pub fn sanitize(value: &str) -> String {
    let cleaned: String =
        value.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if cleaned.is_empty() {
        "_".into()
    } else {
        cleaned
    }
}

/// A bounded label set: configured values (by their raw name) plus `other`.
#[derive(Debug, Clone)]
pub struct LabelSet {
    /// Sanitised label values, `other` included.
    pub values: Vec<String>,
    index: HashMap<String, usize>,
    other: usize,
}

impl LabelSet {
    fn new(field: &str, names: impl IntoIterator<Item = String>) -> Result<Self, ConfigError> {
        let mut values = Vec::new();
        let mut index = HashMap::new();
        let mut seen = BTreeSet::new();
        for name in names {
            if name.is_empty() {
                return Err(ConfigError::new(field, "names must not be empty"));
            }
            let label = sanitize(&name);
            if label == OTHER || label == NO_TIER {
                return Err(ConfigError::new(field, format!("`{name}` is reserved")));
            }
            if !seen.insert(label.clone()) {
                return Err(ConfigError::new(
                    field,
                    format!("`{name}` is listed twice, or clashes with another name once sanitised to `{label}`"),
                ));
            }
            index.insert(name, values.len());
            values.push(label);
        }
        let other = values.len();
        values.push(OTHER.into());
        Ok(Self { values, index, other })
    }

    /// Index of a value's label: the configured one, else `other`.
    pub fn find(&self, name: &str) -> usize {
        self.index.get(name).copied().unwrap_or(self.other)
    }

    pub fn other(&self) -> usize {
        self.other
    }

    pub fn label(&self, index: usize) -> &str {
        self.values.get(index).map_or(OTHER, String::as_str)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The compiled configuration.
#[derive(Debug)]
pub struct Compiled {
    pub models: LabelSet,
    /// Prices by model index; `other` is unpriced (cost 0).
    pub prices: Vec<Price>,
    pub teams: LabelSet,
    pub tiers: LabelSet,
    pub team_header: String,
    pub tier_header: String,
    pub decided_tier_header: String,
    pub model_header: String,
    pub backend_header: String,
    pub key_headers: Vec<String>,
    pub key_id_salt: String,
    pub encodings: EncodingTable,
    pub include_usage: bool,
    pub usage_headers: bool,
    pub max_held_response_bytes: usize,
    pub max_parsed_body_bytes: usize,
    pub max_request_bytes: usize,
}

fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(ConfigError::new(field, format!("`{name}` is not a header name")));
    }
    Ok(name.to_ascii_lowercase())
}

impl MeterConfig {
    pub fn compile(self) -> Result<Compiled, ConfigError> {
        let mut prices = Vec::with_capacity(self.models.len() + 1);
        for (model, price) in &self.models {
            let compiled = price
                .compile()
                .map_err(|(field, message)| ConfigError::new(format!("models.{model}.{field}"), message))?;
            prices.push(compiled);
        }
        prices.push(Price::default());
        let models = LabelSet::new("models", self.models.keys().cloned())?;
        let teams = LabelSet::new("teams", self.teams.iter().cloned())?;
        let mut tiers = LabelSet::new("tiers", self.tiers.iter().cloned())?;
        // `none` sits after `other`: requests that name no tier.
        tiers.values.push(NO_TIER.into());
        for (i, name) in self.key_headers.iter().enumerate() {
            header_name(&format!("key_headers[{i}]"), name)?;
        }
        for (limit, field) in [
            (self.max_held_response_bytes, "max_held_response_bytes"),
            (self.max_parsed_body_bytes, "max_parsed_body_bytes"),
            (self.max_request_bytes, "max_request_bytes"),
        ] {
            if limit == 0 {
                return Err(ConfigError::new(field, "must be greater than 0"));
            }
        }
        if let Some(prefix) = self.encodings.keys().find(|p| p.is_empty()) {
            return Err(ConfigError::new(format!("encodings.{prefix}"), "prefix must not be empty (use default_encoding)"));
        }
        Ok(Compiled {
            models,
            prices,
            teams,
            tiers,
            team_header: header_name("team_header", &self.team_header)?,
            tier_header: header_name("tier_header", &self.tier_header)?,
            decided_tier_header: header_name("decided_tier_header", &self.decided_tier_header)?,
            model_header: header_name("model_header", &self.model_header)?,
            backend_header: header_name("backend_header", &self.backend_header)?,
            key_headers: self.key_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            key_id_salt: self.key_id_salt,
            encodings: EncodingTable::new(self.default_encoding, self.encodings),
            include_usage: self.include_usage,
            usage_headers: self.usage_headers,
            max_held_response_bytes: self.max_held_response_bytes,
            max_parsed_body_bytes: self.max_parsed_body_bytes,
            max_request_bytes: self.max_request_bytes,
        })
    }
}

impl Compiled {
    /// Index of the `none` tier label.
    pub fn no_tier(&self) -> usize {
        self.tiers.values.len() - 1
    }

    /// The tier label index of a header value.
    pub fn tier(&self, value: Option<&str>) -> usize {
        match value {
            None | Some("") => self.no_tier(),
            Some(name) => self.tiers.find(name),
        }
    }

    pub fn price(&self, model: usize) -> Price {
        self.prices.get(model).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> Result<Compiled, ConfigError> {
        tollgate_core::config::parse::<MeterConfig>(json.as_bytes())?.compile()
    }

    #[test]
    fn defaults() {
        let c = compile("{}").unwrap();
        assert_eq!(c.models.values, ["other"]);
        assert_eq!(c.teams.values, ["other"]);
        assert_eq!(c.tiers.values, ["other", "none"]);
        assert_eq!(c.team_header, "x-tollgate-team");
        assert!(c.include_usage && c.usage_headers);
        assert_eq!(c.encodings.for_model("anything"), Encoding::O200kBase);
    }

    #[test]
    fn labels_are_bounded_and_sanitised() {
        let c = compile(
            r#"{"models": {"gpt-4.1": {"input": 2, "output": 8}, "llama-70b": {"input": 0.5, "output": 0.75}},
                "teams": ["search", "ads"], "tiers": ["fast"]}"#,
        )
        .unwrap();
        assert_eq!(c.models.values, ["gpt-4_1", "llama-70b", "other"]);
        assert_eq!(c.models.find("gpt-4.1"), 0);
        assert_eq!(c.models.find("gpt-4_1"), 2, "only the configured spelling matches");
        assert_eq!(c.price(1).output, 750);
        assert_eq!(c.price(c.models.other()).input, 0);
        assert_eq!(c.teams.label(c.teams.find("nope")), "other");
        assert_eq!(c.tiers.label(c.tier(Some("fast"))), "fast");
        assert_eq!(c.tiers.label(c.tier(Some("slow"))), "other");
        assert_eq!(c.tiers.label(c.tier(None)), "none");
        assert_eq!(sanitize("a.b/c d"), "a_b_c_d");
        assert_eq!(sanitize(""), "_");
    }

    #[test]
    fn errors_name_the_field() {
        let e = compile(r#"{"models": {"m": {"input": 1, "output": -2}}}"#).unwrap_err();
        assert_eq!(e.field, "models.m.output");
        let e = compile(r#"{"models": {"m": {"input": 1}}}"#).unwrap_err();
        assert!(e.field.starts_with("models.m"), "{e}");
        let e = compile(r#"{"teams": ["a.b", "a_b"]}"#).unwrap_err();
        assert_eq!(e.field, "teams");
        let e = compile(r#"{"teams": ["other"]}"#).unwrap_err();
        assert!(e.message.contains("reserved"));
        let e = compile(r#"{"team_header": "x team"}"#).unwrap_err();
        assert_eq!(e.field, "team_header");
        let e = compile(r#"{"default_encoding": "p50k_base"}"#).unwrap_err();
        assert_eq!(e.field, "default_encoding");
        let e = compile(r#"{"max_request_bytes": 0}"#).unwrap_err();
        assert_eq!(e.field, "max_request_bytes");
        let e = compile(r#"{"price": {}}"#).unwrap_err();
        assert!(e.message.contains("unknown field `price`"));
        let e = compile(r#"{"encodings": {"": "cl100k_base"}}"#).unwrap_err();
        assert!(e.field.starts_with("encodings"));
    }
}
