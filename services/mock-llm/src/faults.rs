//! Fault injection and per-request behaviour: the command-line settings, overridden per
//! request by `x-mock-*` headers, and error bodies in each provider's shape.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::Config;
use crate::generate::MAX_REPLY_TOKENS;

/// Which API's error shape a response uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
}

/// What one request should experience, after header overrides.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    pub latency: Duration,
    pub token_delay: Duration,
    pub cut_stream_after: Option<usize>,
    pub no_usage: bool,
    pub output_tokens: Option<u64>,
    retry_after: Option<u64>,
    status: Option<u16>,
    fail_first: Option<u64>,
    fail_key: String,
}

impl Controls {
    /// Reads the `x-mock-*` headers over the configured defaults. A malformed header is
    /// an error rather than silently ignored, so a typo in a test shows up at once.
    pub fn from_headers(config: &Config, headers: &HeaderMap) -> Result<Self, String> {
        let status = header_number::<u16>(headers, "x-mock-status")?;
        if let Some(code) = status {
            if !(100..=599).contains(&code) {
                return Err(format!(
                    "x-mock-status must be an HTTP status code, got {code}"
                ));
            }
        }
        let output_tokens = header_number::<u64>(headers, "x-mock-output-tokens")?;
        if output_tokens.is_some_and(|n| n > MAX_REPLY_TOKENS) {
            return Err(format!(
                "x-mock-output-tokens must be at most {MAX_REPLY_TOKENS}"
            ));
        }
        Ok(Controls {
            latency: Duration::from_millis(
                header_number(headers, "x-mock-latency-ms")?.unwrap_or(config.latency_ms),
            ),
            token_delay: Duration::from_millis(
                header_number(headers, "x-mock-token-delay-ms")?.unwrap_or(config.token_delay_ms),
            ),
            cut_stream_after: header_number(headers, "x-mock-cut-stream-after")?
                .or(config.cut_stream_after),
            no_usage: headers
                .get("x-mock-no-usage")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
            output_tokens,
            retry_after: header_number(headers, "x-mock-retry-after")?.or(config.retry_after),
            status,
            fail_first: header_number(headers, "x-mock-fail-first")?,
            fail_key: headers
                .get("x-mock-fail-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// Whether this request gets an injected error, and which. Precedence:
    /// `x-mock-fail-first` (counted per `x-mock-fail-key`; fails with `x-mock-status`,
    /// else --fail-status, else 503), then `x-mock-status` alone (always; a code below
    /// 400 means "no fault" and so switches config faults off), then --fail-first, then
    /// --fail-status.
    pub fn fault(&self, config: &Config, counters: &FailCounters) -> Option<Fault> {
        let fallback = config.fail_status.unwrap_or(503);
        let status = if let Some(limit) = self.fail_first {
            let seen = counters.bump_key(&self.fail_key);
            (seen < limit).then(|| self.status.filter(|s| *s >= 400).unwrap_or(fallback))
        } else if let Some(status) = self.status {
            (status >= 400).then_some(status)
        } else if config.fail_first > 0 {
            let seen = counters.global.fetch_add(1, Ordering::Relaxed);
            (seen < config.fail_first).then_some(fallback)
        } else {
            config.fail_status
        };
        let status = StatusCode::from_u16(status?).ok()?;
        Some(Fault {
            status,
            retry_after: self.retry_after,
        })
    }
}

fn header_number<T: FromStr>(headers: &HeaderMap, name: &str) -> Result<Option<T>, String> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("{name} must be a non-negative integer"))
        })
        .transpose()
}

/// Request counters behind --fail-first and `x-mock-fail-first`.
#[derive(Default)]
pub struct FailCounters {
    global: AtomicU64,
    by_key: Mutex<HashMap<String, u64>>,
}

impl FailCounters {
    /// Returns how many requests with this key came before this one.
    fn bump_key(&self, key: &str) -> u64 {
        let mut by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = by_key.get_mut(key) {
            *seen += 1;
            *seen - 1
        } else {
            by_key.insert(key.to_owned(), 1);
            0
        }
    }

    pub fn reset(&self) {
        self.global.store(0, Ordering::Relaxed);
        self.by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
}

impl Fault {
    pub fn response(&self, provider: Provider) -> Response {
        let message = format!("mock-llm injected fault: HTTP {}", self.status.as_u16());
        let mut response = error_response(provider, self.status, &message);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}

/// An error body in the provider's own shape, so clients and the gateway parse it as
/// they would a real one.
pub fn error_response(provider: Provider, status: StatusCode, message: &str) -> Response {
    let body = match provider {
        Provider::OpenAi => {
            let (kind, code) = openai_error_kind(status);
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Provider::Anthropic => json!({
            "type": "error",
            "error": {"type": anthropic_error_kind(status), "message": message},
        }),
    };
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

fn openai_error_kind(status: StatusCode) -> (&'static str, Option<&'static str>) {
    match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        404 => ("invalid_request_error", Some("model_not_found")),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        503 => ("server_error", Some("service_unavailable")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    }
}

fn anthropic_error_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        Config::parse_from(std::iter::once("mock-llm").chain(args.iter().copied()))
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    axum::http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    fn statuses(config: &Config, headers: &HeaderMap, n: usize) -> Vec<Option<u16>> {
        let counters = FailCounters::default();
        (0..n)
            .map(|_| {
                Controls::from_headers(config, headers)
                    .unwrap()
                    .fault(config, &counters)
                    .map(|f| f.status.as_u16())
            })
            .collect()
    }

    #[test]
    fn config_faults() {
        assert_eq!(statuses(&config(&[]), &headers(&[]), 2), [None, None]);
        assert_eq!(
            statuses(&config(&["--fail-status", "500"]), &headers(&[]), 2),
            [Some(500), Some(500)]
        );
        assert_eq!(
            statuses(&config(&["--fail-first", "2"]), &headers(&[]), 3),
            [Some(503), Some(503), None]
        );
        assert_eq!(
            statuses(
                &config(&["--fail-first", "1", "--fail-status", "429"]),
                &headers(&[]),
                2
            ),
            [Some(429), None]
        );
    }

    #[test]
    fn headers_override_config() {
        let failing = config(&["--fail-status", "500"]);
        assert_eq!(
            statuses(&failing, &headers(&[("x-mock-status", "200")]), 1),
            [None]
        );
        assert_eq!(
            statuses(&failing, &headers(&[("x-mock-status", "429")]), 1),
            [Some(429)]
        );
        let fail_once = headers(&[("x-mock-fail-first", "1"), ("x-mock-status", "429")]);
        assert_eq!(
            statuses(&config(&[]), &fail_once, 3),
            [Some(429), None, None]
        );
    }

    #[test]
    fn fail_first_counts_per_key() {
        let config = config(&[]);
        let counters = FailCounters::default();
        let fault = |key: &'static str| {
            Controls::from_headers(
                &config,
                &headers(&[("x-mock-fail-first", "1"), ("x-mock-fail-key", key)]),
            )
            .unwrap()
            .fault(&config, &counters)
            .is_some()
        };
        assert!(fault("a"));
        assert!(fault("b"));
        assert!(!fault("a"));
        counters.reset();
        assert!(fault("a"));
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let config = config(&[]);
        assert!(
            Controls::from_headers(&config, &headers(&[("x-mock-latency-ms", "soon")])).is_err()
        );
        assert!(Controls::from_headers(&config, &headers(&[("x-mock-status", "42")])).is_err());
        assert!(Controls::from_headers(
            &config,
            &headers(&[("x-mock-output-tokens", "100000000")])
        )
        .is_err());
    }
}
