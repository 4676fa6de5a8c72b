//! Decoding of compressed response bodies, only to read their usage: the
//! meter asks upstreams for identity encoding, but one may compress anyway.
//! The bytes the client receives are never changed; the meter decodes a copy.
//!
//! `gzip` (one or more members, header fields of any size, CRC-32 and size
//! checked), `deflate` (zlib-wrapped, Adler-32 checked, or raw deflate as
//! browsers tolerate) and `br` (RFC 7932), incrementally: input arrives in
//! chunks split at any byte, output leaves in pieces of at most
//! [`PIECE_BYTES`]. Memory stays bounded whatever the input: a fixed output
//! buffer, the inflate window (32 KiB) or a brotli window no larger than the
//! limit, and the decoded output is never accumulated here.
//!
//! A decompression bomb is stopped by work, too: once the output passes
//! both the limit and [`MAX_INFLATE_RATIO`] times the input, decoding stops
//! ([`Failure::TooLarge`]), as Envoy's own decompressor does (its
//! `max_inflate_ratio` defaults to 100).

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

/// Largest piece of decoded output handed on at once.
pub const PIECE_BYTES: usize = 32 * 1024;
/// Output past the limit may be at most this many times the input.
pub const MAX_INFLATE_RATIO: u64 = 100;

/// A `content-encoding` the meter does not decode: unknown, or several
/// codings stacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported;

/// A content coding the meter can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
}

impl Coding {
    /// Reads a `content-encoding` value: `Ok(None)` for identity (absent,
    /// empty, `identity`), `Ok(Some)` for one coding the meter decodes, `Err`
    /// for anything else (unknown codings, several codings stacked).
    pub fn from_header(value: &str) -> Result<Option<Self>, Unsupported> {
        let mut codings = value.split(',').map(str::trim).filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
        let Some(coding) = codings.next() else { return Ok(None) };
        if codings.next().is_some() {
            return Err(Unsupported);
        }
        let coding = coding.to_ascii_lowercase();
        match coding.as_str() {
            // RFC 9110 §8.4.1.3: x-gzip is gzip.
            "gzip" | "x-gzip" => Ok(Some(Self::Gzip)),
            "deflate" => Ok(Some(Self::Deflate)),
            "br" => Ok(Some(Self::Brotli)),
            _ => Err(Unsupported),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
            Self::Brotli => "br",
        }
    }
}

/// Why decoding stopped before the end of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Not valid data of its coding (bad header, bad code, checksum or size
    /// mismatch, bytes after the end).
    Corrupt,
    /// The body ended before its compressed stream did.
    Truncated,
    /// Past the limit: a bomb, a brotli window larger than the limit, or the
    /// consumer would have to keep more than the limit.
    TooLarge,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Self::Corrupt => "corrupt",
            Self::Truncated => "truncated",
            Self::TooLarge => "too large",
        }
    }
}

type Brotli = BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>;

enum State {
    /// A gzip member's header.
    GzipHeader(GzipHeader),
    /// A gzip member's deflate data.
    GzipBody { inflate: Box<InflateState>, crc: u32, size: u32 },
    /// A gzip member's trailer: CRC-32 and size of its data, little-endian.
    GzipTrailer { crc: u32, size: u32, got: [u8; 8], len: usize },
    /// Between gzip members: the end, or another member.
    GzipEnd,
    /// `deflate` before its first two bytes tell zlib from raw deflate.
    DeflateStart { first: Option<u8> },
    /// Inflating; `head` holds the first byte, fed before the input.
    Deflate { inflate: Box<InflateState>, head: Option<u8> },
    BrotliStart,
    /// Decoding brotli; `more` while it has output it could not hand out yet.
    Brotli { state: Box<Brotli>, more: bool },
    /// The deflate or brotli stream ended: nothing may follow.
    Done,
    Failed(Failure),
}

/// An incremental decoder of one response body.
pub struct Decoder {
    state: State,
    /// The output this decoder may produce regardless of the ratio.
    limit: u64,
    input: u64,
    output: u64,
    buffer: Vec<u8>,
}

/// What a consumer says after a piece of output: go on, or stop (it would
/// have to keep more than it can).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    More,
    Stop,
}

impl Decoder {
    pub fn new(coding: Coding, limit: usize) -> Self {
        let state = match coding {
            Coding::Gzip => State::GzipHeader(GzipHeader::default()),
            Coding::Deflate => State::DeflateStart { first: None },
            Coding::Brotli => State::BrotliStart,
        };
        Self { state, limit: limit as u64, input: 0, output: 0, buffer: Vec::new() }
    }

    /// Decoded bytes produced so far.
    pub fn output(&self) -> u64 {
        self.output
    }

    /// Why decoding stopped early, if it did.
    pub fn failure(&self) -> Option<Failure> {
        match self.state {
            State::Failed(failure) => Some(failure),
            _ => None,
        }
    }

    /// Decodes the next chunk of the body, handing each piece of output to
    /// `take`. After a failure, further input is ignored.
    pub fn push(&mut self, mut input: &[u8], take: &mut dyn FnMut(&[u8]) -> Take) {
        if self.failure().is_some() {
            return;
        }
        self.input = self.input.saturating_add(input.len() as u64);
        if self.buffer.is_empty() {
            self.buffer = vec![0; PIECE_BYTES];
        }
        while let Some(result) = self.step(&mut input, take) {
            if let Err(failure) = result {
                self.state = State::Failed(failure);
                self.buffer = Vec::new();
                return;
            }
        }
    }

    /// The body ended: a compressed stream that has not ended is truncated.
    pub fn finish(&mut self) {
        self.buffer = Vec::new();
        match self.state {
            State::Done | State::GzipEnd | State::Failed(_) => {}
            // Nothing at all arrived: an empty body, not a truncated one.
            State::GzipHeader(GzipHeader { step: Step::Fixed, ref fixed, .. }) if fixed.is_empty() => {}
            State::DeflateStart { first: None } | State::BrotliStart if self.input == 0 => {}
            _ => self.state = State::Failed(Failure::Truncated),
        }
    }

    /// One step of the state machine over `input`: `None` once it needs more
    /// input, else whether it may go on.
    fn step(&mut self, input: &mut &[u8], take: &mut dyn FnMut(&[u8]) -> Take) -> Option<Result<(), Failure>> {
        match &mut self.state {
            State::Failed(_) => None,
            State::Done => (!input.is_empty()).then_some(Err(Failure::Corrupt)),
            State::GzipEnd => {
                let (&first, _) = input.split_first()?;
                if first != GZIP_MAGIC[0] {
                    return Some(Err(Failure::Corrupt));
                }
                self.state = State::GzipHeader(GzipHeader::default());
                Some(Ok(()))
            }
            State::GzipHeader(header) => {
                let (&byte, rest) = input.split_first()?;
                *input = rest;
                match header.feed(byte) {
                    Err(failure) => Some(Err(failure)),
                    Ok(false) => Some(Ok(())),
                    Ok(true) => {
                        self.state =
                            State::GzipBody { inflate: InflateState::new_boxed(DataFormat::Raw), crc: !0, size: 0 };
                        Some(Ok(()))
                    }
                }
            }
            State::GzipBody { inflate, crc, size } => {
                let ended = match inflate_some(inflate, input, &mut self.buffer) {
                    Err(failure) => return Some(Err(failure)),
                    Ok(None) => return None,
                    Ok(Some((written, ended))) => {
                        let piece = self.buffer.get(..written).unwrap_or_default();
                        *crc = crc32_update(*crc, piece);
                        *size = size.wrapping_add(written as u32);
                        if let Err(failure) = emit(&mut self.output, self.limit, self.input, piece, take) {
                            return Some(Err(failure));
                        }
                        ended
                    }
                };
                if ended {
                    self.state = State::GzipTrailer { crc: !*crc, size: *size, got: [0; 8], len: 0 };
                }
                Some(Ok(()))
            }
            State::GzipTrailer { crc, size, got, len } => {
                let (&byte, rest) = input.split_first()?;
                *input = rest;
                if let Some(slot) = got.get_mut(*len) {
                    *slot = byte;
                }
                *len += 1;
                if *len < got.len() {
                    return Some(Ok(()));
                }
                let [c0, c1, c2, c3, s0, s1, s2, s3] = *got;
                if u32::from_le_bytes([c0, c1, c2, c3]) != *crc || u32::from_le_bytes([s0, s1, s2, s3]) != *size {
                    return Some(Err(Failure::Corrupt));
                }
                self.state = State::GzipEnd;
                Some(Ok(()))
            }
            State::DeflateStart { first } => {
                let (&byte, rest) = input.split_first()?;
                let Some(cmf) = *first else {
                    *first = Some(byte);
                    *input = rest;
                    return Some(Ok(()));
                };
                // RFC 1950: CM 8, a window of at most 32 KiB, a header check
                // that is a multiple of 31 and no preset dictionary; anything
                // else is raw deflate (RFC 1951), as browsers accept.
                let zlib = cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(byte)) % 31 == 0 && byte & 0x20 == 0;
                let inflate = InflateState::new_boxed(if zlib { DataFormat::Zlib } else { DataFormat::Raw });
                // The first byte goes in first; the second is still in `input`.
                self.state = State::Deflate { inflate, head: Some(cmf) };
                Some(Ok(()))
            }
            State::Deflate { inflate, head } => {
                let result = match head.take() {
                    Some(byte) => {
                        let mut first: &[u8] = &[byte];
                        let result = inflate_some(inflate, &mut first, &mut self.buffer);
                        // One byte is never a whole stream, nor left unread.
                        match result {
                            Ok(Some((_, true))) => return Some(Err(Failure::Corrupt)),
                            _ if !first.is_empty() => return Some(Err(Failure::Corrupt)),
                            _ => result,
                        }
                    }
                    None => inflate_some(inflate, input, &mut self.buffer),
                };
                match result {
                    Err(failure) => Some(Err(failure)),
                    Ok(None) => (!input.is_empty()).then_some(Ok(())),
                    Ok(Some((written, ended))) => {
                        let piece = self.buffer.get(..written).unwrap_or_default();
                        if let Err(failure) = emit(&mut self.output, self.limit, self.input, piece, take) {
                            return Some(Err(failure));
                        }
                        if ended {
                            self.state = State::Done;
                        }
                        Some(Ok(()))
                    }
                }
            }
            State::BrotliStart => {
                let &first = input.first()?;
                let Some(window) = brotli_window_bits(first) else { return Some(Err(Failure::Corrupt)) };
                // The decoder keeps a window this large: past the limit, the
                // meter does not decode.
                if 1u64 << window > self.limit {
                    return Some(Err(Failure::TooLarge));
                }
                let state = Brotli::new_strict(StandardAlloc::default(), StandardAlloc::default(), StandardAlloc::default());
                self.state = State::Brotli { state: Box::new(state), more: false };
                Some(Ok(()))
            }
            State::Brotli { state, more } => {
                if input.is_empty() && !*more {
                    return None;
                }
                let data: &[u8] = input;
                let mut available_in = input.len();
                let mut input_offset = 0;
                let mut available_out = self.buffer.len();
                let mut output_offset = 0;
                let mut total_out = 0;
                let result = BrotliDecompressStream(
                    &mut available_in,
                    &mut input_offset,
                    data,
                    &mut available_out,
                    &mut output_offset,
                    &mut self.buffer,
                    &mut total_out,
                    state,
                );
                *input = data.get(input_offset..).unwrap_or_default();
                *more = matches!(result, BrotliResult::NeedsMoreOutput);
                let piece = self.buffer.get(..output_offset).unwrap_or_default();
                if let Err(failure) = emit(&mut self.output, self.limit, self.input, piece, take) {
                    return Some(Err(failure));
                }
                match result {
                    BrotliResult::ResultSuccess => {
                        self.state = State::Done;
                        Some(Ok(()))
                    }
                    BrotliResult::NeedsMoreOutput => Some(Ok(())),
                    BrotliResult::NeedsMoreInput => None,
                    BrotliResult::ResultFailure => Some(Err(Failure::Corrupt)),
                }
            }
        }
    }
}

/// Counts a piece of output against the limits and hands it on.
fn emit(output: &mut u64, limit: u64, input: u64, piece: &[u8], take: &mut dyn FnMut(&[u8]) -> Take) -> Result<(), Failure> {
    if piece.is_empty() {
        return Ok(());
    }
    *output = output.saturating_add(piece.len() as u64);
    if *output > limit.max(input.saturating_mul(MAX_INFLATE_RATIO)) {
        return Err(Failure::TooLarge);
    }
    match take(piece) {
        Take::More => Ok(()),
        Take::Stop => Err(Failure::TooLarge),
    }
}

/// Inflates from `input` into `buffer`: `None` when it needs more input,
/// else the bytes written and whether the deflate stream ended (the bytes
/// after it stay in `input`).
fn inflate_some(state: &mut InflateState, input: &mut &[u8], buffer: &mut [u8]) -> Result<Option<(usize, bool)>, Failure> {
    let result = inflate(state, input, buffer, MZFlush::None);
    *input = input.get(result.bytes_consumed..).unwrap_or_default();
    match result.status {
        Ok(MZStatus::StreamEnd) => Ok(Some((result.bytes_written, true))),
        Ok(_) | Err(MZError::Buf) if result.bytes_written == 0 && result.bytes_consumed == 0 => {
            if input.is_empty() {
                Ok(None)
            } else {
                // No progress with input left: cannot happen with valid data.
                Err(Failure::Corrupt)
            }
        }
        Ok(_) | Err(MZError::Buf) => Ok(Some((result.bytes_written, false))),
        Err(_) => Err(Failure::Corrupt),
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

/// Where a gzip header parser is (RFC 1952 §2.3).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The 10 fixed bytes: magic, method, flags, time, extra flags, OS.
    #[default]
    Fixed,
    /// The two length bytes of the extra field.
    ExtraLength,
    /// Bytes of the extra field left to skip.
    Extra(usize),
    /// The zero-terminated name or comment.
    Text,
    /// Bytes of the header CRC left to skip.
    HeaderCrc(u8),
}

/// A gzip member's header, read a byte at a time (it may be split anywhere).
#[derive(Debug, Default)]
struct GzipHeader {
    step: Step,
    fixed: Vec<u8>,
    /// Optional fields still to come.
    flags: u8,
}

impl GzipHeader {
    /// Takes one byte; `Ok(true)` once the header is complete.
    fn feed(&mut self, byte: u8) -> Result<bool, Failure> {
        match self.step {
            Step::Fixed => {
                let ok = match self.fixed.len() {
                    0 => byte == GZIP_MAGIC[0],
                    1 => byte == GZIP_MAGIC[1],
                    2 => byte == 8,        // deflate, the only method
                    3 => byte & 0xe0 == 0, // reserved flags
                    _ => true,
                };
                if !ok {
                    return Err(Failure::Corrupt);
                }
                self.fixed.push(byte);
                if self.fixed.len() < 10 {
                    return Ok(false);
                }
                self.flags = self.fixed.get(3).copied().unwrap_or(0);
                Ok(self.next())
            }
            Step::ExtraLength => {
                self.fixed.push(byte);
                match self.fixed.as_slice() {
                    [.., low, high] if self.fixed.len() == 12 => {
                        let length = usize::from(u16::from_le_bytes([*low, *high]));
                        self.step = Step::Extra(length);
                        Ok(length == 0 && self.next())
                    }
                    _ => Ok(false),
                }
            }
            Step::Extra(left) => {
                let left = left.saturating_sub(1);
                self.step = Step::Extra(left);
                Ok(left == 0 && self.next())
            }
            Step::Text => Ok(byte == 0 && self.next()),
            Step::HeaderCrc(left) => {
                let left = left.saturating_sub(1);
                self.step = Step::HeaderCrc(left);
                Ok(left == 0 && self.next())
            }
        }
    }

    /// Moves to the next optional field; `true` when none is left.
    fn next(&mut self) -> bool {
        for (flag, step) in [(FEXTRA, Step::ExtraLength), (FNAME, Step::Text), (FCOMMENT, Step::Text), (FHCRC, Step::HeaderCrc(2))]
        {
            if self.flags & flag != 0 {
                self.flags &= !flag;
                self.step = step;
                return false;
            }
        }
        true
    }
}

/// The window size (log2) a brotli stream declares in its first bits
/// (RFC 7932 §9.1); `None` for the reserved value (large-window brotli,
/// which HTTP does not use).
fn brotli_window_bits(first: u8) -> Option<u32> {
    if first & 1 == 0 {
        return Some(16);
    }
    let n = u32::from(first >> 1 & 7);
    if n != 0 {
        return Some(17 + n);
    }
    match u32::from(first >> 4 & 7) {
        0 => Some(17),
        1 => None,
        m => Some(8 + m),
    }
}

/// CRC-32 (IEEE, reflected), as gzip's trailer carries it.
#[expect(clippy::indexing_slicing, reason = "evaluated at compile time, where an index out of bounds fails the build")]
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        let index = usize::from((crc as u8) ^ b);
        crc = CRC_TABLE.get(index).copied().unwrap_or(0) ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn decode(decoder: &mut Decoder, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(chunk, &mut |piece| {
                assert!(piece.len() <= PIECE_BYTES);
                out.extend_from_slice(piece);
                Take::More
            });
        }
        decoder.finish();
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| format!("word{} ", i % 977)).collect::<String>().into_bytes()
    }

    #[test]
    fn codings_are_read_from_the_header() {
        assert_eq!(Coding::from_header(""), Ok(None));
        assert_eq!(Coding::from_header("identity"), Ok(None));
        assert_eq!(Coding::from_header(" GZip "), Ok(Some(Coding::Gzip)));
        assert_eq!(Coding::from_header("x-gzip"), Ok(Some(Coding::Gzip)));
        assert_eq!(Coding::from_header("identity, deflate"), Ok(Some(Coding::Deflate)));
        assert_eq!(Coding::from_header("br"), Ok(Some(Coding::Brotli)));
        assert_eq!(Coding::from_header("zstd"), Err(Unsupported));
        assert_eq!(Coding::from_header("gzip, br"), Err(Unsupported), "stacked codings stay opaque");
    }

    #[test]
    fn crc32_matches_the_reference() {
        assert_eq!(!crc32_update(!0, b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn gzip_with_every_header_field_split_at_every_byte() {
        let data = text(3000);
        let mut builder = flate2::GzBuilder::new().filename("body.json").comment("a comment").extra(vec![7; 300]);
        builder = builder.mtime(1);
        let mut e = builder.write(Vec::new(), flate2::Compression::best());
        e.write_all(&data).unwrap();
        let mut compressed = e.finish().unwrap();
        // FHCRC: flate2 does not write one; set the flag and insert two bytes.
        let header_end = 10 + 2 + 300 + "body.json".len() + 1 + "a comment".len() + 1;
        compressed[3] |= FHCRC;
        compressed.splice(header_end..header_end, [0xab, 0xcd]);
        for at in 0..compressed.len() {
            let (a, b) = compressed.split_at(at);
            let mut decoder = Decoder::new(Coding::Gzip, 1 << 20);
            assert_eq!(decode(&mut decoder, &[a, b]), data, "split at {at}");
            assert_eq!(decoder.failure(), None, "split at {at}");
        }
        let mut decoder = Decoder::new(Coding::Gzip, 1 << 20);
        let bytes: Vec<&[u8]> = compressed.chunks(1).collect();
        assert_eq!(decode(&mut decoder, &bytes), data);
        assert_eq!(decoder.output(), data.len() as u64);
    }

    #[test]
    fn gzip_members_follow_each_other() {
        let mut compressed = gzip(b"hello ");
        compressed.extend(gzip(b"world"));
        let mut decoder = Decoder::new(Coding::Gzip, 1 << 20);
        assert_eq!(decode(&mut decoder, &[&compressed]), b"hello world");
        assert_eq!(decoder.failure(), None);
    }

    #[test]
    fn deflate_zlib_and_raw() {
        let data = text(2000);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(&data).unwrap();
        let zlib = zlib.finish().unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&data).unwrap();
        let raw = raw.finish().unwrap();
        for compressed in [zlib, raw] {
            for at in [0, 1, 2, 3, compressed.len() / 2, compressed.len()] {
                let (a, b) = compressed.split_at(at);
                let mut decoder = Decoder::new(Coding::Deflate, 1 << 20);
                assert_eq!(decode(&mut decoder, &[a, b]), data, "split at {at}");
                assert_eq!(decoder.failure(), None);
            }
        }
    }

    #[test]
    fn brotli_split_anywhere() {
        let data = text(2000);
        let mut compressed = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut compressed, 4096, 5, 20);
            w.write_all(&data).unwrap();
        }
        for at in (0..compressed.len()).step_by(7) {
            let (a, b) = compressed.split_at(at);
            let mut decoder = Decoder::new(Coding::Brotli, 1 << 20);
            assert_eq!(decode(&mut decoder, &[a, b]), data, "split at {at}");
            assert_eq!(decoder.failure(), None);
        }
        // A window larger than the limit is not decoded.
        let mut decoder = Decoder::new(Coding::Brotli, 1 << 19);
        assert_eq!(decode(&mut decoder, &[&compressed]), b"");
        assert_eq!(decoder.failure(), Some(Failure::TooLarge));
    }

    #[test]
    fn brotli_window_bits_follow_the_rfc() {
        // WBITS 16 (0), 18..24 (n = 1..7), 10..15 (m = 2..7), 17 (0000001).
        assert_eq!(brotli_window_bits(0b0000_0000), Some(16));
        assert_eq!(brotli_window_bits(0b0000_1011), Some(22));
        assert_eq!(brotli_window_bits(0b0000_1111), Some(24));
        assert_eq!(brotli_window_bits(0b0010_0001), Some(10));
        assert_eq!(brotli_window_bits(0b0000_0001), Some(17));
        assert_eq!(brotli_window_bits(0b0001_0001), None);
        for lgwin in 10..=24 {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, lgwin);
                w.write_all(b"x").unwrap();
            }
            assert_eq!(brotli_window_bits(out[0]), Some(lgwin.max(10)), "lgwin {lgwin}");
        }
    }

    #[test]
    fn corrupt_and_truncated_data_fail_without_panicking() {
        let data = text(500);
        let compressed = gzip(&data);
        let mut flipped = compressed.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x55;
        let mut bad_crc = compressed.clone();
        let crc_at = bad_crc.len() - 8;
        bad_crc[crc_at] ^= 1;
        let mut trailing = compressed.clone();
        trailing.extend_from_slice(b"junk");
        let cases: &[(Coding, &[u8], Failure)] = &[
            // A valid header, then a dynamic block that stops short.
            (Coding::Gzip, b"\x1f\x8b\x08\x00garbage", Failure::Truncated),
            // A block of the reserved type 3.
            (Coding::Gzip, b"\x1f\x8b\x08\x00\0\0\0\0\0\x03\xff\xff", Failure::Corrupt),
            (Coding::Gzip, b"\x1f\x8b\x09", Failure::Corrupt),
            (Coding::Gzip, b"{\"not\":\"gzip\"}", Failure::Corrupt),
            (Coding::Gzip, &flipped, Failure::Corrupt),
            (Coding::Gzip, &bad_crc, Failure::Corrupt),
            (Coding::Gzip, &trailing, Failure::Corrupt),
            (Coding::Gzip, &compressed[..compressed.len() - 3], Failure::Truncated),
            (Coding::Gzip, &compressed[..5], Failure::Truncated),
            (Coding::Deflate, b"\xff\xff\xff\xff", Failure::Corrupt),
            (Coding::Deflate, b"x", Failure::Truncated),
            // Large-window brotli, which HTTP does not use.
            (Coding::Brotli, b"\x11\x00\x00\x00", Failure::Corrupt),
            // WBITS 16, a metadata block with its reserved bit set.
            (Coding::Brotli, b"\x1c\x00\x00\x00", Failure::Corrupt),
            // WBITS 24 is more than the limit.
            (Coding::Brotli, b"\xff\xff\xff\xff\xff\xff\xff\xff", Failure::TooLarge),
        ];
        for (coding, body, failure) in cases {
            let mut decoder = Decoder::new(*coding, 1 << 20);
            decode(&mut decoder, &[body]);
            assert_eq!(decoder.failure(), Some(*failure), "{coding:?} {:?}", String::from_utf8_lossy(body));
            // Later input is ignored.
            decoder.push(&compressed, &mut |_| panic!("decoded after a failure"));
        }
        let mut decoder = Decoder::new(Coding::Gzip, 1 << 20);
        decode(&mut decoder, &[]);
        assert_eq!(decoder.failure(), None, "an empty body is not truncated");
    }

    #[test]
    fn random_input_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = gzip(&text(300));
        for round in 0..300 {
            let mut body: Vec<u8> = if round % 2 == 0 {
                (0..next() % 300).map(|_| next() as u8).collect()
            } else {
                valid.clone()
            };
            if !body.is_empty() {
                for _ in 0..=next() % 4 {
                    let at = (next() % body.len() as u64) as usize;
                    body[at] = next() as u8;
                }
            }
            for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli] {
                let mut decoder = Decoder::new(coding, 1 << 16);
                let chunks: Vec<&[u8]> = body.chunks(1 + (next() % 40) as usize).collect();
                decode(&mut decoder, &chunks);
            }
        }
    }

    #[test]
    fn a_bomb_stops_at_the_ratio() {
        // 64 MiB of zeros in about 64 KiB: every chunk may decode to at most
        // 100 times the input so far once past the limit.
        let zeros = vec![0u8; 1 << 20];
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..64 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        let mut decoder = Decoder::new(Coding::Gzip, 256 * 1024);
        let mut pieces = 0u64;
        for chunk in bomb.chunks(1024) {
            decoder.push(chunk, &mut |piece| {
                pieces += piece.len() as u64;
                Take::More
            });
        }
        assert_eq!(decoder.failure(), Some(Failure::TooLarge));
        assert!(decoder.output() <= (256 * 1024u64).max(MAX_INFLATE_RATIO * bomb.len() as u64) + PIECE_BYTES as u64);
        assert!(pieces < 64 << 20);
        // The consumer may stop it too.
        let mut decoder = Decoder::new(Coding::Gzip, 1 << 30);
        let mut seen = 0;
        decoder.push(&bomb, &mut |piece| {
            seen += piece.len();
            if seen > 100_000 { Take::Stop } else { Take::More }
        });
        assert_eq!(decoder.failure(), Some(Failure::TooLarge));
        assert!(seen <= 100_000 + PIECE_BYTES);
    }
}
