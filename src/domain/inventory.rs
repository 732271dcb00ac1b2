//! The inventory ledger of one SKU: the only place where stock moves.
//!
//! Four counters and the open reservations. Every change keeps
//! `available + reserved + sold == total` with all four >= 0, and `reserved` equal to the sum
//! of the open reservations; `assert_balanced` checks both after every change, so a bug that
//! would oversell stops the process instead of selling.

use super::ids::OrderId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The most units one line of an order may ask for.
pub const ORDER_LINE_QUANTITY_MAX: u32 = 10_000;
/// The most units one restock or one new SKU may add.
pub const STOCK_QUANTITY_MAX: u32 = 1_000_000_000;

/// A positive number of units, bounded by where it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    /// Parses a quantity in `1..=max`.
    pub fn parse(raw: i64, max: u32) -> Result<Self, InventoryError> {
        match u32::try_from(raw) {
            Ok(value) if (1..=max).contains(&value) => Ok(Quantity(value)),
            _ => Err(InventoryError::InvalidQuantity { requested: raw, max }),
        }
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    pub const fn units(self) -> i64 {
        self.0 as i64
    }
}

/// The four counters of a SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

impl Counters {
    /// Whether the counters satisfy the conservation rule on their own.
    pub fn is_balanced(&self) -> bool {
        self.available >= 0
            && self.reserved >= 0
            && self.sold >= 0
            && self.available.checked_add(self.reserved).and_then(|s| s.checked_add(self.sold)) == Some(self.total)
    }
}

/// Units held for an order until it is paid or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub quantity: i64,
    /// Milliseconds since the Unix epoch recorded on the lease row (its order's deadline plus
    /// grace), for readers; the lease ends only with its order.
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("quantity must be between 1 and {max}, got {requested}")]
    InvalidQuantity { requested: i64, max: u32 },
    #[error("only {available} units available, {requested} requested")]
    InsufficientStock { available: i64, requested: i64 },
    #[error("order {0} already holds a reservation on this SKU")]
    DuplicateReservation(OrderId),
    #[error("order {0} holds no open reservation on this SKU")]
    UnknownReservation(OrderId),
    #[error("only {sold} units are sold, {requested} cannot be returned")]
    NotSold { sold: i64, requested: i64 },
    #[error("restock would push the total past {max}")]
    StockOverflow { max: i64 },
    #[error("stored state is unbalanced: {0}")]
    Corrupt(String),
}

/// The stock of one SKU and its open reservations.
#[derive(Debug, Clone)]
pub struct Ledger {
    counters: Counters,
    reservations: HashMap<OrderId, Reservation>,
}

/// Upper bound of `total`: far below `i64::MAX`, so no counter sum can overflow.
pub const TOTAL_MAX: i64 = 1 << 50;

impl Ledger {
    /// A new SKU: everything available.
    pub fn new(total: i64) -> Self {
        assert!((0..=TOTAL_MAX).contains(&total));
        let ledger = Ledger {
            counters: Counters { total, available: total, reserved: 0, sold: 0 },
            reservations: HashMap::new(),
        };
        ledger.assert_balanced();
        ledger
    }

    /// Rebuilds a ledger from stored counters and open reservations, refusing state that does
    /// not balance (the caller must not serve a SKU whose stored state is wrong).
    pub fn restore(
        counters: Counters,
        reservations: impl IntoIterator<Item = (OrderId, Reservation)>,
    ) -> Result<Self, InventoryError> {
        if !counters.is_balanced() || counters.total > TOTAL_MAX {
            return Err(InventoryError::Corrupt(format!("{counters:?}")));
        }
        let mut ledger = Ledger { counters, reservations: HashMap::new() };
        let mut reserved = 0i64;
        for (order_id, reservation) in reservations {
            if reservation.quantity <= 0 || ledger.reservations.insert(order_id, reservation).is_some() {
                return Err(InventoryError::Corrupt(format!("reservation of order {order_id}")));
            }
            reserved += reservation.quantity;
        }
        if reserved != counters.reserved {
            return Err(InventoryError::Corrupt(format!(
                "reservations hold {reserved} units, counters say {}",
                counters.reserved
            )));
        }
        ledger.assert_balanced();
        Ok(ledger)
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn reservation(&self, order_id: OrderId) -> Option<Reservation> {
        self.reservations.get(&order_id).copied()
    }

    pub fn open_reservations(&self) -> usize {
        self.reservations.len()
    }

    /// Takes `quantity` units out of `available` into a lease for `order_id` that runs out at
    /// `expires_at_ms`.
    pub fn reserve(&mut self, order_id: OrderId, quantity: Quantity, expires_at_ms: i64) -> Result<(), InventoryError> {
        let requested = quantity.units();
        if self.reservations.contains_key(&order_id) {
            return Err(InventoryError::DuplicateReservation(order_id));
        }
        if requested > self.counters.available {
            return Err(InventoryError::InsufficientStock { available: self.counters.available, requested });
        }
        // From here on the reservation must succeed.
        let before = self.counters;
        self.counters.available -= requested;
        self.counters.reserved += requested;
        self.reservations.insert(order_id, Reservation { quantity: requested, expires_at_ms });
        assert_eq!(self.counters.available + requested, before.available);
        self.assert_balanced();
        Ok(())
    }

    /// Turns the reservation of `order_id` into sold units (the order was paid).
    pub fn confirm(&mut self, order_id: OrderId) -> Result<i64, InventoryError> {
        let reservation = self.take(order_id)?;
        self.counters.reserved -= reservation.quantity;
        self.counters.sold += reservation.quantity;
        self.assert_balanced();
        Ok(reservation.quantity)
    }

    /// Returns the reservation of `order_id` to `available` (cancelled, failed or timed out).
    pub fn release(&mut self, order_id: OrderId) -> Result<i64, InventoryError> {
        let reservation = self.take(order_id)?;
        self.counters.reserved -= reservation.quantity;
        self.counters.available += reservation.quantity;
        self.assert_balanced();
        Ok(reservation.quantity)
    }

    /// Puts `units` sold units back on the shelf (an order refunded before its goods went out).
    pub fn return_sold(&mut self, units: i64) -> Result<(), InventoryError> {
        if units <= 0 || units > self.counters.sold {
            return Err(InventoryError::NotSold { sold: self.counters.sold, requested: units });
        }
        self.counters.sold -= units;
        self.counters.available += units;
        self.assert_balanced();
        Ok(())
    }

    /// Adds `quantity` new units, all available.
    pub fn restock(&mut self, quantity: Quantity) -> Result<(), InventoryError> {
        let added = quantity.units();
        if self.counters.total + added > TOTAL_MAX {
            return Err(InventoryError::StockOverflow { max: TOTAL_MAX });
        }
        self.counters.total += added;
        self.counters.available += added;
        self.assert_balanced();
        Ok(())
    }

    /// Undoes `confirm` of a change that was never committed: the sold units are held by the
    /// order's reservation again.
    pub fn unconfirm(&mut self, order_id: OrderId, reservation: Reservation) -> Result<(), InventoryError> {
        if self.reservations.contains_key(&order_id) {
            return Err(InventoryError::DuplicateReservation(order_id));
        }
        if reservation.quantity <= 0 || reservation.quantity > self.counters.sold {
            return Err(InventoryError::NotSold { sold: self.counters.sold, requested: reservation.quantity });
        }
        // From here on the undo must succeed.
        self.counters.sold -= reservation.quantity;
        self.counters.reserved += reservation.quantity;
        self.reservations.insert(order_id, reservation);
        self.assert_balanced();
        Ok(())
    }

    /// Undoes `return_sold` of a change that was never committed, if the units are still
    /// available.
    pub fn unreturn(&mut self, units: i64) -> Result<(), InventoryError> {
        if units <= 0 || units > self.counters.available {
            return Err(InventoryError::InsufficientStock { available: self.counters.available, requested: units });
        }
        self.counters.available -= units;
        self.counters.sold += units;
        self.assert_balanced();
        Ok(())
    }

    /// Undoes `restock` of a change that was never committed, if the units are still
    /// available.
    pub fn unrestock(&mut self, units: i64) -> Result<(), InventoryError> {
        if units <= 0 || units > self.counters.available {
            return Err(InventoryError::InsufficientStock { available: self.counters.available, requested: units });
        }
        self.counters.available -= units;
        self.counters.total -= units;
        self.assert_balanced();
        Ok(())
    }

    fn take(&mut self, order_id: OrderId) -> Result<Reservation, InventoryError> {
        self.reservations.remove(&order_id).ok_or(InventoryError::UnknownReservation(order_id))
    }

    /// The conservation rule, checked after every change. Cheap: the reservation sum is only
    /// recomputed in debug builds.
    pub fn assert_balanced(&self) {
        assert!(self.counters.is_balanced(), "inventory unbalanced: {:?}", self.counters);
        debug_assert_eq!(self.reservations.values().map(|r| r.quantity).sum::<i64>(), self.counters.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn qty(n: i64) -> Quantity {
        Quantity::parse(n, ORDER_LINE_QUANTITY_MAX).unwrap()
    }

    fn order(n: i64) -> OrderId {
        OrderId::new(n)
    }

    #[test]
    fn quantity_bounds() {
        assert!(Quantity::parse(0, 10).is_err());
        assert!(Quantity::parse(-1, 10).is_err());
        assert!(Quantity::parse(11, 10).is_err());
        assert!(Quantity::parse(i64::MAX, 10).is_err());
        assert_eq!(Quantity::parse(10, 10).unwrap().get(), 10);
    }

    #[test]
    fn reserve_confirm_release_move_units() {
        let mut ledger = Ledger::new(10);
        ledger.reserve(order(1), qty(3), 100).unwrap();
        ledger.reserve(order(2), qty(2), 200).unwrap();
        assert_eq!(ledger.counters(), Counters { total: 10, available: 5, reserved: 5, sold: 0 });
        assert_eq!(ledger.confirm(order(1)), Ok(3));
        assert_eq!(ledger.release(order(2)), Ok(2));
        assert_eq!(ledger.counters(), Counters { total: 10, available: 7, reserved: 0, sold: 3 });
    }

    #[test]
    fn errors_in_precedence_order() {
        let mut ledger = Ledger::new(2);
        ledger.reserve(order(1), qty(1), 100).unwrap();
        assert_eq!(ledger.reserve(order(1), qty(5), 100), Err(InventoryError::DuplicateReservation(order(1))));
        assert_eq!(
            ledger.reserve(order(2), qty(2), 100),
            Err(InventoryError::InsufficientStock { available: 1, requested: 2 })
        );
        assert_eq!(ledger.confirm(order(9)), Err(InventoryError::UnknownReservation(order(9))));
        assert_eq!(ledger.release(order(9)), Err(InventoryError::UnknownReservation(order(9))));
        ledger.release(order(1)).unwrap();
        assert_eq!(ledger.confirm(order(1)), Err(InventoryError::UnknownReservation(order(1))), "released is final");
        assert_eq!(ledger.counters(), Counters { total: 2, available: 2, reserved: 0, sold: 0 });
    }

    #[test]
    fn undo_puts_back_what_an_uncommitted_change_moved() {
        let mut ledger = Ledger::new(5);
        let lease = Reservation { quantity: 2, expires_at_ms: 100 };
        ledger.reserve(order(1), qty(2), 100).unwrap();
        ledger.confirm(order(1)).unwrap();
        ledger.unconfirm(order(1), lease).unwrap();
        assert_eq!(ledger.counters(), Counters { total: 5, available: 3, reserved: 2, sold: 0 });
        assert_eq!(ledger.unconfirm(order(1), lease), Err(InventoryError::DuplicateReservation(order(1))));
        ledger.confirm(order(1)).unwrap();
        ledger.return_sold(2).unwrap();
        ledger.unreturn(2).unwrap();
        assert_eq!(ledger.counters(), Counters { total: 5, available: 3, reserved: 0, sold: 2 });
        ledger.restock(qty(4)).unwrap();
        ledger.unrestock(4).unwrap();
        assert_eq!(ledger.counters(), Counters { total: 5, available: 3, reserved: 0, sold: 2 });
        assert!(ledger.unrestock(4).is_err(), "units no longer available cannot be taken back");
        assert!(ledger.unreturn(4).is_err());
    }

    #[test]
    fn restore_refuses_unbalanced_state() {
        let good = Counters { total: 5, available: 3, reserved: 2, sold: 0 };
        let lease = Reservation { quantity: 2, expires_at_ms: 9 };
        assert!(Ledger::restore(good, [(order(1), lease)]).is_ok());
        assert!(Ledger::restore(good, []).is_err(), "reserved without reservations");
        let bad = Counters { total: 5, available: 4, reserved: 2, sold: 0 };
        assert!(Ledger::restore(bad, [(order(1), lease)]).is_err());
        let negative = Counters { total: 0, available: -1, reserved: 1, sold: 0 };
        assert!(Ledger::restore(negative, [(order(1), Reservation { quantity: 1, expires_at_ms: 0 })]).is_err());
    }

    #[test]
    fn returning_sold_units_makes_them_available() {
        let mut ledger = Ledger::new(5);
        ledger.reserve(order(1), qty(3), 100).unwrap();
        ledger.confirm(order(1)).unwrap();
        assert_eq!(ledger.return_sold(4), Err(InventoryError::NotSold { sold: 3, requested: 4 }));
        ledger.return_sold(3).unwrap();
        assert_eq!(ledger.counters(), Counters { total: 5, available: 5, reserved: 0, sold: 0 });
    }

    #[test]
    fn restock_adds_available_units() {
        let mut ledger = Ledger::new(0);
        assert!(matches!(ledger.reserve(order(1), qty(1), 1), Err(InventoryError::InsufficientStock { .. })));
        ledger.restock(Quantity::parse(4, STOCK_QUANTITY_MAX).unwrap()).unwrap();
        assert_eq!(ledger.counters(), Counters { total: 4, available: 4, reserved: 0, sold: 0 });
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve { order: i64, quantity: i64, expires_at_ms: i64 },
        Confirm(i64),
        Release(i64),
        Return(i64),
        Restock(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1i64..30, 1i64..8, 0i64..100).prop_map(|(order, quantity, expires_at_ms)| Op::Reserve { order, quantity, expires_at_ms }),
            2 => (1i64..30).prop_map(Op::Confirm),
            2 => (1i64..30).prop_map(Op::Release),
            1 => (1i64..10).prop_map(Op::Return),
            1 => (1i64..10).prop_map(Op::Restock),
        ]
    }

    /// The naive model: a list of open leases and running totals, recomputed from scratch.
    #[derive(Default)]
    struct Model {
        total: i64,
        sold: i64,
        leases: Vec<(i64, i64, i64)>,
    }

    impl Model {
        fn reserved(&self) -> i64 {
            self.leases.iter().map(|l| l.1).sum()
        }
        fn available(&self) -> i64 {
            self.total - self.sold - self.reserved()
        }
        fn remove(&mut self, order: i64) -> Option<i64> {
            let index = self.leases.iter().position(|l| l.0 == order)?;
            Some(self.leases.remove(index).1)
        }
    }

    proptest! {
        #[test]
        fn ledger_matches_naive_model(initial in 0i64..40, ops in prop::collection::vec(op(), 1..200)) {
            let mut ledger = Ledger::new(initial);
            let mut model = Model { total: initial, ..Model::default() };
            for op in ops {
                match op {
                    Op::Reserve { order: o, quantity, expires_at_ms } => {
                        let result = ledger.reserve(order(o), qty(quantity), expires_at_ms);
                        let model_ok = !model.leases.iter().any(|l| l.0 == o) && quantity <= model.available();
                        prop_assert_eq!(result.is_ok(), model_ok);
                        if model_ok {
                            model.leases.push((o, quantity, expires_at_ms));
                        }
                    }
                    Op::Confirm(o) => {
                        let expected = model.remove(o);
                        if let Some(q) = expected {
                            model.sold += q;
                        }
                        prop_assert_eq!(ledger.confirm(order(o)).ok(), expected);
                    }
                    Op::Release(o) => {
                        prop_assert_eq!(ledger.release(order(o)).ok(), model.remove(o));
                    }
                    Op::Return(n) => {
                        let model_ok = n <= model.sold;
                        prop_assert_eq!(ledger.return_sold(n).is_ok(), model_ok);
                        if model_ok {
                            model.sold -= n;
                        }
                    }
                    Op::Restock(n) => {
                        ledger.restock(Quantity::parse(n, STOCK_QUANTITY_MAX).unwrap()).unwrap();
                        model.total += n;
                    }
                }
                let counters = ledger.counters();
                prop_assert_eq!(counters, Counters { total: model.total, available: model.available(), reserved: model.reserved(), sold: model.sold });
                prop_assert!(counters.is_balanced());
            }
        }
    }
}
