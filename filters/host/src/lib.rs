//! The narrow interface between Tollgate's filter logic and the proxy.
//!
//! Filter logic (router, meter, guard) is written against [`Host`] and the
//! [`HttpFilter`] / [`FilterFactory`] lifecycle traits only, so it compiles and
//! is tested natively against [`fake::FakeHost`]. The wasm glue
//! (`proxy-wasm` feature) implements [`Host`] over `proxy_wasm::hostcalls` and
//! adapts the lifecycle traits to the SDK's contexts, so each filter's wasm
//! crate is a few lines.

use std::fmt;
use std::time::{Duration, SystemTime};

#[cfg(feature = "proxy-wasm")]
mod call_timing;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
#[cfg(feature = "proxy-wasm")]
pub mod glue;
#[cfg(feature = "proxy-wasm")]
mod proxy_wasm_host;
#[cfg(feature = "proxy-wasm")]
pub use proxy_wasm_host::ProxyWasmHost;

/// Whether the proxy should go on with the stream after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Hold the stream: for headers, until the body has arrived (needs
    /// `allow_on_headers_stop_iteration`); for bodies, buffer more; after a
    /// dispatched call, until the filter resumes it.
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// A host call that failed. Filters log it and fall back; they never panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub operation: &'static str,
    pub detail: String,
}

impl HostError {
    pub fn new(operation: &'static str, detail: impl Into<String>) -> Self {
        Self {
            operation,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host call {} failed: {}", self.operation, self.detail)
    }
}

impl std::error::Error for HostError {}

pub type HostResult<T> = Result<T, HostError>;

/// Which header map a call addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderMap {
    Request,
    Response,
    /// Headers of the reply to a dispatched HTTP call.
    CallResponse,
}

/// Which body buffer a call addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyBuffer {
    Request,
    Response,
    /// Body of the reply to a dispatched HTTP call.
    CallResponse,
    /// Message of the reply to a dispatched gRPC call.
    GrpcResponse,
}

/// An outgoing HTTP call to a cluster the proxy knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall<'a> {
    pub cluster: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Option<&'a [u8]>,
    pub timeout: Duration,
}

/// An outgoing unary gRPC call to a cluster the proxy knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall<'a> {
    pub cluster: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    pub message: &'a [u8],
    pub timeout: Duration,
}

/// Everything filter logic may ask of the proxy. Methods take `&self`: the
/// proxy-wasm host is a set of free functions, and the fake keeps its record
/// behind interior mutability.
pub trait Host {
    fn header(&self, map: HeaderMap, name: &str) -> HostResult<Option<String>>;
    fn headers(&self, map: HeaderMap) -> HostResult<Vec<(String, String)>>;
    /// Sets (replaces) a header, or removes it when `value` is `None`.
    fn set_header(&self, map: HeaderMap, name: &str, value: Option<&str>) -> HostResult<()>;
    /// Appends a header value, keeping existing ones.
    fn add_header(&self, map: HeaderMap, name: &str, value: &str) -> HostResult<()>;

    /// Bytes `start..start + len` of a buffer (the whole buffer for `len = usize::MAX`).
    fn body(&self, buffer: BodyBuffer, start: usize, len: usize) -> HostResult<Option<Vec<u8>>>;
    /// Replaces bytes `start..start + len` of a request or response body.
    fn set_body(&self, buffer: BodyBuffer, start: usize, len: usize, value: &[u8])
        -> HostResult<()>;

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>>;
    fn set_property(&self, path: &[&str], value: &[u8]) -> HostResult<()>;

    /// Returns the token the reply will carry.
    fn dispatch_http_call(&self, call: &HttpCall<'_>) -> HostResult<u32>;
    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> HostResult<u32>;

    /// Ends the stream here with a reply of the filter's own.
    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8])
        -> HostResult<()>;
    fn resume_request(&self) -> HostResult<()>;
    fn resume_response(&self) -> HostResult<()>;
    /// Makes the proxy pick the route again after request headers changed.
    fn clear_route_cache(&self) -> HostResult<()>;

    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32>;
    fn increment_metric(&self, id: u32, delta: i64) -> HostResult<()>;
    fn record_metric(&self, id: u32, value: u64) -> HostResult<()>;

    /// Value and compare-and-swap token of a key shared by all VMs of the plugin.
    fn shared_data(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)>;
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()>;

    fn now(&self) -> SystemTime;
}

/// Why a filter refused its configuration; logged by the glue, which then
/// tells the proxy the configuration failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field, or empty for the whole document.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(f, "invalid configuration at `{}`: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Per-request filter logic. Every callback has a pass-through default.
pub trait HttpFilter {
    fn on_request_headers(&mut self, _host: &dyn Host, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    fn on_request_body(&mut self, _host: &dyn Host, _body_size: usize, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    fn on_response_headers(&mut self, _host: &dyn Host, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    fn on_response_body(&mut self, _host: &dyn Host, _body_size: usize, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    /// The reply to a call made with [`Host::dispatch_http_call`]; read it with
    /// [`HeaderMap::CallResponse`] and [`BodyBuffer::CallResponse`].
    fn on_http_call_response(&mut self, _host: &dyn Host, _token: u32, _body_size: usize) {}
    /// The reply to a call made with [`Host::dispatch_grpc_call`]; `status` is
    /// the gRPC status code, the message is in [`BodyBuffer::GrpcResponse`].
    fn on_grpc_call_response(&mut self, _host: &dyn Host, _token: u32, _status: u32, _size: usize) {}
    /// The stream is complete; the last chance to record what happened.
    fn on_log(&mut self, _host: &dyn Host) {}
}

/// Per-plugin logic: compiles the configuration once and makes request filters.
pub trait FilterFactory: Sized {
    type Filter: HttpFilter + 'static;

    /// Parses, validates and compiles the plugin configuration (`root_id` tells
    /// which of the module's roots this plugin instance is).
    fn configure(host: &dyn Host, root_id: &str, config: &[u8]) -> Result<Self, ConfigError>;

    fn new_filter(&self) -> Self::Filter;
}
