//! Meter logic: what every request cost, per model, team and tier.
//!
//! - Request: reads the body once it is complete (the plugin holds the
//!   headers, `allow_on_headers_stop_iteration`), estimates the prompt's
//!   tokens and publishes the estimate as the property
//!   [`PROMPT_TOKENS_PROPERTY`] for the filters after it; asks OpenAI-style
//!   upstreams for a usage chunk on streams whose client did not ask
//!   (`stream_options.include_usage`), and for identity encoding.
//! - Response: takes the provider's `usage` from the JSON body or the
//!   stream's events; when it is missing (no usage, a cut stream, an
//!   unreadable body) counts with tiktoken and marks the count estimated.
//!   A body compressed despite the identity request (gzip, deflate, br) is
//!   decoded on the side ([`decode`]), only to read it: its bytes reach the
//!   client as the upstream sent them. Uncompressed streams the meter asked
//!   usage for are rewritten so the client receives exactly what it asked
//!   for. Non-streamed responses get usage and cost headers.
//! - Log: records the Envoy stats ([`metrics`]) and leaves the access-log
//!   fields as properties ([`LOG_FIELDS`]).

pub mod config;
pub mod decode;
pub mod metrics;
pub mod rewrite;
pub mod tokenizer;

use config::{sanitize, Compiled, MeterConfig};
use decode::{Coding, Decoder, Take};
use metrics::{Cache, Direction, Key, Metrics, Source};
use rewrite::{strip_null_usage, Framer};
use sha2::{Digest, Sha256};
use std::rc::Rc;
use std::time::{Duration, SystemTime};
use tollgate_core::prices::format_dollars;
use tollgate_core::sse::Parser;
use tollgate_core::tokens::{CountTokens, Encoding, RequestBody};
use tollgate_core::usage::{parse_body, usage_in_tail, Api, StreamUsage, Usage};
use tollgate_core::virtual_keys::presented_key;
use tollgate_host::{BodyBuffer, ConfigError, FilterFactory, Flow, HeaderMap, Host, HttpFilter};
use tokenizer::Tiktoken;

/// Property (filter state `wasm.tollgate.prompt_tokens`) holding the prompt's
/// estimated tokens as a decimal string, set once the request body is read.
pub const PROMPT_TOKENS_PROPERTY: &str = "tollgate.prompt_tokens";
/// Property another filter may set to name the caller's team (wins over the header).
pub const TEAM_PROPERTY: &str = "tollgate.team";
/// Property another filter may set to `hit` / `miss` (wins over the header).
pub const CACHE_PROPERTY: &str = "tollgate.cache_status";
/// Response header carrying the cache status, as the guard sets it.
pub const CACHE_HEADER: &str = "x-tollgate-cache";

/// The router's decision as filter state: the resolved model group and the
/// chosen backend, read only when its headers are not there (each read is a
/// host call; the headers come with the one read of the request headers).
pub const ROUTER_MODEL_PROPERTY: &str = "tollgate_model";
pub const ROUTER_BACKEND_PROPERTY: &str = "tollgate_backend";

/// Response headers on non-streamed responses.
pub const INPUT_TOKENS_HEADER: &str = "x-tollgate-input-tokens";
pub const OUTPUT_TOKENS_HEADER: &str = "x-tollgate-output-tokens";
pub const COST_HEADER: &str = "x-tollgate-cost-usd";
pub const USAGE_SOURCE_HEADER: &str = "x-tollgate-usage";

/// Access-log fields, each left as the property `tollgate.meter.<field>`
/// (filter state `wasm.tollgate.meter.<field>`, read in the access log as
/// `%FILTER_STATE(wasm.tollgate.meter.<field>:PLAIN)%`).
pub const LOG_FIELDS: &[&str] = &[
    "model",
    "team",
    "tier",
    "backend",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cost_usd",
    "usage_source",
    "ttft_ms",
    "cache",
    "key_id",
];
pub const LOG_PROPERTY_PREFIX: &str = "tollgate.meter.";

/// Bytes of a large body's end kept to find its `usage`.
const TAIL_BYTES: usize = 16 * 1024;
/// Generated text kept per response for estimates.
const TEXT_CAP: usize = 1024 * 1024;

struct Shared {
    config: Compiled,
    metrics: Metrics,
}

pub struct MeterFactory {
    shared: Rc<Shared>,
}

impl FilterFactory for MeterFactory {
    type Filter = MeterFilter;

    fn configure(host: &dyn Host, _root_id: &str, config: &[u8]) -> Result<Self, ConfigError> {
        let config = tollgate_core::config::parse::<MeterConfig>(config)?.compile()?;
        let metrics = Metrics::default();
        let started = host.now();
        metrics.predefine(host, &config);
        log::info!(
            "meter: configured in {} µs: {} models, {} teams, {} stats defined, {} KiB of wasm memory",
            micros(since(host.now(), started)),
            config.models.len() - 1,
            config.teams.len() - 1,
            metrics.defined(),
            wasm_memory_kib()
        );
        Ok(Self { shared: Rc::new(Shared { config, metrics }) })
    }

    fn new_filter(&self) -> MeterFilter {
        MeterFilter::new(Rc::clone(&self.shared))
    }
}

impl MeterFactory {
    /// Label combinations defined in this VM so far.
    pub fn metrics_defined(&self) -> usize {
        self.shared.metrics.defined()
    }
}

/// How the response body is being read.
enum Body {
    /// No response headers yet.
    Pending,
    /// A stream of server-sent events; `framer` when it is being rewritten.
    /// `unframed`: decoded bytes given to the parser since it last completed
    /// an event (what it may be holding), bounded for compressed streams.
    Stream { parser: Parser, usage: StreamUsage, framer: Option<Framer>, unframed: usize },
    /// A body read whole: `held` when the headers wait for it (usage
    /// headers), else copied chunk by chunk up to the parse limit. For a
    /// compressed body, `total` counts decoded bytes.
    Whole { held: bool, kept: Vec<u8>, total: u64, tail: Vec<u8>, overflow: bool },
    /// A body the meter cannot read (an unknown or stacked content coding,
    /// or compressed with nothing to count): only its size is known.
    Opaque { total: u64 },
}

impl Body {
    fn whole(held: bool) -> Self {
        Body::Whole { held, kept: Vec::new(), total: 0, tail: Vec::new(), overflow: false }
    }

    /// Takes a piece of a compressed body's decoded bytes; `Stop` when
    /// reading on would hold more than `max_parsed` bytes.
    fn take_decoded(&mut self, piece: &[u8], max_parsed: usize, now: SystemTime, first_token: &mut Option<SystemTime>) -> Take {
        match self {
            Body::Whole { kept, total, tail, overflow, .. } => {
                keep_bounded(kept, total, tail, overflow, piece, max_parsed);
                Take::More
            }
            Body::Stream { parser, usage, unframed, .. } => {
                let events = parser.push(piece);
                // What the parser holds arrived after its last event.
                *unframed = if events.is_empty() { unframed.saturating_add(piece.len()) } else { piece.len() };
                for event in &events {
                    if usage.event(event).content && first_token.is_none() {
                        *first_token = Some(now);
                    }
                }
                if *unframed > max_parsed {
                    Take::Stop
                } else {
                    Take::More
                }
            }
            Body::Pending | Body::Opaque { .. } => Take::More,
        }
    }
}

/// Appends a chunk of a body read whole: kept up to `max_parsed` bytes, past
/// that only its last [`TAIL_BYTES`] (for its `usage`) and its size.
fn keep_bounded(kept: &mut Vec<u8>, total: &mut u64, tail: &mut Vec<u8>, overflow: &mut bool, chunk: &[u8], max_parsed: usize) {
    *total += chunk.len() as u64;
    if !*overflow && kept.len() + chunk.len() <= max_parsed {
        kept.extend_from_slice(chunk);
    } else {
        *overflow = true;
        kept.clear();
        kept.shrink_to_fit();
    }
    tail.extend_from_slice(chunk);
    if tail.len() > TAIL_BYTES {
        let cut = tail.len() - TAIL_BYTES;
        tail.drain(..cut);
    }
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    usage: Usage,
    source: Source,
    cost: u64,
    model: usize,
}

pub struct MeterFilter {
    shared: Rc<Shared>,
    start: Option<SystemTime>,
    api: Api,
    /// Whether the request body is being read.
    reading_request: bool,
    model: Option<String>,
    encoding: Encoding,
    prompt_estimate: Option<u64>,
    /// The meter added `include_usage`: the stream is rewritten.
    strip_usage: bool,
    team_at_request: Option<String>,
    /// Whether Envoy still lets the filter read request headers: while it
    /// holds them (and in the log phase). Once passed on, a read fails, and the
    /// SDK's header call panics on that failure, so the meter never tries.
    request_headers_readable: bool,
    cache: Cache,
    tier: usize,
    key_id: Option<String>,
    status: Option<u32>,
    backend: Option<String>,
    body: Body,
    /// Decodes a compressed response body for reading, never for the client.
    decoder: Option<Decoder>,
    coding: Option<Coding>,
    first_byte: Option<SystemTime>,
    first_token: Option<SystemTime>,
    end: Option<SystemTime>,
    outcome: Option<Outcome>,
    logged: bool,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

fn header(host: &dyn Host, map: HeaderMap, name: &str) -> Option<String> {
    match host.header(map, name) {
        Ok(value) => value,
        Err(e) => {
            log::debug!("meter: {e}");
            None
        }
    }
}

/// A header map read with one host call: each single-header read is a call
/// that allocates in the VM, and the meter reads several.
struct Snapshot(Vec<(String, String)>);

impl Snapshot {
    fn read(host: &dyn Host, map: HeaderMap) -> Self {
        match host.headers(map) {
            Ok(headers) => Self(headers),
            Err(e) => {
                log::debug!("meter: {e}");
                Self(Vec::new())
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn owned(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }
}

fn property_string(host: &dyn Host, name: &str) -> Option<String> {
    let bytes = host.property(&[name]).ok().flatten()?;
    let value = String::from_utf8(bytes).ok()?;
    (!value.is_empty()).then_some(value)
}

/// Envoy returns integer properties as 8 little-endian bytes.
fn property_u64(host: &dyn Host, path: &[&str]) -> Option<u64> {
    let bytes = host.property(path).ok().flatten()?;
    let array: [u8; 8] = bytes.as_slice().try_into().ok()?;
    Some(u64::from_le_bytes(array))
}

/// A non-reversible id of the caller's key: the first 16 hex digits of
/// SHA-256(salt ‖ key).
pub fn key_id(salt: &str, key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(key.as_bytes());
    hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The request body with `stream_options.include_usage: true`, or `None` when
/// the client asked for usage itself (or the body cannot be changed safely).
fn with_include_usage(body: &[u8], stream_options: Option<&serde_json::Value>) -> Option<Vec<u8>> {
    match stream_options {
        None => {
            // Append the member before the closing brace, keeping every other byte.
            let end = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
            if body.get(end) != Some(&b'}') {
                return None;
            }
            let before = body.get(..end)?.iter().rposition(|b| !b.is_ascii_whitespace())?;
            let separator = if body.get(before) == Some(&b'{') { "" } else { "," };
            let mut out = Vec::with_capacity(body.len() + 48);
            out.extend_from_slice(body.get(..end)?);
            out.extend_from_slice(separator.as_bytes());
            out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
            out.extend_from_slice(body.get(end..)?);
            Some(out)
        }
        Some(options) => {
            if options.get("include_usage").and_then(serde_json::Value::as_bool) == Some(true) {
                return None;
            }
            let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
            let object = value.as_object_mut()?;
            let mut options = match object.remove("stream_options") {
                Some(serde_json::Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            };
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            object.insert("stream_options".into(), serde_json::Value::Object(options));
            serde_json::to_vec(&value).ok()
        }
    }
}

impl MeterFilter {
    fn new(shared: Rc<Shared>) -> Self {
        let tier = shared.config.no_tier();
        Self {
            shared,
            start: None,
            api: Api::Other,
            reading_request: false,
            model: None,
            encoding: Encoding::O200kBase,
            prompt_estimate: None,
            strip_usage: false,
            team_at_request: None,
            request_headers_readable: false,
            cache: Cache::None,
            tier,
            key_id: None,
            status: None,
            backend: None,
            body: Body::Pending,
            decoder: None,
            coding: None,
            first_byte: None,
            first_token: None,
            end: None,
            outcome: None,
            logged: false,
        }
    }

    fn config(&self) -> &Compiled {
        &self.shared.config
    }

    /// Counts with the model's encoding (tables read in place: nothing to build).
    fn counter(&self) -> Tiktoken {
        Tiktoken(self.encoding)
    }

    fn read_request_body(&mut self, host: &dyn Host, size: usize) {
        let body = match host.body(BodyBuffer::Request, 0, size) {
            Ok(body) => body.unwrap_or_default(),
            Err(e) => {
                log::warn!("meter: {e}");
                return;
            }
        };
        let parsed = RequestBody::parse(&body);
        let readable = parsed.is_some();
        let fields = parsed.unwrap_or_default();
        // The router (before the meter) resolved aliases and tiers; the
        // request headers said so already, else the body names the model.
        if self.model.is_none() {
            self.model = fields.model.clone();
        }
        self.encoding = self.config().encodings.for_model(self.model.as_deref().unwrap_or_default());
        let counter = self.counter();
        self.prompt_estimate = if readable { fields.prompt_tokens(&counter, self.api) } else { None };
        if let Some(estimate) = self.prompt_estimate {
            if let Err(e) = host.set_property(&[PROMPT_TOKENS_PROPERTY], estimate.to_string().as_bytes()) {
                log::warn!("meter: {e}");
            }
        }
        if fields.stream == Some(true) && self.api.has_stream_options() && self.config().include_usage {
            if let Some(rewritten) = with_include_usage(&body, fields.stream_options.as_ref()) {
                let length = rewritten.len().to_string();
                let replaced = host
                    .set_body(BodyBuffer::Request, 0, size, &rewritten)
                    .and_then(|()| host.set_header(HeaderMap::Request, "content-length", Some(&length)));
                match replaced {
                    Ok(()) => self.strip_usage = true,
                    Err(e) => log::warn!("meter: cannot ask for stream usage: {e}"),
                }
            }
        }
    }

    /// A request header, when Envoy still lets the filter read them.
    fn request_header(&self, host: &dyn Host, name: &str) -> Option<String> {
        if self.request_headers_readable {
            header(host, HeaderMap::Request, name)
        } else {
            None
        }
    }

    /// Reads everything the meter needs of the response headers now: they
    /// cannot be read once passed on.
    fn start_response(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        let headers = Snapshot::read(host, HeaderMap::Response);
        self.status = headers.get(":status").and_then(|s| s.parse().ok());
        self.cache = property_string(host, CACHE_PROPERTY)
            .or_else(|| headers.owned(CACHE_HEADER))
            .map_or(Cache::None, |v| Cache::parse(&v));
        self.find_backend(host);
        if end_of_stream {
            self.body = Body::whole(false);
            self.end = Some(host.now());
            self.finish(host);
            return Flow::Continue;
        }
        let content_type = headers.get("content-type").unwrap_or_default().to_ascii_lowercase();
        // The meter asked for identity; an upstream that compresses anyway
        // is decoded on the side (gzip, deflate, br), its bytes untouched.
        let counted = self.successful() && self.api != Api::Other && self.cache != Cache::Hit;
        self.coding = match Coding::from_header(headers.get("content-encoding").unwrap_or_default()) {
            Ok(coding) => coding,
            Err(decode::Unsupported) => {
                self.body = Body::Opaque { total: 0 };
                return Flow::Continue;
            }
        };
        if let Some(coding) = self.coding {
            if !counted {
                self.body = Body::Opaque { total: 0 };
                return Flow::Continue;
            }
            self.decoder = Some(Decoder::new(coding, self.config().max_parsed_body_bytes));
        }
        if content_type.starts_with("text/event-stream") {
            // Compressed bytes cannot be rewritten: a client whose stream the
            // meter asked usage for then receives the usage chunk too.
            let rewrite = self.strip_usage && self.successful() && self.coding.is_none();
            if self.strip_usage && !rewrite {
                log::debug!("meter: a compressed stream passes as it came, with the usage chunk the meter asked for");
            }
            if rewrite {
                // The body changes length: let Envoy frame it.
                if let Err(e) = host.set_header(HeaderMap::Response, "content-length", None) {
                    log::warn!("meter: {e}");
                }
            }
            self.body = Body::Stream {
                parser: Parser::new(),
                usage: StreamUsage::new(self.api, TEXT_CAP),
                framer: rewrite.then(Framer::new),
                unframed: 0,
            };
            return Flow::Continue;
        }
        let length = headers.get("content-length").and_then(|v| v.parse::<usize>().ok());
        let held = self.config().usage_headers
            && self.successful()
            && self.api != Api::Other
            && length.is_some_and(|l| l <= self.config().max_held_response_bytes);
        self.body = Body::whole(held);
        if held {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }

    /// Without a backend from the router (looked for with the request
    /// headers), the Envoy cluster.
    fn find_backend(&mut self, host: &dyn Host) {
        if self.backend.is_none() {
            self.backend = property_string(host, "cluster_name");
        }
    }

    fn successful(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    fn response_chunk(&mut self, host: &dyn Host, size: usize, end_of_stream: bool) -> Flow {
        let now = host.now();
        if size > 0 && self.first_byte.is_none() {
            self.first_byte = Some(now);
        }
        let max_parsed = self.config().max_parsed_body_bytes;
        if self.decoder.is_some() {
            return self.compressed_chunk(host, size, end_of_stream, now);
        }
        match &mut self.body {
            Body::Pending => {}
            Body::Opaque { total } => *total += size as u64,
            Body::Whole { held: true, .. } if !end_of_stream => return Flow::Pause,
            Body::Whole { held, kept, total, tail, overflow } => {
                let chunk = host.body(BodyBuffer::Response, 0, size).ok().flatten().unwrap_or_default();
                if *held {
                    // Envoy buffered the whole body for us.
                    *total = chunk.len() as u64;
                    *kept = chunk;
                } else {
                    keep_bounded(kept, total, tail, overflow, &chunk, max_parsed);
                }
            }
            Body::Stream { parser, usage, framer, .. } => {
                let chunk = match host.body(BodyBuffer::Response, 0, size) {
                    Ok(chunk) => chunk.unwrap_or_default(),
                    Err(e) => {
                        log::warn!("meter: {e}");
                        Vec::new()
                    }
                };
                let mut first_token = None;
                match framer {
                    None => {
                        for event in parser.push(&chunk) {
                            if usage.event(&event).content && first_token.is_none() {
                                first_token = Some(now);
                            }
                        }
                    }
                    Some(framer) => {
                        let mut out = Vec::with_capacity(chunk.len());
                        for block in framer.push(&chunk) {
                            let mut keep = true;
                            let mut null_usage = false;
                            for event in parser.push(&block) {
                                let info = usage.event(&event);
                                if info.content && first_token.is_none() {
                                    first_token = Some(now);
                                }
                                keep &= !info.usage_only;
                                null_usage |= info.null_usage;
                            }
                            if !keep {
                                continue;
                            }
                            match null_usage.then(|| strip_null_usage(&block)).flatten() {
                                Some(stripped) => out.extend_from_slice(&stripped),
                                None => out.extend_from_slice(&block),
                            }
                        }
                        if end_of_stream {
                            // An unterminated last event reaches the client as it came.
                            out.extend_from_slice(&framer.take_pending());
                        }
                        if out != chunk {
                            if let Err(e) = host.set_body(BodyBuffer::Response, 0, size, &out) {
                                log::warn!("meter: {e}");
                            }
                        }
                    }
                }
                if self.first_token.is_none() {
                    self.first_token = first_token;
                }
            }
        }
        if end_of_stream {
            self.end = Some(now);
            self.finish(host);
        }
        Flow::Continue
    }

    /// A chunk of a compressed body: decoded into the body's reader, never
    /// changed (the client receives the upstream's bytes).
    fn compressed_chunk(&mut self, host: &dyn Host, size: usize, end_of_stream: bool, now: SystemTime) -> Flow {
        if matches!(self.body, Body::Whole { held: true, .. }) && !end_of_stream {
            return Flow::Pause;
        }
        let chunk = match host.body(BodyBuffer::Response, 0, size) {
            Ok(chunk) => chunk.unwrap_or_default(),
            Err(e) => {
                log::warn!("meter: {e}");
                Vec::new()
            }
        };
        let max_parsed = self.config().max_parsed_body_bytes;
        let mut first_token = None;
        if let Some(decoder) = &mut self.decoder {
            let failed = decoder.failure().is_some();
            let body = &mut self.body;
            decoder.push(&chunk, &mut |piece| body.take_decoded(piece, max_parsed, now, &mut first_token));
            if end_of_stream {
                decoder.finish();
            }
            if let (false, Some(failure)) = (failed, decoder.failure()) {
                let coding = self.coding.map_or("", Coding::label);
                log::warn!("meter: {coding} response body {}: its usage is estimated", failure.label());
            }
        }
        if self.first_token.is_none() {
            self.first_token = first_token;
        }
        if end_of_stream {
            self.end = Some(now);
            self.finish(host);
        }
        Flow::Continue
    }

    /// The team: a property another filter set, else the team header (read
    /// now, as a filter after the meter sets it), else as the request came.
    fn team(&self, host: &dyn Host) -> usize {
        let team = property_string(host, TEAM_PROPERTY)
            .or_else(|| self.request_header(host, &self.config().team_header))
            .or_else(|| self.team_at_request.clone());
        team.map_or(self.config().teams.other(), |t| self.config().teams.find(&t))
    }

    fn estimate_output(&self, text: &tollgate_core::usage::OutputText) -> u64 {
        if text.is_empty() {
            return 0;
        }
        text.scale(self.counter().count(text.kept()))
    }

    /// Tokens of the finished (or ended) response and where they came from.
    fn usage(&self) -> (Usage, Source) {
        let prompt = self.prompt_estimate.unwrap_or(0);
        // A compressed body that could not be decoded to its end: what was
        // read may be partial or wrong, so it is never reported as such.
        let undecoded = self.decoder.as_ref().and_then(Decoder::failure).is_some();
        match &self.body {
            Body::Stream { usage, .. } => {
                let reported = usage.usage();
                let complete = match self.api {
                    // OpenAI reports usage only in the final chunk.
                    Api::Messages => usage.done(),
                    _ => reported.is_some(),
                };
                match reported {
                    Some(reported) if complete && !undecoded => (reported, Source::Reported),
                    _ => {
                        let reported = reported.unwrap_or_default();
                        let input = if reported.input > 0 { reported.input } else { prompt };
                        let output = reported.output.max(self.estimate_output(usage.text()));
                        (Usage { input, output, cached_input: reported.cached_input }, Source::Estimated)
                    }
                }
            }
            Body::Whole { kept, total, overflow, .. } if undecoded => {
                let output = if *overflow { total.div_ceil(4) } else { self.estimate_output(&parse_body(kept, TEXT_CAP).text) };
                (Usage { input: prompt, output, cached_input: 0 }, Source::Estimated)
            }
            Body::Whole { kept, total, tail, overflow, .. } => {
                if *overflow {
                    if let Some(usage) = usage_in_tail(tail) {
                        return (usage, Source::Reported);
                    }
                    // The text is gone: about four bytes a token.
                    let output = total.div_ceil(4);
                    return (Usage { input: prompt, output, cached_input: 0 }, Source::Estimated);
                }
                let parsed = parse_body(kept, TEXT_CAP);
                match parsed.usage {
                    Some(usage) => (usage, Source::Reported),
                    None => {
                        let output = self.estimate_output(&parsed.text);
                        (Usage { input: prompt, output, cached_input: 0 }, Source::Estimated)
                    }
                }
            }
            Body::Opaque { .. } | Body::Pending => (Usage { input: prompt, output: 0, cached_input: 0 }, Source::Estimated),
        }
    }

    /// Settles the request's tokens and cost once the response ended (or
    /// the stream was torn down). The access-log fields are left in the log
    /// phase, which Envoy runs before its access loggers.
    fn finish(&mut self, host: &dyn Host) {
        if self.outcome.is_some() {
            return;
        }
        let config = self.config();
        let model = config.models.find(self.model.as_deref().unwrap_or_default());
        let (usage, source) = if !self.successful() || self.cache == Cache::Hit || self.api == Api::Other {
            (Usage::default(), Source::None)
        } else {
            self.usage()
        };
        let cost = config.price(model).cost(&usage);
        let outcome = Outcome { usage, source, cost, model };
        self.outcome = Some(outcome);
        if let Body::Whole { held: true, .. } = self.body {
            if source != Source::None {
                self.usage_headers(host, &outcome);
            }
        }
    }

    fn usage_headers(&self, host: &dyn Host, outcome: &Outcome) {
        let headers = [
            (INPUT_TOKENS_HEADER, outcome.usage.input.to_string()),
            (OUTPUT_TOKENS_HEADER, outcome.usage.output.to_string()),
            (COST_HEADER, format_dollars(outcome.cost)),
            (USAGE_SOURCE_HEADER, outcome.source.label().to_string()),
        ];
        for (name, value) in headers {
            if let Err(e) = host.set_header(HeaderMap::Response, name, Some(&value)) {
                log::warn!("meter: {e}");
                return;
            }
        }
    }

    fn ttft(&self) -> Option<Duration> {
        let start = self.start?;
        let first = match self.body {
            Body::Stream { .. } => self.first_token.or(self.first_byte)?,
            _ => self.first_byte?,
        };
        Some(since(first, start))
    }

    fn log_fields(&self, host: &dyn Host, outcome: &Outcome, team: usize) {
        let config = self.config();
        let values = [
            ("model", config.models.label(outcome.model).to_string()),
            ("team", config.teams.label(team).to_string()),
            ("tier", config.tiers.label(self.tier).to_string()),
            ("backend", self.backend_label()),
            ("input_tokens", outcome.usage.input.to_string()),
            ("output_tokens", outcome.usage.output.to_string()),
            ("cached_input_tokens", outcome.usage.cached_input.to_string()),
            ("cost_usd", format_dollars(outcome.cost)),
            ("usage_source", outcome.source.label().to_string()),
            ("ttft_ms", self.ttft().map_or_else(String::new, |d| millis(d).to_string())),
            ("cache", self.cache.label().to_string()),
            ("key_id", self.key_id.clone().unwrap_or_default()),
        ];
        for (field, value) in values {
            if value.is_empty() {
                continue;
            }
            let name = format!("{LOG_PROPERTY_PREFIX}{field}");
            if let Err(e) = host.set_property(&[&name], value.as_bytes()) {
                log::debug!("meter: {e}");
            }
        }
    }

    fn backend_label(&self) -> String {
        self.backend.as_deref().map_or_else(|| "none".to_string(), sanitize)
    }

    fn record(&self, host: &dyn Host, outcome: &Outcome, team: usize) {
        let config = self.config();
        let metrics = &self.shared.metrics;
        let model = outcome.model;
        let status = self.status.or_else(|| property_u64(host, &["response", "code"]).and_then(|c| u32::try_from(c).ok()));
        metrics.add(
            host,
            config,
            Key::Requests {
                model,
                team,
                tier: self.tier,
                backend: self.backend_label(),
                status: status.unwrap_or(0),
                cache: self.cache,
            },
            1,
        );
        metrics.add(host, config, Key::UsageSource { model, source: outcome.source }, 1);
        if outcome.source != Source::None {
            metrics.add(host, config, Key::Tokens { model, team, direction: Direction::Input }, outcome.usage.input);
            metrics.add(host, config, Key::Tokens { model, team, direction: Direction::Output }, outcome.usage.output);
            metrics.add(host, config, Key::CachedInput { model, team }, outcome.usage.cached_input);
            metrics.add(host, config, Key::Cost { model, team }, outcome.cost);
            metrics.record(host, config, Key::RequestCost { model, team }, outcome.cost);
        }
        let Some(start) = self.start else { return };
        let end = self.end.unwrap_or_else(|| host.now());
        metrics.record(host, config, Key::Duration { model }, millis(since(end, start)));
        if self.successful() && self.api != Api::Other {
            if let Some(ttft) = self.ttft() {
                metrics.record(host, config, Key::Ttft { model }, millis(ttft));
            }
            if let (Body::Stream { .. }, Some(first)) = (&self.body, self.first_token) {
                if outcome.usage.output > 1 {
                    let per_token = micros(since(end, first)) / (outcome.usage.output - 1);
                    metrics.record(host, config, Key::Tpot { model }, per_token);
                }
            }
        }
    }
}

/// The VM's linear memory, for the start-up log line.
#[cfg(target_arch = "wasm32")]
fn wasm_memory_kib() -> usize {
    core::arch::wasm32::memory_size(0) * 64
}

#[cfg(not(target_arch = "wasm32"))]
fn wasm_memory_kib() -> usize {
    0
}

impl MeterFilter {
    fn request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        self.start = Some(host.now());
        let headers = Snapshot::read(host, HeaderMap::Request);
        self.api = Api::from_path(headers.get(":path").unwrap_or_default());
        let shared = Rc::clone(&self.shared);
        let config = &shared.config;
        let tier = headers.owned(&config.decided_tier_header).or_else(|| headers.owned(&config.tier_header));
        self.tier = config.tier(tier.as_deref());
        self.team_at_request = headers.owned(&config.team_header);
        // The key as the guard finds it, so both name one key alike.
        self.key_id = config
            .key_headers
            .iter()
            .find_map(|name| headers.get(name).and_then(|value| presented_key(name, value)))
            .map(|key| key_id(&config.key_id_salt, key));
        // The router, before the meter, has decided these already, and said
        // so in the headers the meter has just read (it drops any a client
        // sent), so its filter state costs a host call only without them.
        self.model = headers.owned(&config.model_header).or_else(|| property_string(host, ROUTER_MODEL_PROPERTY));
        self.backend = headers.owned(&config.backend_header).or_else(|| property_string(host, ROUTER_BACKEND_PROPERTY));
        if self.api == Api::Other {
            return Flow::Continue;
        }
        // The meter reads bodies as they are; ask the upstream not to compress.
        if let Err(e) = host.set_header(HeaderMap::Request, "accept-encoding", Some("identity")) {
            log::warn!("meter: {e}");
        }
        if end_of_stream {
            return Flow::Continue;
        }
        let declared = headers.get("content-length").and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.config().max_request_bytes) {
            return Flow::Continue;
        }
        // Hold the headers until the body is complete: the body may change
        // (include_usage), and content-length with it.
        self.reading_request = true;
        Flow::Pause
    }
}

impl HttpFilter for MeterFilter {
    fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        self.request_headers_readable = true;
        let flow = self.request_headers(host, end_of_stream);
        // Envoy forgets headers it passed on.
        self.request_headers_readable = flow == Flow::Pause;
        flow
    }

    fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        if !self.reading_request {
            return Flow::Continue;
        }
        if body_size > self.config().max_request_bytes {
            self.reading_request = false;
            return Flow::Continue;
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        self.reading_request = false;
        self.read_request_body(host, body_size);
        Flow::Continue
    }

    fn on_response_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        self.start_response(host, end_of_stream)
    }

    fn on_response_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Flow {
        self.response_chunk(host, body_size, end_of_stream)
    }

    fn on_log(&mut self, host: &dyn Host) {
        if self.logged {
            return;
        }
        self.logged = true;
        // The log phase reads the request headers as they ended up, with
        // what the filters after the meter (the guard: team) added.
        self.request_headers_readable = true;
        self.find_backend(host);
        self.finish(host);
        if let Some(outcome) = self.outcome {
            let team = self.team(host);
            self.log_fields(host, &outcome, team);
            self.record(host, &outcome, team);
        }
    }
}

#[cfg(test)]
mod tests;
