//! Token estimates for when a provider does not report usage, and for the
//! prompt at request time: which encoding a model family uses, and OpenAI's
//! published recipe for chat prompts (openai-cookbook, "How to count tokens
//! with tiktoken"): every message is framed by 3 tokens, a `name` costs one
//! more, and the reply is primed with 3.
//!
//! The tokenizer itself is behind [`CountTokens`], so this logic is tested
//! with any counter and the filter chooses the implementation.

use crate::usage::Api;
use serde::Deserialize;

const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;

/// A tiktoken encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, o-series, GPT-5; a fair stand-in for open models.
    O200kBase,
    /// GPT-4, GPT-4 Turbo, GPT-3.5 Turbo, text-embedding-3.
    Cl100kBase,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Self::O200kBase => "o200k_base",
            Self::Cl100kBase => "cl100k_base",
        }
    }
}

/// Counts the tokens of a text (ordinary text: special-token strings such as
/// `<|endoftext|>` count as text, as they do in user content sent to the APIs).
pub trait CountTokens {
    fn count(&self, text: &str) -> u64;
}

/// Chooses the encoding of a model by the longest configured prefix of its
/// name (`gpt-4` → cl100k_base, `gpt-4o` → o200k_base), else the default.
#[derive(Debug, Clone)]
pub struct EncodingTable {
    default: Encoding,
    /// Longest prefix first.
    prefixes: Vec<(String, Encoding)>,
}

impl EncodingTable {
    pub fn new(default: Encoding, prefixes: impl IntoIterator<Item = (String, Encoding)>) -> Self {
        let mut prefixes: Vec<_> = prefixes.into_iter().collect();
        prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self { default, prefixes }
    }

    pub fn for_model(&self, model: &str) -> Encoding {
        self.prefixes
            .iter()
            .find(|(prefix, _)| model.starts_with(prefix.as_str()))
            .map_or(self.default, |(_, encoding)| *encoding)
    }
}

// ---- request shapes -----------------------------------------------------------

/// Message content: a string, or parts of which only the text counts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
    /// Any other shape counts nothing.
    Other(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

impl Content {
    fn count(&self, counter: &dyn CountTokens) -> u64 {
        match self {
            Self::Text(text) => counter.count(text),
            Self::Parts(parts) => parts.iter().filter_map(|p| p.text.as_deref()).map(|t| counter.count(t)).sum(),
            Self::Other(_) => 0,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    name: Option<String>,
}


/// A completions `prompt` or embeddings `input`: text(s) or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Inputs {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u64>),
    TokenLists(Vec<Vec<u64>>),
    Other(serde::de::IgnoredAny),
}

impl Inputs {
    fn count(&self, counter: &dyn CountTokens) -> u64 {
        match self {
            Self::Text(text) => counter.count(text),
            Self::Texts(texts) => texts.iter().map(|t| counter.count(t)).sum(),
            Self::Tokens(ids) => ids.len() as u64,
            Self::TokenLists(lists) => lists.iter().map(|l| l.len() as u64).sum(),
            Self::Other(_) => 0,
        }
    }
}

/// The fields of a request body the meter reads, parsed in one pass: the
/// model, the stream options, and whatever holds the prompt for each API.
#[derive(Debug, Default, Deserialize)]
pub struct RequestBody {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<serde_json::Value>,
    /// Chat completions and Anthropic messages.
    #[serde(default)]
    messages: Vec<Message>,
    /// Anthropic's system prompt.
    #[serde(default)]
    system: Option<Content>,
    /// Completions.
    #[serde(default)]
    prompt: Option<Inputs>,
    /// Embeddings.
    #[serde(default)]
    input: Option<Inputs>,
}

impl RequestBody {
    /// `None` when the body is not a JSON object of the known shapes.
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// Estimated prompt tokens; `None` for an API whose prompt we do not know.
    pub fn prompt_tokens(&self, counter: &dyn CountTokens, api: Api) -> Option<u64> {
        match api {
            Api::ChatCompletions => Some(chat_prompt(counter, &self.messages)),
            // Anthropic's tokenizer is not public: count the system prompt and
            // message texts with the model's configured encoding, no framing.
            Api::Messages => {
                let system = self.system.as_ref().map_or(0, |s| s.count(counter));
                let messages: u64 = self.messages.iter().filter_map(|m| m.content.as_ref()).map(|c| c.count(counter)).sum();
                Some(system + messages)
            }
            Api::Completions => Some(self.prompt.as_ref().map_or(0, |p| p.count(counter))),
            Api::Embeddings => Some(self.input.as_ref().map_or(0, |i| i.count(counter))),
            Api::Other => None,
        }
    }
}

/// OpenAI's chat recipe (tools are not counted).
fn chat_prompt(counter: &dyn CountTokens, messages: &[Message]) -> u64 {
    let framed: u64 = messages
        .iter()
        .map(|m| {
            let name = m.name.as_deref().map_or(0, |n| counter.count(n) + TOKENS_PER_NAME);
            let content = m.content.as_ref().map_or(0, |c| c.count(counter));
            TOKENS_PER_MESSAGE + counter.count(&m.role) + content + name
        })
        .sum();
    framed + REPLY_PRIMING
}

/// Estimated prompt tokens of a request body; `None` when the body is not
/// JSON of the API's shape (or the API has no prompt we know).
pub fn estimate_prompt(counter: &dyn CountTokens, api: Api, body: &[u8]) -> Option<u64> {
    RequestBody::parse(body)?.prompt_tokens(counter, api)
}

/// A counter for when no tokenizer is at hand: about 4 bytes a token for
/// English text, never 0 for non-empty text.
#[derive(Debug, Default, Clone, Copy)]
pub struct BytesPerToken;

impl CountTokens for BytesPerToken {
    fn count(&self, text: &str) -> u64 {
        (text.len() as u64).div_ceil(4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts whitespace-separated words: enough to check the recipes.
    struct Words;
    impl CountTokens for Words {
        fn count(&self, text: &str) -> u64 {
            text.split_whitespace().count() as u64
        }
    }

    #[test]
    fn chat_recipe_frames_messages() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","name":"bob smith","content":[{"type":"text","text":"hello there"},{"type":"image_url","image_url":{"url":"x"}}]},
            {"role":"assistant","content":null,"tool_calls":[]}]}"#;
        // system: 3 + 1 + 2; user: 3 + 1 + 2 + (2 + 1); assistant: 3 + 1; priming 3
        assert_eq!(estimate_prompt(&Words, Api::ChatCompletions, body), Some(6 + 9 + 4 + 3));
    }

    #[test]
    fn other_apis() {
        let anthropic = br#"{"model":"c","system":[{"type":"text","text":"a b"}],"messages":[{"role":"user","content":"c d e"}]}"#;
        assert_eq!(estimate_prompt(&Words, Api::Messages, anthropic), Some(5));
        assert_eq!(estimate_prompt(&Words, Api::Completions, br#"{"prompt":["a b","c"]}"#), Some(3));
        assert_eq!(estimate_prompt(&Words, Api::Completions, br#"{"prompt":[1,2,3]}"#), Some(3));
        assert_eq!(estimate_prompt(&Words, Api::Embeddings, br#"{"input":[[1,2],[3]]}"#), Some(3));
        assert_eq!(estimate_prompt(&Words, Api::Embeddings, br#"{"input":"x y"}"#), Some(2));
        assert_eq!(estimate_prompt(&Words, Api::Embeddings, br#"{}"#), Some(0));
        assert_eq!(estimate_prompt(&Words, Api::Other, br#"{}"#), None);
    }

    #[test]
    fn malformed_bodies_give_none() {
        for api in [Api::ChatCompletions, Api::Messages, Api::Completions, Api::Embeddings] {
            assert_eq!(estimate_prompt(&Words, api, b"{\"messages\": "), None);
            assert_eq!(estimate_prompt(&Words, api, b"\xff"), None);
        }
        assert_eq!(estimate_prompt(&Words, Api::ChatCompletions, br#"{"messages": 3}"#), None);
        // Unknown content shapes count nothing rather than failing.
        assert_eq!(estimate_prompt(&Words, Api::ChatCompletions, br#"{"messages":[{"role":"user","content":7}]}"#), Some(3 + 1 + 3));
    }

    #[test]
    fn encoding_by_longest_prefix() {
        let table = EncodingTable::new(
            Encoding::O200kBase,
            [("gpt-4".to_string(), Encoding::Cl100kBase), ("gpt-4o".to_string(), Encoding::O200kBase)],
        );
        assert_eq!(table.for_model("gpt-4-turbo"), Encoding::Cl100kBase);
        assert_eq!(table.for_model("gpt-4o-mini"), Encoding::O200kBase);
        assert_eq!(table.for_model("llama-70b"), Encoding::O200kBase);
        assert_eq!(Encoding::Cl100kBase.name(), "cl100k_base");
    }

    #[test]
    fn bytes_per_token_fallback() {
        assert_eq!(BytesPerToken.count(""), 0);
        assert_eq!(BytesPerToken.count("abc"), 1);
        assert_eq!(BytesPerToken.count("abcdefghi"), 3);
    }
}
