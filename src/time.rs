//! Clocks and timestamps: the wall clock in the units hubgate uses, and the timestamp forms
//! CHP and JupyterHub exchange. A leaf: imports no other hubgate module.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch (token claims are in seconds).
pub fn now_secs() -> i64 {
    now_ms() / 1000
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time in milliseconds since the epoch.
///
/// `GET /api/routes` writes one per route; chrono's `format` interprets its format string on
/// every call, which was a third of the rendering time for 10,000 routes. Years 0–9999 are
/// formatted directly; anything else goes through chrono.
pub fn push_iso_ms(out: &mut String, ms: i64) {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        use std::fmt::Write;
        let dt = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
        let _ = write!(out, "{}", dt.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
        return;
    }
    let secs = in_day / 1000;
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, secs / 3600);
    put(14, 2, secs / 60 % 60);
    put(17, 2, secs % 60);
    put(20, 3, in_day % 1000);
    // only ASCII digits and separators were written
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

/// The proleptic Gregorian (year, month, day) of a day number counted from 1970-01-01, by
/// the usual 400-year-era arithmetic (eras start on 0000-03-01, so the leap day ends a year).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats a time in milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn iso_ms(ms: i64) -> String {
    let mut s = String::with_capacity(24);
    push_iso_ms(&mut s, ms);
    s
}

/// Parses the date forms JavaScript's `Date.parse` accepts that matter here (ISO 8601 with or
/// without offset or time, with a `T` or a space, and RFC 2822), to milliseconds since the
/// epoch. A time without an offset is taken as UTC (node would take local time; hubs run UTC).
pub fn parse_date_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() || s.bytes().all(|b| b.is_ascii_digit()) && s.len() != 4 {
        return None;
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_millis());
    }
    let with_t = s.replacen(' ', "T", 1);
    if let Ok(dt) = DateTime::parse_from_str(&with_t, "%Y-%m-%dT%H:%M:%S%.f%:z") {
        return Some(dt.timestamp_millis());
    }
    if let Ok(dt) = DateTime::parse_from_str(&with_t, "%Y-%m-%dT%H:%M%:z") {
        return Some(dt.timestamp_millis());
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        let trimmed = with_t.trim_end_matches('Z');
        if let Ok(naive) = NaiveDateTime::parse_from_str(trimmed, fmt) {
            return Some(naive.and_utc().timestamp_millis());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|n| n.and_utc().timestamp_millis());
    }
    if let Ok(d) = NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|n| n.and_utc().timestamp_millis());
    }
    if s.len() == 4 {
        if let Ok(d) = NaiveDate::parse_from_str(&format!("{s}-01-01"), "%Y-%m-%d") {
            return d
                .and_hms_opt(0, 0, 0)
                .map(|n| n.and_utc().timestamp_millis());
        }
    }
    DateTime::parse_from_rfc2822(s)
        .ok()
        .map(|dt| dt.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_millis_with_z() {
        assert_eq!(iso_ms(1_795_688_713_090), "2026-11-26T10:25:13.090Z");
        assert_eq!(iso_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn direct_formatting_matches_chrono() {
        let chrono_fmt = |ms: i64| {
            Utc.timestamp_millis_opt(ms)
                .single()
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string()
        };
        // leap days, century and 400-year boundaries, before the epoch, the ends of 0..=9999,
        // and outside it (the chrono path)
        let mut cases = vec![
            0,
            -1,
            951_782_400_000,     // 2000-02-29
            4_107_542_400_000,   // 2100-02-28
            4_107_628_799_999,   // 2100-03-01 23:59:59.999
            -62_167_219_200_000, // 0000-01-01
            -62_167_219_200_001,
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000,
        ];
        // and a day's worth of steps spread over 1900..2200
        let mut ms = -2_208_988_800_000i64;
        while ms < 7_258_118_400_000 {
            cases.push(ms);
            ms += 86_400_000 * 37 + 3_599_999;
        }
        for ms in cases {
            assert_eq!(iso_ms(ms), chrono_fmt(ms), "ms = {ms}");
        }
    }

    #[test]
    fn parses_what_date_parse_accepts() {
        let t = 1_795_688_713_090;
        assert_eq!(parse_date_ms("2026-11-26T10:25:13.090Z"), Some(t));
        assert_eq!(parse_date_ms("2026-11-26T10:25:13.090+00:00"), Some(t));
        assert_eq!(parse_date_ms("2026-11-26T10:25:13.090123"), Some(t));
        assert_eq!(parse_date_ms("2026-11-26 10:25:13.090"), Some(t));
        assert_eq!(parse_date_ms("2026-11-26"), Some(1_795_651_200_000));
        assert!(parse_date_ms("Thu, 26 Nov 2026 10:25:13 GMT").is_some());
        assert_eq!(parse_date_ms("xyz"), None);
        assert_eq!(parse_date_ms("1700000000"), None);
        assert_eq!(parse_date_ms(""), None);
    }
}
