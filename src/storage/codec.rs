//! Versioned binary record format for values in sled and in the write-ahead log.
//!
//! Every stored value starts with a one-byte format version. Readers accept the versions they
//! know and answer anything else (and any truncated or malformed value) with
//! [`Error::DataLoss`] naming what was being decoded: a damaged file is a clear error, never a
//! panic. Integers are little-endian; strings and byte strings are length-prefixed (`u32`).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::types::{
    CollectionConfig, InteractionRecord, ItemRecord, Metric, Modality, SemanticId, UserRecord,
};

/// The record format written by this version of sidb.
pub const RECORD_VERSION: u8 = 1;

/// An append-only encoder.
#[derive(Default)]
pub struct Enc {
    /// The bytes so far.
    pub buf: Vec<u8>,
}

impl Enc {
    /// A new encoder whose first byte is the record format version.
    pub fn versioned() -> Self {
        Enc {
            buf: vec![RECORD_VERSION],
        }
    }
    /// Appends a byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends an `i64`.
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends an `f32`.
    pub fn f32(&mut self, v: f32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a length-prefixed string.
    pub fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
    }
    /// Appends a length-prefixed vector of `f32`.
    pub fn f32s(&mut self, v: &[f32]) {
        self.u32(v.len() as u32);
        self.buf.reserve(v.len() * 4);
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
}

/// A decoder over one value; `what` names the value in error messages.
pub struct Dec<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Dec<'a> {
    /// Decodes `buf`, checking the leading format version.
    pub fn versioned(buf: &'a [u8], what: &'static str) -> Result<Self> {
        let mut d = Dec { buf, what };
        match d.u8()? {
            RECORD_VERSION => Ok(d),
            v => Err(Error::DataLoss(format!(
                "{what}: unknown record format version {v}"
            ))),
        }
    }

    /// Decodes `buf` that has no version byte (it is part of a versioned envelope).
    pub fn raw(buf: &'a [u8], what: &'static str) -> Self {
        Dec { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::DataLoss(format!(
                "{}: record truncated (wanted {n} bytes, {} left)",
                self.what,
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    /// Reads a byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    /// Reads a `u32`.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    /// Reads a `u64`.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// Reads an `i64`.
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// Reads an `f32`.
    pub fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    /// Reads a count that announces `elem` bytes per element, refusing counts larger than what is
    /// left (so a corrupt length cannot make us allocate gigabytes).
    pub(crate) fn count(&mut self, elem: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(elem) > self.buf.len() {
            return Err(Error::DataLoss(format!(
                "{}: length {n} exceeds the {} bytes left",
                self.what,
                self.buf.len()
            )));
        }
        Ok(n)
    }
    /// Reads a length-prefixed string.
    pub fn str(&mut self) -> Result<String> {
        let n = self.count(1)?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::DataLoss(format!("{}: string is not UTF-8", self.what)))
    }
    /// Reads a length-prefixed vector of `f32`.
    pub fn f32s(&mut self) -> Result<Vec<f32>> {
        let n = self.count(4)?;
        let b = self.take(n * 4)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::DataLoss(format!(
                "{}: {} unexpected trailing bytes",
                self.what,
                self.buf.len()
            )))
        }
    }
    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

fn put_attrs(e: &mut Enc, attrs: &BTreeMap<String, String>) {
    e.u32(attrs.len() as u32);
    for (k, v) in attrs {
        e.str(k);
        e.str(v);
    }
}

fn get_attrs(d: &mut Dec) -> Result<BTreeMap<String, String>> {
    let n = d.count(8)?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let k = d.str()?;
        m.insert(k, d.str()?);
    }
    Ok(m)
}

fn put_sid(e: &mut Enc, sid: &Option<SemanticId>) {
    match sid {
        None => e.u8(0),
        Some(s) => {
            e.u8(1);
            e.u32(s.codes.len() as u32);
            for c in &s.codes {
                e.u32(*c);
            }
            e.u32(s.suffix);
            e.u64(s.model_version);
        }
    }
}

fn get_sid(d: &mut Dec) -> Result<Option<SemanticId>> {
    match d.u8()? {
        0 => Ok(None),
        1 => {
            let n = d.count(4)?;
            let codes = (0..n).map(|_| d.u32()).collect::<Result<Vec<_>>>()?;
            Ok(Some(SemanticId {
                codes,
                suffix: d.u32()?,
                model_version: d.u64()?,
            }))
        }
        t => Err(Error::DataLoss(format!("{}: bad SID tag {t}", d.what))),
    }
}

/// Encodes an item's body (no version byte).
pub fn put_item(e: &mut Enc, it: &ItemRecord) {
    e.str(&it.id);
    e.u32(it.vectors.len() as u32);
    for v in &it.vectors {
        e.f32s(v);
    }
    put_attrs(e, &it.attributes);
    put_sid(e, &it.sid);
}

/// Decodes an item's body.
pub fn get_item(d: &mut Dec) -> Result<ItemRecord> {
    let id = d.str()?;
    let n = d.count(4)?;
    let vectors = (0..n).map(|_| d.f32s()).collect::<Result<Vec<_>>>()?;
    Ok(ItemRecord {
        id,
        vectors,
        attributes: get_attrs(d)?,
        sid: get_sid(d)?,
    })
}

/// Encodes a user's body.
pub fn put_user(e: &mut Enc, u: &UserRecord) {
    e.str(&u.id);
    match &u.vector {
        None => e.u8(0),
        Some(v) => {
            e.u8(1);
            e.f32s(v);
        }
    }
    put_attrs(e, &u.attributes);
    put_sid(e, &u.sid);
}

/// Decodes a user's body.
pub fn get_user(d: &mut Dec) -> Result<UserRecord> {
    let id = d.str()?;
    let vector = match d.u8()? {
        0 => None,
        1 => Some(d.f32s()?),
        t => return Err(Error::DataLoss(format!("user record: bad vector tag {t}"))),
    };
    Ok(UserRecord {
        id,
        vector,
        attributes: get_attrs(d)?,
        sid: get_sid(d)?,
    })
}

/// Encodes an interaction's body.
pub fn put_interaction(e: &mut Enc, x: &InteractionRecord) {
    e.str(&x.user_id);
    e.str(&x.item_id);
    e.str(&x.kind);
    e.f32(x.weight);
    e.i64(x.timestamp_ms);
    e.u64(x.sequence);
}

/// Decodes an interaction's body.
pub fn get_interaction(d: &mut Dec) -> Result<InteractionRecord> {
    Ok(InteractionRecord {
        user_id: d.str()?,
        item_id: d.str()?,
        kind: d.str()?,
        weight: d.f32()?,
        timestamp_ms: d.i64()?,
        sequence: d.u64()?,
    })
}

/// A whole versioned value holding one record of type `T`.
pub fn encode_value<T>(x: &T, put: fn(&mut Enc, &T)) -> Vec<u8> {
    let mut e = Enc::versioned();
    put(&mut e, x);
    e.buf
}

/// Decodes a whole versioned value holding one record.
pub fn decode_value<T>(
    buf: &[u8],
    what: &'static str,
    get: fn(&mut Dec) -> Result<T>,
) -> Result<T> {
    let mut d = Dec::versioned(buf, what)?;
    let x = get(&mut d)?;
    d.finish()?;
    Ok(x)
}

fn metric_tag(m: Metric) -> u8 {
    match m {
        Metric::Cosine => 1,
        Metric::Dot => 2,
        Metric::L2 => 3,
    }
}

/// Encodes a collection config.
pub fn put_config(e: &mut Enc, c: &CollectionConfig) {
    e.u32(c.item_modalities.len() as u32);
    for m in &c.item_modalities {
        e.str(&m.name);
        e.u32(m.dim);
    }
    e.u32(c.user_dim);
    e.u8(metric_tag(c.metric));
    e.u32(c.sid_levels);
    e.u32(c.sid_codebook_size);
}

/// Decodes a collection config.
pub fn get_config(d: &mut Dec) -> Result<CollectionConfig> {
    let n = d.count(8)?;
    let mut item_modalities = Vec::with_capacity(n);
    for _ in 0..n {
        let name = d.str()?;
        item_modalities.push(Modality {
            name,
            dim: d.u32()?,
        });
    }
    let user_dim = d.u32()?;
    let metric = match d.u8()? {
        1 => Metric::Cosine,
        2 => Metric::Dot,
        3 => Metric::L2,
        t => {
            return Err(Error::DataLoss(format!(
                "collection config: bad metric {t}"
            )))
        }
    };
    Ok(CollectionConfig {
        item_modalities,
        user_dim,
        metric,
        sid_levels: d.u32()?,
        sid_codebook_size: d.u32()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> ItemRecord {
        ItemRecord {
            id: "it-1".into(),
            vectors: vec![vec![1.0, -2.5], vec![0.0; 3]],
            attributes: [("k".to_string(), "v".to_string())].into(),
            sid: Some(SemanticId {
                codes: vec![1, 2, 3],
                suffix: 4,
                model_version: 5,
            }),
        }
    }

    #[test]
    fn item_roundtrip() {
        let v = encode_value(&item(), put_item);
        assert_eq!(decode_value(&v, "item", get_item).unwrap(), item());
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let v = encode_value(&item(), put_item);
        for cut in 0..v.len() {
            let err = decode_value(&v[..cut], "item", get_item).unwrap_err();
            assert!(matches!(err, Error::DataLoss(_)), "cut {cut}: {err:?}");
        }
    }

    #[test]
    fn unknown_version_and_trailing_bytes_are_rejected() {
        let mut v = encode_value(&item(), put_item);
        v.push(0);
        assert!(decode_value(&v, "item", get_item).is_err());
        v.pop();
        v[0] = 99;
        let err = decode_value(&v, "item", get_item).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }

    #[test]
    fn huge_length_does_not_allocate() {
        // version, id length = u32::MAX
        let v = [RECORD_VERSION, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode_value(&v, "item", get_item).is_err());
    }
}
