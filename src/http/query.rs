//! Query parameters the list endpoints share: the page size and the optional filters. Each is
//! parsed here once, with the same codes and messages for every resource; an empty value means
//! the parameter was not given.

use super::errors::ApiError;

/// The page size a list asks for: `default` when absent, refused (422 `invalid_limit`) outside
/// `1..=max`.
pub fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::unprocessable("invalid_limit", format!("limit must be between 1 and {max}")));
    }
    Ok(limit)
}

/// An optional parameter: `None` when absent or empty, else what `parse` makes of it, or the
/// error `refuse` builds from the raw value when `parse` rejects it.
pub fn parse_optional<T>(
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Option<T>,
    refuse: impl FnOnce(&str) -> ApiError,
) -> Result<Option<T>, ApiError> {
    match raw {
        None | Some("") => Ok(None),
        Some(raw) => parse(raw).map(Some).ok_or_else(|| refuse(raw)),
    }
}

/// An optional `status` filter of `resource` (`"order"`, `"coupon"`): refused with 422
/// `invalid_status` when `parse` does not know it.
pub fn optional_status<T>(
    raw: Option<&str>,
    resource: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    parse_optional(raw, parse, |name| {
        ApiError::unprocessable("invalid_status", format!("unknown {resource} status {name:?}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_limit_defaults_and_stays_in_bounds() {
        assert_eq!(page_limit(None, 20, 100).ok(), Some(20));
        assert_eq!(page_limit(Some(1), 20, 100).ok(), Some(1));
        assert_eq!(page_limit(Some(100), 20, 100).ok(), Some(100));
        let refused = ApiError::unprocessable("invalid_limit", "limit must be between 1 and 100");
        assert_eq!(page_limit(Some(0), 20, 100), Err(refused.clone()));
        assert_eq!(page_limit(Some(101), 20, 100), Err(refused));
    }

    #[test]
    fn an_absent_or_empty_parameter_is_none_and_an_unknown_one_is_refused() {
        let parse = |raw: &str| raw.parse::<u8>().ok();
        assert_eq!(optional_status(None, "order", parse).ok(), Some(None));
        assert_eq!(optional_status(Some(""), "order", parse).ok(), Some(None));
        assert_eq!(optional_status(Some("7"), "order", parse).ok(), Some(Some(7)));
        let refused = ApiError::unprocessable("invalid_status", r#"unknown order status "paid?""#);
        assert_eq!(optional_status(Some("paid?"), "order", parse), Err(refused));
    }
}
