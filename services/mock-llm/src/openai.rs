//! OpenAI endpoints: chat completions, legacy completions and the model list.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::exchange::Exchange;
use crate::faults::Provider;
use crate::generate::{pieces, reply_length, seed, ReplyLength};
use crate::messages::{last_user_texts, Message};
use crate::sse;
use crate::stats::{Outcome, Usage};
use crate::{json_response, unix_time, AppState};

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: Prompt,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
}

/// A legacy prompt: one string or a batch of strings (token-array prompts are not
/// supported and get a 400).
#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

impl Prompt {
    fn texts(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            Prompt::One(text) => (Some(text.as_str()), None),
            Prompt::Many(texts) => (None, Some(texts.iter().map(String::as_str))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
struct UsageBody {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> Self {
        UsageBody {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// The `usage` field of a streamed chunk: absent, `null` (every chunk before the last
/// when `include_usage` is on, as OpenAI does), or the totals.
type ChunkUsage = Option<Option<UsageBody>>;

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChatChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageBody>,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: ChunkUsage,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct TextCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [TextChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: ChunkUsage,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// Whether a stream ends with a usage chunk: asked for, and not suppressed by
/// `x-mock-no-usage`.
fn stream_usage(options: Option<StreamOptions>, exchange: &Exchange) -> bool {
    !exchange.controls.no_usage && options.and_then(|o| o.include_usage).unwrap_or(false)
}

fn finish_reason(length: ReplyLength) -> &'static str {
    if length.truncated {
        "length"
    } else {
        "stop"
    }
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Response> {
    let mut exchange =
        Exchange::start(&state, "/v1/chat/completions", Provider::OpenAi, &headers).await?;
    let request: ChatRequest = exchange.parse(&body)?;
    let stream = request.stream.unwrap_or(false);
    exchange.describe(&request.model, stream);
    exchange.check_faults()?;

    let length = reply_length(
        exchange.controls.output_tokens,
        request.max_completion_tokens.or(request.max_tokens),
    );
    let text = state.writer.reply(
        seed(&state.config.name, last_user_texts(&request.messages)),
        length.tokens,
    );
    let usage = Usage {
        prompt_tokens: state.tokenizer.openai_chat_prompt(&request.messages),
        completion_tokens: state.tokenizer.count(&text),
    };
    let id = state.response_id("chatcmpl-");
    let created = unix_time();
    let model = request.model.as_str();
    let finish = finish_reason(length);

    if !stream {
        let body = ChatCompletion {
            id: &id,
            object: "chat.completion",
            created,
            model,
            choices: [ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: &text,
                },
                logprobs: None,
                finish_reason: finish,
            }],
            usage: (!exchange.controls.no_usage).then(|| usage.into()),
        };
        return Ok(exchange.finish(json_response(&body), Outcome::Served(usage)));
    }

    let include_usage = stream_usage(request.stream_options, &exchange);
    let chunk = |choices: &[ChunkChoice], usage: ChunkUsage| {
        sse::data(&ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model,
            choices,
            usage,
        })
    };
    let delta = |delta: Delta, finish_reason: Option<&'static str>| {
        chunk(
            &[ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            include_usage.then_some(None),
        )
    };

    let mut events = vec![delta(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    )];
    events.extend(pieces(&text).map(|piece| {
        delta(
            Delta {
                role: None,
                content: Some(piece),
            },
            None,
        )
    }));
    let content = events.len() - 1;
    events.push(delta(Delta::default(), Some(finish)));
    if include_usage {
        events.push(chunk(&[], Some(Some(usage.into()))));
    }
    events.push(Bytes::from_static(sse::DONE));
    Ok(exchange.finish_stream(events, 1, content, usage))
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Response> {
    let mut exchange =
        Exchange::start(&state, "/v1/completions", Provider::OpenAi, &headers).await?;
    let request: CompletionRequest = exchange.parse(&body)?;
    let stream = request.stream.unwrap_or(false);
    exchange.describe(&request.model, stream);
    exchange.check_faults()?;

    let length = reply_length(exchange.controls.output_tokens, request.max_tokens);
    let text = state.writer.reply(
        seed(&state.config.name, request.prompt.texts()),
        length.tokens,
    );
    let usage = Usage {
        prompt_tokens: state.tokenizer.count_all(request.prompt.texts()),
        completion_tokens: state.tokenizer.count(&text),
    };
    let id = state.response_id("cmpl-");
    let created = unix_time();
    let model = request.model.as_str();
    let finish = finish_reason(length);
    let choice = |text, finish_reason| {
        [TextChoice {
            text,
            index: 0,
            logprobs: None,
            finish_reason,
        }]
    };

    if !stream {
        let body = TextCompletion {
            id: &id,
            object: "text_completion",
            created,
            model,
            choices: &choice(&text, Some(finish)),
            usage: (!exchange.controls.no_usage).then(|| Some(usage.into())),
        };
        return Ok(exchange.finish(json_response(&body), Outcome::Served(usage)));
    }

    let include_usage = stream_usage(request.stream_options, &exchange);
    let chunk = |choices: &[TextChoice], usage: ChunkUsage| {
        sse::data(&TextCompletion {
            id: &id,
            object: "text_completion",
            created,
            model,
            choices,
            usage,
        })
    };
    let mut events: Vec<Bytes> = pieces(&text)
        .map(|piece| chunk(&choice(piece, None), include_usage.then_some(None)))
        .collect();
    let content = events.len();
    events.push(chunk(
        &choice("", Some(finish)),
        include_usage.then_some(None),
    ));
    if include_usage {
        events.push(chunk(&[], Some(Some(usage.into()))));
    }
    events.push(Bytes::from_static(sse::DONE));
    Ok(exchange.finish_stream(events, 0, content, usage))
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelEntry<'a>>,
}

#[derive(Serialize)]
struct ModelEntry<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'a str,
}

/// The models given with --models, then every other model requested so far.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let seen = state.recorder.seen_models();
    let configured = state.config.models.iter();
    let extra = seen.iter().filter(|m| !state.config.models.contains(m));
    let data = configured
        .chain(extra)
        .map(|id| ModelEntry {
            id,
            object: "model",
            created: 0,
            owned_by: &state.config.name,
        })
        .collect();
    json_response(&ModelList {
        object: "list",
        data,
    })
}
