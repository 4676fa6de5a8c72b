//! mock-llm: a deterministic OpenAI/Anthropic-compatible upstream for Tollgate's tests,
//! examples and benchmarks. Replies are derived from the request and the backend name,
//! usage is counted with tiktoken, and faults (errors, latency, slow or cut streams) can
//! be injected from the command line or per request with `x-mock-*` headers;
//! `--force-encoding` compresses responses regardless of `accept-encoding`.

mod anthropic;
mod compress;
mod config;
mod embeddings;
mod exchange;
mod faults;
mod generate;
mod messages;
mod openai;
mod sse;
mod stats;
mod tokens;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, map_response_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

pub use config::{Config, Encoding, ForceEncoding};

use faults::{error_response, FailCounters, Provider};
use generate::Writer;
use stats::Recorder;
use tokens::Tokenizer;

/// Large enough for long-context prompts in tests; axum's default is 2 MiB.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Everything the handlers share. Built once at startup: the tokenizer and vocabulary
/// are never loaded per request.
pub struct AppState {
    config: Config,
    backend: HeaderValue,
    tokenizer: Tokenizer,
    writer: Writer,
    fail_counters: FailCounters,
    recorder: Recorder,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        let backend = HeaderValue::from_str(&config.name)
            .map_err(|_| format!("--name {:?} is not a valid header value", config.name))?;
        let tokenizer = Tokenizer::new(config.encoding);
        Ok(Arc::new(AppState {
            writer: Writer::new(&tokenizer),
            tokenizer,
            backend,
            config,
            fail_counters: FailCounters::default(),
            recorder: Recorder::default(),
            next_id: AtomicU64::new(1),
        }))
    }

    /// A response id such as `chatcmpl-mock00000000002a`: unique within this process.
    fn response_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}mock{:012x}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/messages", post(anthropic::messages))
        .route("/mock/stats", get(stats::stats))
        .route("/mock/requests", get(stats::requests))
        .route("/mock/reset", post(stats::reset))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(map_response_with_state(state.clone(), tag_backend))
        .layer(from_fn_with_state(state.clone(), compress::force_encoding))
        .with_state(state)
}

/// Every response names the backend that produced it, so routing tests can tell.
async fn tag_backend(State(state): State<Arc<AppState>>, mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("x-mock-backend", state.backend.clone());
    response
}

async fn not_found() -> Response {
    error_response(Provider::OpenAi, StatusCode::NOT_FOUND, "unknown endpoint")
}

fn json_response(value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([("content-type", "application/json")], body).into_response(),
        Err(e) => error_response(
            Provider::OpenAi,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("serialising response: {e}"),
        ),
    }
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
