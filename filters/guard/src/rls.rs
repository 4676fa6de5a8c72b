//! The guard's side of Envoy's global rate-limit API: the descriptors it
//! sends, how it reads the answer, and the response headers it derives.
//!
//! Budgets are ledgers of two counters the service keeps per budget and
//! window, both under a limit override of `u32::MAX` so that the count is
//! readable from `limit_remaining` (count = u32::MAX − remaining):
//! `reserved` only grows (reservations, and charges beyond them), `released`
//! only grows (what was reserved but not used, or refused). What the budget
//! has used is `reserved − released`.

use prost::Message as _;
use tollgate_ratelimit_proto::prost;
use tollgate_ratelimit_proto::{
    Code, DescriptorStatus, Entry, RateLimitDescriptor, RateLimitOverride, RateLimitRequest, RateLimitResponse, Unit,
};

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// The limit every ledger counter is sent with.
pub const LEDGER_LIMIT: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ledger {
    Reserved,
    Released,
}

impl Ledger {
    fn value(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Released => "released",
        }
    }
}

pub fn descriptor(entries: &[(String, String)]) -> RateLimitDescriptor {
    RateLimitDescriptor::from_entries(entries.iter().map(|(k, v)| (k.clone(), v.clone())))
}

/// A ledger counter of a budget, charged `hits` (0 reads it).
pub fn ledger(entries: &[(String, String)], which: Ledger, unit: Unit, hits: u64) -> RateLimitDescriptor {
    let mut descriptor = descriptor(entries);
    descriptor.entries.push(Entry { key: "ledger".into(), value: which.value().into() });
    descriptor.limit = Some(RateLimitOverride { requests_per_unit: LEDGER_LIMIT, unit: unit as i32 });
    descriptor.hits_addend = Some(hits);
    descriptor
}

pub fn encode(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> Vec<u8> {
    RateLimitRequest { domain: domain.to_string(), descriptors, hits_addend: 1 }.encode_to_vec()
}

pub fn decode(bytes: &[u8]) -> Result<RateLimitResponse, String> {
    RateLimitResponse::decode(bytes).map_err(|e| format!("bad RateLimitResponse: {e}"))
}

/// A ledger counter's value after the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Value(u64),
    /// Past `u32::MAX`: no longer readable.
    Overflow,
    /// The service applied no limit: it does not know the domain.
    NoLimit,
}

pub fn count(status: &DescriptorStatus) -> Count {
    if status.current_limit.is_none() {
        return Count::NoLimit;
    }
    if status.code == Code::OverLimit as i32 {
        return Count::Overflow;
    }
    Count::Value(u64::from(LEDGER_LIMIT - status.limit_remaining))
}

/// Seconds until a status's window resets.
pub fn reset_seconds(status: &DescriptorStatus) -> u64 {
    status.duration_until_reset.as_ref().map_or(0, |d| u64::try_from(d.seconds).unwrap_or(0))
}

pub fn unit_name(unit: i32) -> &'static str {
    match Unit::try_from(unit) {
        Ok(Unit::Second) => "second",
        Ok(Unit::Minute) => "minute",
        Ok(Unit::Hour) => "hour",
        Ok(Unit::Day) => "day",
        Ok(Unit::Week) => "week",
        Ok(Unit::Month) => "month",
        Ok(Unit::Year) => "year",
        _ => "window",
    }
}

/// A duration as OpenAI's `x-ratelimit-reset-*` headers write it: `42s`,
/// `6m0s`, `1h2m3s`.
pub fn format_reset(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Nano-dollars as dollars, without trailing zeros (`100`, `0.25`, `0.000123`).
pub fn format_usd(nanos: u64) -> String {
    let whole = nanos / 1_000_000_000;
    let fraction = nanos % 1_000_000_000;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_ratelimit_proto::{prost_types, RateLimit};

    #[test]
    fn ledger_descriptors_carry_override_and_hits() {
        let entries = vec![("budget".to_string(), "b".to_string()), ("user".to_string(), "alice".to_string())];
        let d = ledger(&entries, Ledger::Released, Unit::Year, 0);
        assert_eq!(d.entries.len(), 3);
        assert_eq!(d.entries[2].value, "released");
        assert_eq!(d.hits_addend, Some(0), "an explicit 0 reads without charging");
        assert_eq!(d.limit.unwrap().requests_per_unit, u32::MAX);
        let bytes = encode("ai-gateway", vec![d.clone()]);
        let request = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(request.descriptors, vec![d]);
        assert_eq!(request.hits_addend, 1);
    }

    #[test]
    fn counts_come_from_remaining() {
        let status = |code: Code, remaining: u32, limit: bool| DescriptorStatus {
            code: code as i32,
            current_limit: limit.then(|| RateLimit { name: String::new(), requests_per_unit: u32::MAX, unit: Unit::Hour as i32 }),
            limit_remaining: remaining,
            duration_until_reset: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
        };
        assert_eq!(count(&status(Code::Ok, u32::MAX - 42, true)), Count::Value(42));
        assert_eq!(count(&status(Code::Ok, u32::MAX, true)), Count::Value(0));
        assert_eq!(count(&status(Code::OverLimit, 0, true)), Count::Overflow);
        assert_eq!(count(&status(Code::Ok, 0, false)), Count::NoLimit);
        assert_eq!(reset_seconds(&status(Code::Ok, 0, true)), 30);
    }

    #[test]
    fn formats() {
        assert_eq!(format_reset(0), "0s");
        assert_eq!(format_reset(42), "42s");
        assert_eq!(format_reset(360), "6m0s");
        assert_eq!(format_reset(3723), "1h2m3s");
        assert_eq!(format_usd(100_000_000_000), "100");
        assert_eq!(format_usd(250_000_000), "0.25");
        assert_eq!(format_usd(123_000), "0.000123");
        assert_eq!(unit_name(Unit::Hour as i32), "hour");
    }
}
