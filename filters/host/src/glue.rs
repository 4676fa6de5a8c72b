//! Adapts [`FilterFactory`] / [`HttpFilter`] to the proxy-wasm SDK's contexts,
//! so a filter's wasm crate only names its factory:
//!
//! ```ignore
//! proxy_wasm::main! {{ tollgate_host::glue::start::<MyFactory>(); }}
//! ```

use crate::{FilterFactory, Flow, HttpFilter, ProxyWasmHost};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};
use std::rc::Rc;

/// Registers the root context of factory `F`. Also installs the SDK's logger,
/// whose panic hook logs a panic at critical level before the VM aborts.
pub fn start<F: FilterFactory + 'static>() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::<F> { factory: None }));
}

struct Root<F> {
    factory: Option<Rc<F>>,
}

impl<F> Context for Root<F> {}

impl<F: FilterFactory + 'static> RootContext for Root<F> {
    fn on_configure(&mut self, size: usize) -> bool {
        let config = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log::error!("cannot read plugin configuration: {status:?}");
                return false;
            }
        };
        let root_id = hostcalls::get_property(vec!["plugin_root_id"])
            .ok()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default();
        match F::configure(&ProxyWasmHost, &root_id, &config) {
            Ok(factory) => {
                self.factory = Some(Rc::new(factory));
                true
            }
            Err(e) => {
                // Returning false makes Envoy reject the plugin, so a bad
                // configuration never serves traffic half-applied.
                log::error!("root_id {root_id:?}: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let factory = self.factory.as_ref()?;
        Some(Box::new(Stream { filter: factory.new_filter() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream<T> {
    filter: T,
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl<T: HttpFilter> Context for Stream<T> {
    fn on_done(&mut self) -> bool {
        // Reports the host-call sums now and then (feature call-timing; a
        // no-op without it). True: the context may be deleted now.
        crate::call_timing::context_done();
        true
    }

    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        self.filter.on_http_call_response(&ProxyWasmHost, token, body_size);
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        self.filter.on_grpc_call_response(&ProxyWasmHost, token, status, size);
    }
}

impl<T: HttpFilter> HttpContext for Stream<T> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.filter.on_request_headers(&ProxyWasmHost, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.filter.on_request_body(&ProxyWasmHost, body_size, end_of_stream))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.filter.on_response_headers(&ProxyWasmHost, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.filter.on_response_body(&ProxyWasmHost, body_size, end_of_stream))
    }

    fn on_log(&mut self) {
        self.filter.on_log(&ProxyWasmHost);
    }
}
