//! Reloading the configuration when its files change: the files are read every interval
//! (cheap for configuration-sized files, and immune to coarse or preserved mtimes and to
//! editors that replace files by renaming), and a change is parsed and compiled. A bad
//! change is refused with a log line and counted in `config_load_error`; the previous
//! configuration stays in force until a good one arrives.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;

use crate::config::ConfigSource;
use crate::service::RateLimitService;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Unchanged,
    Reloaded,
    /// Refused, with the reason; the previous configuration is kept.
    Rejected(String),
}

pub struct Reloader {
    source: ConfigSource,
    /// Fingerprint of what was last looked at (loaded or refused), so a bad file is
    /// reported once, not every interval.
    last_seen: u64,
}

fn fingerprint<T: Hash>(value: &T) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl Reloader {
    /// `loaded` is what the service was started with.
    pub fn new(source: ConfigSource, loaded: &[(String, String)]) -> Self {
        Reloader {
            source,
            last_seen: fingerprint(&loaded),
        }
    }

    pub fn check(&mut self, service: &RateLimitService) -> ReloadOutcome {
        let metrics = service.metrics();
        let sources = match self.source.read() {
            Ok(sources) => sources,
            Err(e) => return self.reject(service, fingerprint(&e.0), e.0),
        };
        let seen = fingerprint(&sources);
        if seen == self.last_seen {
            return ReloadOutcome::Unchanged;
        }
        match crate::config::RateLimitConfig::from_sources(&sources, metrics) {
            Ok(config) => {
                let domains = config.domain_names().join(", ");
                service.set_config(config);
                self.last_seen = seen;
                metrics.config_load_success.fetch_add(1, Ordering::Relaxed);
                crate::log(&format!("configuration reloaded: domains [{domains}]"));
                ReloadOutcome::Reloaded
            }
            Err(e) => self.reject(service, seen, e.0),
        }
    }

    fn reject(&mut self, service: &RateLimitService, seen: u64, reason: String) -> ReloadOutcome {
        if seen == self.last_seen {
            return ReloadOutcome::Unchanged;
        }
        self.last_seen = seen;
        service
            .metrics()
            .config_load_error
            .fetch_add(1, Ordering::Relaxed);
        crate::log(&format!(
            "configuration change rejected, keeping the previous configuration: {reason}"
        ));
        ReloadOutcome::Rejected(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitConfig;
    use crate::limiter::{MemoryLimiter, SystemClock};
    use crate::metrics::Metrics;
    use crate::service::Settings;
    use std::sync::Arc;

    const GOOD: &str =
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 5}\n";

    fn limit(service: &RateLimitService) -> u32 {
        let config = service.config();
        let rule = config.domains["d"].root.children["k"]
            .limit
            .clone()
            .unwrap();
        rule.requests_per_unit
    }

    #[test]
    fn bad_file_is_rejected_once_and_the_previous_configuration_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let source = ConfigSource::new(&path);
        let sources = source.read().unwrap();
        let metrics = Arc::new(Metrics::default());
        let service = RateLimitService::new(
            RateLimitConfig::from_sources(&sources, &metrics).unwrap(),
            Arc::new(MemoryLimiter::default()),
            Arc::new(SystemClock),
            metrics.clone(),
            Settings::default(),
        );
        let mut reloader = Reloader::new(source, &sources);
        assert_eq!(reloader.check(&service), ReloadOutcome::Unchanged);

        // a bad unit: refused, the old limit stays
        std::fs::write(&path, GOOD.replace("hour", "fortnight")).unwrap();
        match reloader.check(&service) {
            ReloadOutcome::Rejected(reason) => {
                assert!(
                    reason.contains("invalid rate limit unit 'fortnight'"),
                    "{reason}"
                )
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(limit(&service), 5);
        // reported once, not on every check
        assert_eq!(reloader.check(&service), ReloadOutcome::Unchanged);
        assert_eq!(metrics.config_load_error.load(Ordering::Relaxed), 1);

        // invalid YAML and a missing file are refused the same way
        std::fs::write(&path, "domain: [d").unwrap();
        assert!(matches!(
            reloader.check(&service),
            ReloadOutcome::Rejected(_)
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            reloader.check(&service),
            ReloadOutcome::Rejected(_)
        ));
        assert_eq!(limit(&service), 5);

        // a good change is loaded
        std::fs::write(&path, GOOD.replace("5}", "7}")).unwrap();
        assert_eq!(reloader.check(&service), ReloadOutcome::Reloaded);
        assert_eq!(limit(&service), 7);
        assert_eq!(metrics.config_load_success.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.config_load_error.load(Ordering::Relaxed), 3);

        // going back to content seen before (the first good file) is a change too
        std::fs::write(&path, GOOD).unwrap();
        assert_eq!(reloader.check(&service), ReloadOutcome::Reloaded);
        assert_eq!(limit(&service), 5);
    }
}
