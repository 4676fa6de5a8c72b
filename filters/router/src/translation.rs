//! Which API the client speaks and which the reached backend speaks, and the
//! response translators an attempt needs when they differ (an OpenAI client
//! served by Anthropic in a fallback chain, or the other way round).

use crate::config::Provider;
use tollgate_core::translate::{
    anthropic_error_to_openai, anthropic_response_to_openai_chat, openai_chat_response_to_anthropic, openai_error_to_anthropic,
    AnthropicToOpenAiStream, OpenAiToAnthropicStream,
};

pub const OPENAI_CHAT_PATH: &str = "/v1/chat/completions";
pub const ANTHROPIC_MESSAGES_PATH: &str = "/v1/messages";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// OpenAI chat client, Anthropic backend.
    ChatToMessages,
    /// Anthropic client, OpenAI-compatible backend.
    MessagesToChat,
}

impl Direction {
    /// The translation an attempt needs, from the client's path (query string
    /// ignored) and the backend's provider; `None` when they speak alike.
    pub fn between(path: &str, provider: Provider) -> Option<Self> {
        let path = path.split('?').next().unwrap_or_default();
        match (path, provider) {
            (OPENAI_CHAT_PATH, Provider::Anthropic) => Some(Self::ChatToMessages),
            (ANTHROPIC_MESSAGES_PATH, Provider::Openai) => Some(Self::MessagesToChat),
            _ => None,
        }
    }

    /// The backend's path for the translated request.
    pub fn backend_path(self) -> &'static str {
        match self {
            Self::ChatToMessages => ANTHROPIC_MESSAGES_PATH,
            Self::MessagesToChat => OPENAI_CHAT_PATH,
        }
    }
}

/// What the client asked for, which translated responses must echo.
#[derive(Debug, Clone)]
pub struct ClientAsk {
    pub model: String,
    pub include_usage: bool,
    pub created: u64,
}

/// Translates one attempt's response body back into the client's API.
pub enum ResponseTranslator {
    /// A whole JSON body (answer or error), translated at the end.
    Json { direction: Direction, ask: ClientAsk, status: u16 },
    AnthropicStream(AnthropicToOpenAiStream),
    OpenAiStream(OpenAiToAnthropicStream),
}

impl ResponseTranslator {
    pub fn new(direction: Direction, ask: ClientAsk, status: u16, event_stream: bool) -> Self {
        match (direction, event_stream && status < 400) {
            (Direction::ChatToMessages, true) => {
                Self::AnthropicStream(AnthropicToOpenAiStream::new(&ask.model, ask.created, ask.include_usage))
            }
            (Direction::MessagesToChat, true) => Self::OpenAiStream(OpenAiToAnthropicStream::new(&ask.model)),
            (direction, false) => Self::Json { direction, ask, status },
        }
    }

    /// Whether the whole body must be buffered before translating.
    pub fn needs_whole_body(&self) -> bool {
        matches!(self, Self::Json { .. })
    }

    /// Translates a stream chunk (and, at the end, closes the stream).
    pub fn chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        let mut out = match self {
            Self::AnthropicStream(t) => t.push(chunk),
            Self::OpenAiStream(t) => t.push(chunk),
            Self::Json { .. } => Vec::new(),
        };
        if end_of_stream {
            out.extend(match self {
                Self::AnthropicStream(t) => t.finish(),
                Self::OpenAiStream(t) => t.finish(),
                Self::Json { .. } => Vec::new(),
            });
        }
        out
    }

    /// Translates a whole JSON body; a body that does not translate becomes
    /// an error in the client's API (never the other API's shape).
    pub fn whole(&self, body: &[u8]) -> Vec<u8> {
        let Self::Json { direction, ask, status } = self else {
            return body.to_vec();
        };
        let status = *status;
        match direction {
            Direction::ChatToMessages if status >= 400 => anthropic_error_to_openai(body, status),
            Direction::MessagesToChat if status >= 400 => openai_error_to_anthropic(body, status),
            Direction::ChatToMessages => anthropic_response_to_openai_chat(body, &ask.model, ask.created)
                .unwrap_or_else(|e| anthropic_error_to_openai(e.to_string().as_bytes(), 502)),
            Direction::MessagesToChat => openai_chat_response_to_anthropic(body, &ask.model)
                .unwrap_or_else(|e| openai_error_to_anthropic(e.to_string().as_bytes(), 502)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_follow_path_and_provider() {
        assert_eq!(Direction::between("/v1/chat/completions", Provider::Anthropic), Some(Direction::ChatToMessages));
        assert_eq!(Direction::between("/v1/messages?beta=true", Provider::Openai), Some(Direction::MessagesToChat));
        assert_eq!(Direction::between("/v1/chat/completions", Provider::Openai), None);
        assert_eq!(Direction::between("/v1/embeddings", Provider::Anthropic), None);
    }

    fn ask() -> ClientAsk {
        ClientAsk { model: "gpt-4-turbo".into(), include_usage: true, created: 1_700_000_000 }
    }

    #[test]
    fn whole_json_answers_and_errors_come_back_in_the_client_api() {
        let answer = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":2}}"#;
        let t = ResponseTranslator::new(Direction::ChatToMessages, ask(), 200, false);
        assert!(t.needs_whole_body());
        let json: serde_json::Value = serde_json::from_slice(&t.whole(answer)).unwrap();
        assert_eq!(json["object"], "chat.completion");
        assert_eq!(json["model"], "gpt-4-turbo");
        assert_eq!(json["choices"][0]["message"]["content"], "Hi");
        assert_eq!(json["usage"]["total_tokens"], 7);

        let error = br#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#;
        let t = ResponseTranslator::new(Direction::ChatToMessages, ask(), 529, true);
        let json: serde_json::Value = serde_json::from_slice(&t.whole(error)).unwrap();
        assert!(json["error"]["message"].as_str().unwrap().contains("busy"), "{json}");

        let t = ResponseTranslator::new(Direction::ChatToMessages, ask(), 200, false);
        let json: serde_json::Value = serde_json::from_slice(&t.whole(b"<html>")).unwrap();
        assert!(json["error"].is_object(), "garbage becomes an OpenAI error: {json}");
    }

    #[test]
    fn streams_translate_chunk_by_chunk_and_close() {
        let stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"c\",\"content\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let mut t = ResponseTranslator::new(Direction::ChatToMessages, ask(), 200, true);
        assert!(!t.needs_whole_body());
        let (a, b) = stream.split_at(100);
        let mut out = t.chunk(a, false);
        out.extend(t.chunk(b, true));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"content\":\"Hello\""), "{text}");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    }
}
