//! Guard logic. For now it validates its configuration and passes traffic
//! through; caching, rate limits and budgets build on this.

use serde::Deserialize;
use tollgate_host::{ConfigError, FilterFactory, Host, HttpFilter};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {}

pub struct GuardFactory;

impl FilterFactory for GuardFactory {
    type Filter = GuardFilter;

    fn configure(_host: &dyn Host, _root_id: &str, config: &[u8]) -> Result<Self, ConfigError> {
        let GuardConfig {} = tollgate_core::config::parse(config)?;
        Ok(Self)
    }

    fn new_filter(&self) -> GuardFilter {
        GuardFilter
    }
}

pub struct GuardFilter;

impl HttpFilter for GuardFilter {}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_host::fake::FakeHost;
    use tollgate_host::Flow;

    #[test]
    fn accepts_empty_and_refuses_unknown_fields() {
        let host = FakeHost::new();
        assert!(GuardFactory::configure(&host, "tollgate.guard", b"{}").is_ok());
        assert!(GuardFactory::configure(&host, "tollgate.guard", b"").is_ok());
        let e = GuardFactory::configure(&host, "tollgate.guard", br#"{"limits": 1}"#).err().unwrap();
        assert!(e.message.contains("unknown field `limits`"), "{e}");
    }

    #[test]
    fn passes_traffic_through_untouched() {
        let host = FakeHost::with_request(&[("x-a", "1")], b"{}");
        host.set_response(&[(":status", "200")], b"{\"ok\":true}");
        let mut filter = GuardFactory::configure(&host, "tollgate.guard", b"{}").unwrap().new_filter();
        assert_eq!(filter.on_request_headers(&host, false), Flow::Continue);
        assert_eq!(filter.on_request_body(&host, 2, true), Flow::Continue);
        assert_eq!(filter.on_response_headers(&host, false), Flow::Continue);
        assert_eq!(filter.on_response_body(&host, 11, true), Flow::Continue);
        assert_eq!(host.state().response_body, b"{\"ok\":true}");
        assert!(host.state().local_reply.is_none());
    }
}
