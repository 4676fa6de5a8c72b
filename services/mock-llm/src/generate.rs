//! Deterministic reply text of an exact token length.
//!
//! Replies are built from words that are one token both with and without a leading
//! space (capitalised, for the first word), ending in a one-token ".". tiktoken's
//! pre-tokenizer splits such text at every " word" and before the ".", so the reply's
//! token count is exactly its number of pieces. Usage is still measured on the final
//! text (the tests check the two agree), and each piece is one streamed chunk.

use crate::tokens::Tokenizer;

/// Reply length when neither the request nor `x-mock-output-tokens` asks for one.
pub const DEFAULT_REPLY_TOKENS: u64 = 16;

/// Upper bound for `x-mock-output-tokens`, so one header cannot make the mock allocate
/// without limit.
pub const MAX_REPLY_TOKENS: u64 = 100_000;

const CANDIDATE_WORDS: &[&str] = &[
    "the", "quick", "model", "answer", "token", "stream", "gateway", "request", "reply", "simple",
    "data", "value", "world", "system", "light", "river", "garden", "music", "number", "story",
    "cloud", "green", "blue", "small", "large", "early", "late", "open", "clear", "bright",
    "quiet", "strong", "water", "paper", "table", "window", "market", "city", "road", "house",
    "field", "forest", "mountain", "ocean", "summer", "winter", "morning", "evening", "friend",
    "family", "people", "time", "year", "day", "night", "work", "play", "learn", "build", "test",
    "check", "send", "read", "write", "find", "keep", "move", "turn", "start", "stop", "route",
    "count", "limit", "price", "cost", "fast", "slow", "good", "great", "new", "old", "first",
    "last", "next", "best",
];

/// How long a reply is and whether a token limit cut it short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLength {
    pub tokens: u64,
    pub truncated: bool,
}

/// `x-mock-output-tokens` sets the length outright; otherwise the default length,
/// truncated to the request's token limit.
pub fn reply_length(requested: Option<u64>, max_tokens: Option<u64>) -> ReplyLength {
    match (requested, max_tokens) {
        (Some(tokens), _) => ReplyLength {
            tokens,
            truncated: false,
        },
        (None, Some(max)) if max < DEFAULT_REPLY_TOKENS => ReplyLength {
            tokens: max,
            truncated: true,
        },
        (None, _) => ReplyLength {
            tokens: DEFAULT_REPLY_TOKENS,
            truncated: false,
        },
    }
}

/// The vocabulary replies are drawn from, filtered for the configured encoding.
pub struct Writer {
    words: Vec<&'static str>,
}

impl Writer {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        let words = CANDIDATE_WORDS
            .iter()
            .copied()
            .filter(|w| {
                tokenizer.count(&format!(" {w}")) == 1 && tokenizer.count(&capitalise(w)) == 1
            })
            .collect();
        Writer { words }
    }

    /// A reply of `tokens` tokens, chosen by `seed`.
    pub fn reply(&self, seed: u64, tokens: u64) -> String {
        let mut rng = SplitMix64(seed);
        let word_count = if tokens >= 2 { tokens - 1 } else { tokens };
        let mut text = String::with_capacity(tokens as usize * 8);
        for i in 0..word_count {
            let word = self.pick(&mut rng);
            if i == 0 {
                text.push_str(&capitalise(word));
            } else {
                text.push(' ');
                text.push_str(word);
            }
        }
        if tokens >= 2 {
            text.push('.');
        }
        text
    }

    fn pick(&self, rng: &mut SplitMix64) -> &'static str {
        let len = self.words.len().max(1) as u64;
        self.words
            .get((rng.next() % len) as usize)
            .copied()
            .unwrap_or("the")
    }
}

/// The reply's stream pieces: the first word, then each " word", then the ".".
pub fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ' || c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// Seed for a reply: the backend name and the text being answered, so two backends give
/// different (but each repeatable) answers to the same prompt.
pub fn seed<'a>(backend: &str, texts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut hash = Fnv1a::new();
    hash.write(backend.as_bytes());
    hash.write(&[0]);
    for text in texts {
        hash.write(text.as_bytes());
    }
    hash.finish()
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// 64-bit FNV-1a: tiny, stable across runs and platforms (unlike std's SipHash keys).
pub struct Fnv1a(u64);

impl Fnv1a {
    pub fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Encoding;

    #[test]
    fn vocabulary_survives_both_encodings() {
        for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let writer = Writer::new(&Tokenizer::new(encoding));
            assert!(
                writer.words.len() >= 40,
                "{encoding:?}: {}",
                writer.words.len()
            );
        }
    }

    #[test]
    fn reply_has_exactly_the_requested_tokens() {
        for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let tok = Tokenizer::new(encoding);
            let writer = Writer::new(&tok);
            for tokens in (0..40).chain([100, 257]) {
                for s in 0..20 {
                    let text = writer.reply(seed("b", [s.to_string().as_str()]), tokens);
                    assert_eq!(tok.count(&text), tokens, "{encoding:?} {text:?}");
                    assert_eq!(pieces(&text).count() as u64, tokens, "{text:?}");
                }
            }
        }
    }

    #[test]
    fn replies_are_deterministic_and_depend_on_backend_and_prompt() {
        let writer = Writer::new(&Tokenizer::new(Encoding::O200kBase));
        let a = writer.reply(seed("a", ["hello"]), 16);
        assert_eq!(a, writer.reply(seed("a", ["hello"]), 16));
        assert_ne!(a, writer.reply(seed("b", ["hello"]), 16));
        assert_ne!(a, writer.reply(seed("a", ["goodbye"]), 16));
    }

    #[test]
    fn pieces_rebuild_the_text() {
        let text = "Quick model answer.";
        assert_eq!(
            pieces(text).collect::<Vec<_>>(),
            ["Quick", " model", " answer", "."]
        );
        assert_eq!(pieces("").count(), 0);
    }

    #[test]
    fn length_rules() {
        assert_eq!(
            reply_length(None, None),
            ReplyLength {
                tokens: 16,
                truncated: false
            }
        );
        assert_eq!(
            reply_length(None, Some(5)),
            ReplyLength {
                tokens: 5,
                truncated: true
            }
        );
        assert_eq!(
            reply_length(None, Some(100)),
            ReplyLength {
                tokens: 16,
                truncated: false
            }
        );
        assert_eq!(
            reply_length(Some(40), Some(5)),
            ReplyLength {
                tokens: 40,
                truncated: false
            }
        );
    }
}
