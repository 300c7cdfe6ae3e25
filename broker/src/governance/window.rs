//! Budget windows: calendar-aligned in UTC (daily, weekly from Monday 00:00, monthly from the 1st) or
//! lifetime. A window instance is named by its start second, which is also part of the counter's key, so a
//! new window starts from zero without any reset job.

use serde::Serialize;
use time::{Date, Month, OffsetDateTime};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Daily,
    Weekly,
    Monthly,
    Lifetime,
}

const DAY: i64 = 86_400;

impl Window {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "daily" => Some(Window::Daily),
            "weekly" => Some(Window::Weekly),
            "monthly" => Some(Window::Monthly),
            "lifetime" => Some(Window::Lifetime),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Daily => "daily",
            Window::Weekly => "weekly",
            Window::Monthly => "monthly",
            Window::Lifetime => "lifetime",
        }
    }

    /// The window instance holding `now` (Unix seconds): `[start, end)`; `end` is `None` for lifetime.
    pub fn period(self, now: u64) -> (i64, Option<i64>) {
        let now = i64::try_from(now).unwrap_or(i64::MAX / 2);
        match self {
            Window::Lifetime => (0, None),
            Window::Daily => {
                let start = now.div_euclid(DAY) * DAY;
                (start, Some(start + DAY))
            }
            Window::Weekly => {
                // 1970-01-01 was a Thursday: day 0 has weekday index 3 when Monday is 0.
                let days = now.div_euclid(DAY);
                let monday = days - (days + 3).rem_euclid(7);
                (monday * DAY, Some((monday + 7) * DAY))
            }
            Window::Monthly => {
                let Ok(t) = OffsetDateTime::from_unix_timestamp(now) else {
                    return (0, None);
                };
                let (y, m) = (t.year(), t.month());
                let start = month_start(y, m);
                let (ny, nm) = if m == Month::December {
                    (y + 1, Month::January)
                } else {
                    (y, m.next())
                };
                (start, Some(month_start(ny, nm)))
            }
        }
    }
}

fn month_start(year: i32, month: Month) -> i64 {
    Date::from_calendar_date(year, month, 1)
        .map(|d| d.midnight().assume_utc().unix_timestamp())
        .unwrap_or(0)
}

/// RFC 3339 UTC, e.g. `2026-11-26T00:00:00Z`.
pub fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> u64 {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .expect("ts")
            .unix_timestamp() as u64
    }

    #[test]
    fn calendar_examples() {
        // 2026-11-25 is a Wednesday.
        let now = ts("2026-11-25T16:22:37Z");
        assert_eq!(
            Window::Daily.period(now),
            (
                ts("2026-11-25T00:00:00Z") as i64,
                Some(ts("2026-11-26T00:00:00Z") as i64)
            )
        );
        assert_eq!(
            Window::Weekly.period(now),
            (
                ts("2026-11-23T00:00:00Z") as i64,
                Some(ts("2026-11-30T00:00:00Z") as i64)
            )
        );
        assert_eq!(
            Window::Monthly.period(now),
            (
                ts("2026-11-01T00:00:00Z") as i64,
                Some(ts("2026-12-01T00:00:00Z") as i64)
            )
        );
        assert_eq!(
            Window::Monthly.period(ts("2026-12-31T23:59:59Z")),
            (
                ts("2026-12-01T00:00:00Z") as i64,
                Some(ts("2027-01-01T00:00:00Z") as i64)
            )
        );
        assert_eq!(
            Window::Monthly.period(ts("2028-02-29T12:00:00Z")).1,
            Some(ts("2028-03-01T00:00:00Z") as i64)
        );
        assert_eq!(Window::Lifetime.period(now), (0, None));
        assert_eq!(
            rfc3339(ts("2026-11-26T00:00:00Z") as i64),
            "2026-11-26T00:00:00Z"
        );
    }

    proptest! {
        /// Every instant lies in exactly one window instance; the instance is aligned (midnight UTC; Monday
        /// for weeks; the 1st for months), and the second before `end` still maps to the same instance while
        /// `end` itself starts the next one.
        #[test]
        // From 1970-01-05 (the first Monday): the week holding an earlier instant starts before the epoch,
        // which `period`'s u64 input cannot express.
        fn windows_partition_time(now in 345_600u64..4_102_444_800, w in 0usize..3) {
            let w = [Window::Daily, Window::Weekly, Window::Monthly][w];
            let (start, end) = w.period(now);
            let end = end.expect("calendar windows end");
            prop_assert!(start <= now as i64 && (now as i64) < end);
            prop_assert_eq!(start.rem_euclid(DAY), 0);
            prop_assert_eq!(w.period((end - 1) as u64), (start, Some(end)));
            prop_assert_eq!(w.period(start as u64), (start, Some(end)));
            let next = w.period(end as u64);
            prop_assert_eq!(next.0, end);
            let t = OffsetDateTime::from_unix_timestamp(start).expect("t");
            match w {
                Window::Daily => prop_assert_eq!(end - start, DAY),
                Window::Weekly => {
                    prop_assert_eq!(t.weekday(), time::Weekday::Monday);
                    prop_assert_eq!(end - start, 7 * DAY);
                }
                Window::Monthly => {
                    prop_assert_eq!(t.day(), 1);
                    prop_assert!((28 * DAY..=31 * DAY).contains(&(end - start)));
                }
                Window::Lifetime => {}
            }
        }
    }
}
