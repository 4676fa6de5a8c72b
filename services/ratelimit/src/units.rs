//! Time units and their windows. Second to month are fixed windows, as
//! envoyproxy/ratelimit computes them: `now / length * length` in Unix seconds, with a
//! month of 30 days. The year is the UTC calendar year (1 January to 1 January, 365 or
//! 366 days), where upstream counts 365-day windows from the epoch: the guard's
//! calendar-month budgets name the month in the descriptor under the `year` unit, and a
//! calendar month always lies inside one calendar year, so its counter's window never
//! turns mid-month (a 365-day window turns on some other day each year, such as
//! 2026-12-18).

pub use tollgate_ratelimit_proto::windows::Window;
use tollgate_ratelimit_proto::windows::{self, DAY};
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

    /// The length of the unit's fixed windows; `None` for the calendar year.
    fn fixed_seconds(self) -> Option<i64> {
        match self {
            Unit::Second => Some(1),
            Unit::Minute => Some(60),
            Unit::Hour => Some(3_600),
            Unit::Day => Some(DAY),
            Unit::Week => Some(7 * DAY),
            Unit::Month => Some(30 * DAY),
            Unit::Year => None,
        }
    }

    /// The window holding `now` (Unix seconds).
    pub fn window(self, now: i64) -> Window {
        match self.fixed_seconds() {
            Some(length) => windows::fixed(length, now),
            None => windows::calendar_year(now),
        }
    }

    /// Seconds until the window holding `now` ends: at least 1, at most its length.
    pub fn until_reset(self, now: i64) -> i64 {
        self.window(now).end - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_resets_for_every_unit() {
        let now = 1_700_000_123; // 2023-11-14T22:15:23Z
        let cases = [
            (Unit::Second, 1_700_000_123, 1_700_000_124),
            (Unit::Minute, 1_700_000_100, 1_700_000_160),
            (Unit::Hour, 1_699_999_200, 1_700_002_800),
            (Unit::Day, 1_699_920_000, 1_700_006_400),
            (Unit::Week, 1_699_488_000, 1_700_092_800),
            (Unit::Month, 1_697_760_000, 1_700_352_000),
            // 2023-01-01 to 2024-01-01
            (Unit::Year, 1_672_531_200, 1_704_067_200),
        ];
        for (unit, start, end) in cases {
            assert_eq!(unit.window(now), Window { start, end }, "{unit:?}");
            assert_eq!(unit.until_reset(now), end - now, "{unit:?}");
        }
        // At the first second of a window, a whole window remains.
        assert_eq!(Unit::Hour.until_reset(1_699_999_200), 3_600);
    }

    #[test]
    fn years_are_calendar_years_in_utc() {
        const Y2026: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
        const Y2027: i64 = 1_798_761_600;
        const Y2028: i64 = 1_830_297_600;
        const Y2029: i64 = 1_861_920_000;
        let year = |start, end| Window { start, end };
        // The last second of a year, then the first of the next.
        assert_eq!(Unit::Year.window(Y2027 - 1), year(Y2026, Y2027));
        assert_eq!(Unit::Year.until_reset(Y2027 - 1), 1);
        assert_eq!(Unit::Year.window(Y2027), year(Y2027, Y2028));
        assert_eq!(Unit::Year.until_reset(Y2027), 365 * DAY);
        // Upstream's 365-day window turns at 2026-12-18T00:00:00Z; the year does not.
        let old_boundary = 1_797_552_000;
        assert_eq!(old_boundary % (365 * DAY), 0);
        assert_eq!(Unit::Year.window(old_boundary - 1), year(Y2026, Y2027));
        assert_eq!(Unit::Year.window(old_boundary), year(Y2026, Y2027));
        // 2028 is a leap year: 366 days, 29 February inside it.
        let leap_day = 1_835_395_200; // 2028-02-29T00:00:00Z
        assert_eq!(Unit::Year.window(leap_day + 43_200), year(Y2028, Y2029));
        assert_eq!(Unit::Year.window(leap_day).seconds(), 366 * DAY);
        assert_eq!(Unit::Year.window(Y2029 - 1), year(Y2028, Y2029));
        assert_eq!(Unit::Year.until_reset(Y2028), 366 * DAY);
        // Centuries: 2000 is a leap year, 2100 is not; before the epoch too.
        assert_eq!(Unit::Year.window(951_782_400).seconds(), 366 * DAY); // 2000-02-29
        assert_eq!(
            Unit::Year.window(4_102_444_800 + 59 * DAY), // 2100-03-01
            year(4_102_444_800, 4_133_980_800)
        );
        assert_eq!(Unit::Year.window(-1), year(-365 * DAY, 0));
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
