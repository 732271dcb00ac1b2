//! Where a key lives in a cluster: every key (a SKU, a user, a coupon template) hashes into a
//! fixed space of `SLOT_COUNT` slots, and the slots are cut into `RANGE_COUNT` ranges of
//! `SLOTS_PER_RANGE` contiguous slots. A node owns whole ranges (leases in the database), so
//! ownership of one range moves all of its keys at once.
//!
//! Guarantees: the hash is FNV-1a (64 bit) written out here over a fixed byte layout (the
//! kind's tag, then the id as 8 little-endian bytes), so a key's slot never changes between
//! builds, Rust versions or machines; every slot is in exactly one range.

use super::{SkuId, TemplateId, UserId};

/// Slots in the key space. Fixed for the life of a database: changing it moves every key.
pub const SLOT_COUNT: u16 = 1024;
/// Ranges the slots are cut into: the unit of ownership and of fencing.
pub const RANGE_COUNT: u16 = 64;
/// Contiguous slots per range.
pub const SLOTS_PER_RANGE: u16 = SLOT_COUNT / RANGE_COUNT;

const _: () = assert!(SLOT_COUNT % RANGE_COUNT == 0);

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A slot, `0..SLOT_COUNT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u16);

impl Slot {
    pub fn new(value: u16) -> Option<Slot> {
        (value < SLOT_COUNT).then_some(Slot(value))
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    /// The one range this slot is in.
    pub const fn range(self) -> RangeId {
        RangeId(self.0 / SLOTS_PER_RANGE)
    }
}

/// A range of `SLOTS_PER_RANGE` contiguous slots, `0..RANGE_COUNT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct RangeId(u16);

impl RangeId {
    pub fn new(value: u16) -> Option<RangeId> {
        (value < RANGE_COUNT).then_some(RangeId(value))
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The slots of this range, `first..first + SLOTS_PER_RANGE`.
    pub fn slots(self) -> std::ops::Range<u16> {
        let first = self.0 * SLOTS_PER_RANGE;
        first..first + SLOTS_PER_RANGE
    }

    /// Every range, in order.
    pub fn all() -> impl Iterator<Item = RangeId> {
        (0..RANGE_COUNT).map(RangeId)
    }
}

impl std::fmt::Display for RangeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a key names; part of its hash, so a SKU and a user with the same id may live apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Sku,
    User,
    Template,
}

impl KeyKind {
    /// The byte hashed before the id. Stable: never reuse or renumber.
    const fn tag(self) -> u8 {
        match self {
            KeyKind::Sku => 1,
            KeyKind::User => 2,
            KeyKind::Template => 3,
        }
    }

    pub fn parse(name: &str) -> Option<KeyKind> {
        match name {
            "sku" => Some(KeyKind::Sku),
            "user" => Some(KeyKind::User),
            "template" => Some(KeyKind::Template),
            _ => None,
        }
    }
}

/// A key that lives in one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: KeyKind,
    pub id: i64,
}

impl Key {
    pub const fn sku(id: SkuId) -> Key {
        Key { kind: KeyKind::Sku, id: id.get() }
    }

    pub const fn user(id: UserId) -> Key {
        Key { kind: KeyKind::User, id: id.get() }
    }

    pub const fn template(id: TemplateId) -> Key {
        Key { kind: KeyKind::Template, id: id.get() }
    }

    /// The key's slot: FNV-1a over `[tag, id as 8 little-endian bytes]`, modulo `SLOT_COUNT`.
    pub fn slot(self) -> Slot {
        let mut hash = FNV_OFFSET_BASIS;
        for byte in std::iter::once(self.kind.tag()).chain(self.id.to_le_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
        let slot = (hash % u64::from(SLOT_COUNT)) as u16;
        debug_assert!(slot < SLOT_COUNT);
        Slot(slot)
    }

    pub fn range(self) -> RangeId {
        self.slot().range()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pinned values: a change of the hash, the tags or the layout moves every key of every
    /// running cluster, and must fail here first.
    #[test]
    fn known_vectors_are_stable() {
        let cases = [
            (Key { kind: KeyKind::Sku, id: 0 }, fnv_reference(&[1, 0, 0, 0, 0, 0, 0, 0, 0])),
            (Key { kind: KeyKind::User, id: 1 }, fnv_reference(&[2, 1, 0, 0, 0, 0, 0, 0, 0])),
            (Key { kind: KeyKind::Template, id: -1 }, fnv_reference(&[3, 255, 255, 255, 255, 255, 255, 255, 255])),
        ];
        for (key, hash) in cases {
            assert_eq!(u64::from(key.slot().get()), hash % u64::from(SLOT_COUNT), "{key:?}");
        }
        // Published FNV-1a test vectors pin the reference itself.
        assert_eq!(fnv_reference(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv_reference(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv_reference(b"foobar"), 0x8594_4171_f739_67e8);
        // And a few slots written out, as a cluster sees them.
        assert_eq!(Key::sku(SkuId::new(1)).slot().get(), PINNED_SKU_1);
        assert_eq!(Key::user(UserId::new(1)).slot().get(), PINNED_USER_1);
        assert_eq!(Key::template(TemplateId::new(1)).slot().get(), PINNED_TEMPLATE_1);
        assert_eq!(Key::sku(SkuId::new(1)).range().get(), PINNED_SKU_1 / SLOTS_PER_RANGE);
    }

    const PINNED_SKU_1: u16 = 461;
    const PINNED_USER_1: u16 = 964;
    const PINNED_TEMPLATE_1: u16 = 499;

    fn fnv_reference(bytes: &[u8]) -> u64 {
        bytes.iter().fold(FNV_OFFSET_BASIS, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME))
    }

    #[test]
    fn every_slot_is_in_exactly_one_range() {
        let mut seen = vec![0u8; usize::from(SLOT_COUNT)];
        for range in RangeId::all() {
            assert_eq!(range.slots().len(), usize::from(SLOTS_PER_RANGE));
            for slot in range.slots() {
                seen[usize::from(slot)] += 1;
                assert_eq!(Slot::new(slot).unwrap().range(), range);
            }
        }
        assert!(seen.iter().all(|count| *count == 1));
        assert_eq!(RangeId::all().count(), usize::from(RANGE_COUNT));
    }

    /// Consecutive ids (snowflakes of one node are close together) spread evenly: every range
    /// gets within 25% of its fair share of 64,000 keys.
    #[test]
    fn consecutive_ids_spread_evenly_over_ranges() {
        let keys = 64_000i64;
        for kind in [KeyKind::Sku, KeyKind::User, KeyKind::Template] {
            let mut per_range = vec![0u32; usize::from(RANGE_COUNT)];
            for id in 0..keys {
                per_range[Key { kind, id: 1 << 22 | id << 12 }.range().index()] += 1;
            }
            let fair = keys as f64 / f64::from(RANGE_COUNT);
            for (range, count) in per_range.iter().enumerate() {
                let off = (f64::from(*count) - fair).abs() / fair;
                assert!(off < 0.25, "{kind:?} range {range}: {count} keys, fair share {fair}");
            }
        }
    }

    proptest! {
        #[test]
        fn a_key_always_lands_in_the_same_valid_slot(id in any::<i64>(), kind in 0u8..3) {
            let kind = [KeyKind::Sku, KeyKind::User, KeyKind::Template][usize::from(kind)];
            let key = Key { kind, id };
            let slot = key.slot();
            prop_assert!(slot.get() < SLOT_COUNT);
            prop_assert_eq!(slot, key.slot());
            prop_assert!(slot.range().slots().contains(&slot.get()));
        }
    }
}
