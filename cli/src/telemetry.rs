//! What the gateway reports about itself: the access-log format (and, with
//! the meter, the stats configuration that gives its metrics their labels).

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One JSON line per request on Envoy's stdout.
pub fn access_log() -> Value {
    let format: BTreeMap<&str, &str> = [
        ("start_time", "%START_TIME%"),
        ("method", "%REQ(:METHOD)%"),
        ("path", "%REQ(:PATH)%"),
        ("status", "%RESPONSE_CODE%"),
        ("flags", "%RESPONSE_FLAGS%"),
        ("duration_ms", "%DURATION%"),
        ("model", "%REQ(X-AI-MODEL)%"),
        ("tier", "%REQ(X-MODEL-TIER)%"),
        ("cluster", "%UPSTREAM_CLUSTER%"),
        ("upstream", "%UPSTREAM_HOST%"),
        ("attempts", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"),
    ]
    .into_iter()
    .collect();
    json!({
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": format}
        }
    })
}
