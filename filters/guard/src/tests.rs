use super::*;
use prost::Message as _;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use tollgate_host::fake::FakeHost;
use tollgate_ratelimit_proto::{prost, prost_types, RateLimit, RateLimitRequest, RateLimitResponse};

const ALICE_KEY: &str = "sk-alice-secret";

fn config() -> String {
    format!(
        r#"{{
        "timeout_ms": 50,
        "identity": {{"keys": [{{"sha256": "{}", "id": "alice-1", "user": "alice", "team": "search"}}]}},
        "rate_limits": [
            {{"descriptor": [{{"key": "user_id", "from": "user"}}]}},
            {{"descriptor": [{{"key": "user_id", "from": "user"}}, {{"key": "model_tier", "from": "tier"}}]}}
        ],
        "budgets": [
            {{"name": "user-tokens", "per": ["user"], "tokens": 1000, "window": "day"}},
            {{"name": "key-usd", "per": ["key"], "usd": 100, "window": "calendar_month"}},
            {{"name": "gpt4-cap", "per": ["model"], "models": ["gpt-4-turbo"], "usd": 50, "window": "calendar_month"}}
        ],
        "prices": {{"gpt-4-turbo": {{"input": 10, "output": 30}}, "llama-70b": {{"input": 0.59, "output": 0.79}}}}
    }}"#,
        tollgate_core::virtual_keys::hex(&tollgate_core::virtual_keys::key_hash(ALICE_KEY))
    )
}

/// A host configured with `json`, holding a request.
fn setup(json: &str, headers: &[(&str, &str)], body: &str) -> (FakeHost, GuardFactory) {
    let host = FakeHost::new();
    let factory = GuardFactory::configure(&host, "tollgate.guard", json.as_bytes()).unwrap();
    {
        let mut state = host.state();
        state.request_headers = headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())).collect();
        state.request_body = body.as_bytes().to_vec();
        // 2026-11-24T14:00:00Z
        state.now = Some(UNIX_EPOCH + Duration::from_secs(1_795_528_800));
    }
    (host, factory)
}

fn chat_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![(":path", "/v1/chat/completions"), (":method", "POST"), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    headers
}

const BODY: &str = r#"{"model":"llama-70b","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;

/// Runs the request callbacks; returns the flow of the body callback.
fn send(host: &FakeHost, filter: &mut GuardFilter) -> Flow {
    let body_len = host.state().request_body.len();
    let flow = filter.on_request_headers(host, body_len == 0);
    if body_len == 0 {
        return flow;
    }
    filter.on_request_body(host, body_len, true)
}

fn last_request(host: &FakeHost) -> (u32, RateLimitRequest) {
    let call = host.state().grpc_calls.last().cloned().expect("a call");
    assert_eq!(call.cluster, "ratelimit");
    assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
    assert_eq!(call.method, "ShouldRateLimit");
    (call.token, RateLimitRequest::decode(call.message.as_slice()).unwrap())
}

fn entries(d: &RateLimitDescriptor) -> Vec<(String, String)> {
    d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn stat(host: &FakeHost, stat: Stat) -> i64 {
    host.metric(stat.name()).map_or(0, |m| m.value)
}

/// The service's semantics (services/ratelimit): per-descriptor hits, an
/// explicit 0 reads, overrides, over limit when the count after exceeds it.
#[derive(Default)]
struct FakeRls {
    counters: HashMap<Vec<(String, String)>, u64>,
    /// Configured limits: entries (value `*` = any) → requests per hour.
    rules: Vec<(Vec<(String, String)>, u32)>,
}

impl FakeRls {
    fn seed() -> Self {
        Self {
            counters: HashMap::new(),
            rules: vec![
                (pairs(&[("user_id", "*")]), 100),
                (pairs(&[("user_id", "*"), ("model_tier", "quality")]), 20),
            ],
        }
    }

    fn rule(&self, entries: &[(String, String)]) -> Option<u32> {
        self.rules
            .iter()
            .find(|(rule, _)| {
                rule.len() == entries.len() && rule.iter().zip(entries).all(|((rk, rv), (k, v))| rk == k && (rv == "*" || rv == v))
            })
            .map(|(_, limit)| *limit)
    }

    fn answer(&mut self, request: &RateLimitRequest) -> RateLimitResponse {
        let mut statuses = Vec::new();
        let mut over = false;
        for d in &request.descriptors {
            let key = entries(d);
            let (limit, unit) = match (&d.limit, self.rule(&key)) {
                (Some(o), _) => (o.requests_per_unit, o.unit),
                (None, Some(limit)) => (limit, Unit::Hour as i32),
                (None, None) => {
                    statuses.push(DescriptorStatus { code: Code::Ok as i32, ..Default::default() });
                    continue;
                }
            };
            let hits = d.hits_addend.unwrap_or(u64::from(request.hits_addend.max(1)));
            let count = self.counters.entry(key).or_default();
            *count += hits;
            let after = *count;
            let is_over = after > u64::from(limit);
            over |= is_over;
            statuses.push(DescriptorStatus {
                code: if is_over { Code::OverLimit } else { Code::Ok } as i32,
                current_limit: Some(RateLimit { name: String::new(), requests_per_unit: limit, unit }),
                limit_remaining: if is_over { 0 } else { u32::try_from(u64::from(limit) - after).unwrap() },
                duration_until_reset: Some(prost_types::Duration { seconds: 1800, nanos: 0 }),
            });
        }
        RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            ..Default::default()
        }
    }

    /// Answers the host's last call.
    fn serve(&mut self, host: &FakeHost, filter: &mut GuardFilter) -> RateLimitRequest {
        let (token, request) = last_request(host);
        let response = self.answer(&request);
        host.reply_to_grpc_call(filter, token, 0, &response.encode_to_vec());
        request
    }

    fn ledger(&self, entries: &[(&str, &str)], which: &str) -> u64 {
        let mut key = pairs(entries);
        key.push(("ledger".into(), which.into()));
        self.counters.get(&key).copied().unwrap_or(0)
    }
}

fn respond(host: &FakeHost, filter: &mut GuardFilter, status: &str, body: &str) -> Flow {
    host.set_response(&[(":status", status), ("content-type", "application/json")], body.as_bytes());
    assert_eq!(filter.on_response_headers(host, false), Flow::Continue);
    filter.on_response_body(host, body.len(), true)
}

fn usage_body(prompt: u64, completion: u64) -> String {
    format!(
        r#"{{"choices":[{{"message":{{"role":"assistant","content":"ok"}}}}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion}}}}}"#
    )
}

// ---- configuration ---------------------------------------------------------------

#[test]
fn empty_configuration_passes_everything() {
    let (host, factory) = setup("{}", &chat_headers(&[]), BODY);
    let mut filter = factory.new_filter();
    assert_eq!(filter.on_request_headers(&host, false), Flow::Continue);
    assert_eq!(filter.on_request_body(&host, BODY.len(), true), Flow::Continue);
    assert!(host.state().grpc_calls.is_empty());
    assert_eq!(respond(&host, &mut filter, "200", &usage_body(1, 1)), Flow::Continue);
}

#[test]
fn bad_configurations_are_refused_with_the_field() {
    let host = FakeHost::new();
    let refuse = |json: &str| GuardFactory::configure(&host, "tollgate.guard", json.as_bytes()).err().unwrap();
    assert!(refuse(r#"{"limits": 1}"#).message.contains("unknown field `limits`"));
    assert_eq!(refuse(r#"{"timeout_ms": 0}"#).field, "timeout_ms");
    assert_eq!(refuse(r#"{"rate_limits": [{"descriptor": []}]}"#).field, "rate_limits.0.descriptor");
    assert_eq!(
        refuse(r#"{"rate_limits": [{"descriptor": [{"key": "a", "from": "user", "value": "x"}]}]}"#).field,
        "rate_limits.0.descriptor.0"
    );
    assert_eq!(refuse(r#"{"rate_limits": [{"descriptor": [{"key": "a", "from": "planet"}]}]}"#).field, "rate_limits[0].descriptor[0].from");
    assert_eq!(refuse(r#"{"budgets": [{"name": "b", "window": "day"}]}"#).field, "budgets.0");
    assert_eq!(refuse(r#"{"budgets": [{"name": "b", "tokens": 1, "usd": 1, "window": "day"}]}"#).field, "budgets.0");
    assert_eq!(refuse(r#"{"budgets": [{"name": "b", "tokens": 5, "window": "fortnight"}]}"#).field, "budgets[0].window");
    assert_eq!(refuse(r#"{"budgets": [{"name": "b", "usd": 5000, "window": "day"}]}"#).field, "budgets.0.usd");
    assert!(GuardFactory::configure(&host, "g", br#"{"budgets": [{"name": "b", "usd": 5000, "usd_per_count": 0.0001, "window": "day"}]}"#).is_ok());
    assert_eq!(
        refuse(r#"{"budgets": [{"name": "b", "tokens": 5, "window": "day"}, {"name": "b", "tokens": 5, "window": "day"}]}"#).field,
        "budgets.1.name"
    );
    assert_eq!(refuse(r#"{"budgets": [{"name": "b c", "tokens": 5, "window": "day"}]}"#).field, "budgets.0.name");
    assert_eq!(refuse(r#"{"identity": {"keys": [{"sha256": "abc", "id": "k"}]}}"#).field, "identity.keys.0.sha256");
    assert_eq!(refuse(r#"{"identity": {"require_key": true}}"#).field, "identity.keys");
    assert_eq!(refuse(r#"{"prices": {"m": {"input": -1, "output": 1}}}"#).field, "prices.m.input");
}

// ---- identity --------------------------------------------------------------------

#[test]
fn required_keys_refuse_with_401() {
    let json = config().replace(r#""identity": {"#, r#""identity": {"require_key": true, "#);
    for headers in [vec![("x-user-id", "bob")], vec![("authorization", "Bearer sk-wrong")]] {
        let (host, factory) = setup(&json, &chat_headers(&headers), BODY);
        let mut filter = factory.new_filter();
        assert_eq!(filter.on_request_headers(&host, false), Flow::Pause);
        let reply = host.state().local_reply.clone().unwrap();
        assert_eq!(reply.status, 401);
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert!(host.state().grpc_calls.is_empty());
        assert_eq!(stat(&host, Stat::Unauthorized), 1);
        // Its own reply passes back through it untouched.
        assert_eq!(filter.on_response_headers(&host, false), Flow::Continue);
    }
}

#[test]
fn a_virtual_key_sets_the_team_and_is_not_forwarded() {
    let auth = format!("Bearer {ALICE_KEY}");
    let (host, factory) =
        setup(&config(), &chat_headers(&[("authorization", &auth), ("x-tollgate-team", "spoofed"), ("x-ai-model", "llama-70b")]), BODY);
    let mut filter = factory.new_filter();
    assert_eq!(send(&host, &mut filter), Flow::Pause);
    assert_eq!(host.request_header("x-tollgate-team").as_deref(), Some("search"));
    assert_eq!(host.request_header("authorization"), None);
    assert_eq!(host.state().properties.get(&vec![TEAM_PROPERTY.to_string()]).cloned(), Some(b"search".to_vec()));
    let (_, request) = last_request(&host);
    assert_eq!(entries(&request.descriptors[0]), pairs(&[("user_id", "alice")]));
    let key_budget: Vec<_> = request.descriptors.iter().filter(|d| d.entries[0].value == "key-usd").collect();
    assert_eq!(entries(key_budget[0])[1], ("key".to_string(), "alice-1".to_string()));
}

// ---- descriptors and request limits -----------------------------------------------

#[test]
fn descriptors_follow_the_configuration_and_skip_missing_values() {
    let (host, factory) =
        setup(&config(), &chat_headers(&[("x-user-id", "bob"), ("x-ai-tier", "quality"), ("x-ai-model", "llama-70b")]), BODY);
    let mut filter = factory.new_filter();
    assert_eq!(send(&host, &mut filter), Flow::Pause, "held until the service answers");
    let (_, request) = last_request(&host);
    assert_eq!(request.domain, "ai-gateway");
    assert_eq!(host.state().grpc_calls[0].timeout, Duration::from_millis(50));
    let all: Vec<_> = request.descriptors.iter().map(entries).collect();
    assert_eq!(all[0], pairs(&[("user_id", "bob")]));
    assert_eq!(all[1], pairs(&[("user_id", "bob"), ("model_tier", "quality")]));
    // The request limits carry no hits of their own (the request's 1 applies).
    assert_eq!(request.descriptors[0].hits_addend, None);
    assert_eq!(request.hits_addend, 1);
    // user-tokens: released (read) then reserved (charged); no key, no gpt-4 cap.
    assert_eq!(all[2], pairs(&[("budget", "user-tokens"), ("user", "bob"), ("ledger", "released")]));
    assert_eq!(all[3], pairs(&[("budget", "user-tokens"), ("user", "bob"), ("ledger", "reserved")]));
    assert_eq!(all.len(), 4);
    assert_eq!(request.descriptors[2].hits_addend, Some(0));
    // max_tokens plus, without the meter, a quarter of the body's bytes.
    assert_eq!(request.descriptors[3].hits_addend, Some(100 + (BODY.len() as u64).div_ceil(4)));
    assert_eq!(request.descriptors[3].limit.unwrap().unit, Unit::Day as i32);

    // Without a user, neither user descriptor nor user budget.
    let (host, factory) = setup(&config(), &chat_headers(&[("x-ai-model", "llama-70b")]), BODY);
    let mut filter = factory.new_filter();
    assert_eq!(send(&host, &mut filter), Flow::Continue, "nothing to check");
    assert!(host.state().grpc_calls.is_empty());
}

#[test]
fn headers_wait_for_the_body_only_when_a_request_limit_applies() {
    let (host, factory) = setup(&config(), &chat_headers(&[("x-user-id", "bob")]), BODY);
    assert_eq!(factory.new_filter().on_request_headers(&host, false), Flow::Pause);
    // Budgets alone (no user: the model cap and no key): the headers go on,
    // the body waits for the answer.
    let (host, factory) = setup(&config(), &chat_headers(&[("x-ai-model", "gpt-4-turbo")]), BODY);
    let mut filter = factory.new_filter();
    assert_eq!(filter.on_request_headers(&host, false), Flow::Continue);
    assert_eq!(filter.on_request_body(&host, 10, false), Flow::Pause, "buffered");
    assert_eq!(filter.on_request_body(&host, BODY.len(), true), Flow::Pause, "asking");
    assert_eq!(host.state().grpc_calls.len(), 1);
}

#[test]
fn requests_without_a_body_are_checked_at_once() {
    let (host, factory) = setup(&config(), &[(":path", "/v1/models"), ("x-user-id", "bob")], "");
    let mut filter = factory.new_filter();
    assert_eq!(filter.on_request_headers(&host, true), Flow::Pause);
    let (_, request) = last_request(&host);
    assert_eq!(request.descriptors.len(), 1, "one request limit, no budget for a non-token API");
}

#[test]
fn the_101st_request_is_refused_with_openai_headers() {
    let mut rls = FakeRls::seed();
    for n in 1..=101 {
        let (host, factory) = setup(&config(), &[(":path", "/v1/models"), ("x-user-id", "carol")], "");
        let mut filter = factory.new_filter();
        assert_eq!(filter.on_request_headers(&host, true), Flow::Pause);
        rls.serve(&host, &mut filter);
        if n <= 100 {
            assert_eq!(host.state().requests_resumed, 1, "request {n}");
            assert!(host.state().local_reply.is_none());
            host.set_response(&[(":status", "200")], b"{}");
            filter.on_response_headers(&host, false);
            assert_eq!(host.response_header("x-ratelimit-limit-requests").as_deref(), Some("100"));
            assert_eq!(host.response_header("x-ratelimit-remaining-requests"), Some((100 - n).to_string()));
            assert_eq!(host.response_header("x-ratelimit-reset-requests").as_deref(), Some("30m0s"));
            assert_eq!(stat(&host, Stat::Allowed), 1);
        } else {
            assert_eq!(host.state().requests_resumed, 0);
            let reply = host.state().local_reply.clone().expect("429");
            assert_eq!(reply.status, 429);
            let find = |name: &str| reply.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            assert_eq!(find("retry-after").as_deref(), Some("1800"));
            assert_eq!(find("x-ratelimit-limit-requests").as_deref(), Some("100"));
            assert_eq!(find("x-ratelimit-remaining-requests").as_deref(), Some("0"));
            assert_eq!(find("content-type").as_deref(), Some("application/json"));
            let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(body["error"]["type"], "requests");
            assert_eq!(body["error"]["code"], "rate_limit_exceeded");
            assert!(body["error"]["message"].as_str().unwrap().contains("100 requests per hour"));
            assert_eq!(stat(&host, Stat::OverLimit), 1);
            assert!(host.state().grpc_calls.len() == 1, "nothing reserved, nothing to release");
        }
    }
}

#[test]
fn the_quality_tier_has_its_own_limit() {
    let mut rls = FakeRls::seed();
    let mut refused = 0;
    for _ in 0..25 {
        let (host, factory) = setup(&config(), &[(":path", "/v1/models"), ("x-user-id", "dan"), ("x-model-tier", "quality")], "");
        let mut filter = factory.new_filter();
        filter.on_request_headers(&host, true);
        rls.serve(&host, &mut filter);
        refused += usize::from(host.state().local_reply.is_some());
    }
    assert_eq!(refused, 5);
}

// ---- failures --------------------------------------------------------------------

#[test]
fn service_failures_follow_the_failure_mode() {
    // (mode, gRPC status, time taken, counted as a timeout)
    for (mode, status, waited, timeout) in
        [("allow", 14, 50, true), ("deny", 14, 50, true), ("allow", 14, 1, false), ("allow", 4, 0, true), ("deny", 4, 0, true)]
    {
        let json = config().replacen('{', &format!(r#"{{"failure_mode": "{mode}", "#), 1);
        let (host, factory) = setup(&json, &[(":path", "/v1/models"), ("x-user-id", "erin")], "");
        let mut filter = factory.new_filter();
        assert_eq!(filter.on_request_headers(&host, true), Flow::Pause);
        let (token, _) = last_request(&host);
        // Envoy reports a timeout (50 ms here) as UNAVAILABLE: the time tells.
        let now = host.now();
        host.state().now = Some(now + Duration::from_millis(waited));
        host.reply_to_grpc_call(&mut filter, token, status, b"");
        assert_eq!(stat(&host, Stat::RlsErrors), 1);
        assert_eq!(stat(&host, Stat::RlsTimeouts), i64::from(timeout), "{mode} {status} {waited}");
        if mode == "allow" {
            assert_eq!(host.state().requests_resumed, 1);
            assert!(host.state().local_reply.is_none());
            assert_eq!(stat(&host, Stat::FailedOpen), 1);
        } else {
            assert_eq!(host.state().requests_resumed, 0);
            let reply = host.state().local_reply.clone().unwrap();
            assert_eq!(reply.status, 503);
            assert!(String::from_utf8_lossy(&reply.body).contains("rate_limit_service_unavailable"));
            assert_eq!(stat(&host, Stat::FailedClosed), 1);
        }
    }
}

#[test]
fn dispatch_failures_and_bad_answers_are_failures_too() {
    let (host, factory) = setup(&config(), &[(":path", "/v1/models"), ("x-user-id", "erin")], "");
    host.state().dispatch_fails = true;
    let mut filter = factory.new_filter();
    assert_eq!(filter.on_request_headers(&host, true), Flow::Continue, "fail open, synchronously");
    assert_eq!(host.state().requests_resumed, 0, "nothing to resume");
    assert_eq!(stat(&host, Stat::FailedOpen), 1);

    let (host, factory) = setup(&config(), &[(":path", "/v1/models"), ("x-user-id", "erin")], "");
    let mut filter = factory.new_filter();
    filter.on_request_headers(&host, true);
    let (token, _) = last_request(&host);
    host.reply_to_grpc_call(&mut filter, token, 0, b"\xff\xff\xff");
    assert_eq!(stat(&host, Stat::RlsErrors), 1);
    assert_eq!(host.state().requests_resumed, 1);

    // A service that does not know the domain applies no limit to a ledger.
    let (host, factory) = setup(&config(), &chat_headers(&[("x-user-id", "erin")]), BODY);
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    let mut rls = FakeRls::default();
    let (token, request) = last_request(&host);
    let mut response = rls.answer(&request);
    for status in &mut response.statuses {
        status.current_limit = None;
    }
    host.reply_to_grpc_call(&mut filter, token, 0, &response.encode_to_vec());
    assert_eq!(stat(&host, Stat::RlsErrors), 1);
    assert_eq!(stat(&host, Stat::FailedOpen), 1);
}

// ---- budgets ------------------------------------------------------------------------

fn token_budget_config(limit: u64) -> String {
    format!(r#"{{"budgets": [{{"name": "t", "per": ["user"], "tokens": {limit}, "window": "hour"}}]}}"#)
}

#[test]
fn the_reservation_is_the_meters_prompt_estimate_plus_max_tokens() {
    let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "fay")]), BODY);
    host.state().properties.insert(vec![PROMPT_TOKENS_PROPERTY.to_string()], b"12".to_vec());
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    let (_, request) = last_request(&host);
    assert_eq!(request.descriptors[1].hits_addend, Some(112));

    // No max_tokens: the configured default completion.
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "fay")]), body);
    host.state().properties.insert(vec![PROMPT_TOKENS_PROPERTY.to_string()], b"12".to_vec());
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    assert_eq!(last_request(&host).1.descriptors[1].hits_addend, Some(12 + 256));
}

#[test]
fn a_budget_refuses_what_does_not_fit_and_releases_the_reservation() {
    let mut rls = FakeRls::default();
    let run = |rls: &mut FakeRls, max_tokens: u64| -> (FakeHost, GuardFilter) {
        let body = format!(r#"{{"model":"m","max_tokens":{max_tokens},"messages":[]}}"#);
        let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "gus")]), &body);
        host.state().properties.insert(vec![PROMPT_TOKENS_PROPERTY.to_string()], b"10".to_vec());
        let mut filter = factory.new_filter();
        send(&host, &mut filter);
        rls.serve(&host, &mut filter);
        (host, filter)
    };
    let user = [("budget", "t"), ("user", "gus")];
    // 610 reserved: fits (1000).
    let (host, mut filter) = run(&mut rls, 600);
    assert_eq!(host.state().requests_resumed, 1);
    host.set_response(&[(":status", "200")], b"");
    filter.on_response_headers(&host, false);
    assert_eq!(host.response_header("x-ratelimit-limit-tokens").as_deref(), Some("1000"));
    assert_eq!(host.response_header("x-ratelimit-remaining-tokens").as_deref(), Some("390"));
    // While it is in flight, another 410 does not fit.
    let (other, mut other_filter) = run(&mut rls, 400);
    assert!(other.state().local_reply.is_none(), "the reply waits for the release");
    let release = rls.serve(&other, &mut other_filter);
    assert_eq!(entries(&release.descriptors[0]), pairs(&[("budget", "t"), ("user", "gus"), ("ledger", "released")]));
    assert_eq!(release.descriptors[0].hits_addend, Some(410));
    assert_eq!(other.state().local_reply.clone().unwrap().status, 429);
    assert_eq!(rls.ledger(&user, "reserved") - rls.ledger(&user, "released"), 610, "the refusal left no trace");
}

#[test]
fn refused_requests_reply_only_after_the_release() {
    let mut rls = FakeRls::default();
    let body = r#"{"model":"m","max_tokens":2000,"messages":[]}"#;
    let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "hal")]), body);
    host.state().properties.insert(vec![PROMPT_TOKENS_PROPERTY.to_string()], b"5".to_vec());
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    rls.serve(&host, &mut filter);
    assert!(host.state().local_reply.is_none(), "releasing first");
    assert_eq!(stat(&host, Stat::OverBudget), 1);
    assert_eq!(stat(&host, Stat::Refunds), 1);
    assert_eq!(filter.on_request_body(&host, 1, true), Flow::Pause, "the body stays held");
    rls.serve(&host, &mut filter);
    let reply = host.state().local_reply.clone().unwrap();
    assert_eq!(reply.status, 429);
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"]["type"], "tokens");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("1000 tokens per hour") && message.contains("needs up to 2005"), "{message}");
    let find = |name: &str| reply.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(find("x-ratelimit-remaining-tokens").as_deref(), Some("1000"));
    assert!(find("retry-after").unwrap().parse::<u64>().unwrap() > 0);
    let user = [("budget", "t"), ("user", "hal")];
    assert_eq!(rls.ledger(&user, "reserved"), 2005);
    assert_eq!(rls.ledger(&user, "released"), 2005);
}

#[test]
fn settlement_charges_the_excess_or_releases_the_rest() {
    for (prompt, completion, expected) in [(10, 50, Some(("released", 50))), (12, 130, Some(("reserved", 32))), (10, 100, None)] {
        let mut rls = FakeRls::default();
        let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "ivy")]), BODY);
        host.state().properties.insert(vec![PROMPT_TOKENS_PROPERTY.to_string()], b"10".to_vec());
        let mut filter = factory.new_filter();
        send(&host, &mut filter);
        rls.serve(&host, &mut filter);
        let calls = host.state().grpc_calls.len();
        let flow = respond(&host, &mut filter, "200", &usage_body(prompt, completion));
        let user = [("budget", "t"), ("user", "ivy")];
        match expected {
            Some((ledger, amount)) => {
                assert_eq!(flow, Flow::Pause, "the last chunk waits for the settlement");
                let request = rls.serve(&host, &mut filter);
                assert_eq!(request.descriptors.len(), 1);
                assert_eq!(entries(&request.descriptors[0]).last().unwrap().1, ledger);
                assert_eq!(request.descriptors[0].hits_addend, Some(amount));
                assert_eq!(host.state().responses_resumed, 1);
                assert_eq!(stat(&host, Stat::Settlements), 1);
            }
            None => {
                assert_eq!(flow, Flow::Continue);
                assert_eq!(host.state().grpc_calls.len(), calls, "nothing to settle");
            }
        }
        assert_eq!(rls.ledger(&user, "reserved") - rls.ledger(&user, "released"), prompt + completion);
    }
}

#[test]
fn failed_responses_release_everything_and_unreadable_ones_keep_the_reservation() {
    let mut rls = FakeRls::default();
    let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "jo")]), BODY);
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    rls.serve(&host, &mut filter);
    assert_eq!(respond(&host, &mut filter, "503", r#"{"error":{}}"#), Flow::Pause);
    rls.serve(&host, &mut filter);
    let user = [("budget", "t"), ("user", "jo")];
    assert_eq!(rls.ledger(&user, "reserved"), rls.ledger(&user, "released"));

    let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "jo")]), BODY);
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    rls.serve(&host, &mut filter);
    let calls = host.state().grpc_calls.len();
    host.set_response(&[(":status", "200"), ("content-encoding", "gzip")], b"\x1f\x8b");
    filter.on_response_headers(&host, false);
    assert_eq!(filter.on_response_body(&host, 2, true), Flow::Continue);
    assert_eq!(host.state().grpc_calls.len(), calls);
}

#[test]
fn streams_are_settled_from_their_usage_chunk() {
    let mut rls = FakeRls::default();
    let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "kim")]), BODY);
    host.state().properties.insert(vec![PROMPT_TOKENS_PROPERTY.to_string()], b"10".to_vec());
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    rls.serve(&host, &mut filter);
    host.set_response(&[(":status", "200"), ("content-type", "text/event-stream")], b"");
    filter.on_response_headers(&host, false);
    for chunk in [
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n",
    ] {
        host.state().response_body = chunk.as_bytes().to_vec();
        let last = chunk.contains("[DONE]");
        let flow = filter.on_response_body(&host, chunk.len(), last);
        assert_eq!(flow, if last { Flow::Pause } else { Flow::Continue });
    }
    let request = rls.serve(&host, &mut filter);
    assert_eq!(request.descriptors[0].hits_addend, Some(110 - 13));
}

#[test]
fn a_response_that_never_ends_is_charged_only_its_excess_at_log() {
    let mut rls = FakeRls::default();
    let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "lee")]), BODY);
    host.state().properties.insert(vec![PROMPT_TOKENS_PROPERTY.to_string()], b"10".to_vec());
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    rls.serve(&host, &mut filter);
    host.set_response(&[(":status", "200"), ("content-type", "text/event-stream")], b"");
    filter.on_response_headers(&host, false);
    let long = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n", "x".repeat(800));
    host.state().response_body = long.as_bytes().to_vec();
    filter.on_response_body(&host, long.len(), false);
    let calls = host.state().grpc_calls.len();
    filter.on_log(&host);
    assert_eq!(host.state().grpc_calls.len(), calls + 1);
    let (_, request) = last_request(&host);
    assert_eq!(entries(&request.descriptors[0]).last().unwrap().1, "reserved");
    assert_eq!(request.descriptors[0].hits_addend, Some(10 + 200 - 110));
}

#[test]
fn dollar_budgets_reserve_micro_dollars_per_calendar_month() {
    let auth = format!("Bearer {ALICE_KEY}");
    let body = r#"{"model":"gpt-4-turbo","max_tokens":500,"messages":[]}"#;
    let (host, factory) = setup(&config(), &chat_headers(&[("authorization", &auth), ("x-ai-model", "gpt-4-turbo")]), body);
    host.state().properties.insert(vec![PROMPT_TOKENS_PROPERTY.to_string()], b"100".to_vec());
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    let (_, request) = last_request(&host);
    let ledgers: Vec<_> = request.descriptors.iter().filter(|d| d.limit.is_some()).collect();
    let names: Vec<_> = ledgers.iter().map(|d| entries(d)).collect();
    assert!(names.contains(&pairs(&[("budget", "key-usd"), ("key", "alice-1"), ("month", "2026-11"), ("ledger", "reserved")])));
    assert!(names.contains(&pairs(&[("budget", "gpt4-cap"), ("model", "gpt-4-turbo"), ("month", "2026-11"), ("ledger", "reserved")])));
    // 100 × $10/M + 500 × $30/M = $0.016 = 16,000 µ$
    let reserved = ledgers.iter().find(|d| entries(d)[0].1 == "gpt4-cap" && entries(d)[3].1 == "reserved").unwrap();
    assert_eq!(reserved.hits_addend, Some(16_000));
    assert_eq!(reserved.limit.unwrap().unit, Unit::Year as i32, "the month is in the descriptor");

    let mut rls = FakeRls::seed();
    rls.serve(&host, &mut filter);
    host.set_response(&[(":status", "200")], b"");
    filter.on_response_headers(&host, false);
    // The tighter of $100 − 0.016 and $50 − 0.016.
    assert_eq!(host.response_header("x-ratelimit-limit-usd").as_deref(), Some("50"));
    assert_eq!(host.response_header("x-ratelimit-remaining-usd").as_deref(), Some("49.984"));
    assert_eq!(host.response_header("x-ratelimit-remaining-tokens").as_deref(), Some("400"));
    // Until 2026-12-01T00:00:00Z.
    assert_eq!(host.response_header("x-ratelimit-reset-usd").as_deref(), Some("154h0m0s"));
}

#[test]
fn a_dollar_budget_refuses_with_insufficient_quota() {
    let json = r#"{"budgets": [{"name": "cap", "per": ["model"], "usd": 0.05, "window": "calendar_month"}],
                   "prices": {"gpt-4-turbo": {"input": 10, "output": 30}}}"#;
    let mut rls = FakeRls::default();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let body = r#"{"model":"gpt-4-turbo","max_tokens":1000,"messages":[]}"#;
        let (host, factory) = setup(json, &chat_headers(&[]), body);
        host.state().properties.insert(vec![PROMPT_TOKENS_PROPERTY.to_string()], b"100".to_vec());
        let mut filter = factory.new_filter();
        send(&host, &mut filter);
        rls.serve(&host, &mut filter);
        if host.state().local_reply.is_none() && host.state().requests_resumed == 0 {
            rls.serve(&host, &mut filter); // the release
        }
        let reply = host.state().local_reply.clone();
        statuses.push(reply.as_ref().map_or(200, |r| r.status));
        if let Some(reply) = reply {
            let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(body["error"]["type"], "insufficient_quota");
            assert!(body["error"]["message"].as_str().unwrap().contains("$0.05 per calendar month"), "{body}");
        }
    }
    // $0.031 reserved each: the first fits in $0.05, the second does not.
    assert_eq!(statuses, [200, 429, 429]);
}

#[test]
fn settlements_near_the_window_end_are_dropped() {
    let mut rls = FakeRls::default();
    let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "max")]), BODY);
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    rls.serve(&host, &mut filter);
    // 14:59:59, one second before the hour's window ends (margin 2 s).
    host.state().now = Some(UNIX_EPOCH + Duration::from_secs(1_795_528_800 + 3_599));
    assert_eq!(respond(&host, &mut filter, "200", &usage_body(1, 1)), Flow::Continue);
    assert_eq!(stat(&host, Stat::SettlementsDropped), 1);
}

#[test]
fn fail_open_admissions_are_charged_their_use_at_settlement() {
    let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "ned")]), BODY);
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    let (token, _) = last_request(&host);
    host.reply_to_grpc_call(&mut filter, token, 14, b"");
    assert_eq!(host.state().requests_resumed, 1);
    let calls = host.state().grpc_calls.len();
    assert_eq!(respond(&host, &mut filter, "200", &usage_body(20, 30)), Flow::Continue, "not held for a failing service");
    assert_eq!(host.state().grpc_calls.len(), calls + 1);
    let (_, request) = last_request(&host);
    assert_eq!(entries(&request.descriptors[0]).last().unwrap().1, "reserved");
    assert_eq!(request.descriptors[0].hits_addend, Some(50));
}

#[test]
fn overflowed_ledgers_read_as_exhausted() {
    let (host, factory) = setup(&token_budget_config(1000), &chat_headers(&[("x-user-id", "ola")]), BODY);
    let mut filter = factory.new_filter();
    send(&host, &mut filter);
    let (token, request) = last_request(&host);
    let mut response = FakeRls::default().answer(&request);
    response.statuses[1].code = Code::OverLimit as i32;
    response.statuses[1].limit_remaining = 0;
    host.reply_to_grpc_call(&mut filter, token, 0, &response.encode_to_vec());
    assert_eq!(stat(&host, Stat::LedgerOverflows), 1);
    assert_eq!(stat(&host, Stat::OverBudget), 1);
}

// ---- leases ----------------------------------------------------------------------------

fn lease_config(limit: u64, fraction: f64) -> String {
    format!(r#"{{"budgets": [{{"name": "t", "per": ["model"], "tokens": {limit}, "window": "hour", "lease_fraction": {fraction}}}]}}"#)
}

/// A request through a worker (factory) of its own host; returns the host,
/// the filter and the flow of its admission.
fn through(factory: &GuardFactory, max_tokens: u64) -> (FakeHost, GuardFilter, Flow) {
    let body = format!(r#"{{"model":"m","max_tokens":{max_tokens},"messages":[]}}"#);
    let host = FakeHost::with_request(&chat_headers(&[]), body.as_bytes());
    host.state().properties.insert(vec![PROMPT_TOKENS_PROPERTY.to_string()], b"10".to_vec());
    let mut filter = factory.new_filter();
    let flow = send(&host, &mut filter);
    (host, filter, flow)
}

#[test]
fn a_lease_admits_later_requests_without_a_call_and_absorbs_their_settlements() {
    let factory = GuardFactory::configure(&FakeHost::new(), "g", lease_config(10_000, 0.01).as_bytes()).unwrap();
    let mut rls = FakeRls::default();
    let model = [("budget", "t"), ("model", "m")];
    // The first reserves its 60 and a lease of 100.
    let (host, mut filter, flow) = through(&factory, 50);
    assert_eq!(flow, Flow::Pause);
    let request = rls.serve(&host, &mut filter);
    assert_eq!(request.descriptors[1].hits_addend, Some(60 + 100));
    assert_eq!(host.state().requests_resumed, 1);
    // The next two come out of the lease: no call.
    for remaining in ["9880", "9865"] {
        let (host, mut filter, flow) = through(&factory, 50);
        assert_eq!(flow, Flow::Continue, "admitted from the lease");
        assert!(host.state().grpc_calls.is_empty());
        // Their settlement goes back to the lease: no call either.
        host.set_response(&[(":status", "200")], b"");
        filter.on_response_headers(&host, false);
        assert_eq!(host.response_header("x-ratelimit-remaining-tokens").as_deref(), Some(remaining));
        let body = usage_body(10, 5);
        host.state().response_body = body.clone().into_bytes();
        assert_eq!(filter.on_response_body(&host, body.len(), true), Flow::Continue);
        assert!(host.state().grpc_calls.is_empty());
    }
    let lease = factory.shared.leases.borrow().values().next().cloned().unwrap();
    assert_eq!(lease.available, 100 - 60 + 45 - 60 + 45);
    // The ledger holds the first's reservation and the lease, nothing more.
    assert_eq!(rls.ledger(&model, "reserved") - rls.ledger(&model, "released"), 160);

    // One that does not fit the lease returns what is left of it and takes a new one.
    let (host, mut filter, flow) = through(&factory, 200);
    assert_eq!(flow, Flow::Pause);
    let request = rls.serve(&host, &mut filter);
    assert_eq!(entries(&request.descriptors[0]).last().unwrap().1, "released");
    assert_eq!(request.descriptors[0].hits_addend, Some(70), "the old lease's rest");
    assert_eq!(request.descriptors[1].hits_addend, Some(210 + 100));
    assert_eq!(factory.shared.leases.borrow().values().next().unwrap().available, 100);
}

#[test]
fn near_the_budget_a_lease_is_cut_to_what_fits() {
    let factory = GuardFactory::configure(&FakeHost::new(), "g", lease_config(200, 0.5).as_bytes()).unwrap();
    let mut rls = FakeRls::default();
    let (host, mut filter, _) = through(&factory, 140);
    rls.serve(&host, &mut filter);
    // 150 + 100 reserved, 50 of the lease fit: the other 50 go back before
    // the request goes on.
    assert_eq!(host.state().requests_resumed, 0);
    let release = rls.serve(&host, &mut filter);
    assert_eq!(release.descriptors[0].hits_addend, Some(50));
    assert_eq!(host.state().requests_resumed, 1);
    assert_eq!(factory.shared.leases.borrow().values().next().unwrap().available, 50);
    let model = [("budget", "t"), ("model", "m")];
    assert_eq!(rls.ledger(&model, "reserved") - rls.ledger(&model, "released"), 200);
    // What the lease cannot hold is refused by the budget, and the lease stays.
    let (host, mut filter, _) = through(&factory, 60);
    rls.serve(&host, &mut filter);
    assert_eq!(host.state().local_reply.as_ref().map(|r| r.status), None, "releasing first");
    rls.serve(&host, &mut filter);
    assert_eq!(host.state().local_reply.as_ref().map(|r| r.status), Some(429));
}

// ---- many concurrent clients against one tight budget ----------------------------------

/// A tiny deterministic generator for interleavings.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Client {
    host: FakeHost,
    filter: GuardFilter,
    /// Tokens this request will use when answered.
    prompt: u64,
    completion: u64,
    reserved: u64,
    stage: Stage,
    /// Step at which it was admitted after a call (a check of the ledger).
    checked_at: Option<usize>,
    /// Step at which its use reached the ledger (or its worker's lease).
    settled_at: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// A call (admission, release of a lease's excess, or refund) is in flight.
    Calling,
    Upstream,
    Settling,
    Finished { admitted: bool },
}

struct Outcome {
    spend: u64,
    /// The documented bound's excess term: Σ max(use − reservation, 0) over
    /// the requests settled after the last admission checked against the
    /// ledger (without leases: those in flight at the last admission).
    excess: u64,
    max_in_flight: usize,
    refused: u64,
    /// What the workers' leases still hold.
    leased: u64,
}

/// Clients run concurrently against one budget through `workers` VMs: every
/// step picks a random client and advances it by one event (an answer of the
/// service, the upstream's response, or a settlement's answer), so
/// admissions, settlements and releases interleave arbitrarily.
fn simulate(seed: u64, clients: usize, budget: u64, max_tokens: u64, excess: u64, workers: usize, lease: Option<f64>) -> Outcome {
    let json = match lease {
        None => token_budget_config(budget),
        Some(f) => format!(r#"{{"budgets": [{{"name": "t", "per": ["user"], "tokens": {budget}, "window": "hour", "lease_fraction": {f}}}]}}"#),
    };
    let factories: Vec<GuardFactory> =
        (0..workers).map(|_| GuardFactory::configure(&FakeHost::new(), "g", json.as_bytes()).unwrap()).collect();
    let mut rng = Rng(seed);
    let mut rls = FakeRls::default();
    let mut spend = 0;
    let mut max_in_flight = 0;
    let mut in_flight = 0;
    let mut active: Vec<Client> = Vec::new();
    let mut started = 0;
    let total = clients * 8;
    let mut step = 0;
    loop {
        step += 1;
        // Keep `clients` requests going until `total` were sent.
        while active.iter().filter(|c| !matches!(c.stage, Stage::Finished { .. })).count() < clients && started < total {
            started += 1;
            let prompt = 5 + rng.below(20);
            let body = format!(r#"{{"model":"m","max_tokens":{max_tokens},"messages":[]}}"#);
            let host = FakeHost::with_request(&chat_headers(&[("x-user-id", "shared")]), body.as_bytes());
            host.state().properties.insert(vec![PROMPT_TOKENS_PROPERTY.to_string()], prompt.to_string().into_bytes());
            let mut filter = factories[rng.below(workers as u64) as usize].new_filter();
            let flow = send(&host, &mut filter);
            // Used: the prompt as estimated, a completion up to max_tokens,
            // and for some requests `excess` more than reserved.
            let completion = if rng.below(3) == 0 { max_tokens + excess } else { rng.below(max_tokens + 1) };
            let stage = if flow == Flow::Continue {
                // Admitted from the worker's lease, without a call.
                in_flight += 1;
                max_in_flight = max_in_flight.max(in_flight);
                Stage::Upstream
            } else {
                Stage::Calling
            };
            let reserved = prompt + max_tokens;
            active.push(Client { host, filter, prompt, completion, reserved, stage, checked_at: None, settled_at: None });
        }
        let waiting: Vec<usize> =
            active.iter().enumerate().filter(|(_, c)| !matches!(c.stage, Stage::Finished { .. })).map(|(i, _)| i).collect();
        if waiting.is_empty() {
            break;
        }
        let i = waiting[rng.below(waiting.len() as u64) as usize];
        let client = &mut active[i];
        match client.stage {
            Stage::Calling => {
                let request = rls.serve(&client.host, &mut client.filter);
                let admission = request.descriptors.iter().any(|d| d.hits_addend.is_some_and(|h| h > 0) && entries(d).last().unwrap().1 == "reserved");
                let state = client.host.state();
                if state.requests_resumed == 1 {
                    in_flight += 1;
                    max_in_flight = max_in_flight.max(in_flight);
                    // (After a release of a lease's excess, the check was the call before.)
                    client.checked_at.get_or_insert(step);
                    client.stage = Stage::Upstream;
                } else if let Some(reply) = &state.local_reply {
                    assert_eq!(reply.status, 429);
                    client.stage = Stage::Finished { admitted: false };
                } else if admission {
                    // Admitted and releasing a lease's excess, or refused and
                    // releasing its reservation: one more call.
                    client.checked_at.get_or_insert(step);
                }
            }
            Stage::Upstream => {
                spend += client.prompt + client.completion;
                let body = usage_body(client.prompt, client.completion);
                let flow = respond(&client.host, &mut client.filter, "200", &body);
                if flow == Flow::Pause {
                    client.stage = Stage::Settling;
                } else {
                    in_flight -= 1;
                    client.settled_at = Some(step);
                    client.stage = Stage::Finished { admitted: true };
                }
            }
            Stage::Settling => {
                rls.serve(&client.host, &mut client.filter);
                assert_eq!(client.host.state().responses_resumed, 1);
                in_flight -= 1;
                client.settled_at = Some(step);
                client.stage = Stage::Finished { admitted: true };
            }
            Stage::Finished { .. } => {}
        }
    }
    let last_check = active
        .iter()
        .filter(|c| c.stage == Stage::Finished { admitted: true })
        .filter_map(|c| c.checked_at)
        .max()
        .unwrap_or(0);
    let excess = active
        .iter()
        .filter(|c| c.settled_at.is_some_and(|at| at > last_check))
        .map(|c| (c.prompt + c.completion).saturating_sub(c.reserved))
        .sum();
    let leased: u64 = factories.iter().flat_map(|f| f.shared.leases.borrow().values().map(|l| l.available).collect::<Vec<_>>()).sum();
    let user = [("budget", "t"), ("user", "shared")];
    let ledger = rls.ledger(&user, "reserved") - rls.ledger(&user, "released");
    assert_eq!(ledger, spend + leased, "the ledger is exactly the spend (and the leases) once everything settled");
    let refused = active.iter().filter(|c| c.stage == Stage::Finished { admitted: false }).count() as u64;
    Outcome { spend, excess, max_in_flight, refused, leased }
}

#[test]
fn concurrent_clients_never_overspend_when_the_reservation_is_an_upper_bound() {
    for seed in 0..100 {
        let o = simulate(seed, 16, 2_000, 100, 0, 1, None);
        assert_eq!(o.excess, 0);
        assert!(o.spend <= 2_000, "seed {seed}: spent {} of 2000 ({} in flight)", o.spend, o.max_in_flight);
        assert!(o.refused > 0, "seed {seed}: the budget was reached");
        // Unused reservations came back: most of the budget was spent.
        assert!(o.spend > 2_000 - 16 * 125, "seed {seed}: only {} spent", o.spend);
    }
}

#[test]
fn concurrent_clients_overspend_by_at_most_the_excess_of_those_in_flight() {
    let mut overshoots = 0;
    for seed in 0..100 {
        let excess_per_request = 300;
        let o = simulate(seed, 16, 2_000, 100, excess_per_request, 1, None);
        // Σ over the unsettled at the last admission of max(use − reservation, 0) …
        assert!(o.spend <= 2_000 + o.excess, "seed {seed}: spent {}, bound {}", o.spend, 2_000 + o.excess);
        // … which is at most (requests in flight) × (largest excess).
        assert!(o.excess <= o.max_in_flight as u64 * excess_per_request);
        overshoots += usize::from(o.spend > 2_000);
    }
    assert!(overshoots > 0, "the excess does overshoot the budget (within the bound)");
}

#[test]
fn leases_across_workers_keep_the_budget() {
    let mut calls_saved = false;
    for seed in 0..100 {
        // Three workers, leases of 5% (100 tokens) of a 2,000-token budget.
        let o = simulate(seed, 16, 2_000, 100, 0, 3, Some(0.05));
        assert!(o.spend <= 2_000, "seed {seed}: spent {}", o.spend);
        assert!(o.refused > 0);
        assert!(o.spend > 1_000, "seed {seed}: only {} spent", o.spend);
        let o = simulate(seed, 16, 2_000, 100, 300, 3, Some(0.05));
        assert!(o.spend <= 2_000 + o.excess, "seed {seed}: spent {}, bound {}", o.spend, 2_000 + o.excess);
        calls_saved |= o.leased > 0;
    }
    assert!(calls_saved);
}

#[test]
fn unix_now_reads_the_host_clock() {
    let host = FakeHost::new();
    host.state().now = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(42));
    assert_eq!(unix_now(&host), 42);
}
