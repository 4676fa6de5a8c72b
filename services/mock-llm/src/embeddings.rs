//! OpenAI embeddings: deterministic vectors in which similar texts land close together,
//! so semantic-cache tests behave sensibly without a model.
//!
//! A vector is a hashed bag of features — lowercase word unigrams (what a text is
//! about) and character trigrams of the whitespace-normalised lowercase text (robust to
//! contractions, punctuation and spelling variants) — normalised to unit length.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::exchange::Exchange;
use crate::faults::Provider;
use crate::generate::Fnv1a;
use crate::stats::{Outcome, Usage};
use crate::{json_response, AppState};

pub const DEFAULT_DIMENSIONS: usize = 256;
const MAX_DIMENSIONS: usize = 4096;
const WORD_WEIGHT: f32 = 1.0;
const TRIGRAM_WEIGHT: f32 = 0.5;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Input,
    dimensions: Option<usize>,
    encoding_format: Option<EncodingFormat>,
}

/// One text or a batch (token-array inputs are not supported and get a 400).
#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    Float,
    /// Little-endian f32s, base64-encoded; the official Python client asks for this.
    Base64,
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingEntry>,
    model: &'a str,
    usage: UsageBody,
}

#[derive(Serialize)]
struct EmbeddingEntry {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct UsageBody {
    prompt_tokens: u64,
    total_tokens: u64,
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Response> {
    let mut exchange =
        Exchange::start(&state, "/v1/embeddings", Provider::OpenAi, &headers).await?;
    let request: EmbeddingsRequest = exchange.parse(&body)?;
    exchange.describe(&request.model, false);
    let texts: Vec<&str> = match &request.input {
        Input::One(text) => vec![text.as_str()],
        Input::Many(texts) => texts.iter().map(String::as_str).collect(),
    };
    if texts.is_empty() {
        return Err(exchange.reject(StatusCode::BAD_REQUEST, "input must not be empty"));
    }
    let dimensions = request.dimensions.unwrap_or(DEFAULT_DIMENSIONS);
    if !(1..=MAX_DIMENSIONS).contains(&dimensions) {
        let message = format!("dimensions must be between 1 and {MAX_DIMENSIONS}");
        return Err(exchange.reject(StatusCode::BAD_REQUEST, &message));
    }
    exchange.check_faults()?;

    let base64 = request.encoding_format == Some(EncodingFormat::Base64);
    let data = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = embed(text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Float(vector)
            };
            EmbeddingEntry {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let prompt_tokens = state.tokenizer.count_all(texts.iter().copied());
    let body = EmbeddingList {
        object: "list",
        data,
        model: &request.model,
        usage: UsageBody {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    };
    let usage = Usage {
        prompt_tokens,
        completion_tokens: 0,
    };
    Ok(exchange.finish(json_response(&body), Outcome::Served(usage)))
}

/// A unit-length vector of `dimensions` components for `text`.
pub fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let mut vector = vec![0f32; dimensions];
    let lower = text.to_lowercase();
    for word in lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let mut hash = Fnv1a::new();
        hash.write(b"w");
        hash.write(word.as_bytes());
        add_feature(&mut vector, hash.finish(), WORD_WEIGHT);
    }
    let padded: Vec<char> = std::iter::once(' ')
        .chain(collapse_whitespace(&lower))
        .chain(std::iter::once(' '))
        .collect();
    for trigram in padded.windows(3) {
        let mut hash = Fnv1a::new();
        hash.write(b"t");
        for c in trigram {
            hash.write(c.encode_utf8(&mut [0u8; 4]).as_bytes());
        }
        add_feature(&mut vector, hash.finish(), TRIGRAM_WEIGHT);
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    } else if let Some(first) = vector.first_mut() {
        // Whitespace-only text has no features; any fixed unit vector keeps the
        // "unit length" promise.
        *first = 1.0;
    }
    vector
}

/// `text` with each run of whitespace collapsed to one space and none at the ends.
fn collapse_whitespace(text: &str) -> impl Iterator<Item = char> + '_ {
    text.split_whitespace()
        .enumerate()
        .flat_map(|(i, word)| (i > 0).then_some(' ').into_iter().chain(word.chars()))
}

/// Adds a feature to the bucket its hash picks, with a sign from the hash too, so that
/// collisions cancel out on average instead of piling up.
fn add_feature(vector: &mut [f32], hash: u64, weight: f32) {
    let len = vector.len().max(1) as u64;
    if let Some(slot) = vector.get_mut((hash % len) as usize) {
        *slot += if hash >> 63 == 0 { weight } else { -weight };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &str, b: &str) -> f32 {
        let (a, b) = (embed(a, DEFAULT_DIMENSIONS), embed(b, DEFAULT_DIMENSIONS));
        a.iter().zip(&b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_unit_length_and_deterministic() {
        for text in ["What is the capital of France?", "   ", "é", "a"] {
            let v = embed(text, DEFAULT_DIMENSIONS);
            assert_eq!(v.len(), DEFAULT_DIMENSIONS);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{text:?}: {norm}");
            assert_eq!(v, embed(text, DEFAULT_DIMENSIONS));
        }
    }

    #[test]
    fn similar_texts_are_closer() {
        let paraphrase = cosine(
            "What is the capital of France?",
            "what's the capital of france",
        );
        let unrelated = cosine("What is the capital of France?", "How do I bake bread?");
        assert!(paraphrase > 0.75, "paraphrase {paraphrase}");
        assert!(unrelated < 0.3, "unrelated {unrelated}");
        assert!(paraphrase - unrelated > 0.5);
    }
}
