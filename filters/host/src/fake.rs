//! A recording [`Host`] for tests of filter logic: it holds the request and
//! response a test sets up, records every effect a filter has (headers set,
//! calls dispatched, local replies, metrics), and delivers injected replies to
//! dispatched HTTP and gRPC calls.

use crate::{BodyBuffer, GrpcCall, HeaderMap, Host, HostError, HostResult, HttpCall, HttpFilter, MetricKind};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedHttpCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedGrpcCall {
    pub token: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub kind: MetricKind,
    pub name: String,
    /// Counter or gauge value.
    pub value: i64,
    /// Histogram samples, in order.
    pub samples: Vec<u64>,
}

/// Everything the fake holds; public so tests can set up and inspect it.
#[derive(Debug, Default)]
pub struct FakeState {
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub call_response_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub call_response_body: Vec<u8>,
    pub grpc_response: Vec<u8>,
    pub properties: HashMap<Vec<String>, Vec<u8>>,
    pub http_calls: Vec<RecordedHttpCall>,
    pub grpc_calls: Vec<RecordedGrpcCall>,
    pub local_reply: Option<LocalReply>,
    pub requests_resumed: u32,
    pub responses_resumed: u32,
    pub route_cache_clears: u32,
    pub metrics: Vec<Metric>,
    pub shared_data: HashMap<String, (Vec<u8>, u32)>,
    pub now: Option<SystemTime>,
    /// When set, request header calls fail as they do in Envoy once the
    /// headers have been sent on (where the SDK's own calls would panic).
    pub request_headers_sent: bool,
    /// When set, every dispatch fails (cluster missing, host overloaded).
    pub dispatch_fails: bool,
    next_token: u32,
}

#[derive(Debug, Default)]
pub struct FakeHost {
    state: RefCell<FakeState>,
}

impl FakeHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// A host holding a request with these headers and body.
    pub fn with_request(headers: &[(&str, &str)], body: &[u8]) -> Self {
        let host = Self::new();
        {
            let mut state = host.state.borrow_mut();
            state.request_headers = owned(headers);
            state.request_body = body.to_vec();
        }
        host
    }

    /// Reads or changes the recorded state.
    pub fn state(&self) -> std::cell::RefMut<'_, FakeState> {
        self.state.borrow_mut()
    }

    pub fn request_header(&self, name: &str) -> Option<String> {
        find(&self.state.borrow().request_headers, name)
    }

    pub fn response_header(&self, name: &str) -> Option<String> {
        find(&self.state.borrow().response_headers, name)
    }

    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.state.borrow().metrics.iter().find(|m| m.name == name).cloned()
    }

    /// Sets the upstream's response headers and body, as the proxy would
    /// before the response callbacks.
    pub fn set_response(&self, headers: &[(&str, &str)], body: &[u8]) {
        let mut state = self.state.borrow_mut();
        state.response_headers = owned(headers);
        state.response_body = body.to_vec();
    }

    /// Delivers a reply to the HTTP call with `token`, as the proxy would.
    pub fn reply_to_http_call(&self, filter: &mut dyn HttpFilter, token: u32, headers: &[(&str, &str)], body: &[u8]) {
        {
            let mut state = self.state.borrow_mut();
            state.call_response_headers = owned(headers);
            state.call_response_body = body.to_vec();
        }
        filter.on_http_call_response(self, token, body.len());
    }

    /// Delivers a reply to the gRPC call with `token`: a gRPC status code and,
    /// for status 0, the response message.
    pub fn reply_to_grpc_call(&self, filter: &mut dyn HttpFilter, token: u32, status: u32, message: &[u8]) {
        self.state.borrow_mut().grpc_response = message.to_vec();
        filter.on_grpc_call_response(self, token, status, message.len());
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_string())).collect()
}

fn find(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
}

fn slice(bytes: &[u8], start: usize, len: usize) -> Option<Vec<u8>> {
    let end = start.saturating_add(len).min(bytes.len());
    bytes.get(start..end).map(<[u8]>::to_vec)
}

fn splice(bytes: &mut Vec<u8>, start: usize, len: usize, value: &[u8]) -> HostResult<()> {
    let start = start.min(bytes.len());
    let end = start.saturating_add(len).min(bytes.len());
    bytes.splice(start..end, value.iter().copied());
    Ok(())
}

impl FakeState {
    fn headers_mut(&mut self, map: HeaderMap) -> HostResult<&mut Vec<(String, String)>> {
        match map {
            HeaderMap::Request if self.request_headers_sent => {
                Err(HostError::new("set_header", "request headers already sent"))
            }
            HeaderMap::Request => Ok(&mut self.request_headers),
            HeaderMap::Response => Ok(&mut self.response_headers),
            HeaderMap::CallResponse => Err(HostError::new("set_header", "call response is read-only")),
        }
    }

    fn headers_ref(&self, map: HeaderMap) -> HostResult<&[(String, String)]> {
        Ok(match map {
            HeaderMap::Request if self.request_headers_sent => {
                return Err(HostError::new("get_header", "request headers already sent"))
            }
            HeaderMap::Request => &self.request_headers,
            HeaderMap::Response => &self.response_headers,
            HeaderMap::CallResponse => &self.call_response_headers,
        })
    }

    fn buffer_ref(&self, buffer: BodyBuffer) -> &[u8] {
        match buffer {
            BodyBuffer::Request => &self.request_body,
            BodyBuffer::Response => &self.response_body,
            BodyBuffer::CallResponse => &self.call_response_body,
            BodyBuffer::GrpcResponse => &self.grpc_response,
        }
    }

    fn metric_mut(&mut self, id: u32) -> HostResult<&mut Metric> {
        self.metrics
            .get_mut(id as usize)
            .ok_or_else(|| HostError::new("metric", format!("no metric with id {id}")))
    }

    fn take_token(&mut self) -> u32 {
        self.next_token += 1;
        self.next_token
    }
}

impl Host for FakeHost {
    fn header(&self, map: HeaderMap, name: &str) -> HostResult<Option<String>> {
        Ok(find(self.state.borrow().headers_ref(map)?, name))
    }

    fn headers(&self, map: HeaderMap) -> HostResult<Vec<(String, String)>> {
        Ok(self.state.borrow().headers_ref(map)?.to_vec())
    }

    fn set_header(&self, map: HeaderMap, name: &str, value: Option<&str>) -> HostResult<()> {
        let mut state = self.state.borrow_mut();
        let headers = state.headers_mut(map)?;
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
        Ok(())
    }

    fn add_header(&self, map: HeaderMap, name: &str, value: &str) -> HostResult<()> {
        let mut state = self.state.borrow_mut();
        state.headers_mut(map)?.push((name.to_ascii_lowercase(), value.to_string()));
        Ok(())
    }

    fn body(&self, buffer: BodyBuffer, start: usize, len: usize) -> HostResult<Option<Vec<u8>>> {
        Ok(slice(self.state.borrow().buffer_ref(buffer), start, len))
    }

    fn set_body(&self, buffer: BodyBuffer, start: usize, len: usize, value: &[u8]) -> HostResult<()> {
        let mut state = self.state.borrow_mut();
        match buffer {
            BodyBuffer::Request => splice(&mut state.request_body, start, len, value),
            BodyBuffer::Response => splice(&mut state.response_body, start, len, value),
            _ => Err(HostError::new("set_body", "call replies are read-only")),
        }
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        let key: Vec<String> = path.iter().map(|s| (*s).to_string()).collect();
        Ok(self.state.borrow().properties.get(&key).cloned())
    }

    fn set_property(&self, path: &[&str], value: &[u8]) -> HostResult<()> {
        let key = path.iter().map(|s| (*s).to_string()).collect();
        self.state.borrow_mut().properties.insert(key, value.to_vec());
        Ok(())
    }

    fn dispatch_http_call(&self, call: &HttpCall<'_>) -> HostResult<u32> {
        let mut state = self.state.borrow_mut();
        if state.dispatch_fails {
            return Err(HostError::new("dispatch_http_call", "BadArgument"));
        }
        let token = state.take_token();
        state.http_calls.push(RecordedHttpCall {
            token,
            cluster: call.cluster.to_string(),
            headers: owned(&call.headers),
            body: call.body.map(<[u8]>::to_vec),
            timeout: call.timeout,
        });
        Ok(token)
    }

    fn dispatch_grpc_call(&self, call: &GrpcCall<'_>) -> HostResult<u32> {
        let mut state = self.state.borrow_mut();
        if state.dispatch_fails {
            return Err(HostError::new("dispatch_grpc_call", "InternalFailure"));
        }
        let token = state.take_token();
        state.grpc_calls.push(RecordedGrpcCall {
            token,
            cluster: call.cluster.to_string(),
            service: call.service.to_string(),
            method: call.method.to_string(),
            message: call.message.to_vec(),
            timeout: call.timeout,
        });
        Ok(token)
    }

    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> HostResult<()> {
        self.state.borrow_mut().local_reply = Some(LocalReply {
            status,
            headers: owned(headers),
            body: body.to_vec(),
        });
        Ok(())
    }

    fn resume_request(&self) -> HostResult<()> {
        self.state.borrow_mut().requests_resumed += 1;
        Ok(())
    }

    fn resume_response(&self) -> HostResult<()> {
        self.state.borrow_mut().responses_resumed += 1;
        Ok(())
    }

    fn clear_route_cache(&self) -> HostResult<()> {
        self.state.borrow_mut().route_cache_clears += 1;
        Ok(())
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
        let mut state = self.state.borrow_mut();
        if let Some(id) = state.metrics.iter().position(|m| m.name == name) {
            return u32::try_from(id).map_err(|e| HostError::new("define_metric", e.to_string()));
        }
        state.metrics.push(Metric {
            kind,
            name: name.to_string(),
            value: 0,
            samples: Vec::new(),
        });
        u32::try_from(state.metrics.len() - 1).map_err(|e| HostError::new("define_metric", e.to_string()))
    }

    fn increment_metric(&self, id: u32, delta: i64) -> HostResult<()> {
        let mut state = self.state.borrow_mut();
        let metric = state.metric_mut(id)?;
        if metric.kind == MetricKind::Histogram {
            return Err(HostError::new("increment_metric", "histograms take record_metric"));
        }
        metric.value += delta;
        Ok(())
    }

    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        let mut state = self.state.borrow_mut();
        let metric = state.metric_mut(id)?;
        match metric.kind {
            MetricKind::Histogram => metric.samples.push(value),
            _ => metric.value = i64::try_from(value).unwrap_or(i64::MAX),
        }
        Ok(())
    }

    fn shared_data(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        Ok(match self.state.borrow().shared_data.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        let mut state = self.state.borrow_mut();
        let current = state.shared_data.get(key).map(|(_, c)| *c);
        if let (Some(expected), Some(current)) = (cas, current) {
            if expected != current {
                return Err(HostError::new("set_shared_data", "CasMismatch"));
            }
        }
        let next = current.unwrap_or(0) + 1;
        state.shared_data.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }

    fn now(&self) -> SystemTime {
        self.state.borrow().now.unwrap_or(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_case_insensitive_and_replace() {
        let host = FakeHost::with_request(&[("X-Model-Tier", "fast")], b"");
        assert_eq!(host.header(HeaderMap::Request, "x-model-tier").unwrap().as_deref(), Some("fast"));
        host.set_header(HeaderMap::Request, "x-model-tier", Some("quality")).unwrap();
        assert_eq!(host.request_header("X-MODEL-TIER").as_deref(), Some("quality"));
        host.set_header(HeaderMap::Request, "x-model-tier", None).unwrap();
        assert_eq!(host.request_header("x-model-tier"), None);
    }

    #[test]
    fn request_headers_are_frozen_once_sent() {
        let host = FakeHost::new();
        host.state().request_headers_sent = true;
        let error = host.set_header(HeaderMap::Request, "x-a", Some("b")).unwrap_err();
        assert_eq!(error.operation, "set_header");
        assert!(host.header(HeaderMap::Request, "x-a").is_err());
    }

    #[test]
    fn body_slices_and_splices() {
        let host = FakeHost::with_request(&[], b"hello world");
        assert_eq!(host.body(BodyBuffer::Request, 6, usize::MAX).unwrap().unwrap(), b"world");
        host.set_body(BodyBuffer::Request, 0, 5, b"HELLO").unwrap();
        assert_eq!(host.state().request_body, b"HELLO world");
        host.set_body(BodyBuffer::Request, 0, usize::MAX, b"x").unwrap();
        assert_eq!(host.state().request_body, b"x");
    }

    #[test]
    fn dispatch_records_and_numbers_calls() {
        let host = FakeHost::new();
        let call = HttpCall { cluster: "cache", headers: vec![(":path", "/lookup")], body: Some(b"{}"), timeout: Duration::from_millis(50) };
        assert_eq!(host.dispatch_http_call(&call).unwrap(), 1);
        let grpc = GrpcCall { cluster: "rls", service: "s", method: "m", message: b"\x08\x01", timeout: Duration::from_millis(20) };
        assert_eq!(host.dispatch_grpc_call(&grpc).unwrap(), 2);
        assert_eq!(host.state().http_calls[0].headers, vec![(":path".to_string(), "/lookup".to_string())]);
        assert_eq!(host.state().grpc_calls[0].message, b"\x08\x01");
        host.state().dispatch_fails = true;
        assert!(host.dispatch_http_call(&call).is_err());
    }

    #[test]
    fn injected_replies_reach_the_filter() {
        #[derive(Default)]
        struct Probe {
            http: Option<(u32, Vec<u8>, Option<String>)>,
            grpc: Option<(u32, u32, Vec<u8>)>,
        }
        impl HttpFilter for Probe {
            fn on_http_call_response(&mut self, host: &dyn Host, token: u32, size: usize) {
                let body = host.body(BodyBuffer::CallResponse, 0, size).unwrap().unwrap();
                let status = host.header(HeaderMap::CallResponse, ":status").unwrap();
                self.http = Some((token, body, status));
            }
            fn on_grpc_call_response(&mut self, host: &dyn Host, token: u32, status: u32, size: usize) {
                let message = host.body(BodyBuffer::GrpcResponse, 0, size).unwrap().unwrap();
                self.grpc = Some((token, status, message));
            }
        }
        let host = FakeHost::new();
        let mut probe = Probe::default();
        host.reply_to_http_call(&mut probe, 7, &[(":status", "200")], b"cached");
        host.reply_to_grpc_call(&mut probe, 8, 0, b"\x08\x01");
        assert_eq!(probe.http, Some((7, b"cached".to_vec(), Some("200".to_string()))));
        assert_eq!(probe.grpc, Some((8, 0, b"\x08\x01".to_vec())));
    }

    #[test]
    fn metrics_and_shared_data_behave_like_the_host() {
        let host = FakeHost::new();
        let counter = host.define_metric(MetricKind::Counter, "requests").unwrap();
        assert_eq!(host.define_metric(MetricKind::Counter, "requests").unwrap(), counter);
        host.increment_metric(counter, 2).unwrap();
        let histogram = host.define_metric(MetricKind::Histogram, "cost").unwrap();
        host.record_metric(histogram, 25).unwrap();
        assert!(host.increment_metric(histogram, 1).is_err());
        assert_eq!(host.metric("requests").unwrap().value, 2);
        assert_eq!(host.metric("cost").unwrap().samples, vec![25]);

        host.set_shared_data("k", b"1", None).unwrap();
        let (value, cas) = host.shared_data("k").unwrap();
        assert_eq!(value.as_deref(), Some(&b"1"[..]));
        host.set_shared_data("k", b"2", cas).unwrap();
        assert!(host.set_shared_data("k", b"3", cas).is_err(), "stale cas must fail");
    }
}
