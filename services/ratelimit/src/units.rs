//! Time units and fixed windows, as envoyproxy/ratelimit computes them: a window is
//! `now / divider * divider` in Unix seconds, with a month of 30 days and a year of 365.

use tollgate_ratelimit_proto::Unit as ProtoUnit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    /// Case-insensitive, as upstream upper-cases the name. `unknown` is not a unit.
    pub fn from_name(name: &str) -> Option<Unit> {
        match name.to_ascii_uppercase().as_str() {
            "SECOND" => Some(Unit::Second),
            "MINUTE" => Some(Unit::Minute),
            "HOUR" => Some(Unit::Hour),
            "DAY" => Some(Unit::Day),
            "WEEK" => Some(Unit::Week),
            "MONTH" => Some(Unit::Month),
            "YEAR" => Some(Unit::Year),
            _ => None,
        }
    }

    /// From a proto enum number (RateLimitResponse.RateLimit.Unit and
    /// envoy.type.v3.RateLimitUnit share them); 0 (UNKNOWN) and unknown numbers are None.
    pub fn from_proto(value: i32) -> Option<Unit> {
        match ProtoUnit::try_from(value).ok()? {
            ProtoUnit::Unknown => None,
            ProtoUnit::Second => Some(Unit::Second),
            ProtoUnit::Minute => Some(Unit::Minute),
            ProtoUnit::Hour => Some(Unit::Hour),
            ProtoUnit::Day => Some(Unit::Day),
            ProtoUnit::Week => Some(Unit::Week),
            ProtoUnit::Month => Some(Unit::Month),
            ProtoUnit::Year => Some(Unit::Year),
        }
    }

    pub fn to_proto(self) -> ProtoUnit {
        match self {
            Unit::Second => ProtoUnit::Second,
            Unit::Minute => ProtoUnit::Minute,
            Unit::Hour => ProtoUnit::Hour,
            Unit::Day => ProtoUnit::Day,
            Unit::Week => ProtoUnit::Week,
            Unit::Month => ProtoUnit::Month,
            Unit::Year => ProtoUnit::Year,
        }
    }

    /// The window length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// Start of the fixed window holding `now` (Unix seconds).
    pub fn window_start(self, now: i64) -> i64 {
        now.div_euclid(self.seconds()) * self.seconds()
    }

    /// Seconds until the window holding `now` ends: always in `1..=seconds()`.
    pub fn until_reset(self, now: i64) -> i64 {
        self.seconds() - now.rem_euclid(self.seconds())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_resets_for_every_unit() {
        let now = 1_700_000_123; // 2023-11-14T22:15:23Z
        let cases = [
            (Unit::Second, 1_700_000_123, 1),
            (Unit::Minute, 1_700_000_100, 37),
            (Unit::Hour, 1_699_999_200, 2_677),
            (Unit::Day, 1_699_920_000, 6_277),
            (Unit::Week, 1_699_488_000, 92_677),
            (Unit::Month, 1_697_760_000, 351_877),
            (Unit::Year, 1_671_408_000, 2_943_877),
        ];
        for (unit, start, reset) in cases {
            assert_eq!(unit.window_start(now), start, "{unit:?}");
            assert_eq!(unit.until_reset(now), reset, "{unit:?}");
            assert_eq!(start + unit.seconds(), now + reset, "{unit:?}");
        }
        // At the first second of a window, a whole window remains.
        assert_eq!(Unit::Hour.until_reset(1_699_999_200), 3_600);
    }

    #[test]
    fn names_and_proto_numbers() {
        for (name, unit, number) in [
            ("second", Unit::Second, 1),
            ("MINUTE", Unit::Minute, 2),
            ("Hour", Unit::Hour, 3),
            ("day", Unit::Day, 4),
            ("month", Unit::Month, 5),
            ("year", Unit::Year, 6),
            ("week", Unit::Week, 7),
        ] {
            assert_eq!(Unit::from_name(name), Some(unit));
            assert_eq!(Unit::from_proto(number), Some(unit));
            assert_eq!(unit.to_proto() as i32, number);
        }
        assert_eq!(Unit::from_name("unknown"), None);
        assert_eq!(Unit::from_name(""), None);
        assert_eq!(Unit::from_proto(0), None);
        assert_eq!(Unit::from_proto(99), None);
    }
}
