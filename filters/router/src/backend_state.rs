//! Per-backend runtime state shared by every worker's VM through proxy-wasm
//! shared data: requests in flight, a moving average of time to first byte,
//! tokens sent this minute, and consecutive failures with a cool-down.
//! Values are decimal strings updated with compare-and-swap.

use crate::config::Strategy;
use crate::strategy::BackendSnapshot;
use std::time::UNIX_EPOCH;
use tollgate_host::Host;

const CAS_ATTEMPTS: usize = 8;

fn key(backend: &str, field: &str) -> String {
    format!("tollgate.router.{backend}.{field}")
}

fn read(host: &dyn Host, key: &str) -> (i64, Option<u32>) {
    match host.shared_data(key) {
        Ok((value, cas)) => {
            let number = value.and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok())).unwrap_or(0);
            (number, cas)
        }
        Err(e) => {
            log::warn!("router: {e}");
            (0, None)
        }
    }
}

/// Applies `change` atomically; gives up (and logs) after repeated races.
fn update(host: &dyn Host, key: &str, change: impl Fn(i64) -> i64) {
    for _ in 0..CAS_ATTEMPTS {
        let (current, cas) = read(host, key);
        let next = change(current);
        if next == current && cas.is_some() {
            return;
        }
        if host.set_shared_data(key, next.to_string().as_bytes(), cas).is_ok() {
            return;
        }
    }
    log::warn!("router: gave up updating {key} after {CAS_ATTEMPTS} races");
}

/// The current time in Unix seconds (read once per request for `snapshot`:
/// every clock read is a host call).
pub fn now_secs(host: &dyn Host) -> i64 {
    host.now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn minute_key(now: i64, backend: &str) -> String {
    key(backend, &format!("tokens.{}", now / 60))
}

/// What `strategy` needs to know of `backend` at `now` (every shared-data
/// read is a host call under a lock, so only those).
pub fn snapshot(host: &dyn Host, backend: &str, strategy: Strategy, now: i64) -> BackendSnapshot {
    let mut snapshot = BackendSnapshot { cooling_down: read(host, &key(backend, "cooldown_until")).0 > now, ..Default::default() };
    match strategy {
        Strategy::LeastBusy => snapshot.in_flight = read(host, &key(backend, "in_flight")).0,
        Strategy::LatencyBased => {
            snapshot.latency_us = u64::try_from(read(host, &key(backend, "ttfb_us")).0).ok().filter(|l| *l > 0);
        }
        Strategy::UsageBased => {
            snapshot.tokens_this_minute = u64::try_from(read(host, &minute_key(now, backend)).0).unwrap_or(0);
        }
        Strategy::SimpleShuffle | Strategy::CostBased => {}
    }
    snapshot
}

/// Counts a request against its backend where `strategy` balances on it;
/// true when it was counted in flight (and so must be `request_finished`).
pub fn request_started(host: &dyn Host, backend: &str, strategy: Strategy, estimated_tokens: u64) -> bool {
    match strategy {
        Strategy::LeastBusy => {
            update(host, &key(backend, "in_flight"), |n| n + 1);
            true
        }
        Strategy::UsageBased => {
            let tokens = i64::try_from(estimated_tokens).unwrap_or(i64::MAX);
            update(host, &minute_key(now_secs(host), backend), |n| n.saturating_add(tokens));
            false
        }
        _ => false,
    }
}

pub fn request_finished(host: &dyn Host, backend: &str) {
    update(host, &key(backend, "in_flight"), |n| (n - 1).max(0));
}

/// Records one attempt's outcome on the backend it reached.
pub fn attempt_finished(host: &dyn Host, backend: &str, failed: bool, ttfb_us: Option<u64>, cooldown: (u32, u64)) {
    if let Some(sample) = ttfb_us.and_then(|t| i64::try_from(t).ok()) {
        // Exponential moving average, weight 1/8 for the new sample.
        update(host, &key(backend, "ttfb_us"), |avg| if avg == 0 { sample.max(1) } else { (avg * 7 + sample) / 8 });
    }
    // Failures are counted per clock minute, so a success writes nothing:
    // shared data is read and written only when attempts fail.
    if !failed {
        return;
    }
    let now = now_secs(host);
    let failures_key = key(backend, &format!("failures.{}", now / 60));
    update(host, &failures_key, |n| n + 1);
    let (threshold, seconds) = cooldown;
    if read(host, &failures_key).0 >= i64::from(threshold) {
        let until = now.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX));
        update(host, &key(backend, "cooldown_until"), |_| until);
        update(host, &failures_key, |_| 0);
        log::warn!("router: backend {backend} failed {threshold} times this minute; cooling down for {seconds}s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use tollgate_host::fake::FakeHost;

    #[test]
    fn in_flight_counts_up_and_down_never_below_zero() {
        let host = FakeHost::new();
        assert!(request_started(&host, "a", Strategy::LeastBusy, 100));
        assert!(request_started(&host, "a", Strategy::LeastBusy, 50));
        assert_eq!(snapshot(&host, "a", Strategy::LeastBusy, now_secs(&host)).in_flight, 2);
        request_finished(&host, "a");
        request_finished(&host, "a");
        request_finished(&host, "a");
        assert_eq!(snapshot(&host, "a", Strategy::LeastBusy, now_secs(&host)).in_flight, 0);
    }

    #[test]
    fn only_what_the_strategy_balances_on_is_counted() {
        let host = FakeHost::new();
        assert!(!request_started(&host, "a", Strategy::SimpleShuffle, 100));
        assert!(!request_started(&host, "a", Strategy::UsageBased, 100));
        assert!(host.state().shared_data.keys().all(|k| !k.ends_with("in_flight")));
        assert_eq!(snapshot(&host, "a", Strategy::UsageBased, now_secs(&host)).tokens_this_minute, 100);
        assert_eq!(snapshot(&host, "a", Strategy::SimpleShuffle, now_secs(&host)), BackendSnapshot::default());
    }

    #[test]
    fn tokens_reset_with_the_minute() {
        let host = FakeHost::new();
        host.state().now = Some(UNIX_EPOCH + Duration::from_secs(600));
        request_started(&host, "a", Strategy::UsageBased, 100);
        host.state().now = Some(UNIX_EPOCH + Duration::from_secs(660));
        assert_eq!(snapshot(&host, "a", Strategy::UsageBased, now_secs(&host)).tokens_this_minute, 0);
    }

    #[test]
    fn latency_is_a_moving_average() {
        let host = FakeHost::new();
        attempt_finished(&host, "a", false, Some(8000), (3, 30));
        assert_eq!(snapshot(&host, "a", Strategy::LatencyBased, now_secs(&host)).latency_us, Some(8000));
        attempt_finished(&host, "a", false, Some(16000), (3, 30));
        assert_eq!(snapshot(&host, "a", Strategy::LatencyBased, now_secs(&host)).latency_us, Some(9000));
    }

    #[test]
    fn failures_within_a_minute_start_a_cool_down_that_expires() {
        let host = FakeHost::new();
        let cooling = |host: &FakeHost| snapshot(host, "a", Strategy::SimpleShuffle, now_secs(host)).cooling_down;
        // Two failures late in one minute and one early in the next: no cool-down.
        host.state().now = Some(UNIX_EPOCH + Duration::from_secs(1018));
        attempt_finished(&host, "a", true, None, (3, 30));
        attempt_finished(&host, "a", true, None, (3, 30));
        host.state().now = Some(UNIX_EPOCH + Duration::from_secs(1021));
        attempt_finished(&host, "a", true, None, (3, 30));
        assert!(!cooling(&host));
        // A success in between neither counts nor touches shared data.
        let keys = host.state().shared_data.len();
        attempt_finished(&host, "a", false, None, (3, 30));
        assert_eq!(host.state().shared_data.len(), keys);
        attempt_finished(&host, "a", true, None, (3, 30));
        attempt_finished(&host, "a", true, None, (3, 30));
        assert!(cooling(&host), "three failures in one minute");
        host.state().now = Some(UNIX_EPOCH + Duration::from_secs(1052));
        assert!(!cooling(&host), "the cool-down expires");
    }
}
