//! Anthropic Messages endpoint, JSON and streaming.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::exchange::Exchange;
use crate::faults::Provider;
use crate::generate::{pieces, reply_length, seed};
use crate::messages::{last_user_texts, Content, Message};
use crate::sse;
use crate::stats::{Outcome, Usage};
use crate::{json_response, AppState};

#[derive(Deserialize)]
struct MessagesRequest {
    model: String,
    messages: Vec<Message>,
    system: Option<Content>,
    max_tokens: Option<u64>,
    stream: Option<bool>,
}

#[derive(Serialize)]
struct MessageBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: &'a [TextBlock<'a>],
    stop_reason: Option<&'static str>,
    stop_sequence: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageBody>,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct UsageBody {
    input_tokens: u64,
    output_tokens: u64,
}

/// A streaming event: its `type` plus whatever fields that type carries.
#[derive(Serialize)]
struct Event<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    fields: T,
}

#[derive(Serialize)]
struct MessageStart<'a> {
    message: MessageBody<'a>,
}

#[derive(Serialize)]
struct BlockStart<'a> {
    index: u32,
    content_block: TextBlock<'a>,
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    index: u32,
    delta: TextDelta<'a>,
}

#[derive(Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct BlockStop {
    index: u32,
}

#[derive(Serialize)]
struct MessageDelta {
    delta: StopDelta,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OutputUsage>,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

#[derive(Serialize)]
struct NoFields {}

fn event<T: Serialize>(kind: &str, fields: T) -> Bytes {
    sse::event(kind, &Event { kind, fields })
}

pub async fn messages(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Response> {
    let mut exchange =
        Exchange::start(&state, "/v1/messages", Provider::Anthropic, &headers).await?;
    let request: MessagesRequest = exchange.parse(&body)?;
    let stream = request.stream.unwrap_or(false);
    exchange.describe(&request.model, stream);
    // Anthropic, unlike OpenAI, makes the caller choose a limit.
    let Some(max_tokens) = request.max_tokens else {
        return Err(exchange.reject(StatusCode::BAD_REQUEST, "max_tokens: Field required"));
    };
    exchange.check_faults()?;

    let length = reply_length(exchange.controls.output_tokens, Some(max_tokens));
    let text = state.writer.reply(
        seed(&state.config.name, last_user_texts(&request.messages)),
        length.tokens,
    );
    let usage = Usage {
        prompt_tokens: state
            .tokenizer
            .anthropic_prompt(request.system.as_ref(), &request.messages),
        completion_tokens: state.tokenizer.count(&text),
    };
    let id = state.response_id("msg_");
    let stop_reason = if length.truncated {
        "max_tokens"
    } else {
        "end_turn"
    };
    let report_usage = !exchange.controls.no_usage;

    if !stream {
        let body = MessageBody {
            id: &id,
            kind: "message",
            role: "assistant",
            model: &request.model,
            content: &[TextBlock {
                kind: "text",
                text: &text,
            }],
            stop_reason: Some(stop_reason),
            stop_sequence: None,
            usage: report_usage.then_some(UsageBody {
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
            }),
        };
        return Ok(exchange.finish(json_response(&body), Outcome::Served(usage)));
    }

    let start = MessageBody {
        id: &id,
        kind: "message",
        role: "assistant",
        model: &request.model,
        content: &[],
        stop_reason: None,
        stop_sequence: None,
        // Anthropic reports the first output token already counted at message_start.
        usage: report_usage.then_some(UsageBody {
            input_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens.min(1),
        }),
    };
    let mut events = vec![
        event("message_start", MessageStart { message: start }),
        event(
            "content_block_start",
            BlockStart {
                index: 0,
                content_block: TextBlock {
                    kind: "text",
                    text: "",
                },
            },
        ),
        event("ping", NoFields {}),
    ];
    let leading = events.len();
    events.extend(pieces(&text).map(|piece| {
        event(
            "content_block_delta",
            BlockDelta {
                index: 0,
                delta: TextDelta {
                    kind: "text_delta",
                    text: piece,
                },
            },
        )
    }));
    let content_events = events.len() - leading;
    events.push(event("content_block_stop", BlockStop { index: 0 }));
    events.push(event(
        "message_delta",
        MessageDelta {
            delta: StopDelta {
                stop_reason,
                stop_sequence: None,
            },
            usage: report_usage.then_some(OutputUsage {
                output_tokens: usage.completion_tokens,
            }),
        },
    ));
    events.push(event("message_stop", NoFields {}));

    Ok(exchange.finish_stream(events, leading, content_events, usage))
}
