//! Rewriting a streamed response for a client that did not ask for usage
//! when the meter asked the upstream for it: the extra usage chunk is
//! dropped and the `"usage":null` member the upstream then adds to every
//! chunk is removed, so the client receives the bytes it would have received
//! without the option. Everything else passes byte for byte.
//!
//! Chunks reach the filter split at arbitrary bytes, so the rewriter frames
//! the stream into complete events (ending at a blank line) and holds back an
//! incomplete tail until the next chunk or the end of the stream.

/// Frames raw SSE bytes into complete event blocks (terminators included).
#[derive(Debug, Default)]
pub struct Framer {
    pending: Vec<u8>,
    /// Where the current line of `pending` starts.
    line_start: usize,
    /// How far `pending` has been scanned for line ends.
    scanned: usize,
}

impl Framer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk; returns the complete blocks, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(chunk);
        let mut blocks = Vec::new();
        let mut block_start = 0;
        while let Some(offset) = self.pending.get(self.scanned..).and_then(|rest| rest.iter().position(|&b| b == b'\n')) {
            let newline = self.scanned + offset;
            let line = self.pending.get(self.line_start..newline).unwrap_or_default();
            let blank = line.is_empty() || line == b"\r";
            self.scanned = newline + 1;
            self.line_start = newline + 1;
            if blank {
                blocks.push(self.pending.get(block_start..newline + 1).unwrap_or_default().to_vec());
                block_start = newline + 1;
            }
        }
        self.pending.drain(..block_start);
        self.line_start -= block_start;
        self.scanned -= block_start;
        blocks
    }

    /// The incomplete tail, handed over at the end of the stream.
    pub fn take_pending(&mut self) -> Vec<u8> {
        self.line_start = 0;
        self.scanned = 0;
        std::mem::take(&mut self.pending)
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

fn skip_ws_back(bytes: &[u8], mut i: usize) -> usize {
    // Returns the index just after the last non-whitespace byte before `i`.
    while i > 0 && bytes.get(i - 1).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
        i -= 1;
    }
    i
}

/// Removes the last `"usage": null` member of a JSON object inside `block`
/// (with its separating comma), keeping every other byte. A raw `"` never
/// occurs inside a JSON string, so `"usage"` followed by `:` is always a key.
/// Returns `None` when there is no such member.
pub fn strip_null_usage(block: &[u8]) -> Option<Vec<u8>> {
    const KEY: &[u8] = b"\"usage\"";
    let mut search_end = block.len();
    while let Some(at) = block.get(..search_end).and_then(|b| b.windows(KEY.len()).rposition(|w| w == KEY)) {
        search_end = at;
        let colon = skip_ws(block, at + KEY.len());
        if block.get(colon) != Some(&b':') {
            continue;
        }
        let value = skip_ws(block, colon + 1);
        if block.get(value..value + 4) != Some(b"null") {
            continue;
        }
        let after_value = value + 4;
        let next = skip_ws(block, after_value);
        let before = skip_ws_back(block, at);
        let (cut_from, cut_to) = match (before.checked_sub(1).and_then(|i| block.get(i)), block.get(next)) {
            // `…, "usage": null` followed by `,` or `}`: drop from the comma.
            (Some(b','), Some(b',' | b'}')) => (before - 1, after_value),
            // `{"usage": null, …`: drop through the next comma.
            (Some(b'{'), Some(b',')) => (at, skip_ws(block, next + 1)),
            // `{"usage": null}`
            (Some(b'{'), Some(b'}')) => (at, after_value),
            _ => continue,
        };
        let mut out = Vec::with_capacity(block.len());
        out.extend_from_slice(block.get(..cut_from).unwrap_or_default());
        out.extend_from_slice(block.get(cut_to..).unwrap_or_default());
        return Some(out);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_blocks_at_blank_lines_any_split() {
        let stream: &[u8] = b"data: a\n\n: ping\r\n\r\nevent: x\ndata: b\ndata: c\n\ndata: [DONE]\n\ntail";
        let expected: Vec<&[u8]> = vec![b"data: a\n\n", b": ping\r\n\r\n", b"event: x\ndata: b\ndata: c\n\n", b"data: [DONE]\n\n"];
        for split in 0..=stream.len() {
            let mut framer = Framer::new();
            let (a, b) = stream.split_at(split);
            let mut blocks = framer.push(a);
            blocks.extend(framer.push(b));
            assert_eq!(blocks, expected, "split at {split}");
            assert_eq!(framer.take_pending(), b"tail");
        }
        let mut framer = Framer::new();
        let blocks: Vec<Vec<u8>> = stream.iter().flat_map(|b| framer.push(&[*b])).collect();
        assert_eq!(blocks, expected, "byte by byte");
        assert_eq!(framer.pending_bytes(), 4);
    }

    #[test]
    fn strips_only_the_null_usage_member() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"data: {\"a\":1,\"usage\":null}\n\n", b"data: {\"a\":1}\n\n"),
            (b"data: {\"a\": 1, \"usage\": null, \"b\": 2}\n\n", b"data: {\"a\": 1, \"b\": 2}\n\n"),
            (b"data: {\"usage\":null,\"a\":1}\n\n", b"data: {\"a\":1}\n\n"),
            (b"data: {\"usage\":null}\n\n", b"data: {}\n\n"),
            (
                b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":null\"}}],\"usage\":null}\n\n",
                b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":null\"}}]}\n\n",
            ),
        ];
        for (input, output) in cases {
            assert_eq!(strip_null_usage(input).as_deref(), Some(*output), "{}", String::from_utf8_lossy(input));
        }
        for input in [&b"data: {\"usage\":{\"prompt_tokens\":1}}\n\n"[..], b"data: {\"a\":\"usage\"}\n\n", b"data: [DONE]\n\n", b""] {
            assert_eq!(strip_null_usage(input), None, "{}", String::from_utf8_lossy(input));
        }
    }
}
