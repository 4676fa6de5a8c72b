//! Sequential ShouldRateLimit latency against a running service: one gRPC connection,
//! one call at a time, each with the two descriptors Envoy sends for the seed
//! configuration (`user_id`, and `user_id` + `model_tier: quality`), users rotating so
//! every call is within its limits. Prints p50 / p90 / p99 / max in microseconds.
//!
//! cargo run --profile native -p ratelimit --example rls_bench -- \
//!     --target http://127.0.0.1:8081 --calls 20000
//!
//! `services/ratelimit/bench.sh` starts the service (memory, then Redis) and runs this.

// A measuring tool: an error ends it with a message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use ratelimit::messages::{Code, RateLimitDescriptor, RateLimitRequest};
use ratelimit::proto::rate_limit_service_client::RateLimitServiceClient;

struct Args {
    target: String,
    calls: usize,
    warmup: usize,
    users: usize,
    label: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        target: "http://127.0.0.1:8081".into(),
        calls: 20_000,
        warmup: 2_000,
        users: 10_000,
        label: "ShouldRateLimit".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => args.target = value,
            "--calls" => args.calls = value.parse().expect("--calls"),
            "--warmup" => args.warmup = value.parse().expect("--warmup"),
            "--users" => args.users = value.parse().expect("--users"),
            "--label" => args.label = value,
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn request(user: usize) -> RateLimitRequest {
    let user = format!("bench-user-{user}");
    RateLimitRequest {
        domain: "ai-gateway".into(),
        descriptors: vec![
            RateLimitDescriptor::from_entries([("user_id", user.as_str())]),
            RateLimitDescriptor::from_entries([
                ("user_id", user.as_str()),
                ("model_tier", "quality"),
            ]),
        ],
        hits_addend: 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    let mut client = RateLimitServiceClient::connect(args.target.clone())
        .await
        .expect("connecting");
    // A distinct run id keeps repeated runs off each other's counters.
    let run = std::process::id() as usize * 1_000_000;
    let mut latencies = Vec::with_capacity(args.calls);
    let mut over = 0usize;
    for i in 0..args.warmup + args.calls {
        let req = request(run + i % args.users);
        let started = Instant::now();
        let response = client
            .should_rate_limit(req)
            .await
            .expect("call")
            .into_inner();
        let elapsed = started.elapsed();
        if response.overall_code() != Code::Ok {
            over += 1;
        }
        if i >= args.warmup {
            latencies.push(elapsed);
        }
    }
    latencies.sort();
    let total: Duration = latencies.iter().sum();
    println!(
        "{}: {} sequential calls (after {} warm-up): p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs, mean {:.0} µs; {} over limit",
        args.label,
        latencies.len(),
        args.warmup,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        total.as_secs_f64() * 1e6 / latencies.len() as f64,
        over
    );
}
