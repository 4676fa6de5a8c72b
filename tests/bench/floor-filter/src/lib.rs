//! The cheapest filters Tollgate's could be, for `make bench`'s floor table.
//! The plugin configuration names what the filter does:
//! - `pass`: nothing (the cost of a wasm context per request);
//! - `hold-request`: holds the request headers until the body is complete,
//!   as the router must to route on the body's `model`;
//! - `hold-request-and-response`: also holds the response body, as the meter
//!   must to read `usage` from a JSON response.
//!
//! None of them reads or writes anything: whatever Tollgate's filters cost
//! beyond these rows is their own work.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(FloorRoot { mode: Mode::Pass }));
}}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    HoldRequest,
    HoldRequestAndResponse,
}

struct FloorRoot {
    mode: Mode,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.mode = match config.as_slice() {
            b"" | b"pass" => Mode::Pass,
            b"hold-request" => Mode::HoldRequest,
            b"hold-request-and-response" => Mode::HoldRequestAndResponse,
            other => {
                log::error!("floor filter: unknown mode {:?}", String::from_utf8_lossy(other));
                return false;
            }
        };
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor { mode: self.mode }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor {
    mode: Mode,
}

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        // Held for the body, as the router holds them to route on `model`
        // (delivered because the plugin sets allow_on_headers_stop_iteration).
        if self.mode != Mode::Pass && !end_of_stream {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, _size: usize, end_of_stream: bool) -> Action {
        if self.mode != Mode::Pass && !end_of_stream {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _size: usize, end_of_stream: bool) -> Action {
        // Buffered whole, as the meter buffers a JSON response to read `usage`.
        if self.mode == Mode::HoldRequestAndResponse && !end_of_stream {
            return Action::Pause;
        }
        Action::Continue
    }
}
