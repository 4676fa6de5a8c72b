//! Translation between OpenAI chat completions and Anthropic Messages, so a
//! client of either API can be served by a backend of the other (a fallback
//! chain that crosses providers). Pure functions over body bytes: the router's
//! per-attempt filter rewrites each request for the backend the attempt
//! reaches and each response back for the client. Paths, headers and
//! credentials are the caller's business.
//!
//! What the other API cannot express and would change the answer the client
//! gets (`n > 1`, `response_format`, server tools, documents, …) is refused
//! with [`TranslateError::Unsupported`] rather than silently dropped; fields
//! that only tune sampling or observability without an equivalent (`seed`,
//! `logprobs`, `top_k`, `thinking`, …) are dropped.

mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::{json, Map, Value};

pub use request::{anthropic_to_openai_chat, openai_chat_to_anthropic, DEFAULT_MAX_TOKENS};
pub use response::{
    anthropic_error_to_openai, anthropic_response_to_openai_chat, openai_chat_response_to_anthropic,
    openai_error_to_anthropic,
};
pub use stream::{AnthropicToOpenAiStream, OpenAiToAnthropicStream};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranslateError {
    /// Not JSON, or JSON of the wrong shape; the message names the field.
    Malformed(String),
    /// Valid, but uses a feature the other API has no equivalent for.
    Unsupported(String),
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(message) => write!(f, "malformed body: {message}"),
            Self::Unsupported(message) => write!(f, "cannot translate: {message}"),
        }
    }
}

impl std::error::Error for TranslateError {}

fn malformed(path: &str, problem: &str) -> TranslateError {
    TranslateError::Malformed(format!("{path}: {problem}"))
}

fn unsupported(path: &str, problem: &str) -> TranslateError {
    TranslateError::Unsupported(format!("{path}: {problem}"))
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, TranslateError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(malformed("body", "expected a JSON object")),
        Err(e) => Err(malformed("body", &e.to_string())),
    }
}

/// `path.key`, or `key` at the top level (an empty path).
fn field_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn str_field<'a>(value: &'a Value, key: &str, path: &str) -> Result<&'a str, TranslateError> {
    value.get(key).and_then(Value::as_str).ok_or_else(|| malformed(&field_path(path, key), "expected a string"))
}

fn array_field<'a>(value: &'a Value, key: &str, path: &str) -> Result<&'a [Value], TranslateError> {
    match value.get(key) {
        Some(Value::Array(items)) => Ok(items),
        _ => Err(malformed(&field_path(path, key), "expected an array")),
    }
}

/// An optional array field: absent and `null` are empty.
fn optional_array<'a>(value: &'a Value, key: &str, path: &str) -> Result<&'a [Value], TranslateError> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(_) => array_field(value, key, path),
    }
}

/// The texts of OpenAI message content: a string, or an array of `text`
/// (and, in assistant messages, `refusal`) parts.
fn openai_texts(content: &Value, path: &str) -> Result<Vec<String>, TranslateError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let path = format!("{path}[{i}]");
                match part.get("type").and_then(Value::as_str) {
                    Some(kind @ ("text" | "refusal")) => str_field(part, kind, &path).map(str::to_owned),
                    Some(other) => Err(unsupported(&path, &format!("content part `{other}` is not text"))),
                    None => Err(malformed(&path, "content part without a `type`")),
                }
            })
            .collect(),
        _ => Err(malformed(path, "expected a string or an array of content parts")),
    }
}

/// Message content from text and image parts, which both APIs spell alike
/// for text: a lone text part as a plain string, which every
/// OpenAI-compatible server accepts, otherwise the parts.
fn lone_text_as_string(parts: Vec<Value>) -> Value {
    if let [part] = parts.as_slice() {
        if part.get("type").and_then(Value::as_str) == Some("text") {
            if let Some(text) = part.get("text") {
                return text.clone();
            }
        }
    }
    parts.into()
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// An OpenAI tool call as an Anthropic `tool_use` block.
fn tool_use_block(call: &Value, path: &str) -> Result<Value, TranslateError> {
    if call.get("type").and_then(Value::as_str).is_some_and(|kind| kind != "function") {
        return Err(unsupported(path, "only function tool calls translate"));
    }
    let name = call.pointer("/function/name").and_then(Value::as_str);
    let name = name.ok_or_else(|| malformed(&field_path(path, "function.name"), "expected a string"))?;
    let arguments = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or_default();
    // A call to a tool without parameters may carry no arguments at all.
    let input = if arguments.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str(arguments) {
            Ok(input @ Value::Object(_)) => input,
            _ => return Err(malformed(&field_path(path, "function.arguments"), "expected a JSON object encoded as a string")),
        }
    };
    Ok(json!({"type": "tool_use", "id": str_field(call, "id", path)?, "name": name, "input": input}))
}

/// `object` with `key` set, when it is an object (the callers' always are).
fn with_field(mut object: Value, key: &str, value: Value) -> Value {
    if let Some(fields) = object.as_object_mut() {
        fields.insert(key.into(), value);
    }
    object
}

/// Token counts in Anthropic's terms, where `input` excludes the prompt tokens
/// read from or written to the cache; OpenAI's `prompt_tokens` includes them.
/// OpenAI does not report cache writes, so those fold into `prompt_tokens`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
}

impl Usage {
    /// Overwrites the counts an Anthropic usage object reports: `message_delta`
    /// repeats some or all of `message_start`'s, cumulatively.
    fn update_from_anthropic(&mut self, usage: &Value) {
        let fields = [
            ("input_tokens", &mut self.input),
            ("output_tokens", &mut self.output),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("cache_creation_input_tokens", &mut self.cache_creation),
        ];
        for (field, count) in fields {
            if let Some(n) = usage.get(field).and_then(Value::as_u64) {
                *count = n;
            }
        }
    }

    fn from_anthropic(usage: &Value) -> Self {
        let mut counts = Self::default();
        counts.update_from_anthropic(usage);
        counts
    }

    fn from_openai(usage: &Value) -> Self {
        let count = |pointer| usage.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
        let cached = count("/prompt_tokens_details/cached_tokens");
        Self {
            input: count("/prompt_tokens").saturating_sub(cached),
            output: count("/completion_tokens"),
            cache_read: cached,
            cache_creation: 0,
        }
    }

    fn to_openai(self) -> Value {
        let prompt = self.input.saturating_add(self.cache_read).saturating_add(self.cache_creation);
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt.saturating_add(self.output),
            "prompt_tokens_details": {"cached_tokens": self.cache_read},
        })
    }

    fn to_anthropic(self) -> Value {
        json!({
            "input_tokens": self.input,
            "output_tokens": self.output,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": self.cache_creation,
        })
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
fn finish_reason_for(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn: the model stopped on its own.
        _ => "stop",
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`. OpenAI does not say
/// whether a stop sequence matched, so `stop` is always `end_turn`.
fn stop_reason_for(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic error types, the HTTP status Anthropic sends each with, and the
/// OpenAI `type` and `code` that mean the same (OpenAI SDKs pick the exception
/// from the status; the type and code are for people and logs).
const ERROR_KINDS: &[(&str, u16, &str, Option<&str>)] = &[
    ("invalid_request_error", 400, "invalid_request_error", None),
    ("authentication_error", 401, "authentication_error", Some("invalid_api_key")),
    ("permission_error", 403, "permission_error", None),
    ("not_found_error", 404, "not_found_error", None),
    ("request_too_large", 413, "invalid_request_error", Some("request_too_large")),
    ("rate_limit_error", 429, "rate_limit_error", Some("rate_limit_exceeded")),
    ("api_error", 500, "server_error", None),
    ("timeout_error", 504, "server_error", Some("timeout")),
    ("overloaded_error", 529, "server_error", Some("overloaded")),
];

fn anthropic_error_type_for_status(status: u16) -> &'static str {
    match ERROR_KINDS.iter().find(|(_, kind_status, _, _)| *kind_status == status) {
        Some((anthropic_type, ..)) => anthropic_type,
        None if status == 503 => "overloaded_error",
        None if (400..500).contains(&status) => "invalid_request_error",
        None => "api_error",
    }
}

/// For errors inside a stream, which carry no status.
fn anthropic_error_type_for_openai(openai_type: &str) -> &'static str {
    match ERROR_KINDS.iter().find(|(_, _, kind_type, _)| *kind_type == openai_type) {
        Some((anthropic_type, ..)) => anthropic_type,
        None => "api_error",
    }
}

fn openai_error_kind(anthropic_type: &str) -> (&'static str, Option<&'static str>) {
    match ERROR_KINDS.iter().find(|(kind_type, ..)| *kind_type == anthropic_type) {
        Some((_, _, openai_type, code)) => (openai_type, *code),
        None => ("server_error", None),
    }
}
