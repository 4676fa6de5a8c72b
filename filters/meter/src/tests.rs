//! The meter against the recording fake host: one request at a time, with
//! Envoy's body delivery simulated (a paused body callback gets the whole
//! buffer next time; a continued one passes its chunk on as the filter left it).

use super::*;
use std::cell::Cell;
use std::ops::Deref;
use tollgate_host::fake::FakeHost;
use tollgate_host::{GrpcCall, HostResult, HttpCall, MetricKind};

/// The fake host with Envoy's header-map lifetimes: once a filter passes a
/// header map on (returns Continue from its headers callback), Envoy refuses
/// reads of it until the log phase, and the SDK panics on that refusal; so
/// does this host.
#[derive(Default)]
struct Strict {
    fake: FakeHost,
    request_gone: Cell<bool>,
    response_gone: Cell<bool>,
}

impl Deref for Strict {
    type Target = FakeHost;
    fn deref(&self) -> &FakeHost {
        &self.fake
    }
}

impl Strict {
    fn check(&self, map: HeaderMap) {
        match map {
            HeaderMap::Request if self.request_gone.get() => panic!("request headers read after they were passed on"),
            HeaderMap::Response if self.response_gone.get() => panic!("response headers read after they were passed on"),
            _ => {}
        }
    }
    /// The log phase: Envoy hands the final maps to the logger.
    fn log_phase(&self) {
        self.request_gone.set(false);
        self.response_gone.set(false);
    }
}

impl Host for Strict {
    fn header(&self, map: HeaderMap, name: &str) -> HostResult<Option<String>> {
        self.check(map);
        self.fake.header(map, name)
    }
    fn headers(&self, map: HeaderMap) -> HostResult<Vec<(String, String)>> {
        self.check(map);
        self.fake.headers(map)
    }
    fn set_header(&self, map: HeaderMap, name: &str, value: Option<&str>) -> HostResult<()> {
        self.check(map);
        self.fake.set_header(map, name, value)
    }
    fn add_header(&self, map: HeaderMap, name: &str, value: &str) -> HostResult<()> {
        self.check(map);
        self.fake.add_header(map, name, value)
    }
    fn body(&self, buffer: BodyBuffer, start: usize, len: usize) -> HostResult<Option<Vec<u8>>> {
        self.fake.body(buffer, start, len)
    }
    fn set_body(&self, buffer: BodyBuffer, start: usize, len: usize, value: &[u8]) -> HostResult<()> {
        self.fake.set_body(buffer, start, len, value)
    }
    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        self.fake.property(path)
    }
    fn set_property(&self, path: &[&str], value: &[u8]) -> HostResult<()> {
        self.fake.set_property(path, value)
    }
    fn dispatch_http_call(&self, call: &HttpCall<'_>) -> HostResult<u32> {
        self.fake.dispatch_http_call(call)
    }
    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> HostResult<u32> {
        self.fake.dispatch_grpc_call(call)
    }
    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> HostResult<()> {
        self.fake.send_local_reply(status, headers, body)
    }
    fn resume_request(&self) -> HostResult<()> {
        self.fake.resume_request()
    }
    fn resume_response(&self) -> HostResult<()> {
        self.fake.resume_response()
    }
    fn clear_route_cache(&self) -> HostResult<()> {
        self.fake.clear_route_cache()
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
        self.fake.define_metric(kind, name)
    }
    fn increment_metric(&self, id: u32, delta: i64) -> HostResult<()> {
        self.fake.increment_metric(id, delta)
    }
    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        self.fake.record_metric(id, value)
    }
    fn shared_data(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        self.fake.shared_data(key)
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        self.fake.set_shared_data(key, value, cas)
    }
    fn now(&self) -> SystemTime {
        self.fake.now()
    }
}

const CONFIG: &str = r#"{
    "models": {
        "llama-70b": {"input": 0.5, "output": 1.5, "cached_input": 0.25},
        "gpt-4.1": {"input": 2, "output": 8},
        "claude-sonnet-4": {"input": 3, "output": 15, "cached_input": 0.3}
    },
    "teams": ["search", "ads"],
    "tiers": ["fast", "quality"]
}"#;

const CHAT: &[u8] = br#"{"model":"llama-70b","messages":[{"role":"user","content":"Say hello to the gateway"}]}"#;
const STREAM_CHAT: &[u8] = br#"{"model":"llama-70b","stream":true,"messages":[{"role":"user","content":"Say hello to the gateway"}]}"#;

fn setup(config: &str) -> (Strict, MeterFactory) {
    let host = Strict::default();
    let factory = MeterFactory::configure(&host, "tollgate.meter", config.as_bytes()).unwrap();
    (host, factory)
}

fn request(host: &Strict, filter: &mut MeterFilter, path: &str, headers: &[(&str, &str)], body: &[u8]) {
    host.log_phase();
    {
        let mut state = host.state();
        state.request_headers = vec![(":path".into(), path.into()), (":method".into(), "POST".into())];
        state.request_headers.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        state.request_headers.push(("content-length".into(), body.len().to_string()));
        state.request_body = body.to_vec();
    }
    let flow = filter.on_request_headers(host, body.is_empty());
    assert_eq!(flow, if body.is_empty() { Flow::Continue } else { Flow::Pause });
    host.request_gone.set(flow == Flow::Continue);
    if !body.is_empty() {
        assert_eq!(filter.on_request_body(host, body.len(), true), Flow::Continue);
    }
}

/// Runs the response through the filter as Envoy would and returns the bytes
/// the client receives.
fn respond(host: &Strict, filter: &mut MeterFilter, headers: &[(&str, &str)], chunks: &[&[u8]]) -> Vec<u8> {
    host.state().response_headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut held = filter.on_response_headers(host, chunks.is_empty()) == Flow::Pause;
    host.response_gone.set(!held);
    let mut client = Vec::new();
    let mut buffered: Vec<u8> = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        buffered.extend_from_slice(chunk);
        host.state().response_body = buffered.clone();
        let flow = filter.on_response_body(host, buffered.len(), last);
        if flow == Flow::Continue {
            held = false;
            host.response_gone.set(true);
            client.extend_from_slice(&host.state().response_body);
            buffered.clear();
        } else {
            assert!(held, "a body pause needs held headers");
        }
    }
    assert!(buffered.is_empty() || !held, "body still held at the end");
    host.log_phase();
    filter.on_log(host);
    client
}

fn counter(host: &FakeHost, name: &str) -> i64 {
    host.metric(name).unwrap_or_else(|| panic!("no metric {name}")).value
}

fn property(host: &FakeHost, name: &str) -> Option<String> {
    host.state().properties.get(&vec![name.to_string()]).map(|v| String::from_utf8(v.clone()).unwrap())
}

fn log_field(host: &FakeHost, field: &str) -> Option<String> {
    property(host, &format!("{LOG_PROPERTY_PREFIX}{field}"))
}

fn count(text: &str) -> u64 {
    Tiktoken(Encoding::O200kBase).count(text)
}

/// OpenAI's recipe for one user message.
fn chat_prompt_tokens(content: &str) -> u64 {
    3 + count("user") + count(content) + 3
}

#[test]
fn configuration_is_validated_and_metrics_predefined() {
    let host = Strict::default();
    let e = MeterFactory::configure(&host, "tollgate.meter", br#"{"models": {"m": {"input": "x", "output": 1}}}"#).err().unwrap();
    assert!(e.field.starts_with("models.m"), "{e}");
    let (host, factory) = setup(CONFIG);
    // 4 models (3 + other) × 3 teams × 5 families + 4 duration histograms
    assert_eq!(factory.metrics_defined(), 4 * 3 * 5 + 4);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.gpt-4_1.team.ads.direction.output"), 0);
    assert_eq!(host.metric("ai_gateway_request_cost_nanodollars.model.other.team.other").unwrap().kind, MetricKind::Histogram);
    assert!(MeterFactory::configure(&host, "tollgate.meter", b"").is_ok());
}

#[test]
fn openai_json_usage_prices_and_headers() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[("x-tollgate-team", "search"), ("x-model-tier", "quality"), ("authorization", "Bearer sk-secret")], CHAT);
    assert_eq!(property(&host, PROMPT_TOKENS_PROPERTY), Some(chat_prompt_tokens("Say hello to the gateway").to_string()));
    assert_eq!(host.request_header("accept-encoding").as_deref(), Some("identity"));
    assert_eq!(host.state().request_body, CHAT, "a non-streamed request is forwarded unchanged");
    host.state().properties.insert(vec!["cluster_name".into()], b"vllm-70b".to_vec());

    let body = br#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello."},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200,"prompt_tokens_details":{"cached_tokens":400}}}"#;
    let length = body.len().to_string();
    let client = respond(&host, &mut filter, &[(":status", "200"), ("content-type", "application/json"), ("content-length", &length)], &[&body[..50], &body[50..]]);
    assert_eq!(client, body, "the body reaches the client unchanged");
    // 600 × 500 + 400 × 250 + 200 × 1500 nano-dollars
    let cost = 300_000 + 100_000 + 300_000;
    assert_eq!(host.response_header(INPUT_TOKENS_HEADER).as_deref(), Some("1000"));
    assert_eq!(host.response_header(OUTPUT_TOKENS_HEADER).as_deref(), Some("200"));
    assert_eq!(host.response_header(COST_HEADER).as_deref(), Some("0.000700000"));
    assert_eq!(host.response_header(USAGE_SOURCE_HEADER).as_deref(), Some("reported"));
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.search.direction.input"), 1000);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.search.direction.output"), 200);
    assert_eq!(counter(&host, "ai_gateway_cached_input_tokens_total.model.llama-70b.team.search"), 400);
    assert_eq!(counter(&host, "ai_gateway_cost_nanodollars_total.model.llama-70b.team.search"), cost);
    assert_eq!(host.metric("ai_gateway_request_cost_nanodollars.model.llama-70b.team.search").unwrap().samples, vec![cost as u64]);
    assert_eq!(counter(&host, "ai_gateway_requests_total.model.llama-70b.team.search.tier.quality.backend.vllm-70b.status.200.cache.none"), 1);
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.reported"), 1);
    assert_eq!(host.metric("ai_gateway_request_duration_milliseconds.model.llama-70b").unwrap().samples.len(), 1);
    assert_eq!(host.metric("ai_gateway_time_to_first_token_milliseconds.model.llama-70b").unwrap().samples.len(), 1);
    assert!(host.metric("ai_gateway_time_per_output_token_microseconds.model.llama-70b").is_none(), "TPOT is for streams");
    for (field, value) in [("model", "llama-70b"), ("team", "search"), ("tier", "quality"), ("backend", "vllm-70b"),
        ("input_tokens", "1000"), ("output_tokens", "200"), ("cached_input_tokens", "400"), ("cost_usd", "0.000700000"),
        ("usage_source", "reported"), ("cache", "none"), ("ttft_ms", "0")] {
        assert_eq!(log_field(&host, field).as_deref(), Some(value), "{field}");
    }
    let id = log_field(&host, "key_id").unwrap();
    assert_eq!(id, key_id("", "sk-secret"));
    assert_eq!(id.len(), 16);
    for (header, value, expected) in [
        ("authorization", "BEARER  sk-secret ", Some(key_id("", "sk-secret"))),
        ("authorization", "Basic c2stc2VjcmV0", None),
        ("x-api-key", " sk-secret", Some(key_id("", "sk-secret"))),
    ] {
        let (host, factory) = setup(CONFIG);
        let mut filter = factory.new_filter();
        request(&host, &mut filter, "/v1/chat/completions", &[(header, value)], CHAT);
        respond(&host, &mut filter, &[(":status", "200"), ("content-type", "application/json")], &[br#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#]);
        assert_eq!(log_field(&host, "key_id"), expected, "{header}: {value}");
    }
    assert!(!host.state().properties.values().any(|v| v.windows(9).any(|w| w == b"sk-secret")), "the key never leaves raw");
}

#[test]
fn missing_usage_is_estimated_with_tiktoken() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[("x-tollgate-team", "ads")], CHAT);
    let text = "Hello there, gateway. Nice to meet you.";
    let body = format!(r#"{{"choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}}}}]}}"#);
    let length = body.len().to_string();
    respond(&host, &mut filter, &[(":status", "200"), ("content-type", "application/json"), ("content-length", &length)], &[body.as_bytes()]);
    let input = chat_prompt_tokens("Say hello to the gateway");
    let output = count(text);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.ads.direction.input"), input as i64);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.ads.direction.output"), output as i64);
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.estimated"), 1);
    assert_eq!(host.response_header(USAGE_SOURCE_HEADER).as_deref(), Some("estimated"));
    assert_eq!(host.response_header(INPUT_TOKENS_HEADER), Some(input.to_string()));
}

const UPSTREAM_STREAM: &[u8] = b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world.\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":15,\"completion_tokens\":3,\"total_tokens\":18}}\n\n\
data: [DONE]\n\n";

/// What the upstream sends without include_usage.
const PLAIN_STREAM: &[u8] = b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world.\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: [DONE]\n\n";

const SSE: &[(&str, &str)] = &[(":status", "200"), ("content-type", "text/event-stream"), ("content-length", "999")];

#[test]
fn usage_is_requested_and_removed_from_the_clients_stream_at_any_split() {
    let mut splits: Vec<Vec<&[u8]>> = (0..=UPSTREAM_STREAM.len()).map(|i| {
        let (a, b) = UPSTREAM_STREAM.split_at(i);
        vec![a, b]
    }).collect();
    splits.push(UPSTREAM_STREAM.chunks(1).collect());
    splits.push(UPSTREAM_STREAM.chunks(7).collect());
    for chunks in splits {
        let (host, factory) = setup(CONFIG);
        let mut filter = factory.new_filter();
        request(&host, &mut filter, "/v1/chat/completions", &[], STREAM_CHAT);
        let sent = host.state().request_body.clone();
        let sent_json: serde_json::Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(sent_json["stream_options"]["include_usage"], true);
        assert!(sent.starts_with(&STREAM_CHAT[..STREAM_CHAT.len() - 1]), "only the option is appended");
        assert_eq!(host.request_header("content-length"), Some(sent.len().to_string()));

        let client = respond(&host, &mut filter, SSE, &chunks);
        assert_eq!(String::from_utf8_lossy(&client), String::from_utf8_lossy(PLAIN_STREAM), "{} chunks", chunks.len());
        assert_eq!(host.response_header("content-length"), None, "the rewritten stream is re-framed");
        assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.input"), 15);
        assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.output"), 3);
        assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.reported"), 1);
        assert!(host.response_header(COST_HEADER).is_none(), "no usage headers on streams");
        assert_eq!(host.metric("ai_gateway_time_per_output_token_microseconds.model.llama-70b").unwrap().samples.len(), 1);
    }
}

#[test]
fn a_client_that_asked_for_usage_gets_the_stream_untouched() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    let body = br#"{"model":"llama-70b","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    request(&host, &mut filter, "/v1/chat/completions", &[], body);
    assert_eq!(host.state().request_body, body);
    let client = respond(&host, &mut filter, SSE, &[&UPSTREAM_STREAM[..100], &UPSTREAM_STREAM[100..]]);
    assert_eq!(client, UPSTREAM_STREAM);
    assert_eq!(host.response_header("content-length").as_deref(), Some("999"));
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.output"), 3);
}

#[test]
fn stream_options_without_usage_are_merged() {
    let options = serde_json::json!({"include_usage": false, "x": 1});
    let out = with_include_usage(br#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#, Some(&options)).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(value["stream_options"], serde_json::json!({"include_usage": true, "x": 1}));
    assert_eq!(with_include_usage(b"{} \n", None).unwrap(), br#"{"stream_options":{"include_usage":true}} "#.iter().chain(b"\n").copied().collect::<Vec<u8>>());
    assert_eq!(with_include_usage(b"[1]", None), None);
    assert_eq!(with_include_usage(b"", None), None);
}

#[test]
fn an_upstream_ignoring_the_option_is_estimated() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[], STREAM_CHAT);
    let client = respond(&host, &mut filter, SSE, &[PLAIN_STREAM]);
    assert_eq!(client, PLAIN_STREAM);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.output"), count("Hello world.") as i64);
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.estimated"), 1);
}

#[test]
fn a_cut_stream_is_estimated_from_what_arrived() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    let body = br#"{"model":"llama-70b","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say hello to the gateway"}]}"#;
    request(&host, &mut filter, "/v1/chat/completions", &[], body);
    host.state().response_headers = SSE.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    filter.on_response_headers(&host, false);
    host.response_gone.set(true);
    host.request_gone.set(false);
    // Three events then the upstream resets: no end of stream, only the log.
    let third_end = UPSTREAM_STREAM.windows(2).enumerate().filter(|(_, w)| w == b"\n\n").nth(2).unwrap().0;
    let cut = third_end + 12;
    host.state().response_body = UPSTREAM_STREAM[..cut].to_vec();
    assert_eq!(filter.on_response_body(&host, cut, false), Flow::Continue);
    assert_eq!(host.state().response_body, &UPSTREAM_STREAM[..cut], "unchanged");
    host.log_phase();
    filter.on_log(&host);
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.estimated"), 1);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.input"), chat_prompt_tokens("Say hello to the gateway") as i64);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.output"), count("Hello world.") as i64);
    assert_eq!(log_field(&host, "usage_source").as_deref(), Some("estimated"));
    filter.on_log(&host);
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.estimated"), 1, "logged once");
}

#[test]
fn anthropic_stream_usage_and_team_from_property() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    let body = br#"{"model":"claude-sonnet-4","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    request(&host, &mut filter, "/v1/messages", &[("x-tollgate-team", "search")], body);
    assert_eq!(host.state().request_body, body, "Anthropic requests are not rewritten");
    assert_eq!(property(&host, PROMPT_TOKENS_PROPERTY), Some(count("hi").to_string()));
    host.state().properties.insert(vec![TEAM_PROPERTY.into()], b"ads".to_vec());
    let stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1,\"cache_read_input_tokens\":100}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let client = respond(&host, &mut filter, SSE, &[&stream[..33], &stream[33..]]);
    assert_eq!(client, stream);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.claude-sonnet-4.team.ads.direction.input"), 120);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.claude-sonnet-4.team.ads.direction.output"), 7);
    // 20 × 3000 + 100 × 300 + 7 × 15000
    assert_eq!(counter(&host, "ai_gateway_cost_nanodollars_total.model.claude-sonnet-4.team.ads"), 60_000 + 30_000 + 105_000);
}

#[test]
fn anthropic_json_and_unknown_team_and_model() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/messages", &[("x-tollgate-team", "marketing")], br#"{"model":"claude-opus","max_tokens":5,"messages":[]}"#);
    let body = br#"{"type":"message","content":[{"type":"text","text":"x"}],"usage":{"input_tokens":3,"output_tokens":4}}"#;
    let length = body.len().to_string();
    respond(&host, &mut filter, &[(":status", "200"), ("content-type", "application/json"), ("content-length", &length)], &[body]);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.other.team.other.direction.output"), 4);
    assert_eq!(counter(&host, "ai_gateway_cost_nanodollars_total.model.other.team.other"), 0, "unpriced models cost 0");
    assert_eq!(host.response_header(COST_HEADER).as_deref(), Some("0.000000000"));
}

#[test]
fn errors_count_requests_not_tokens() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[], CHAT);
    let body = br#"{"error":{"message":"overloaded","type":"server_error"}}"#;
    let client = respond(&host, &mut filter, &[(":status", "503"), ("content-type", "application/json"), ("content-length", "57")], &[body]);
    assert_eq!(client, body);
    assert_eq!(counter(&host, "ai_gateway_requests_total.model.llama-70b.team.other.tier.none.backend.none.status.503.cache.none"), 1);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.input"), 0);
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.none"), 1);
    assert!(host.response_header(COST_HEADER).is_none());
    assert!(host.metric("ai_gateway_time_to_first_token_milliseconds.model.llama-70b").is_none());
}

#[test]
fn a_reset_before_any_response_is_counted_with_envoys_code() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[], CHAT);
    host.state().properties.insert(vec!["response".into(), "code".into()], 504u64.to_le_bytes().to_vec());
    filter.on_log(&host);
    assert_eq!(counter(&host, "ai_gateway_requests_total.model.llama-70b.team.other.tier.none.backend.none.status.504.cache.none"), 1);
}

#[test]
fn cache_hits_cost_nothing() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[("x-tollgate-team", "search")], CHAT);
    let body = br#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":10}}"#;
    let length = body.len().to_string();
    respond(&host, &mut filter, &[(":status", "200"), ("content-type", "application/json"), ("content-length", &length), ("x-tollgate-cache", "hit")], &[body]);
    assert_eq!(counter(&host, "ai_gateway_requests_total.model.llama-70b.team.search.tier.none.backend.none.status.200.cache.hit"), 1);
    assert_eq!(counter(&host, "ai_gateway_cost_nanodollars_total.model.llama-70b.team.search"), 0);
    assert_eq!(log_field(&host, "cache").as_deref(), Some("hit"));
}

#[test]
fn bad_responses_pass_unchanged_and_fall_back_to_estimates() {
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let bodies: &[(Headers, &[u8])] = &[
        (&[(":status", "200"), ("content-type", "text/html"), ("content-length", "14")], b"<html>oops</h"),
        (&[(":status", "200"), ("content-type", "application/json"), ("content-length", "10")], b"{\"usage\":{"),
        (&[(":status", "200"), ("content-type", "application/json"), ("content-encoding", "gzip")], b"\x1f\x8b\x08\x00garbage"),
        (&[(":status", "200"), ("content-type", "text/event-stream")], b"data: {\"choices\":[{\"delta\":{\"content\":\"\xff\xfe\"}}]}\n\ndata: {trunc"),
        (&[(":status", "200")], b"\x00\x01\x02"),
    ];
    for (headers, body) in bodies {
        let (host, factory) = setup(CONFIG);
        let mut filter = factory.new_filter();
        request(&host, &mut filter, "/v1/chat/completions", &[], CHAT);
        let client = respond(&host, &mut filter, headers, &[&body[..body.len() / 2], &body[body.len() / 2..]]);
        assert_eq!(&client, body, "{headers:?}");
        assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.estimated"), 1, "{headers:?}");
        assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.input"),
            chat_prompt_tokens("Say hello to the gateway") as i64);
    }
}

#[test]
fn large_responses_stream_through_and_usage_comes_from_the_tail() {
    let (host, factory) = setup(r#"{"models": {"llama-70b": {"input": 1, "output": 1}}, "max_held_response_bytes": 1000, "max_parsed_body_bytes": 5000}"#);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[], CHAT);
    let text = "word ".repeat(4000);
    let body = format!(r#"{{"choices":[{{"message":{{"content":"{text}"}}}}],"usage":{{"prompt_tokens":9,"completion_tokens":4000}}}}"#);
    let length = body.len().to_string();
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(1024).collect();
    let client = respond(&host, &mut filter, &[(":status", "200"), ("content-type", "application/json"), ("content-length", &length)], &chunks);
    assert_eq!(client, body.as_bytes());
    assert!(host.response_header(COST_HEADER).is_none(), "too large to hold the headers");
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.output"), 4000);
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.reported"), 1);

    // Without usage: estimated from the size.
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[], CHAT);
    let body = format!(r#"{{"choices":[{{"message":{{"content":"{text}"}}}}]}}"#);
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(1024).collect();
    respond(&host, &mut filter, &[(":status", "200"), ("content-type", "application/json")], &chunks);
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.estimated"), 1);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.output"), 4000 + body.len().div_ceil(4) as i64);
}

#[test]
fn garbage_requests_pass_without_an_estimate() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[], b"{\"model\": ");
    assert_eq!(host.state().request_body, b"{\"model\": ");
    assert_eq!(property(&host, PROMPT_TOKENS_PROPERTY), None);
    respond(&host, &mut filter, &[(":status", "400"), ("content-type", "application/json"), ("content-length", "2")], &[b"{}"]);
    assert_eq!(counter(&host, "ai_gateway_requests_total.model.other.team.other.tier.none.backend.none.status.400.cache.none"), 1);
}

#[test]
fn other_paths_and_bodyless_requests_pass_straight_through() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    host.state().request_headers = vec![(":path".into(), "/v1/models".into()), (":method".into(), "GET".into())];
    assert_eq!(filter.on_request_headers(&host, true), Flow::Continue);
    host.request_gone.set(true);
    assert_eq!(host.request_header("accept-encoding"), None);
    respond(&host, &mut filter, &[(":status", "200"), ("content-type", "application/json"), ("content-length", "2")], &[b"{}"]);
    assert!(host.response_header(COST_HEADER).is_none());
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.other.source.none"), 1);

    let mut filter = factory.new_filter();
    host.state().request_headers = vec![(":path".into(), "/v1/chat/completions".into()), ("content-length".into(), "999999999".into())];
    assert_eq!(filter.on_request_headers(&host, false), Flow::Continue, "too large to read: not held");
    assert_eq!(filter.on_request_body(&host, 10, false), Flow::Continue);
}

#[test]
fn random_chunks_never_panic_and_pass_through() {
    // A small deterministic generator: no extra dependency.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet: &[u8] = b"data: {}[]\":,\n\r usage null choices delta content [DONE] event message_start \xff\xc3";
    for round in 0..200 {
        let len = (next() % 400) as usize;
        let body: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let n = 1 + (next() % 50) as usize;
            chunks.push(&body[at..(at + n).min(body.len())]);
            at += n;
        }
        let (host, factory) = setup(CONFIG);
        let mut filter = factory.new_filter();
        let stream = round % 2 == 0;
        request(&host, &mut filter, if round % 3 == 0 { "/v1/messages" } else { "/v1/chat/completions" }, &[], if stream { STREAM_CHAT } else { CHAT });
        let content_type = if stream { "text/event-stream" } else { "application/json" };
        let client = respond(&host, &mut filter, &[(":status", "200"), ("content-type", content_type)], &chunks);
        if !stream || round % 3 == 0 {
            assert_eq!(client, body, "round {round}");
        }
    }
}

#[test]
fn the_routers_model_and_backend_headers_win() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    let body = br#"{"model":"llama3-70b","messages":[{"role":"user","content":"hi"}]}"#;
    request(&host, &mut filter, "/v1/chat/completions", &[("x-ai-model", "llama-70b"), ("x-ai-backend", "nim-70b")], body);
    host.state().properties.insert(vec!["cluster_name".into()], b"llama-70b.nim-70b".to_vec());
    let body = br#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":10}}"#;
    let length = body.len().to_string();
    respond(&host, &mut filter, &[(":status", "200"), ("content-type", "application/json"), ("content-length", &length)], &[body]);
    assert_eq!(counter(&host, "ai_gateway_requests_total.model.llama-70b.team.other.tier.none.backend.nim-70b.status.200.cache.none"), 1);
    assert_eq!(log_field(&host, "backend").as_deref(), Some("nim-70b"));
}

#[test]
#[should_panic(expected = "passed on")]
fn the_strict_host_refuses_reads_after_pass_on() {
    let host = Strict::default();
    host.response_gone.set(true);
    let _ = host.header(HeaderMap::Response, ":status");
}

#[test]
fn a_team_set_after_the_meter_is_read_in_the_log_phase() {
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[], CHAT);
    // The guard, after the meter, identifies the caller.
    host.state().request_headers.push(("x-tollgate-team".into(), "ads".into()));
    let body = br#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":10}}"#;
    let length = body.len().to_string();
    respond(&host, &mut filter, &[(":status", "200"), ("content-type", "application/json"), ("content-length", &length)], &[body]);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.ads.direction.input"), 10);
    assert_eq!(log_field(&host, "team").as_deref(), Some("ads"));
}

#[test]
fn the_routers_decision_is_read_from_its_headers_else_its_filter_state() {
    // From the router's headers when it published them (it drops any a client
    // sent), else from its filter state; the tier from its header, else the
    // client's.
    let decided = [("x-ai-model", "llama-70b"), ("x-ai-backend", "vllm-70b"), ("x-ai-tier", "quality"), ("x-model-tier", "fast")];
    for decision_headers in [&decided[..], &[("x-model-tier", "quality")]] {
        let (host, factory) = setup(CONFIG);
        let mut filter = factory.new_filter();
        for (key, value) in [(ROUTER_MODEL_PROPERTY, "llama-70b"), (ROUTER_BACKEND_PROPERTY, "vllm-70b")] {
            host.state().properties.insert(vec![key.to_string()], value.as_bytes().to_vec());
        }
        request(&host, &mut filter, "/v1/chat/completions", decision_headers, STREAM_CHAT);
        respond(&host, &mut filter, SSE, &[UPSTREAM_STREAM]);
        assert_eq!(counter(&host, "ai_gateway_requests_total.model.llama-70b.team.other.tier.quality.backend.vllm-70b.status.200.cache.none"), 1);
    }
}

// ---- compressed responses: decoded to read usage, passed on untouched -------

mod compressed {
    use std::io::Write as _;

    pub fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A gzip stream as a streaming upstream writes it: flushed after every
    /// event, so each event can be decoded as soon as it arrives.
    pub fn gzip_events(stream: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for event in stream.split_inclusive(|&b| b == b'\n') {
            e.write_all(event).unwrap();
            if event == b"\n" {
                e.flush().unwrap();
            }
        }
        e.finish().unwrap()
    }

    pub fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = ::brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).unwrap();
        }
        out
    }

    pub const JSON: &[u8] = br#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello."},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200,"prompt_tokens_details":{"cached_tokens":400}}}"#;

    pub fn json_headers<'a>(encoding: &'a str, length: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![(":status", "200"), ("content-type", "application/json"), ("content-encoding", encoding), ("content-length", length)]
    }
}

#[test]
fn compressed_json_is_decoded_for_its_usage_and_passed_on_untouched() {
    use compressed::*;
    let encodings: &[(&str, Vec<u8>)] = &[
        ("gzip", gzip(JSON)),
        ("x-gzip", gzip(JSON)),
        ("deflate", zlib(JSON)),
        ("deflate", raw_deflate(JSON)),
        ("br", brotli(JSON)),
        ("identity, GZIP", gzip(JSON)),
    ];
    for (encoding, body) in encodings {
        let (host, factory) = setup(CONFIG);
        let mut filter = factory.new_filter();
        request(&host, &mut filter, "/v1/chat/completions", &[("x-tollgate-team", "search")], CHAT);
        let length = body.len().to_string();
        let (a, b) = body.split_at(body.len() / 3);
        let client = respond(&host, &mut filter, &json_headers(encoding, &length), &[a, b]);
        assert_eq!(&client, body, "{encoding}: the client receives the upstream's compressed bytes");
        assert_eq!(host.response_header("content-encoding").as_deref(), Some(*encoding));
        assert_eq!(host.response_header("content-length"), Some(length));
        assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.search.direction.input"), 1000, "{encoding}");
        assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.search.direction.output"), 200, "{encoding}");
        assert_eq!(counter(&host, "ai_gateway_cached_input_tokens_total.model.llama-70b.team.search"), 400);
        assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.reported"), 1, "{encoding}");
        // Held like an uncompressed body: the usage headers are there too.
        assert_eq!(host.response_header(OUTPUT_TOKENS_HEADER).as_deref(), Some("200"), "{encoding}");
        assert_eq!(host.response_header(USAGE_SOURCE_HEADER).as_deref(), Some("reported"));
    }
}

#[test]
fn a_large_compressed_body_streams_through_with_usage_from_its_decoded_tail() {
    use compressed::*;
    let (host, factory) = setup(r#"{"models": {"llama-70b": {"input": 1, "output": 1}}, "max_held_response_bytes": 1000, "max_parsed_body_bytes": 5000}"#);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[], CHAT);
    let text = (0..4000).map(|i| format!("w{i} ")).collect::<String>();
    let body = format!(r#"{{"choices":[{{"message":{{"content":"{text}"}}}}],"usage":{{"prompt_tokens":9,"completion_tokens":4000}}}}"#);
    let compressed = gzip(body.as_bytes());
    assert!(compressed.len() > 1000 && body.len() > 5000);
    let chunks: Vec<&[u8]> = compressed.chunks(512).collect();
    let client = respond(&host, &mut filter, &[(":status", "200"), ("content-type", "application/json"), ("content-encoding", "gzip")], &chunks);
    assert_eq!(client, compressed);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.output"), 4000);
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.reported"), 1);
    let Body::Whole { kept, overflow, total, .. } = &filter.body else { panic!("read whole") };
    assert!(*overflow && kept.is_empty(), "past the parse limit only the tail is kept");
    assert_eq!(*total, body.len() as u64, "decoded bytes");
}

#[test]
fn a_gzip_stream_is_decoded_at_any_split_and_passed_on_untouched() {
    use compressed::*;
    // The client asked for usage: the upstream's stream, compressed.
    let with_usage = br#"{"model":"llama-70b","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let compressed = gzip_events(UPSTREAM_STREAM);
    assert_ne!(compressed.len(), UPSTREAM_STREAM.len());
    let mut splits: Vec<Vec<&[u8]>> = (0..=compressed.len()).map(|i| {
        let (a, b) = compressed.split_at(i);
        vec![a, b]
    }).collect();
    // Inside the gzip header, then event by event.
    splits.push(vec![&compressed[..3], &compressed[3..9], &compressed[9..12], &compressed[12..]]);
    splits.push(compressed.chunks(1).collect());
    splits.push(compressed.chunks(5).collect());
    for chunks in splits {
        let (host, factory) = setup(CONFIG);
        let mut filter = factory.new_filter();
        request(&host, &mut filter, "/v1/chat/completions", &[], with_usage);
        let headers = [(":status", "200"), ("content-type", "text/event-stream"), ("content-encoding", "gzip"), ("content-length", "999")];
        let client = respond(&host, &mut filter, &headers, &chunks);
        assert_eq!(client, compressed, "{} chunks", chunks.len());
        assert_eq!(host.response_header("content-length").as_deref(), Some("999"), "not re-framed");
        assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.input"), 15, "{} chunks", chunks.len());
        assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.output"), 3);
        assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.reported"), 1, "{} chunks", chunks.len());
        assert_eq!(host.metric("ai_gateway_time_per_output_token_microseconds.model.llama-70b").unwrap().samples.len(), 1, "first token seen");
    }
}

#[test]
fn a_compressed_stream_the_meter_asked_usage_for_is_not_rewritten() {
    use compressed::*;
    // The client did not ask for usage; the meter did, and the upstream
    // ignored the identity request: compressed bytes cannot be rewritten, so
    // the client receives the usage chunk (see the README's Meter section).
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    request(&host, &mut filter, "/v1/chat/completions", &[], STREAM_CHAT);
    assert!(filter.strip_usage);
    let compressed = gzip_events(UPSTREAM_STREAM);
    let headers = [(":status", "200"), ("content-type", "text/event-stream"), ("content-encoding", "gzip")];
    let client = respond(&host, &mut filter, &headers, &[&compressed[..40], &compressed[40..]]);
    assert_eq!(client, compressed);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.output"), 3);
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.reported"), 1);
}

#[test]
fn a_compressed_anthropic_stream_is_metered() {
    use compressed::*;
    let (host, factory) = setup(CONFIG);
    let mut filter = factory.new_filter();
    let body = br#"{"model":"claude-sonnet-4","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    request(&host, &mut filter, "/v1/messages", &[], body);
    let stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let compressed = brotli(stream);
    let headers = [(":status", "200"), ("content-type", "text/event-stream"), ("content-encoding", "br")];
    let chunks: Vec<&[u8]> = compressed.chunks(9).collect();
    let client = respond(&host, &mut filter, &headers, &chunks);
    assert_eq!(client, compressed);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.claude-sonnet-4.team.other.direction.input"), 20);
    assert_eq!(counter(&host, "ai_gateway_tokens_total.model.claude-sonnet-4.team.other.direction.output"), 7);
    assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.claude-sonnet-4.source.reported"), 1);
}

#[test]
fn corrupt_or_truncated_compressed_bodies_are_estimated_and_passed_on_untouched() {
    use compressed::*;
    let json = gzip(JSON);
    let mut bad_crc = json.clone();
    let at = bad_crc.len() - 8;
    bad_crc[at] ^= 1;
    let mut flipped = json.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    let stream = gzip_events(UPSTREAM_STREAM);
    let mut stream_bad_crc = stream.clone();
    let at = stream_bad_crc.len() - 7;
    stream_bad_crc[at] ^= 1;
    type Case<'a> = (&'a str, &'a str, &'a [u8]);
    let cases: &[Case] = &[
        ("application/json", "gzip", &bad_crc),
        ("application/json", "gzip", &flipped),
        ("application/json", "gzip", &json[..json.len() - 4]),
        ("application/json", "gzip", b"\x1f\x8b\x08\x00\0\0\0\0\0\x03\xff\xff"),
        ("application/json", "deflate", b"\xff\xff\xff\xff\xff\xff"),
        ("application/json", "br", b"\x1c\x00\x00"),
        ("application/json", "gzip", JSON),
        ("text/event-stream", "gzip", &stream_bad_crc),
        ("text/event-stream", "gzip", &stream[..stream.len() - 12]),
        ("text/event-stream", "deflate", UPSTREAM_STREAM),
    ];
    for (content_type, encoding, body) in cases {
        let (host, factory) = setup(CONFIG);
        let mut filter = factory.new_filter();
        request(&host, &mut filter, "/v1/chat/completions", &[], STREAM_CHAT);
        let headers = [(":status", "200"), ("content-type", *content_type), ("content-encoding", *encoding)];
        let (a, b) = body.split_at(body.len() / 2);
        let client = respond(&host, &mut filter, &headers, &[a, b]);
        let what = format!("{content_type} {encoding} {} bytes", body.len());
        assert_eq!(&client, body, "{what}");
        assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.estimated"), 1, "{what}");
        assert!(host.metric("ai_gateway_usage_source_total.model.llama-70b.source.reported").is_none(), "{what}");
        // The prompt's estimate, or for a stream the input its usage chunk
        // reported before the corruption showed (kept, as for a cut stream).
        let input = counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.input");
        let prompt = chat_prompt_tokens("Say hello to the gateway") as i64;
        assert!(input == prompt || (*content_type == "text/event-stream" && input == 15), "{what}: {input}");
        assert!(filter.decoder.as_ref().unwrap().failure().is_some(), "{what}");
        assert_eq!(log_field(&host, "usage_source").as_deref(), Some("estimated"));
    }
}

#[test]
fn a_decompression_bomb_stays_within_the_parse_limit() {
    use std::io::Write as _;
    // 100 MB of zeros in about 100 KB.
    let limit = 64 * 1024;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..100 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 200 * 1024, "{}", bomb.len());
    let config = format!(r#"{{"models": {{"llama-70b": {{"input": 1, "output": 1}}}}, "max_parsed_body_bytes": {limit}}}"#);
    for content_type in ["application/json", "text/event-stream"] {
        let (host, factory) = setup(&config);
        let mut filter = factory.new_filter();
        request(&host, &mut filter, "/v1/chat/completions", &[], CHAT);
        let headers = [(":status", "200"), ("content-type", content_type), ("content-encoding", "gzip")];
        let chunks: Vec<&[u8]> = bomb.chunks(16 * 1024).collect();
        let client = respond(&host, &mut filter, &headers, &chunks);
        assert_eq!(client, bomb, "the bomb reaches the client as it came");
        let decoder = filter.decoder.as_ref().unwrap();
        assert_eq!(decoder.failure(), Some(decode::Failure::TooLarge), "{content_type}");
        // Decoding stopped once past the limit and 100 times the input.
        let bound = (limit as u64).max(decode::MAX_INFLATE_RATIO * bomb.len() as u64) + decode::PIECE_BYTES as u64;
        assert!(decoder.output() <= bound, "{content_type}: {} decoded", decoder.output());
        match &filter.body {
            Body::Whole { kept, tail, overflow, .. } => {
                assert!(*overflow && kept.capacity() <= limit && tail.len() <= TAIL_BYTES);
            }
            // Zeros never end an SSE line: the parser holds at most the limit.
            Body::Stream { parser, unframed, .. } => {
                assert!(parser.pending_bytes() <= limit + decode::PIECE_BYTES, "{}", parser.pending_bytes());
                assert!(*unframed > limit);
                assert!(decoder.output() <= (limit + decode::PIECE_BYTES) as u64, "the stream stops at the limit");
            }
            _ => panic!("read"),
        }
        assert_eq!(counter(&host, "ai_gateway_usage_source_total.model.llama-70b.source.estimated"), 1, "{content_type}");
    }
}

#[test]
fn unknown_stacked_or_uncounted_encodings_stay_opaque() {
    use compressed::*;
    let body = gzip(JSON);
    for (status, encoding, source) in [("200", "zstd", "estimated"), ("200", "gzip, gzip", "estimated"), ("500", "gzip", "none")] {
        let (host, factory) = setup(CONFIG);
        let mut filter = factory.new_filter();
        request(&host, &mut filter, "/v1/chat/completions", &[], CHAT);
        let headers = [(":status", status), ("content-type", "application/json"), ("content-encoding", encoding)];
        let client = respond(&host, &mut filter, &headers, &[&body]);
        assert_eq!(client, body);
        assert!(filter.decoder.is_none(), "{encoding}");
        assert!(matches!(filter.body, Body::Opaque { .. }));
        assert_eq!(counter(&host, &format!("ai_gateway_usage_source_total.model.llama-70b.source.{source}")), 1, "{encoding}");
        assert_eq!(counter(&host, "ai_gateway_tokens_total.model.llama-70b.team.other.direction.output"), 0, "{encoding}");
    }
}
