//! The windows Tollgate's rate-limit service counts in, which the guard must
//! predict to the second (its reset headers and when a settlement still lands
//! in a window): fixed windows from the Unix epoch as envoyproxy/ratelimit
//! computes them (`now / length * length`), and the UTC calendar year, which
//! the service counts for `year` and which holds every calendar month whole.

pub const DAY: i64 = 86_400;

/// A window in Unix seconds: it holds `start <= t < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    /// Its length: 365 or 366 days for a year.
    pub fn seconds(self) -> i64 {
        self.end - self.start
    }
}

/// The fixed window of `length` seconds holding `now`.
pub fn fixed(length: i64, now: i64) -> Window {
    let start = now.div_euclid(length) * length;
    Window {
        start,
        end: start.saturating_add(length),
    }
}

/// The UTC calendar year holding `now`.
pub fn calendar_year(now: i64) -> Window {
    let (year, _, _) = civil_from_days(now.div_euclid(DAY));
    Window {
        start: days_from_civil(year, 1, 1).saturating_mul(DAY),
        end: days_from_civil(year + 1, 1, 1).saturating_mul(DAY),
    }
}

/// (year, month, day) of a day number counted from 1970-01-01, in the
/// proleptic Gregorian calendar (H. Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// Day number (from 1970-01-01) of a date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
        assert_eq!(
            days_from_civil(2024, 2, 29) + 1,
            days_from_civil(2024, 3, 1)
        );
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn new_years_follow_the_gregorian_leap_rule() {
        let is_leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut day = days_from_civil(1600, 1, 1);
        for y in 1600..2500 {
            let start = day * DAY;
            let length = if is_leap(y) { 366 } else { 365 };
            assert_eq!(
                calendar_year(start),
                Window {
                    start,
                    end: start + length * DAY
                },
                "{y}"
            );
            assert_eq!(calendar_year(start - 1).end, start);
            day += length;
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }

    #[test]
    fn fixed_windows_start_on_multiples_of_their_length() {
        assert_eq!(
            fixed(3_600, 1_700_000_123),
            Window {
                start: 1_699_999_200,
                end: 1_700_002_800
            }
        );
        assert_eq!(fixed(3_600, 1_699_999_200).start, 1_699_999_200);
        assert_eq!(fixed(60, -1), Window { start: -60, end: 0 });
    }
}
