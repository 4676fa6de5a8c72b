//! The service over gRPC and HTTP with the in-memory backend, in process.

mod common;

use std::time::Duration;

use common::*;
use ratelimit::messages::Code;
use ratelimit::server::{start, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_config_over_grpc_with_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(Options::ephemeral(write_config(dir.path(), SEED)))
        .await
        .unwrap();
    let mut client = client(running.grpc_addr).await;

    for n in 1..=100 {
        let response = call(&mut client, &user_request("alice", None)).await;
        assert_eq!(response.overall_code(), Code::Ok, "request {n}");
    }
    let response = call(&mut client, &user_request("alice", None)).await;
    assert_eq!(response.overall_code(), Code::OverLimit);
    assert_eq!(response.statuses[0].limit_remaining, 0);
    let reset = response.statuses[0].duration_until_reset.unwrap().seconds;
    assert!((1..=3600).contains(&reset), "{reset}");
    assert_eq!(
        call(&mut client, &user_request("bob", None))
            .await
            .overall_code(),
        Code::Ok
    );
    for _ in 0..20 {
        let response = call(&mut client, &user_request("carol", Some("quality"))).await;
        assert_eq!(response.overall_code(), Code::Ok);
    }
    let response = call(&mut client, &user_request("carol", Some("quality"))).await;
    assert_eq!(response.overall_code(), Code::OverLimit);

    // an empty domain is a gRPC error
    let mut bad = user_request("x", None);
    bad.domain.clear();
    let status = client.should_rate_limit(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let http = running.http_addr;
    let (health, metrics) = tokio::task::spawn_blocking(move || {
        (http_get(http, "/healthcheck"), http_get(http, "/metrics"))
    })
    .await
    .unwrap();
    assert_eq!(health, (200, "OK\n".to_owned()));
    assert_eq!(metrics.0, 200);
    let text = metrics.1;
    for line in [
        "ratelimit_service_total_requests{grpc_method=\"ShouldRateLimit\"} 124",
        "ratelimit_service_rate_limit_total_hits{domain=\"ai-gateway\",descriptor=\"user_id\"} 123",
        "ratelimit_service_rate_limit_over_limit{domain=\"ai-gateway\",descriptor=\"user_id\"} 1",
        "ratelimit_service_rate_limit_total_hits{domain=\"ai-gateway\",descriptor=\"user_id.model_tier_quality\"} 21",
        "ratelimit_service_rate_limit_over_limit{domain=\"ai-gateway\",descriptor=\"user_id.model_tier_quality\"} 1",
        "ratelimit_service_should_rate_limit_error{err_type=\"service_error\"} 1",
        "ratelimit_service_config_load_success 1",
        "ratelimit_service_response_time_seconds_count 124",
    ] {
        assert!(text.contains(&format!("{line}\n")), "missing {line:?} in\n{text}");
    }
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_file_changes_are_reloaded_and_bad_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), SEED);
    let mut options = Options::ephemeral(&path);
    options.reload_interval_ms = 50;
    let running = start(options).await.unwrap();
    let mut client = client(running.grpc_addr).await;
    let remaining = |r: &ratelimit::messages::RateLimitResponse| r.statuses[0].limit_remaining;

    assert_eq!(
        remaining(&call(&mut client, &user_request("u1", None)).await),
        99
    );

    // a bad file: refused, the previous configuration keeps answering
    std::fs::write(&path, SEED.replace("unit: hour", "unit: fortnight")).unwrap();
    let metrics = running.service.metrics().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metrics
        .config_load_error
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "bad file not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        remaining(&call(&mut client, &user_request("u1", None)).await),
        98
    );

    // a good change takes effect; counters are kept
    std::fs::write(
        &path,
        SEED.replace("requests_per_unit: 100", "requests_per_unit: 3"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = call(&mut client, &user_request("u2", None)).await;
        if response.statuses[0]
            .current_limit
            .clone()
            .unwrap()
            .requests_per_unit
            == 3
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "good file not loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // u1 has 2 hits (3 with this one): at the new limit, the next is over
    assert_eq!(
        call(&mut client, &user_request("u1", None))
            .await
            .overall_code(),
        Code::Ok
    );
    assert_eq!(
        call(&mut client, &user_request("u1", None))
            .await
            .overall_code(),
        Code::OverLimit
    );
    running.stop().await.unwrap();
}

#[test]
fn the_binary_refuses_a_bad_configuration_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "domain: d\ndescriptors:\n  - value: x\n");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ratelimit"))
        .arg("--config")
        .arg(&path)
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("descriptor has empty key"), "{stderr}");
}

#[test]
fn the_binary_logs_a_rejected_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), SEED);
    let replica = Replica::start(dir.path(), "r", &path, &["--reload-interval-ms", "50"]);
    std::fs::write(&path, "domain: ai-gateway\ndescriptors: [oops").unwrap();
    let log = dir.path().join("r.log");
    wait_for("the rejection log line", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("configuration change rejected, keeping the previous configuration")
            .then_some(())
    });
    let (status, body) = http_get(replica.http, "/healthcheck");
    assert_eq!((status, body.as_str()), (200, "OK\n"));
}
