//! Budget windows as the rate-limit service counts them: fixed windows
//! (`now / length * length` in Unix seconds, a month of 30 days, as
//! envoyproxy/ratelimit), the calendar year in UTC (the service's `year`), and
//! calendar months in UTC, named in the descriptor under the service's year.

use crate::config::Window;
use tollgate_ratelimit_proto::windows::{self, civil_from_days, days_from_civil, DAY};

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
        return Span { label: None, resets_at: windows::fixed(length, now).end };
    }
    if window == Window::Year {
        return Span { label: None, resets_at: windows::calendar_year(now).end };
    }
    let (year, month, _) = civil_from_days(now.div_euclid(DAY));
    let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    Span {
        label: Some(format!("{year:04}-{month:02}")),
        resets_at: days_from_civil(next_year, next_month, 1) * DAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
