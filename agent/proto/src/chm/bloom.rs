//! The Bloom filter each zone row carries of the component ids and
//! keywords below it: a leaf row holds its agent's, and every zone's is
//! the OR of its children's (the AFC dialect ORs hex bitmaps), so a lookup
//! asks only the contacts of the children whose filter matches.

/// Bits in a filter: 2,048 (256 bytes, 512 hex digits in the row).
pub const BITS: usize = 2048;
/// Bits set per item.
pub const HASHES: u32 = 4;

/// A Bloom filter of [`BITS`] bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloom {
    bits: [u64; BITS / 64],
}

impl Default for Bloom {
    fn default() -> Self {
        Bloom {
            bits: [0; BITS / 64],
        }
    }
}

/// What a filter holds: a component id or a keyword, kept apart.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    Id(&'a str),
    Keyword(&'a str),
}

impl Bloom {
    pub fn insert(&mut self, key: Key<'_>) {
        for b in positions(key) {
            self.bits[b / 64] |= 1 << (b % 64);
        }
    }

    pub fn contains(&self, key: Key<'_>) -> bool {
        positions(key).all(|b| self.bits[b / 64] & (1 << (b % 64)) != 0)
    }

    /// The filter as the row carries it: lower-case hex, byte by byte.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(BITS / 4);
        for w in self.bits {
            for byte in w.to_le_bytes() {
                s.push_str(&format!("{byte:02x}"));
            }
        }
        s
    }

    /// A filter from a row; None unless exactly [`BITS`] bits of hex.
    pub fn from_hex(s: &str) -> Option<Bloom> {
        if s.len() != BITS / 4 || !s.is_ascii() {
            return None;
        }
        let mut b = Bloom::default();
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
            b.bits[i / 8] |= (byte as u64) << (8 * (i % 8));
        }
        Some(b)
    }

    /// The share of bits set (a filter's false-positive rate is about this
    /// to the power [`HASHES`]).
    pub fn fill(&self) -> f64 {
        let ones: u32 = self.bits.iter().map(|w| w.count_ones()).sum();
        ones as f64 / BITS as f64
    }
}

/// The bits of one key: double hashing of a 64-bit FNV-1a hash, the same
/// on every platform and build.
fn positions(key: Key<'_>) -> impl Iterator<Item = usize> {
    let (tag, s) = match key {
        Key::Id(s) => (b'i', s),
        Key::Keyword(s) => (b'k', s),
    };
    let h = fnv1a(std::iter::once(tag).chain(s.bytes()));
    let (h1, h2) = (h as u32 as u64, (h >> 32) | 1);
    (0..HASHES as u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % BITS as u64) as usize)
}

fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_what_it_holds() {
        let mut b = Bloom::default();
        b.insert(Key::Id("web-1"));
        b.insert(Key::Keyword("web"));
        assert!(b.contains(Key::Id("web-1")) && b.contains(Key::Keyword("web")));
        assert!(!b.contains(Key::Keyword("web-1")));
        let hex = b.to_hex();
        assert_eq!(hex.len(), 512);
        assert_eq!(Bloom::from_hex(&hex), Some(b));
        assert_eq!(Bloom::from_hex("00"), None);
        assert_eq!(Bloom::from_hex(&"g".repeat(512)), None);
    }

    #[test]
    fn false_positive_rate_of_a_leaf_zone() {
        // A zone of 10 agents with 10 components and 2 keywords each.
        let mut b = Bloom::default();
        for i in 0..100 {
            b.insert(Key::Id(&format!("c{i}")));
            b.insert(Key::Keyword(&format!("k{}", i % 50)));
            b.insert(Key::Keyword(&format!("j{}", i % 50)));
        }
        let fp = (0..10_000)
            .filter(|i| b.contains(Key::Id(&format!("other{i}"))))
            .count();
        assert!(fp < 600, "{fp} of 10000");
    }
}
