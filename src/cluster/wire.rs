//! The JSON of calls between nodes: a SKU's owner reserving or settling units for an order
//! served on another node, a template's owner issuing a coupon to a user another node serves
//! (`remote.rs` calls, `http::internal` answers). Small on purpose: ids, a quantity, a time; a
//! grant answers with what the order's item snapshot needs, an issue with the coupon.
//!
//! A refusal travels as the error it was on the owner (`Refused`, `ClaimRefused`), so the
//! serving node decides about it exactly as it would about a local one (insufficient stock is a
//! 409 to the buyer, an overloaded owner a 503, ...).

use crate::actors::coupon::ClaimFailure;
use crate::actors::inventory::{Grant, Settlement, SkuError};
use crate::cluster::NotOwner;
use crate::domain::coupon::{ClaimError, Coupon, CouponStatus};
use crate::domain::inventory::InventoryError;
use crate::domain::sale::{Sale, SaleError};
use crate::domain::slots::RangeId;
use crate::domain::{Cents, CouponId, OrderId, SkuId, TemplateId, UserId};
use crate::persistence::SkuInfo;
use serde::{Deserialize, Serialize};

/// The path of a SKU's internal reservation endpoint.
pub fn reserve_path(sku_id: SkuId) -> String {
    format!("/internal/v1/skus/{sku_id}/reserve")
}

/// The path of a SKU's internal settlement endpoint.
pub fn settle_path(sku_id: SkuId) -> String {
    format!("/internal/v1/skus/{sku_id}/settle")
}

/// The path of a template's internal issue endpoint.
pub fn issue_path(template_id: TemplateId) -> String {
    format!("/internal/v1/coupon-templates/{template_id}/issue")
}

/// Issue the user's `seq`-th coupon of the template, committed on the template's owner alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueCall {
    pub user_id: i64,
    pub seq: i64,
}

/// The coupon is issued (and committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issued {
    pub coupon_id: i64,
    pub valid_until_ms: i64,
}

impl Issued {
    pub fn of(coupon: &Coupon) -> Issued {
        Issued { coupon_id: coupon.id.get(), valid_until_ms: coupon.valid_until_ms }
    }

    /// The new coupon as the user's node holds it; `None` when the owner sent no valid id.
    pub fn into_coupon(self, template_id: TemplateId, user_id: UserId) -> Option<Coupon> {
        Some(Coupon {
            id: CouponId::parse(self.coupon_id)?,
            template_id,
            user_id,
            status: CouponStatus::Unused,
            order_id: None,
            valid_until_ms: self.valid_until_ms,
        })
    }
}

/// A claim refused by the template's owner: the `ClaimFailure` it was there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "refused", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClaimRefused {
    NotFound,
    NotStarted,
    Ended,
    SoldOut,
    LimitReached,
    Behind,
    Overloaded,
    NotOwner { range: u16, owner: Option<String> },
    Unavailable { reason: String },
    Uncertain { reason: String },
}

impl ClaimRefused {
    pub fn of(failure: &ClaimFailure) -> ClaimRefused {
        match failure {
            ClaimFailure::NotFound(_) => ClaimRefused::NotFound,
            ClaimFailure::Refused(ClaimError::NotStarted) => ClaimRefused::NotStarted,
            ClaimFailure::Refused(ClaimError::Ended) => ClaimRefused::Ended,
            ClaimFailure::Refused(ClaimError::SoldOut) => ClaimRefused::SoldOut,
            ClaimFailure::Refused(ClaimError::LimitReached) => ClaimRefused::LimitReached,
            ClaimFailure::Behind => ClaimRefused::Behind,
            ClaimFailure::Overloaded => ClaimRefused::Overloaded,
            ClaimFailure::NotOwner(not_owner) => {
                ClaimRefused::NotOwner { range: not_owner.range.get(), owner: not_owner.owner.clone() }
            }
            ClaimFailure::Unavailable(reason) => ClaimRefused::Unavailable { reason: reason.clone() },
            ClaimFailure::Uncertain(reason) => ClaimRefused::Uncertain { reason: reason.clone() },
        }
    }

    /// The failure on the user's node, for a claim of `template_id`.
    pub fn into_failure(self, template_id: TemplateId) -> ClaimFailure {
        match self {
            ClaimRefused::NotFound => ClaimFailure::NotFound(template_id),
            ClaimRefused::NotStarted => ClaimError::NotStarted.into(),
            ClaimRefused::Ended => ClaimError::Ended.into(),
            ClaimRefused::SoldOut => ClaimError::SoldOut.into(),
            ClaimRefused::LimitReached => ClaimError::LimitReached.into(),
            ClaimRefused::Behind => ClaimFailure::Behind,
            ClaimRefused::Overloaded => ClaimFailure::Overloaded,
            ClaimRefused::NotOwner { range, owner } => match RangeId::new(range) {
                Some(range) => ClaimFailure::NotOwner(NotOwner { range, owner }),
                None => ClaimFailure::Unavailable(format!("the owner named range {range}")),
            },
            ClaimRefused::Unavailable { reason } => ClaimFailure::Unavailable(reason),
            ClaimRefused::Uncertain { reason } => ClaimFailure::Uncertain(reason),
        }
    }
}

/// Hold `quantity` units of the SKU for `order_id` until `expires_at_ms`, committed on the
/// SKU's owner alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveCall {
    pub order_id: i64,
    pub quantity: i64,
    pub expires_at_ms: i64,
}

/// The units are held (and committed): what the order's item snapshot needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Granted {
    pub name: String,
    pub price_cents: i64,
    pub unit_price_cents: i64,
    pub sale_price_cents: Option<i64>,
    pub sale_starts_at_ms: Option<i64>,
    pub sale_ends_at_ms: Option<i64>,
    pub per_user_limit: Option<i64>,
}

impl Granted {
    pub fn of(grant: &Grant) -> Granted {
        let sale = grant.info.sale;
        Granted {
            name: grant.info.name.clone(),
            price_cents: grant.info.price_cents.get(),
            unit_price_cents: grant.unit_price_cents.get(),
            sale_price_cents: sale.price_cents.map(Cents::get),
            sale_starts_at_ms: sale.starts_at_ms,
            sale_ends_at_ms: sale.ends_at_ms,
            per_user_limit: sale.per_user_limit,
        }
    }

    /// The grant as the serving node holds it: committed on the owner, so no effect to commit.
    pub fn into_grant(self, sku_id: SkuId) -> Grant {
        let sale = Sale {
            price_cents: self.sale_price_cents.map(Cents::new),
            starts_at_ms: self.sale_starts_at_ms,
            ends_at_ms: self.sale_ends_at_ms,
            per_user_limit: self.per_user_limit,
        };
        let info = SkuInfo { sku_id, name: self.name, price_cents: Cents::new(self.price_cents), sale };
        Grant { info, unit_price_cents: Cents::new(self.unit_price_cents), effect: None }
    }
}

/// How a lease is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleKind {
    Confirm,
    Release,
    Return,
}

/// Settle the lease of `order_id` on the SKU (`quantity`: the units a return gives back),
/// committed on the SKU's owner alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleCall {
    pub order_id: i64,
    pub settlement: SettleKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<i64>,
}

impl SettleCall {
    pub fn new(order_id: OrderId, settlement: Settlement) -> SettleCall {
        let (settlement, quantity) = match settlement {
            Settlement::Confirm => (SettleKind::Confirm, None),
            Settlement::Release => (SettleKind::Release, None),
            Settlement::Return { quantity } => (SettleKind::Return, Some(quantity)),
        };
        SettleCall { order_id: order_id.get(), settlement, quantity }
    }

    /// The settlement asked for, if the call is well formed (a return names its units).
    pub fn settlement(&self) -> Option<Settlement> {
        match (self.settlement, self.quantity) {
            (SettleKind::Confirm, None) => Some(Settlement::Confirm),
            (SettleKind::Release, None) => Some(Settlement::Release),
            (SettleKind::Return, Some(quantity)) if quantity > 0 => Some(Settlement::Return { quantity }),
            _ => None,
        }
    }
}

/// A refusal by the SKU's owner: the `SkuError` it was there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "refused", rename_all = "snake_case", deny_unknown_fields)]
pub enum Refused {
    NotFound,
    InsufficientStock { available: i64, requested: i64 },
    DuplicateReservation,
    UnknownReservation,
    NotSold { sold: i64, requested: i64 },
    SaleNotStarted { starts_at_ms: i64 },
    SaleEnded { ends_at_ms: i64 },
    Overloaded,
    NotOwner { range: u16, owner: Option<String> },
    Unavailable { reason: String },
}

impl Refused {
    pub fn of(error: &SkuError) -> Refused {
        match error {
            SkuError::NotFound(_) => Refused::NotFound,
            SkuError::Inventory(InventoryError::InsufficientStock { available, requested }) => {
                Refused::InsufficientStock { available: *available, requested: *requested }
            }
            SkuError::Inventory(InventoryError::DuplicateReservation(_)) => Refused::DuplicateReservation,
            SkuError::Inventory(InventoryError::UnknownReservation(_)) => Refused::UnknownReservation,
            SkuError::Inventory(InventoryError::NotSold { sold, requested }) => {
                Refused::NotSold { sold: *sold, requested: *requested }
            }
            SkuError::Sale(SaleError::NotStarted { starts_at_ms }) => {
                Refused::SaleNotStarted { starts_at_ms: *starts_at_ms }
            }
            SkuError::Sale(SaleError::Ended { ends_at_ms }) => Refused::SaleEnded { ends_at_ms: *ends_at_ms },
            SkuError::Overloaded => Refused::Overloaded,
            SkuError::NotOwner(not_owner) => {
                Refused::NotOwner { range: not_owner.range.get(), owner: not_owner.owner.clone() }
            }
            other => Refused::Unavailable { reason: other.to_string() },
        }
    }

    /// The error on the serving node, for `order_id`'s line on `sku_id`.
    pub fn into_error(self, sku_id: SkuId, order_id: OrderId) -> SkuError {
        match self {
            Refused::NotFound => SkuError::NotFound(sku_id),
            Refused::InsufficientStock { available, requested } => {
                InventoryError::InsufficientStock { available, requested }.into()
            }
            Refused::DuplicateReservation => InventoryError::DuplicateReservation(order_id).into(),
            Refused::UnknownReservation => InventoryError::UnknownReservation(order_id).into(),
            Refused::NotSold { sold, requested } => InventoryError::NotSold { sold, requested }.into(),
            Refused::SaleNotStarted { starts_at_ms } => SaleError::NotStarted { starts_at_ms }.into(),
            Refused::SaleEnded { ends_at_ms } => SaleError::Ended { ends_at_ms }.into(),
            Refused::Overloaded => SkuError::Overloaded,
            Refused::NotOwner { range, owner } => match RangeId::new(range) {
                Some(range) => SkuError::NotOwner(NotOwner { range, owner }),
                None => SkuError::Unavailable(format!("the owner named range {range}")),
            },
            Refused::Unavailable { reason } => SkuError::Unavailable(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_crosses_the_wire_as_the_error_it_was() {
        let (sku_id, order_id) = (SkuId::new(5), OrderId::new(9));
        let errors = [
            SkuError::NotFound(sku_id),
            InventoryError::InsufficientStock { available: 1, requested: 3 }.into(),
            InventoryError::UnknownReservation(order_id).into(),
            SaleError::Ended { ends_at_ms: 7 }.into(),
            SkuError::Overloaded,
            SkuError::NotOwner(NotOwner { range: RangeId::new(3).unwrap(), owner: Some("http://c".into()) }),
        ];
        for error in errors {
            let json = serde_json::to_string(&Refused::of(&error)).unwrap();
            let back: Refused = serde_json::from_str(&json).unwrap();
            assert_eq!(back.into_error(sku_id, order_id), error, "{json}");
        }
    }

    #[test]
    fn a_claim_refusal_crosses_the_wire_as_the_failure_it_was() {
        let template_id = TemplateId::new(8);
        let failures = [
            ClaimFailure::NotFound(template_id),
            ClaimError::NotStarted.into(),
            ClaimError::Ended.into(),
            ClaimError::SoldOut.into(),
            ClaimError::LimitReached.into(),
            ClaimFailure::Behind,
            ClaimFailure::Overloaded,
            ClaimFailure::NotOwner(NotOwner { range: RangeId::new(3).unwrap(), owner: None }),
            ClaimFailure::Unavailable("down".into()),
            ClaimFailure::Uncertain("cut".into()),
        ];
        for failure in failures {
            let json = serde_json::to_string(&ClaimRefused::of(&failure)).unwrap();
            let back: ClaimRefused = serde_json::from_str(&json).unwrap();
            assert_eq!(back.into_failure(template_id), failure, "{json}");
        }
        let coupon = Issued { coupon_id: 0, valid_until_ms: 5 };
        assert_eq!(coupon.into_coupon(template_id, UserId::new(1)), None, "no coupon without a valid id");
    }

    #[test]
    fn a_settle_call_names_its_units_only_for_a_return() {
        let order_id = OrderId::new(4);
        for settlement in [Settlement::Confirm, Settlement::Release, Settlement::Return { quantity: 2 }] {
            let json = serde_json::to_string(&SettleCall::new(order_id, settlement)).unwrap();
            let back: SettleCall = serde_json::from_str(&json).unwrap();
            assert_eq!(back.settlement(), Some(settlement), "{json}");
        }
        let bad = SettleCall { order_id: 4, settlement: SettleKind::Return, quantity: None };
        assert_eq!(bad.settlement(), None);
        assert!(serde_json::from_str::<SettleCall>(r#"{"order_id":1,"settlement":"confirm","x":1}"#).is_err());
    }
}
