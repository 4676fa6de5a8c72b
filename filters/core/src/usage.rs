//! Token usage as providers report it: OpenAI JSON bodies and the final usage
//! chunk of their streams, Anthropic `message_start` / `message_delta` events,
//! plus the generated text of a response, for estimating when usage is missing.
//!
//! Nothing here fails: a body or event that does not parse simply carries no
//! usage and no text.

use crate::sse::Event;
use serde::Deserialize;

/// Tokens of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input: u64,
    /// Completion tokens.
    pub output: u64,
    /// Of `input`, the tokens read from the provider's prompt cache.
    pub cached_input: u64,
}

/// The API a request speaks, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI `/v1/chat/completions`.
    ChatCompletions,
    /// OpenAI legacy `/v1/completions`.
    Completions,
    /// OpenAI `/v1/embeddings`.
    Embeddings,
    /// Anthropic `/v1/messages`.
    Messages,
    /// Anything else: passed through, counted as a request without tokens.
    Other,
}

impl Api {
    pub fn from_path(path: &str) -> Self {
        let path = path.split(['?', '#']).next().unwrap_or_default().trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Self::ChatCompletions
        } else if path.ends_with("/completions") {
            Self::Completions
        } else if path.ends_with("/embeddings") {
            Self::Embeddings
        } else if path.ends_with("/messages") {
            Self::Messages
        } else {
            Self::Other
        }
    }

    /// Whether a stream of this API can carry an OpenAI usage chunk
    /// (`stream_options.include_usage`).
    pub fn has_stream_options(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Completions)
    }
}

/// The `usage` object of every provider shape we know, all fields optional.
#[derive(Debug, Default, Deserialize)]
struct RawUsage {
    // OpenAI chat / completions / embeddings
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    // Anthropic messages, OpenAI responses
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_tokens_details: Option<Details>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
}

impl RawUsage {
    fn cached(details: Option<&Details>) -> u64 {
        details.and_then(|d| d.cached_tokens).unwrap_or(0)
    }

    /// The usage this object states, if it states any.
    fn usage(&self) -> Option<Usage> {
        if self.prompt_tokens.is_some() || self.completion_tokens.is_some() {
            return Some(Usage {
                input: self.prompt_tokens.unwrap_or(0),
                output: self.completion_tokens.unwrap_or(0),
                cached_input: Self::cached(self.prompt_tokens_details.as_ref()),
            });
        }
        if self.input_tokens.is_none() && self.output_tokens.is_none() {
            return None;
        }
        let input = self.input_tokens.unwrap_or(0);
        if self.cache_read_input_tokens.is_some() || self.cache_creation_input_tokens.is_some() {
            // Anthropic: input_tokens excludes cache reads and writes.
            let read = self.cache_read_input_tokens.unwrap_or(0);
            let written = self.cache_creation_input_tokens.unwrap_or(0);
            return Some(Usage {
                input: input.saturating_add(read).saturating_add(written),
                output: self.output_tokens.unwrap_or(0),
                cached_input: read,
            });
        }
        Some(Usage {
            input,
            output: self.output_tokens.unwrap_or(0),
            cached_input: Self::cached(self.input_tokens_details.as_ref()),
        })
    }
}

/// Generated text kept for estimating output tokens, bounded in memory: past
/// `cap` bytes only the byte count grows, and the estimate scales the kept
/// text's token count by the byte ratio.
#[derive(Debug, Clone, Default)]
pub struct OutputText {
    kept: String,
    total_bytes: u64,
    cap: usize,
}

impl OutputText {
    pub fn with_cap(cap: usize) -> Self {
        Self { kept: String::new(), total_bytes: 0, cap }
    }

    pub fn push(&mut self, text: &str) {
        self.total_bytes = self.total_bytes.saturating_add(text.len() as u64);
        let room = self.cap.saturating_sub(self.kept.len());
        if text.len() <= room {
            self.kept.push_str(text);
        } else {
            let mut end = room;
            while end > 0 && !text.is_char_boundary(end) {
                end -= 1;
            }
            self.kept.push_str(text.get(..end).unwrap_or_default());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total_bytes == 0
    }

    pub fn kept(&self) -> &str {
        &self.kept
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Scales a token count of [`Self::kept`] to the whole text.
    pub fn scale(&self, kept_tokens: u64) -> u64 {
        let kept = self.kept.len() as u64;
        if kept == 0 || kept >= self.total_bytes {
            return kept_tokens;
        }
        let scaled = u128::from(kept_tokens) * u128::from(self.total_bytes) / u128::from(kept);
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }
}

// ---- non-streaming bodies -------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct ResponseBody {
    usage: Option<RawUsage>,
    #[serde(default)]
    choices: Vec<Choice>,
    /// Anthropic content blocks.
    #[serde(default)]
    content: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Choice {
    message: Option<ChoiceMessage>,
    text: Option<String>,
    delta: Option<ChoiceMessage>,
}

#[derive(Debug, Default, Deserialize)]
struct ChoiceMessage {
    content: Option<serde_json::Value>,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
}

#[derive(Debug, Default, Deserialize)]
struct ToolCall {
    function: Option<Function>,
}

#[derive(Debug, Default, Deserialize)]
struct Function {
    arguments: Option<String>,
}

fn push_message(message: &ChoiceMessage, text: &mut OutputText) {
    match &message.content {
        Some(serde_json::Value::String(s)) => text.push(s),
        Some(serde_json::Value::Array(parts)) => {
            for part in parts {
                if let Some(s) = part.get("text").and_then(serde_json::Value::as_str) {
                    text.push(s);
                }
            }
        }
        _ => {}
    }
    for call in &message.tool_calls {
        if let Some(arguments) = call.function.as_ref().and_then(|f| f.arguments.as_deref()) {
            text.push(arguments);
        }
    }
}

fn push_anthropic_blocks(content: &serde_json::Value, text: &mut OutputText) {
    let Some(blocks) = content.as_array() else { return };
    for block in blocks {
        if let Some(s) = block.get("text").and_then(serde_json::Value::as_str) {
            text.push(s);
        } else if let Some(input) = block.get("input") {
            text.push(&input.to_string());
        }
    }
}

/// What a complete (non-streamed) response body tells: the usage it reports
/// and the generated text.
#[derive(Debug, Default)]
pub struct ParsedBody {
    /// `None` for a body that is not JSON of a known shape.
    pub parsed: bool,
    pub usage: Option<Usage>,
    pub text: OutputText,
}

/// Parses a complete JSON response body of any supported API.
pub fn parse_body(body: &[u8], text_cap: usize) -> ParsedBody {
    let mut out = ParsedBody { text: OutputText::with_cap(text_cap), ..ParsedBody::default() };
    let Ok(response) = serde_json::from_slice::<ResponseBody>(body) else {
        return out;
    };
    out.parsed = true;
    out.usage = response.usage.as_ref().and_then(RawUsage::usage);
    for choice in &response.choices {
        if let Some(message) = &choice.message {
            push_message(message, &mut out.text);
        }
        if let Some(s) = &choice.text {
            out.text.push(s);
        }
    }
    if let Some(content) = &response.content {
        push_anthropic_blocks(content, &mut out.text);
    }
    out
}

/// Finds a `"usage": {...}` object near the end of a body too large to keep
/// whole (OpenAI and Anthropic put `usage` last). `tail` is the body's last
/// bytes.
pub fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut search_end = tail.len();
    while let Some(at) = tail.get(..search_end).and_then(|t| t.windows(KEY.len()).rposition(|w| w == KEY)) {
        let rest = tail.get(at + KEY.len()..).unwrap_or_default();
        let rest = trim_start(rest);
        if let Some(rest) = rest.strip_prefix(b":") {
            let rest = trim_start(rest);
            let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<RawUsage>();
            if let Some(Ok(raw)) = stream.next() {
                if let Some(usage) = raw.usage() {
                    return Some(usage);
                }
            }
        }
        search_end = at;
    }
    None
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

// ---- streams ----------------------------------------------------------------

/// What one stream event was, for the meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventInfo {
    /// Carried generated content (the first one marks the first token).
    pub content: bool,
    /// An OpenAI chunk with no choices and a usage object: the extra chunk
    /// `stream_options.include_usage` adds.
    pub usage_only: bool,
    /// An OpenAI chunk whose top-level `usage` is `null`, as every chunk is
    /// when `include_usage` is on.
    pub null_usage: bool,
}

#[derive(Debug, Default, Deserialize)]
struct OpenAiChunk {
    choices: Option<Vec<Choice>>,
    #[serde(default, deserialize_with = "nullable")]
    usage: Option<Option<RawUsage>>,
}

/// Distinguishes a missing field (`None`) from an explicit `null` (`Some(None)`).
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize)]
struct AnthropicEvent {
    #[serde(rename = "type", default)]
    kind: String,
    message: Option<AnthropicMessage>,
    usage: Option<RawUsage>,
    delta: Option<AnthropicDelta>,
    content_block: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct AnthropicMessage {
    usage: Option<RawUsage>,
}

#[derive(Debug, Default, Deserialize)]
struct AnthropicDelta {
    text: Option<String>,
    partial_json: Option<String>,
}

/// Accumulates what a streamed response tells, event by event.
#[derive(Debug)]
pub struct StreamUsage {
    api: Api,
    usage: Option<Usage>,
    text: OutputText,
    done: bool,
}

impl StreamUsage {
    pub fn new(api: Api, text_cap: usize) -> Self {
        Self { api, usage: None, text: OutputText::with_cap(text_cap), done: false }
    }

    /// The usage reported so far (for Anthropic, `message_start` then updated
    /// by `message_delta`).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub fn text(&self) -> &OutputText {
        &self.text
    }

    /// Whether the stream's terminal event (`[DONE]`, `message_stop`) arrived.
    pub fn done(&self) -> bool {
        self.done
    }

    pub fn event(&mut self, event: &Event) -> EventInfo {
        match self.api {
            Api::Messages => self.anthropic(event),
            _ => self.openai(event),
        }
    }

    fn openai(&mut self, event: &Event) -> EventInfo {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return EventInfo::default();
        }
        let Ok(chunk) = serde_json::from_str::<OpenAiChunk>(data) else {
            return EventInfo::default();
        };
        let mut info = EventInfo::default();
        let choices = chunk.choices.unwrap_or_default();
        for choice in &choices {
            let before = self.text.total_bytes();
            if let Some(delta) = &choice.delta {
                push_message(delta, &mut self.text);
            }
            if let Some(message) = &choice.message {
                push_message(message, &mut self.text);
            }
            if let Some(s) = &choice.text {
                self.text.push(s);
            }
            info.content |= self.text.total_bytes() > before;
        }
        match chunk.usage {
            Some(Some(raw)) => {
                if let Some(usage) = raw.usage() {
                    self.usage = Some(usage);
                    info.usage_only = choices.is_empty();
                }
            }
            Some(None) => info.null_usage = true,
            None => {}
        }
        info
    }

    fn anthropic(&mut self, event: &Event) -> EventInfo {
        let Ok(parsed) = serde_json::from_str::<AnthropicEvent>(&event.data) else {
            return EventInfo::default();
        };
        let kind = if event.event.is_empty() { parsed.kind.as_str() } else { event.event.as_str() };
        let mut info = EventInfo::default();
        match kind {
            "message_start" => {
                if let Some(usage) = parsed.message.as_ref().and_then(|m| m.usage.as_ref()).and_then(RawUsage::usage) {
                    self.usage = Some(usage);
                }
            }
            "message_delta" => {
                if let Some(raw) = &parsed.usage {
                    // Counts in message_delta are cumulative; input counts
                    // appear there only in newer API versions.
                    let mut usage = self.usage.unwrap_or_default();
                    if let Some(output) = raw.output_tokens {
                        usage.output = output;
                    }
                    if raw.input_tokens.is_some() {
                        if let Some(stated) = raw.usage() {
                            usage.input = stated.input;
                            usage.cached_input = stated.cached_input;
                        }
                    }
                    self.usage = Some(usage);
                }
            }
            "content_block_start" => {
                if let Some(s) = parsed.content_block.as_ref().and_then(|b| b.get("text")).and_then(serde_json::Value::as_str) {
                    let before = self.text.total_bytes();
                    self.text.push(s);
                    info.content = self.text.total_bytes() > before;
                }
            }
            "content_block_delta" => {
                if let Some(delta) = &parsed.delta {
                    let before = self.text.total_bytes();
                    if let Some(s) = &delta.text {
                        self.text.push(s);
                    }
                    if let Some(s) = &delta.partial_json {
                        self.text.push(s);
                    }
                    info.content = self.text.total_bytes() > before;
                }
            }
            "message_stop" => self.done = true,
            _ => {}
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::Parser;

    #[test]
    fn api_from_path() {
        assert_eq!(Api::from_path("/v1/chat/completions"), Api::ChatCompletions);
        assert_eq!(Api::from_path("/v1/chat/completions?x=1"), Api::ChatCompletions);
        assert_eq!(Api::from_path("/openai/v1/completions/"), Api::Completions);
        assert_eq!(Api::from_path("/v1/embeddings"), Api::Embeddings);
        assert_eq!(Api::from_path("/v1/messages"), Api::Messages);
        assert_eq!(Api::from_path("/v1/models"), Api::Other);
        assert!(Api::ChatCompletions.has_stream_options());
        assert!(!Api::Messages.has_stream_options());
    }

    #[test]
    fn openai_json_usage_and_text() {
        let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there."},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let parsed = parse_body(body, 1024);
        assert!(parsed.parsed);
        assert_eq!(parsed.usage, Some(Usage { input: 12, output: 3, cached_input: 4 }));
        assert_eq!(parsed.text.kept(), "Hello there.");
    }

    #[test]
    fn embeddings_and_completions_and_tool_calls() {
        let e = parse_body(br#"{"data":[],"usage":{"prompt_tokens":7,"total_tokens":7}}"#, 10);
        assert_eq!(e.usage, Some(Usage { input: 7, output: 0, cached_input: 0 }));
        let c = parse_body(br#"{"choices":[{"text":"abc"}]}"#, 10);
        assert_eq!(c.usage, None);
        assert_eq!(c.text.kept(), "abc");
        let t = parse_body(
            br#"{"choices":[{"message":{"content":null,"tool_calls":[{"function":{"name":"f","arguments":"{\"a\":1}"}}]}}]}"#,
            100,
        );
        assert_eq!(t.text.kept(), "{\"a\":1}");
    }

    #[test]
    fn anthropic_json_usage_counts_cache() {
        let body = br#"{"type":"message","content":[{"type":"text","text":"Hi."},{"type":"tool_use","input":{"q":"x"}}],
            "usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":20}}"#;
        let parsed = parse_body(body, 1024);
        assert_eq!(parsed.usage, Some(Usage { input: 130, output: 5, cached_input: 100 }));
        assert_eq!(parsed.text.kept(), "Hi.{\"q\":\"x\"}");
        let plain = parse_body(br#"{"content":[],"usage":{"input_tokens":10,"output_tokens":5}}"#, 10);
        assert_eq!(plain.usage, Some(Usage { input: 10, output: 5, cached_input: 0 }));
    }

    #[test]
    fn responses_api_usage() {
        let parsed = parse_body(br#"{"usage":{"input_tokens":9,"output_tokens":2,"input_tokens_details":{"cached_tokens":3}}}"#, 10);
        assert_eq!(parsed.usage, Some(Usage { input: 9, output: 2, cached_input: 3 }));
    }

    #[test]
    fn garbage_bodies_carry_nothing() {
        for body in [&b"not json"[..], b"", b"[1,2]", b"{\"usage\": \"lots\"}", b"{\"usage\":{\"prompt_tokens\":-1}}", b"\xff\xfe"] {
            let parsed = parse_body(body, 10);
            assert_eq!(parsed.usage, None, "{body:?}");
        }
        assert!(!parse_body(b"<html>", 10).parsed);
        assert!(parse_body(b"{}", 10).parsed);
    }

    #[test]
    fn output_text_is_capped_and_scaled() {
        let mut text = OutputText::with_cap(5);
        text.push("abc");
        text.push("déf"); // 'é' straddles the cap: cut at the char boundary
        assert_eq!(text.kept(), "abcd");
        assert_eq!(text.total_bytes(), 7);
        assert_eq!(text.scale(4), 7);
        let small = OutputText::with_cap(100);
        assert_eq!(small.scale(3), 3);
    }

    #[test]
    fn usage_found_in_a_tail() {
        let tail = br#"aaa"}}],"usage":{"prompt_tokens":5,"completion_tokens":9000,"total_tokens":9005}}"#;
        assert_eq!(usage_in_tail(tail), Some(Usage { input: 5, output: 9000, cached_input: 0 }));
        assert_eq!(usage_in_tail(br#"...,"usage": null}"#), None);
        assert_eq!(usage_in_tail(br#""usage":{"prompt_tokens":1}, "text":"\"usage\": 3"}"#), Some(Usage { input: 1, output: 0, cached_input: 0 }));
        assert_eq!(usage_in_tail(b"\"usage\":{\"prompt_tok"), None);
        assert_eq!(usage_in_tail(b""), None);
    }

    fn feed(api: Api, stream: &[u8]) -> (StreamUsage, Vec<EventInfo>) {
        let mut parser = Parser::new();
        let mut usage = StreamUsage::new(api, 1 << 20);
        let infos = parser.push(stream).iter().map(|e| usage.event(e)).collect();
        (usage, infos)
    }

    #[test]
    fn openai_stream_with_usage_chunk() {
        let stream = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":1,\"total_tokens\":9}}\n\n\
data: [DONE]\n\n";
        let (usage, infos) = feed(Api::ChatCompletions, stream);
        assert_eq!(usage.usage(), Some(Usage { input: 8, output: 1, cached_input: 0 }));
        assert_eq!(usage.text().kept(), "Hello");
        assert!(usage.done());
        assert_eq!(infos.iter().map(|i| i.content).collect::<Vec<_>>(), [false, true, false, false, false]);
        assert_eq!(infos.iter().map(|i| i.usage_only).collect::<Vec<_>>(), [false, false, false, true, false]);
        assert_eq!(infos.iter().map(|i| i.null_usage).collect::<Vec<_>>(), [true, true, true, false, false]);
    }

    #[test]
    fn completions_stream_text() {
        let (usage, infos) = feed(Api::Completions, b"data: {\"choices\":[{\"text\":\"Hi \"}]}\n\ndata: {\"choices\":[{\"text\":\"you\"}]}\n\n");
        assert_eq!(usage.text().kept(), "Hi you");
        assert!(infos.iter().all(|i| i.content));
        assert!(!usage.done());
        assert_eq!(usage.usage(), None);
    }

    #[test]
    fn anthropic_stream_usage() {
        let stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1,\"cache_read_input_tokens\":5}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\":\"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let (usage, infos) = feed(Api::Messages, stream);
        assert_eq!(usage.usage(), Some(Usage { input: 25, output: 7, cached_input: 5 }));
        assert_eq!(usage.text().kept(), "Hello");
        assert!(usage.done());
        assert_eq!(infos.iter().filter(|i| i.content).count(), 1);
    }

    #[test]
    fn anthropic_message_delta_with_input_counts() {
        let stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":22,\"output_tokens\":9,\"cache_read_input_tokens\":2}}\n\n";
        let (usage, _) = feed(Api::Messages, stream);
        assert_eq!(usage.usage(), Some(Usage { input: 24, output: 9, cached_input: 2 }));
    }

    #[test]
    fn garbage_events_carry_nothing() {
        for api in [Api::ChatCompletions, Api::Messages] {
            let (usage, infos) = feed(api, b"data: {not json\n\ndata: \xff\xfe\n\nevent: message_start\ndata: []\n\n");
            assert_eq!(usage.usage(), None);
            assert!(infos.iter().all(|i| *i == EventInfo::default()));
        }
    }
}
