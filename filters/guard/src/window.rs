//! Budget windows: fixed windows as the rate-limit service computes them
//! (`now / length * length` in Unix seconds, a month of 30 days and a year of
//! 365, as envoyproxy/ratelimit), and calendar months in UTC.

use crate::config::Window;

pub const YEAR_SECONDS: i64 = 365 * 86_400;

/// Seconds in a fixed window (`None` for the calendar month).
pub fn fixed_seconds(window: Window) -> Option<i64> {
    match window {
        Window::Second => Some(1),
        Window::Minute => Some(60),
        Window::Hour => Some(3_600),
        Window::Day => Some(86_400),
        Window::Week => Some(7 * 86_400),
        Window::Month => Some(30 * 86_400),
        Window::Year => Some(YEAR_SECONDS),
        Window::CalendarMonth => None,
    }
}

/// The window holding `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// A value naming the window in the descriptor (the calendar month,
    /// `2026-11`); fixed windows are named by the service itself.
    pub label: Option<String>,
    /// When the budget starts afresh (Unix seconds): what `reset` headers and
    /// `retry-after` tell.
    pub resets_at: i64,
    /// Until when a settlement still reaches the counters of this window: the
    /// window's end, or for a calendar month the end of the service's year
    /// window (its counter key changes then), whichever comes first.
    pub settle_by: i64,
}

fn next_boundary(now: i64, length: i64) -> i64 {
    (now.div_euclid(length) + 1) * length
}

pub fn span(window: Window, now: i64) -> Span {
    match fixed_seconds(window) {
        Some(length) => {
            let end = next_boundary(now, length);
            Span { label: None, resets_at: end, settle_by: end }
        }
        None => {
            let (year, month, _) = civil_from_days(now.div_euclid(86_400));
            let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
            let month_end = days_from_civil(next_year, next_month, 1) * 86_400;
            Span {
                label: Some(format!("{year:04}-{month:02}")),
                resets_at: month_end,
                settle_by: month_end.min(next_boundary(now, YEAR_SECONDS)),
            }
        }
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
        assert_eq!(span(Window::Month, now).resets_at, 1_697_760_000 + 30 * 86_400);
        assert_eq!(span(Window::Year, now).resets_at, 1_671_408_000 + YEAR_SECONDS);
        assert_eq!(span(Window::Minute, now).label, None);
        // At a window's first second, a whole window remains.
        assert_eq!(span(Window::Hour, 1_699_999_200).resets_at, 1_699_999_200 + 3_600);
    }

    #[test]
    fn calendar_months_are_named_and_end_on_the_first() {
        let now = 1_700_000_123; // 2023-11-14
        let s = span(Window::CalendarMonth, now);
        assert_eq!(s.label.as_deref(), Some("2023-11"));
        assert_eq!(s.resets_at, days_from_civil(2023, 12, 1) * 86_400);
        assert_eq!(s.settle_by, s.resets_at, "the year window ends on 2023-12-19");
        let december = days_from_civil(2023, 12, 31) * 86_400 + 5;
        let s = span(Window::CalendarMonth, december);
        assert_eq!(s.label.as_deref(), Some("2023-12"));
        assert_eq!(s.resets_at, days_from_civil(2024, 1, 1) * 86_400);
        // The service's 365-day window turned on 2023-12-19 00:00 UTC; a
        // settlement of an admission before then could not reach its counter.
        let early_december = days_from_civil(2023, 12, 2) * 86_400;
        assert_eq!(span(Window::CalendarMonth, early_december).settle_by, days_from_civil(2023, 12, 19) * 86_400);
    }
}
