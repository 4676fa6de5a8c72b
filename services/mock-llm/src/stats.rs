//! What the mock has seen: counters for `/mock/stats`, the recent-request log for
//! `/mock/requests`, and the models named so far for `GET /v1/models`. One mutex guards
//! all of it, so each request takes a single short lock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Serialize, Serializer};

use crate::{json_response, AppState};

/// How many requests `/mock/requests` remembers.
const LOG_CAPACITY: usize = 1000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// How a request ended, for the counters.
pub enum Outcome {
    /// A complete, successful response.
    Served(Usage),
    /// An injected fault: an error status or a cut stream.
    Fault,
    /// The request itself was invalid.
    Rejected,
}

#[derive(Debug, Serialize)]
pub struct RequestRecord {
    pub path: &'static str,
    pub model: Option<String>,
    pub stream: bool,
    pub status: u16,
    #[serde(serialize_with = "as_map")]
    pub headers: Vec<(String, String)>,
}

/// Request headers as (lowercase name, value) pairs; repeated headers are joined with
/// ", " as HTTP allows.
pub fn capture_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .keys()
        .map(|name| {
            let values: Vec<_> = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()))
                .collect();
            (name.as_str().to_owned(), values.join(", "))
        })
        .collect()
}

fn as_map<S: Serializer>(pairs: &[(String, String)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

#[derive(Debug, Default, Serialize)]
struct ModelStats {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Default)]
struct Inner {
    requests_total: u64,
    faults_total: u64,
    models: BTreeMap<String, ModelStats>,
    seen_models: BTreeSet<String>,
    log: VecDeque<RequestRecord>,
}

#[derive(Default)]
pub struct Recorder {
    inner: Mutex<Inner>,
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The data stays consistent even if a holder panicked: every update is a few
        // counter bumps.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, record: RequestRecord, outcome: Outcome) {
        let mut inner = self.lock();
        let model = record.model.as_deref().unwrap_or_default();
        if record.model.is_some() && !inner.seen_models.contains(model) {
            inner.seen_models.insert(model.to_owned());
        }
        match outcome {
            Outcome::Served(usage) => {
                inner.requests_total += 1;
                let stats = match inner.models.get_mut(model) {
                    Some(stats) => stats,
                    None => inner.models.entry(model.to_owned()).or_default(),
                };
                stats.requests += 1;
                stats.prompt_tokens += usage.prompt_tokens;
                stats.completion_tokens += usage.completion_tokens;
            }
            Outcome::Fault => inner.faults_total += 1,
            Outcome::Rejected => {}
        }
        if inner.log.len() == LOG_CAPACITY {
            inner.log.pop_front();
        }
        inner.log.push_back(record);
    }

    pub fn seen_models(&self) -> Vec<String> {
        self.lock().seen_models.iter().cloned().collect()
    }

    fn reset(&self) {
        *self.lock() = Inner::default();
    }
}

#[derive(Serialize)]
struct StatsBody<'a> {
    name: &'a str,
    requests_total: u64,
    faults_total: u64,
    models: &'a BTreeMap<String, ModelStats>,
}

pub async fn stats(State(state): State<Arc<AppState>>) -> Response {
    let inner = state.recorder.lock();
    json_response(&StatsBody {
        name: &state.config.name,
        requests_total: inner.requests_total,
        faults_total: inner.faults_total,
        models: &inner.models,
    })
}

pub async fn requests(State(state): State<Arc<AppState>>) -> Response {
    json_response(&state.recorder.lock().log)
}

/// Clears the counters, the request log and the fail-first counters, so one mock can
/// serve several test cases.
pub async fn reset(State(state): State<Arc<AppState>>) -> &'static str {
    state.recorder.reset();
    state.fail_counters.reset();
    "ok"
}
