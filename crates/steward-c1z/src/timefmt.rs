//! Timestamps as c1z files store them: UTC text `YYYY-MM-DD HH:MM:SS.fffffffff`, which sorts as text.

use time::OffsetDateTime;
use time::macros::format_description;

/// Now, in UTC, as c1z timestamp text.
pub fn now_text() -> String {
    format(OffsetDateTime::now_utc())
}

/// `t` (converted to UTC) as c1z timestamp text.
pub fn format(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:9]");
    t.to_offset(time::UtcOffset::UTC).format(&fmt).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn shape() {
        let t = time::macros::datetime!(2026-11-03 04:05:06.000000007 UTC);
        assert_eq!(super::format(t), "2026-11-03 04:05:06.000000007");
        assert_eq!(super::now_text().len(), 29);
    }
}
