//! Table-driven tests over recorded provider examples (in
//! `tests/fixtures/translate/`, embedded so they run the same under wasm),
//! round-trip properties, and fuzzing with random splits, garbage and wrong
//! shapes.

use serde_json::{json, Value};

use super::*;
use crate::sse::Parser;

const CREATED: u64 = 1_750_000_000;
const TO_CLAUDE: &str = "claude-sonnet-4-5";
const TO_GPT: &str = "gpt-4o";

macro_rules! fixture {
    ($path:expr) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/translate/", $path))
    };
}

/// The two stream translators behind one interface, for the split and fuzz tests.
trait StreamTranslator {
    fn push(&mut self, chunk: &[u8]) -> Vec<u8>;
    fn finish(&mut self) -> Vec<u8>;
}

impl StreamTranslator for AnthropicToOpenAiStream {
    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        AnthropicToOpenAiStream::push(self, chunk)
    }
    fn finish(&mut self) -> Vec<u8> {
        AnthropicToOpenAiStream::finish(self)
    }
}

impl StreamTranslator for OpenAiToAnthropicStream {
    fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        OpenAiToAnthropicStream::push(self, chunk)
    }
    fn finish(&mut self) -> Vec<u8> {
        OpenAiToAnthropicStream::finish(self)
    }
}

fn anthropic_stream_with_usage() -> Box<dyn StreamTranslator> {
    Box::new(AnthropicToOpenAiStream::new(TO_GPT, CREATED, true))
}

fn anthropic_stream_without_usage() -> Box<dyn StreamTranslator> {
    Box::new(AnthropicToOpenAiStream::new(TO_GPT, CREATED, false))
}

fn openai_stream() -> Box<dyn StreamTranslator> {
    Box::new(OpenAiToAnthropicStream::new(TO_CLAUDE))
}

fn stream_in_chunks(mut translator: Box<dyn StreamTranslator>, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out: Vec<u8> = chunks.iter().flat_map(|chunk| translator.push(chunk)).collect();
    out.extend(translator.finish());
    out
}

enum Translation {
    Body(fn(&[u8]) -> Vec<u8>),
    Stream(fn() -> Box<dyn StreamTranslator>),
}

struct Case {
    name: &'static str,
    input: &'static [u8],
    expected: &'static [u8],
    translation: Translation,
}

macro_rules! case {
    ($name:literal, $ext:literal, $translation:expr) => {
        Case {
            name: $name,
            input: fixture!(concat!($name, ".in.", $ext)),
            expected: fixture!(concat!($name, ".out.", $ext)),
            translation: $translation,
        }
    };
}

fn cases() -> Vec<Case> {
    use Translation::{Body, Stream};
    vec![
        case!("openai_to_anthropic/request_tools", "json", Body(|b| openai_chat_to_anthropic(b, TO_CLAUDE, DEFAULT_MAX_TOKENS).unwrap())),
        case!("openai_to_anthropic/request_minimal", "json", Body(|b| openai_chat_to_anthropic(b, TO_CLAUDE, DEFAULT_MAX_TOKENS).unwrap())),
        case!("openai_to_anthropic/response_tool_calls", "json", Body(|b| openai_chat_response_to_anthropic(b, TO_CLAUDE).unwrap())),
        case!("openai_to_anthropic/response_text", "json", Body(|b| openai_chat_response_to_anthropic(b, TO_CLAUDE).unwrap())),
        case!("openai_to_anthropic/error_rate_limit", "json", Body(|b| openai_error_to_anthropic(b, 429))),
        case!("openai_to_anthropic/stream_tool_calls", "sse", Stream(openai_stream)),
        case!("openai_to_anthropic/stream_text", "sse", Stream(openai_stream)),
        case!("anthropic_to_openai/request_tools", "json", Body(|b| anthropic_to_openai_chat(b, TO_GPT).unwrap())),
        case!("anthropic_to_openai/request_minimal", "json", Body(|b| anthropic_to_openai_chat(b, TO_GPT).unwrap())),
        case!("anthropic_to_openai/response_tool_use", "json", Body(|b| anthropic_response_to_openai_chat(b, TO_GPT, CREATED).unwrap())),
        case!("anthropic_to_openai/response_text", "json", Body(|b| anthropic_response_to_openai_chat(b, TO_GPT, CREATED).unwrap())),
        case!("anthropic_to_openai/error_overloaded", "json", Body(|b| anthropic_error_to_openai(b, 529))),
        case!("anthropic_to_openai/stream_tool_use", "sse", Stream(anthropic_stream_with_usage)),
        case!("anthropic_to_openai/stream_thinking_text", "sse", Stream(anthropic_stream_without_usage)),
    ]
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// A stream's events as (name, data), with `[DONE]` as a JSON string.
/// Panics on data that is neither, so every test checks the framing too.
fn sse_events(bytes: &[u8]) -> Vec<(String, Value)> {
    let mut parser = Parser::new();
    let mut events = parser.push(bytes);
    events.extend(parser.push(b"\n\n"));
    events
        .into_iter()
        .map(|event| {
            let data = if event.data == "[DONE]" { json!("[DONE]") } else { json(event.data.as_bytes()) };
            (event.event, data)
        })
        .collect()
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

#[test]
fn recorded_examples_translate_as_expected() {
    for case in cases() {
        match case.translation {
            Translation::Body(translate) => {
                let (actual, expected) = (json(&translate(case.input)), json(case.expected));
                assert_eq!(actual, expected, "{}:\n{}", case.name, pretty(&actual));
            }
            Translation::Stream(translator) => {
                let actual = sse_events(&stream_in_chunks(translator(), &[case.input]));
                let expected = sse_events(case.expected);
                assert_eq!(actual, expected, "{}:\n{}", case.name, pretty(&actual));
            }
        }
    }
}

#[test]
fn anthropic_stream_event_names_match_their_type() {
    for case in cases() {
        if let (Translation::Stream(translator), true) = (&case.translation, case.name.starts_with("openai_to")) {
            for (name, data) in sse_events(&stream_in_chunks(translator(), &[case.input])) {
                assert_eq!(data["type"], json!(name), "{}", case.name);
            }
        }
    }
}

// ---- Round trips ----

fn o2a(body: &[u8]) -> Vec<u8> {
    openai_chat_to_anthropic(body, TO_CLAUDE, DEFAULT_MAX_TOKENS).unwrap()
}

fn a2o(body: &[u8]) -> Vec<u8> {
    anthropic_to_openai_chat(body, TO_GPT).unwrap()
}

/// Content as a list of parts, whether written as a string or as parts.
fn openai_parts(content: &Value) -> Value {
    match content {
        Value::String(text) => json!([{"type": "text", "text": text}]),
        Value::Null => json!([]),
        parts => {
            let mut parts = parts.clone();
            for part in parts.as_array_mut().unwrap() {
                // Anthropic has no image detail level.
                if let Some(image) = part.get_mut("image_url").and_then(Value::as_object_mut) {
                    image.remove("detail");
                }
            }
            parts
        }
    }
}

/// What an OpenAI request asks for, minus how it is spelled and minus what
/// is documented as not carried over (`seed`, `strict`, image `detail`,
/// `stream_options`, temperatures above Anthropic's maximum of 1).
fn openai_request_meaning(body: &[u8]) -> Value {
    let request = json(body);
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for message in request["messages"].as_array().unwrap() {
        let parts = openai_parts(&message["content"]);
        match message["role"].as_str().unwrap() {
            "system" | "developer" => system.extend(parts.as_array().unwrap().iter().cloned()),
            "assistant" => {
                let calls: Vec<Value> = message["tool_calls"].as_array().into_iter().flatten().map(|call| {
                    json!([call["id"], call["function"]["name"], json(call["function"]["arguments"].as_str().unwrap().as_bytes())])
                }).collect();
                messages.push(json!({"role": "assistant", "content": parts, "calls": calls}));
            }
            "tool" => messages.push(json!({"role": "tool", "id": message["tool_call_id"], "content": parts})),
            role => messages.push(json!({"role": role, "content": parts})),
        }
    }
    let tools: Vec<Value> = request["tools"].as_array().into_iter().flatten().map(|tool| {
        let mut function = tool["function"].clone();
        function.as_object_mut().unwrap().remove("strict");
        function.as_object_mut().unwrap().entry("parameters").or_insert(json!({"type": "object", "properties": {}}));
        function
    }).collect();
    json!({
        "system": system,
        "messages": messages,
        "max_tokens": request.get("max_completion_tokens").or(request.get("max_tokens")).cloned().unwrap_or(json!(DEFAULT_MAX_TOKENS)),
        "temperature": request["temperature"].as_f64().map(|t| t.min(1.0)),
        "top_p": request["top_p"],
        "stop": match &request["stop"] { Value::String(stop) => json!([stop]), stops => stops.clone() },
        "stream": request["stream"].as_bool().unwrap_or(false),
        "tools": tools,
        "tool_choice": request["tool_choice"],
        "parallel_tool_calls": request["parallel_tool_calls"].as_bool().unwrap_or(true),
        "user": request["user"],
    })
}

#[test]
fn openai_requests_keep_their_meaning_through_anthropic_and_back() {
    for case in cases().iter().filter(|c| c.name.starts_with("openai_to_anthropic/request")) {
        let round_trip = a2o(&o2a(case.input));
        assert_eq!(openai_request_meaning(&round_trip), openai_request_meaning(case.input), "{}", case.name);
    }
}

#[test]
fn one_translation_loses_all_that_is_lost() {
    // After the first translation, a round trip through the other API changes nothing.
    for case in cases().iter().filter(|c| c.name.contains("/request")) {
        let (once, thrice) = if case.name.starts_with("openai_to") {
            let once = o2a(case.input);
            let thrice = o2a(&a2o(&once));
            (once, thrice)
        } else {
            let once = a2o(case.input);
            let thrice = a2o(&o2a(&once));
            (once, thrice)
        };
        assert_eq!(json(&thrice), json(&once), "{}", case.name);
    }
}

/// What an OpenAI completion answers: text, tool calls (arguments parsed),
/// why it stopped and the token counts.
fn openai_answer(body: &[u8]) -> Value {
    let response = json(body);
    let choice = &response["choices"][0];
    let calls: Vec<Value> = choice["message"]["tool_calls"].as_array().into_iter().flatten().map(|call| {
        json!([call["id"], call["function"]["name"], json(call["function"]["arguments"].as_str().unwrap().as_bytes())])
    }).collect();
    let usage = &response["usage"];
    json!({
        "id": response["id"],
        "model": response["model"],
        "text": choice["message"]["content"].as_str().unwrap_or_default(),
        "calls": calls,
        "finish_reason": choice["finish_reason"],
        "usage": usage.is_object().then(|| json!([
            usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"],
            usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
        ])),
    })
}

#[test]
fn openai_responses_keep_their_meaning_through_anthropic_and_back() {
    for case in cases().iter().filter(|c| c.name.starts_with("openai_to_anthropic/response")) {
        let original = json(case.input);
        let model = original["model"].as_str().unwrap();
        let anthropic = openai_chat_response_to_anthropic(case.input, TO_CLAUDE).unwrap();
        let round_trip = anthropic_response_to_openai_chat(&anthropic, model, 0).unwrap();
        assert_eq!(openai_answer(&round_trip), openai_answer(case.input), "{}", case.name);
    }
}

#[test]
fn anthropic_responses_keep_their_meaning_through_openai_and_back() {
    // response_text is left out: it has what OpenAI cannot carry (thinking,
    // the matched stop sequence, cache writes).
    let original = fixture!("anthropic_to_openai/response_tool_use.in.json");
    let openai = anthropic_response_to_openai_chat(original, TO_GPT, CREATED).unwrap();
    let mut round_trip = json(&openai_chat_response_to_anthropic(&openai, "claude-sonnet-4-5-20250929").unwrap());
    let mut original = json(original);
    original["usage"].as_object_mut().unwrap().remove("service_tier");
    round_trip["usage"].as_object_mut().unwrap().remove("service_tier");
    assert_eq!(round_trip, original);
}

/// An OpenAI stream accumulated into the completion it describes, the way
/// the OpenAI SDKs do.
fn accumulate_openai(sse: &[u8]) -> Value {
    let (mut head, mut text, mut calls, mut finish_reason, mut usage) = (json!({}), String::new(), Vec::<Value>::new(), Value::Null, None);
    for (_, chunk) in sse_events(sse) {
        if chunk == "[DONE]" {
            continue;
        }
        head = json!({"id": chunk["id"], "created": chunk["created"], "model": chunk["model"]});
        if chunk["usage"].is_object() {
            usage = Some(chunk["usage"].clone());
        }
        for choice in chunk["choices"].as_array().unwrap() {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().unwrap() as usize;
                if calls.len() <= index {
                    calls.resize(index + 1, json!({"id": null, "type": "function", "function": {"name": null, "arguments": ""}}));
                }
                let entry = &mut calls[index];
                for (from, to) in [("/id", "/id"), ("/function/name", "/function/name")] {
                    if let Some(value) = call.pointer(from).filter(|v| v.is_string()) {
                        *entry.pointer_mut(to).unwrap() = value.clone();
                    }
                }
                let arguments = entry["function"]["arguments"].as_str().unwrap().to_owned();
                entry["function"]["arguments"] = json!(arguments + call["function"]["arguments"].as_str().unwrap_or_default());
            }
            if !choice["finish_reason"].is_null() {
                finish_reason = choice["finish_reason"].clone();
            }
        }
    }
    let content = if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) };
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    let mut completion = json!({
        "id": head["id"], "object": "chat.completion", "created": head["created"], "model": head["model"],
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
    });
    if let Some(usage) = usage {
        completion["usage"] = usage;
    }
    completion
}

/// An Anthropic stream accumulated into the message it describes, the way
/// the Anthropic SDKs do.
fn accumulate_anthropic(sse: &[u8]) -> Value {
    let mut message = Value::Null;
    let mut partial_json = std::collections::BTreeMap::<usize, String>::new();
    for (_, event) in sse_events(sse) {
        let index = event["index"].as_u64().unwrap_or(0) as usize;
        match event["type"].as_str().unwrap() {
            "message_start" => message = event["message"].clone(),
            "content_block_start" => message["content"].as_array_mut().unwrap().push(event["content_block"].clone()),
            "content_block_delta" => {
                let block = &mut message["content"][index];
                let delta = &event["delta"];
                match delta["type"].as_str().unwrap() {
                    "text_delta" => block["text"] = json!(block["text"].as_str().unwrap().to_owned() + delta["text"].as_str().unwrap()),
                    "input_json_delta" => partial_json.entry(index).or_default().push_str(delta["partial_json"].as_str().unwrap()),
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let Some(partial) = partial_json.remove(&index) {
                    message["content"][index]["input"] = if partial.is_empty() { json!({}) } else { json(partial.as_bytes()) };
                }
            }
            "message_delta" => {
                message["stop_reason"] = event["delta"]["stop_reason"].clone();
                message["stop_sequence"] = event["delta"]["stop_sequence"].clone();
                for (key, count) in event["usage"].as_object().unwrap() {
                    message["usage"][key] = count.clone();
                }
            }
            _ => {}
        }
    }
    message
}

#[test]
fn anthropic_streams_say_what_the_whole_response_says() {
    for case in cases().iter().filter(|c| c.name.starts_with("anthropic_to_openai/stream")) {
        let streamed = accumulate_openai(&stream_in_chunks(anthropic_stream_with_usage(), &[case.input]));
        let message = accumulate_anthropic(case.input).to_string();
        let whole = anthropic_response_to_openai_chat(message.as_bytes(), TO_GPT, CREATED).unwrap();
        assert_eq!(openai_answer(streamed.to_string().as_bytes()), openai_answer(&whole), "{}", case.name);
        assert_eq!(streamed["choices"][0]["message"]["tool_calls"].is_null(), json(&whole)["choices"][0]["message"]["tool_calls"].is_null());
    }
}

#[test]
fn openai_streams_say_what_the_whole_response_says() {
    for case in cases().iter().filter(|c| c.name.starts_with("openai_to_anthropic/stream")) {
        let streamed = accumulate_anthropic(&stream_in_chunks(openai_stream(), &[case.input]));
        let completion = accumulate_openai(case.input).to_string();
        let whole = openai_chat_response_to_anthropic(completion.as_bytes(), TO_CLAUDE).unwrap();
        assert_eq!(streamed, json(&whole), "{}", case.name);
    }
}

#[test]
fn streams_survive_a_round_trip() {
    let anthropic = fixture!("anthropic_to_openai/stream_tool_use.in.sse");
    let openai = stream_in_chunks(anthropic_stream_with_usage(), &[anthropic]);
    let back = stream_in_chunks(openai_stream(), &[&openai]);
    let (mut original, round_trip) = (accumulate_anthropic(anthropic), accumulate_anthropic(&back));
    original["model"] = json!(TO_CLAUDE);
    for key in ["cache_read_input_tokens", "cache_creation_input_tokens"] {
        original["usage"][key] = json!(0);
    }
    assert_eq!(round_trip, original);
}

// ---- Fuzzing: random splits, garbage, wrong shapes ----

/// xorshift64*: deterministic, dependency-free randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn streams_translate_the_same_however_they_are_split() {
    let mut rng = Rng(0x5eed);
    for case in cases() {
        let Translation::Stream(translator) = case.translation else { continue };
        let whole = stream_in_chunks(translator(), &[case.input]);
        let bytes: Vec<&[u8]> = case.input.chunks(1).collect();
        assert_eq!(stream_in_chunks(translator(), &bytes), whole, "{} byte by byte", case.name);
        for _ in 0..200 {
            let mut cuts: Vec<usize> = (0..rng.below(8)).map(|_| rng.below(case.input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([case.input.len()]) {
                chunks.push(&case.input[start..cut]);
                start = cut;
            }
            assert_eq!(stream_in_chunks(translator(), &chunks), whole, "{} split {:?}", case.name, chunks.iter().map(|c| c.len()).collect::<Vec<_>>());
        }
    }
}

/// Runs every entry point on `input`; the results may be errors but must
/// not be panics, and what is produced must be well-formed.
fn translate_everything(input: &[u8]) {
    let bodies = [
        openai_chat_to_anthropic(input, TO_CLAUDE, 1),
        anthropic_to_openai_chat(input, TO_GPT),
        anthropic_response_to_openai_chat(input, TO_GPT, 0),
        openai_chat_response_to_anthropic(input, TO_CLAUDE),
    ];
    for body in bodies.iter().flatten() {
        json(body);
    }
    assert!(json(&anthropic_error_to_openai(input, 502))["error"]["message"].is_string());
    assert_eq!(json(&openai_error_to_anthropic(input, 400))["type"], "error");
    for translator in [anthropic_stream_with_usage as fn() -> _, openai_stream] {
        let mut rng = Rng(input.len() as u64 + 1);
        let cut = rng.below(input.len() + 1);
        let out = stream_in_chunks(translator(), &[&input[..cut], &input[cut..]]);
        sse_events(&out);
    }
}

#[test]
fn garbage_and_mutated_examples_never_panic() {
    let mut rng = Rng(0xbad5eed);
    for _ in 0..300 {
        let garbage: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
        translate_everything(&garbage);
    }
    const SIGNIFICANT: &[u8] = b"{}[]\":,\n\\ 0a-";
    for case in cases() {
        translate_everything(case.input);
        for _ in 0..150 {
            let mut bytes = case.input.to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len());
                match rng.below(4) {
                    0 => bytes.truncate(at),
                    1 => bytes.insert(at, SIGNIFICANT[rng.below(SIGNIFICANT.len())]),
                    2 if at < bytes.len() => bytes[at] = rng.next() as u8,
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            translate_everything(&bytes);
        }
    }
}

fn random_value(rng: &mut Rng) -> Value {
    match rng.below(7) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(-1),
        3 => json!(1.5e300),
        4 => json!("[DONE]"),
        5 => json!([{}]),
        _ => json!({"type": "text"}),
    }
}

/// Replaces one node somewhere in `value` with something of another shape.
fn mutate(value: &mut Value, rng: &mut Rng) {
    let children = match value {
        Value::Array(items) => items.len(),
        Value::Object(fields) => fields.len(),
        _ => 0,
    };
    if children == 0 || rng.below(4) == 0 {
        *value = random_value(rng);
        return;
    }
    let child = rng.below(children);
    let next = match value {
        Value::Array(items) => items.get_mut(child),
        Value::Object(fields) => fields.values_mut().nth(child),
        _ => None,
    };
    mutate(next.unwrap(), rng);
}

#[test]
fn wrong_shapes_never_panic() {
    let mut rng = Rng(0x5a4e);
    for case in cases() {
        for _ in 0..150 {
            let input = match case.translation {
                Translation::Body(_) => {
                    let mut value = json(case.input);
                    mutate(&mut value, &mut rng);
                    value.to_string()
                }
                // One event's data changes shape; the framing stays.
                Translation::Stream(_) => {
                    let mut events = sse_events(case.input);
                    let at = rng.below(events.len());
                    mutate(&mut events[at].1, &mut rng);
                    events.iter().map(|(name, data)| {
                        let data = data.as_str().filter(|d| *d == "[DONE]").map_or_else(|| data.to_string(), str::to_owned);
                        if name.is_empty() { format!("data: {data}\n\n") } else { format!("event: {name}\ndata: {data}\n\n") }
                    }).collect()
                }
            };
            translate_everything(input.as_bytes());
        }
    }
}
