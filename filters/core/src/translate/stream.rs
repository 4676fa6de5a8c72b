//! Streamed responses. Each translator is fed the upstream body in chunks
//! split at arbitrary bytes and returns the translated server-sent events
//! completed so far; `finish` at the end of the upstream body closes the
//! client's stream whatever state the upstream left it in.
//!
//! Errors inside a stream (an upstream `error` event, an event that is not
//! JSON, a stream cut before its end) become the client API's error event,
//! after which the translator emits nothing more.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::response::{anthropic_error, openai_error};
use super::{anthropic_error_type_for_openai, finish_reason_for, stop_reason_for, with_field, Usage};
use crate::sse::{Event, Parser};

const CUT_SHORT: &str = "upstream stream ended before the response was complete";

/// Anthropic Messages events → OpenAI `chat.completion.chunk`s.
#[derive(Debug)]
pub struct AnthropicToOpenAiStream {
    events: Parser,
    model: String,
    created: u64,
    include_usage: bool,
    id: String,
    usage: Usage,
    /// Content block index → tool call index: OpenAI numbers tool calls
    /// among themselves, Anthropic numbers all content blocks.
    tool_calls: BTreeMap<u64, usize>,
    finish_reason: Option<&'static str>,
    done: bool,
}

impl AnthropicToOpenAiStream {
    /// `requested_model` is the model the client asked for, `created` the
    /// Unix time to stamp chunks with, and `include_usage` the client's
    /// `stream_options.include_usage` (Anthropic always reports usage).
    pub fn new(requested_model: &str, created: u64, include_usage: bool) -> Self {
        Self {
            events: Parser::new(),
            model: requested_model.to_owned(),
            created,
            include_usage,
            id: String::new(),
            usage: Usage::default(),
            tool_calls: BTreeMap::new(),
            finish_reason: None,
            done: false,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        translate_chunk(self, chunk)
    }

    /// End of the upstream body. After `message_stop` or an error: nothing.
    /// After `message_delta` (the stop reason is known): what `message_stop`
    /// would have sent, the usage chunk if asked for and `[DONE]`. Earlier:
    /// an error chunk, so the client does not take a cut answer for a whole
    /// one, and no `[DONE]`.
    pub fn finish(&mut self) -> Vec<u8> {
        translate_end(self)
    }

    fn translate_event(&mut self, data: &Value, out: &mut Vec<u8>) {
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match data.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message_start" => {
                self.id = data.pointer("/message/id").and_then(Value::as_str).unwrap_or_default().to_owned();
                if let Some(usage) = data.pointer("/message/usage") {
                    self.usage.update_from_anthropic(usage);
                }
                self.chunk(json!({"role": "assistant", "content": ""}), out);
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => self.text(block.get("text"), out),
                    Some("tool_use") => {
                        let tool_index = self.tool_calls.len();
                        self.tool_calls.insert(index, tool_index);
                        let text = |key| block.get(key).and_then(Value::as_str).unwrap_or_default();
                        // Anthropic streams the input as deltas after an empty `{}`.
                        let input = block.get("input").filter(|i| i.as_object().is_some_and(|o| !o.is_empty()));
                        let call = json!({
                            "index": tool_index,
                            "id": text("id"),
                            "type": "function",
                            "function": {"name": text("name"), "arguments": input.map(Value::to_string).unwrap_or_default()},
                        });
                        self.chunk(json!({"tool_calls": [call]}), out);
                    }
                    // Thinking is not part of an OpenAI answer.
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => self.text(delta.get("text"), out),
                    Some("input_json_delta") => {
                        let partial = delta.get("partial_json").and_then(Value::as_str).unwrap_or_default();
                        if let (Some(tool_index), false) = (self.tool_calls.get(&index), partial.is_empty()) {
                            let call = json!({"index": tool_index, "function": {"arguments": partial}});
                            self.chunk(json!({"tool_calls": [call]}), out);
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(usage) = data.get("usage") {
                    self.usage.update_from_anthropic(usage);
                }
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    let finish_reason = finish_reason_for(reason);
                    self.finish_reason = Some(finish_reason);
                    self.write(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason}]), None, out);
                }
            }
            "message_stop" => self.complete(out),
            "error" => {
                let error = data.get("error").unwrap_or(&Value::Null);
                let text = |key| error.get(key).and_then(Value::as_str).unwrap_or_default();
                self.fail(text("type"), text("message"), out);
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
    }

    fn text(&self, text: Option<&Value>, out: &mut Vec<u8>) {
        if let Some(text) = text.and_then(Value::as_str).filter(|t| !t.is_empty()) {
            self.chunk(json!({"content": text}), out);
        }
    }

    fn chunk(&self, delta: Value, out: &mut Vec<u8>) {
        self.write(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]), None, out);
    }

    fn write(&self, choices: Value, usage: Option<Value>, out: &mut Vec<u8>) {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk = with_field(chunk, "usage", usage);
        }
        data_line(&chunk.to_string().into_bytes(), out);
    }

}

impl EventTranslator for AnthropicToOpenAiStream {
    fn events(&mut self) -> &mut Parser {
        &mut self.events
    }

    fn done(&self) -> bool {
        self.done
    }

    fn stopped(&self) -> bool {
        self.finish_reason.is_some()
    }

    fn on_event(&mut self, data: &Value, out: &mut Vec<u8>) {
        self.translate_event(data, out);
    }

    fn complete(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            self.write(json!([]), Some(self.usage.to_openai()), out);
        }
        data_line(b"[DONE]", out);
        self.done = true;
    }

    fn fail(&mut self, anthropic_type: &str, message: &str, out: &mut Vec<u8>) {
        data_line(&openai_error(anthropic_type, message), out);
        self.done = true;
    }
}

/// OpenAI `chat.completion.chunk`s → Anthropic Messages events.
///
/// OpenAI reports usage only at the end of a stream (when asked, as
/// [`super::anthropic_to_openai_chat`] does), so `message_start` carries zero
/// input tokens unless the first chunk has usage, and `message_delta` carries
/// the full counts, as Anthropic's own `message_delta` does.
#[derive(Debug)]
pub struct OpenAiToAnthropicStream {
    events: Parser,
    model: String,
    /// Set once `message_start` is sent.
    id: Option<String>,
    /// Content blocks started so far: the index of the next one.
    blocks: u64,
    open: Option<OpenBlock>,
    /// OpenAI tool call index → content block index.
    tool_blocks: BTreeMap<u64, u64>,
    stop_reason: Option<&'static str>,
    usage: Usage,
    done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text(u64),
    ToolUse(u64),
}

impl OpenAiToAnthropicStream {
    /// `requested_model` is the model the client asked for.
    pub fn new(requested_model: &str) -> Self {
        Self {
            events: Parser::new(),
            model: requested_model.to_owned(),
            id: None,
            blocks: 0,
            open: None,
            tool_blocks: BTreeMap::new(),
            stop_reason: None,
            usage: Usage::default(),
            done: false,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        translate_chunk(self, chunk)
    }

    /// End of the upstream body. After `[DONE]` or an error: nothing. After
    /// a `finish_reason` (only `[DONE]` missing): the closing events, as
    /// `[DONE]` would have. Earlier: an `error` event, so the client does not
    /// take a cut answer for a whole one.
    pub fn finish(&mut self) -> Vec<u8> {
        translate_end(self)
    }

    fn translate_event(&mut self, data: &Value, out: &mut Vec<u8>) {
        if data.as_str() == Some("[DONE]") {
            return self.complete(out);
        }
        if let Some(error) = data.get("error").filter(|e| !e.is_null()) {
            let text = |key| error.get(key).and_then(Value::as_str).unwrap_or_default();
            return self.fail(anthropic_error_type_for_openai(text("type")), text("message"), out);
        }
        if let Some(usage) = data.get("usage").filter(|u| u.is_object()) {
            self.usage = Usage::from_openai(usage);
        }
        self.start(data.get("id").and_then(Value::as_str), out);
        let choices = data.get("choices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        // Anthropic has one answer: the first choice (requests with n > 1 are refused).
        let Some(choice) = choices.iter().find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0) else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        for key in ["content", "refusal"] {
            if let Some(text) = delta.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                self.text(text, out);
            }
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            self.tool_call(call, out);
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.close_block(out);
            self.stop_reason = Some(stop_reason_for(reason));
        }
    }

    fn start(&mut self, id: Option<&str>, out: &mut Vec<u8>) {
        if self.id.is_some() {
            return;
        }
        let id = id.unwrap_or_default().to_owned();
        let message = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": self.usage.to_anthropic(),
        });
        self.id = Some(id);
        event("message_start", json!({"message": message}), out);
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        let block = match self.open {
            Some(OpenBlock::Text(block)) => block,
            _ => self.open_block(OpenBlock::Text, json!({"type": "text", "text": ""}), out),
        };
        event("content_block_delta", json!({"index": block, "delta": {"type": "text_delta", "text": text}}), out);
    }

    /// A tool call delta: one with an `id` starts a call; the others carry
    /// more arguments for the call of their `index` (or the open one).
    /// OpenAI streams calls one after another; arguments for a call whose
    /// block is already closed still go to that block's index.
    fn tool_call(&mut self, call: &Value, out: &mut Vec<u8>) {
        let id = call.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
        let index = call.get("index").and_then(Value::as_u64);
        let known = match (index, self.open) {
            (Some(index), _) => self.tool_blocks.get(&index).copied(),
            (None, Some(OpenBlock::ToolUse(block))) => Some(block),
            (None, _) => None,
        };
        let block = match (id, known) {
            (None, Some(block)) => block,
            _ => {
                let call_index = index.unwrap_or(self.tool_blocks.len() as u64);
                // Some OpenAI-compatible servers omit ids; the client needs one to answer.
                let id = id.map_or_else(|| format!("toolu_{}_{call_index}", self.id.as_deref().unwrap_or_default()), str::to_owned);
                let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
                let start = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                let block = self.open_block(OpenBlock::ToolUse, start, out);
                self.tool_blocks.insert(call_index, block);
                block
            }
        };
        if let Some(arguments) = call.pointer("/function/arguments").and_then(Value::as_str).filter(|a| !a.is_empty()) {
            let delta = json!({"type": "input_json_delta", "partial_json": arguments});
            event("content_block_delta", json!({"index": block, "delta": delta}), out);
        }
    }

    fn open_block(&mut self, kind: fn(u64) -> OpenBlock, content_block: Value, out: &mut Vec<u8>) -> u64 {
        self.close_block(out);
        let block = self.blocks;
        self.blocks += 1;
        self.open = Some(kind(block));
        event("content_block_start", json!({"index": block, "content_block": content_block}), out);
        block
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some(OpenBlock::Text(block) | OpenBlock::ToolUse(block)) = self.open.take() {
            event("content_block_stop", json!({"index": block}), out);
        }
    }

}

impl EventTranslator for OpenAiToAnthropicStream {
    fn events(&mut self) -> &mut Parser {
        &mut self.events
    }

    fn done(&self) -> bool {
        self.done
    }

    fn stopped(&self) -> bool {
        self.stop_reason.is_some()
    }

    fn on_event(&mut self, data: &Value, out: &mut Vec<u8>) {
        self.translate_event(data, out);
    }

    fn complete(&mut self, out: &mut Vec<u8>) {
        self.start(None, out);
        self.close_block(out);
        let delta = json!({"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null});
        event("message_delta", json!({"delta": delta, "usage": self.usage.to_anthropic()}), out);
        event("message_stop", json!({}), out);
        self.done = true;
    }

    fn fail(&mut self, error_type: &str, message: &str, out: &mut Vec<u8>) {
        write_event("error", &anthropic_error(error_type, message), out);
        self.done = true;
    }
}

/// What the two stream translators share: an upstream event loop that
/// stops at the first error, and a close for a stream the upstream cut.
trait EventTranslator {
    fn events(&mut self) -> &mut Parser;
    /// Whether the client's stream has ended (completed or failed).
    fn done(&self) -> bool;
    /// Whether the upstream said why it stopped, so only its end is missing.
    fn stopped(&self) -> bool;
    fn on_event(&mut self, data: &Value, out: &mut Vec<u8>);
    fn complete(&mut self, out: &mut Vec<u8>);
    fn fail(&mut self, error_type: &str, message: &str, out: &mut Vec<u8>);
}

fn translate_chunk(translator: &mut impl EventTranslator, chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in translator.events().push(chunk) {
        if translator.done() {
            break;
        }
        match parse(&event) {
            Some(Ok(data)) => translator.on_event(&data, &mut out),
            Some(Err(e)) => translator.fail("api_error", &format!("malformed upstream event: {e}"), &mut out),
            None => {}
        }
    }
    out
}

fn translate_end(translator: &mut impl EventTranslator) -> Vec<u8> {
    let mut out = Vec::new();
    // A last event may lack only its blank line; a cut one is dropped.
    for event in translator.events().push(b"\n\n") {
        if let (false, Some(Ok(data))) = (translator.done(), parse(&event)) {
            translator.on_event(&data, &mut out);
        }
    }
    if !translator.done() {
        if translator.stopped() {
            translator.complete(&mut out);
        } else {
            translator.fail("api_error", CUT_SHORT, &mut out);
        }
    }
    out
}

/// An event's data as JSON (`[DONE]` as a JSON string); `None` for an event
/// without data.
fn parse(event: &Event) -> Option<Result<Value, serde_json::Error>> {
    let data = event.data.trim();
    match data {
        "" => None,
        "[DONE]" => Some(Ok(Value::from("[DONE]"))),
        _ => Some(serde_json::from_str(data)),
    }
}

fn data_line(data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// An Anthropic event: its name, repeated as its data's `type`.
fn event(name: &str, fields: Value, out: &mut Vec<u8>) {
    let mut data = serde_json::Map::new();
    data.insert("type".into(), name.into());
    if let Value::Object(fields) = fields {
        data.extend(fields);
    }
    write_event(name, &Value::Object(data).to_string().into_bytes(), out);
}

fn write_event(name: &str, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    data_line(data, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each event of a translated stream as (name, data), `[DONE]` as a string.
    fn events(bytes: &[u8]) -> Vec<(String, Value)> {
        let mut parser = Parser::new();
        parser.push(bytes).into_iter().map(|e| (e.event, parse(&Event { event: String::new(), data: e.data }).unwrap().unwrap())).collect()
    }

    fn anthropic_event(data: Value) -> Vec<u8> {
        format!("event: {}\ndata: {data}\n\n", data["type"].as_str().unwrap()).into_bytes()
    }

    fn openai_chunk(delta: Value, finish_reason: Value) -> Vec<u8> {
        let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]});
        format!("data: {chunk}\n\n").into_bytes()
    }

    fn message_start() -> Vec<u8> {
        anthropic_event(json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 5, "output_tokens": 1}}}))
    }

    fn text_delta(text: &str) -> Vec<u8> {
        anthropic_event(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}))
    }

    #[test]
    fn an_anthropic_stream_cut_mid_answer_ends_in_an_error_without_done() {
        let mut stream = AnthropicToOpenAiStream::new("gpt", 1, true);
        let mut out = stream.push(&message_start());
        out.extend(stream.push(&text_delta("Hel")));
        out.extend(stream.push(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"ind"));
        let tail = stream.finish();
        let tail = events(&tail);
        assert_eq!(tail.len(), 1, "{tail:?}");
        assert_eq!(tail[0].1["error"]["message"], CUT_SHORT);
        assert_eq!(tail[0].1["error"]["type"], "server_error");
        assert!(stream.push(&text_delta("lo")).is_empty() && stream.finish().is_empty(), "nothing after the end");
    }

    #[test]
    fn an_anthropic_stream_cut_after_its_stop_reason_closes_normally() {
        let mut stream = AnthropicToOpenAiStream::new("gpt", 1, true);
        stream.push(&message_start());
        let delta = json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 9}});
        // The last event lacks only its blank line.
        let mut last = anthropic_event(delta);
        last.pop();
        assert!(stream.push(&last).is_empty());
        let tail = events(&stream.finish());
        let data: Vec<&Value> = tail.iter().map(|(_, data)| data).collect();
        assert_eq!(data[0]["choices"][0]["finish_reason"], "length");
        assert_eq!(data[1]["usage"], json!({"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14, "prompt_tokens_details": {"cached_tokens": 0}}));
        assert_eq!(data[2], "[DONE]");
        assert_eq!(data.len(), 3);
    }

    #[test]
    fn an_empty_anthropic_stream_is_an_error() {
        let tail = events(&AnthropicToOpenAiStream::new("gpt", 1, false).finish());
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].1["error"]["message"], CUT_SHORT);
    }

    #[test]
    fn an_anthropic_error_event_becomes_an_openai_error_and_ends_the_stream() {
        let mut stream = AnthropicToOpenAiStream::new("gpt", 1, true);
        stream.push(&message_start());
        let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let out = events(&stream.push(&[anthropic_event(error), text_delta("late")].concat()));
        assert_eq!(out, vec![(String::new(), json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded"}}))]);
        assert!(stream.push(b"data: {not json}\n\n").is_empty() && stream.finish().is_empty());
    }

    #[test]
    fn a_malformed_anthropic_event_is_an_error() {
        let mut stream = AnthropicToOpenAiStream::new("gpt", 1, false);
        let out = events(&stream.push(b"event: message_start\ndata: {not json}\n\n"));
        assert!(out[0].1["error"]["message"].as_str().unwrap().starts_with("malformed upstream event"));
    }

    #[test]
    fn tool_calls_are_numbered_among_themselves() {
        let mut stream = AnthropicToOpenAiStream::new("gpt", 1, false);
        let mut input = message_start();
        for (index, id) in [(1, "toolu_a"), (2, "toolu_b")] {
            let block = json!({"type": "tool_use", "id": id, "name": "f", "input": {}});
            input.extend(anthropic_event(json!({"type": "content_block_start", "index": index, "content_block": block})));
            let delta = json!({"type": "input_json_delta", "partial_json": "{}"});
            input.extend(anthropic_event(json!({"type": "content_block_delta", "index": index, "delta": delta})));
        }
        let calls: Vec<Value> = events(&stream.push(&input))
            .into_iter()
            .filter_map(|(_, chunk)| chunk["choices"][0]["delta"]["tool_calls"][0].as_object().cloned().map(Value::Object))
            .map(|call| json!([call["index"], call.get("id")]))
            .collect();
        assert_eq!(calls, vec![json!([0, "toolu_a"]), json!([0, null]), json!([1, "toolu_b"]), json!([1, null])]);
    }

    #[test]
    fn an_openai_stream_without_done_closes_after_its_finish_reason() {
        let mut stream = OpenAiToAnthropicStream::new("claude");
        let mut input = openai_chunk(json!({"role": "assistant", "content": "Hi"}), Value::Null);
        input.extend(openai_chunk(json!({}), json!("stop")));
        let out = events(&stream.push(&input));
        let names: Vec<&str> = out.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["message_start", "content_block_start", "content_block_delta", "content_block_stop"]);
        let tail = events(&stream.finish());
        let names: Vec<&str> = tail.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["message_delta", "message_stop"]);
        assert_eq!(tail[0].1["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn an_openai_stream_cut_mid_answer_ends_in_an_error_event() {
        let mut stream = OpenAiToAnthropicStream::new("claude");
        stream.push(&openai_chunk(json!({"content": "Hel"}), Value::Null));
        let tail = events(&stream.finish());
        assert_eq!(tail, vec![("error".to_owned(), json!({"type": "error", "error": {"type": "api_error", "message": CUT_SHORT}}))]);
        assert!(stream.finish().is_empty());
    }

    #[test]
    fn an_openai_error_chunk_becomes_an_anthropic_error_event() {
        let mut stream = OpenAiToAnthropicStream::new("claude");
        let error = json!({"error": {"message": "The server had an error", "type": "server_error", "param": null, "code": null}});
        let out = events(&stream.push(format!("data: {error}\n\n").as_bytes()));
        assert_eq!(out, vec![("error".to_owned(), json!({"type": "error", "error": {"type": "api_error", "message": "The server had an error"}}))]);
        assert!(stream.push(b"data: {not json}\n\ndata: [DONE]\n\n").is_empty() && stream.finish().is_empty());
    }

    #[test]
    fn openai_tool_calls_without_ids_or_indexes_still_make_blocks() {
        // Servers vary: some omit the id, some the index, some send a whole call at once.
        let mut stream = OpenAiToAnthropicStream::new("claude");
        let mut input = openai_chunk(json!({"content": "Let me check."}), Value::Null);
        input.extend(openai_chunk(json!({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{\"a\":"}}]}), Value::Null));
        input.extend(openai_chunk(json!({"tool_calls": [{"function": {"arguments": "1}"}}]}), Value::Null));
        input.extend(openai_chunk(json!({"tool_calls": [{"id": "call_b", "function": {"name": "g", "arguments": "{}"}}]}), json!("tool_calls")));
        input.extend(b"data: [DONE]\n\n");
        let out: Vec<Value> = events(&stream.push(&input)).into_iter().map(|(_, data)| data).collect();
        let starts: Vec<&Value> = out.iter().filter(|e| e["type"] == "content_block_start").map(|e| &e["content_block"]).collect();
        assert_eq!(starts, [
            &json!({"type": "text", "text": ""}),
            &json!({"type": "tool_use", "id": "toolu_chatcmpl-1_0", "name": "f", "input": {}}),
            &json!({"type": "tool_use", "id": "call_b", "name": "g", "input": {}}),
        ]);
        let arguments: Vec<(&Value, &Value)> = out.iter()
            .filter(|e| e["delta"]["type"] == "input_json_delta")
            .map(|e| (&e["index"], &e["delta"]["partial_json"]))
            .collect();
        assert_eq!(arguments, [(&json!(1), &json!("{\"a\":")), (&json!(1), &json!("1}")), (&json!(2), &json!("{}"))]);
        assert_eq!(out.iter().filter(|e| e["type"] == "content_block_stop").count(), 3);
        assert_eq!(out.iter().rev().nth(1).unwrap()["delta"]["stop_reason"], "tool_use");
    }
}
