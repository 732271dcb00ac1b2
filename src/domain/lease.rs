//! Leases: the reservation rows that hold an order's units, and what each must be for its
//! order's status.
//!
//! A lease follows its order: open (`reserved`) while the order awaits payment, `confirmed`
//! once paid, `released` when the order closes, `returned` when a paid order is refunded
//! before delivery. The write pipeline commits an order step and its lease step in one
//! transaction, so they cannot drift apart any more; data written before that (or by a bug)
//! can, and `lease_repair` says how recovery brings such a lease back in line. The rule is
//! written once here and used by every store.

use super::inventory::Counters;
use super::order::OrderStatus;

/// The status of an `inventory_reservation` row. The names are stored and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReservationStatus {
    Reserved,
    Confirmed,
    Released,
    /// Released by the old lease timer; no longer written, still read.
    Expired,
    /// Sold units given back by a refund before the goods went out.
    Returned,
}

impl ReservationStatus {
    pub const ALL: [ReservationStatus; 5] =
        [Self::Reserved, Self::Confirmed, Self::Released, Self::Expired, Self::Returned];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Confirmed => "confirmed",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Returned => "returned",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }
}

/// The lease statuses that certainly agree with an order in `status`. A refunded order's lease
/// is `returned` when it was refunded from Paid and stays `confirmed` when refunded after
/// delivery; only `returned` is listed, so stores hand the `confirmed` ones to `lease_repair`,
/// which tells the two apart (a few rows per start, refunds after delivery being rare).
pub const fn settled_lease_statuses(status: OrderStatus) -> &'static [ReservationStatus] {
    use ReservationStatus::*;
    match status {
        OrderStatus::PendingPayment => &[Reserved],
        OrderStatus::Paid | OrderStatus::Finished => &[Confirmed],
        OrderStatus::Closed => &[Released, Expired],
        OrderStatus::Refunded => &[Returned],
    }
}

/// Whether a lease in `lease` status agrees with its order (`None`: no order was written).
pub fn lease_agrees(lease: ReservationStatus, order: Option<OrderStatus>, refunded_from_paid: bool) -> bool {
    match order {
        None => lease != ReservationStatus::Reserved,
        Some(OrderStatus::Refunded) if !refunded_from_paid => lease == ReservationStatus::Confirmed,
        Some(status) => settled_lease_statuses(status).contains(&lease),
    }
}

/// Whether a lease that disagrees with its order may be repaired at `now_ms` on a node of a
/// cluster. A placement there reserves units of other nodes' SKUs first (committed on their
/// owners) and writes its order after: until the lease expires, an open lease with no order may
/// be one whose order is on its way, and is left alone. (On a single node every placement is
/// in process, so recovery at start repairs such a lease at once.)
pub fn lease_due(lease: ReservationStatus, order: Option<OrderStatus>, expires_at_ms: i64, now_ms: i64) -> bool {
    !(lease == ReservationStatus::Reserved && order.is_none() && expires_at_ms > now_ms)
}

/// What must happen to a lease that disagrees with its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRepair {
    /// The order will never be paid (closed, or never written): held units go back.
    Release,
    /// The order was paid: held units are sold.
    Confirm,
    /// The order was paid and then refunded before delivery: held units go back, as returned.
    ConfirmThenReturn,
    /// Sold units of an order refunded before delivery: back on the shelf.
    Return,
    /// The order was paid but its lease was let go: the units are taken back from the shelf
    /// and sold (possible only while they are still available).
    Retake,
    /// The order still awaits payment but its lease was let go: the units are held again
    /// (possible only while they are still available).
    Rehold,
}

impl LeaseRepair {
    /// The lease status after the repair.
    pub const fn target(self) -> ReservationStatus {
        match self {
            Self::Release => ReservationStatus::Released,
            Self::Confirm | Self::Retake => ReservationStatus::Confirmed,
            Self::ConfirmThenReturn | Self::Return => ReservationStatus::Returned,
            Self::Rehold => ReservationStatus::Reserved,
        }
    }

    /// How the SKU's counters move for a lease of `quantity` units.
    pub const fn delta(self, quantity: i64) -> CounterDelta {
        let q = quantity;
        match self {
            Self::Release | Self::ConfirmThenReturn => CounterDelta { total: 0, available: q, reserved: -q, sold: 0 },
            Self::Confirm => CounterDelta { total: 0, available: 0, reserved: -q, sold: q },
            Self::Return => CounterDelta { total: 0, available: q, reserved: 0, sold: -q },
            Self::Retake => CounterDelta { total: 0, available: -q, reserved: 0, sold: q },
            Self::Rehold => CounterDelta { total: 0, available: -q, reserved: q, sold: 0 },
        }
    }
}

/// The repair a lease in `lease` status needs, from its order's status (`None`: no order was
/// written for it) and whether that order was refunded from Paid. `None` when they agree, or
/// when nothing can be done from the lease alone (sold units under an order that never sold).
pub fn lease_repair(
    lease: ReservationStatus,
    order: Option<OrderStatus>,
    refunded_from_paid: bool,
) -> Option<LeaseRepair> {
    use OrderStatus::*;
    use ReservationStatus::*;
    match (lease, order) {
        (Reserved, None | Some(Closed)) => Some(LeaseRepair::Release),
        (Reserved, Some(Paid | Finished)) => Some(LeaseRepair::Confirm),
        (Reserved, Some(Refunded)) if refunded_from_paid => Some(LeaseRepair::ConfirmThenReturn),
        (Reserved, Some(Refunded)) => Some(LeaseRepair::Confirm),
        (Released | Expired, Some(Paid | Finished)) => Some(LeaseRepair::Retake),
        (Released | Expired, Some(Refunded)) if !refunded_from_paid => Some(LeaseRepair::Retake),
        (Released | Expired, Some(PendingPayment)) => Some(LeaseRepair::Rehold),
        (Confirmed, Some(Refunded)) if refunded_from_paid => Some(LeaseRepair::Return),
        _ => None,
    }
}

/// A change of a SKU's four counters. Applied with `Counters::apply`, which refuses any
/// result that does not balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterDelta {
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

impl CounterDelta {
    /// The change from `before` to `after`.
    pub fn between(before: Counters, after: Counters) -> Self {
        CounterDelta {
            total: after.total - before.total,
            available: after.available - before.available,
            reserved: after.reserved - before.reserved,
            sold: after.sold - before.sold,
        }
    }

    pub fn plus(self, other: CounterDelta) -> CounterDelta {
        CounterDelta {
            total: self.total + other.total,
            available: self.available + other.available,
            reserved: self.reserved + other.reserved,
            sold: self.sold + other.sold,
        }
    }

    pub fn is_zero(self) -> bool {
        self == CounterDelta::default()
    }
}

impl Counters {
    /// The counters after `delta`, or `None` if they would not balance (a counter below zero
    /// or the sum off): the change must not be written.
    pub fn apply(self, delta: CounterDelta) -> Option<Counters> {
        let after = Counters {
            total: self.total.checked_add(delta.total)?,
            available: self.available.checked_add(delta.available)?,
            reserved: self.reserved.checked_add(delta.reserved)?,
            sold: self.sold.checked_add(delta.sold)?,
        };
        after.is_balanced().then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;
    use ReservationStatus::*;

    #[test]
    fn repairs_follow_the_order() {
        // (lease, order, refunded from paid) -> repair; one line per case.
        let cases: &[(ReservationStatus, Option<OrderStatus>, bool, Option<LeaseRepair>)] = &[
            (Reserved, None, false, Some(LeaseRepair::Release)),
            (Reserved, Some(PendingPayment), false, None),
            (Reserved, Some(Closed), false, Some(LeaseRepair::Release)),
            (Reserved, Some(Paid), false, Some(LeaseRepair::Confirm)),
            (Reserved, Some(Finished), false, Some(LeaseRepair::Confirm)),
            (Reserved, Some(Refunded), true, Some(LeaseRepair::ConfirmThenReturn)),
            (Reserved, Some(Refunded), false, Some(LeaseRepair::Confirm)),
            (Expired, Some(Paid), false, Some(LeaseRepair::Retake)),
            (Released, Some(Finished), false, Some(LeaseRepair::Retake)),
            (Expired, Some(Refunded), false, Some(LeaseRepair::Retake)),
            (Expired, Some(Refunded), true, None),
            (Expired, Some(PendingPayment), false, Some(LeaseRepair::Rehold)),
            (Expired, Some(Closed), false, None),
            (Expired, None, false, None),
            (Confirmed, Some(Paid), false, None),
            (Confirmed, Some(Refunded), true, Some(LeaseRepair::Return)),
            (Confirmed, Some(Refunded), false, None),
            (Returned, Some(Refunded), true, None),
        ];
        for &(lease, order, from_paid, expected) in cases {
            assert_eq!(lease_repair(lease, order, from_paid), expected, "{lease:?} {order:?} {from_paid}");
        }
    }

    #[test]
    fn an_open_lease_without_an_order_waits_for_its_expiry() {
        let cases: &[(ReservationStatus, Option<OrderStatus>, i64, bool)] = &[
            (Reserved, None, 1_001, false),
            (Reserved, None, 1_000, true),
            (Reserved, Some(Closed), 5_000, true),
            (Reserved, Some(Paid), 5_000, true),
            (Confirmed, Some(Refunded), 5_000, true),
        ];
        for &(lease, order, expires_at_ms, due) in cases {
            assert_eq!(lease_due(lease, order, expires_at_ms, 1_000), due, "{lease:?} {order:?} {expires_at_ms}");
        }
    }

    #[test]
    fn a_repair_lands_on_a_settled_status() {
        for lease in ReservationStatus::ALL {
            for order in OrderStatus::ALL {
                for from_paid in [false, true] {
                    if order != Refunded && from_paid {
                        continue;
                    }
                    let Some(repair) = lease_repair(lease, Some(order), from_paid) else { continue };
                    let target = repair.target();
                    assert!(
                        lease_agrees(target, Some(order), from_paid),
                        "{lease:?} under {order:?} repaired to {target:?}"
                    );
                    assert!(!lease_agrees(lease, Some(order), from_paid), "{lease:?} under {order:?} needed no repair");
                }
            }
        }
    }

    #[test]
    fn every_repair_keeps_the_counters_balanced_when_possible() {
        let counters = Counters { total: 10, available: 4, reserved: 3, sold: 3 };
        for repair in [
            LeaseRepair::Release,
            LeaseRepair::Confirm,
            LeaseRepair::ConfirmThenReturn,
            LeaseRepair::Return,
            LeaseRepair::Retake,
            LeaseRepair::Rehold,
        ] {
            let after = counters.apply(repair.delta(2)).expect("balanced");
            assert_eq!(after.total, 10, "{repair:?}");
        }
        assert_eq!(counters.apply(LeaseRepair::Retake.delta(5)), None, "units that were resold cannot be retaken");
    }
}
