//! The router's per-attempt half. Envoy runs it once for every try, after it
//! picked the host, so each attempt is rewritten for the backend it reached —
//! including a fallback to another provider after the first one failed.

use crate::config::{Backend, Provider, Routing};
use crate::translation::{ClientAsk, Direction, ResponseTranslator};
use crate::{backend_state, Handoff, RESPONSE_ATTEMPTS_HEADER, RESPONSE_BACKEND_HEADER, STATE_HANDOFF};
use crate::config::{ModelGroup, Strategy};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};
use tollgate_core::errors::openai_error_body;
use tollgate_core::translate::{anthropic_to_openai_chat, openai_chat_to_anthropic, openai_error_to_anthropic, DEFAULT_MAX_TOKENS};
use tollgate_host::{BodyBuffer, Flow, HeaderMap, Host};

/// Path of the endpoint metadata naming the backend an endpoint belongs to
/// (set on every `lb_endpoint` by the bootstrap and the Gateway API patch).
const REACHED_BACKEND: [&str; 5] = ["xds", "upstream_host_metadata", "filter_metadata", "tollgate", "backend"];

pub struct Attempt {
    routing: Rc<Routing>,
    /// Backend this attempt reached, when the endpoint says.
    backend: Option<String>,
    /// The downstream half's decision (read once).
    handoff: Option<Handoff>,
    attempt: String,
    started: Option<SystemTime>,
    /// Whether the request headers are held for the body. Once they have
    /// gone on, the body callbacks must not touch them: the host then
    /// answers header calls with an error the SDK turns into a panic.
    holding_headers: bool,
    /// Held only to restate `content-length` from the body's size (a retry
    /// whose body stays as the client sent it).
    restating_length: bool,
    /// Set when the client's API differs from the backend's.
    translation: Option<(Direction, ClientAsk)>,
    response: Option<ResponseTranslator>,
}

impl Attempt {
    pub fn new(routing: Rc<Routing>) -> Self {
        Self {
            routing,
            backend: None,
            handoff: None,
            attempt: "1".to_string(),
            started: None,
            holding_headers: false,
            restating_length: false,
            translation: None,
            response: None,
        }
    }

    pub fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        // Envoy numbers each routed try in x-envoy-attempt-count (with
        // include_request_attempt_count on the virtual host; it also tells
        // the backend). Anything else here is the cluster's own traffic, such
        // as an active health check, which passes untouched.
        let Some(attempt) = header(host, "x-envoy-attempt-count") else {
            return Flow::Continue;
        };
        self.attempt = attempt;
        self.backend = match host.property(&REACHED_BACKEND) {
            Ok(value) => value.and_then(|v| String::from_utf8(v).ok()),
            Err(e) => {
                log::warn!("router upstream: {e}");
                None
            }
        };
        self.handoff = state(host, STATE_HANDOFF).and_then(|value| Handoff::decode(&value));
        if self.latency_based() {
            self.started = Some(host.now());
        }
        let Some(config) = self.backend_config() else {
            return Flow::Continue;
        };
        let translating = Direction::between(self.client_path(), config.provider).is_some();
        if end_of_stream {
            self.rewrite_headers(host);
            return Flow::Continue;
        }
        if !translating && self.body_names_target_model() {
            if !self.retrying() {
                // Nothing in the body changes, and no earlier attempt changed
                // its content-length: headers and body go on as they are.
                self.rewrite_headers(host);
                return Flow::Continue;
            }
            // A retry replays the body as the client sent it, but all tries
            // share one header map and an earlier one may have restated
            // content-length for a rewritten body: hold the headers only to
            // restate it from the body's size (retries are rare).
            self.restating_length = true;
        }
        // Hold the headers until the body is here: the body and its
        // content-length change together.
        self.holding_headers = true;
        Flow::Pause
    }

    /// Whether the body already names the model this backend knows the
    /// decided group by (the common case: no rewrite).
    fn body_names_target_model(&self) -> bool {
        let requested = self.handoff.as_ref().map(|h| h.requested_model.as_str());
        self.target_model().is_some_and(|target| requested == Some(target.as_str()))
    }

    /// The path the client asked for: from the decision, since all tries
    /// share one header map and an earlier try may have rewritten `:path`.
    fn client_path(&self) -> &str {
        self.handoff.as_ref().map_or("", |handoff| handoff.client_path.as_str())
    }

    fn retrying(&self) -> bool {
        self.attempt != "1"
    }

    fn latency_based(&self) -> bool {
        self.decided_group().is_some_and(|g| g.strategy == Strategy::LatencyBased)
    }

    fn decided_group(&self) -> Option<&ModelGroup> {
        self.routing.group(&self.handoff.as_ref()?.group)
    }

    /// The model id the reached backend knows the decided group by.
    fn target_model(&self) -> Option<String> {
        let group = self.decided_group()?;
        self.routing.model_for_backend(group, self.backend.as_deref()?).map(str::to_string)
    }

    pub fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        if !self.holding_headers {
            return Flow::Continue;
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        self.holding_headers = false;
        if self.restating_length {
            set(host, HeaderMap::Request, "content-length", Some(&body_size.to_string()));
            self.rewrite_headers(host);
            return Flow::Continue;
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
        match self.prepare_body(host, &body) {
            Ok(Some(rewritten)) => match host.set_body(BodyBuffer::Request, 0, body_size, &rewritten) {
                Ok(()) => length = rewritten.len(),
                Err(e) => log::error!("router upstream: {e}"),
            },
            Ok(None) => {}
            Err(message) => {
                self.reply_untranslatable(host, &message);
                return Flow::Pause;
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
        // Time to first byte is kept only for groups balancing on it (only
        // they noted the start).
        let ttfb_us = self
            .started
            .filter(|_| !failed)
            .and_then(|start| host.now().duration_since(start).ok())
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let cooldown = (self.routing.cooldown.failures, self.routing.cooldown.seconds);
        backend_state::attempt_finished(host, &backend, failed, ttfb_us, cooldown);
        set(host, HeaderMap::Response, RESPONSE_BACKEND_HEADER, Some(&backend));
        set(host, HeaderMap::Response, RESPONSE_ATTEMPTS_HEADER, Some(&self.attempt));
        if let Some((direction, ask)) = self.translation.clone() {
            let event_stream = header_in(host, HeaderMap::Response, "content-type").is_some_and(|t| t.starts_with("text/event-stream"));
            self.response = Some(ResponseTranslator::new(direction, ask, u16::try_from(status).unwrap_or(502), event_stream));
            // The translated body has another length.
            set(host, HeaderMap::Response, "content-length", None);
        }
        Flow::Continue
    }

    pub fn on_response_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        let Some(translator) = self.response.as_mut() else {
            return Flow::Continue;
        };
        if translator.needs_whole_body() && !end_of_stream {
            // Buffer: a JSON body is translated whole.
            return Flow::Pause;
        }
        let body = match host.body(BodyBuffer::Response, 0, body_size) {
            Ok(body) => body.unwrap_or_default(),
            Err(e) => {
                log::error!("router upstream: {e}");
                return Flow::Continue;
            }
        };
        let translated = if translator.needs_whole_body() { translator.whole(&body) } else { translator.chunk(&body, end_of_stream) };
        if let Err(e) = host.set_body(BodyBuffer::Response, 0, body_size, &translated) {
            log::error!("router upstream: {e}");
        }
        Flow::Continue
    }

    fn backend_config(&self) -> Option<&Backend> {
        self.routing.backends.get(self.backend.as_deref()?)
    }

    /// The body for this attempt: translated into the backend's API when it
    /// differs from the client's, else with `model` set to what the reached
    /// backend calls the requested group. `None` when nothing changes; an
    /// error when the request cannot be expressed in the backend's API.
    fn prepare_body(&mut self, host: &dyn Host, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let (Some(backend), Some(config)) = (self.backend.as_deref(), self.backend_config()) else {
            return Ok(None);
        };
        let provider = config.provider;
        let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Ok(None);
        };
        let requested = object.get("model").and_then(|m| m.as_str()).unwrap_or_default().to_string();
        let target = self
            .decided_group()
            .and_then(|group| self.routing.model_for_backend(group, backend))
            .unwrap_or(requested.as_str())
            .to_string();
        if let Some(direction) = Direction::between(self.client_path(), provider) {
            let translated = match direction {
                Direction::ChatToMessages => openai_chat_to_anthropic(body, &target, DEFAULT_MAX_TOKENS),
                Direction::MessagesToChat => anthropic_to_openai_chat(body, &target),
            }
            .map_err(|e| e.to_string())?;
            let include_usage = object.get("stream_options").and_then(|o| o.get("include_usage")).and_then(|v| v.as_bool());
            let created = host.now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let ask = ClientAsk { model: requested, include_usage: include_usage.unwrap_or(false), created };
            self.translation = Some((direction, ask));
            return Ok(Some(translated));
        }
        if target == requested {
            return Ok(None);
        }
        object.insert("model".to_string(), serde_json::Value::String(target));
        serde_json::to_vec(&object).map(Some).map_err(|e| e.to_string())
    }

    fn reply_untranslatable(&self, host: &dyn Host, message: &str) {
        let backend = self.backend.as_deref().unwrap_or_default();
        let body = openai_error_body(&format!("backend {backend} cannot serve this request: {message}"), "invalid_request_error", Some("untranslatable_request"));
        let client_speaks_anthropic = self.client_path().starts_with(crate::translation::ANTHROPIC_MESSAGES_PATH);
        let body = if client_speaks_anthropic { openai_error_to_anthropic(&body, 400) } else { body };
        if let Err(e) = host.send_local_reply(400, &[("content-type", "application/json")], &body) {
            log::error!("router upstream: {e}");
        }
    }

    fn rewrite_headers(&self, host: &dyn Host) {
        let Some(backend) = self.backend_config() else {
            return;
        };
        if let Some((direction, _)) = &self.translation {
            set(host, HeaderMap::Request, ":path", Some(&format!("{}{}", backend.path_prefix, direction.backend_path())));
            // The response is rewritten, so it must arrive uncompressed.
            set(host, HeaderMap::Request, "accept-encoding", Some("identity"));
            set(host, HeaderMap::Request, "content-type", Some("application/json"));
        } else if !backend.path_prefix.is_empty() || self.retrying() {
            // A retry restates the client's path: an earlier try may have
            // rewritten it for another backend.
            let path = self.client_path();
            if !path.is_empty() {
                set(host, HeaderMap::Request, ":path", Some(&format!("{}{path}", backend.path_prefix)));
            }
        }
        if backend.provider == Provider::Anthropic && header(host, "anthropic-version").is_none() {
            set(host, HeaderMap::Request, "anthropic-version", Some(&backend.anthropic_version));
        }
        if let Some(authority) = &backend.authority {
            set(host, HeaderMap::Request, ":authority", Some(authority));
        }
        if backend.api_key.is_none() && self.retrying() {
            // An earlier try may have put another backend's key here; a key
            // the client sent for a backend without one of its own stays.
            for name in ["authorization", "x-api-key"] {
                if header(host, name).is_some_and(|value| self.routing.is_backend_credential(name, &value)) {
                    set(host, HeaderMap::Request, name, None);
                }
            }
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
    }
}

fn header(host: &dyn Host, name: &str) -> Option<String> {
    header_in(host, HeaderMap::Request, name)
}

/// A filter-state value set by the downstream half.
fn state(host: &dyn Host, key: &str) -> Option<String> {
    host.property(&[key]).ok().flatten().and_then(|v| String::from_utf8(v).ok())
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
        attempt_on(FakeHost::with_request(headers, body.as_bytes()), backend, headers, body)
    }

    fn attempt_on(host: FakeHost, backend: Option<&str>, headers: &[(&str, &str)], body: &str) -> (FakeHost, RouterFilter) {
        if let Some(backend) = backend {
            let path = super::REACHED_BACKEND.iter().map(|s| (*s).to_string()).collect();
            host.state().properties.insert(path, backend.as_bytes().to_vec());
        }
        if let Some((_, group)) = headers.iter().find(|(name, _)| *name == MODEL_HEADER) {
            let path = headers.iter().find(|(name, _)| *name == ":path").map_or("/v1/chat/completions", |(_, path)| path);
            let requested = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|json| json["model"].as_str().map(str::to_string));
            handoff(&host, path, group, &requested.unwrap_or_default());
        }
        let mut filter = factory(ROOT_ID_UPSTREAM).new_filter();
        let flow = filter.on_request_headers(&host, body.is_empty());
        if !body.is_empty() && backend.is_some() {
            assert_eq!(flow, Flow::Pause, "holds headers until the body is rewritten");
            assert_eq!(filter.on_request_body(&host, body.len(), true), Flow::Continue);
        }
        (host, filter)
    }

    /// The downstream half's decision, as it leaves it for the attempts.
    fn handoff(host: &FakeHost, client_path: &str, group: &str, requested_model: &str) {
        let handoff = Handoff { client_path: client_path.into(), group: group.into(), requested_model: requested_model.into() };
        host.state().properties.insert(vec![STATE_HANDOFF.to_string()], handoff.encode().into_bytes());
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
    }

    #[test]
    fn a_fallback_attempt_gets_the_fallback_model_and_credentials() {
        let body = r#"{"model":"llama-70b","messages":[]}"#;
        let headers = [(MODEL_HEADER, "llama-70b"), ("x-envoy-attempt-count", "2"), ("authorization", "Bearer gateway-key")];
        let (host, mut filter) = attempt(Some("openai"), &headers, body);
        assert_eq!(body_model(&host), "gpt-4-turbo");
        assert_eq!(host.request_header("authorization").as_deref(), Some("Bearer sk-secret"));
        assert_eq!(host.request_header(":authority").as_deref(), Some("api.openai.com"));
        host.set_response(&[(":status", "200")], b"");
        filter.on_response_headers(&host, false);
        assert_eq!(host.response_header(RESPONSE_BACKEND_HEADER).as_deref(), Some("openai"));
        assert_eq!(host.response_header(RESPONSE_ATTEMPTS_HEADER).as_deref(), Some("2"));
    }

    #[test]
    fn a_first_attempt_that_changes_nothing_does_not_hold_the_body() {
        let host = FakeHost::with_request(&[(MODEL_HEADER, "llama-8b"), ("content-length", "36"), ("x-envoy-attempt-count", "1")], b"");
        let path = super::REACHED_BACKEND.iter().map(|s| (*s).to_string()).collect();
        host.state().properties.insert(path, b"vllm-8b".to_vec());
        handoff(&host, "/v1/chat/completions", "llama-8b", "llama-8b");
        let mut filter = factory(ROOT_ID_UPSTREAM).new_filter();
        assert_eq!(filter.on_request_headers(&host, false), Flow::Continue);
        assert_eq!(host.request_header("content-length").as_deref(), Some("36"), "as the downstream filters left it");
        // The headers went on: the body callback must leave them alone.
        host.state().request_headers_sent = true;
        host.state().request_body = br#"{"model":"llama-8b","messages":[]}"#.to_vec();
        assert_eq!(filter.on_request_body(&host, 36, true), Flow::Continue);
    }

    #[test]
    fn a_retry_with_an_unchanged_model_leaves_the_body_alone_but_restates_its_length() {
        let body = r#"{"model":"llama-8b",  "messages":[]}"#;
        // A previous attempt to another backend left a longer length behind.
        let headers = [(MODEL_HEADER, "llama-8b"), ("content-length", "99"), ("x-envoy-attempt-count", "2")];
        let host = FakeHost::with_request(&headers, body.as_bytes());
        let (host, _) = attempt_on(host, Some("vllm-8b"), &headers, body);
        assert_eq!(host.state().request_body, body.as_bytes());
        assert_eq!(host.request_header("content-length"), Some(body.len().to_string()));
    }

    #[test]
    fn endpoints_without_backend_metadata_pass_through() {
        let body = r#"{"model":"llama-70b"}"#;
        let (host, _) = attempt(None, &[(MODEL_HEADER, "llama-70b"), ("x-envoy-attempt-count", "1")], body);
        assert_eq!(host.state().request_body, body.as_bytes());
        assert_eq!(host.request_header("content-length"), None, "nothing restated");
    }

    #[test]
    fn an_openai_client_reaching_anthropic_is_translated_both_ways() {
        let body = r#"{"model":"claude","messages":[{"role":"system","content":"Be brief"},{"role":"user","content":"hi"}]}"#;
        let headers = [(MODEL_HEADER, "claude"), (":path", "/v1/chat/completions"), ("x-envoy-attempt-count", "1")];
        let (host, mut filter) = attempt(Some("anthropic"), &headers, body);
        let sent: serde_json::Value = serde_json::from_slice(&host.state().request_body).unwrap();
        assert_eq!(sent["model"], "claude-sonnet-4-5");
        assert_eq!(sent["system"], "Be brief");
        assert!(sent["max_tokens"].as_u64().is_some(), "Anthropic requires max_tokens");
        assert_eq!(host.request_header(":path").as_deref(), Some("/v1/messages"));
        assert_eq!(host.request_header("anthropic-version").as_deref(), Some("2023-06-01"));
        assert_eq!(host.request_header("accept-encoding").as_deref(), Some("identity"));

        let answer = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi!"}],"stop_reason":"end_turn","usage":{"input_tokens":9,"output_tokens":3}}"#;
        host.set_response(&[(":status", "200"), ("content-type", "application/json"), ("content-length", "170")], answer);
        filter.on_response_headers(&host, false);
        assert_eq!(host.response_header("content-length"), None);
        assert_eq!(filter.on_response_body(&host, 10, false), Flow::Pause, "JSON is translated whole");
        assert_eq!(filter.on_response_body(&host, answer.len(), true), Flow::Continue);
        let back: serde_json::Value = serde_json::from_slice(&host.state().response_body).unwrap();
        assert_eq!(back["object"], "chat.completion");
        assert_eq!(back["model"], "claude", "the client's own model name");
        assert_eq!(back["choices"][0]["message"]["content"], "Hi!");
    }

    #[test]
    fn untranslatable_requests_get_a_400_in_the_client_api() {
        let body = r#"{"model":"claude","n":2,"messages":[{"role":"user","content":"hi"}]}"#;
        let headers = [(MODEL_HEADER, "claude"), (":path", "/v1/chat/completions"), ("x-envoy-attempt-count", "1")];
        let host = FakeHost::with_request(&headers, body.as_bytes());
        let path = super::REACHED_BACKEND.iter().map(|s| (*s).to_string()).collect();
        host.state().properties.insert(path, b"anthropic".to_vec());
        handoff(&host, "/v1/chat/completions", "claude", "claude");
        let mut filter = factory(ROOT_ID_UPSTREAM).new_filter();
        filter.on_request_headers(&host, false);
        assert_eq!(filter.on_request_body(&host, body.len(), true), Flow::Pause);
        let reply = host.state().local_reply.clone().unwrap();
        assert_eq!(reply.status, 400);
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(json["error"]["code"], "untranslatable_request");
    }

    #[test]
    fn a_retry_after_a_translated_try_speaks_the_clients_api_again() {
        // The first try reached Anthropic and rewrote the shared header map
        // for it; the retry reaches an OpenAI-compatible backend.
        let body = r#"{"model":"llama-70b","messages":[{"role":"user","content":"hi"}]}"#;
        let headers = [
            (MODEL_HEADER, "llama-70b"),
            (":path", "/v1/messages"),
            ("authorization", "Bearer sk-secret"),
            ("x-api-key", "client-own-key"),
            ("x-envoy-attempt-count", "2"),
        ];
        let host = FakeHost::with_request(&headers, body.as_bytes());
        handoff(&host, "/v1/chat/completions", "llama-70b", "llama-70b");
        let path = super::REACHED_BACKEND.iter().map(|s| (*s).to_string()).collect();
        host.state().properties.insert(path, b"vllm-70b".to_vec());
        let mut filter = factory(ROOT_ID_UPSTREAM).new_filter();
        assert_eq!(filter.on_request_headers(&host, false), Flow::Pause);
        assert_eq!(filter.on_request_body(&host, body.len(), true), Flow::Continue);
        assert_eq!(host.request_header(":path").as_deref(), Some("/v1/chat/completions"));
        assert_eq!(body_model(&host), "meta-llama/Llama-3.1-70B", "a chat body, not translated");
        assert_eq!(host.request_header("authorization"), None, "the openai backend's key is gone");
        assert_eq!(host.request_header("x-api-key").as_deref(), Some("client-own-key"), "the client's own key stays");
    }

    #[test]
    fn handoff_round_trips_a_model_name_with_newlines() {
        let handoff = Handoff { client_path: "/v1/messages".into(), group: "claude".into(), requested_model: "a\nb".into() };
        assert_eq!(Handoff::decode(&handoff.encode()), Some(handoff));
        assert_eq!(Handoff::decode("only-a-path"), None);
    }

    #[test]
    fn health_checks_pass_untouched() {
        let (host, mut filter) = attempt(Some("vllm-8b"), &[(":path", "/healthz"), ("host", "vllm-8b")], "");
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
        let now = backend_state::now_secs(&host);
        assert!(backend_state::snapshot(&host, "vllm-8b", crate::config::Strategy::SimpleShuffle, now).cooling_down);
    }
}
