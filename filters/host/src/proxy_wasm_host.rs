//! [`Host`] over `proxy_wasm::hostcalls`, using only the calls that return a
//! `Result` (the SDK's convenience methods panic on host errors, e.g. when a
//! header is set after the headers were sent on).

use crate::call_timing::timed;
use crate::{BodyBuffer, GrpcCall, HeaderMap, Host, HostError, HostResult, HttpCall, MetricKind};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::ptr::null_mut;
use std::time::{SystemTime, UNIX_EPOCH};

#[link(wasm_import_module = "env")]
extern "C" {
    // The host ABI call behind `hostcalls::get_map_value`, declared here so a
    // status the SDK does not expect (a map no longer readable) is an error,
    // not a panic that aborts the VM.
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
}

/// One header's value. Values may hold bytes that are not UTF-8 (HTTP allows
/// obs-text), which the SDK's `get_map_value` would panic on; they are
/// decoded lossily instead.
fn header_value(map: MapType, name: &str) -> HostResult<Option<String>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host fills `data`/`size` with a buffer it obtained from this
    // module's `proxy_on_memory_allocate` (a leaked `Vec<u8>` of exactly
    // `size` bytes, as in the SDK), whose ownership is taken back here once.
    let status = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    match status {
        Status::Ok if data.is_null() => Ok(Some(String::new())),
        Status::Ok => {
            // SAFETY: see above.
            let bytes = unsafe { Vec::from_raw_parts(data, size, size) };
            Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
        }
        Status::NotFound => Ok(None),
        other => Err(HostError::new("get_header", format!("{other:?}"))),
    }
}

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
        timed("header", || {
            header_value(map_type(map), name)
        })
    }

    fn headers(&self, map: HeaderMap) -> HostResult<Vec<(String, String)>> {
        timed("headers", || {
            // Bytes, not strings: values may not be UTF-8 (names always are).
            let pairs = hostcalls::get_map_bytes(map_type(map)).map_err(err("get_headers"))?;
            Ok(pairs.into_iter().map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned())).collect())
        })
    }

    fn set_header(&self, map: HeaderMap, name: &str, value: Option<&str>) -> HostResult<()> {
        timed("set_header", || {
            hostcalls::set_map_value(map_type(map), name, value).map_err(err("set_header"))
        })
    }

    fn add_header(&self, map: HeaderMap, name: &str, value: &str) -> HostResult<()> {
        timed("add_header", || {
            hostcalls::add_map_value(map_type(map), name, value).map_err(err("add_header"))
        })
    }

    fn body(&self, buffer: BodyBuffer, start: usize, len: usize) -> HostResult<Option<Vec<u8>>> {
        timed("body", || {
            hostcalls::get_buffer(buffer_type(buffer), start, len).map_err(err("get_body"))
        })
    }

    fn set_body(&self, buffer: BodyBuffer, start: usize, len: usize, value: &[u8]) -> HostResult<()> {
        timed("set_body", || {
            hostcalls::set_buffer(buffer_type(buffer), start, len, value).map_err(err("set_body"))
        })
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        timed("property", || {
            hostcalls::get_property(path.to_vec()).map_err(err("get_property"))
        })
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> HostResult<()> {
        timed("set_property", || {
            hostcalls::set_property(path.to_vec(), Some(value)).map_err(err("set_property"))
        })
    }

    fn dispatch_http_call(&self, call: &HttpCall<'_>) -> HostResult<u32> {
        timed("dispatch_http_call", || {
            hostcalls::dispatch_http_call(call.cluster, call.headers.clone(), call.body, vec![], call.timeout)
                .map_err(err("dispatch_http_call"))
        })
    }

    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> HostResult<u32> {
        timed("dispatch_grpc_call", || {
            hostcalls::dispatch_grpc_call(
                call.cluster,
                call.service,
                call.method,
                vec![],
                Some(call.message),
                call.timeout,
            )
            .map_err(err("dispatch_grpc_call"))
        })
    }

    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> HostResult<()> {
        timed("send_local_reply", || {
            hostcalls::send_http_response(status, headers.to_vec(), Some(body)).map_err(err("send_local_reply"))
        })
    }

    fn resume_request(&self) -> HostResult<()> {
        timed("resume_request", || {
            hostcalls::resume_http_request().map_err(err("resume_request"))
        })
    }

    fn resume_response(&self) -> HostResult<()> {
        timed("resume_response", || {
            hostcalls::resume_http_response().map_err(err("resume_response"))
        })
    }

    fn clear_route_cache(&self) -> HostResult<()> {
        timed("clear_route_cache", || {
            // Envoy's wasm host no longer clears the route cache when a filter
            // changes request headers; without this the route chosen before the
            // body arrived stays.
            hostcalls::call_foreign_function("clear_route_cache", Some(&[]))
                .map(|_| ())
                .map_err(err("clear_route_cache"))
        })
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
        timed("define_metric", || {
            let metric_type = match kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Histogram => MetricType::Histogram,
            };
            hostcalls::define_metric(metric_type, name).map_err(err("define_metric"))
        })
    }

    fn increment_metric(&self, id: u32, delta: i64) -> HostResult<()> {
        timed("increment_metric", || {
            hostcalls::increment_metric(id, delta).map_err(err("increment_metric"))
        })
    }

    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        timed("record_metric", || {
            hostcalls::record_metric(id, value).map_err(err("record_metric"))
        })
    }

    fn shared_data(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        timed("shared_data", || {
            hostcalls::get_shared_data(key).map_err(err("get_shared_data"))
        })
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        timed("set_shared_data", || {
            hostcalls::set_shared_data(key, Some(value), cas).map_err(err("set_shared_data"))
        })
    }

    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(UNIX_EPOCH)
    }
}
