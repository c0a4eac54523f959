//! Scan cursors and their opaque `page_token` form.
//!
//! A cursor is the last key a page returned, plus the prefix it was issued for (a token from
//! another prefix is rejected instead of silently scanning the wrong bucket). The token is the
//! lowercase hex of a small versioned binary record ending in a CRC32, so a truncated, edited or
//! foreign token is refused with `InvalidArgument` naming `page_token`, never misread.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::types::SemanticId;

/// Format version byte of a token.
const VERSION: u8 = 1;
/// Longest code list a token may carry (SIDs have a handful of levels).
const MAX_CODES: usize = 1 << 16;
/// Longest id a token may carry, in bytes.
const MAX_ID_BYTES: usize = 1 << 20;

/// Where the next page of a prefix scan starts: strictly after this key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    prefix: Vec<u32>,
    codes: Vec<u32>,
    suffix: u32,
    id: Arc<str>,
}

impl Cursor {
    /// The cursor after the entity `(sid, id)` in a scan of `prefix`.
    pub(crate) fn after(prefix: &[u32], sid: &SemanticId, id: &Arc<str>) -> Self {
        Cursor {
            prefix: prefix.to_vec(),
            codes: sid.codes.clone(),
            suffix: sid.suffix,
            id: Arc::clone(id),
        }
    }

    /// The ordering key this cursor stands after.
    pub(super) fn key(&self) -> (Vec<u32>, u32, Arc<str>) {
        (self.codes.clone(), self.suffix, Arc::clone(&self.id))
    }

    /// Fails unless this cursor was issued for `prefix`.
    pub(super) fn check_prefix(&self, prefix: &[u32]) -> Result<()> {
        if self.prefix == prefix {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "page_token was issued for prefix {}, not {}",
                show_codes(&self.prefix),
                show_codes(prefix)
            )))
        }
    }

    /// The opaque token form, for a `page_token` field.
    pub fn to_token(&self) -> String {
        let mut b = vec![VERSION];
        put_codes(&mut b, &self.prefix);
        put_codes(&mut b, &self.codes);
        b.extend_from_slice(&self.suffix.to_be_bytes());
        put_len(&mut b, self.id.len());
        b.extend_from_slice(self.id.as_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Parses a token made by [`to_token`](Self::to_token). Anything else is `InvalidArgument`.
    pub fn from_token(token: &str) -> Result<Self> {
        let bytes = unhex(token)?;
        let (body, crc) = bytes
            .split_last_chunk::<4>()
            .ok_or_else(|| bad("too short"))?;
        if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
            return Err(bad("checksum mismatch"));
        }
        let mut r = Reader(body);
        if r.take(1)? != [VERSION] {
            return Err(bad("unknown version"));
        }
        let prefix = r.codes()?;
        let codes = r.codes()?;
        let suffix = r.u32()?;
        let id_len = r.len(MAX_ID_BYTES)?;
        let id = std::str::from_utf8(r.take(id_len)?).map_err(|_| bad("id is not UTF-8"))?;
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        if !codes.starts_with(&prefix) {
            return Err(bad("position outside its prefix"));
        }
        Ok(Cursor {
            prefix,
            codes,
            suffix,
            id: Arc::from(id),
        })
    }
}

/// A code list for an error message: whole when short, else its head and its length (a token
/// may carry up to [`MAX_CODES`] codes).
fn show_codes(codes: &[u32]) -> String {
    const SHOWN: usize = 16;
    if codes.len() <= SHOWN {
        return format!("{codes:?}");
    }
    let head: Vec<String> = codes[..SHOWN].iter().map(u32::to_string).collect();
    format!("[{}, …] ({} codes)", head.join(", "), codes.len())
}

fn bad(why: &str) -> Error {
    Error::invalid(format!("page_token is malformed: {why}"))
}

fn put_len(b: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).expect("in-memory ids and code lists are under 4 GiB");
    b.extend_from_slice(&len.to_be_bytes());
}

fn put_codes(b: &mut Vec<u8>, codes: &[u32]) {
    put_len(b, codes.len());
    for c in codes {
        b.extend_from_slice(&c.to_be_bytes());
    }
}

/// Strict lowercase hex decoding.
fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return Err(bad("odd length"));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(bad("not lowercase hex")),
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// A bounds-checked reader over the token body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn len(&mut self, max: usize) -> Result<usize> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(bad("length out of range"));
        }
        Ok(len)
    }

    fn codes(&mut self) -> Result<Vec<u32>> {
        let n = self.len(MAX_CODES)?;
        (0..n).map(|_| self.u32()).collect()
    }
}
