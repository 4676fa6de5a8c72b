//! [`Host`] over `proxy_wasm::hostcalls`, using only the calls that return a
//! `Result` (the SDK's convenience methods panic on host errors, e.g. when a
//! header is set after the headers were sent on).

use crate::{BodyBuffer, GrpcCall, HeaderMap, Host, HostError, HostResult, HttpCall, MetricKind};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::time::{SystemTime, UNIX_EPOCH};

/// The proxy-wasm host. Stateless: the host tracks the current context.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProxyWasmHost;

fn err(operation: &'static str) -> impl FnOnce(Status) -> HostError {
    move |status| HostError::new(operation, format!("{status:?}"))
}

fn map_type(map: HeaderMap) -> MapType {
    match map {
        HeaderMap::Request => MapType::HttpRequestHeaders,
        HeaderMap::Response => MapType::HttpResponseHeaders,
        HeaderMap::CallResponse => MapType::HttpCallResponseHeaders,
    }
}

fn buffer_type(buffer: BodyBuffer) -> BufferType {
    match buffer {
        BodyBuffer::Request => BufferType::HttpRequestBody,
        BodyBuffer::Response => BufferType::HttpResponseBody,
        BodyBuffer::CallResponse => BufferType::HttpCallResponseBody,
        BodyBuffer::GrpcResponse => BufferType::GrpcReceiveBuffer,
    }
}

impl Host for ProxyWasmHost {
    fn header(&self, map: HeaderMap, name: &str) -> HostResult<Option<String>> {
        hostcalls::get_map_value(map_type(map), name).map_err(err("get_header"))
    }

    fn headers(&self, map: HeaderMap) -> HostResult<Vec<(String, String)>> {
        hostcalls::get_map(map_type(map)).map_err(err("get_headers"))
    }

    fn set_header(&self, map: HeaderMap, name: &str, value: Option<&str>) -> HostResult<()> {
        hostcalls::set_map_value(map_type(map), name, value).map_err(err("set_header"))
    }

    fn add_header(&self, map: HeaderMap, name: &str, value: &str) -> HostResult<()> {
        hostcalls::add_map_value(map_type(map), name, value).map_err(err("add_header"))
    }

    fn body(&self, buffer: BodyBuffer, start: usize, len: usize) -> HostResult<Option<Vec<u8>>> {
        hostcalls::get_buffer(buffer_type(buffer), start, len).map_err(err("get_body"))
    }

    fn set_body(&self, buffer: BodyBuffer, start: usize, len: usize, value: &[u8]) -> HostResult<()> {
        hostcalls::set_buffer(buffer_type(buffer), start, len, value).map_err(err("set_body"))
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        hostcalls::get_property(path.to_vec()).map_err(err("get_property"))
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> HostResult<()> {
        hostcalls::set_property(path.to_vec(), Some(value)).map_err(err("set_property"))
    }

    fn dispatch_http_call(&self, call: &HttpCall<'_>) -> HostResult<u32> {
        hostcalls::dispatch_http_call(call.cluster, call.headers.clone(), call.body, vec![], call.timeout)
            .map_err(err("dispatch_http_call"))
    }

    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> HostResult<u32> {
        hostcalls::dispatch_grpc_call(
            call.cluster,
            call.service,
            call.method,
            vec![],
            Some(call.message),
            call.timeout,
        )
        .map_err(err("dispatch_grpc_call"))
    }

    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> HostResult<()> {
        hostcalls::send_http_response(status, headers.to_vec(), Some(body)).map_err(err("send_local_reply"))
    }

    fn resume_request(&self) -> HostResult<()> {
        hostcalls::resume_http_request().map_err(err("resume_request"))
    }

    fn resume_response(&self) -> HostResult<()> {
        hostcalls::resume_http_response().map_err(err("resume_response"))
    }

    fn clear_route_cache(&self) -> HostResult<()> {
        // Envoy's wasm host no longer clears the route cache when a filter
        // changes request headers; without this the route chosen before the
        // body arrived stays.
        hostcalls::call_foreign_function("clear_route_cache", Some(&[]))
            .map(|_| ())
            .map_err(err("clear_route_cache"))
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
        let metric_type = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(metric_type, name).map_err(err("define_metric"))
    }

    fn increment_metric(&self, id: u32, delta: i64) -> HostResult<()> {
        hostcalls::increment_metric(id, delta).map_err(err("increment_metric"))
    }

    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        hostcalls::record_metric(id, value).map_err(err("record_metric"))
    }

    fn shared_data(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        hostcalls::get_shared_data(key).map_err(err("get_shared_data"))
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(err("set_shared_data"))
    }

    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
    }
}
