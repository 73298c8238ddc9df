//! Positions in the 256-bit keyspace and the XOR distance between them.
//!
//! A node sits at its [`NodeId`] and a record at the SHA-256 of its key
//! string ([`Key::for_record`]). The distance between two positions is their
//! bitwise XOR read as a 256-bit big-endian number, so comparing [`Distance`]s
//! byte by byte (the derived `Ord`) compares them as numbers.
//!
//! Bucket `i` of a routing table holds the nodes whose distance `d` to the
//! local node satisfies `2^i <= d < 2^(i+1)`, so the index is
//! `255 - leading_zeros(d)`: bucket 255 is the far half of the keyspace and
//! bucket 0 holds the single position that differs only in the last bit.

use std::fmt;

use common::crypto::sha256;
use common::id::NodeId;

/// How many buckets a routing table has: one per bit of a key.
pub const NUM_BUCKETS: usize = 256;

/// A position in the 256-bit Kademlia keyspace: a node ID, or the SHA-256
/// of a record key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key([u8; 32]);

impl Key {
    /// Wraps 32 raw bytes.
    pub const fn from_array(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The position of a record: the SHA-256 of its key string,
    /// e.g. `suppliers/alice@id-a`.
    pub fn for_record(record_key: &str) -> Self {
        Self(sha256(record_key.as_bytes()))
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The XOR distance to `other`.
    pub fn distance(&self, other: &Key) -> Distance {
        let mut out = [0u8; 32];
        for (o, (a, b)) in out.iter_mut().zip(self.0.iter().zip(other.0.iter())) {
            *o = a ^ b;
        }
        Distance(out)
    }

    /// A key whose distance to `self` falls in bucket `index`, with the free
    /// low bits taken from `random`. Used to pick the target of a bucket
    /// refresh. Returns `None` when `index` is not below [`NUM_BUCKETS`].
    pub fn in_bucket(&self, index: usize, random: [u8; 32]) -> Option<Key> {
        if index >= NUM_BUCKETS {
            return None;
        }
        // Bit `index` counts from the least significant bit of the
        // big-endian number, so it lives in byte `31 - index / 8`.
        let byte = 31 - index / 8;
        let bit = index % 8;
        let mut distance = random;
        for b in &mut distance[..byte] {
            *b = 0;
        }
        let low_mask = (1u8 << bit) - 1;
        distance[byte] = (distance[byte] & low_mask) | (1u8 << bit);
        Some(Key(self.distance(&Key(distance)).0))
    }
}

impl From<NodeId> for Key {
    fn from(id: NodeId) -> Self {
        Self(*id.as_bytes())
    }
}

impl From<&NodeId> for Key {
    fn from(id: &NodeId) -> Self {
        Self(*id.as_bytes())
    }
}

impl From<Key> for NodeId {
    fn from(key: Key) -> Self {
        NodeId::from_array(key.0)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(")?;
        write_hex(f, &self.0[..4])?;
        f.write_str(")")
    }
}

/// The XOR distance between two keys, ordered as a 256-bit unsigned number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Distance([u8; 32]);

impl Distance {
    /// The distance of a key to itself.
    pub const ZERO: Distance = Distance([0; 32]);
    /// The largest distance.
    pub const MAX: Distance = Distance([0xff; 32]);

    /// Wraps 32 raw big-endian bytes.
    pub const fn from_array(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw big-endian bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// How many leading bits are zero: 256 for [`Distance::ZERO`].
    pub fn leading_zeros(&self) -> u32 {
        let mut zeros = 0;
        for byte in self.0 {
            if byte != 0 {
                return zeros + byte.leading_zeros();
            }
            zeros += 8;
        }
        zeros
    }

    /// The bucket this distance falls in, `255 - leading_zeros`, or `None`
    /// for [`Distance::ZERO`] (a key is in no bucket of its own table).
    pub fn bucket_index(&self) -> Option<usize> {
        let zeros = usize::try_from(self.leading_zeros()).ok()?;
        (NUM_BUCKETS - 1).checked_sub(zeros)
    }
}

impl fmt::Debug for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bucket_index() {
            Some(index) => write!(f, "Distance(bucket {index})"),
            None => f.write_str("Distance(0)"),
        }
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(bytes: [u8; 32]) -> Key {
        Key::from_array(bytes)
    }

    fn with_last(byte: u8) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[31] = byte;
        b
    }

    #[test]
    fn bucket_index_is_the_highest_differing_bit() {
        assert_eq!(Distance::ZERO.bucket_index(), None);
        assert_eq!(Distance::ZERO.leading_zeros(), 256);
        assert_eq!(Distance::from_array(with_last(1)).bucket_index(), Some(0));
        assert_eq!(Distance::from_array(with_last(2)).bucket_index(), Some(1));
        assert_eq!(Distance::from_array(with_last(3)).bucket_index(), Some(1));
        assert_eq!(
            Distance::from_array(with_last(0x80)).bucket_index(),
            Some(7)
        );
        let mut top = [0u8; 32];
        top[0] = 0x80;
        assert_eq!(Distance::from_array(top).bucket_index(), Some(255));
        assert_eq!(Distance::MAX.bucket_index(), Some(255));
        let mut mid = [0u8; 32];
        mid[1] = 0x01;
        assert_eq!(Distance::from_array(mid).leading_zeros(), 15);
        assert_eq!(Distance::from_array(mid).bucket_index(), Some(240));
    }

    #[test]
    fn distances_order_as_numbers() {
        let origin = key([0; 32]);
        let near = key(with_last(0xff));
        let mut far_bytes = [0u8; 32];
        far_bytes[30] = 1;
        let far = key(far_bytes);
        assert!(origin.distance(&near) < origin.distance(&far));
        assert_eq!(origin.distance(&origin), Distance::ZERO);
    }

    #[test]
    fn record_keys_hash_with_sha256() {
        let key = Key::for_record("suppliers/alice@id-a");
        assert_eq!(*key.as_bytes(), sha256(b"suppliers/alice@id-a"));
        assert_ne!(key, Key::for_record("identity/alice@id-a"));
    }

    #[test]
    fn keys_and_node_ids_convert_both_ways() {
        let id = NodeId::from_array([7; 32]);
        let key = Key::from(id);
        assert_eq!(NodeId::from(key), id);
        assert_eq!(key.to_string(), id.to_string());
        assert_eq!(format!("{key:?}"), "Key(07070707)");
    }

    #[test]
    fn in_bucket_refuses_out_of_range_indices() {
        assert!(key([0; 32]).in_bucket(256, [0; 32]).is_none());
    }

    proptest! {
        #[test]
        fn xor_distance_is_a_metric(
            a in any::<[u8; 32]>(),
            b in any::<[u8; 32]>(),
            c in any::<[u8; 32]>(),
        ) {
            let (a, b, c) = (key(a), key(b), key(c));
            // Identity of indiscernibles.
            prop_assert_eq!(a.distance(&a), Distance::ZERO);
            prop_assert_eq!(a.distance(&b) == Distance::ZERO, a == b);
            // Symmetry.
            prop_assert_eq!(a.distance(&b), b.distance(&a));
            // d(a, c) = d(a, b) xor d(b, c), and xor never exceeds the sum,
            // which gives the triangle inequality.
            let ab = a.distance(&b);
            let bc = b.distance(&c);
            let ac = a.distance(&c);
            let xor = key(*ab.as_bytes()).distance(&key(*bc.as_bytes()));
            prop_assert_eq!(ac, xor);
            prop_assert!(ac <= sum_saturating(&ab, &bc));
        }

        #[test]
        fn distance_is_unidirectional(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), c in any::<[u8; 32]>()) {
            // For any a and distance d there is exactly one b with d(a, b) = d.
            let (a, b, c) = (key(a), key(b), key(c));
            prop_assert_eq!(a.distance(&b) == a.distance(&c), b == c);
        }

        #[test]
        fn in_bucket_lands_in_that_bucket(
            local in any::<[u8; 32]>(),
            random in any::<[u8; 32]>(),
            index in 0usize..NUM_BUCKETS,
        ) {
            let local = key(local);
            let target = local.in_bucket(index, random).unwrap();
            prop_assert_eq!(local.distance(&target).bucket_index(), Some(index));
        }
    }

    /// `a + b` as 257-bit numbers, capped at [`Distance::MAX`].
    fn sum_saturating(a: &Distance, b: &Distance) -> Distance {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let s = u16::from(a.0[i]) + u16::from(b.0[i]) + carry;
            out[i] = (s & 0xff) as u8;
            carry = s >> 8;
        }
        if carry > 0 {
            Distance::MAX
        } else {
            Distance(out)
        }
    }
}
