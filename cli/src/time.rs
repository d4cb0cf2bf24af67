//! Times as udax prints them: `ls -l`'s minutes, `stat`'s full form, and RFC 3339 with the
//! integer nanoseconds for `--json`. All in UTC, on the proleptic Gregorian calendar, for any
//! time an image can hold (before 1970 too).

use udax::Timespec;

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Broken-down UTC time: (year, month, day, hour, minute, second).
fn utc(sec: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = sec.div_euclid(86_400);
    let s = sec.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    (y, mo, d, (s / 3600) as u32, (s / 60 % 60) as u32, (s % 60) as u32)
}

/// "2024-05-01 13:45" (UTC), for `ls -l`.
pub fn fmt_minutes(t: Timespec) -> String {
    let (y, mo, d, h, mi, _) = utc(t.sec);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

/// "2024-05-01 13:45:07.123456789 +0000", for `stat`.
pub fn fmt_full(t: Timespec) -> String {
    let (y, mo, d, h, mi, s) = utc(t.sec);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{:09} +0000", t.nsec)
}

/// RFC 3339 in UTC with nanoseconds, "2024-05-01T13:45:07.123456789Z", for `--json`. Years
/// outside 0000..=9999, which RFC 3339 cannot write, take ISO 8601's expanded form with a
/// sign ("+10000-01-01T…", "-0001-12-31T…").
pub fn rfc3339(t: Timespec) -> String {
    let (y, mo, d, h, mi, s) = utc(t.sec);
    let year = if (0..=9999).contains(&y) { format!("{y:04}") } else { format!("{y:+05}") };
    format!("{year}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:09}Z", t.nsec)
}

/// Nanoseconds since 1970-01-01 UTC, negative before it; None past what an i64 holds (about
/// 292 years either side of 1970).
pub fn nanos(t: Timespec) -> Option<i64> {
    t.sec.checked_mul(1_000_000_000)?.checked_add(i64::from(t.nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(sec: i64, nsec: u32) -> Timespec {
        Timespec { sec, nsec }
    }

    /// (year, month, day) to days since 1970-01-01: the inverse of [`civil_from_days`].
    fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Reads back what [`rfc3339`] writes.
    fn parse(s: &str) -> Timespec {
        let s = s.strip_suffix('Z').unwrap();
        let (date, clock) = s.split_once('T').unwrap();
        let (neg, date) = match date.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, date.strip_prefix('+').unwrap_or(date)),
        };
        let f: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
        let y = if neg { -f[0] } else { f[0] };
        let (hms, frac) = clock.split_once('.').unwrap();
        let c: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
        let days = days_from_civil(y, f[1] as u32, f[2] as u32);
        at(days * 86_400 + c[0] * 3600 + c[1] * 60 + c[2], frac.parse().unwrap())
    }

    #[test]
    fn ls_and_stat_forms() {
        assert_eq!(fmt_minutes(at(0, 0)), "1970-01-01 00:00");
        assert_eq!(fmt_full(at(951_782_400, 5)), "2000-02-29 00:00:00.000000005 +0000");
        assert_eq!(fmt_minutes(at(1_700_000_000, 0)), "2023-11-14 22:13");
        assert_eq!(fmt_minutes(at(-1, 0)), "1969-12-31 23:59");
    }

    /// Expected strings from `date -u -d @SECONDS`.
    #[test]
    fn rfc3339_before_and_after_1970() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (-1, 999_999_999, "1969-12-31T23:59:59.999999999Z"),
            (-86_400, 0, "1969-12-31T00:00:00.000000000Z"),
            (-2_208_988_800, 1, "1900-01-01T00:00:00.000000001Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000000005Z"),
            (1_764_429_243, 123_456_789, "2025-11-29T15:14:03.123456789Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000000000Z"),
            (253_402_300_800, 0, "+10000-01-01T00:00:00.000000000Z"),
            (-62_135_596_800, 0, "0001-01-01T00:00:00.000000000Z"),
            (-62_167_219_200, 0, "0000-01-01T00:00:00.000000000Z"),
            (-62_167_219_201, 0, "-0001-12-31T23:59:59.000000000Z"),
        ];
        for (sec, nsec, want) in cases {
            assert_eq!(rfc3339(at(sec, nsec)), want, "{sec}.{nsec:09}");
            assert_eq!(parse(want), at(sec, nsec), "{want}");
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        for days in (-1_000_000..1_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Within ±300,000 years of 1970.
            let sec = (x % 19_000_000_000_000) as i64 - 9_500_000_000_000;
            let t = at(sec, (x >> 34) as u32 % 1_000_000_000);
            assert_eq!(parse(&rfc3339(t)), t, "{}", rfc3339(t));
        }
    }

    #[test]
    fn nanoseconds_since_1970() {
        assert_eq!(nanos(at(0, 0)), Some(0));
        assert_eq!(nanos(at(-1, 500_000_000)), Some(-500_000_000));
        assert_eq!(nanos(at(1_764_429_243, 123_456_789)), Some(1_764_429_243_123_456_789));
        assert_eq!(nanos(at(i64::MAX / 1_000_000_000 + 1, 0)), None);
        assert_eq!(nanos(at(i64::MIN, 0)), None);
    }
}
