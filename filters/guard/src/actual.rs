//! What a response actually used, read by the guard itself as the response
//! passes (the meter after it on the response path has not seen the last
//! chunk yet when the guard settles): the provider's `usage` from a JSON body
//! or a stream's events, else an estimate of about four bytes a token.

use tollgate_core::sse::Parser;
use tollgate_core::usage::{parse_body, usage_in_tail, Api, StreamUsage, Usage};

/// Bytes of a large body's end kept to find its `usage`.
const TAIL_BYTES: usize = 16 * 1024;

#[derive(Debug)]
enum Body {
    Json { kept: Vec<u8>, total: u64, tail: Vec<u8>, overflow: bool },
    Stream { parser: Parser, usage: StreamUsage },
    /// Compressed: nothing to read.
    Opaque,
}

#[derive(Debug)]
pub struct ResponseUsage {
    api: Api,
    successful: bool,
    body: Body,
    max_bytes: usize,
}

impl ResponseUsage {
    pub fn start(api: Api, status: Option<u32>, content_type: &str, content_encoding: &str, max_bytes: usize) -> Self {
        let successful = status.is_some_and(|s| (200..300).contains(&s));
        let encoding = content_encoding.trim().to_ascii_lowercase();
        let body = if !encoding.is_empty() && encoding != "identity" {
            Body::Opaque
        } else if content_type.trim().to_ascii_lowercase().starts_with("text/event-stream") {
            // Only the byte count of the text is needed (for estimates).
            Body::Stream { parser: Parser::new(), usage: StreamUsage::new(api, 0) }
        } else {
            Body::Json { kept: Vec::new(), total: 0, tail: Vec::new(), overflow: false }
        };
        Self { api, successful, body, max_bytes }
    }

    pub fn successful(&self) -> bool {
        self.successful
    }

    pub fn chunk(&mut self, bytes: &[u8]) {
        if !self.successful {
            return;
        }
        match &mut self.body {
            Body::Json { kept, total, tail, overflow } => {
                *total = total.saturating_add(bytes.len() as u64);
                if !*overflow && kept.len() + bytes.len() <= self.max_bytes {
                    kept.extend_from_slice(bytes);
                } else {
                    if !*overflow {
                        *overflow = true;
                        tail.append(kept);
                    }
                    tail.extend_from_slice(bytes);
                    if tail.len() > TAIL_BYTES {
                        tail.drain(..tail.len() - TAIL_BYTES);
                    }
                }
            }
            Body::Stream { parser, usage } => {
                for event in parser.push(bytes) {
                    usage.event(&event);
                }
            }
            Body::Opaque => {}
        }
    }

    /// Tokens the response used. An unsuccessful response used none; a
    /// response without usage used the prompt estimate plus about a token
    /// per four bytes of generated text.
    pub fn usage(&self, prompt_estimate: u64) -> Option<Usage> {
        if !self.successful || self.api == Api::Other {
            return Some(Usage::default());
        }
        let estimated = |output_bytes: u64| Usage { input: prompt_estimate, output: output_bytes.div_ceil(4), cached_input: 0 };
        match &self.body {
            Body::Json { kept, total, tail, overflow } => {
                if *overflow {
                    return Some(usage_in_tail(tail).unwrap_or_else(|| estimated(*total)));
                }
                // Providers put `usage` last: look there before parsing it all.
                if let Some(usage) = usage_in_tail(kept.get(kept.len().saturating_sub(TAIL_BYTES)..).unwrap_or(kept)) {
                    return Some(usage);
                }
                let parsed = parse_body(kept, 0);
                Some(parsed.usage.unwrap_or_else(|| estimated(parsed.text.total_bytes())))
            }
            Body::Stream { usage, .. } => {
                let text = usage.text().total_bytes();
                Some(match usage.usage() {
                    Some(reported) => Usage {
                        input: if reported.input > 0 { reported.input } else { prompt_estimate },
                        // A cut stream may have sent more than it reported.
                        output: if usage.done() { reported.output } else { reported.output.max(text.div_ceil(4)) },
                        cached_input: reported.cached_input,
                    },
                    None => estimated(text),
                })
            }
            // Nothing to read: the caller keeps the reservation as the charge.
            Body::Opaque => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_usage_is_read_whole_or_from_the_tail() {
        let body = br#"{"choices":[{"message":{"content":"hi there"}}],"usage":{"prompt_tokens":12,"completion_tokens":5}}"#;
        let mut r = ResponseUsage::start(Api::ChatCompletions, Some(200), "application/json", "", 1 << 20);
        r.chunk(&body[..20]);
        r.chunk(&body[20..]);
        assert_eq!(r.usage(99), Some(Usage { input: 12, output: 5, cached_input: 0 }));

        let mut small = ResponseUsage::start(Api::ChatCompletions, Some(200), "application/json", "", 16);
        small.chunk(body);
        assert_eq!(small.usage(99), Some(Usage { input: 12, output: 5, cached_input: 0 }));
    }

    #[test]
    fn missing_usage_is_estimated_and_errors_used_nothing() {
        let body = br#"{"choices":[{"message":{"content":"0123456789"}}]}"#;
        let mut r = ResponseUsage::start(Api::ChatCompletions, Some(200), "application/json", "identity", 1 << 20);
        r.chunk(body);
        assert_eq!(r.usage(7), Some(Usage { input: 7, output: 3, cached_input: 0 }));
        let mut failed = ResponseUsage::start(Api::ChatCompletions, Some(503), "application/json", "", 1 << 20);
        failed.chunk(body);
        assert_eq!(failed.usage(7), Some(Usage::default()));
        let gzip = ResponseUsage::start(Api::ChatCompletions, Some(200), "application/json", "gzip", 1 << 20);
        assert_eq!(gzip.usage(7), None);
    }

    #[test]
    fn streams_report_usage_in_their_last_chunk() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        let mut r = ResponseUsage::start(Api::ChatCompletions, Some(200), "text/event-stream; charset=utf-8", "", 1 << 20);
        for piece in stream.chunks(7) {
            r.chunk(piece);
        }
        assert_eq!(r.usage(1), Some(Usage { input: 9, output: 2, cached_input: 0 }));

        let mut cut = ResponseUsage::start(Api::ChatCompletions, Some(200), "text/event-stream", "", 1 << 20);
        cut.chunk(b"data: {\"choices\":[{\"delta\":{\"content\":\"0123456789abcdef\"}}]}\n\n");
        assert_eq!(cut.usage(5), Some(Usage { input: 5, output: 4, cached_input: 0 }));
    }
}
