//! Token counting for `usage`. All counting lives here so the recipes can be checked
//! against independently known numbers (see the tests).

use tiktoken_rs::CoreBPE;

use crate::config::Encoding;
use crate::messages::{Content, Message};

/// OpenAI's chat recipe: every message is framed by 3 tokens
/// (`<|start|>{role}<|message|>…<|end|>`), a `name` costs 1 more, and the reply is
/// primed with 3 (`<|start|>assistant<|message|>`).
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;

/// A loaded tiktoken encoding. The BPE tables are built once per process (tiktoken-rs
/// singletons), so constructing a `Tokenizer` is cheap after the first time.
#[derive(Clone, Copy)]
pub struct Tokenizer {
    bpe: &'static CoreBPE,
}

impl Tokenizer {
    pub fn new(encoding: Encoding) -> Self {
        let bpe = match encoding {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        };
        Tokenizer { bpe }
    }

    /// Tokens in `text`. Special-token text such as `<|endoftext|>` counts as ordinary
    /// text, as it does for user content sent to the real APIs.
    pub fn count(&self, text: &str) -> u64 {
        self.bpe.encode_ordinary(text).len() as u64
    }

    pub fn count_all<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> u64 {
        texts.into_iter().map(|t| self.count(t)).sum()
    }

    /// Prompt tokens of a chat completion request, by OpenAI's published recipe
    /// (openai-cookbook "How to count tokens with tiktoken"). Tool definitions and tool
    /// calls are not counted.
    pub fn openai_chat_prompt(&self, messages: &[Message]) -> u64 {
        let framed: u64 = messages
            .iter()
            .map(|m| {
                let name = m
                    .name
                    .as_deref()
                    .map_or(0, |n| self.count(n) + TOKENS_PER_NAME);
                TOKENS_PER_MESSAGE + self.count(&m.role) + self.count_all(m.texts()) + name
            })
            .sum();
        framed + REPLY_PRIMING
    }

    /// Input tokens of an Anthropic Messages request: the text of the system prompt and
    /// of every message, without framing. Anthropic's own tokenizer is not public; this
    /// approximates it with the same tiktoken family the gateway uses, so the gateway's
    /// estimates and the mock's reported usage agree.
    pub fn anthropic_prompt(&self, system: Option<&Content>, messages: &[Message]) -> u64 {
        let system = system.map_or(0, |s| self.count_all(s.texts()));
        system
            + messages
                .iter()
                .map(|m| self.count_all(m.texts()))
                .sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Part;

    fn msg(role: &str, name: Option<&str>, content: &str) -> Message {
        Message {
            role: role.into(),
            content: Some(Content::Text(content.into())),
            name: name.map(Into::into),
        }
    }

    /// The conversation from the openai-cookbook token-counting notebook, whose counts
    /// the notebook checked against the OpenAI API: 129 prompt tokens for gpt-4-0613
    /// (cl100k_base) and 124 for gpt-4o (o200k_base).
    fn cookbook_messages() -> Vec<Message> {
        vec![
            msg("system", None, "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."),
            msg("system", Some("example_user"), "New synergies will help drive top-line growth."),
            msg("system", Some("example_assistant"), "Things working well together will increase revenue."),
            msg("system", Some("example_user"), "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."),
            msg("system", Some("example_assistant"), "Let's talk later when we're less busy about how to do better."),
            msg("user", None, "This late pivot means we don't have time to boil the ocean for the client deliverable."),
        ]
    }

    #[test]
    fn chat_recipe_matches_openai_api_counts() {
        let messages = cookbook_messages();
        assert_eq!(
            Tokenizer::new(Encoding::Cl100kBase).openai_chat_prompt(&messages),
            129
        );
        assert_eq!(
            Tokenizer::new(Encoding::O200kBase).openai_chat_prompt(&messages),
            124
        );
    }

    /// Single-string counts printed in the same notebook.
    #[test]
    fn string_counts_match_published_examples() {
        let o200k = Tokenizer::new(Encoding::O200kBase);
        let cl100k = Tokenizer::new(Encoding::Cl100kBase);
        assert_eq!(o200k.count("tiktoken is great!"), 6);
        assert_eq!(cl100k.count("antidisestablishmentarianism"), 6);
        assert_eq!(o200k.count("antidisestablishmentarianism"), 6);
        assert_eq!(cl100k.count("2 + 2 = 4"), 7);
        assert_eq!(o200k.count("2 + 2 = 4"), 7);
        assert_eq!(cl100k.count("お誕生日おめでとう"), 9);
        assert_eq!(o200k.count("お誕生日おめでとう"), 8);
    }

    #[test]
    fn content_parts_count_their_text_only() {
        let tok = Tokenizer::new(Encoding::O200kBase);
        let parts = Message {
            role: "user".into(),
            content: Some(Content::Parts(vec![
                Part {
                    text: Some("tiktoken is".into()),
                },
                Part { text: None }, // e.g. an image_url part
                Part {
                    text: Some(" great!".into()),
                },
            ])),
            name: None,
        };
        // "tiktoken is" = t/ikt/oken/ is (4), " great!" = great/! (2); framing 3 + "user" 1 + priming 3.
        assert_eq!(tok.openai_chat_prompt(&[parts]), 3 + 1 + 4 + 2 + 3);
    }

    #[test]
    fn anthropic_counts_system_and_message_text() {
        let tok = Tokenizer::new(Encoding::O200kBase);
        let system = Content::Text("tiktoken is great!".into());
        let messages = [msg("user", None, "2 + 2 = 4")];
        assert_eq!(tok.anthropic_prompt(Some(&system), &messages), 6 + 7);
        assert_eq!(tok.anthropic_prompt(None, &messages), 7);
    }
}
