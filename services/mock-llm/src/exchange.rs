//! The bookkeeping every inference request shares: header controls and latency, body
//! parsing, fault injection, and recording how the request ended.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::de::DeserializeOwned;

use crate::faults::{error_response, Controls, Provider};
use crate::sse::{self, Pacing};
use crate::stats::{capture_headers, Outcome, RequestRecord, Usage};
use crate::AppState;

pub struct Exchange<'a> {
    state: &'a AppState,
    path: &'static str,
    provider: Provider,
    headers: &'a HeaderMap,
    pub controls: Controls,
    model: Option<String>,
    stream: bool,
}

// The error side of these `Result`s is the finished error response, returned at most once
// per request; boxing it would only add an allocation.
#[expect(clippy::result_large_err)]
impl<'a> Exchange<'a> {
    /// Reads the request's controls and waits out the configured latency.
    pub async fn start(
        state: &'a AppState,
        path: &'static str,
        provider: Provider,
        headers: &'a HeaderMap,
    ) -> Result<Self, Response> {
        let mut exchange = Exchange {
            state,
            path,
            provider,
            headers,
            controls: Controls::default(),
            model: None,
            stream: false,
        };
        exchange.controls = Controls::from_headers(&state.config, headers)
            .map_err(|message| exchange.reject(StatusCode::BAD_REQUEST, &message))?;
        if !exchange.controls.latency.is_zero() {
            tokio::time::sleep(exchange.controls.latency).await;
        }
        Ok(exchange)
    }

    /// Parses the JSON body; anything malformed is a 400 in the provider's error shape.
    pub fn parse<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, Response> {
        serde_json::from_slice(body).map_err(|e| {
            self.reject(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
            )
        })
    }

    /// Names the model and mode, for the request log and the `x-mock-model` header.
    pub fn describe(&mut self, model: &str, stream: bool) {
        self.model = Some(model.to_owned());
        self.stream = stream;
    }

    /// Returns the injected fault response, if this request gets one.
    pub fn check_faults(&self) -> Result<(), Response> {
        match self
            .controls
            .fault(&self.state.config, &self.state.fail_counters)
        {
            Some(fault) => Err(self.finish(fault.response(self.provider), Outcome::Fault)),
            None => Ok(()),
        }
    }

    pub fn reject(&self, status: StatusCode, message: &str) -> Response {
        self.finish(
            error_response(self.provider, status, message),
            Outcome::Rejected,
        )
    }

    pub fn finish(&self, mut response: Response, outcome: Outcome) -> Response {
        if let Some(value) = self
            .model
            .as_deref()
            .and_then(|m| HeaderValue::from_str(m).ok())
        {
            response.headers_mut().insert("x-mock-model", value);
        }
        let record = RequestRecord {
            path: self.path,
            model: self.model.clone(),
            stream: self.stream,
            status: response.status().as_u16(),
            headers: capture_headers(self.headers),
        };
        self.state.recorder.record(record, outcome);
        response
    }

    /// Sends a planned event stream: `leading` events, then `content` content events,
    /// then the closing ones. A cut applies only if it falls within the content (a
    /// shorter reply streams in full), and a cut stream counts as a fault.
    pub fn finish_stream(
        &self,
        events: Vec<Bytes>,
        leading: usize,
        content: usize,
        usage: Usage,
    ) -> Response {
        let cut = self.controls.cut_stream_after.filter(|&n| n <= content);
        let pacing = Pacing {
            delay: self.controls.token_delay,
            abort_after: cut.map(|n| leading + n),
        };
        let outcome = if cut.is_some() {
            Outcome::Fault
        } else {
            Outcome::Served(usage)
        };
        self.finish(sse::response(events, pacing), outcome)
    }
}
