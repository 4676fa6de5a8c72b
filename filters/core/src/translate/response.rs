//! Whole (non-streamed) response bodies and error bodies.

use serde_json::{json, Value};

use super::{
    anthropic_error_type_for_status, array_field, finish_reason_for, malformed, openai_error_kind, openai_texts,
    optional_array, parse_object, stop_reason_for, str_field, text_block, tool_use_block, with_field, TranslateError,
    Usage,
};
use crate::errors::openai_error_body;

/// An Anthropic message as an OpenAI chat completion. `model` is the one the
/// client asked for; `created` (Unix seconds) is the caller's clock, as
/// Anthropic responses carry no timestamp. The message id is kept, so logs of
/// both sides match.
pub fn anthropic_response_to_openai_chat(
    body: &[u8],
    requested_model: &str,
    created: u64,
) -> Result<Vec<u8>, TranslateError> {
    let response = Value::Object(parse_object(body)?);
    let mut text = String::new();
    let mut calls = Vec::new();
    for (i, block) in array_field(&response, "content", "")?.iter().enumerate() {
        let path = format!("content[{i}]");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(str_field(block, "text", &path)?),
            Some("tool_use") => calls.push(openai_tool_call(
                str_field(block, "id", &path)?,
                str_field(block, "name", &path)?,
                block.get("input").unwrap_or(&json!({})),
            )),
            // Thinking is not part of an OpenAI answer; server tool blocks
            // cannot occur, as requests with server tools are refused.
            _ => {}
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { text.into() },
        "refusal": null,
    });
    if !calls.is_empty() {
        message = with_field(message, "tool_calls", calls.into());
    }
    let mut out = json!({
        "id": response.get("id").and_then(Value::as_str).unwrap_or_default(),
        "object": "chat.completion",
        "created": created,
        "model": requested_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": response.get("stop_reason").and_then(Value::as_str).map(finish_reason_for),
        }],
    });
    if let Some(usage) = response.get("usage").filter(|u| u.is_object()) {
        out = with_field(out, "usage", Usage::from_anthropic(usage).to_openai());
    }
    Ok(out.to_string().into_bytes())
}

/// An OpenAI chat completion (its first choice) as an Anthropic message.
/// `model` is the one the client asked for; the completion id is kept.
pub fn openai_chat_response_to_anthropic(body: &[u8], requested_model: &str) -> Result<Vec<u8>, TranslateError> {
    let response = Value::Object(parse_object(body)?);
    let choice = array_field(&response, "choices", "")?
        .first()
        .ok_or_else(|| malformed("choices", "expected at least one choice"))?;
    let message = choice.get("message").filter(|m| m.is_object());
    let message = message.ok_or_else(|| malformed("choices[0].message", "expected an object"))?;
    let path = "choices[0].message";

    let mut texts = openai_texts(message.get("content").unwrap_or(&Value::Null), path)?;
    texts.extend(message.get("refusal").and_then(Value::as_str).map(str::to_owned));
    let mut content: Vec<Value> = texts.iter().filter(|text| !text.is_empty()).map(|text| text_block(text)).collect();
    for (i, call) in optional_array(message, "tool_calls", path)?.iter().enumerate() {
        content.push(tool_use_block(call, &format!("{path}.tool_calls[{i}]"))?);
    }
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop");
    let usage = response.get("usage").filter(|u| u.is_object()).map(Usage::from_openai).unwrap_or_default();
    let out = json!({
        "id": response.get("id").and_then(Value::as_str).unwrap_or_default(),
        "type": "message",
        "role": "assistant",
        "model": requested_model,
        "content": content,
        "stop_reason": stop_reason_for(finish_reason),
        "stop_sequence": null,
        "usage": usage.to_anthropic(),
    });
    Ok(out.to_string().into_bytes())
}

fn openai_tool_call(id: &str, name: &str, input: &Value) -> Value {
    json!({"id": id, "type": "function", "function": {"name": name, "arguments": input.to_string()}})
}

/// An Anthropic error body (`{"type":"error","error":{"type","message"}}`) as
/// an OpenAI one, to send with the same HTTP status. A body that is not an
/// Anthropic error (a proxy's HTML page, say) gets the status's error type and
/// its text as the message.
pub fn anthropic_error_to_openai(body: &[u8], status: u16) -> Vec<u8> {
    let error = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("error").cloned());
    let error = error.as_ref();
    let error_type = error.and_then(|e| e.get("type")).and_then(Value::as_str);
    let error_type = error_type.unwrap_or_else(|| anthropic_error_type_for_status(status));
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str);
    openai_error(error_type, &message.map_or_else(|| body_text(body, status), str::to_owned))
}

/// An OpenAI error body (`{"error":{"message","type","code"}}`) as an
/// Anthropic one, to send with the same HTTP status, whose error type it
/// follows (OpenAI's types are too loosely used to map). A body that is not
/// an OpenAI error has its text as the message.
pub fn openai_error_to_anthropic(body: &[u8], status: u16) -> Vec<u8> {
    let error = serde_json::from_slice::<Value>(body).ok();
    let message = error.as_ref().and_then(|v| v.pointer("/error/message")).and_then(Value::as_str);
    anthropic_error(anthropic_error_type_for_status(status), &message.map_or_else(|| body_text(body, status), str::to_owned))
}

pub(super) fn openai_error(anthropic_type: &str, message: &str) -> Vec<u8> {
    let (error_type, code) = openai_error_kind(anthropic_type);
    openai_error_body(message, error_type, code)
}

pub(super) fn anthropic_error(error_type: &str, message: &str) -> Vec<u8> {
    json!({"type": "error", "error": {"type": error_type, "message": message}}).to_string().into_bytes()
}

/// The text of a body that is not an error of the expected shape, cut
/// short: it may be a whole HTML page.
fn body_text(body: &[u8], status: u16) -> String {
    const LIMIT: usize = 1024;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("upstream returned HTTP {status}")
    } else {
        text.chars().take(LIMIT).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{finish_reason_for, stop_reason_for};
    use super::*;

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn stop_reasons_map_both_ways() {
        let table = [
            ("end_turn", "stop", "end_turn"),
            ("stop_sequence", "stop", "end_turn"),
            ("pause_turn", "stop", "end_turn"),
            ("max_tokens", "length", "max_tokens"),
            ("model_context_window_exceeded", "length", "max_tokens"),
            ("tool_use", "tool_calls", "tool_use"),
            ("refusal", "content_filter", "refusal"),
        ];
        for (stop_reason, finish_reason, back) in table {
            assert_eq!(finish_reason_for(stop_reason), finish_reason, "{stop_reason}");
            assert_eq!(stop_reason_for(finish_reason), back, "{finish_reason}");
        }
        assert_eq!(stop_reason_for("function_call"), "tool_use");
    }

    #[test]
    fn anthropic_usage_is_optional_and_an_openai_one_defaults_to_zero() {
        let message = br#"{"id": "msg_1", "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"}"#;
        let completion = json(&anthropic_response_to_openai_chat(message, "gpt", 1).unwrap());
        assert!(completion.get("usage").is_none());
        assert_eq!(completion["choices"][0]["message"]["content"], "hi");
        let completion = br#"{"id": "c", "choices": [{"message": {"content": "hi"}, "finish_reason": null}]}"#;
        let message = json(&openai_chat_response_to_anthropic(completion, "claude").unwrap());
        assert_eq!(message["usage"]["input_tokens"], 0);
        assert_eq!(message["stop_reason"], "end_turn");
    }

    #[test]
    fn an_openai_refusal_is_the_anthropic_text() {
        let completion = br#"{"id": "c", "choices": [{"message": {"content": null, "refusal": "I can't help with that."}, "finish_reason": "stop"}]}"#;
        let message = json(&openai_chat_response_to_anthropic(completion, "claude").unwrap());
        assert_eq!(message["content"], json!([{"type": "text", "text": "I can't help with that."}]));
    }

    #[test]
    fn malformed_responses_are_errors_that_say_where() {
        let anthropic = |body: &[u8]| anthropic_response_to_openai_chat(body, "g", 0).unwrap_err().to_string();
        assert_eq!(anthropic(b"{}"), "malformed body: content: expected an array");
        assert_eq!(anthropic(br#"{"content": [{"type": "text"}]}"#), "malformed body: content[0].text: expected a string");
        let openai = |body: &[u8]| openai_chat_response_to_anthropic(body, "c").unwrap_err().to_string();
        assert_eq!(openai(br#"{"choices": []}"#), "malformed body: choices: expected at least one choice");
        assert_eq!(openai(br#"{"choices": [{}]}"#), "malformed body: choices[0].message: expected an object");
        let call = br#"{"choices": [{"message": {"tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "[1]"}}]}}]}"#;
        assert!(openai(call).contains("choices[0].message.tool_calls[0].function.arguments"));
    }

    #[test]
    fn error_types_follow_the_status() {
        let table = [
            (400, "invalid_request_error", "invalid_request_error", None),
            (401, "authentication_error", "authentication_error", Some("invalid_api_key")),
            (403, "permission_error", "permission_error", None),
            (404, "not_found_error", "not_found_error", None),
            (413, "request_too_large", "invalid_request_error", Some("request_too_large")),
            (422, "invalid_request_error", "invalid_request_error", None),
            (429, "rate_limit_error", "rate_limit_error", Some("rate_limit_exceeded")),
            (500, "api_error", "server_error", None),
            (502, "api_error", "server_error", None),
            (503, "overloaded_error", "server_error", Some("overloaded")),
            (529, "overloaded_error", "server_error", Some("overloaded")),
        ];
        for (status, anthropic_type, openai_type, code) in table {
            let openai = br#"{"error": {"message": "m", "type": "whatever", "param": null, "code": null}}"#;
            let anthropic = json(&openai_error_to_anthropic(openai, status));
            assert_eq!(anthropic, json!({"type": "error", "error": {"type": anthropic_type, "message": "m"}}), "{status}");
            // A body that is not an Anthropic error is typed by its status.
            let openai = json(&anthropic_error_to_openai(b"upstream connect error", status));
            assert_eq!(openai["error"]["type"], openai_type, "{status}");
            assert_eq!(openai["error"]["code"], json!(code), "{status}");
            assert_eq!(openai["error"]["message"], "upstream connect error");
        }
    }

    #[test]
    fn an_anthropic_error_keeps_its_type_whatever_the_status() {
        let body = br#"{"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}}"#;
        let openai = json(&anthropic_error_to_openai(body, 400));
        assert_eq!(openai["error"]["type"], "rate_limit_error");
        assert_eq!(openai["error"]["message"], "Number of request tokens has exceeded your per-minute rate limit");
    }

    #[test]
    fn an_empty_error_body_says_the_status() {
        assert_eq!(json(&anthropic_error_to_openai(b"", 503))["error"]["message"], "upstream returned HTTP 503");
        assert_eq!(json(&openai_error_to_anthropic(b" \n", 502))["error"]["message"], "upstream returned HTTP 502");
        let page = "<html>".repeat(1000);
        assert_eq!(json(&anthropic_error_to_openai(page.as_bytes(), 502))["error"]["message"].as_str().unwrap().len(), 1024);
    }
}
