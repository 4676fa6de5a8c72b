//! Router logic. Two roots share this module:
//! - the downstream root holds the request until its body is complete, reads
//!   the body's `model`, publishes it as `x-ai-model` (which the route table
//!   matches) and makes Envoy choose the route again;
//! - the upstream root (`ROOT_ID_UPSTREAM`) runs once per upstream attempt, so
//!   it can stamp each attempt with what that attempt is.

use serde::Deserialize;
use std::rc::Rc;
use tollgate_core::errors::openai_error_body;
use tollgate_core::request::{summarize, BodyError};
use tollgate_host::{BodyBuffer, ConfigError, FilterFactory, Flow, HeaderMap, Host, HttpFilter};

/// Root id of the per-attempt (upstream) half of the router.
pub const ROOT_ID_UPSTREAM: &str = "tollgate.router.upstream";
/// Request header carrying the model the route table matches on.
pub const MODEL_HEADER: &str = "x-ai-model";
/// Request header stamped on each upstream attempt (1 for the first try).
pub const ATTEMPT_HEADER: &str = "x-tollgate-attempt";

const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Largest request body the router reads; larger ones get a 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

impl RouterConfig {
    fn validate(self) -> Result<Self, ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new("max_body_bytes", "must be greater than 0"));
        }
        Ok(self)
    }
}

pub enum RouterFactory {
    Downstream(Rc<RouterConfig>),
    Upstream,
}

impl FilterFactory for RouterFactory {
    type Filter = RouterFilter;

    fn configure(_host: &dyn Host, root_id: &str, config: &[u8]) -> Result<Self, ConfigError> {
        if root_id == ROOT_ID_UPSTREAM {
            // The upstream half takes no settings of its own yet; refuse any,
            // so a misplaced configuration is not silently ignored.
            tollgate_core::config::parse::<Empty>(config)?;
            return Ok(Self::Upstream);
        }
        let config: RouterConfig = tollgate_core::config::parse(config)?;
        Ok(Self::Downstream(Rc::new(config.validate()?)))
    }

    fn new_filter(&self) -> RouterFilter {
        match self {
            Self::Downstream(config) => RouterFilter::Downstream { config: Rc::clone(config) },
            Self::Upstream => RouterFilter::Upstream,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

pub enum RouterFilter {
    Downstream { config: Rc<RouterConfig> },
    Upstream,
}

impl HttpFilter for RouterFilter {
    fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        match self {
            Self::Downstream { config } => downstream_request_headers(host, config, end_of_stream),
            Self::Upstream => {
                stamp_attempt(host);
                Flow::Continue
            }
        }
    }

    fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        match self {
            Self::Downstream { config } => downstream_request_body(host, config, body_size, end_of_stream),
            Self::Upstream => Flow::Continue,
        }
    }
}

fn downstream_request_headers(host: &dyn Host, config: &RouterConfig, end_of_stream: bool) -> Flow {
    if end_of_stream {
        return Flow::Continue;
    }
    let declared = host
        .header(HeaderMap::Request, "content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > config.max_body_bytes) {
        reply_too_large(host, config);
        return Flow::Pause;
    }
    // The route depends on the body's `model`: hold the headers until the body
    // is complete (Envoy delivers it because the plugin sets
    // allow_on_headers_stop_iteration).
    Flow::Pause
}

fn downstream_request_body(host: &dyn Host, config: &RouterConfig, body_size: usize, end_of_stream: bool) -> Flow {
    if body_size > config.max_body_bytes {
        reply_too_large(host, config);
        return Flow::Pause;
    }
    if !end_of_stream {
        // Buffer until the whole body is here; routing needs all of it.
        return Flow::Pause;
    }
    let body = match host.body(BodyBuffer::Request, 0, body_size) {
        Ok(body) => body.unwrap_or_default(),
        Err(e) => {
            log::error!("router: {e}");
            return Flow::Continue;
        }
    };
    let summary = match summarize(&body) {
        Ok(summary) => summary,
        Err(BodyError::Malformed(detail)) => {
            reply_error(host, 400, &format!("request body is not valid JSON: {detail}"), "invalid_request_error", "invalid_json");
            return Flow::Pause;
        }
    };
    if let Some(model) = summary.model {
        if let Err(e) = host.set_header(HeaderMap::Request, MODEL_HEADER, Some(&model)) {
            log::error!("router: {e}");
            return Flow::Continue;
        }
        if let Err(e) = host.clear_route_cache() {
            log::error!("router: {e}");
        }
    }
    Flow::Continue
}

fn stamp_attempt(host: &dyn Host) {
    // Envoy's router numbers each attempt in x-envoy-attempt-count (with
    // include_request_attempt_count on the virtual host) before the upstream
    // filters run, so this header differs per try, unlike anything a
    // downstream filter could set.
    let attempt = host
        .header(HeaderMap::Request, "x-envoy-attempt-count")
        .ok()
        .flatten()
        .unwrap_or_else(|| "1".to_string());
    if let Err(e) = host.set_header(HeaderMap::Request, ATTEMPT_HEADER, Some(&attempt)) {
        log::error!("router upstream: {e}");
    }
}

fn reply_too_large(host: &dyn Host, config: &RouterConfig) {
    let message = format!("request body exceeds {} bytes", config.max_body_bytes);
    reply_error(host, 413, &message, "invalid_request_error", "request_too_large");
}

fn reply_error(host: &dyn Host, status: u32, message: &str, error_type: &str, code: &str) {
    let body = openai_error_body(message, error_type, Some(code));
    if let Err(e) = host.send_local_reply(status, &[("content-type", "application/json")], &body) {
        log::error!("router: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_host::fake::FakeHost;

    fn downstream(config: &str) -> RouterFilter {
        RouterFactory::configure(&FakeHost::new(), "tollgate.router", config.as_bytes()).unwrap().new_filter()
    }

    #[test]
    fn publishes_the_body_model_and_reroutes() {
        let body = br#"{"model":"llama-70b","messages":[{"role":"user","content":"hi"}]}"#;
        let host = FakeHost::with_request(&[(":method", "POST")], body);
        let mut filter = downstream("{}");
        assert_eq!(filter.on_request_headers(&host, false), Flow::Pause);
        assert_eq!(filter.on_request_body(&host, 10, false), Flow::Pause);
        assert_eq!(filter.on_request_body(&host, body.len(), true), Flow::Continue);
        assert_eq!(host.request_header(MODEL_HEADER).as_deref(), Some("llama-70b"));
        assert_eq!(host.state().route_cache_clears, 1);
        assert_eq!(host.state().request_body, body, "the body is forwarded unchanged");
    }

    #[test]
    fn bodyless_requests_pass_straight_through() {
        let host = FakeHost::with_request(&[(":method", "GET")], b"");
        assert_eq!(downstream("{}").on_request_headers(&host, true), Flow::Continue);
        assert_eq!(host.state().route_cache_clears, 0);
    }

    #[test]
    fn malformed_json_gets_an_openai_400() {
        let host = FakeHost::with_request(&[], b"{\"model\": ");
        let mut filter = downstream("{}");
        assert_eq!(filter.on_request_body(&host, 10, true), Flow::Pause);
        let reply = host.state().local_reply.clone().unwrap();
        assert_eq!(reply.status, 400);
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_json");
        assert_eq!(host.request_header(MODEL_HEADER), None);
    }

    #[test]
    fn oversized_bodies_get_a_413() {
        let host = FakeHost::with_request(&[("content-length", "2000")], b"");
        let mut filter = downstream(r#"{"max_body_bytes": 1000}"#);
        assert_eq!(filter.on_request_headers(&host, false), Flow::Pause);
        assert_eq!(host.state().local_reply.clone().unwrap().status, 413);

        let host = FakeHost::with_request(&[], &[b' '; 1500]);
        let mut filter = downstream(r#"{"max_body_bytes": 1000}"#);
        assert_eq!(filter.on_request_body(&host, 1500, false), Flow::Pause);
        assert_eq!(host.state().local_reply.clone().unwrap().status, 413);
    }

    #[test]
    fn header_failures_are_logged_not_fatal() {
        let host = FakeHost::with_request(&[], br#"{"model":"m"}"#);
        host.state().request_headers_sent = true;
        assert_eq!(downstream("{}").on_request_body(&host, 13, true), Flow::Continue);
        assert_eq!(host.state().route_cache_clears, 0);
    }

    #[test]
    fn upstream_root_stamps_each_attempt() {
        let factory = RouterFactory::configure(&FakeHost::new(), ROOT_ID_UPSTREAM, b"").unwrap();
        let host = FakeHost::with_request(&[("x-envoy-attempt-count", "2")], b"");
        assert_eq!(factory.new_filter().on_request_headers(&host, false), Flow::Continue);
        assert_eq!(host.request_header(ATTEMPT_HEADER).as_deref(), Some("2"));
        let host = FakeHost::with_request(&[], b"");
        factory.new_filter().on_request_headers(&host, true);
        assert_eq!(host.request_header(ATTEMPT_HEADER).as_deref(), Some("1"));
    }

    #[test]
    fn bad_configuration_is_refused_with_the_field() {
        let host = FakeHost::new();
        let e = RouterFactory::configure(&host, "tollgate.router", br#"{"max_body_bytes": 0}"#).err().unwrap();
        assert_eq!(e.field, "max_body_bytes");
        let e = RouterFactory::configure(&host, "tollgate.router", br#"{"max_body_byte": 1}"#).err().unwrap();
        assert!(e.message.contains("unknown field"), "{e}");
        let e = RouterFactory::configure(&host, ROOT_ID_UPSTREAM, br#"{"x": 1}"#).err().unwrap();
        assert!(e.message.contains("unknown field `x`"), "{e}");
    }
}
