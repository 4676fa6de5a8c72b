//! tiktoken's `o200k_base` and `cl100k_base` token counts with nothing to build
//! at start-up: the pre-tokenizer patterns are matched by hand (no regex
//! engine to compile) and ranks are looked up in a [`CompactVocab`], a
//! precomputed hash table that lives in the module's data (no hash map to
//! fill). The counts equal `tiktoken-rs`'s `encode_ordinary(text).len()`; the
//! tests compare them on a corpus and on generated text.
//!
//! The patterns, from tiktoken (o200k_base, then cl100k_base):
//!
//! ```text
//! [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//! |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//! |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
//!
//! '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+
//! |\s++$|\s*[\r\n]|\s+(?!\S)|\s
//! ```
//!
//! Every alternative is resolved the way a backtracking engine resolves it
//! (leftmost alternative first, greedy quantifiers giving back from the
//! longest), which the comments on each matcher spell out.

use crate::tokens::{CountTokens, Encoding};
use crate::unicode_classes::RUNS;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// General-category class of a character, as the patterns use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Other,
    /// Lu, Lt
    Upper,
    /// Ll
    Lower,
    /// Lm, Lo: in both letter sets of o200k.
    Letter,
    /// M
    Mark,
    /// N
    Number,
    /// White_Space (`\s`)
    Space,
}

impl Class {
    fn from_id(id: u8) -> Self {
        match id {
            1 => Self::Upper,
            2 => Self::Lower,
            3 => Self::Letter,
            4 => Self::Mark,
            5 => Self::Number,
            6 => Self::Space,
            _ => Self::Other,
        }
    }

    fn of(c: char) -> Self {
        match c {
            'a'..='z' => Self::Lower,
            'A'..='Z' => Self::Upper,
            '0'..='9' => Self::Number,
            '\t'..='\r' | ' ' => Self::Space,
            '\0'..='\x7f' => Self::Other,
            _ => {
                let at = RUNS.partition_point(|&(start, _)| start <= u32::from(c));
                at.checked_sub(1).and_then(|i| RUNS.get(i)).map_or(Self::Other, |&(_, id)| Self::from_id(id))
            }
        }
    }

    /// `\p{L}`
    fn letter(self) -> bool {
        matches!(self, Self::Upper | Self::Lower | Self::Letter)
    }

    /// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`
    fn upperish(self) -> bool {
        matches!(self, Self::Upper | Self::Letter | Self::Mark)
    }

    /// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`
    fn lowerish(self) -> bool {
        matches!(self, Self::Lower | Self::Letter | Self::Mark)
    }

    /// `[^\s\p{L}\p{N}]`
    fn punct(self) -> bool {
        !matches!(self, Self::Space | Self::Number) && !self.letter()
    }
}

/// The character at byte `at` and the byte after it.
fn next(text: &str, at: usize) -> Option<(char, usize)> {
    let c = text.get(at..)?.chars().next()?;
    Some((c, at + c.len_utf8()))
}

/// `[^\r\n\p{L}\p{N}]`
fn prefix(c: char) -> bool {
    let class = Class::of(c);
    c != '\r' && c != '\n' && !class.letter() && class != Class::Number
}

/// End of the run of characters from `at` for which `keep` holds.
fn run(text: &str, mut at: usize, keep: impl Fn(char) -> bool) -> usize {
    while let Some((c, after)) = next(text, at) {
        if !keep(c) {
            break;
        }
        at = after;
    }
    at
}

/// Case-insensitive match of an ASCII-lowercase `word` at `at` (the `(?i)`
/// of the contractions: `s` also matches `ſ`, as in Unicode simple folding).
fn folded(text: &str, at: usize, word: &str) -> Option<usize> {
    let mut at = at;
    for w in word.chars() {
        let (c, after) = next(text, at)?;
        if c.to_ascii_lowercase() != w && !(w == 's' && c == 'ſ') {
            return None;
        }
        at = after;
    }
    Some(at)
}

/// `'` followed by one of `words`, tried in order.
fn contraction(text: &str, at: usize, words: &[&str]) -> Option<usize> {
    let (c, after) = next(text, at)?;
    if c != '\'' {
        return None;
    }
    words.iter().find_map(|w| folded(text, after, w))
}

const O200K_CONTRACTIONS: &[&str] = &["s", "t", "re", "ve", "m", "ll", "d"];
const CL100K_CONTRACTIONS: &[&str] = &["s", "d", "m", "t", "ll", "ve", "re"];

/// o200k `U*Lw+` from `at`: the U run is greedy and gives back characters
/// until one that is also in Lw can start `Lw+`.
fn upper_then_lower(text: &str, at: usize) -> Option<usize> {
    let mut end = at;
    let mut after_last_lowerish = None;
    while let Some((c, after)) = next(text, end) {
        let class = Class::of(c);
        if !class.upperish() {
            break;
        }
        if class.lowerish() {
            after_last_lowerish = Some(after);
        }
        end = after;
    }
    match next(text, end) {
        Some((c, _)) if Class::of(c).lowerish() => Some(run(text, end, |c| Class::of(c).lowerish())),
        // Backtracking: Lw+ starts at the last U character that is also Lw,
        // and stops before the next one, which is not.
        _ => after_last_lowerish,
    }
}

/// o200k `U+Lw*` from `at`.
fn upper_then_maybe_lower(text: &str, at: usize) -> Option<usize> {
    let end = run(text, at, |c| Class::of(c).upperish());
    (end > at).then(|| run(text, end, |c| Class::of(c).lowerish()))
}

/// An optional `[^\r\n\p{L}\p{N}]` then `body`: with the prefix first, then without.
fn with_prefix(text: &str, at: usize, body: impl Fn(&str, usize) -> Option<usize>) -> Option<usize> {
    let (c, after) = next(text, at)?;
    if prefix(c) {
        if let Some(end) = body(text, after) {
            return Some(end);
        }
    }
    body(text, at)
}

/// ` ?[^\s\p{L}\p{N}]+` then a run of `tail` characters.
fn punctuation(text: &str, at: usize, tail: impl Fn(char) -> bool) -> Option<usize> {
    let (c, after) = next(text, at)?;
    let start = match next(text, after) {
        Some((d, _)) if c == ' ' && Class::of(d).punct() => after,
        _ => at,
    };
    let end = run(text, start, |c| Class::of(c).punct());
    (end > start).then(|| run(text, end, tail))
}

/// The whitespace run from `at`: its end, the end of its last `\r`/`\n`, and
/// the start of its last character.
fn spaces(text: &str, at: usize) -> (usize, Option<usize>, usize) {
    let mut end = at;
    let mut after_newline = None;
    let mut last_start = at;
    while let Some((c, after)) = next(text, end) {
        if Class::of(c) != Class::Space {
            break;
        }
        if c == '\r' || c == '\n' {
            after_newline = Some(after);
        }
        last_start = end;
        end = after;
    }
    (end, after_newline, last_start)
}

fn digits(text: &str, at: usize) -> Option<usize> {
    let mut end = at;
    for _ in 0..3 {
        match next(text, end) {
            Some((c, after)) if Class::of(c) == Class::Number => end = after,
            _ => break,
        }
    }
    (end > at).then_some(end)
}

/// End of the o200k piece starting at `at` (`at` < `text.len()`).
fn o200k_piece(text: &str, at: usize) -> Option<usize> {
    let letters = |body: fn(&str, usize) -> Option<usize>| {
        with_prefix(text, at, body).map(|end| contraction(text, end, O200K_CONTRACTIONS).unwrap_or(end))
    };
    if let Some(end) = letters(upper_then_lower).or_else(|| letters(upper_then_maybe_lower)) {
        return Some(end);
    }
    if let Some(end) = digits(text, at).or_else(|| punctuation(text, at, |c| matches!(c, '\r' | '\n' | '/'))) {
        return Some(end);
    }
    let (end, after_newline, last_start) = spaces(text, at);
    if end == at {
        return None;
    }
    // \s*[\r\n]+ : up to the last newline of the run.
    if let Some(after) = after_newline {
        return Some(after);
    }
    // \s+(?!\S) : the whole run at the end of the text, else all but its last
    // character (which then starts the next piece); \s+ : a single space.
    if end == text.len() || last_start == at {
        return Some(end);
    }
    Some(last_start)
}

/// End of the cl100k piece starting at `at`.
fn cl100k_piece(text: &str, at: usize) -> Option<usize> {
    if let Some(end) = contraction(text, at, CL100K_CONTRACTIONS) {
        return Some(end);
    }
    // [^\r\n\p{L}\p{N}]?+\p{L}++ : the prefix, when there, is taken for good.
    let (c, after) = next(text, at)?;
    let start = if prefix(c) { after } else { at };
    let end = run(text, start, |c| Class::of(c).letter());
    if end > start {
        return Some(end);
    }
    if let Some(end) = digits(text, at).or_else(|| punctuation(text, at, |c| matches!(c, '\r' | '\n'))) {
        return Some(end);
    }
    let (end, after_newline, last_start) = spaces(text, at);
    if end == at {
        return None;
    }
    if end == text.len() {
        return Some(end); // \s++$
    }
    if let Some(after) = after_newline {
        return Some(after); // \s*[\r\n]
    }
    if last_start > at {
        return Some(last_start); // \s+(?!\S)
    }
    Some(end) // \s
}

/// The pieces tiktoken's pattern splits `text` into.
pub fn pieces(encoding: Encoding, text: &str) -> Pieces<'_> {
    Pieces { encoding, text, at: 0 }
}

pub struct Pieces<'a> {
    encoding: Encoding,
    text: &'a str,
    at: usize,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.at >= self.text.len() {
            return None;
        }
        let end = match self.encoding {
            Encoding::O200kBase => o200k_piece(self.text, self.at),
            Encoding::Cl100kBase => cl100k_piece(self.text, self.at),
        };
        // Every character starts some alternative; the fallback only guards
        // against a loop.
        let end = end.filter(|&e| e > self.at).unwrap_or_else(|| next(self.text, self.at).map_or(self.text.len(), |(_, a)| a));
        let piece = self.text.get(self.at..end);
        self.at = end;
        piece
    }
}

/// Ranks of byte sequences.
pub trait Ranks {
    fn rank(&self, bytes: &[u8]) -> Option<u32>;
}

/// Tokens of one piece after tiktoken's byte-pair merges: always merge the
/// adjacent pair with the lowest rank, the leftmost on ties.
pub fn bpe_count(ranks: &dyn Ranks, piece: &[u8]) -> usize {
    if piece.len() <= 1 || ranks.rank(piece).is_some() {
        return piece.len().min(1);
    }
    if piece.len() < 128 {
        merge_small(ranks, piece)
    } else {
        merge_large(ranks, piece)
    }
}

fn pair_rank(ranks: &dyn Ranks, piece: &[u8], start: usize, end: usize) -> u32 {
    piece.get(start..end).and_then(|b| ranks.rank(b)).unwrap_or(u32::MAX)
}

/// tiktoken's `_byte_pair_merge`: quadratic, fastest for short pieces.
fn merge_small(ranks: &dyn Ranks, piece: &[u8]) -> usize {
    // (start of part, rank of merging it with the next part)
    let mut parts: Vec<(usize, u32)> = (0..piece.len().saturating_sub(1))
        .map(|i| (i, pair_rank(ranks, piece, i, i + 2)))
        .collect();
    parts.push((piece.len() - 1, u32::MAX));
    parts.push((piece.len(), u32::MAX));
    let rank_at = |parts: &[(usize, u32)], i: usize| -> u32 {
        match (parts.get(i), parts.get(i + 3)) {
            (Some(&(start, _)), Some(&(end, _))) => pair_rank(ranks, piece, start, end),
            _ => u32::MAX,
        }
    };
    loop {
        let last = parts.len().saturating_sub(1);
        let Some((i, _)) = parts
            .get(..last)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter(|(_, &(_, r))| r != u32::MAX)
            .min_by_key(|&(i, &(_, r))| (r, i))
        else {
            break;
        };
        if i > 0 {
            let r = rank_at(&parts, i - 1);
            if let Some(p) = parts.get_mut(i - 1) {
                p.1 = r;
            }
        }
        let r = rank_at(&parts, i);
        if let Some(p) = parts.get_mut(i) {
            p.1 = r;
        }
        parts.remove(i + 1);
    }
    parts.len() - 1
}

/// The same merges with a heap and linked boundaries: O(n log n) for long
/// pieces (a megabyte without spaces must not take minutes).
fn merge_large(ranks: &dyn Ranks, piece: &[u8]) -> usize {
    let n = piece.len();
    let mut next_of: Vec<usize> = (1..=n + 1).collect();
    let mut prev_of: Vec<usize> = (0..=n).map(|i| i.saturating_sub(1)).collect();
    let mut live = vec![true; n + 1];
    let mut heap = BinaryHeap::new();
    for i in 0..n - 1 {
        if let Some(r) = piece.get(i..i + 2).and_then(|b| ranks.rank(b)) {
            heap.push(Reverse((r, i, i + 2)));
        }
    }
    let mut count = n;
    while let Some(Reverse((_, start, end))) = heap.pop() {
        if !live.get(start).copied().unwrap_or(false) {
            continue;
        }
        let Some(&mid) = next_of.get(start) else { continue };
        if mid >= n || next_of.get(mid) != Some(&end) {
            continue; // stale: a neighbour merged since
        }
        // Merge the part at `mid` into the one at `start`.
        if let Some(l) = live.get_mut(mid) {
            *l = false;
        }
        if let Some(s) = next_of.get_mut(start) {
            *s = end;
        }
        if let Some(p) = prev_of.get_mut(end) {
            *p = start;
        }
        count -= 1;
        if end < n {
            let after = next_of.get(end).copied().unwrap_or(n);
            if let Some(r) = piece.get(start..after).and_then(|b| ranks.rank(b)) {
                heap.push(Reverse((r, start, after)));
            }
        }
        if start > 0 {
            let before = prev_of.get(start).copied().unwrap_or(0);
            if let Some(r) = piece.get(before..end).and_then(|b| ranks.rank(b)) {
                heap.push(Reverse((r, before, end)));
            }
        }
    }
    count
}

// ---- the compact table ------------------------------------------------------------

const MAGIC: &[u8; 4] = b"TKV1";

/// A vocabulary as one byte string, ready to use without building anything:
///
/// ```text
/// "TKV1" | n: u32 | bits: u32 | offsets: (n + 1) × u32 | slots: 2^bits × u32 | token bytes
/// ```
///
/// (little-endian). Token `r`'s bytes are `bytes[offsets[r]..offsets[r + 1]]`;
/// `slots` is an open-addressing hash table (FNV-1a, linear probing) holding
/// `rank + 1`, 0 for empty.
#[derive(Debug, Clone, Copy)]
pub struct CompactVocab<'a> {
    offsets: &'a [u8],
    slots: &'a [u8],
    bytes: &'a [u8],
    mask: usize,
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn u32_at(bytes: &[u8], index: usize) -> Option<u32> {
    let at = index.checked_mul(4)?;
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(word))
}

impl<'a> CompactVocab<'a> {
    /// Reads a table; `None` when it is not one.
    pub fn new(data: &'a [u8]) -> Option<Self> {
        if data.get(..4)? != MAGIC {
            return None;
        }
        let n = usize::try_from(u32_at(data, 1)?).ok()?;
        let bits = u32_at(data, 2)?;
        if bits > 30 {
            return None;
        }
        let slots_len = 1usize << bits;
        let offsets_at = 12;
        let slots_at = offsets_at + (n + 1) * 4;
        let bytes_at = slots_at + slots_len * 4;
        Some(Self {
            offsets: data.get(offsets_at..slots_at)?,
            slots: data.get(slots_at..bytes_at)?,
            bytes: data.get(bytes_at..)?,
            mask: slots_len - 1,
        })
    }

    /// Serialises a vocabulary given as token bytes by rank.
    pub fn build(tokens: &[Vec<u8>]) -> Vec<u8> {
        let n = tokens.len();
        let bits = (n.max(1) * 2).next_power_of_two().trailing_zeros();
        let mask = (1usize << bits) - 1;
        let mut slots = vec![0u32; 1 << bits];
        for (rank, token) in tokens.iter().enumerate() {
            let mut slot = fnv1a(token) as usize & mask;
            while slots.get(slot).is_some_and(|&s| s != 0) {
                slot = (slot + 1) & mask;
            }
            if let Some(s) = slots.get_mut(slot) {
                *s = u32::try_from(rank + 1).unwrap_or(u32::MAX);
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        let mut offset = 0u32;
        out.extend_from_slice(&offset.to_le_bytes());
        for token in tokens {
            offset += u32::try_from(token.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&offset.to_le_bytes());
        }
        for slot in slots {
            out.extend_from_slice(&slot.to_le_bytes());
        }
        for token in tokens {
            out.extend_from_slice(token);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.offsets.len() / 4 - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of token `rank`.
    pub fn token(&self, rank: u32) -> Option<&'a [u8]> {
        let r = usize::try_from(rank).ok()?;
        let start = usize::try_from(u32_at(self.offsets, r)?).ok()?;
        let end = usize::try_from(u32_at(self.offsets, r + 1)?).ok()?;
        self.bytes.get(start..end)
    }
}

impl Ranks for CompactVocab<'_> {
    fn rank(&self, bytes: &[u8]) -> Option<u32> {
        let mut slot = fnv1a(bytes) as usize & self.mask;
        for _ in 0..=self.mask {
            let value = u32_at(self.slots, slot)?;
            let rank = value.checked_sub(1)?;
            if self.token(rank)? == bytes {
                return Some(rank);
            }
            slot = (slot + 1) & self.mask;
        }
        None
    }
}

/// A tiktoken encoding over a compact table.
#[derive(Debug, Clone, Copy)]
pub struct Tokenizer<'a> {
    pub encoding: Encoding,
    pub vocab: CompactVocab<'a>,
}

impl CountTokens for Tokenizer<'_> {
    fn count(&self, text: &str) -> u64 {
        pieces(self.encoding, text).map(|piece| bpe_count(&self.vocab, piece.as_bytes()) as u64).sum()
    }
}

#[cfg(test)]
mod tests;
