//! The parts of an OpenAI or Anthropic request body the filters read.

use serde::Deserialize;

/// The fields every supported request body (chat completions, completions,
/// embeddings, Anthropic messages) has in common. Unknown fields are ignored:
/// the body is forwarded as the client sent it.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct RequestSummary {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    /// The completion cap (`max_tokens`, or OpenAI's newer `max_completion_tokens`).
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON, or JSON of the wrong shape; the message says where.
    Malformed(String),
}

pub fn summarize(body: &[u8]) -> Result<RequestSummary, BodyError> {
    serde_json::from_slice(body).map_err(|e| BodyError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_and_stream() {
        let s = summarize(br#"{"model":"llama-70b","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(s, RequestSummary { model: Some("llama-70b".into()), stream: true, max_tokens: None });
        assert_eq!(summarize(br#"{"max_completion_tokens":64}"#).unwrap().max_tokens, Some(64));
        assert_eq!(summarize(b"{}").unwrap().model, None);
    }

    #[test]
    fn rejects_malformed_bodies() {
        assert!(matches!(summarize(b"{\"model\":"), Err(BodyError::Malformed(_))));
        assert!(matches!(summarize(br#"{"model": 7}"#), Err(BodyError::Malformed(m)) if m.contains("invalid type")));
        assert!(matches!(summarize(b"[1,2]"), Err(BodyError::Malformed(_))));
    }
}
