//! The Redis backend against a real redis-server (Debian's, started per test): fixed
//! windows and calendar years, upstream's key format, replicas sharing counters, and
//! Redis failures.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ratelimit::config::RateLimitConfig;
use ratelimit::limiter::{Increment, Limiter, ManualClock, RedisLimiter};
use ratelimit::messages::{
    Code, RateLimitDescriptor, RateLimitOverride, RateLimitRequest, Unit as ProtoUnit,
};
use ratelimit::metrics::Metrics;
use ratelimit::server::{start, Options};
use ratelimit::service::{RateLimitService, Settings};
use redis::AsyncCommands as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_counts_in_fixed_windows_with_upstreams_keys() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::ephemeral(write_config(dir.path(), SEED));
    options.redis_url = Some(redis.url());
    options.cache_key_prefix = "tg:".into();
    let running = start(options).await.unwrap();
    let mut client = client(running.grpc_addr).await;

    for n in 1..=100u32 {
        let response = call(&mut client, &user_request("alice", None)).await;
        assert_eq!(response.overall_code(), Code::Ok, "request {n}");
        assert_eq!(response.statuses[0].limit_remaining, 100 - n);
    }
    let response = call(&mut client, &user_request("alice", None)).await;
    assert_eq!(response.overall_code(), Code::OverLimit);

    // the counter: prefix + domain_ + key_value_ + window start, with an hour's TTL
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = connection
        .keys("tg:ai-gateway_user_id_alice_*")
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let window: i64 = keys[0].rsplit('_').next().unwrap().parse().unwrap();
    assert_eq!(window % 3600, 0);
    let count: u64 = connection.get(&keys[0]).await.unwrap();
    assert_eq!(count, 101);
    let ttl: i64 = connection.ttl(&keys[0]).await.unwrap();
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");

    // quality tier on the same Redis
    for _ in 0..20 {
        let response = call(&mut client, &user_request("carol", Some("quality"))).await;
        assert_eq!(response.overall_code(), Code::Ok);
    }
    let response = call(&mut client, &user_request("carol", Some("quality"))).await;
    assert_eq!(response.overall_code(), Code::OverLimit);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn year_counters_are_keyed_by_the_calendar_year_and_outlive_it() {
    const JAN_1_2026: i64 = 1_767_225_600;
    const DEC_17_2026: i64 = 1_797_465_600;
    const DEC_19_2026: i64 = 1_797_638_400;
    let Some(redis) = Redis::start() else { return };
    let limiter = RedisLimiter::connect(&redis.url(), Duration::from_secs(1))
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::default());
    let clock = Arc::new(ManualClock::new(DEC_17_2026));
    let service = RateLimitService::new(
        RateLimitConfig::from_yaml(SEED, &metrics).unwrap(),
        Arc::new(limiter),
        clock.clone(),
        metrics,
        Settings::default(),
    );
    // A guard budget's ledger: the calendar month in the descriptor, the year unit.
    let mut ledger = RateLimitDescriptor::from_entries([
        ("budget", "user-tokens"),
        ("user", "ann"),
        ("month", "2026-12"),
        ("ledger", "reserved"),
    ]);
    ledger.limit = Some(RateLimitOverride {
        requests_per_unit: u32::MAX,
        unit: ProtoUnit::Year as i32,
    });
    ledger.hits_addend = Some(700);
    let request = RateLimitRequest {
        domain: "ai-gateway".into(),
        descriptors: vec![ledger],
        hits_addend: 0,
    };
    service.should_rate_limit(&request).await.unwrap();
    // 2026-12-18T00:00:00Z, where upstream's 365-day window turns, passes: same key.
    clock.set(DEC_19_2026);
    let response = service.should_rate_limit(&request).await.unwrap();
    assert_eq!(u32::MAX - response.statuses[0].limit_remaining, 1_400);

    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = connection.keys("*").await.unwrap();
    let key = format!(
        "ai-gateway_budget_user-tokens_user_ann_month_2026-12_ledger_reserved_{JAN_1_2026}"
    );
    assert_eq!(keys, vec![key.clone()]);
    // The TTL is the year's length, renewed by each increment: the key lives at least
    // until the year ends.
    let ttl: i64 = connection.ttl(&key).await.unwrap();
    assert!((365 * 86_400 - 10..=365 * 86_400).contains(&ttl), "ttl {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_second_windows_expire_in_redis() {
    let Some(redis) = Redis::start() else { return };
    let limiter = RedisLimiter::connect(&redis.url(), Duration::from_secs(1))
        .await
        .unwrap();
    let increment = |hits| Increment {
        key: "d_k_v_0".into(),
        hits,
        ttl_seconds: 1,
        window_end: 1,
    };
    assert_eq!(limiter.increment(&[increment(2)]).await.unwrap(), vec![2]);
    assert_eq!(limiter.increment(&[increment(0)]).await.unwrap(), vec![2]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // EXPIRE ttl_seconds removed it
    assert_eq!(limiter.increment(&[increment(0)]).await.unwrap(), vec![0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_set_of_counters() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SEED);
    let url = redis.url();
    let args = ["--redis-url", url.as_str()];
    let (a, b) = (
        Replica::start(dir.path(), "a", &config, &args),
        Replica::start(dir.path(), "b", &config, &args),
    );
    let mut clients = [client(a.grpc).await, client(b.grpc).await];
    // 100 requests alternating between the replicas all pass; the 101st, on either,
    // is over: one counter, not two of 100.
    for n in 0..100usize {
        let response = call(&mut clients[n % 2], &user_request("shared", None)).await;
        assert_eq!(response.overall_code(), Code::Ok, "request {}", n + 1);
        assert_eq!(response.statuses[0].limit_remaining, 99 - n as u32);
    }
    for client in clients.iter_mut() {
        let response = call(client, &user_request("shared", None)).await;
        assert_eq!(response.overall_code(), Code::OverLimit);
    }
    // quality tier across replicas too
    for n in 0..20usize {
        let response = call(&mut clients[n % 2], &user_request("q", Some("quality"))).await;
        assert_eq!(response.overall_code(), Code::Ok);
    }
    let response = call(&mut clients[1], &user_request("q", Some("quality"))).await;
    assert_eq!(response.overall_code(), Code::OverLimit);
    let (_, metrics) = http_get(b.http, "/metrics");
    assert!(metrics.contains(
        "ratelimit_service_rate_limit_over_limit{domain=\"ai-gateway\",descriptor=\"user_id\"} 1\n"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failure_is_a_grpc_error_not_an_answer() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::ephemeral(write_config(dir.path(), SEED));
    options.redis_url = Some(redis.url());
    options.redis_timeout_ms = 300;
    let running = start(options).await.unwrap();
    let mut client = client(running.grpc_addr).await;
    assert_eq!(
        call(&mut client, &user_request("x", None))
            .await
            .overall_code(),
        Code::Ok
    );
    redis.stop();
    let status = client
        .should_rate_limit(user_request("x", None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let errors = running
        .service
        .metrics()
        .redis_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(errors, 1);
    running.stop().await.unwrap();
}
