//! A strict structural check of Yjs v1 (lib0 v1) encodings, run before yrs
//! decodes anything.
//!
//! yrs' decoder returns `Result`s, but it trusts its input in ways a gateway
//! cannot: a nested `Any` recurses once per level (a 1 MiB update of
//! `[117, 1, 117, 1, …]` overflows the stack), a declared count reserves
//! memory before the items are read (and a WebAssembly memory never shrinks),
//! clock arithmetic overflows `u32` and `i32` (a panic in a debug build, a
//! wrapped clock in a release one), varints longer than their type shift out
//! of range, client ids lose their bits above 53, content refs lose bit 4, and
//! trailing bytes are ignored. This pass walks the same grammar without
//! allocating and refuses all of that, so what reaches yrs is well-formed:
//!
//! - every count is at most the bytes left (each element takes at least one);
//! - varints fit their type; client ids fit in 53 bits; clocks and
//!   `clock + len` are at most [`MAX_CLOCK`] (2^31 - 1: yrs subtracts clocks
//!   as `i32`);
//! - `Any` values nest at most [`MAX_DEPTH`] deep;
//! - strings are UTF-8; the input is consumed exactly (no trailing bytes);
//! - each client has one block section; delete-set ranges are non-empty and
//!   ascending;
//! - only what both Yjs and yrs read the same way: content `JSON` (ref 2, legacy)
//!   is refused because yrs 0.28 reads one string more than it declares, type
//!   `XmlHook` (5) because yrs does not read the hook name Yjs writes, and the
//!   yrs-only refs (weak links, `Move`, type refs 7/9/15) because a Yjs peer
//!   could not read them back.

use std::collections::HashSet;

/// How deep `Any` arrays and maps may nest.
pub const MAX_DEPTH: usize = 128;

/// The highest clock accepted: yrs computes clock offsets as `i32`.
pub const MAX_CLOCK: u32 = i32::MAX as u32;

/// Why an encoding was refused.
pub type Error = String;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn err<T>(&self, what: &str) -> Result<T, Error> {
        Err(format!("{what} at byte {}", self.pos))
    }

    fn u8(&mut self) -> Result<u8, Error> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.err("unexpected end of input"),
        }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.left() {
            return self.err("unexpected end of input");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// An unsigned varint that must fit in 64 bits.
    fn var_u64(&mut self) -> Result<u64, Error> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return self.err("varint overflows 64 bits");
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        self.err("varint longer than 10 bytes")
    }

    fn var_u32(&mut self) -> Result<u32, Error> {
        let v = self.var_u64()?;
        match u32::try_from(v) {
            Ok(v) => Ok(v),
            Err(_) => self.err("varint overflows 32 bits"),
        }
    }

    /// A count of elements that each take at least one more byte.
    fn count(&mut self) -> Result<usize, Error> {
        let n = self.var_u64()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.left() => Ok(n),
            _ => self.err("count larger than the input"),
        }
    }

    /// lib0's signed varint (6 bits and a sign in the first byte); at most
    /// 9 bytes so that yrs' decoder never shifts past 63 bits.
    fn var_i64(&mut self) -> Result<(), Error> {
        let mut b = self.u8()?;
        let mut n = 1;
        while b & 0x80 != 0 {
            if n == 9 {
                return self.err("signed varint longer than 9 bytes");
            }
            b = self.u8()?;
            n += 1;
        }
        Ok(())
    }

    fn string(&mut self) -> Result<&'a str, Error> {
        let len = self.count()?;
        let at = self.pos;
        let bytes = self.bytes(len)?;
        std::str::from_utf8(bytes).map_err(|_| format!("string is not UTF-8 at byte {at}"))
    }

    /// A client id: yrs keeps 53 bits (Yjs' are JavaScript integers) and
    /// would merge ids that differ above them.
    fn client(&mut self) -> Result<u64, Error> {
        let c = self.var_u64()?;
        if c >> 53 != 0 {
            return self.err("client id over 53 bits");
        }
        Ok(c)
    }

    /// A client id and the clock of an existing item.
    fn id(&mut self) -> Result<(), Error> {
        self.client()?;
        if self.var_u32()? >= MAX_CLOCK {
            return self.err("clock out of range");
        }
        Ok(())
    }

    fn any(&mut self, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return self.err("values nested too deep");
        }
        match self.u8()? {
            // undefined, null, false, true
            127 | 126 | 121 | 120 => Ok(()),
            125 => self.var_i64(),
            124 => self.bytes(4).map(drop),
            123 | 122 => self.bytes(8).map(drop),
            119 => self.string().map(drop),
            118 => {
                for _ in 0..self.count()? {
                    self.string()?;
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            117 => {
                for _ in 0..self.count()? {
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            116 => {
                let n = self.count()?;
                self.bytes(n).map(drop)
            }
            _ => {
                self.pos -= 1;
                self.err("unknown value type")
            }
        }
    }

    fn end(&self) -> Result<(), Error> {
        if self.left() == 0 {
            Ok(())
        } else {
            self.err("trailing bytes")
        }
    }

    /// One block; returns how many clock ticks it takes (0 = yrs drops it).
    fn block(&mut self) -> Result<u32, Error> {
        let info = self.u8()?;
        match info {
            // GC, Skip
            0 | 10 => {
                let len = self.var_u32()?;
                if len == 0 {
                    return self.err("empty block");
                }
                return Ok(len);
            }
            _ => {}
        }
        let has_origin = info & 0x80 != 0;
        let has_right_origin = info & 0x40 != 0;
        if has_origin {
            self.id()?;
        }
        if has_right_origin {
            self.id()?;
        }
        if !has_origin && !has_right_origin {
            if self.var_u32()? == 1 {
                self.string()?; // a root type by name
            } else {
                self.id()?; // a nested type by its item's id
            }
            if info & 0x20 != 0 {
                self.string()?; // the map key
            }
        }
        match info & 0x1f {
            // Deleted
            1 => self.var_u32(),
            // Binary
            3 => {
                let n = self.count()?;
                self.bytes(n).map(|_| 1)
            }
            // String: its length is counted in UTF-16 units
            4 => {
                let s = self.string()?;
                u32::try_from(s.encode_utf16().count()).or_else(|_| self.err("string too long"))
            }
            // Embed (JSON text)
            5 => self.string().map(|_| 1),
            // Format: key and JSON text
            6 => {
                self.string()?;
                self.string().map(|_| 1)
            }
            // Type
            7 => match self.u8()? {
                0 | 1 | 2 | 4 | 6 => Ok(1),
                3 => self.string().map(|_| 1), // XmlElement and its tag name
                _ => {
                    self.pos -= 1;
                    self.err("unsupported shared type")
                }
            },
            // Any
            8 => {
                let n = self.count()?;
                for _ in 0..n {
                    self.any(1)?;
                }
                u32::try_from(n).or_else(|_| self.err("too many values"))
            }
            // Doc: guid and options
            9 => {
                self.string()?;
                self.any(1).map(|_| 1)
            }
            2 => self.err("legacy JSON content is not supported"),
            _ => self.err("unsupported content type"),
        }
    }

    /// A delete set: per client, ascending non-empty clock ranges.
    fn delete_set(&mut self) -> Result<(), Error> {
        let mut seen = HashSet::new();
        for _ in 0..self.count()? {
            if !seen.insert(self.client()?) {
                return self.err("client listed twice in the delete set");
            }
            let mut floor = 0u64;
            for _ in 0..self.count()? {
                let clock = u64::from(self.var_u32()?);
                let len = u64::from(self.var_u32()?);
                if len == 0 || clock < floor || clock + len > u64::from(MAX_CLOCK) {
                    return self.err("bad delete range");
                }
                floor = clock + len;
            }
        }
        Ok(())
    }
}

/// Checks a v1 update (also the format of a snapshot and a diff).
pub fn check_update(bytes: &[u8]) -> Result<(), Error> {
    let mut r = Reader::new(bytes);
    let mut seen = HashSet::new();
    for _ in 0..r.count()? {
        let blocks = r.count()?;
        if !seen.insert(r.client()?) {
            return r.err("client listed twice");
        }
        let mut clock = u64::from(r.var_u32()?);
        for _ in 0..blocks {
            clock += u64::from(r.block()?);
            if clock > u64::from(MAX_CLOCK) {
                return r.err("clock out of range");
            }
        }
        if clock > u64::from(MAX_CLOCK) {
            return r.err("clock out of range");
        }
    }
    r.delete_set()?;
    r.end()
}

/// Checks a v1 state vector.
pub fn check_state_vector(bytes: &[u8]) -> Result<(), Error> {
    let mut r = Reader::new(bytes);
    for _ in 0..r.count()? {
        r.client()?;
        r.var_u32()?;
    }
    r.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_update_and_state_vector() {
        assert_eq!(check_update(&[0, 0]), Ok(()));
        assert_eq!(check_state_vector(&[0]), Ok(()));
        assert!(check_update(&[]).is_err());
        assert!(check_update(&[0]).is_err());
        assert!(check_update(&[0, 0, 0]).is_err(), "trailing byte");
        assert!(check_state_vector(&[0, 0]).is_err(), "trailing byte");
    }

    #[test]
    fn refuses_bombs_and_overflows() {
        // 2^32 - 1 clients declared in 5 bytes.
        assert!(check_update(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0]).is_err());
        // A varint of 11 bytes; one that overflows u64.
        let mut long = vec![0x80; 10];
        long.push(0);
        assert!(check_state_vector(&long).is_err());
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert!(check_state_vector(&over).is_err());
        // A delete range past MAX_CLOCK: 1 client, id 1, 1 range, clock 2^31-1, len 1.
        assert!(check_update(&[0, 1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x07, 1]).is_err());
        assert!(check_update(&[0, 1, 1, 1, 0xfe, 0xff, 0xff, 0xff, 0x07, 1]).is_ok());
        // Nested arrays deeper than MAX_DEPTH inside an Any item of root "a".
        let mut deep = vec![1, 1, 1, 0, 8, 1, 1, b'a', 1];
        for _ in 0..=MAX_DEPTH {
            deep.extend([117, 1]);
        }
        deep.extend([126, 0]);
        assert!(check_update(&deep).unwrap_err().contains("too deep"));
    }
}
