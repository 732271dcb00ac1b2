//! What a new SKU must be: its name, price and first stock, parsed once at the edge.

use super::inventory::STOCK_QUANTITY_MAX;
use super::money::{Cents, MoneyError};
use super::sale::Sale;

/// The longest SKU name, in characters.
pub const SKU_NAME_LEN_MAX: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkuRuleError {
    #[error("name must be 1 to {SKU_NAME_LEN_MAX} characters")]
    InvalidName,
    #[error(transparent)]
    InvalidPrice(#[from] MoneyError),
    #[error("stock must be between 0 and {STOCK_QUANTITY_MAX}")]
    InvalidStock,
}

/// A valid new SKU, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuDraft {
    pub name: String,
    pub price_cents: Cents,
    pub stock: i64,
    /// Its sale, if any (`Sale::default()`: none); parsed by `Sale::parse`.
    pub sale: Sale,
}

impl SkuDraft {
    /// Checks, in this order: name (trimmed, 1 to 200 characters), price, stock.
    pub fn parse(name: &str, price_cents: i64, stock: i64) -> Result<Self, SkuRuleError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > SKU_NAME_LEN_MAX {
            return Err(SkuRuleError::InvalidName);
        }
        let price_cents = Cents::parse_price(price_cents)?;
        if !(0..=i64::from(STOCK_QUANTITY_MAX)).contains(&stock) {
            return Err(SkuRuleError::InvalidStock);
        }
        Ok(SkuDraft { name: name.to_owned(), price_cents, stock, sale: Sale::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_in_precedence_order() {
        assert_eq!(SkuDraft::parse("  ", -1, -1), Err(SkuRuleError::InvalidName));
        assert_eq!(SkuDraft::parse(&"x".repeat(201), 1, 1), Err(SkuRuleError::InvalidName));
        assert!(matches!(SkuDraft::parse("a", -1, -1), Err(SkuRuleError::InvalidPrice(_))));
        assert_eq!(SkuDraft::parse("a", 1, -1), Err(SkuRuleError::InvalidStock));
        assert_eq!(SkuDraft::parse("a", 1, i64::from(STOCK_QUANTITY_MAX) + 1), Err(SkuRuleError::InvalidStock));
        let draft = SkuDraft::parse(" Course ", 1999, 0).unwrap();
        assert_eq!((draft.name.as_str(), draft.price_cents.get(), draft.stock), ("Course", 1999, 0));
    }
}
