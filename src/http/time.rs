//! Times at the edge: bodies carry RFC 3339 strings, the domain works in milliseconds since the
//! Unix epoch. A string that is not a time is refused with `invalid_time`, naming the field but
//! never echoing the parser's internals.

use super::errors::ApiError;
use std::time::{Duration, UNIX_EPOCH};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// What the OpenAPI document says a time field holds. The server reads any valid RFC 3339 UTC
/// time from 1970 to 9999 (`parse_ms`); the pattern is narrower on days (up to the 28th) so that
/// every string it matches is a real date, as a generated client or a fuzzer needs.
pub const TIME_PATTERN: &str = r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,3})?Z$";

/// The schema of a time in a body: an RFC 3339 string in UTC.
pub struct Time;

impl utoipa::PartialSchema for Time {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(TIME_PATTERN))
            .description(Some("An RFC 3339 time in UTC, e.g. 2026-11-27T10:00:00Z"))
            .examples(["2026-11-27T10:00:00Z"])
            .into()
    }
}

impl utoipa::ToSchema for Time {}

/// Milliseconds since the Unix epoch of an RFC 3339 time (`2026-11-27T10:00:00Z`; a missing
/// offset is read as UTC). The parser accepts years 1970 to 9999, so the result fits in `i64`.
pub fn parse_ms(field: &'static str, raw: &str) -> Result<i64, ApiError> {
    let invalid = || {
        ApiError::unprocessable("invalid_time", format!("{field} must be an RFC 3339 time, e.g. 2026-11-27T10:00:00Z"))
    };
    let at = humantime::parse_rfc3339_weak(raw).map_err(|_| invalid())?;
    let since_epoch = at.duration_since(UNIX_EPOCH).map_err(|_| invalid())?;
    i64::try_from(since_epoch.as_millis()).map_err(|_| invalid())
}

/// `parse_ms` of an optional field.
pub fn parse_optional_ms(field: &'static str, raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    raw.map(|raw| parse_ms(field, raw)).transpose()
}

/// The RFC 3339 form (UTC, milliseconds) of a stored time. Stored times are never negative.
pub fn format_ms(ms: i64) -> String {
    debug_assert!(ms >= 0, "stored times are not before 1970, got {ms}");
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_garbage_is_refused_without_detail() {
        let ms = parse_ms("t", "2026-11-27T10:00:00.250Z").unwrap();
        assert_eq!(ms, 1_795_773_600_250);
        assert_eq!(format_ms(ms), "2026-11-27T10:00:00.250Z");
        assert_eq!(parse_ms("t", "1970-01-01T00:00:00Z"), Ok(0));
        for garbage in ["", "tomorrow", "2026-13-01T00:00:00Z", "1969-12-31T23:59:59Z", "99999-01-01T00:00:00Z"] {
            let error = parse_ms("sale_starts_at", garbage).unwrap_err();
            assert_eq!((error.status.as_u16(), error.code), (422, "invalid_time"), "{garbage:?}");
            assert!(error.message.starts_with("sale_starts_at must be"), "{}", error.message);
        }
    }
}
