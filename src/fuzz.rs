//! Fuzz targets: every decoder of bytes that come from disk or from a client, as functions of
//! arbitrary input. Each must return an error for bad input and never panic; where it accepts an
//! input, encoding what it decoded must be a fixed point (decode . encode gives the same bytes).
//!
//! The same functions serve `cargo fuzz` (`fuzz/fuzz_targets/*.rs`, run as documented in
//! `fuzz/README.md`) and the bounded run of the test suite (`fuzz::tests`), which feeds each
//! target seeded mutations of valid encodings. Compiled for tests and with the `fuzz` feature.

use std::path::Path;

use crate::storage::codec;
use crate::storage::keys::{HistoryPos, KeyReader};
use crate::storage::models::{parse_sid_key, VersionRecord};
use crate::storage::ops::{LogEntry, Meta};
use crate::storage::watermark::Watermark;
use crate::storage::{wal, CatalogEntry};
use crate::trie::Cursor;

/// Asserts that `decode` accepts what `encode` made of its own output, giving the same bytes.
fn fixed_point<T>(
    first: T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> crate::error::Result<T>,
) {
    let once = encode(&first);
    let again = decode(&once).expect("a re-encoded value decodes");
    assert_eq!(encode(&again), once, "encoding is not a fixed point");
}

/// Key decoding: history positions, model-SID keys, escaped strings and integers.
pub fn keys(data: &[u8]) {
    if let Ok(pos) = HistoryPos::read(data) {
        let mut k = Vec::new();
        pos.append_to(&mut k);
        assert_eq!(HistoryPos::read(&k).expect("own encoding"), pos);
    }
    if let Ok((version, kind, id)) = parse_sid_key(data) {
        let key = crate::storage::models::sid_key(version, kind, &id);
        assert_eq!(
            parse_sid_key(&key).expect("own encoding"),
            (version, kind, id)
        );
    }
    let mut r = KeyReader::new(data);
    while !r.rest().is_empty() {
        let ok = match r.rest()[0] % 5 {
            0 => r.u8().is_ok(),
            1 => r.u32().is_ok(),
            2 => r.u64().is_ok(),
            3 => r.bytes().is_ok(),
            _ => r.string().is_ok(),
        };
        if !ok {
            break;
        }
    }
}

/// Record decoding: every value kind sled holds, the log entry and the watermark.
pub fn records(data: &[u8]) {
    macro_rules! value {
        ($get:path, $put:path) => {
            if let Ok(x) = codec::decode_value(data, "fuzz", $get) {
                fixed_point(
                    x,
                    |x| codec::encode_value(x, $put),
                    |b| codec::decode_value(b, "fuzz", $get),
                );
            }
        };
    }
    value!(codec::get_item, codec::put_item);
    value!(codec::get_user, codec::put_user);
    value!(codec::get_interaction, codec::put_interaction);
    if let Ok(x) = Meta::decode(data) {
        fixed_point(x, Meta::encode, Meta::decode);
    }
    if let Ok(x) = LogEntry::decode(data) {
        fixed_point(x, LogEntry::encode, LogEntry::decode);
    }
    if let Ok(x) = VersionRecord::decode(data) {
        fixed_point(x, VersionRecord::encode, VersionRecord::decode);
    }
    if let Ok(x) = CatalogEntry::decode(data) {
        fixed_point(x, CatalogEntry::encode, CatalogEntry::decode);
    }
    let file = Path::new("fuzz/watermark");
    if let Ok(x) = Watermark::decode(data, file) {
        fixed_point(x, Watermark::encode, |b| Watermark::decode(b, file));
    }
}

/// WAL replay of a segment's bytes, as the newest segment and as a closed one. Every frame it
/// hands out was checksummed; a closed segment that replays must replay the same frames as the
/// newest would, with no torn tail.
pub fn wal_replay(data: &[u8]) {
    let mut as_last = Vec::new();
    let last = wal::replay_bytes(data, "fuzz.wal", true, |p| {
        as_last.push(p.to_vec());
        Ok(())
    });
    let mut as_closed = Vec::new();
    let closed = wal::replay_bytes(data, "fuzz.wal", false, |p| {
        as_closed.push(p.to_vec());
        Ok(())
    });
    if closed.is_ok() {
        assert_eq!(
            last.ok(),
            Some(0),
            "a good closed segment has no torn tail as the last"
        );
        assert_eq!(as_closed, as_last);
    }
}

/// Page tokens of GetUserHistory and of PrefixScan.
pub fn page_tokens(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Some(pos)) = crate::engine::decode_history_token(token) {
        let again = crate::engine::encode_history_token(pos);
        // One position, one token (hex digits in either case): anything else is malformed.
        assert!(
            again.eq_ignore_ascii_case(token),
            "{token:?} accepted as {again:?}"
        );
        let back = crate::engine::decode_history_token(&again).expect("own token");
        assert_eq!(back, Some(pos));
    }
    if let Ok(c) = Cursor::from_token(token) {
        assert_eq!(Cursor::from_token(&c.to_token()).expect("own token"), c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Inputs per target of the bounded run (`cargo fuzz` runs are open-ended).
    const RUNS: usize = 20_000;

    /// Valid encodings to mutate: each decoder's own output, so mutations reach deep paths.
    fn seeds() -> Vec<Vec<u8>> {
        use crate::types::{InteractionRecord, ItemRecord, SemanticId};
        let item = ItemRecord {
            id: "item-7".into(),
            vectors: vec![vec![1.0, -2.5], vec![0.25]],
            attributes: [("title".to_string(), "Heat".to_string())].into(),
            sid: Some(SemanticId {
                codes: vec![3, 1, 4],
                suffix: 2,
                model_version: 5,
            }),
        };
        let x = InteractionRecord {
            user_id: "u".into(),
            item_id: "i".into(),
            kind: "click".into(),
            weight: 1.0,
            timestamp_ms: -3,
            sequence: 9,
        };
        let entry = LogEntry {
            collection: 1,
            seq: 2,
            op: crate::storage::ops::WriteOp::UpsertItems(vec![item.clone()]),
        };
        let mut segment = b"SIDBWAL2".to_vec();
        for payload in [entry.encode(), vec![7; 5]] {
            let mut body = (payload.len() as u32).to_le_bytes().to_vec();
            body.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            body.extend_from_slice(&payload);
            segment.extend_from_slice(&wal::batch_header(&body));
            segment.extend_from_slice(&body);
        }
        let pos = HistoryPos {
            timestamp_ms: 12,
            seq: 3,
            index: 1,
        };
        let mut history = Vec::new();
        pos.append_to(&mut history);
        let sid = SemanticId {
            codes: vec![3, 9],
            suffix: 1,
            model_version: 2,
        };
        let cursor = Cursor::after(&[3], &sid, &std::sync::Arc::from("item-7"));
        vec![
            codec::encode_value(&item, codec::put_item),
            codec::encode_value(&x, codec::put_interaction),
            Meta::default().encode(),
            entry.encode(),
            segment,
            history,
            crate::storage::models::sid_key(4, crate::types::EntityKind::Users, "u\0x"),
            crate::engine::encode_history_token(pos).into_bytes(),
            cursor.to_token().into_bytes(),
        ]
    }

    fn mutate(rng: &mut rand_chacha::ChaCha8Rng, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..rng.random_range(1..4) {
            match rng.random_range(0..5) {
                0 if !v.is_empty() => {
                    let i = rng.random_range(0..v.len());
                    v[i] ^= 1 << rng.random_range(0..8);
                }
                1 if !v.is_empty() => {
                    let i = rng.random_range(0..v.len());
                    v[i] = rng.random();
                }
                2 => v.truncate(rng.random_range(0..=v.len())),
                3 => {
                    let i = rng.random_range(0..=v.len());
                    v.insert(i, rng.random());
                }
                _ if !v.is_empty() => {
                    // Hex tokens: a flipped character stays in the alphabet more often.
                    let i = rng.random_range(0..v.len());
                    v[i] = b"0123456789abcdefAF+-. "[rng.random_range(0..22)];
                }
                _ => {}
            }
        }
        v
    }

    #[test]
    fn bounded_fuzz_run_of_every_target() {
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 4] = [
            ("keys", keys),
            ("records", records),
            ("wal_replay", wal_replay),
            ("page_tokens", page_tokens),
        ];
        let seeds = seeds();
        for (name, target) in targets {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
            for seed in &seeds {
                target(seed);
            }
            for _ in 0..RUNS {
                let seed = &seeds[rng.random_range(0..seeds.len())];
                target(&mutate(&mut rng, seed));
            }
            eprintln!("fuzz {name}: {} inputs, 0 panics", RUNS + seeds.len());
        }
    }
}
