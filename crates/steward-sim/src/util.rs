//! Small helpers shared by the emulator's modules: time formatting and parsing.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `2024-05-01T12:00:00Z` (whole seconds, UTC), as Graph and ARM print timestamps.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}
