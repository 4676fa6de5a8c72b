//! Command-line configuration. Fault settings here apply to every inference request
//! unless the request overrides them with `x-mock-*` headers (see `faults`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "mock-llm",
    version,
    about = "Deterministic OpenAI/Anthropic-compatible upstream for tests and benchmarks"
)]
pub struct Config {
    /// Backend name, returned in every response as `x-mock-backend`.
    #[arg(long, default_value = "mock")]
    pub name: String,

    /// Address to listen on; port 0 picks a free port (see --port-file).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// After binding, atomically write the bound port number to this file.
    #[arg(long)]
    pub port_file: Option<PathBuf>,

    /// Tokenizer used for the `usage` counts.
    #[arg(long, value_enum, default_value = "o200k_base")]
    pub encoding: Encoding,

    /// Models listed by GET /v1/models besides those seen in requests (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,

    /// Fail every request with this status (or only the first --fail-first ones).
    #[arg(long, value_parser = clap::value_parser!(u16).range(400..=599))]
    pub fail_status: Option<u16>,

    /// Fail the first N requests (with --fail-status, else 503), then succeed.
    #[arg(long, default_value_t = 0)]
    pub fail_first: u64,

    /// Add `retry-after: SECS` to fault responses.
    #[arg(long)]
    pub retry_after: Option<u64>,

    /// Delay before responding, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,

    /// Delay between streamed events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub token_delay_ms: u64,

    /// Abort streams after this many content events (no final chunk, no [DONE]).
    #[arg(long)]
    pub cut_stream_after: Option<usize>,

    /// Compress every `/v1/*` response with this coding, whatever the request's
    /// `accept-encoding` says, as a misbehaving upstream would.
    #[arg(long, value_enum)]
    pub force_encoding: Option<ForceEncoding>,
}

/// The codings `--force-encoding` can compress with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ForceEncoding {
    Gzip,
    /// zlib-wrapped deflate (RFC 1950), as HTTP's `deflate` means.
    Deflate,
    Br,
}

/// The tiktoken encodings the mock can count with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    #[value(name = "o200k_base")]
    O200kBase,
    #[value(name = "cl100k_base")]
    Cl100kBase,
}
