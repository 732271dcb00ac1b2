//! Money as whole cents in an `i64`. Never a float: every amount in tianji is a `Cents`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The largest price a SKU may carry: ten billion currency units. Keeps every order total
/// (items x quantity x price) far inside `i64` so sums never overflow.
pub const PRICE_CENTS_MAX: i64 = 1_000_000_000_000;

/// An amount of money in cents. Arithmetic is checked: an overflow is an error, never a wrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cents(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("price_cents must be between 0 and {PRICE_CENTS_MAX}, got {0}")]
    PriceOutOfRange(i64),
    #[error("amount overflows")]
    Overflow,
}

impl Cents {
    pub const ZERO: Cents = Cents(0);

    /// Wraps a value already known to be a valid amount (read back from the database).
    pub const fn new(cents: i64) -> Self {
        Cents(cents)
    }

    /// Parses a unit price: zero (a free item) up to `PRICE_CENTS_MAX`.
    pub fn parse_price(cents: i64) -> Result<Self, MoneyError> {
        if !(0..=PRICE_CENTS_MAX).contains(&cents) {
            return Err(MoneyError::PriceOutOfRange(cents));
        }
        Ok(Cents(cents))
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Cents) -> Result<Cents, MoneyError> {
        self.0.checked_add(other.0).map(Cents).ok_or(MoneyError::Overflow)
    }

    pub fn checked_sub(self, other: Cents) -> Result<Cents, MoneyError> {
        self.0.checked_sub(other.0).map(Cents).ok_or(MoneyError::Overflow)
    }

    pub fn checked_mul(self, factor: i64) -> Result<Cents, MoneyError> {
        self.0.checked_mul(factor).map(Cents).ok_or(MoneyError::Overflow)
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cents", self.0)
    }
}

/// Splits `discount` over `amounts` in proportion to each amount, by largest remainder, so
/// that the parts sum to `discount` exactly and no part exceeds its amount.
///
/// Precondition: `0 <= discount <= sum(amounts)`, all amounts >= 0.
pub fn apportion(discount: Cents, amounts: &[Cents]) -> Result<Vec<Cents>, MoneyError> {
    let total: i128 = amounts.iter().map(|a| i128::from(a.get())).sum();
    assert!(amounts.iter().all(|a| a.get() >= 0), "amounts must not be negative");
    assert!(discount.get() >= 0 && i128::from(discount.get()) <= total);
    if total == 0 {
        return Ok(vec![Cents::ZERO; amounts.len()]);
    }
    let discount_wide = i128::from(discount.get());
    let mut parts: Vec<i128> = Vec::with_capacity(amounts.len());
    let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(amounts.len());
    for (index, amount) in amounts.iter().enumerate() {
        let scaled = discount_wide * i128::from(amount.get());
        parts.push(scaled / total);
        remainders.push((scaled % total, index));
    }
    let mut left = discount_wide - parts.iter().sum::<i128>();
    // Largest remainder first; ties go to the earlier line so the split is deterministic.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, index) in remainders {
        if left == 0 {
            break;
        }
        parts[index] += 1;
        left -= 1;
    }
    assert_eq!(left, 0);
    let parts: Vec<Cents> = parts
        .into_iter()
        .map(|p| i64::try_from(p).map(Cents).map_err(|_| MoneyError::Overflow))
        .collect::<Result<_, _>>()?;
    debug_assert_eq!(parts.iter().map(|p| i128::from(p.get())).sum::<i128>(), discount_wide);
    debug_assert!(parts.iter().zip(amounts).all(|(p, a)| p.get() <= a.get()));
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn price_bounds() {
        assert_eq!(Cents::parse_price(0), Ok(Cents(0)));
        assert_eq!(Cents::parse_price(PRICE_CENTS_MAX), Ok(Cents(PRICE_CENTS_MAX)));
        assert_eq!(Cents::parse_price(-1), Err(MoneyError::PriceOutOfRange(-1)));
        assert!(Cents::parse_price(PRICE_CENTS_MAX + 1).is_err());
    }

    #[test]
    fn checked_arithmetic_refuses_overflow() {
        assert_eq!(Cents(i64::MAX).checked_add(Cents(1)), Err(MoneyError::Overflow));
        assert_eq!(Cents(i64::MAX).checked_mul(2), Err(MoneyError::Overflow));
        assert_eq!(Cents(5).checked_mul(3), Ok(Cents(15)));
    }

    #[test]
    fn apportion_by_largest_remainder() {
        let parts = apportion(Cents(100), &[Cents(100), Cents(100), Cents(100)]).unwrap();
        assert_eq!(parts, vec![Cents(34), Cents(33), Cents(33)]);
        let parts = apportion(Cents(2), &[Cents(1), Cents(1), Cents(1)]).unwrap();
        assert_eq!(parts, vec![Cents(1), Cents(1), Cents(0)]);
        let parts = apportion(Cents(10), &[Cents(300), Cents(100), Cents(0)]).unwrap();
        assert_eq!(parts, vec![Cents(8), Cents(2), Cents(0)]);
        assert_eq!(apportion(Cents(0), &[]).unwrap(), Vec::<Cents>::new());
    }

    proptest! {
        #[test]
        fn apportion_sums_exactly(amounts in prop::collection::vec(0i64..1_000_000, 1..20), share in 0u32..=100) {
            let amounts: Vec<Cents> = amounts.into_iter().map(Cents).collect();
            let total: i64 = amounts.iter().map(|a| a.get()).sum();
            let discount = Cents(total * i64::from(share) / 100);
            let parts = apportion(discount, &amounts).unwrap();
            prop_assert_eq!(parts.iter().map(|p| p.get()).sum::<i64>(), discount.get());
            for (part, amount) in parts.iter().zip(&amounts) {
                prop_assert!(part.get() >= 0 && part.get() <= amount.get());
            }
        }
    }
}
