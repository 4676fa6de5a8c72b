//! The cheapest filters Tollgate's could be, for `make bench`'s floor table.
//! The plugin configuration names what the filter does:
//! - `pass`: nothing (the cost of a wasm context per request);
//! - `hold-request`: holds the request headers until the body is complete,
//!   as the router must to route on the body's `model`;
//! - `hold-request-and-response`: also holds the response body, as the meter
//!   must to read `usage` from a JSON response;
//! - `router-least-calls` (with `attempt-least-calls` per attempt): holds the
//!   request as `hold-request` does and makes only the host calls any filter
//!   doing what the router issue asks must make, with fixed values and no
//!   logic (see [`Floor::router_least_calls`]);
//! - `meter-least-calls`: the same for the meter issue (see
//!   [`Floor::meter_least_calls`]).
//!
//! The first three read and write nothing: whatever Tollgate's filters cost
//! beyond them is their own work. The least-calls modes bound from below what
//! any implementation of those issues costs on Envoy's wasm host.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(FloorRoot { mode: Mode::Pass, metrics: Vec::new() }));
}}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    HoldRequest,
    HoldRequestAndResponse,
    RouterLeastCalls,
    AttemptLeastCalls,
    MeterLeastCalls,
}

/// The meter issue's stats: tokens in and out, cost, request duration, time
/// to first token, time per output token, requests by status.
const METER_METRICS: [(MetricType, &str); 7] = [
    (MetricType::Counter, "floor_tokens_input"),
    (MetricType::Counter, "floor_tokens_output"),
    (MetricType::Histogram, "floor_cost"),
    (MetricType::Histogram, "floor_duration"),
    (MetricType::Histogram, "floor_ttft"),
    (MetricType::Histogram, "floor_tpot"),
    (MetricType::Counter, "floor_requests_200"),
];

struct FloorRoot {
    mode: Mode,
    metrics: Vec<(MetricType, u32)>,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.mode = match config.as_slice() {
            b"" | b"pass" => Mode::Pass,
            b"hold-request" => Mode::HoldRequest,
            b"hold-request-and-response" => Mode::HoldRequestAndResponse,
            b"router-least-calls" => Mode::RouterLeastCalls,
            b"attempt-least-calls" => Mode::AttemptLeastCalls,
            b"meter-least-calls" => Mode::MeterLeastCalls,
            other => {
                log::error!("floor filter: unknown mode {:?}", String::from_utf8_lossy(other));
                return false;
            }
        };
        if self.mode == Mode::MeterLeastCalls {
            for (kind, name) in METER_METRICS {
                match hostcalls::define_metric(kind, name) {
                    Ok(id) => self.metrics.push((kind, id)),
                    Err(e) => {
                        log::error!("floor filter: {name}: {e:?}");
                        return false;
                    }
                }
            }
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor { mode: self.mode, metrics: self.metrics.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor {
    mode: Mode,
    metrics: Vec<(MetricType, u32)>,
}

impl Context for Floor {}

impl Floor {
    fn holds_request(&self) -> bool {
        matches!(self.mode, Mode::HoldRequest | Mode::HoldRequestAndResponse | Mode::RouterLeastCalls | Mode::MeterLeastCalls)
    }

    /// What the router issue asks of every routed request, at the fewest
    /// calls: read the tier header and the body; publish the decision as the
    /// two headers the routes match on (the values the router gives the
    /// bench's request); make Envoy route again. Its attempts read which
    /// backend they reached (`attempt-least-calls`). Left out, as Envoy
    /// could do them natively: the team header (the bench's tier has no team
    /// list), the decision hand-off to attempts (per-cluster configuration),
    /// `x-tollgate-backend` / `x-tollgate-attempts` (response header
    /// formatters), cool-down (outlier detection).
    fn router_least_calls(&self, body_size: usize) {
        let _tier = self.get_http_request_header("x-model-tier");
        let _body = self.get_http_request_body(0, body_size);
        self.set_http_request_header("x-ai-model", Some("llama-70b"));
        self.set_http_request_header("x-ai-backend", Some("vllm-70b"));
        // Envoy's foreign function, as the router calls it.
        if let Err(e) = hostcalls::call_foreign_function("clear_route_cache", Some(&[])) {
            log::error!("floor filter: {e:?}");
        }
    }

    /// What the meter issue asks of a non-streamed request, at the fewest
    /// calls: read the team header and the body (the prompt estimate),
    /// hand the estimate on; then read the response body (its `usage`), set
    /// the tokens and cost headers, record the seven stats and leave one
    /// access-log value. The clock reads time to first token.
    fn meter_least_calls(&self, body_size: usize) {
        let _started = self.get_current_time().duration_since(UNIX_EPOCH);
        let _body = self.get_http_response_body(0, body_size);
        self.set_http_response_header("x-tollgate-input-tokens", Some("20"));
        self.set_http_response_header("x-tollgate-output-tokens", Some("16"));
        self.set_http_response_header("x-tollgate-cost-usd", Some("0.000036"));
        for &(kind, id) in &self.metrics {
            let result = match kind {
                MetricType::Counter => hostcalls::increment_metric(id, 1),
                _ => hostcalls::record_metric(id, 1),
            };
            if let Err(e) = result {
                log::error!("floor filter: {e:?}");
            }
        }
        if let Err(e) = hostcalls::set_property(vec!["tollgate.floor.log"], Some(br#"{"model":"llama-70b"}"#)) {
            log::error!("floor filter: {e:?}");
        }
    }
}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        match self.mode {
            Mode::AttemptLeastCalls => {
                let _backend = self.get_property(vec!["xds", "upstream_host_metadata", "filter_metadata", "tollgate", "backend"]);
            }
            Mode::MeterLeastCalls => {
                let _team = self.get_http_request_header("x-tollgate-team");
            }
            _ => {}
        }
        // Held for the body, as the router holds them to route on `model`
        // (delivered because the plugin sets allow_on_headers_stop_iteration).
        if self.holds_request() && !end_of_stream {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !self.holds_request() {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        match self.mode {
            Mode::RouterLeastCalls => self.router_least_calls(size),
            Mode::MeterLeastCalls => {
                let _body = self.get_http_request_body(0, size);
                if let Err(e) = hostcalls::set_property(vec!["tollgate.prompt_tokens"], Some(b"20")) {
                    log::error!("floor filter: {e:?}");
                }
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        // The meter's tokens and cost headers wait for the body's usage.
        if self.mode == Mode::MeterLeastCalls && !end_of_stream {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        // Buffered whole, as the meter buffers a JSON response to read `usage`.
        if matches!(self.mode, Mode::HoldRequestAndResponse | Mode::MeterLeastCalls) && !end_of_stream {
            return Action::Pause;
        }
        if self.mode == Mode::MeterLeastCalls {
            self.meter_least_calls(size);
        }
        Action::Continue
    }
}
