//! Tollgate's rate-limit service: Envoy's global rate-limit API
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) over
//! envoyproxy/ratelimit's configuration format and semantics, with counters in memory
//! or in Redis (shared by replicas). See the crate's modules for each part and
//! README.md's "Rate-limit service" for running it.

pub mod config;
pub mod limiter;
pub mod matching;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod service;
pub mod units;

/// gRPC stubs (server and client) of `envoy.service.ratelimit.v3.RateLimitService`; the
/// messages are `tollgate_ratelimit_proto`'s.
#[allow(clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/envoy.service.ratelimit.v3.rs"));
}

pub use tollgate_ratelimit_proto as messages;

/// One log line on stderr, prefixed with the time and the program name.
pub fn log(message: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    eprintln!("{now:.3} ratelimit: {message}");
}
