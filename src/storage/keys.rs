//! Order-preserving key encoding for sled.
//!
//! sled orders keys by their bytes, so every key is built from components whose encodings compare
//! exactly like the values: `decode(encode(x)) == x` and `x < y <=> encode(x) < encode(y)` for
//! tuples of the types below (property-tested at the bottom of this file).
//!
//! - `u32`/`u64`: big-endian, fixed width.
//! - `i64`: the sign bit flipped, then big-endian, so negative values sort first.
//! - strings/bytes: `0x00` is escaped as `0x00 0xFF` and the component ends with `0x00 0x01`.
//!   The terminator sorts below every escaped byte and below any continuation, so a string sorts
//!   before its extensions, and a variable-length component can be followed by more components
//!   without ambiguity (a bare `0x00` terminator would collide with a following `0xFF` byte).

use crate::error::{Error, Result};

/// Keyspace tags: the first byte of every key in a collection's tree.
pub mod tag {
    /// Collection metadata (applied sequence, counts).
    pub const META: u8 = 0x01;
    /// Items by id: `ITEM | id bytes`.
    pub const ITEM: u8 = 0x10;
    /// Users by id: `USER | id bytes`.
    pub const USER: u8 = 0x11;
    /// Interaction log: `LOG | seq u64 | index u32`.
    pub const LOG: u8 = 0x20;
    /// Per-user history: `HISTORY | user_id (escaped) | ts i64 | seq u64 | index u32`.
    pub const HISTORY: u8 = 0x21;
    /// Model versions: `VERSION | version u64` (see `storage::models`).
    pub const VERSION: u8 = 0x30;
    /// Model SIDs: `MODEL_SID | version u64 | kind u8 | id (escaped)`.
    pub const MODEL_SID: u8 = 0x31;
}

/// Appends a big-endian `u32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a big-endian `u64`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends an `i64` that sorts like the number.
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, (v as u64) ^ (1 << 63));
}

/// Appends an escaped, terminated byte string.
pub fn put_bytes(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Reads components back from a key, in the order they were written.
pub struct KeyReader<'a> {
    buf: &'a [u8],
}

impl<'a> KeyReader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        KeyReader { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::DataLoss(format!(
                "key truncated: wanted {n} bytes, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a `u32`.
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().expect("took 4 bytes")))
    }

    /// Reads a `u64`.
    pub fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("took 8 bytes")))
    }

    /// Reads an `i64`.
    pub fn i64(&mut self) -> Result<i64> {
        Ok((self.u64()? ^ (1 << 63)) as i64)
    }

    /// Reads an escaped byte string.
    pub fn bytes(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            match self.take(1)?[0] {
                0 => match self.take(1)?[0] {
                    0xFF => out.push(0),
                    0x01 => return Ok(out),
                    b => {
                        return Err(Error::DataLoss(format!(
                            "key string has bad escape 0x00 0x{b:02x}"
                        )))
                    }
                },
                b => out.push(b),
            }
        }
    }

    /// Reads an escaped UTF-8 string.
    pub fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?)
            .map_err(|e| Error::DataLoss(format!("key string is not UTF-8: {e}")))
    }

    /// Bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// Key of an item or user record: `tag | id`. The id is the key's last component, so it needs no
/// escaping.
pub fn entity_key(tag: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(tag);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Key of an interaction in the log.
pub fn log_key(seq: u64, index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(tag::LOG);
    put_u64(&mut k, seq);
    put_u32(&mut k, index);
    k
}

/// Prefix of all history keys of one user.
pub fn history_prefix(user_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + user_id.len() + 20);
    k.push(tag::HISTORY);
    put_bytes(&mut k, user_id.as_bytes());
    k
}

/// Position of an interaction within a user's history: sorts by time, then write order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HistoryPos {
    /// Event time.
    pub timestamp_ms: i64,
    /// Write sequence.
    pub seq: u64,
    /// Index within the batch.
    pub index: u32,
}

impl HistoryPos {
    /// Appends the position to a history prefix.
    pub fn append_to(&self, k: &mut Vec<u8>) {
        put_i64(k, self.timestamp_ms);
        put_u64(k, self.seq);
        put_u32(k, self.index);
    }

    /// Reads the position from the bytes after a history prefix.
    pub fn read(rest: &[u8]) -> Result<HistoryPos> {
        let mut r = KeyReader::new(rest);
        let pos = HistoryPos {
            timestamp_ms: r.i64()?,
            seq: r.u64()?,
            index: r.u32()?,
        };
        if !r.rest().is_empty() {
            return Err(Error::DataLoss("history key has trailing bytes".into()));
        }
        Ok(pos)
    }
}

/// Full history key of one interaction.
pub fn history_key(user_id: &str, pos: HistoryPos) -> Vec<u8> {
    let mut k = history_prefix(user_id);
    pos.append_to(&mut k);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(t: &(Vec<u8>, i64, u64, u32, String)) -> Vec<u8> {
        let mut k = Vec::new();
        put_bytes(&mut k, &t.0);
        put_i64(&mut k, t.1);
        put_u64(&mut k, t.2);
        put_u32(&mut k, t.3);
        put_bytes(&mut k, t.4.as_bytes());
        k
    }

    fn decode(k: &[u8]) -> (Vec<u8>, i64, u64, u32, String) {
        let mut r = KeyReader::new(k);
        let t = (
            r.bytes().unwrap(),
            r.i64().unwrap(),
            r.u64().unwrap(),
            r.u32().unwrap(),
            r.string().unwrap(),
        );
        assert!(r.rest().is_empty());
        t
    }

    // Bytes biased towards the troublesome values 0x00, 0x01 and 0xFF.
    fn tricky_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()],
            0..6,
        )
    }

    fn tuple() -> impl Strategy<Value = (Vec<u8>, i64, u64, u32, String)> {
        (
            tricky_bytes(),
            prop_oneof![
                Just(i64::MIN),
                Just(-1i64),
                Just(0i64),
                Just(i64::MAX),
                any::<i64>()
            ],
            any::<u64>(),
            any::<u32>(),
            "[a\\x00\\u{ff}z]{0,4}",
        )
    }

    proptest! {
        #[test]
        fn roundtrip(t in tuple()) {
            prop_assert_eq!(decode(&encode(&t)), t);
        }

        #[test]
        fn order_preserved(a in tuple(), b in tuple()) {
            prop_assert_eq!(a.cmp(&b), encode(&a).cmp(&encode(&b)));
        }

        #[test]
        fn history_pos_order(a in any::<(i64, u64, u32)>(), b in any::<(i64, u64, u32)>()) {
            let pa = HistoryPos { timestamp_ms: a.0, seq: a.1, index: a.2 };
            let pb = HistoryPos { timestamp_ms: b.0, seq: b.1, index: b.2 };
            let (ka, kb) = (history_key("u", pa), history_key("u", pb));
            prop_assert_eq!(pa.cmp(&pb), ka.cmp(&kb));
            let plen = history_prefix("u").len();
            prop_assert_eq!(HistoryPos::read(&ka[plen..]).unwrap(), pa);
        }
    }

    #[test]
    fn user_prefixes_do_not_overlap() {
        // "a" must not be a byte prefix of "a\0b"'s history keys, or a scan of "a" would leak.
        let a = history_prefix("a");
        let k = history_key(
            "a\0b",
            HistoryPos {
                timestamp_ms: 0,
                seq: 1,
                index: 0,
            },
        );
        assert!(!k.starts_with(&a));
        let k2 = history_key(
            "ab",
            HistoryPos {
                timestamp_ms: 0,
                seq: 1,
                index: 0,
            },
        );
        assert!(!k2.starts_with(&a));
    }

    #[test]
    fn malformed_keys_are_errors() {
        assert!(KeyReader::new(&[0x00, 0x05]).bytes().is_err());
        assert!(KeyReader::new(&[1, 2, 3]).u64().is_err());
        assert!(HistoryPos::read(&[0; 21]).is_err());
    }
}
