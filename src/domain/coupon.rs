//! Coupons: the rules of a template (what it takes off, from what spend, until when), who may
//! claim one and when, what it takes off an order, and the life of one issued coupon.
//!
//! Guarantees: a `TemplateDraft` only exists with valid rules (`TemplateDraft::parse`); a
//! discount is never negative and never above the order total (`CouponRules::discount`); a
//! coupon moves only along `Unused -> Locked -> Used`, back from `Locked` on release and from
//! `Used` on a refund while it is still valid (`Coupon::apply`), and holds an order id exactly
//! when it is not unused.

use super::ids::{CouponId, OrderId, TemplateId, UserId};
use super::money::{Cents, PRICE_CENTS_MAX};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest template name, in characters.
pub const TEMPLATE_NAME_LEN_MAX: usize = 200;
/// The most coupons one template may issue.
pub const COUPON_TOTAL_MAX: i64 = 100_000_000;
/// The most coupons of one template one user may hold.
pub const COUPON_PER_USER_LIMIT_MAX: i64 = 1_000;

/// What a coupon takes off an order. The names are stored in `coupon_template.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponKind {
    /// A fixed amount, at most the order total.
    AmountOff { discount_cents: Cents },
    /// `percent_off` percent of the order total (1 to 100), rounded down, at most
    /// `max_discount_cents` when one is set.
    PercentOff { percent_off: i64, max_discount_cents: Option<Cents> },
}

impl CouponKind {
    /// The stored and API name of the kind, never reused for another meaning.
    pub const fn name(&self) -> &'static str {
        match self {
            CouponKind::AmountOff { .. } => "amount_off",
            CouponKind::PercentOff { .. } => "percent_off",
        }
    }
}

/// What a coupon of a template is worth and until when: the part of a template that every
/// issued coupon carries to checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CouponRules {
    pub kind: CouponKind,
    /// The smallest order total the coupon applies to; zero means no threshold.
    pub min_spend_cents: Cents,
    /// The last millisecond a coupon can be locked to an order (inclusive).
    pub valid_until_ms: i64,
}

/// A valid new coupon template, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateDraft {
    pub name: String,
    pub rules: CouponRules,
    /// How many coupons the template may issue in all.
    pub total: i64,
    /// How many coupons of the template one user may hold.
    pub per_user_limit: i64,
    /// The first millisecond a coupon can be claimed; `None` means at once.
    pub claim_starts_at_ms: Option<i64>,
    /// The first millisecond a coupon can no longer be claimed; `None` means until
    /// `valid_until_ms`.
    pub claim_ends_at_ms: Option<i64>,
}

/// Raw input of a new template, as the HTTP layer received it (times already converted to ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateInput<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub discount_cents: Option<i64>,
    pub percent_off: Option<i64>,
    pub max_discount_cents: Option<i64>,
    pub min_spend_cents: i64,
    pub total: i64,
    pub per_user_limit: i64,
    pub claim_starts_at_ms: Option<i64>,
    pub claim_ends_at_ms: Option<i64>,
    pub valid_until_ms: i64,
}

/// Why a new template is refused. Checked in this order: name, kind, discount, min spend,
/// total, limit, window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateRuleError {
    #[error("name must be 1 to {TEMPLATE_NAME_LEN_MAX} characters")]
    InvalidName,
    #[error("kind must be amount_off or percent_off")]
    UnknownKind,
    #[error(
        "amount_off needs discount_cents between 1 and {PRICE_CENTS_MAX} and no percent_off or max_discount_cents; \
         percent_off needs percent_off between 1 and 100, no discount_cents, \
         and max_discount_cents between 1 and {PRICE_CENTS_MAX} if given"
    )]
    InvalidDiscount,
    #[error("min_spend_cents must be between 0 and {PRICE_CENTS_MAX}")]
    InvalidMinSpend,
    #[error("total must be between 1 and {COUPON_TOTAL_MAX}")]
    InvalidTotal,
    #[error("per_user_limit must be between 1 and {COUPON_PER_USER_LIMIT_MAX}")]
    InvalidLimit,
    #[error(
        "claim_ends_at must be after claim_starts_at, valid_until must be after claim_starts_at \
         and not before claim_ends_at, and no time may be before 1970"
    )]
    InvalidWindow,
}

impl TemplateDraft {
    /// Checks in this order: name (trimmed, 1 to 200 characters), kind, discount, min spend,
    /// total, limit, window.
    pub fn parse(input: &TemplateInput) -> Result<TemplateDraft, TemplateRuleError> {
        let name = input.name.trim();
        if name.is_empty() || name.chars().count() > TEMPLATE_NAME_LEN_MAX {
            return Err(TemplateRuleError::InvalidName);
        }
        let kind = parse_kind(input)?;
        let min_spend_cents =
            Cents::parse_price(input.min_spend_cents).map_err(|_| TemplateRuleError::InvalidMinSpend)?;
        if !(1..=COUPON_TOTAL_MAX).contains(&input.total) {
            return Err(TemplateRuleError::InvalidTotal);
        }
        if !(1..=COUPON_PER_USER_LIMIT_MAX).contains(&input.per_user_limit) {
            return Err(TemplateRuleError::InvalidLimit);
        }
        check_window(input.claim_starts_at_ms, input.claim_ends_at_ms, input.valid_until_ms)?;
        Ok(TemplateDraft {
            name: name.to_owned(),
            rules: CouponRules { kind, min_spend_cents, valid_until_ms: input.valid_until_ms },
            total: input.total,
            per_user_limit: input.per_user_limit,
            claim_starts_at_ms: input.claim_starts_at_ms,
            claim_ends_at_ms: input.claim_ends_at_ms,
        })
    }
}

/// The kind and its discount fields. A field that belongs to the other kind is refused rather
/// than ignored, so a client never believes a setting took effect when it did not.
fn parse_kind(input: &TemplateInput) -> Result<CouponKind, TemplateRuleError> {
    let positive_price = |cents: i64| Cents::parse_price(cents).ok().filter(|c| c.get() >= 1);
    match input.kind {
        "amount_off" => {
            if input.percent_off.is_some() || input.max_discount_cents.is_some() {
                return Err(TemplateRuleError::InvalidDiscount);
            }
            let discount_cents =
                input.discount_cents.and_then(positive_price).ok_or(TemplateRuleError::InvalidDiscount)?;
            Ok(CouponKind::AmountOff { discount_cents })
        }
        "percent_off" => {
            if input.discount_cents.is_some() {
                return Err(TemplateRuleError::InvalidDiscount);
            }
            let percent_off =
                input.percent_off.filter(|p| (1..=100).contains(p)).ok_or(TemplateRuleError::InvalidDiscount)?;
            let max_discount_cents = match input.max_discount_cents {
                None => None,
                Some(cents) => Some(positive_price(cents).ok_or(TemplateRuleError::InvalidDiscount)?),
            };
            Ok(CouponKind::PercentOff { percent_off, max_discount_cents })
        }
        _ => Err(TemplateRuleError::UnknownKind),
    }
}

/// No negative time; the claim window is not empty; a coupon claimed inside the window is valid
/// for at least a moment: `valid_until` after the claim start and not before the claim end.
fn check_window(
    claim_starts_at_ms: Option<i64>,
    claim_ends_at_ms: Option<i64>,
    valid_until_ms: i64,
) -> Result<(), TemplateRuleError> {
    let negative = claim_starts_at_ms.is_some_and(|t| t < 0) || claim_ends_at_ms.is_some_and(|t| t < 0);
    if negative || valid_until_ms < 0 {
        return Err(TemplateRuleError::InvalidWindow);
    }
    if let (Some(starts), Some(ends)) = (claim_starts_at_ms, claim_ends_at_ms) {
        if ends <= starts {
            return Err(TemplateRuleError::InvalidWindow);
        }
    }
    if claim_starts_at_ms.is_some_and(|starts| valid_until_ms <= starts)
        || claim_ends_at_ms.is_some_and(|ends| valid_until_ms < ends)
    {
        return Err(TemplateRuleError::InvalidWindow);
    }
    Ok(())
}

/// Why a user cannot claim a coupon of a template now. The template actor decides the first
/// three (`TemplateDraft::check_claim`), the user actor the last (`check_user_claim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("claiming this coupon has not started")]
    NotStarted,
    #[error("claiming this coupon has ended")]
    Ended,
    #[error("all coupons of this kind have been claimed")]
    SoldOut,
    #[error("you already hold as many coupons of this kind as one user may")]
    LimitReached,
}

impl TemplateDraft {
    /// Window and stock side of a claim, for the template actor that serializes claims and
    /// knows `issued` (coupons issued or in flight). Precedence: NotStarted (before
    /// `claim_starts_at_ms`), Ended (at or after `claim_ends_at_ms`, or at or after
    /// `valid_until_ms`: a coupon claimed then would be dead on arrival), SoldOut
    /// (`issued >= total`).
    ///
    /// Precondition: `0 <= issued <= total` (the store's CHECK holds the same fact).
    pub fn check_claim(&self, issued: i64, now_ms: i64) -> Result<(), ClaimError> {
        assert!((0..=self.total).contains(&issued), "issued {issued} outside 0..={}", self.total);
        if self.claim_starts_at_ms.is_some_and(|starts| now_ms < starts) {
            return Err(ClaimError::NotStarted);
        }
        if self.claim_ends_at_ms.is_some_and(|ends| now_ms >= ends) || now_ms >= self.rules.valid_until_ms {
            return Err(ClaimError::Ended);
        }
        if issued >= self.total {
            return Err(ClaimError::SoldOut);
        }
        Ok(())
    }

    /// User side of a claim, for the user actor: LimitReached when `held >= per_user_limit`,
    /// where `held` counts the user's coupons of this template in any status plus claims in
    /// flight (a used or expired coupon still counts: the limit is on claims, not on use).
    ///
    /// Precondition: `held >= 0`.
    pub fn check_user_claim(&self, held: i64) -> Result<(), ClaimError> {
        assert!(held >= 0, "held coupons are never negative, got {held}");
        assert!((1..=COUPON_PER_USER_LIMIT_MAX).contains(&self.per_user_limit));
        if held >= self.per_user_limit {
            return Err(ClaimError::LimitReached);
        }
        Ok(())
    }
}

/// Why a coupon cannot be applied to an order of a given total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DiscountError {
    #[error("this coupon needs a spend of at least {min_spend_cents} cents", min_spend_cents = min_spend_cents.get())]
    MinSpendNotMet { min_spend_cents: Cents },
}

impl CouponRules {
    /// The discount on an order of `total` cents: amount_off gives `min(discount, total)`;
    /// percent_off gives `floor(total * percent / 100)`, capped at `max_discount_cents`. Never
    /// above `total`, never negative. MinSpendNotMet when `total < min_spend_cents`.
    ///
    /// Precondition: `total >= 0`.
    pub fn discount(&self, total: Cents) -> Result<Cents, DiscountError> {
        assert!(total.get() >= 0, "an order total is never negative, got {total}");
        if total < self.min_spend_cents {
            return Err(DiscountError::MinSpendNotMet { min_spend_cents: self.min_spend_cents });
        }
        let discount = match self.kind {
            CouponKind::AmountOff { discount_cents } => discount_cents.min(total),
            CouponKind::PercentOff { percent_off, max_discount_cents } => {
                assert!((1..=100).contains(&percent_off), "a parsed percent is 1..=100, got {percent_off}");
                // i128: total * 100 may not fit in i64 for the largest totals.
                let share = i128::from(total.get()) * i128::from(percent_off) / 100;
                // The share is at most `total` because percent_off <= 100, so it fits in i64.
                let share = Cents::new(i64::try_from(share).expect("a share of an i64 total fits in i64"));
                max_discount_cents.map_or(share, |cap| share.min(cap))
            }
        };
        assert!(discount.get() >= 0 && discount <= total, "discount {discount} outside 0..={total}");
        Ok(discount)
    }
}

/// A coupon's stored status. The names are stored in `coupon_record.status` and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CouponStatus {
    Unused,
    Locked,
    Used,
}

impl CouponStatus {
    pub const ALL: [CouponStatus; 3] = [Self::Unused, Self::Locked, Self::Used];

    /// The stored name: "unused" | "locked" | "used".
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unused => "unused",
            Self::Locked => "locked",
            Self::Used => "used",
        }
    }

    /// Reads a stored name back; `None` for any other string.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }
}

impl fmt::Display for CouponStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client sees: the stored status, or Expired for an unused coupon past `valid_until`.
/// Expired is derived at read time and never stored, so no job has to sweep expired coupons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CouponView {
    Unused,
    Locked,
    Used,
    Expired,
}

impl CouponView {
    pub const ALL: [CouponView; 4] = [Self::Unused, Self::Locked, Self::Used, Self::Expired];

    /// The view of a coupon at `now_ms`. `valid_until_ms` is inclusive: an unused coupon is
    /// still Unused at exactly `valid_until_ms` and Expired after. A locked or used coupon shows
    /// its stored status whatever the time: it already belongs to an order.
    pub fn of(status: CouponStatus, valid_until_ms: i64, now_ms: i64) -> CouponView {
        match status {
            CouponStatus::Unused if now_ms > valid_until_ms => CouponView::Expired,
            CouponStatus::Unused => CouponView::Unused,
            CouponStatus::Locked => CouponView::Locked,
            CouponStatus::Used => CouponView::Used,
        }
    }

    /// The API name: "unused" | "locked" | "used" | "expired", as serde writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unused => "unused",
            Self::Locked => "locked",
            Self::Used => "used",
            Self::Expired => "expired",
        }
    }

    /// Reads an API name (a `?status=` filter); `None` for any other string.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|view| view.as_str() == name)
    }
}

/// A coupon as a user's wallet holds it. Invariant: `order_id` is set exactly when the status
/// is not Unused (see `Coupon::assert_invariants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coupon {
    pub id: CouponId,
    pub template_id: TemplateId,
    pub user_id: UserId,
    pub status: CouponStatus,
    pub order_id: Option<OrderId>,
    /// The last millisecond the coupon can be locked to an order (inclusive).
    pub valid_until_ms: i64,
}

/// A step in a coupon's life, each keyed on the order it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponStep {
    /// An order is placed with the coupon: Unused, the caller's, not expired -> Locked.
    Lock(OrderId),
    /// The order is paid: Locked by that order -> Used.
    Consume(OrderId),
    /// The order is closed unpaid: Locked by that order -> Unused.
    Release(OrderId),
    /// The order is refunded: Used by that order -> Unused while the coupon is still valid;
    /// once expired it stays Used (nothing to write).
    Return(OrderId),
}

/// Why a coupon step is refused. One variant on purpose: a client is not told whether a coupon
/// id belongs to someone else, so ids cannot be probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    #[error("the coupon is not available")]
    Unavailable,
}

impl Coupon {
    /// The coupon after `step` at `now_ms`; `Ok(None)` when the step changes nothing (a Return
    /// of an expired coupon); Unavailable when the step's precondition fails. `user_id` is the
    /// caller's, checked for Lock only: the later steps are keyed on the order, and the order
    /// could only lock the coupon if it was its user's.
    pub fn apply(&self, step: CouponStep, user_id: UserId, now_ms: i64) -> Result<Option<Coupon>, CouponError> {
        self.assert_invariants();
        let expired = now_ms > self.valid_until_ms;
        let held_by =
            |order_id: OrderId, status: CouponStatus| self.status == status && self.order_id == Some(order_id);
        let (status, order_id) = match step {
            CouponStep::Lock(order_id) => {
                if self.user_id != user_id || self.status != CouponStatus::Unused || expired {
                    return Err(CouponError::Unavailable);
                }
                (CouponStatus::Locked, Some(order_id))
            }
            CouponStep::Consume(order_id) => {
                if !held_by(order_id, CouponStatus::Locked) {
                    return Err(CouponError::Unavailable);
                }
                (CouponStatus::Used, Some(order_id))
            }
            CouponStep::Release(order_id) => {
                if !held_by(order_id, CouponStatus::Locked) {
                    return Err(CouponError::Unavailable);
                }
                (CouponStatus::Unused, None)
            }
            CouponStep::Return(order_id) => {
                if !held_by(order_id, CouponStatus::Used) {
                    return Err(CouponError::Unavailable);
                }
                if expired {
                    // Giving back a coupon nobody can use any more would only show as Expired.
                    return Ok(None);
                }
                (CouponStatus::Unused, None)
            }
        };
        // From here on the step succeeds.
        let next = Coupon { status, order_id, ..*self };
        next.assert_invariants();
        assert_ne!(next.status, self.status, "a step that writes changes the status");
        Ok(Some(next))
    }

    /// An unused coupon belongs to no order; a locked or used one to exactly one.
    pub fn assert_invariants(&self) {
        assert_eq!(
            self.order_id.is_some(),
            self.status != CouponStatus::Unused,
            "coupon {} is {} with order {:?}",
            self.id,
            self.status,
            self.order_id
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::apportion;
    use proptest::prelude::*;

    fn input() -> TemplateInput<'static> {
        TemplateInput {
            name: " Spring 10% ",
            kind: "percent_off",
            discount_cents: None,
            percent_off: Some(10),
            max_discount_cents: Some(500),
            min_spend_cents: 1_000,
            total: 100,
            per_user_limit: 2,
            claim_starts_at_ms: Some(1_000),
            claim_ends_at_ms: Some(2_000),
            valid_until_ms: 3_000,
        }
    }

    fn amount_off(discount: i64) -> TemplateInput<'static> {
        TemplateInput {
            kind: "amount_off",
            discount_cents: Some(discount),
            percent_off: None,
            max_discount_cents: None,
            ..input()
        }
    }

    #[test]
    fn template_parses() {
        let draft = TemplateDraft::parse(&input()).unwrap();
        assert_eq!(draft.name, "Spring 10%");
        assert_eq!(
            draft.rules,
            CouponRules {
                kind: CouponKind::PercentOff { percent_off: 10, max_discount_cents: Some(Cents::new(500)) },
                min_spend_cents: Cents::new(1_000),
                valid_until_ms: 3_000,
            }
        );
        assert_eq!((draft.total, draft.per_user_limit), (100, 2));
        assert_eq!((draft.claim_starts_at_ms, draft.claim_ends_at_ms), (Some(1_000), Some(2_000)));
        assert_eq!(draft.rules.kind.name(), "percent_off");
        let draft = TemplateDraft::parse(&amount_off(300)).unwrap();
        assert_eq!(draft.rules.kind, CouponKind::AmountOff { discount_cents: Cents::new(300) });
        assert_eq!(draft.rules.kind.name(), "amount_off");
    }

    #[test]
    fn template_rules_in_precedence_order() {
        use TemplateRuleError::*;
        let all_bad = TemplateInput {
            name: " ",
            kind: "free",
            percent_off: Some(0),
            min_spend_cents: -1,
            total: 0,
            per_user_limit: 0,
            valid_until_ms: -1,
            ..input()
        };
        let long_name = "x".repeat(TEMPLATE_NAME_LEN_MAX + 1);
        let max_name = "é".repeat(TEMPLATE_NAME_LEN_MAX);
        let table: Vec<(TemplateInput, Result<(), TemplateRuleError>)> = vec![
            (all_bad, Err(InvalidName)),
            (TemplateInput { name: &long_name, ..input() }, Err(InvalidName)),
            (TemplateInput { name: &max_name, ..input() }, Ok(())),
            (TemplateInput { name: "a", ..all_bad }, Err(UnknownKind)),
            (TemplateInput { kind: "PERCENT_OFF", ..input() }, Err(UnknownKind)),
            (TemplateInput { name: "a", kind: "percent_off", ..all_bad }, Err(InvalidDiscount)),
            (TemplateInput { name: "a", kind: "percent_off", percent_off: Some(5), ..all_bad }, Err(InvalidMinSpend)),
            (TemplateInput { min_spend_cents: PRICE_CENTS_MAX + 1, ..input() }, Err(InvalidMinSpend)),
            (
                TemplateInput { min_spend_cents: 0, total: 0, per_user_limit: 0, valid_until_ms: -1, ..input() },
                Err(InvalidTotal),
            ),
            (TemplateInput { total: COUPON_TOTAL_MAX + 1, ..input() }, Err(InvalidTotal)),
            (
                TemplateInput { total: COUPON_TOTAL_MAX, per_user_limit: 0, valid_until_ms: -1, ..input() },
                Err(InvalidLimit),
            ),
            (TemplateInput { per_user_limit: COUPON_PER_USER_LIMIT_MAX + 1, ..input() }, Err(InvalidLimit)),
            (
                TemplateInput { per_user_limit: COUPON_PER_USER_LIMIT_MAX, valid_until_ms: -1, ..input() },
                Err(InvalidWindow),
            ),
        ];
        for (input, expected) in table {
            assert_eq!(TemplateDraft::parse(&input).map(|_| ()), expected, "{input:?}");
        }
    }

    #[test]
    fn discount_fields_match_the_kind() {
        use TemplateRuleError::InvalidDiscount;
        let percent = |percent_off, max_discount_cents| TemplateInput { percent_off, max_discount_cents, ..input() };
        let table: Vec<(TemplateInput, Result<(), TemplateRuleError>)> = vec![
            (amount_off(1), Ok(())),
            (amount_off(PRICE_CENTS_MAX), Ok(())),
            (amount_off(0), Err(InvalidDiscount)),
            (amount_off(-5), Err(InvalidDiscount)),
            (amount_off(PRICE_CENTS_MAX + 1), Err(InvalidDiscount)),
            (TemplateInput { discount_cents: None, ..amount_off(1) }, Err(InvalidDiscount)),
            (TemplateInput { percent_off: Some(10), ..amount_off(1) }, Err(InvalidDiscount)),
            (TemplateInput { max_discount_cents: Some(10), ..amount_off(1) }, Err(InvalidDiscount)),
            (percent(Some(1), None), Ok(())),
            (percent(Some(100), Some(1)), Ok(())),
            (percent(Some(0), None), Err(InvalidDiscount)),
            (percent(Some(101), None), Err(InvalidDiscount)),
            (percent(None, None), Err(InvalidDiscount)),
            (percent(Some(10), Some(0)), Err(InvalidDiscount)),
            (percent(Some(10), Some(-1)), Err(InvalidDiscount)),
            (percent(Some(10), Some(PRICE_CENTS_MAX + 1)), Err(InvalidDiscount)),
            (TemplateInput { discount_cents: Some(5), ..input() }, Err(InvalidDiscount)),
        ];
        for (input, expected) in table {
            assert_eq!(TemplateDraft::parse(&input).map(|_| ()), expected, "{input:?}");
        }
    }

    #[test]
    fn window_rules() {
        use TemplateRuleError::InvalidWindow;
        let window = |starts, ends, valid_until_ms| TemplateInput {
            claim_starts_at_ms: starts,
            claim_ends_at_ms: ends,
            valid_until_ms,
            ..input()
        };
        // (starts, ends, valid_until, valid)
        let table = [
            (None, None, 0, true),
            (Some(0), None, 1, true),
            (Some(10), None, 10, false),
            (Some(10), Some(11), 11, true),
            (Some(10), Some(10), 20, false),
            (Some(10), Some(9), 20, false),
            (None, Some(20), 19, false),
            (None, Some(20), 20, true),
            (Some(-1), None, 5, false),
            (None, Some(-1), 5, false),
            (None, None, -1, false),
        ];
        for (starts, ends, valid_until, valid) in table {
            let got = TemplateDraft::parse(&window(starts, ends, valid_until)).map(|_| ());
            assert_eq!(got, if valid { Ok(()) } else { Err(InvalidWindow) }, "{starts:?} {ends:?} {valid_until}");
        }
    }

    #[test]
    fn error_messages_speak_to_the_client() {
        assert_eq!(TemplateRuleError::InvalidLimit.to_string(), "per_user_limit must be between 1 and 1000");
        assert!(TemplateRuleError::InvalidDiscount.to_string().contains("percent_off between 1 and 100"));
        let min_spend = DiscountError::MinSpendNotMet { min_spend_cents: Cents::new(1_000) };
        assert_eq!(min_spend.to_string(), "this coupon needs a spend of at least 1000 cents");
    }

    #[test]
    fn claim_precedence() {
        use ClaimError::*;
        let draft = TemplateDraft::parse(&input()).unwrap(); // claim [1000, 2000), valid until 3000, total 100
        let open_ended = TemplateDraft { claim_starts_at_ms: None, claim_ends_at_ms: None, ..draft.clone() };
        // (template, issued, now, expected)
        let table = [
            (&draft, 100, 999, Err(NotStarted)),
            (&draft, 100, 1_000, Err(SoldOut)),
            (&draft, 99, 1_000, Ok(())),
            (&draft, 99, 1_999, Ok(())),
            (&draft, 100, 2_000, Err(Ended)),
            (&draft, 0, 2_000, Err(Ended)),
            (&open_ended, 0, i64::MIN, Ok(())),
            (&open_ended, 0, 2_999, Ok(())),
            (&open_ended, 0, 3_000, Err(Ended)),
            (&open_ended, 100, 3_000, Err(Ended)),
            (&open_ended, 100, 2_999, Err(SoldOut)),
        ];
        for (template, issued, now, expected) in table {
            assert_eq!(template.check_claim(issued, now), expected, "issued {issued} at {now}");
        }
    }

    #[test]
    fn user_claim_limit() {
        let draft = TemplateDraft::parse(&input()).unwrap(); // per_user_limit 2
        assert_eq!(draft.check_user_claim(0), Ok(()));
        assert_eq!(draft.check_user_claim(1), Ok(()));
        assert_eq!(draft.check_user_claim(2), Err(ClaimError::LimitReached));
        assert_eq!(draft.check_user_claim(7), Err(ClaimError::LimitReached));
    }

    fn rules(kind: CouponKind, min_spend: i64) -> CouponRules {
        CouponRules { kind, min_spend_cents: Cents::new(min_spend), valid_until_ms: 0 }
    }

    fn percent(percent_off: i64, cap: Option<i64>) -> CouponKind {
        CouponKind::PercentOff { percent_off, max_discount_cents: cap.map(Cents::new) }
    }

    #[test]
    fn discount_table() {
        let off_300 = CouponKind::AmountOff { discount_cents: Cents::new(300) };
        let min_spend_not_met = Err(DiscountError::MinSpendNotMet { min_spend_cents: Cents::new(1_000) });
        // (kind, min spend, total, expected)
        let table = [
            (off_300, 0, 0, Ok(0)),
            (off_300, 0, 200, Ok(200)),
            (off_300, 0, 1_000, Ok(300)),
            (off_300, 1_000, 999, min_spend_not_met),
            (off_300, 1_000, 1_000, Ok(300)),
            (percent(10, None), 0, 999, Ok(99)),
            (percent(10, None), 0, 1_000, Ok(100)),
            (percent(10, Some(50)), 0, 1_000, Ok(50)),
            (percent(100, None), 0, 1_234, Ok(1_234)),
            (percent(1, None), 0, 99, Ok(0)),
            (percent(10, None), 1_000, 999, min_spend_not_met),
            (percent(100, None), 0, i64::MAX, Ok(i64::MAX)),
            (percent(99, None), 0, i64::MAX, Ok(((i128::from(i64::MAX) * 99) / 100) as i64)),
        ];
        for (kind, min_spend, total, expected) in table {
            let got = rules(kind, min_spend).discount(Cents::new(total));
            assert_eq!(got, expected.map(Cents::new), "{kind:?} min {min_spend} total {total}");
        }
    }

    #[test]
    fn status_and_view_names_round_trip() {
        for status in CouponStatus::ALL {
            assert_eq!(CouponStatus::parse(status.as_str()), Some(status));
        }
        for view in CouponView::ALL {
            assert_eq!(CouponView::parse(view.as_str()), Some(view));
            assert_eq!(serde_json::to_value(view).unwrap(), view.as_str());
        }
        assert_eq!(CouponStatus::parse("expired"), None, "expired is never stored");
        assert_eq!(CouponView::parse("Unused"), None);
    }

    #[test]
    fn view_is_expired_only_for_unused_after_valid_until() {
        use CouponStatus as S;
        use CouponView as V;
        let table = [
            (S::Unused, 100, V::Unused),
            (S::Unused, 101, V::Expired),
            (S::Locked, 101, V::Locked),
            (S::Used, 101, V::Used),
            (S::Used, 100, V::Used),
        ];
        for (status, now, expected) in table {
            assert_eq!(CouponView::of(status, 100, now), expected, "{status} at {now}");
        }
    }

    const OWNER: UserId = UserId::new(7);
    const STRANGER: UserId = UserId::new(8);
    const ORDER: OrderId = OrderId::new(50);
    const OTHER_ORDER: OrderId = OrderId::new(51);
    const VALID_UNTIL_MS: i64 = 1_000;

    fn coupon(status: CouponStatus) -> Coupon {
        Coupon {
            id: CouponId::new(1),
            template_id: TemplateId::new(2),
            user_id: OWNER,
            status,
            order_id: (status != CouponStatus::Unused).then_some(ORDER),
            valid_until_ms: VALID_UNTIL_MS,
        }
    }

    #[test]
    fn every_status_and_step() {
        use CouponStatus::*;
        use CouponStep::*;
        #[derive(Debug, PartialEq)]
        enum Outcome {
            Becomes(CouponStatus, Option<OrderId>),
            Unchanged,
            Unavailable,
        }
        use Outcome::*;
        let late = VALID_UNTIL_MS + 1;
        // (status, step, caller, now, outcome): every status x step, with the wrong order, the
        // wrong user and the expiry edge.
        let table = [
            (Unused, Lock(ORDER), OWNER, VALID_UNTIL_MS, Becomes(Locked, Some(ORDER))),
            (Unused, Lock(OTHER_ORDER), OWNER, 0, Becomes(Locked, Some(OTHER_ORDER))),
            (Unused, Lock(ORDER), STRANGER, 0, Unavailable),
            (Unused, Lock(ORDER), OWNER, late, Unavailable),
            (Unused, Consume(ORDER), OWNER, 0, Unavailable),
            (Unused, Release(ORDER), OWNER, 0, Unavailable),
            (Unused, Return(ORDER), OWNER, 0, Unavailable),
            (Locked, Lock(ORDER), OWNER, 0, Unavailable),
            (Locked, Lock(OTHER_ORDER), OWNER, 0, Unavailable),
            (Locked, Consume(ORDER), OWNER, late, Becomes(Used, Some(ORDER))),
            (Locked, Consume(ORDER), STRANGER, 0, Becomes(Used, Some(ORDER))),
            (Locked, Consume(OTHER_ORDER), OWNER, 0, Unavailable),
            (Locked, Release(ORDER), OWNER, late, Becomes(Unused, None)),
            (Locked, Release(OTHER_ORDER), OWNER, 0, Unavailable),
            (Locked, Return(ORDER), OWNER, 0, Unavailable),
            (Used, Lock(ORDER), OWNER, 0, Unavailable),
            (Used, Consume(ORDER), OWNER, 0, Unavailable),
            (Used, Release(ORDER), OWNER, 0, Unavailable),
            (Used, Return(ORDER), OWNER, VALID_UNTIL_MS, Becomes(Unused, None)),
            (Used, Return(ORDER), OWNER, late, Unchanged),
            (Used, Return(OTHER_ORDER), OWNER, 0, Unavailable),
            (Used, Return(OTHER_ORDER), OWNER, late, Unavailable),
        ];
        for (status, step, caller, now, expected) in table {
            let before = coupon(status);
            let got = match before.apply(step, caller, now) {
                Ok(Some(after)) => {
                    assert_eq!((after.id, after.template_id, after.user_id), (before.id, before.template_id, OWNER));
                    assert_eq!(after.valid_until_ms, before.valid_until_ms);
                    Becomes(after.status, after.order_id)
                }
                Ok(None) => Unchanged,
                Err(CouponError::Unavailable) => Unavailable,
            };
            assert_eq!(got, expected, "{status} {step:?} by {caller} at {now}");
        }
    }

    fn kind_strategy() -> impl Strategy<Value = CouponKind> {
        prop_oneof![
            (1i64..=PRICE_CENTS_MAX).prop_map(|d| CouponKind::AmountOff { discount_cents: Cents::new(d) }),
            (1i64..=100, prop::option::of(1i64..=PRICE_CENTS_MAX)).prop_map(|(p, cap)| percent(p, cap)),
        ]
    }

    proptest! {
        #[test]
        fn discount_stays_within_the_total(kind in kind_strategy(), min_spend in 0i64..=1_000_000, total in 0i64..=i64::MAX) {
            let rules = rules(kind, min_spend);
            match rules.discount(Cents::new(total)) {
                Ok(discount) => {
                    prop_assert!(total >= min_spend);
                    prop_assert!(discount.get() >= 0 && discount.get() <= total);
                    match kind {
                        CouponKind::AmountOff { discount_cents } => prop_assert_eq!(discount, discount_cents.min(Cents::new(total))),
                        CouponKind::PercentOff { percent_off, max_discount_cents } => {
                            let naive = (i128::from(total) * i128::from(percent_off) / 100) as i64;
                            prop_assert!(max_discount_cents.is_none_or(|cap| discount <= cap));
                            prop_assert_eq!(discount.get(), max_discount_cents.map_or(naive, |cap| naive.min(cap.get())));
                        }
                    }
                }
                Err(DiscountError::MinSpendNotMet { min_spend_cents }) => {
                    prop_assert!(total < min_spend);
                    prop_assert_eq!(min_spend_cents.get(), min_spend);
                }
            }
        }

        #[test]
        fn discount_apportions_over_lines(kind in kind_strategy(), lines in prop::collection::vec(0i64..=10_000_000, 1..50)) {
            let amounts: Vec<Cents> = lines.iter().copied().map(Cents::new).collect();
            let total = Cents::new(lines.iter().sum());
            let discount = rules(kind, 0).discount(total).unwrap();
            let parts = apportion(discount, &amounts).unwrap();
            prop_assert_eq!(parts.len(), amounts.len());
            prop_assert_eq!(parts.iter().map(|p| p.get()).sum::<i64>(), discount.get());
            for (part, line) in parts.iter().zip(&amounts) {
                prop_assert!(part.get() >= 0 && part <= line);
                let pay_cents = line.checked_sub(*part).unwrap();
                prop_assert!(pay_cents.get() >= 0 && pay_cents <= *line);
            }
        }

        #[test]
        fn claims_never_exceed_total_or_limit(total in 1i64..50, per_user_limit in 1i64..5, users in 1usize..20) {
            // Naive model: users claim in turn while the template allows; count what was issued.
            let draft = TemplateDraft { total, per_user_limit, ..TemplateDraft::parse(&input()).unwrap() };
            let mut issued = 0;
            let mut held = vec![0i64; users];
            for _round in 0..10 {
                for user_held in held.iter_mut() {
                    if draft.check_claim(issued, 1_500).is_ok() && draft.check_user_claim(*user_held).is_ok() {
                        issued += 1;
                        *user_held += 1;
                    }
                }
            }
            prop_assert!(issued <= total);
            prop_assert!(held.iter().all(|&h| h <= per_user_limit));
            prop_assert_eq!(issued, total.min(per_user_limit * users as i64));
        }
    }
}
