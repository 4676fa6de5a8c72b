//! Meter logic. For now it validates its configuration and passes traffic
//! through; token counting, pricing and stats build on this.

use serde::Deserialize;
use tollgate_host::{ConfigError, FilterFactory, Host, HttpFilter};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {}

pub struct MeterFactory;

impl FilterFactory for MeterFactory {
    type Filter = MeterFilter;

    fn configure(_host: &dyn Host, _root_id: &str, config: &[u8]) -> Result<Self, ConfigError> {
        let MeterConfig {} = tollgate_core::config::parse(config)?;
        Ok(Self)
    }

    fn new_filter(&self) -> MeterFilter {
        MeterFilter
    }
}

pub struct MeterFilter;

impl HttpFilter for MeterFilter {}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_host::fake::FakeHost;
    use tollgate_host::Flow;

    #[test]
    fn accepts_empty_and_refuses_unknown_fields() {
        let host = FakeHost::new();
        assert!(MeterFactory::configure(&host, "tollgate.meter", b"{}").is_ok());
        assert!(MeterFactory::configure(&host, "tollgate.meter", b"").is_ok());
        let e = MeterFactory::configure(&host, "tollgate.meter", br#"{"prices": 1}"#).err().unwrap();
        assert!(e.message.contains("unknown field `prices`"), "{e}");
    }

    #[test]
    fn passes_traffic_through_untouched() {
        let host = FakeHost::with_request(&[("x-a", "1")], b"{}");
        host.set_response(&[(":status", "200")], b"{\"ok\":true}");
        let mut filter = MeterFactory::configure(&host, "tollgate.meter", b"{}").unwrap().new_filter();
        assert_eq!(filter.on_request_headers(&host, false), Flow::Continue);
        assert_eq!(filter.on_request_body(&host, 2, true), Flow::Continue);
        assert_eq!(filter.on_response_headers(&host, false), Flow::Continue);
        assert_eq!(filter.on_response_body(&host, 11, true), Flow::Continue);
        assert_eq!(host.state().response_body, b"{\"ok\":true}");
        assert!(host.state().local_reply.is_none());
    }
}
