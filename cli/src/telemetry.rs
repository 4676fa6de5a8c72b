//! What the gateway reports about itself: the access-log format and the stats
//! configuration that gives the meter's metrics their Prometheus labels and
//! histogram buckets.

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Labels the meter encodes in its stat names as `.<label>.<value>` pairs
/// (`ai_gateway_tokens_total.model.llama-70b.team.search.direction.input`);
/// must match `tollgate_meter::metrics::FAMILIES`.
pub const METER_LABELS: &[&str] = &["model", "team", "direction", "tier", "backend", "status", "cache", "source"];

/// Buckets of the per-request cost histogram, in nano-dollars: the seed's
/// 0.001, 0.01, 0.05, 0.1, 0.5, 1.0 and 5.0 dollars.
pub const COST_BUCKETS_NANODOLLARS: &[f64] = &[1e6, 1e7, 5e7, 1e8, 5e8, 1e9, 5e9];

/// Buckets of time per output token, in microseconds (0.1 ms … 1 s).
pub const TPOT_BUCKETS_MICROSECONDS: &[f64] =
    &[100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0, 100000.0, 250000.0, 1000000.0];

/// Bootstrap `stats_config`: one tag extractor per meter label, and the
/// meter's histogram buckets. A wasm metric is stored as `wasmcustom.<name>`,
/// and tag regexes and bucket prefixes match that full name; the first
/// group of a regex is cut from the name, the second is the label value.
pub fn stats_config() -> Value {
    let tags: Vec<Value> = METER_LABELS
        .iter()
        .map(|label| {
            json!({
                "tag_name": label,
                "regex": format!(r"^wasmcustom\.ai_gateway_[a-z_]+(?:\.[a-z_]+\.[^.]+)*?(\.{label}\.([^.]+))")
            })
        })
        .collect();
    json!({
        "stats_tags": tags,
        "histogram_bucket_settings": [
            {
                "match": {"prefix": "wasmcustom.ai_gateway_request_cost_nanodollars"},
                "buckets": COST_BUCKETS_NANODOLLARS
            },
            {
                "match": {"prefix": "wasmcustom.ai_gateway_time_per_output_token_microseconds"},
                "buckets": TPOT_BUCKETS_MICROSECONDS
            }
        ]
    })
}

/// An access-log field the meter leaves as a property (filter state
/// `wasm.tollgate.meter.<field>`); `null` when the meter is not installed.
fn meter_field(field: &str) -> String {
    format!("%FILTER_STATE(wasm.tollgate.meter.{field}:PLAIN)%")
}

/// One JSON line per request on Envoy's stdout.
pub fn access_log() -> Value {
    let mut format: BTreeMap<&str, String> = [
        ("start_time", "%START_TIME%"),
        ("request_id", "%REQ(X-REQUEST-ID)%"),
        ("method", "%REQ(:METHOD)%"),
        ("path", "%REQ(:PATH)%"),
        ("status", "%RESPONSE_CODE%"),
        ("flags", "%RESPONSE_FLAGS%"),
        ("duration_ms", "%DURATION%"),
        // The router's decision (its filter state: the header does not
        // outlive routing).
        ("model", "%FILTER_STATE(wasm.tollgate_model:PLAIN)%"),
        ("tier", "%REQ(X-MODEL-TIER)%"),
        ("cluster", "%UPSTREAM_CLUSTER%"),
        ("upstream", "%UPSTREAM_HOST%"),
        ("attempts", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"),
        // The prompt estimate the meter hands to the filters after it.
        ("prompt_tokens_estimate", "%FILTER_STATE(wasm.tollgate.prompt_tokens:PLAIN)%"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect();
    // The meter's view: bounded labels, tokens, cost, first token, cache.
    for (key, field) in [
        ("metered_model", "model"),
        ("team", "team"),
        ("metered_tier", "tier"),
        ("backend", "backend"),
        ("input_tokens", "input_tokens"),
        ("output_tokens", "output_tokens"),
        ("cached_input_tokens", "cached_input_tokens"),
        ("cost_usd", "cost_usd"),
        ("usage_source", "usage_source"),
        ("ttft_ms", "ttft_ms"),
        ("cache", "cache"),
        ("key_id", "key_id"),
    ] {
        format.insert(key, meter_field(field));
    }
    json!({
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": format}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tag_per_label_anchored_on_wasmcustom() {
        let config = stats_config();
        let tags = config["stats_tags"].as_array().unwrap();
        assert_eq!(tags.len(), METER_LABELS.len());
        for tag in tags {
            assert!(tag["regex"].as_str().unwrap().starts_with(r"^wasmcustom\.ai_gateway_"));
        }
        assert_eq!(config["histogram_bucket_settings"][0]["buckets"][0], 1e6);
    }

    #[test]
    fn access_log_carries_the_meter_fields() {
        let log = access_log();
        let format = &log["typed_config"]["log_format"]["json_format"];
        assert_eq!(format["cost_usd"], "%FILTER_STATE(wasm.tollgate.meter.cost_usd:PLAIN)%");
        for field in ["team", "backend", "input_tokens", "output_tokens", "ttft_ms", "cache", "duration_ms", "model", "tier"] {
            assert!(format.get(field).is_some(), "{field}");
        }
    }
}
