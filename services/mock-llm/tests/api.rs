//! End-to-end tests of the HTTP API, driving the router in-process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use clap::Parser as _;
use futures_util::StreamExt as _;
use mock_llm::{app, AppState, Config};
use serde_json::{json, Value};
use tower::ServiceExt as _;

fn mock(args: &[&str]) -> Router {
    let config = Config::parse_from(["mock-llm", "--name", "test-backend"].iter().chain(args));
    app(AppState::new(config).unwrap())
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).unwrap()
}

async fn send(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Reply {
    let response = app
        .clone()
        .oneshot(request(method, path, headers, body))
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

async fn post(app: &Router, path: &str, headers: &[(&str, &str)], body: Value) -> Reply {
    send(app, "POST", path, headers, body.to_string()).await
}

async fn get(app: &Router, path: &str) -> Reply {
    send(app, "GET", path, &[], Body::empty()).await
}

/// Tokens by the reference encoding, straight from tiktoken-rs.
fn o200k(text: &str) -> u64 {
    tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

/// `data:` payloads of an OpenAI stream, in order.
fn data_lines(body: &str) -> Vec<&str> {
    assert!(
        body.ends_with("\n\n"),
        "events end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
        })
        .collect()
}

/// (event name, data) pairs of an Anthropic stream, in order.
fn named_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect()
}

fn chat_body(content: &str) -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})
}

#[tokio::test]
async fn chat_json_usage_is_the_tiktoken_count() {
    let app = mock(&[]);
    let body = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "2 + 2 = 4"},
            {"role": "user", "content": [{"type": "text", "text": "tiktoken is great!"}]},
        ],
    });
    let reply = post(&app, "/v1/chat/completions", &[], body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-mock-backend"), Some("test-backend"));
    assert_eq!(reply.header("x-mock-model"), Some("gpt-4o"));
    let json = reply.json();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "gpt-4o");
    assert!(json["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &json["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    // Recipe: per message 3 + role (1) + content; "2 + 2 = 4" is 7 and
    // "tiktoken is great!" 6 tokens (openai-cookbook); plus 3 to prime the reply.
    assert_eq!(json["usage"]["prompt_tokens"], 3 + 1 + 7 + 3 + 1 + 6 + 3);
    assert_eq!(json["usage"]["completion_tokens"], o200k(content));
    assert_eq!(json["usage"]["completion_tokens"], 16);
    assert_eq!(json["usage"]["total_tokens"], 24 + 16);
}

#[tokio::test]
async fn reply_length_follows_max_tokens_and_header() {
    let app = mock(&[]);
    let mut body = chat_body("hi");
    body["max_tokens"] = json!(5);
    let json = post(&app, "/v1/chat/completions", &[], body.clone())
        .await
        .json();
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    assert_eq!(json["usage"]["completion_tokens"], 5);
    assert_eq!(
        o200k(json["choices"][0]["message"]["content"].as_str().unwrap()),
        5
    );

    let json = post(
        &app,
        "/v1/chat/completions",
        &[("x-mock-output-tokens", "40")],
        body,
    )
    .await
    .json();
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    assert_eq!(json["usage"]["completion_tokens"], 40);

    let json = post(
        &app,
        "/v1/chat/completions",
        &[("x-mock-no-usage", "1")],
        chat_body("hi"),
    )
    .await
    .json();
    assert!(json.get("usage").is_none());
}

#[tokio::test]
async fn replies_are_deterministic_per_backend() {
    let a = mock(&[]);
    let first = post(&a, "/v1/chat/completions", &[], chat_body("hello"))
        .await
        .json();
    let again = post(&a, "/v1/chat/completions", &[], chat_body("hello"))
        .await
        .json();
    assert_eq!(first["choices"], again["choices"]);
    let other = app(AppState::new(Config::parse_from(["mock-llm", "--name", "other"])).unwrap());
    let theirs = post(&other, "/v1/chat/completions", &[], chat_body("hello"))
        .await
        .json();
    assert_ne!(first["choices"], theirs["choices"]);
}

#[tokio::test]
async fn chat_stream_without_usage() {
    let app = mock(&[]);
    let full = post(&app, "/v1/chat/completions", &[], chat_body("stream me"))
        .await
        .json();
    let mut body = chat_body("stream me");
    body["stream"] = json!(true);
    let reply = post(&app, "/v1/chat/completions", &[], body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let lines = data_lines(reply.text());
    assert_eq!(lines.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o");
        assert!(
            chunk.get("usage").is_none(),
            "no usage key without include_usage"
        );
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let content_chunks = &chunks[1..chunks.len() - 1];
    assert!(content_chunks.len() >= 3);
    let text: String = content_chunks
        .iter()
        .map(|c| {
            assert!(c["choices"][0]["finish_reason"].is_null());
            c["choices"][0]["delta"]["content"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        text,
        full["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn chat_stream_with_include_usage() {
    let app = mock(&[]);
    let mut body = chat_body("tiktoken is great!");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body["max_completion_tokens"] = json!(7);
    let reply = post(&app, "/v1/chat/completions", &[], body).await;
    let lines = data_lines(reply.text());
    assert_eq!(lines.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (usage_chunk, earlier) = chunks.split_last().unwrap();
    for chunk in earlier {
        assert!(
            chunk["usage"].is_null() && chunk.get("usage").is_some(),
            "usage: null on {chunk}"
        );
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(
        earlier.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    assert_eq!(usage_chunk["choices"], json!([]));
    let text: String = earlier
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(o200k(&text), 7);
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 13, "completion_tokens": 7, "total_tokens": 20})
    );

    // x-mock-no-usage drops the usage chunk even when asked for.
    let mut body = chat_body("x");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = post(
        &app,
        "/v1/chat/completions",
        &[("x-mock-no-usage", "true")],
        body,
    )
    .await;
    assert!(!reply.text().contains("usage"));
}

#[tokio::test]
async fn legacy_completions() {
    let app = mock(&[]);
    let json = post(
        &app,
        "/v1/completions",
        &[],
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "tiktoken is great!", "max_tokens": 4}),
    )
    .await
    .json();
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    assert_eq!(
        json["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10})
    );
    assert_eq!(o200k(json["choices"][0]["text"].as_str().unwrap()), 4);

    let body = json!({"model": "m", "prompt": ["2 + 2 = 4", "tiktoken is great!"], "stream": true, "stream_options": {"include_usage": true}});
    let reply = post(&app, "/v1/completions", &[], body).await;
    let lines = data_lines(reply.text());
    assert_eq!(lines.last(), Some(&"[DONE]"));
    let usage: Value = serde_json::from_str(lines[lines.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 13);
    assert_eq!(usage["usage"]["completion_tokens"], 16);
}

#[tokio::test]
async fn anthropic_messages_json() {
    let app = mock(&[]);
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 3,
        "system": "tiktoken is great!",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "2 + 2 = 4"}]}],
    });
    let reply = post(&app, "/v1/messages", &[], body).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-mock-model"), Some("claude-sonnet-4-5"));
    let json = reply.json();
    assert_eq!(json["type"], "message");
    assert_eq!(json["role"], "assistant");
    assert_eq!(json["content"][0]["type"], "text");
    assert_eq!(json["stop_reason"], "max_tokens");
    assert_eq!(o200k(json["content"][0]["text"].as_str().unwrap()), 3);
    assert_eq!(
        json["usage"],
        json!({"input_tokens": 6 + 7, "output_tokens": 3})
    );

    let missing = post(
        &app,
        "/v1/messages",
        &[],
        json!({"model": "c", "messages": []}),
    )
    .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    let error = missing.json();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn anthropic_stream_sequence_and_usage() {
    let app = mock(&[]);
    let body = json!({
        "model": "claude-haiku-4-5",
        "max_tokens": 1024,
        "stream": true,
        "messages": [{"role": "user", "content": "tiktoken is great!"}],
    });
    let reply = post(&app, "/v1/messages", &[], body).await;
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let events = named_events(reply.text());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "content_block_delta")
        .count();
    assert!(deltas >= 3);
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);

    let start = &events[0].1["message"];
    assert_eq!(start["model"], "claude-haiku-4-5");
    assert_eq!(
        start["usage"],
        json!({"input_tokens": 6, "output_tokens": 1})
    );
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap()
        })
        .collect();
    let message_delta = &events[events.len() - 2].1;
    assert_eq!(message_delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(message_delta["usage"]["output_tokens"], o200k(&text));
    assert_eq!(o200k(&text), 16);
}

/// Reads a streamed body until it ends or fails; returns what arrived and whether it failed.
async fn read_until_failure(
    app: &Router,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (String, bool) {
    let response = app
        .clone()
        .oneshot(request("POST", path, headers, body.to_string()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body().into_data_stream();
    let mut received = String::new();
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(bytes) => received.push_str(std::str::from_utf8(&bytes).unwrap()),
            Err(_) => return (received, true),
        }
    }
    (received, false)
}

#[tokio::test]
async fn cut_stream_ends_early_without_done() {
    let app = mock(&[]);
    let mut body = chat_body("cut me");
    body["stream"] = json!(true);
    let (received, failed) = read_until_failure(
        &app,
        "/v1/chat/completions",
        &[("x-mock-cut-stream-after", "3")],
        body,
    )
    .await;
    assert!(failed, "the body ends in an error, not a clean end");
    let lines = data_lines(&received);
    assert_eq!(
        lines.len(),
        1 + 3,
        "role chunk + 3 content chunks: {lines:?}"
    );
    assert!(!received.contains("[DONE]") && !received.contains("finish_reason\":\"stop"));

    // From the command line, on the Anthropic stream.
    let app = mock(&["--cut-stream-after", "2"]);
    let body = json!({"model": "c", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (received, failed) = read_until_failure(&app, "/v1/messages", &[], body).await;
    assert!(failed);
    let names: Vec<String> = named_events(&received)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta"
        ]
    );

    let stats = get(&app, "/mock/stats").await.json();
    assert_eq!(stats["faults_total"], 1);
    assert_eq!(stats["requests_total"], 0);

    // A cut point beyond the reply leaves the stream whole.
    let mut body = chat_body("short");
    body["stream"] = json!(true);
    let headers = [("x-mock-cut-stream-after", "50")];
    let (received, failed) = read_until_failure(&app, "/v1/chat/completions", &headers, body).await;
    assert!(!failed && received.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn fail_first_by_key_then_success() {
    let app = mock(&[]);
    let headers = [
        ("x-mock-fail-first", "1"),
        ("x-mock-fail-key", "retry-test"),
    ];
    let first = post(&app, "/v1/chat/completions", &headers, chat_body("hi")).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.json()["error"]["type"], "server_error");
    assert_eq!(first.header("x-mock-backend"), Some("test-backend"));
    let second = post(&app, "/v1/chat/completions", &headers, chat_body("hi")).await;
    assert_eq!(second.status, StatusCode::OK);
    let other_key = [("x-mock-fail-first", "1"), ("x-mock-fail-key", "another")];
    assert_eq!(
        post(&app, "/v1/chat/completions", &other_key, chat_body("hi"))
            .await
            .status,
        503
    );

    // Reset starts the counts again.
    assert_eq!(
        send(&app, "POST", "/mock/reset", &[], Body::empty())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        post(&app, "/v1/chat/completions", &headers, chat_body("hi"))
            .await
            .status,
        503
    );
}

#[tokio::test]
async fn config_fail_first_then_success() {
    let app = mock(&[
        "--fail-first",
        "2",
        "--fail-status",
        "500",
        "--retry-after",
        "3",
    ]);
    for _ in 0..2 {
        let reply = post(&app, "/v1/chat/completions", &[], chat_body("hi")).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.header("retry-after"), Some("3"));
    }
    assert_eq!(
        post(&app, "/v1/chat/completions", &[], chat_body("hi"))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn status_header_with_retry_after() {
    let app = mock(&[]);
    let headers = [("x-mock-status", "429"), ("x-mock-retry-after", "7")];
    let reply = post(&app, "/v1/chat/completions", &headers, chat_body("hi")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.header("x-mock-model"), Some("gpt-4o"));
    let error = reply.json();
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert!(error["error"]["message"].is_string());

    let body =
        json!({"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let reply = post(&app, "/v1/messages", &headers, body.clone()).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
    let overloaded = post(
        &app,
        "/v1/messages",
        &[("x-mock-status", "529")],
        body.clone(),
    )
    .await;
    assert_eq!(overloaded.json()["error"]["type"], "overloaded_error");
    let server = post(&app, "/v1/messages", &[("x-mock-status", "500")], body).await;
    assert_eq!(server.json()["error"]["type"], "api_error");
    assert!(server.header("retry-after").is_none());

    let bad = post(
        &app,
        "/v1/chat/completions",
        &[("x-mock-status", "often")],
        chat_body("hi"),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn latency_and_token_delay() {
    let app = mock(&[]);
    let started = Instant::now();
    post(
        &app,
        "/v1/chat/completions",
        &[("x-mock-latency-ms", "60")],
        chat_body("hi"),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(60));

    // role + 3 content + finish + [DONE]: five gaps of 20 ms.
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    let headers = [
        ("x-mock-token-delay-ms", "20"),
        ("x-mock-output-tokens", "3"),
    ];
    let started = Instant::now();
    let reply = post(&app, "/v1/chat/completions", &headers, body).await;
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert!(reply.text().ends_with("data: [DONE]\n\n"));
}

fn cosine(a: &Value, b: &Value) -> f64 {
    let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
    a.iter()
        .zip(b)
        .map(|(x, y)| x.as_f64().unwrap() * y.as_f64().unwrap())
        .sum()
}

#[tokio::test]
async fn embeddings_place_similar_texts_close() {
    let app = mock(&[]);
    let inputs = [
        "What is the capital of France?",
        "what's the capital of france",
        "How do I bake bread?",
    ];
    let reply = post(
        &app,
        "/v1/embeddings",
        &[],
        json!({"model": "text-embedding-3-small", "input": inputs}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    assert_eq!(json["object"], "list");
    let data = json["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    let vectors: Vec<&Value> = data.iter().map(|d| &d["embedding"]).collect();
    for (i, v) in vectors.iter().enumerate() {
        assert_eq!(data[i]["index"], i);
        assert_eq!(v.as_array().unwrap().len(), 256);
        assert!((cosine(v, v) - 1.0).abs() < 1e-4, "unit length");
    }
    let paraphrase = cosine(vectors[0], vectors[1]);
    let unrelated = cosine(vectors[0], vectors[2]);
    assert!(
        paraphrase > 0.75 && unrelated < 0.3,
        "paraphrase {paraphrase}, unrelated {unrelated}"
    );
    let expected_tokens: u64 = inputs.iter().map(|t| o200k(t)).sum();
    assert_eq!(
        json["usage"],
        json!({"prompt_tokens": expected_tokens, "total_tokens": expected_tokens})
    );

    // base64 carries the same little-endian f32s; `dimensions` is honoured.
    let body =
        json!({"model": "e", "input": inputs[0], "encoding_format": "base64", "dimensions": 64});
    let encoded = post(&app, "/v1/embeddings", &[], body).await.json();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes.len(), 64 * 4);
    let norm: f32 = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()).powi(2))
        .sum();
    assert!((norm - 1.0).abs() < 1e-4);

    let empty = post(
        &app,
        "/v1/embeddings",
        &[],
        json!({"model": "e", "input": []}),
    )
    .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn stats_count_served_requests_and_faults() {
    let app = mock(&[]);
    let a1 = post(&app, "/v1/chat/completions", &[], chat_body("one"))
        .await
        .json();
    let a2 = post(&app, "/v1/chat/completions", &[], chat_body("two"))
        .await
        .json();
    let mut b = chat_body("three");
    b["model"] = json!("gpt-4o-mini");
    let b1 = post(&app, "/v1/chat/completions", &[], b).await.json();
    post(
        &app,
        "/v1/chat/completions",
        &[("x-mock-status", "503")],
        chat_body("fault"),
    )
    .await;
    send(&app, "POST", "/v1/chat/completions", &[], "{not json").await;

    let stats = get(&app, "/mock/stats").await.json();
    assert_eq!(stats["name"], "test-backend");
    assert_eq!(stats["requests_total"], 3);
    assert_eq!(stats["faults_total"], 1);
    let sum = |field: &str, replies: &[&Value]| {
        replies
            .iter()
            .map(|r| r["usage"][field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        stats["models"]["gpt-4o"],
        json!({
            "requests": 2,
            "prompt_tokens": sum("prompt_tokens", &[&a1, &a2]),
            "completion_tokens": sum("completion_tokens", &[&a1, &a2]),
        })
    );
    assert_eq!(stats["models"]["gpt-4o-mini"]["requests"], 1);
    assert_eq!(
        stats["models"]["gpt-4o-mini"]["prompt_tokens"],
        b1["usage"]["prompt_tokens"]
    );

    send(&app, "POST", "/mock/reset", &[], Body::empty()).await;
    let stats = get(&app, "/mock/stats").await.json();
    assert_eq!(stats["requests_total"], 0);
    assert_eq!(stats["faults_total"], 0);
    assert_eq!(stats["models"], json!({}));
    assert_eq!(get(&app, "/mock/requests").await.json(), json!([]));
}

#[tokio::test]
async fn request_log_records_what_arrived() {
    let app = mock(&[]);
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    post(
        &app,
        "/v1/chat/completions",
        &[("X-Tenant", "acme"), ("authorization", "Bearer k")],
        body,
    )
    .await;
    post(
        &app,
        "/v1/chat/completions",
        &[("x-mock-status", "500")],
        chat_body("hi"),
    )
    .await;
    send(&app, "POST", "/v1/embeddings", &[], "[").await;

    let log = get(&app, "/mock/requests").await.json();
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0]["path"], "/v1/chat/completions");
    assert_eq!(log[0]["model"], "gpt-4o");
    assert_eq!(log[0]["stream"], true);
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[0]["headers"]["x-tenant"], "acme");
    assert_eq!(log[0]["headers"]["authorization"], "Bearer k");
    assert_eq!(log[1]["status"], 500);
    assert_eq!(log[1]["stream"], false);
    assert_eq!(log[2]["path"], "/v1/embeddings");
    assert_eq!(log[2]["model"], Value::Null);
    assert_eq!(log[2]["status"], 400);
}

#[tokio::test]
async fn request_log_keeps_the_last_thousand() {
    let app = mock(&[]);
    for i in 0..1005 {
        send(
            &app,
            "POST",
            "/v1/embeddings",
            &[("x-n", &i.to_string())],
            "{",
        )
        .await;
    }
    let log = get(&app, "/mock/requests").await.json();
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 1000);
    assert_eq!(log[0]["headers"]["x-n"], "5");
    assert_eq!(log[999]["headers"]["x-n"], "1004");
}

#[tokio::test]
async fn invalid_bodies_get_400_in_the_provider_shape() {
    let app = mock(&[]);
    let reply = send(&app, "POST", "/v1/chat/completions", &[], "{\"model\": ").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid request body"));

    let reply = send(&app, "POST", "/v1/messages", &[], "nope").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    // Garbage of every kind, on every endpoint: always a clean 400, never a panic.
    let bodies: &[&[u8]] = &[
        b"",
        b"null",
        b"[]",
        b"42",
        b"\"s\"",
        b"{}",
        b"\xff\xfe\x00",
        b"{\"model\": 1}",
        b"{\"model\": \"m\", \"messages\": \"x\"}",
        b"{\"model\": \"m\", \"messages\": [{\"role\": 1}]}",
        b"{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": 5}]}",
        b"{\"model\": \"m\", \"prompt\": [1, 2]}",
        b"{\"model\": \"m\", \"input\": [[1, 2]]}",
        b"{\"model\": \"m\", \"input\": \"x\", \"dimensions\": 0}",
        b"{\"model\": \"m\", \"messages\": [], \"max_tokens\": -1}",
    ];
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
    ] {
        for body in bodies {
            let reply = send(&app, "POST", path, &[], body.to_vec()).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{path} {:?}",
                String::from_utf8_lossy(body)
            );
            reply.json();
        }
    }
}

#[tokio::test]
async fn models_health_and_unknown_paths() {
    let app = mock(&["--models", "a,b"]);
    post(&app, "/v1/chat/completions", &[], chat_body("hi")).await;
    post(
        &app,
        "/v1/chat/completions",
        &[("x-mock-status", "500")],
        json!({"model": "b", "messages": []}),
    )
    .await;
    let models = get(&app, "/v1/models").await.json();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "gpt-4o"]);

    let health = get(&app, "/healthz").await;
    assert_eq!((health.status, health.text()), (StatusCode::OK, "ok"));
    assert_eq!(health.header("x-mock-backend"), Some("test-backend"));

    let missing = get(&app, "/v2/nothing").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.header("x-mock-backend"), Some("test-backend"));
    assert_eq!(missing.json()["error"]["type"], "invalid_request_error");
}

#[test]
fn app_state_rejects_names_that_cannot_be_headers() {
    let config = Config::parse_from(["mock-llm", "--name", "bad\nname"]);
    assert!(AppState::new(config).is_err());
    let _: Arc<AppState> = AppState::new(Config::parse_from(["mock-llm"])).unwrap();
}

fn decompress(encoding: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(body).read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(body).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(body, 4096).read_to_end(&mut out),
        other => panic!("unexpected encoding {other}"),
    }
    .unwrap_or_else(|e| panic!("{encoding}: {e}"));
    out
}

#[tokio::test]
async fn force_encoding_compresses_whatever_the_client_accepts() {
    for encoding in ["gzip", "deflate", "br"] {
        let app = mock(&["--force-encoding", encoding]);
        let accept = [("accept-encoding", "identity")];
        let reply = post(&app, "/v1/chat/completions", &accept, chat_body("hi")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-encoding"), Some(encoding));
        assert_eq!(
            reply.header("content-length"),
            Some(reply.body.len().to_string().as_str()),
            "a whole body keeps its length"
        );
        let json: Value = serde_json::from_slice(&decompress(encoding, &reply.body)).unwrap();
        assert_eq!(json["object"], "chat.completion");
        assert!(json["usage"]["completion_tokens"].as_u64().unwrap() > 0);

        // Errors are compressed too; the mock's own endpoints are not.
        let reply = post(
            &app,
            "/v1/chat/completions",
            &[("x-mock-status", "429")],
            chat_body("hi"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        let error: Value = serde_json::from_slice(&decompress(encoding, &reply.body)).unwrap();
        assert_eq!(error["error"]["type"], "rate_limit_error");
        let stats = get(&app, "/mock/stats").await;
        assert_eq!(stats.header("content-encoding"), None);
        assert_eq!(stats.json()["requests_total"], 1);
    }
}

#[tokio::test]
async fn force_encoding_streams_events_compressed_as_they_go() {
    for encoding in ["gzip", "deflate", "br"] {
        let app = mock(&["--force-encoding", encoding]);
        let mut body = chat_body("stream me");
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        // Paced: the body is a stream, compressed and flushed event by event.
        let headers = [("x-mock-token-delay-ms", "1")];
        let response = app
            .clone()
            .oneshot(request(
                "POST",
                "/v1/chat/completions",
                &headers,
                body.to_string(),
            ))
            .await
            .unwrap();
        assert_eq!(response.headers()["content-encoding"], encoding);
        assert!(response.headers().get("content-length").is_none());
        let mut frames = response.into_body().into_data_stream();
        let mut compressed = Vec::new();
        let mut pieces = 0;
        while let Some(frame) = frames.next().await {
            compressed.extend_from_slice(&frame.unwrap());
            pieces += 1;
        }
        assert!(pieces > 3, "{encoding}: sent as it went ({pieces} pieces)");
        let text = String::from_utf8(decompress(encoding, &compressed)).unwrap();
        let lines = data_lines(&text);
        assert_eq!(lines.last(), Some(&"[DONE]"));
        let usage: Value = serde_json::from_str(lines[lines.len() - 2]).unwrap();
        assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);

        // A cut stream stays cut.
        let mut body = chat_body("cut me");
        body["stream"] = json!(true);
        let cut = [("x-mock-cut-stream-after", "2")];
        let response = app
            .clone()
            .oneshot(request(
                "POST",
                "/v1/chat/completions",
                &cut,
                body.to_string(),
            ))
            .await
            .unwrap();
        let mut frames = response.into_body().into_data_stream();
        let mut failed = false;
        while let Some(frame) = frames.next().await {
            failed |= frame.is_err();
        }
        assert!(failed, "{encoding}: the cut reaches the client");
    }
}
