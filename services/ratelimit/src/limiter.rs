//! Fixed-window counters. A counter's key already names its window (it ends with the
//! window's start, as envoyproxy/ratelimit's keys do), so a backend only adds hits and
//! forgets counters once their window is over.
//!
//! - [`MemoryLimiter`]: one process; a sharded map, swept of finished windows.
//! - [`RedisLimiter`]: shared by every replica pointed at the same Redis; `INCRBY` and
//!   `EXPIRE` for every counter of a request in one `MULTI`/`EXEC` round trip.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix time in seconds.
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now: i64) -> Self {
        ManualClock(AtomicI64::new(now))
    }
    pub fn set(&self, now: i64) {
        self.0.store(now, Ordering::SeqCst);
    }
    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Add `hits` to counter `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment {
    pub key: String,
    pub hits: u64,
    /// Redis's `EXPIRE`: the window's length (upstream sets the unit's), renewed by
    /// every increment, so the key outlives its window.
    pub ttl_seconds: i64,
    /// When the counter's window ends (Unix seconds): the memory backend forgets it then.
    pub window_end: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterError(pub String);

impl std::fmt::Display for LimiterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Limiter: Send + Sync {
    /// Adds each increment's hits to its counter (0 reads it) and returns the counts
    /// after, in order.
    fn increment<'a>(
        &'a self,
        increments: &'a [Increment],
    ) -> BoxFuture<'a, Result<Vec<u64>, LimiterError>>;

    /// `memory` or `redis`, for logs.
    fn name(&self) -> &'static str;
}

#[derive(Debug)]
struct Counter {
    count: u64,
    window_end: i64,
}

/// In-process counters: a fixed number of independently locked shards.
#[derive(Debug)]
pub struct MemoryLimiter {
    shards: Vec<Mutex<HashMap<String, Counter>>>,
    hasher: RandomState,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new(64)
    }
}

fn unpoison<T>(error: std::sync::PoisonError<T>) -> T {
    error.into_inner()
}

impl MemoryLimiter {
    pub fn new(shards: usize) -> Self {
        MemoryLimiter {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> Option<&Mutex<HashMap<String, Counter>>> {
        let index = self.hasher.hash_one(key) % self.shards.len() as u64;
        self.shards.get(usize::try_from(index).unwrap_or(0))
    }

    pub fn increment_now(&self, increments: &[Increment]) -> Vec<u64> {
        increments
            .iter()
            .map(|increment| {
                let Some(shard) = self.shard(&increment.key) else {
                    return increment.hits;
                };
                let mut map = shard.lock().unwrap_or_else(unpoison);
                match map.get_mut(increment.key.as_str()) {
                    Some(counter) => {
                        counter.count = counter.count.saturating_add(increment.hits);
                        counter.count
                    }
                    None => {
                        map.insert(
                            increment.key.clone(),
                            Counter {
                                count: increment.hits,
                                window_end: increment.window_end,
                            },
                        );
                        increment.hits
                    }
                }
            })
            .collect()
    }

    /// Forgets counters whose window ended at or before `now`; returns how many.
    pub fn sweep(&self, now: i64) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(unpoison);
            let before = map.len();
            map.retain(|_, counter| counter.window_end > now);
            removed += before - map.len();
        }
        removed
    }

    /// Counters held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(unpoison).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Limiter for MemoryLimiter {
    fn increment<'a>(
        &'a self,
        increments: &'a [Increment],
    ) -> BoxFuture<'a, Result<Vec<u64>, LimiterError>> {
        let counts = self.increment_now(increments);
        Box::pin(std::future::ready(Ok(counts)))
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// Counters in Redis, shared by every replica using it. One multiplexed connection that
/// reconnects by itself; a call fails (and the service answers with an error, which
/// Envoy's `failure_mode_deny` decides about) if Redis does not answer in time.
#[derive(Clone)]
pub struct RedisLimiter {
    connection: redis::aio::ConnectionManager,
}

impl RedisLimiter {
    /// Connects (and fails if Redis is unreachable now).
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, LimiterError> {
        let client = redis::Client::open(url)
            .map_err(|e| LimiterError(format!("redis url {url:?}: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2);
        let connection = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| LimiterError(format!("connecting to redis: {e}")))?;
        Ok(RedisLimiter { connection })
    }
}

impl Limiter for RedisLimiter {
    fn increment<'a>(
        &'a self,
        increments: &'a [Increment],
    ) -> BoxFuture<'a, Result<Vec<u64>, LimiterError>> {
        Box::pin(async move {
            if increments.is_empty() {
                return Ok(Vec::new());
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            for increment in increments {
                pipe.cmd("INCRBY").arg(&increment.key).arg(increment.hits);
                pipe.cmd("EXPIRE")
                    .arg(&increment.key)
                    .arg(increment.ttl_seconds)
                    .ignore();
            }
            let mut connection = self.connection.clone();
            pipe.query_async::<Vec<u64>>(&mut connection)
                .await
                .map_err(|e| LimiterError(format!("redis: {e}")))
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn increment(key: &str, hits: u64, window_end: i64) -> Increment {
        Increment {
            key: key.to_owned(),
            hits,
            ttl_seconds: 60,
            window_end,
        }
    }

    #[test]
    fn memory_counts_per_key_and_zero_reads() {
        let limiter = MemoryLimiter::new(4);
        let counts = limiter.increment_now(&[increment("a", 1, 60), increment("b", 5, 60)]);
        assert_eq!(counts, vec![1, 5]);
        let counts = limiter.increment_now(&[increment("a", 2, 60), increment("b", 0, 60)]);
        assert_eq!(counts, vec![3, 5]);
        assert_eq!(limiter.increment_now(&[increment("new", 0, 60)]), vec![0]);
    }

    #[test]
    fn memory_sweeps_finished_windows() {
        let limiter = MemoryLimiter::new(4);
        limiter.increment_now(&[increment("old", 1, 60), increment("new", 1, 120)]);
        assert_eq!(limiter.sweep(59), 0);
        assert_eq!(limiter.sweep(60), 1);
        assert_eq!(limiter.len(), 1);
        assert_eq!(limiter.sweep(120), 1);
        assert!(limiter.is_empty());
    }

    #[test]
    fn memory_is_consistent_under_concurrency() {
        let limiter = std::sync::Arc::new(MemoryLimiter::new(8));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        limiter.increment_now(&[increment("shared", 1, 60)]);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(
            limiter.increment_now(&[increment("shared", 0, 60)]),
            vec![4000]
        );
    }
}
