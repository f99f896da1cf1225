//! Timestamps in the forms CHP and JupyterHub exchange.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time in milliseconds since the epoch.
pub fn push_iso_ms(out: &mut String, ms: i64) {
    use std::fmt::Write;
    let dt = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    let _ = write!(out, "{}", dt.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
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
