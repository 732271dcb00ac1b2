//! A sale on a SKU: an optional sale price, an optional window `[starts, ends)` outside which the
//! SKU cannot be bought, and an optional per-user purchase limit.
//!
//! `Sale::parse` and `Sale::patch` are the only ways a sale is built from outside input, so a
//! `Sale` always has a valid price, a window whose end is after its start, and a limit in
//! `1..=PER_USER_LIMIT_MAX`. `Sale::price_at` and `check_allowance` are the rules the inventory
//! and user actors ask before they reserve.

use super::money::{Cents, MoneyError, PRICE_CENTS_MAX};

/// The largest per-user purchase limit: far above any real flash-sale cap, and small enough
/// that `bought + requested` never comes near overflow.
pub const PER_USER_LIMIT_MAX: i64 = 1_000_000;

/// The sale settings of one SKU; every field `None` means "no sale": list price, always open,
/// no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sale {
    /// The price during the sale; `None` keeps the list price.
    pub price_cents: Option<Cents>,
    /// The first millisecond the SKU can be bought; `None` means open since forever.
    pub starts_at_ms: Option<i64>,
    /// The first millisecond the SKU can no longer be bought; `None` means never closes.
    pub ends_at_ms: Option<i64>,
    /// The most units one user may hold of this SKU; `None` means no limit.
    pub per_user_limit: Option<i64>,
}

/// Why sale settings are refused. Checked in this order: price, window, limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaleRuleError {
    #[error("sale price_cents must be between 0 and {PRICE_CENTS_MAX}")]
    InvalidPrice(#[source] MoneyError),
    #[error("sale_ends_at must be after sale_starts_at, and neither may be before 1970")]
    InvalidWindow,
    #[error("per_user_limit must be between 1 and {PER_USER_LIMIT_MAX}")]
    InvalidLimit,
}

/// A partial update of a `Sale`, as a PATCH body carries it: for each field `None` leaves it
/// unchanged, `Some(None)` clears it and `Some(Some(v))` sets it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SalePatch {
    pub price_cents: Option<Option<i64>>,
    pub starts_at_ms: Option<Option<i64>>,
    pub ends_at_ms: Option<Option<i64>>,
    pub per_user_limit: Option<Option<i64>>,
}

/// Why a SKU cannot be bought at a given moment, with the edge of the window the buyer missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaleError {
    #[error("the sale has not started")]
    NotStarted { starts_at_ms: i64 },
    #[error("the sale has ended")]
    Ended { ends_at_ms: i64 },
}

impl Sale {
    /// Builds a sale from raw settings. Checks in this order: price (`Cents::parse_price`),
    /// window (no negative time; when both ends are set the end is after the start), limit
    /// (`1..=PER_USER_LIMIT_MAX`).
    pub fn parse(
        price_cents: Option<i64>,
        starts_at_ms: Option<i64>,
        ends_at_ms: Option<i64>,
        per_user_limit: Option<i64>,
    ) -> Result<Sale, SaleRuleError> {
        let price_cents = price_cents.map(Cents::parse_price).transpose().map_err(SaleRuleError::InvalidPrice)?;
        if starts_at_ms.is_some_and(|t| t < 0) || ends_at_ms.is_some_and(|t| t < 0) {
            return Err(SaleRuleError::InvalidWindow);
        }
        if let (Some(starts), Some(ends)) = (starts_at_ms, ends_at_ms) {
            if ends <= starts {
                return Err(SaleRuleError::InvalidWindow);
            }
        }
        if per_user_limit.is_some_and(|limit| !(1..=PER_USER_LIMIT_MAX).contains(&limit)) {
            return Err(SaleRuleError::InvalidLimit);
        }
        Ok(Sale { price_cents, starts_at_ms, ends_at_ms, per_user_limit })
    }

    /// Applies a PATCH to this sale. The merged settings are checked as a whole, exactly as
    /// `parse` checks them, so a patch that only moves one end of the window is still refused
    /// when it would put the end before the start.
    pub fn patch(self, patch: &SalePatch) -> Result<Sale, SaleRuleError> {
        Sale::parse(
            merge(self.price_cents.map(Cents::get), patch.price_cents),
            merge(self.starts_at_ms, patch.starts_at_ms),
            merge(self.ends_at_ms, patch.ends_at_ms),
            merge(self.per_user_limit, patch.per_user_limit),
        )
    }

    /// The unit price a buyer pays at `now_ms`, or why the SKU cannot be bought now.
    /// The window is `[starts_at_ms, ends_at_ms)`: before its start NotStarted, from its end on
    /// Ended; inside it the sale price if one is set, else `list_price`.
    pub fn price_at(&self, list_price: Cents, now_ms: i64) -> Result<Cents, SaleError> {
        if let Some(starts_at_ms) = self.starts_at_ms {
            if now_ms < starts_at_ms {
                return Err(SaleError::NotStarted { starts_at_ms });
            }
        }
        if let Some(ends_at_ms) = self.ends_at_ms {
            if now_ms >= ends_at_ms {
                return Err(SaleError::Ended { ends_at_ms });
            }
        }
        let price = self.price_cents.unwrap_or(list_price);
        assert!(price.get() >= 0, "a unit price is never negative");
        Ok(price)
    }
}

/// The PATCH rule for one field: absent keeps `current`, present replaces it (with a value or
/// with nothing).
fn merge(current: Option<i64>, change: Option<Option<i64>>) -> Option<i64> {
    change.unwrap_or(current)
}

/// A purchase that would take a user past a SKU's per-user limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("purchase limit of {limit} units reached ({bought} bought, {requested} requested)")]
pub struct LimitReached {
    pub limit: i64,
    pub bought: i64,
    pub requested: i64,
}

/// Per-user purchase limit: whether a user who already has `bought` units of a SKU limited to
/// `limit` (committed or in flight) may take `requested` more. Accepts exactly when
/// `bought + requested <= limit`; no limit accepts everything.
///
/// Preconditions: `bought >= 0`, `requested > 0`, a set limit is in `1..=PER_USER_LIMIT_MAX`.
/// `bought` may exceed `limit` (the limit was lowered after the purchase): then every request
/// is refused.
pub fn check_allowance(limit: Option<i64>, bought: i64, requested: i64) -> Result<(), LimitReached> {
    assert!(bought >= 0, "bought units are never negative, got {bought}");
    assert!(requested > 0, "a request is for at least one unit, got {requested}");
    let Some(limit) = limit else {
        return Ok(());
    };
    assert!((1..=PER_USER_LIMIT_MAX).contains(&limit), "a parsed limit is in range, got {limit}");
    // Wide arithmetic: `bought` and `requested` come from counters, not from a parsed range.
    if i128::from(bought) + i128::from(requested) > i128::from(limit) {
        return Err(LimitReached { limit, bought, requested });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_rules_in_precedence_order() {
        use SaleRuleError::*;
        let bad_price = Err(InvalidPrice(MoneyError::PriceOutOfRange(-1)));
        type Case = (Option<i64>, Option<i64>, Option<i64>, Option<i64>, Result<(), SaleRuleError>);
        // (price, starts, ends, limit, expected): errors in precedence order, then valid edges.
        let table: [Case; 14] = [
            (Some(-1), Some(-5), Some(-9), Some(0), bad_price.clone()),
            (Some(-1), None, None, None, bad_price),
            (
                Some(PRICE_CENTS_MAX + 1),
                None,
                None,
                None,
                Err(InvalidPrice(MoneyError::PriceOutOfRange(PRICE_CENTS_MAX + 1))),
            ),
            (Some(1), Some(20), Some(10), Some(0), Err(InvalidWindow)),
            (None, Some(10), Some(10), None, Err(InvalidWindow)),
            (None, Some(-1), None, None, Err(InvalidWindow)),
            (None, None, Some(-1), None, Err(InvalidWindow)),
            (None, Some(10), Some(11), Some(0), Err(InvalidLimit)),
            (None, None, None, Some(PER_USER_LIMIT_MAX + 1), Err(InvalidLimit)),
            (None, None, None, Some(-3), Err(InvalidLimit)),
            (None, None, None, None, Ok(())),
            (Some(0), Some(0), Some(1), Some(1), Ok(())),
            (Some(PRICE_CENTS_MAX), None, Some(0), Some(PER_USER_LIMIT_MAX), Ok(())),
            (None, Some(5), None, None, Ok(())),
        ];
        for (price, starts, ends, limit, expected) in table {
            let got = Sale::parse(price, starts, ends, limit).map(|_| ());
            assert_eq!(got, expected, "{price:?} {starts:?} {ends:?} {limit:?}");
        }
        let sale = Sale::parse(Some(990), Some(100), Some(200), Some(2)).unwrap();
        assert_eq!(
            sale,
            Sale {
                price_cents: Some(Cents::new(990)),
                starts_at_ms: Some(100),
                ends_at_ms: Some(200),
                per_user_limit: Some(2)
            }
        );
    }

    #[test]
    fn window_edges() {
        let list = Cents::new(1_000);
        let sale = Sale::parse(Some(500), Some(100), Some(200), None).unwrap();
        assert_eq!(sale.price_at(list, 99), Err(SaleError::NotStarted { starts_at_ms: 100 }));
        assert_eq!(sale.price_at(list, 100), Ok(Cents::new(500)), "starts exactly: open");
        assert_eq!(sale.price_at(list, 199), Ok(Cents::new(500)));
        assert_eq!(sale.price_at(list, 200), Err(SaleError::Ended { ends_at_ms: 200 }), "ends exactly: closed");
        assert_eq!(sale.price_at(list, i64::MAX), Err(SaleError::Ended { ends_at_ms: 200 }));

        let window_only = Sale::parse(None, Some(100), None, None).unwrap();
        assert_eq!(window_only.price_at(list, 100), Ok(list), "no sale price: list price");
        assert_eq!(window_only.price_at(list, i64::MAX), Ok(list), "no end: never closes");
        assert_eq!(Sale::default().price_at(list, i64::MIN), Ok(list));
        let free = Sale::parse(Some(0), None, None, None).unwrap();
        assert_eq!(free.price_at(list, 0), Ok(Cents::ZERO));
    }

    #[test]
    fn patch_sets_clears_and_keeps() {
        let sale = Sale::parse(Some(500), Some(100), Some(200), Some(3)).unwrap();
        assert_eq!(sale.patch(&SalePatch::default()), Ok(sale), "empty patch keeps everything");

        let set = SalePatch { price_cents: Some(Some(400)), per_user_limit: Some(Some(1)), ..SalePatch::default() };
        let expected = Sale { price_cents: Some(Cents::new(400)), per_user_limit: Some(1), ..sale };
        assert_eq!(sale.patch(&set), Ok(expected));

        let clear = SalePatch { price_cents: Some(None), ends_at_ms: Some(None), ..SalePatch::default() };
        assert_eq!(sale.patch(&clear), Ok(Sale { price_cents: None, ends_at_ms: None, ..sale }));

        let clear_all = SalePatch {
            price_cents: Some(None),
            starts_at_ms: Some(None),
            ends_at_ms: Some(None),
            per_user_limit: Some(None),
        };
        assert_eq!(sale.patch(&clear_all), Ok(Sale::default()));

        // Moving one end is checked against the other, kept end.
        let before_start = SalePatch { ends_at_ms: Some(Some(100)), ..SalePatch::default() };
        assert_eq!(sale.patch(&before_start), Err(SaleRuleError::InvalidWindow));
        let after_end = SalePatch { starts_at_ms: Some(Some(250)), ..SalePatch::default() };
        assert_eq!(sale.patch(&after_end), Err(SaleRuleError::InvalidWindow));
        let both = SalePatch { starts_at_ms: Some(Some(250)), ends_at_ms: Some(Some(300)), ..SalePatch::default() };
        assert_eq!(sale.patch(&both).map(|s| (s.starts_at_ms, s.ends_at_ms)), Ok((Some(250), Some(300))));

        let bad = SalePatch { price_cents: Some(Some(-1)), per_user_limit: Some(Some(0)), ..SalePatch::default() };
        assert!(matches!(sale.patch(&bad), Err(SaleRuleError::InvalidPrice(_))), "price first");
        let bad_limit = SalePatch { per_user_limit: Some(Some(0)), ..SalePatch::default() };
        assert_eq!(sale.patch(&bad_limit), Err(SaleRuleError::InvalidLimit));
    }

    #[test]
    fn allowance_edges() {
        assert_eq!(check_allowance(None, 0, 1), Ok(()));
        assert_eq!(check_allowance(None, i64::MAX, i64::MAX), Ok(()));
        assert_eq!(check_allowance(Some(2), 0, 2), Ok(()));
        assert_eq!(check_allowance(Some(2), 1, 1), Ok(()));
        assert_eq!(check_allowance(Some(2), 1, 2), Err(LimitReached { limit: 2, bought: 1, requested: 2 }));
        assert_eq!(check_allowance(Some(2), 5, 1), Err(LimitReached { limit: 2, bought: 5, requested: 1 }));
        assert!(check_allowance(Some(1), i64::MAX, i64::MAX).is_err(), "no overflow");
        let message = LimitReached { limit: 2, bought: 1, requested: 2 }.to_string();
        assert_eq!(message, "purchase limit of 2 units reached (1 bought, 2 requested)");
    }

    #[test]
    #[should_panic(expected = "at least one unit")]
    fn allowance_refuses_an_empty_request() {
        let _ = check_allowance(Some(2), 0, 0);
    }

    proptest! {
        #[test]
        fn allowance_matches_the_naive_rule(
            limit in 1i64..=PER_USER_LIMIT_MAX,
            bought in 0i64..=2 * PER_USER_LIMIT_MAX,
            requested in 1i64..=2 * PER_USER_LIMIT_MAX,
        ) {
            let within = bought + requested <= limit;
            let got = check_allowance(Some(limit), bought, requested);
            prop_assert_eq!(got.is_ok(), within);
            if let Err(refusal) = got {
                prop_assert_eq!(refusal, LimitReached { limit, bought, requested });
            }
        }

        #[test]
        fn price_at_is_open_exactly_inside_the_window(starts in 0i64..1_000, length in 1i64..1_000, now in -10i64..2_100) {
            let ends = starts + length;
            let sale = Sale::parse(Some(7), Some(starts), Some(ends), None).unwrap();
            let open = starts <= now && now < ends;
            prop_assert_eq!(sale.price_at(Cents::new(9), now).is_ok(), open);
        }
    }
}
