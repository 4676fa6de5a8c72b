//! Request bodies: OpenAI chat completions ↔ Anthropic Messages.

use serde_json::{json, Map, Value};

use super::{
    array_field, lone_text_as_string, malformed, openai_texts, optional_array, parse_object, str_field, text_block,
    tool_use_block, unsupported, with_field, TranslateError,
};

/// Anthropic requires `max_tokens`; OpenAI clients usually leave it out.
/// A suggested value for the caller's configurable default.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// An OpenAI chat completions request as an Anthropic Messages request for
/// `target_model`. `default_max_tokens` applies when the client set neither
/// `max_completion_tokens` nor `max_tokens`.
pub fn openai_chat_to_anthropic(
    body: &[u8],
    target_model: &str,
    default_max_tokens: u64,
) -> Result<Vec<u8>, TranslateError> {
    let request = Value::Object(parse_object(body)?);
    refuse_openai_only_features(&request)?;

    let mut system = Vec::new();
    let mut turns: Vec<(&str, Value)> = Vec::new();
    for (i, message) in array_field(&request, "messages", "")?.iter().enumerate() {
        let path = format!("messages[{i}]");
        let content = message.get("content").unwrap_or(&Value::Null);
        match str_field(message, "role", &path)? {
            "system" | "developer" => system.extend(openai_texts(content, &format!("{path}.content"))?),
            "user" => push_turn(&mut turns, "user", anthropic_user_content(content, &path)?),
            "assistant" => push_turn(&mut turns, "assistant", anthropic_assistant_content(message, &path)?),
            "tool" => push_turn(&mut turns, "user", json!([tool_result(message, &path)?])),
            other => return Err(unsupported(&format!("{path}.role"), &format!("role `{other}`"))),
        }
    }

    let mut out = Map::new();
    out.insert("model".into(), target_model.into());
    if !system.is_empty() {
        out.insert("system".into(), lone_text_as_string(system.iter().map(|text| text_block(text)).collect()));
    }
    let messages = turns.into_iter().map(|(role, content)| json!({"role": role, "content": content}));
    out.insert("messages".into(), messages.collect());
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|key| request.get(*key).and_then(Value::as_u64))
        .unwrap_or(default_max_tokens);
    out.insert("max_tokens".into(), max_tokens.into());
    if let Some(temperature) = request.get("temperature").filter(|t| t.is_number()) {
        // OpenAI accepts up to 2, Anthropic up to 1.
        let clamped = if temperature.as_f64().is_some_and(|t| t > 1.0) { json!(1.0) } else { temperature.clone() };
        out.insert("temperature".into(), clamped);
    }
    copy_if_present(&request, "top_p", &mut out, "top_p");
    match request.get("stop") {
        Some(Value::String(stop)) => {
            out.insert("stop_sequences".into(), json!([stop]));
        }
        Some(stops @ Value::Array(_)) => {
            out.insert("stop_sequences".into(), stops.clone());
        }
        _ => {}
    }
    // Anthropic always reports usage in a stream: `stream_options` has no counterpart.
    copy_if_present(&request, "stream", &mut out, "stream");

    let tools = optional_array(&request, "tools", "")?;
    if !tools.is_empty() {
        let tools = tools.iter().enumerate().map(|(i, tool)| anthropic_tool(tool, &format!("tools[{i}]")));
        out.insert("tools".into(), tools.collect::<Result<_, _>>()?);
    }
    let tool_choice = match request.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(choice) => Some(anthropic_tool_choice(choice)?),
    };
    let serial = request.get("parallel_tool_calls") == Some(&Value::Bool(false));
    let tool_choice = match tool_choice {
        Some(choice) if serial && choice.get("type") != Some(&json!("none")) => {
            Some(with_field(choice, "disable_parallel_tool_use", true.into()))
        }
        None if serial && !tools.is_empty() => Some(json!({"type": "auto", "disable_parallel_tool_use": true})),
        choice => choice,
    };
    if let Some(choice) = tool_choice {
        out.insert("tool_choice".into(), choice);
    }
    if let Some(user) = request.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    Ok(Value::Object(out).to_string().into_bytes())
}

/// An Anthropic Messages request as an OpenAI chat completions request for
/// `target_model`. A streamed one asks for usage, which the Anthropic client
/// gets in `message_delta`.
pub fn anthropic_to_openai_chat(body: &[u8], target_model: &str) -> Result<Vec<u8>, TranslateError> {
    let request = Value::Object(parse_object(body)?);
    if request.get("mcp_servers").is_some() {
        return Err(unsupported("mcp_servers", "MCP servers are an Anthropic feature"));
    }

    let mut messages = Vec::new();
    if let Some(system) = request.get("system").filter(|s| !s.is_null()) {
        let texts = anthropic_texts(system, "system")?;
        if !texts.is_empty() {
            messages.push(json!({"role": "system", "content": lone_text_as_string(texts.iter().map(|t| text_block(t)).collect())}));
        }
    }
    for (i, message) in array_field(&request, "messages", "")?.iter().enumerate() {
        let path = format!("messages[{i}]");
        let content = message.get("content").unwrap_or(&Value::Null);
        match str_field(message, "role", &path)? {
            "user" => push_openai_user_messages(content, &path, &mut messages)?,
            "assistant" => messages.push(openai_assistant_message(content, &path)?),
            other => return Err(unsupported(&format!("{path}.role"), &format!("role `{other}`"))),
        }
    }

    let mut out = Map::new();
    out.insert("model".into(), target_model.into());
    out.insert("messages".into(), messages.into());
    // OpenAI's current name: its reasoning models refuse `max_tokens`.
    copy_if_present(&request, "max_tokens", &mut out, "max_completion_tokens");
    copy_if_present(&request, "temperature", &mut out, "temperature");
    copy_if_present(&request, "top_p", &mut out, "top_p");
    copy_if_present(&request, "stop_sequences", &mut out, "stop");
    if request.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let tools = optional_array(&request, "tools", "")?;
    if !tools.is_empty() {
        let tools = tools.iter().enumerate().map(|(i, tool)| openai_tool(tool, &format!("tools[{i}]")));
        out.insert("tools".into(), tools.collect::<Result<_, _>>()?);
    }
    if let Some(choice) = request.get("tool_choice").filter(|c| !c.is_null()) {
        out.insert("tool_choice".into(), openai_tool_choice(choice)?);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), false.into());
        }
    }
    if let Some(user) = request.pointer("/metadata/user_id").and_then(Value::as_str) {
        out.insert("user".into(), user.into());
    }
    Ok(Value::Object(out).to_string().into_bytes())
}

fn refuse_openai_only_features(request: &Value) -> Result<(), TranslateError> {
    if request.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(unsupported("n", "Anthropic returns a single choice"));
    }
    if let Some(format) = request.pointer("/response_format/type").and_then(Value::as_str) {
        if format != "text" {
            return Err(unsupported("response_format", &format!("`{format}` output cannot be guaranteed by Anthropic")));
        }
    }
    for legacy in ["functions", "function_call"] {
        if request.get(legacy).is_some_and(|v| !v.is_null()) {
            return Err(unsupported(legacy, "the legacy functions API: use `tools`"));
        }
    }
    if request.get("audio").is_some_and(|v| !v.is_null()) {
        return Err(unsupported("audio", "Anthropic does not produce audio"));
    }
    Ok(())
}

fn copy_if_present(from: &Value, key: &str, to: &mut Map<String, Value>, as_key: &str) {
    if let Some(value) = from.get(key).filter(|v| !v.is_null()) {
        to.insert(as_key.into(), value.clone());
    }
}

/// Appends a message, merging it into the previous one of the same role:
/// Anthropic wants user and assistant turns to alternate, and OpenAI's `tool`
/// messages all become user turns.
fn push_turn<'a>(turns: &mut Vec<(&'a str, Value)>, role: &'a str, content: Value) {
    match turns.last_mut() {
        Some((last_role, last_content)) if *last_role == role => {
            let mut blocks = into_blocks(std::mem::take(last_content));
            blocks.extend(into_blocks(content));
            *last_content = blocks.into();
        }
        _ => turns.push((role, content)),
    }
}

fn into_blocks(content: Value) -> Vec<Value> {
    match content {
        Value::Array(blocks) => blocks,
        // Anthropic refuses empty text blocks.
        Value::String(text) if text.is_empty() => Vec::new(),
        Value::String(text) => vec![text_block(&text)],
        _ => Vec::new(),
    }
}

fn anthropic_user_content(content: &Value, path: &str) -> Result<Value, TranslateError> {
    let parts = match content {
        Value::String(_) => return Ok(content.clone()),
        Value::Array(parts) => parts,
        _ => return Err(malformed(&format!("{path}.content"), "expected a string or an array of content parts")),
    };
    let blocks = parts.iter().enumerate().map(|(i, part)| -> Result<Value, TranslateError> {
        let path = format!("{path}.content[{i}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => Ok(text_block(str_field(part, "text", &path)?)),
            Some("image_url") => {
                let url = part.pointer("/image_url/url").and_then(Value::as_str);
                let url = url.ok_or_else(|| malformed(&format!("{path}.image_url.url"), "expected a string"))?;
                Ok(json!({"type": "image", "source": image_source(url, &path)?}))
            }
            Some(other) => Err(unsupported(&path, &format!("content part `{other}` has no Anthropic equivalent"))),
            None => Err(malformed(&path, "content part without a `type`")),
        }
    });
    Ok(lone_text_as_string(blocks.collect::<Result<_, _>>()?))
}

fn image_source(url: &str, path: &str) -> Result<Value, TranslateError> {
    let Some(data_url) = url.strip_prefix("data:") else {
        return Ok(json!({"type": "url", "url": url}));
    };
    match data_url.split_once(',') {
        Some((meta, data)) => match meta.strip_suffix(";base64") {
            Some(media_type) => Ok(json!({"type": "base64", "media_type": media_type, "data": data})),
            None => Err(unsupported(path, "image data URLs must be base64")),
        },
        None => Err(malformed(path, "image data URL without data")),
    }
}

fn anthropic_assistant_content(message: &Value, path: &str) -> Result<Value, TranslateError> {
    let content = message.get("content").unwrap_or(&Value::Null);
    let calls = optional_array(message, "tool_calls", path)?;
    if calls.is_empty() && content.is_string() {
        return Ok(content.clone());
    }
    let texts = openai_texts(content, &format!("{path}.content"))?;
    let mut blocks: Vec<Value> = texts.iter().filter(|t| !t.is_empty()).map(|t| text_block(t)).collect();
    for (i, call) in calls.iter().enumerate() {
        blocks.push(tool_use_block(call, &format!("{path}.tool_calls[{i}]"))?);
    }
    Ok(blocks.into())
}

fn tool_result(message: &Value, path: &str) -> Result<Value, TranslateError> {
    let content = match message.get("content").unwrap_or(&Value::Null) {
        text @ Value::String(_) => text.clone(),
        parts => lone_text_as_string(openai_texts(parts, &format!("{path}.content"))?.iter().map(|t| text_block(t)).collect()),
    };
    Ok(json!({"type": "tool_result", "tool_use_id": str_field(message, "tool_call_id", path)?, "content": content}))
}

fn anthropic_tool(tool: &Value, path: &str) -> Result<Value, TranslateError> {
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(unsupported(path, "only function tools translate"));
    }
    let function = tool.get("function").ok_or_else(|| malformed(&format!("{path}.function"), "missing"))?;
    let path = format!("{path}.function");
    let mut out = json!({
        "name": str_field(function, "name", &path)?,
        // Anthropic requires a schema; a function without parameters takes none.
        "input_schema": function.get("parameters").filter(|p| p.is_object()).cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    });
    if let Some(description) = function.get("description").and_then(Value::as_str) {
        out = with_field(out, "description", description.into());
    }
    Ok(out)
}

fn anthropic_tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            other => Err(malformed("tool_choice", &format!("unknown mode `{other}`"))),
        },
        _ => match choice.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Ok(json!({"type": "tool", "name": name})),
            None => Err(unsupported("tool_choice", "expected a mode or a function to call")),
        },
    }
}

/// The texts of an Anthropic `system` or `tool_result` content: a string or text blocks.
fn anthropic_texts(content: &Value, path: &str) -> Result<Vec<String>, TranslateError> {
    match content {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(blocks) => blocks
            .iter()
            .enumerate()
            .map(|(i, block)| {
                let path = format!("{path}[{i}]");
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => str_field(block, "text", &path).map(str::to_owned),
                    Some(other) => Err(unsupported(&path, &format!("`{other}` block where OpenAI takes only text"))),
                    None => Err(malformed(&path, "block without a `type`")),
                }
            })
            .collect(),
        _ => Err(malformed(path, "expected a string or an array of blocks")),
    }
}

/// A user turn: its `tool_result` blocks become `tool` messages, which OpenAI
/// wants right after the assistant's tool calls, then the rest a user message.
fn push_openai_user_messages(content: &Value, path: &str, messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let blocks = match content {
        Value::String(_) => {
            messages.push(json!({"role": "user", "content": content}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => return Err(malformed(&format!("{path}.content"), "expected a string or an array of blocks")),
    };
    let mut parts = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let path = format!("{path}.content[{i}]");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(text_block(str_field(block, "text", &path)?)),
            Some("image") => {
                let url = image_url(block.get("source").unwrap_or(&Value::Null), &format!("{path}.source"))?;
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_result") => {
                let content = match block.get("content") {
                    None | Some(Value::Null) => Value::from(""),
                    Some(content) => {
                        lone_text_as_string(anthropic_texts(content, &format!("{path}.content"))?.iter().map(|t| text_block(t)).collect())
                    }
                };
                let id = str_field(block, "tool_use_id", &path)?;
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            Some(other) => return Err(unsupported(&path, &format!("`{other}` block has no OpenAI equivalent"))),
            None => return Err(malformed(&path, "block without a `type`")),
        }
    }
    if !parts.is_empty() {
        messages.push(json!({"role": "user", "content": lone_text_as_string(parts)}));
    }
    Ok(())
}

fn image_url(source: &Value, path: &str) -> Result<String, TranslateError> {
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => Ok(format!(
            "data:{};base64,{}",
            str_field(source, "media_type", path)?,
            str_field(source, "data", path)?
        )),
        Some("url") => Ok(str_field(source, "url", path)?.to_owned()),
        _ => Err(unsupported(path, "only base64 and url image sources translate")),
    }
}

fn openai_assistant_message(content: &Value, path: &str) -> Result<Value, TranslateError> {
    let blocks = match content {
        Value::String(_) => return Ok(json!({"role": "assistant", "content": content})),
        Value::Array(blocks) => blocks,
        _ => return Err(malformed(&format!("{path}.content"), "expected a string or an array of blocks")),
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let path = format!("{path}.content[{i}]");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(text_block(str_field(block, "text", &path)?)),
            Some("tool_use") => calls.push(json!({
                "id": str_field(block, "id", &path)?,
                "type": "function",
                "function": {
                    "name": str_field(block, "name", &path)?,
                    "arguments": block.get("input").unwrap_or(&json!({})).to_string(),
                },
            })),
            // Replayed reasoning: OpenAI takes none back.
            Some("thinking" | "redacted_thinking") => {}
            Some(other) => return Err(unsupported(&path, &format!("`{other}` block has no OpenAI equivalent"))),
            None => return Err(malformed(&path, "block without a `type`")),
        }
    }
    let content = if parts.is_empty() { Value::Null } else { lone_text_as_string(parts) };
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message = with_field(message, "tool_calls", calls.into());
    }
    Ok(message)
}

fn openai_tool(tool: &Value, path: &str) -> Result<Value, TranslateError> {
    if let Some(kind) = tool.get("type").and_then(Value::as_str).filter(|kind| *kind != "custom") {
        return Err(unsupported(path, &format!("server tool `{kind}` runs only on Anthropic")));
    }
    let mut function = json!({
        "name": str_field(tool, "name", path)?,
        "parameters": tool.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    });
    if let Some(description) = tool.get("description").and_then(Value::as_str) {
        function = with_field(function, "description", description.into());
    }
    Ok(json!({"type": "function", "function": function}))
}

fn openai_tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    match choice.get("type").and_then(Value::as_str) {
        Some("auto") => Ok("auto".into()),
        Some("none") => Ok("none".into()),
        Some("any") => Ok("required".into()),
        Some("tool") => Ok(json!({"type": "function", "function": {"name": str_field(choice, "name", "tool_choice")?}})),
        _ => Err(malformed("tool_choice", "expected a `type` of auto, any, tool or none")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_anthropic(request: Value) -> Value {
        serde_json::from_slice(&openai_chat_to_anthropic(request.to_string().as_bytes(), "claude", 1000).unwrap()).unwrap()
    }

    fn to_openai(request: Value) -> Value {
        serde_json::from_slice(&anthropic_to_openai_chat(request.to_string().as_bytes(), "gpt").unwrap()).unwrap()
    }

    fn with_messages(messages: Value) -> Value {
        json!({"model": "m", "max_tokens": 10, "messages": messages})
    }

    #[test]
    fn tool_choice_maps_both_ways() {
        let tool = json!([{"type": "function", "function": {"name": "f"}}]);
        let table = [
            (json!("auto"), json!({"type": "auto"})),
            (json!("none"), json!({"type": "none"})),
            (json!("required"), json!({"type": "any"})),
            (json!({"type": "function", "function": {"name": "f"}}), json!({"type": "tool", "name": "f"})),
        ];
        for (openai, anthropic) in table {
            let request = json!({"messages": [], "tools": tool, "tool_choice": openai});
            assert_eq!(to_anthropic(request)["tool_choice"], anthropic);
            let request = json!({"messages": [], "max_tokens": 1, "tools": [{"name": "f", "input_schema": {}}], "tool_choice": anthropic});
            assert_eq!(to_openai(request)["tool_choice"], openai);
        }
    }

    #[test]
    fn serial_tool_calls_map_both_ways() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let request = json!({"messages": [], "tools": tools, "tool_choice": "none", "parallel_tool_calls": false});
        assert_eq!(to_anthropic(request)["tool_choice"], json!({"type": "none"}), "none has no parallelism to turn off");
        let request = json!({"messages": [], "tools": tools, "tool_choice": "required", "parallel_tool_calls": false});
        assert_eq!(to_anthropic(request)["tool_choice"], json!({"type": "any", "disable_parallel_tool_use": true}));
        let request = json!({"messages": [], "parallel_tool_calls": false});
        assert!(to_anthropic(request).get("tool_choice").is_none(), "no tools, no choice");
        let request = json!({"messages": [], "max_tokens": 1, "tools": [{"name": "f"}], "tool_choice": {"type": "any", "disable_parallel_tool_use": true}});
        assert_eq!(to_openai(request)["parallel_tool_calls"], json!(false));
    }

    #[test]
    fn max_tokens_prefers_the_current_field_then_the_legacy_one_then_the_default() {
        assert_eq!(to_anthropic(json!({"messages": [], "max_completion_tokens": 7, "max_tokens": 9}))["max_tokens"], 7);
        assert_eq!(to_anthropic(json!({"messages": [], "max_tokens": 9}))["max_tokens"], 9);
        assert_eq!(to_anthropic(json!({"messages": []}))["max_tokens"], 1000);
    }

    #[test]
    fn tool_messages_and_a_following_user_message_become_one_user_turn() {
        let request = json!({"messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
            {"role": "tool", "tool_call_id": "1", "content": "r1"},
            {"role": "tool", "tool_call_id": "2", "content": "r2"},
            {"role": "user", "content": ""},
            {"role": "user", "content": "d"},
        ]});
        assert_eq!(to_anthropic(request)["messages"], json!([
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [{"type": "text", "text": "b"}, {"type": "text", "text": "c"}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "1", "content": "r1"},
                {"type": "tool_result", "tool_use_id": "2", "content": "r2"},
                {"type": "text", "text": "d"},
            ]},
        ]));
    }

    #[test]
    fn tool_results_become_tool_messages_before_the_rest_of_the_turn() {
        let request = with_messages(json!([{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
            {"type": "tool_result", "tool_use_id": "t2"},
            {"type": "text", "text": "go on"},
        ]}]));
        assert_eq!(to_openai(request)["messages"], json!([
            {"role": "tool", "tool_call_id": "t1", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
            {"role": "tool", "tool_call_id": "t2", "content": ""},
            {"role": "user", "content": "go on"},
        ]));
    }

    #[test]
    fn empty_tool_arguments_are_an_empty_input() {
        let call = json!({"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}});
        let request = json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [call]}]});
        assert_eq!(to_anthropic(request)["messages"][0]["content"], json!([{"type": "tool_use", "id": "c", "name": "f", "input": {}}]));
    }

    #[test]
    fn a_streamed_anthropic_request_asks_openai_for_usage() {
        let mut request = with_messages(json!([]));
        request["stream"] = json!(true);
        assert_eq!(to_openai(request)["stream_options"], json!({"include_usage": true}));
        assert!(to_openai(with_messages(json!([]))).get("stream_options").is_none());
    }

    fn openai_error(request: Value) -> TranslateError {
        openai_chat_to_anthropic(request.to_string().as_bytes(), "claude", 1).unwrap_err()
    }

    fn anthropic_error(request: Value) -> TranslateError {
        anthropic_to_openai_chat(request.to_string().as_bytes(), "gpt").unwrap_err()
    }

    #[test]
    fn what_anthropic_cannot_do_is_refused_by_name() {
        let unsupported = |request: Value, field: &str| match openai_error(request) {
            TranslateError::Unsupported(message) => assert!(message.starts_with(field), "{message}"),
            other => panic!("{other:?}"),
        };
        unsupported(json!({"messages": [], "n": 2}), "n:");
        unsupported(json!({"messages": [], "response_format": {"type": "json_schema", "json_schema": {}}}), "response_format");
        unsupported(json!({"messages": [], "functions": [{"name": "f"}]}), "functions");
        unsupported(json!({"messages": [], "audio": {"voice": "alloy"}}), "audio");
        unsupported(json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}), "messages[0].role");
        let audio = json!({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}});
        unsupported(json!({"messages": [{"role": "user", "content": [audio]}]}), "messages[0].content[0]");
        let image = json!({"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}});
        unsupported(json!({"messages": [{"role": "user", "content": [image]}]}), "messages[0].content[0]");
        unsupported(json!({"messages": [], "tools": [{"type": "custom", "custom": {"name": "f"}}]}), "tools[0]");
        assert!(openai_chat_to_anthropic(br#"{"messages": [], "n": 1, "response_format": {"type": "text"}}"#, "c", 1).is_ok());
    }

    #[test]
    fn what_openai_cannot_do_is_refused_by_name() {
        let unsupported = |request: Value, field: &str| match anthropic_error(request) {
            TranslateError::Unsupported(message) => assert!(message.starts_with(field), "{message}"),
            other => panic!("{other:?}"),
        };
        let server_tool = json!([{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]);
        unsupported(json!({"messages": [], "tools": server_tool}), "tools[0]");
        let document = json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}});
        unsupported(with_messages(json!([{"role": "user", "content": [document]}])), "messages[0].content[0]");
        let image = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}});
        let result = json!({"type": "tool_result", "tool_use_id": "t", "content": [image]});
        unsupported(with_messages(json!([{"role": "user", "content": [result]}])), "messages[0].content[0].content[0]");
        let file_image = json!({"type": "image", "source": {"type": "file", "file_id": "file_011"}});
        unsupported(with_messages(json!([{"role": "user", "content": [file_image]}])), "messages[0].content[0].source");
        unsupported(json!({"messages": [], "mcp_servers": [{"type": "url", "url": "https://mcp.example"}]}), "mcp_servers");
    }

    #[test]
    fn malformed_requests_are_errors_that_say_where() {
        let malformed = |body: &[u8], expected: &str| {
            for error in [
                openai_chat_to_anthropic(body, "c", 1).unwrap_err(),
                anthropic_to_openai_chat(body, "g").unwrap_err(),
            ] {
                assert!(matches!(&error, TranslateError::Malformed(m) if m.starts_with(expected)), "{error}");
            }
        };
        malformed(b"{\"messages\": [", "body:");
        malformed(b"[]", "body: expected a JSON object");
        malformed(b"{}", "messages: expected an array");
        malformed(br#"{"messages": [{"content": "x"}]}"#, "messages[0].role: expected a string");
        malformed(br#"{"messages": [{"role": "user", "content": 7}]}"#, "messages[0].content");
        let call = json!({"id": "c", "function": {"name": "f", "arguments": "{\"cut\": "}});
        let error = openai_error(json!({"messages": [{"role": "assistant", "tool_calls": [call]}]}));
        assert_eq!(
            error.to_string(),
            "malformed body: messages[0].tool_calls[0].function.arguments: expected a JSON object encoded as a string"
        );
    }
}
