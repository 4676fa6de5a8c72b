//! Router logic. Two roots share this module:
//! - the downstream root holds the request until its body is complete,
//!   resolves tier, model and aliases, picks a backend by the group's strategy,
//!   publishes the decision as request headers (`x-ai-model`, `x-ai-backend`,
//!   `x-ai-tier`) that the route table matches, and makes Envoy route again;
//! - the upstream root (`ROOT_ID_UPSTREAM`) runs once per upstream attempt,
//!   after Envoy picked the host, so it rewrites each attempt (model id, path,
//!   host, credentials) for the backend that attempt actually reached, and
//!   records the attempt's outcome for cool-down and latency-based routing.

pub mod backend_state;
pub mod config;
pub mod resolve;
pub mod strategy;
mod translation;
mod upstream;

use config::{RouterConfig, Routing};
use resolve::{resolve, Ask, Resolution};
use std::cell::Cell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;
use tollgate_core::errors::openai_error_body;
use tollgate_core::request::{summarize, BodyError};
use tollgate_core::virtual_keys::{key_hash, presented_key};
use tollgate_host::{BodyBuffer, ConfigError, FilterFactory, Flow, HeaderMap, Host, HttpFilter};

/// Root id of the per-attempt (upstream) half of the router.
pub const ROOT_ID_UPSTREAM: &str = "tollgate.router.upstream";
/// Request headers carrying the decision the route table matches on.
pub const MODEL_HEADER: &str = "x-ai-model";
pub const BACKEND_HEADER: &str = "x-ai-backend";
pub const TIER_HEADER: &str = "x-ai-tier";
/// The client's tier request.
pub const CLIENT_TIER_HEADER: &str = "x-model-tier";
/// Filter state holding the decision for the per-attempt half, the meter and
/// the access log. The headers are for the route table only: Envoy drops them
/// before the first try (the virtual host's `request_headers_to_remove`).
pub const STATE_MODEL: &str = "tollgate_model";
pub const STATE_BACKEND: &str = "tollgate_backend";
pub const STATE_TIER: &str = "tollgate_tier";
/// Everything the per-attempt half needs from the decision, in one value
/// (see [`Handoff`]): each value a filter reads costs a call back into the
/// VM to allocate it, so one read per attempt, not three.
pub const STATE_HANDOFF: &str = "tollgate_route";
/// Response headers telling the client which backend answered, after how many tries.
pub const RESPONSE_BACKEND_HEADER: &str = "x-tollgate-backend";
pub const RESPONSE_ATTEMPTS_HEADER: &str = "x-tollgate-attempts";

pub struct RouterFactory {
    routing: Rc<Routing>,
    upstream: bool,
    random: Rc<SplitMix>,
}

impl FilterFactory for RouterFactory {
    type Filter = RouterFilter;

    fn configure(host: &dyn Host, root_id: &str, config: &[u8]) -> Result<Self, ConfigError> {
        let config: RouterConfig = tollgate_core::config::parse(config)?;
        // Keys come from the VM's environment (Envoy's host_env_keys), read
        // once here so no request pays for it.
        let routing = Routing::compile(config, &|name| std::env::var(name).ok())?;
        let seed = host.now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Ok(Self { routing: Rc::new(routing), upstream: root_id == ROOT_ID_UPSTREAM, random: Rc::new(SplitMix(Cell::new(seed))) })
    }

    fn new_filter(&self) -> RouterFilter {
        let routing = Rc::clone(&self.routing);
        if self.upstream {
            RouterFilter::Upstream(Box::new(upstream::Attempt::new(routing)))
        } else {
            RouterFilter::Downstream(Downstream { routing, random: Rc::clone(&self.random), chosen: None, client: None })
        }
    }
}

/// A small, fast, non-cryptographic generator for balancing choices.
struct SplitMix(Cell<u64>);

impl SplitMix {
    fn next(&self) -> u64 {
        let state = self.0.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.0.set(state);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

pub enum RouterFilter {
    Downstream(Downstream),
    Upstream(Box<upstream::Attempt>),
}

impl HttpFilter for RouterFilter {
    fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        match self {
            Self::Downstream(d) => d.on_request_headers(host, end_of_stream),
            Self::Upstream(u) => u.on_request_headers(host, end_of_stream),
        }
    }

    fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        match self {
            Self::Downstream(d) => d.on_request_body(host, body_size, end_of_stream),
            Self::Upstream(u) => u.on_request_body(host, body_size, end_of_stream),
        }
    }

    fn on_response_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        match self {
            Self::Downstream(_) => Flow::Continue,
            Self::Upstream(u) => u.on_response_headers(host, end_of_stream),
        }
    }

    fn on_response_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        match self {
            Self::Downstream(_) => Flow::Continue,
            Self::Upstream(u) => u.on_response_body(host, body_size, end_of_stream),
        }
    }

    fn on_log(&mut self, host: &dyn Host) {
        if let Self::Downstream(d) = self {
            if let Some(backend) = d.chosen.take() {
                backend_state::request_finished(host, &backend);
            }
        }
    }
}

pub struct Downstream {
    routing: Rc<Routing>,
    random: Rc<SplitMix>,
    /// The backend this request was counted against (for least-busy).
    chosen: Option<String>,
    client: Option<ClientHeaders>,
}

/// The request headers the decision depends on, read in one host call.
#[derive(Debug, Default)]
struct ClientHeaders {
    content_length: Option<usize>,
    path: String,
    tier: Option<String>,
    team: Option<String>,
    /// Headers that may carry a virtual key (read only when keys are configured).
    key_headers: Vec<(String, String)>,
    /// Whether the client sent any of the decision headers itself.
    decision_headers: bool,
}

impl ClientHeaders {
    fn read(host: &dyn Host, routing: &Routing) -> Self {
        let pairs = match host.headers(HeaderMap::Request) {
            Ok(pairs) => pairs,
            Err(e) => {
                log::error!("router: {e}");
                return Self::default();
            }
        };
        let mut client = Self::default();
        for (name, value) in pairs {
            match name.as_str() {
                "content-length" => client.content_length = value.parse().ok(),
                ":path" => client.path = value,
                CLIENT_TIER_HEADER => client.tier = Some(value),
                MODEL_HEADER | BACKEND_HEADER | TIER_HEADER => client.decision_headers = true,
                other if other.eq_ignore_ascii_case(&routing.team_header) => client.team = Some(value),
                other if !routing.key_teams.is_empty() && routing.key_headers.iter().any(|h| other.eq_ignore_ascii_case(h)) => {
                    client.key_headers.push((other.to_ascii_lowercase(), value));
                }
                _ => {}
            }
        }
        client
    }

    /// The caller's team, for a tier that limits its teams (`None` for any
    /// other: a key is hashed only when it matters). A configured virtual
    /// key decides, as it does in the guard: the team header is the
    /// client's word until the guard replaces it after routing.
    fn team_for_tier<'a>(&'a self, routing: &'a Routing) -> Option<&'a str> {
        let limited = self.tier.as_deref().and_then(|tier| routing.tiers.get(tier)).is_some_and(|t| !t.allowed_teams.is_empty());
        if !limited {
            return None;
        }
        let presented = routing.key_headers.iter().find_map(|name| {
            let (_, value) = self.key_headers.iter().find(|(header, _)| header == name)?;
            presented_key(name, value)
        });
        if let Some(team) = presented.and_then(|key| routing.key_teams.get(&key_hash(key))) {
            return team.as_deref();
        }
        self.team.as_deref()
    }
}

/// The decision as the per-attempt half reads it from [`STATE_HANDOFF`]:
/// the client's path (every attempt shares one header map, so a rewritten
/// `:path` is not the client's), the decided group (empty when the request
/// was left to the default route), and the model the client's body names (a
/// first attempt that changes nothing then need not hold and re-read the
/// body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    pub client_path: String,
    pub group: String,
    pub requested_model: String,
}

impl Handoff {
    /// Lines in a fixed order; the client's model, which may hold anything,
    /// goes last.
    pub fn encode(&self) -> String {
        format!("{}\n{}\n{}", self.client_path, self.group, self.requested_model)
    }

    pub fn decode(value: &str) -> Option<Self> {
        let mut lines = value.splitn(3, '\n');
        Some(Self {
            client_path: lines.next()?.to_string(),
            group: lines.next()?.to_string(),
            requested_model: lines.next()?.to_string(),
        })
    }
}

impl Downstream {
    fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        let client = ClientHeaders::read(host, &self.routing);
        if end_of_stream {
            return leave_to_default_route(host, &client);
        }
        let too_large = client.content_length.is_some_and(|len| len > self.routing.max_body_bytes);
        // Kept for the body's callback: one read of the headers per request.
        self.client = Some(client);
        if too_large {
            self.reply_too_large(host);
            return Flow::Pause;
        }
        // The route depends on the body's `model`: hold the headers until the
        // body is complete (Envoy delivers it because the plugin sets
        // allow_on_headers_stop_iteration).
        Flow::Pause
    }

    fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        if body_size > self.routing.max_body_bytes {
            self.reply_too_large(host);
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
        let routing = Rc::clone(&self.routing);
        let client = self.client.take().unwrap_or_else(|| ClientHeaders::read(host, &routing));
        let team = client.team_for_tier(&routing).map(str::to_owned);
        let ask = Ask { tier: client.tier.as_deref(), model: summary.model.as_deref(), team: team.as_deref() };
        let (group, tier, pinned) = match resolve(&routing, ask) {
            Ok(Resolution::Group { group, tier, pinned }) => (group, tier, pinned),
            Ok(Resolution::Default) => return leave_to_default_route(host, &client),
            Err(e) => {
                let (status, error_type, code) = e.status();
                reply_error(host, status, &e.message(), error_type, code);
                return Flow::Pause;
            }
        };
        let backend = match (pinned, group.targets.as_slice()) {
            (Some(pinned), _) => pinned.to_string(),
            // One target: nothing to balance, no shared state to read.
            (None, [only]) => only.backend.clone(),
            (None, _) => {
                let now = backend_state::now_secs(host);
                let snapshot = |backend: &str| backend_state::snapshot(host, backend, group.strategy, now);
                match strategy::choose(group, &snapshot, self.random.next()) {
                    Some(target) => target.backend.clone(),
                    None => return Flow::Continue,
                }
            }
        };
        hand_off(host, Handoff { client_path: client.path, group: group.name.clone(), requested_model: summary.model.clone().unwrap_or_default() });
        let mut decision = vec![(MODEL_HEADER, STATE_MODEL, group.name.as_str()), (BACKEND_HEADER, STATE_BACKEND, backend.as_str())];
        if let Some(tier) = tier {
            decision.push((TIER_HEADER, STATE_TIER, tier));
        }
        for (header, state, value) in decision {
            if let Err(e) = host.set_property(&[state], value.as_bytes()) {
                log::warn!("router: {e}");
            }
            if let Err(e) = host.set_header(HeaderMap::Request, header, Some(value)) {
                log::error!("router: {e}");
                return Flow::Continue;
            }
        }
        if tier.is_none() {
            // The filters after the router take the tier from this header: one
            // a client sent must not pass for the router's.
            if let Err(e) = host.set_header(HeaderMap::Request, TIER_HEADER, None) {
                log::error!("router: {e}");
            }
        }
        // A rough size of what this request costs the backend, for usage-based
        // routing: about four bytes per prompt token, plus the completion cap.
        let estimate = (body.len() / 4) as u64 + summary.max_tokens.unwrap_or(0);
        if backend_state::request_started(host, &backend, group.strategy, estimate) {
            self.chosen = Some(backend);
        }
        if let Err(e) = host.clear_route_cache() {
            log::error!("router: {e}");
        }
        Flow::Continue
    }

    fn reply_too_large(&self, host: &dyn Host) {
        let message = format!("request body exceeds {} bytes", self.routing.max_body_bytes);
        reply_error(host, 413, &message, "invalid_request_error", "request_too_large");
    }
}

fn hand_off(host: &dyn Host, handoff: Handoff) {
    if let Err(e) = host.set_property(&[STATE_HANDOFF], handoff.encode().as_bytes()) {
        log::warn!("router: {e}");
    }
}

/// A request the router leaves undecided goes by the tier header or the
/// default split: decision headers the client sent itself must not pick a
/// route (or a backend) for it, so they go, and Envoy routes again. Its
/// attempts still get the client's path (with no group).
fn leave_to_default_route(host: &dyn Host, client: &ClientHeaders) -> Flow {
    hand_off(host, Handoff { client_path: client.path.clone(), group: String::new(), requested_model: String::new() });
    if !client.decision_headers {
        return Flow::Continue;
    }
    for name in [MODEL_HEADER, BACKEND_HEADER, TIER_HEADER] {
        if let Err(e) = host.set_header(HeaderMap::Request, name, None) {
            log::error!("router: {e}");
            return Flow::Continue;
        }
    }
    if let Err(e) = host.clear_route_cache() {
        log::error!("router: {e}");
    }
    Flow::Continue
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

    pub(crate) const CONFIG: &str = r#"{
        "max_body_bytes": 1000,
        "backends": {"vllm-8b": {"provider": "openai"}, "vllm-70b": {"provider": "openai"},
                     "openai": {"provider": "openai", "api_key_env": "TEST_OPENAI_KEY", "authority": "api.openai.com"},
                     "anthropic": {"provider": "anthropic"}},
        "models": {
            "llama-8b": {"targets": [{"backend": "vllm-8b"}]},
            "llama-70b": {"targets": [{"backend": "vllm-70b", "model": "meta-llama/Llama-3.1-70B"}], "fallbacks": ["gpt-4-turbo"]},
            "gpt-4-turbo": {"targets": [{"backend": "openai"}]},
            "claude": {"targets": [{"backend": "anthropic", "model": "claude-sonnet-4-5"}]}
        },
        "aliases": {"gpt4": "gpt-4-turbo"},
        "tiers": {"fast": {"model": "llama-8b"}, "vip": {"model": "gpt-4-turbo", "allowed_teams": ["research"]}}
    }"#;

    pub(crate) fn factory(root_id: &str) -> RouterFactory {
        // Every test sets the same value, so parallel tests agree.
        std::env::set_var("TEST_OPENAI_KEY", "sk-secret");
        RouterFactory::configure(&FakeHost::new(), root_id, CONFIG.as_bytes()).unwrap()
    }

    fn route(headers: &[(&str, &str)], body: &str) -> FakeHost {
        let host = FakeHost::with_request(headers, body.as_bytes());
        let mut filter = factory("tollgate.router").new_filter();
        assert_eq!(filter.on_request_headers(&host, false), Flow::Pause);
        filter.on_request_body(&host, body.len(), true);
        filter.on_log(&host);
        host
    }

    #[test]
    fn publishes_the_decision_and_reroutes() {
        let host = route(&[(":path", "/v1/chat/completions")], r#"{"model":"gpt4","messages":[]}"#);
        assert_eq!(host.request_header(MODEL_HEADER).as_deref(), Some("gpt-4-turbo"), "alias resolved");
        assert_eq!(host.request_header(BACKEND_HEADER).as_deref(), Some("openai"));
        assert_eq!(host.request_header(TIER_HEADER), None);
        assert_eq!(host.state().route_cache_clears, 1);
        assert_eq!(host.state().request_body, br#"{"model":"gpt4","messages":[]}"#, "the body goes on unchanged");
        let state = |key: &str| host.state().properties.get(&vec![key.to_string()]).cloned();
        assert_eq!(state(STATE_MODEL).as_deref(), Some(&b"gpt-4-turbo"[..]));
        assert_eq!(state(STATE_BACKEND).as_deref(), Some(&b"openai"[..]));
        let handoff = state(STATE_HANDOFF).and_then(|v| Handoff::decode(std::str::from_utf8(&v).ok()?)).unwrap();
        assert_eq!((handoff.client_path.as_str(), handoff.group.as_str(), handoff.requested_model.as_str()), ("/v1/chat/completions", "gpt-4-turbo", "gpt4"));
    }

    #[test]
    fn tier_without_model_uses_the_tier_model() {
        let host = route(&[(CLIENT_TIER_HEADER, "fast")], r#"{"messages":[]}"#);
        assert_eq!(host.request_header(MODEL_HEADER).as_deref(), Some("llama-8b"));
        assert_eq!(host.request_header(BACKEND_HEADER).as_deref(), Some("vllm-8b"));
        assert_eq!(host.request_header(TIER_HEADER).as_deref(), Some("fast"));
    }

    #[test]
    fn neither_model_nor_tier_leaves_the_default_route() {
        let host = route(&[(":path", "/v1/messages")], r#"{"model":"auto","messages":[]}"#);
        assert_eq!(host.request_header(MODEL_HEADER), None);
        assert_eq!(host.state().route_cache_clears, 0);
        // Its attempts still learn the client's path, with no group.
        let handoff = host.state().properties.get(&vec![STATE_HANDOFF.to_string()]).cloned().unwrap();
        let handoff = Handoff::decode(std::str::from_utf8(&handoff).unwrap()).unwrap();
        assert_eq!((handoff.client_path.as_str(), handoff.group.as_str()), ("/v1/messages", ""));
    }

    #[test]
    fn a_decision_without_a_tier_drops_a_tier_header_the_client_sent() {
        let host = route(&[(TIER_HEADER, "fast")], r#"{"model":"llama-70b","messages":[]}"#);
        assert_eq!(host.request_header(MODEL_HEADER).as_deref(), Some("llama-70b"));
        assert_eq!(host.request_header(TIER_HEADER), None);
    }

    #[test]
    fn a_client_cannot_pick_a_route_with_the_decision_headers() {
        let forged = [(MODEL_HEADER, "gpt-4-turbo"), (BACKEND_HEADER, "openai"), (TIER_HEADER, "quality")];
        let host = route(&forged, r#"{"messages":[]}"#);
        for name in [MODEL_HEADER, BACKEND_HEADER, TIER_HEADER] {
            assert_eq!(host.request_header(name), None, "{name} dropped");
        }
        assert_eq!(host.state().route_cache_clears, 1, "routed again without them");
        // Nor on a request without a body.
        let host = FakeHost::with_request(&forged, b"");
        let mut filter = factory("tollgate.router").new_filter();
        assert_eq!(filter.on_request_headers(&host, true), Flow::Continue);
        assert_eq!(host.request_header(MODEL_HEADER), None);
        assert_eq!(host.state().route_cache_clears, 1);
    }

    #[test]
    fn client_errors_get_openai_bodies_with_the_right_status() {
        for (headers, body, status, code) in [
            (vec![], r#"{"model": "#, 400, "invalid_json"),
            (vec![], r#"{"model":"gpt-9"}"#, 404, "model_not_found"),
            (vec![(CLIENT_TIER_HEADER, "vip"), ("x-tollgate-team", "sales")], "{}", 403, "tier_not_allowed"),
            (vec![(CLIENT_TIER_HEADER, "gold")], "{}", 400, "unknown_tier"),
        ] {
            let host = route(&headers, body);
            let reply = host.state().local_reply.clone().unwrap_or_else(|| panic!("no reply for {body}"));
            assert_eq!(reply.status, status, "{body}");
            let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(json["error"]["code"], code);
            assert_eq!(host.request_header(MODEL_HEADER), None);
        }
    }

    #[test]
    fn a_virtual_keys_team_decides_a_tiers_access_over_the_team_header() {
        let hash = |key: &str| tollgate_core::virtual_keys::hex(&key_hash(key));
        let config: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
        let mut config = config.as_object().unwrap().clone();
        config.insert(
            "keys".into(),
            serde_json::json!([{"sha256": hash("sk-research"), "team": "research"},
                               {"sha256": hash("sk-sales"), "team": "sales"},
                               {"sha256": hash("sk-teamless")}]),
        );
        let config = serde_json::to_vec(&config).unwrap();
        std::env::set_var("TEST_OPENAI_KEY", "sk-secret");
        let factory = RouterFactory::configure(&FakeHost::new(), "tollgate.router", &config).unwrap();
        let status = |headers: &[(&str, &str)]| {
            let mut headers = headers.to_vec();
            headers.push((CLIENT_TIER_HEADER, "vip"));
            let host = FakeHost::with_request(&headers, b"{}");
            let mut filter = factory.new_filter();
            filter.on_request_headers(&host, false);
            filter.on_request_body(&host, 2, true);
            let reply = host.state().local_reply.clone();
            reply.map_or(200, |r| r.status)
        };
        // A key of another team cannot borrow an allowed team's name.
        assert_eq!(status(&[("authorization", "Bearer sk-sales"), ("x-tollgate-team", "research")]), 403);
        assert_eq!(status(&[("x-api-key", "sk-sales"), ("x-tollgate-team", "research")]), 403);
        assert_eq!(status(&[("authorization", "Bearer sk-teamless"), ("x-tollgate-team", "research")]), 403);
        // The key's own team is enough, without the header.
        assert_eq!(status(&[("authorization", "Bearer sk-research")]), 200);
        assert_eq!(status(&[("authorization", "Basic eA=="), ("x-api-key", "sk-research")]), 200, "the first key presented");
        // Without a configured key, the header an authentication layer sets.
        assert_eq!(status(&[("authorization", "Bearer sk-provider"), ("x-tollgate-team", "research")]), 200);
        assert_eq!(status(&[("x-tollgate-team", "sales")]), 403);
        let e = RouterFactory::configure(&FakeHost::new(), "r", br#"{"keys": [{"sha256": "abc"}]}"#).err().unwrap();
        assert_eq!(e.field, "keys.0.sha256");
    }

    #[test]
    fn oversized_bodies_get_a_413() {
        let host = FakeHost::with_request(&[("content-length", "2000")], b"");
        let mut filter = factory("tollgate.router").new_filter();
        assert_eq!(filter.on_request_headers(&host, false), Flow::Pause);
        assert_eq!(host.state().local_reply.clone().unwrap().status, 413);

        let host = FakeHost::with_request(&[], &[b' '; 1500]);
        let mut filter = factory("tollgate.router").new_filter();
        assert_eq!(filter.on_request_body(&host, 1500, false), Flow::Pause);
        assert_eq!(host.state().local_reply.clone().unwrap().status, 413);
    }

    #[test]
    fn requests_in_flight_are_counted_until_logged() {
        let config = r#"{"backends": {"a": {"provider": "openai"}, "b": {"provider": "openai"}},
                         "models": {"m": {"strategy": "least-busy", "targets": [{"backend": "a"}, {"backend": "b"}]}}}"#;
        let factory = RouterFactory::configure(&FakeHost::new(), "tollgate.router", config.as_bytes()).unwrap();
        let host = FakeHost::with_request(&[], br#"{"model":"m"}"#);
        let mut first = factory.new_filter();
        first.on_request_body(&host, 13, true);
        let chosen = host.request_header(BACKEND_HEADER).unwrap();
        let in_flight = |b: &str| backend_state::snapshot(&host, b, config::Strategy::LeastBusy, 0).in_flight;
        assert_eq!(in_flight(&chosen), 1);
        let mut second = factory.new_filter();
        second.on_request_body(&host, 13, true);
        assert_ne!(host.request_header(BACKEND_HEADER).unwrap(), chosen, "least-busy avoids the busy one");
        first.on_log(&host);
        assert_eq!(in_flight(&chosen), 0);
    }

    #[test]
    fn header_failures_are_logged_not_fatal() {
        let host = FakeHost::with_request(&[], br#"{"model":"llama-8b"}"#);
        host.state().request_headers_sent = true;
        let mut filter = factory("tollgate.router").new_filter();
        assert_eq!(filter.on_request_body(&host, 20, true), Flow::Continue);
        assert_eq!(host.state().route_cache_clears, 0);
    }

    #[test]
    fn bad_configuration_is_refused_with_the_field() {
        let host = FakeHost::new();
        let refuse = |json: &str| RouterFactory::configure(&host, "tollgate.router", json.as_bytes()).err().unwrap();
        assert_eq!(refuse(r#"{"max_body_bytes": 0}"#).field, "max_body_bytes");
        assert!(refuse(r#"{"max_body_byte": 1}"#).message.contains("unknown field"));
        let e = refuse(r#"{"models": {"m": {"targets": [{"backend": "nope"}]}}}"#);
        assert_eq!(e.field, "models.m.targets.0.backend");
        let e = refuse(r#"{"backends": {"b": {"provider": "openai", "api_key_env": "TOLLGATE_TEST_UNSET_VAR"}}}"#);
        assert_eq!(e.field, "backends.b.api_key_env");
        assert!(e.message.contains("TOLLGATE_TEST_UNSET_VAR"));
        let e = refuse(r#"{"backends": {"b": {"provider": "cohere"}}}"#);
        assert_eq!(e.field, "backends.b.provider");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let f = factory("tollgate.router");
        let dump = format!("{:?}", f.routing);
        assert!(!dump.contains("sk-secret"), "{dump}");
        assert!(dump.contains("<redacted>"));
    }
}
