//! Budget windows as the rate-limit service counts them: fixed windows
//! (`now / length * length` in Unix seconds, a month of 30 days, as
//! envoyproxy/ratelimit), the calendar year in UTC (the service's `year`), and
//! calendar months in UTC, named in the descriptor under the service's year.

use crate::config::Window;

const DAY: i64 = 86_400;

/// Seconds in a fixed window (`None` for the calendar year and month).
pub fn fixed_seconds(window: Window) -> Option<i64> {
    match window {
        Window::Second => Some(1),
        Window::Minute => Some(60),
        Window::Hour => Some(3_600),
        Window::Day => Some(DAY),
        Window::Week => Some(7 * DAY),
        Window::Month => Some(30 * DAY),
        Window::Year | Window::CalendarMonth => None,
    }
}

/// The window holding `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// A value naming the window in the descriptor (the calendar month,
    /// `2026-11`); the service names the other windows itself.
    pub label: Option<String>,
    /// When the budget starts afresh (Unix seconds): what `reset` headers and
    /// `retry-after` tell, and until when a settlement still reaches this
    /// window's counters. A calendar month's counter key changes only with the
    /// month: the service's year, which expires it, holds the month whole.
    pub resets_at: i64,
}

pub fn span(window: Window, now: i64) -> Span {
    if let Some(length) = fixed_seconds(window) {
        let end = (now.div_euclid(length) + 1) * length;
        return Span { label: None, resets_at: end };
    }
    let (year, month, _) = civil_from_days(now.div_euclid(DAY));
    if window == Window::Year {
        return Span { label: None, resets_at: days_from_civil(year + 1, 1, 1) * DAY };
    }
    let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    Span {
        label: Some(format!("{year:04}-{month:02}")),
        resets_at: days_from_civil(next_year, next_month, 1) * DAY,
    }
}

/// (year, month, day) of a day number counted from 1970-01-01
/// (H. Hinnant's `civil_from_days`).
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
    (year, u32::try_from(month).unwrap_or(1), u32::try_from(day).unwrap_or(1))
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
        assert_eq!(days_from_civil(2024, 2, 29) + 1, days_from_civil(2024, 3, 1));
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn fixed_windows_match_the_service() {
        // 2023-11-14T22:15:23Z, as in the service's own unit tests.
        let now = 1_700_000_123;
        assert_eq!(span(Window::Hour, now).resets_at, 1_699_999_200 + 3_600);
        assert_eq!(span(Window::Month, now).resets_at, 1_697_760_000 + 30 * DAY);
        assert_eq!(span(Window::Minute, now).label, None);
        // At a window's first second, a whole window remains.
        assert_eq!(span(Window::Hour, 1_699_999_200).resets_at, 1_699_999_200 + 3_600);
    }

    #[test]
    fn years_are_calendar_years_as_the_service_counts_them() {
        let new_year = |year| days_from_civil(year, 1, 1) * DAY;
        let now = 1_700_000_123; // 2023-11-14
        assert_eq!(span(Window::Year, now), Span { label: None, resets_at: new_year(2024) });
        assert_eq!(span(Window::Year, new_year(2027) - 1).resets_at, new_year(2027));
        assert_eq!(span(Window::Year, new_year(2027)).resets_at, new_year(2028));
        // 2028 is a leap year: its 29 February and last second are in it.
        let leap_day = days_from_civil(2028, 2, 29) * DAY;
        assert_eq!(span(Window::Year, leap_day).resets_at, new_year(2029));
        assert_eq!(span(Window::Year, new_year(2029) - 1).resets_at, new_year(2029));
    }

    #[test]
    fn calendar_months_are_named_and_end_on_the_first() {
        let now = 1_700_000_123; // 2023-11-14
        let s = span(Window::CalendarMonth, now);
        assert_eq!(s.label.as_deref(), Some("2023-11"));
        assert_eq!(s.resets_at, days_from_civil(2023, 12, 1) * DAY);
        let december = days_from_civil(2023, 12, 31) * DAY + 5;
        let s = span(Window::CalendarMonth, december);
        assert_eq!(s.label.as_deref(), Some("2023-12"));
        assert_eq!(s.resets_at, days_from_civil(2024, 1, 1) * DAY);
        // December 2026 runs to its end, across 2026-12-18, where a 365-day
        // window from the epoch turns.
        let december_17 = days_from_civil(2026, 12, 17) * DAY;
        assert_eq!(december_17 / DAY % 365, 364);
        for now in [december_17, december_17 + 2 * DAY] {
            let s = span(Window::CalendarMonth, now);
            assert_eq!(s.label.as_deref(), Some("2026-12"));
            assert_eq!(s.resets_at, days_from_civil(2027, 1, 1) * DAY);
        }
    }
}
