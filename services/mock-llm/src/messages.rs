//! Request message shapes shared by the OpenAI and Anthropic APIs: both accept message
//! content as a plain string or as an array of typed parts.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// OpenAI only: the participant name, which OpenAI's token recipe counts.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One content part. Only its text matters here: image, audio and tool parts carry
/// no `text` and contribute no tokens.
#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        let (single, parts) = match self {
            Content::Text(text) => (Some(text.as_str()), None),
            Content::Parts(parts) => (None, Some(parts.iter().filter_map(|p| p.text.as_deref()))),
        };
        single.into_iter().chain(parts.into_iter().flatten())
    }
}

impl Message {
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.content.iter().flat_map(Content::texts)
    }
}

/// The text the reply is derived from: the last user message (or, failing that, the last
/// message), so the same conversation always gets the same answer.
pub fn last_user_texts(messages: &[Message]) -> impl Iterator<Item = &str> {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .or_else(|| messages.last())
        .into_iter()
        .flat_map(Message::texts)
}
