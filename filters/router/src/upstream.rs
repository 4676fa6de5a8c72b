//! The router's per-attempt half. Envoy runs it once for every try, after it
//! picked the host, so each attempt is rewritten for the backend it reached —
//! including a fallback to another provider after the first one failed.

use crate::config::{Backend, Provider, Routing};
use crate::{
    backend_state, ATTEMPT_HEADER, BACKEND_HEADER, MODEL_HEADER, RESPONSE_ATTEMPTS_HEADER, RESPONSE_BACKEND_HEADER, STATE_MODEL, TIER_HEADER,
};
use std::rc::Rc;
use std::time::SystemTime;
use tollgate_host::{BodyBuffer, Flow, HeaderMap, Host};

/// Path of the endpoint metadata naming the backend an endpoint belongs to
/// (set on every `lb_endpoint` by the bootstrap and the Gateway API patch).
const REACHED_BACKEND: [&str; 5] = ["xds", "upstream_host_metadata", "filter_metadata", "tollgate", "backend"];

pub struct Attempt {
    routing: Rc<Routing>,
    /// Backend this attempt reached, when the endpoint says.
    backend: Option<String>,
    attempt: String,
    started: Option<SystemTime>,
}

impl Attempt {
    pub fn new(routing: Rc<Routing>) -> Self {
        Self { routing, backend: None, attempt: "1".to_string(), started: None }
    }

    pub fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        self.started = Some(host.now());
        // Envoy numbers each routed try in x-envoy-attempt-count (with
        // include_request_attempt_count on the virtual host). Anything else
        // here is the cluster's own traffic, such as an active health check,
        // which passes untouched.
        let Some(attempt) = header(host, "x-envoy-attempt-count") else {
            return Flow::Continue;
        };
        self.attempt = attempt;
        set(host, HeaderMap::Request, ATTEMPT_HEADER, Some(&self.attempt));
        self.backend = match host.property(&REACHED_BACKEND) {
            Ok(value) => value.and_then(|v| String::from_utf8(v).ok()),
            Err(e) => {
                log::warn!("router upstream: {e}");
                None
            }
        };
        if self.backend_config().is_none() {
            return Flow::Continue;
        }
        if end_of_stream {
            self.rewrite_headers(host);
            return Flow::Continue;
        }
        // Hold the headers until the body is here: the model id in the body and
        // the content-length header change together.
        Flow::Pause
    }

    pub fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        if self.backend_config().is_none() {
            return Flow::Continue;
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        let body = match host.body(BodyBuffer::Request, 0, body_size) {
            Ok(body) => body.unwrap_or_default(),
            Err(e) => {
                log::error!("router upstream: {e}");
                return Flow::Continue;
            }
        };
        // Every attempt states its own length: attempts share one header map,
        // and an earlier attempt may have sent a body of another length.
        let mut length = body.len();
        if let Some(rewritten) = self.rewrite_body(host, &body) {
            match host.set_body(BodyBuffer::Request, 0, body_size, &rewritten) {
                Ok(()) => length = rewritten.len(),
                Err(e) => log::error!("router upstream: {e}"),
            }
        }
        set(host, HeaderMap::Request, "content-length", Some(&length.to_string()));
        self.rewrite_headers(host);
        Flow::Continue
    }

    pub fn on_response_headers(&mut self, host: &dyn Host, _end_of_stream: bool) -> Flow {
        let Some(backend) = self.backend.clone() else {
            return Flow::Continue;
        };
        let status = header_in(host, HeaderMap::Response, ":status").and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
        let failed = status == 429 || status >= 500;
        let ttfb_us = self
            .started
            .and_then(|start| host.now().duration_since(start).ok())
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let cooldown = (self.routing.cooldown.failures, self.routing.cooldown.seconds);
        backend_state::attempt_finished(host, &backend, failed, if failed { None } else { ttfb_us }, cooldown);
        set(host, HeaderMap::Response, RESPONSE_BACKEND_HEADER, Some(&backend));
        set(host, HeaderMap::Response, RESPONSE_ATTEMPTS_HEADER, Some(&self.attempt));
        Flow::Continue
    }

    fn backend_config(&self) -> Option<&Backend> {
        self.routing.backends.get(self.backend.as_deref()?)
    }

    /// The body with `model` set to what the reached backend calls the
    /// requested group; `None` when nothing changes.
    fn rewrite_body(&self, host: &dyn Host, body: &[u8]) -> Option<Vec<u8>> {
        let backend = self.backend.as_deref()?;
        let decided = host.property(&[STATE_MODEL]).ok().flatten()?;
        let group = self.routing.group(std::str::from_utf8(&decided).ok()?)?;
        let model = self.routing.model_for_backend(group, backend)?;
        let mut json: serde_json::Value = serde_json::from_slice(body).ok()?;
        let object = json.as_object_mut()?;
        if object.get("model").and_then(|m| m.as_str()) == Some(model) {
            return None;
        }
        object.insert("model".to_string(), serde_json::Value::String(model.to_string()));
        serde_json::to_vec(&json).ok()
    }

    fn rewrite_headers(&self, host: &dyn Host) {
        let Some(backend) = self.backend_config() else {
            return;
        };
        if !backend.path_prefix.is_empty() {
            if let Some(path) = header(host, ":path") {
                set(host, HeaderMap::Request, ":path", Some(&format!("{}{path}", backend.path_prefix)));
            }
        }
        if let Some(authority) = &backend.authority {
            set(host, HeaderMap::Request, ":authority", Some(authority));
        }
        if let Some(key) = &backend.api_key {
            // The backend's own credential replaces whatever the client sent
            // (its gateway key), in the header this provider expects.
            match backend.provider {
                Provider::Openai => {
                    set(host, HeaderMap::Request, "authorization", Some(&format!("Bearer {key}")));
                    set(host, HeaderMap::Request, "x-api-key", None);
                }
                Provider::Anthropic => {
                    set(host, HeaderMap::Request, "x-api-key", Some(key));
                    set(host, HeaderMap::Request, "anthropic-version", Some(&backend.anthropic_version));
                    set(host, HeaderMap::Request, "authorization", None);
                }
            }
        }
        // Routing facts and caller identity are the gateway's business.
        for internal in [MODEL_HEADER, BACKEND_HEADER, TIER_HEADER, self.routing.team_header.as_str()] {
            set(host, HeaderMap::Request, internal, None);
        }
    }
}

fn header(host: &dyn Host, name: &str) -> Option<String> {
    header_in(host, HeaderMap::Request, name)
}

fn header_in(host: &dyn Host, map: HeaderMap, name: &str) -> Option<String> {
    host.header(map, name).ok().flatten()
}

fn set(host: &dyn Host, map: HeaderMap, name: &str, value: Option<&str>) {
    if let Err(e) = host.set_header(map, name, value) {
        log::error!("router upstream: {e}");
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::factory;
    use crate::*;
    use tollgate_host::fake::FakeHost;

    fn attempt(backend: Option<&str>, headers: &[(&str, &str)], body: &str) -> (FakeHost, RouterFilter) {
        let host = FakeHost::with_request(headers, body.as_bytes());
        if let Some(backend) = backend {
            let path = super::REACHED_BACKEND.iter().map(|s| (*s).to_string()).collect();
            host.state().properties.insert(path, backend.as_bytes().to_vec());
        }
        if let Some((_, model)) = headers.iter().find(|(name, _)| *name == MODEL_HEADER) {
            host.state().properties.insert(vec![STATE_MODEL.to_string()], model.as_bytes().to_vec());
        }
        let mut filter = factory(ROOT_ID_UPSTREAM).new_filter();
        let flow = filter.on_request_headers(&host, body.is_empty());
        if !body.is_empty() && backend.is_some() {
            assert_eq!(flow, Flow::Pause, "holds headers until the body is rewritten");
            assert_eq!(filter.on_request_body(&host, body.len(), true), Flow::Continue);
        }
        (host, filter)
    }

    fn body_model(host: &FakeHost) -> String {
        let json: serde_json::Value = serde_json::from_slice(&host.state().request_body).unwrap();
        json["model"].as_str().unwrap().to_string()
    }

    #[test]
    fn rewrites_the_model_for_the_backend_reached() {
        let body = r#"{"model":"llama-70b","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let headers = [(MODEL_HEADER, "llama-70b"), (BACKEND_HEADER, "vllm-70b"), ("x-envoy-attempt-count", "1")];
        let (host, _) = attempt(Some("vllm-70b"), &headers, body);
        assert_eq!(body_model(&host), "meta-llama/Llama-3.1-70B");
        let length = host.request_header("content-length").unwrap();
        assert_eq!(length, host.state().request_body.len().to_string());
        assert_eq!(host.request_header(MODEL_HEADER), None, "internal headers are stripped");
        assert_eq!(host.request_header(BACKEND_HEADER), None);
    }

    #[test]
    fn a_fallback_attempt_gets_the_fallback_model_and_credentials() {
        let body = r#"{"model":"llama-70b","messages":[]}"#;
        let headers = [(MODEL_HEADER, "llama-70b"), ("x-envoy-attempt-count", "2"), ("authorization", "Bearer gateway-key")];
        let (host, mut filter) = attempt(Some("openai"), &headers, body);
        assert_eq!(body_model(&host), "gpt-4-turbo");
        assert_eq!(host.request_header("authorization").as_deref(), Some("Bearer sk-secret"));
        assert_eq!(host.request_header(":authority").as_deref(), Some("api.openai.com"));
        assert_eq!(host.request_header(ATTEMPT_HEADER).as_deref(), Some("2"));
        host.set_response(&[(":status", "200")], b"");
        filter.on_response_headers(&host, false);
        assert_eq!(host.response_header(RESPONSE_BACKEND_HEADER).as_deref(), Some("openai"));
        assert_eq!(host.response_header(RESPONSE_ATTEMPTS_HEADER).as_deref(), Some("2"));
    }

    #[test]
    fn an_unchanged_model_leaves_the_body_alone_but_restates_its_length() {
        let body = r#"{"model":"llama-8b",  "messages":[]}"#;
        // A previous attempt to another backend left a longer length behind.
        let headers = [(MODEL_HEADER, "llama-8b"), ("content-length", "99"), ("x-envoy-attempt-count", "2")];
        let (host, _) = attempt(Some("vllm-8b"), &headers, body);
        assert_eq!(host.state().request_body, body.as_bytes());
        assert_eq!(host.request_header("content-length"), Some(body.len().to_string()));
    }

    #[test]
    fn endpoints_without_backend_metadata_pass_through() {
        let body = r#"{"model":"llama-70b"}"#;
        let (host, _) = attempt(None, &[(MODEL_HEADER, "llama-70b"), ("x-envoy-attempt-count", "1")], body);
        assert_eq!(host.state().request_body, body.as_bytes());
        assert_eq!(host.request_header(ATTEMPT_HEADER).as_deref(), Some("1"));
    }

    #[test]
    fn health_checks_pass_untouched() {
        let (host, mut filter) = attempt(Some("vllm-8b"), &[(":path", "/healthz"), ("host", "vllm-8b")], "");
        assert_eq!(host.request_header(ATTEMPT_HEADER), None);
        assert_eq!(host.request_header("host").as_deref(), Some("vllm-8b"));
        host.set_response(&[(":status", "200")], b"");
        filter.on_response_headers(&host, true);
        assert_eq!(host.response_header(RESPONSE_BACKEND_HEADER), None, "not counted as an attempt");
    }

    #[test]
    fn failed_attempts_put_the_backend_in_cool_down() {
        let host = FakeHost::new();
        let path: Vec<String> = super::REACHED_BACKEND.iter().map(|s| (*s).to_string()).collect();
        host.state().properties.insert(path, b"vllm-8b".to_vec());
        let factory = factory(ROOT_ID_UPSTREAM);
        host.state().request_headers = vec![("x-envoy-attempt-count".to_string(), "1".to_string())];
        for status in ["503", "429", "500"] {
            let mut filter = factory.new_filter();
            filter.on_request_headers(&host, true);
            host.set_response(&[(":status", status)], b"");
            filter.on_response_headers(&host, false);
        }
        assert!(backend_state::snapshot(&host, "vllm-8b").cooling_down);
    }
}
