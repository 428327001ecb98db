//! The bounded byte codec every DDS header and message uses: LEB128
//! varints, length-prefixed byte strings with a caller-given bound, and a
//! reader that never reads past its input, never allocates more than the
//! input holds, and never panics on hostile bytes.

/// Why bytes did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("input ends inside a field")]
    Short,
    #[error("a varint longer than 10 bytes or above its bound")]
    BadVarint,
    #[error("a length of {len} bytes where at most {max} are allowed")]
    TooLong { len: u64, max: usize },
    #[error("unknown tag {0}")]
    BadTag(u8),
    #[error("text that is not UTF-8")]
    BadText,
    #[error("{0} bytes left over after the message")]
    Trailing(usize),
    #[error("a field out of range: {0}")]
    Invalid(&'static str),
}

/// Appends fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    pub fn with_capacity(n: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn varint(&mut self, mut v: u64) -> &mut Self {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(b);
                return self;
            }
            self.buf.push(b | 0x80);
        }
    }

    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.varint(b.len() as u64);
        self.raw(b)
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields from untrusted bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.rest.split_first().ok_or(DecodeError::Short)?;
        self.rest = rest;
        Ok(b)
    }

    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            let part = (b & 0x7f) as u64;
            if i == 9 && part > 1 {
                return Err(DecodeError::BadVarint);
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::BadVarint)
    }

    /// A varint that must not exceed `max`.
    pub fn varint_max(&mut self, max: u64) -> Result<u64, DecodeError> {
        let v = self.varint()?;
        if v > max {
            return Err(DecodeError::BadVarint);
        }
        Ok(v)
    }

    /// A count of items, each taking at least `min_item` bytes, at most `max`.
    pub fn count(&mut self, max: usize, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > max as u64 {
            return Err(DecodeError::TooLong { len: n, max });
        }
        if (n as usize).saturating_mul(min_item.max(1)) > self.rest.len() {
            return Err(DecodeError::Short);
        }
        Ok(n as usize)
    }

    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::Short);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.raw(N)?);
        Ok(out)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        if len > max as u64 {
            return Err(DecodeError::TooLong { len, max });
        }
        self.raw(len as usize)
    }

    pub fn str(&mut self, max: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(max)?).map_err(|_| DecodeError::BadText)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// Fails unless every byte was read.
    pub fn end(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_round_trip() {
        let mut w = Writer::new();
        w.u8(7)
            .varint(0)
            .varint(300)
            .varint(u64::MAX)
            .str("héllo")
            .bytes(&[1, 2, 3]);
        let b = w.finish();
        let mut r = Reader::new(&b);
        assert_eq!(r.u8().unwrap(), 7);
        assert_eq!(r.varint().unwrap(), 0);
        assert_eq!(r.varint().unwrap(), 300);
        assert_eq!(r.varint().unwrap(), u64::MAX);
        assert_eq!(r.str(16).unwrap(), "héllo");
        assert_eq!(r.bytes(3).unwrap(), &[1, 2, 3]);
        r.end().unwrap();
    }

    #[test]
    fn bounds_are_enforced() {
        let mut w = Writer::new();
        w.bytes(&[0; 10]);
        let b = w.finish();
        assert!(matches!(
            Reader::new(&b).bytes(9),
            Err(DecodeError::TooLong { len: 10, max: 9 })
        ));
        // Eleven continuation bytes.
        assert_eq!(
            Reader::new(&[0xff; 11]).varint(),
            Err(DecodeError::BadVarint)
        );
        // A count claiming more items than bytes remain.
        let mut w = Writer::new();
        w.varint(1000);
        assert_eq!(
            Reader::new(&w.finish()).count(5000, 1),
            Err(DecodeError::Short)
        );
    }

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<u64>()) {
            let mut w = Writer::new();
            w.varint(v);
            let b = w.finish();
            let mut r = Reader::new(&b);
            prop_assert_eq!(r.varint().unwrap(), v);
            prop_assert!(r.end().is_ok());
        }

        #[test]
        fn hostile_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&b);
            let _ = r.varint();
            let _ = r.bytes(16);
            let _ = r.str(8);
            let _ = r.count(4, 2);
            let _ = r.array::<4>();
        }
    }
}
