//! Semantic IDs made outside sidb (a peer's item tokenizer, e.g. Cornac's TIGER RQ-VAE and
//! residual k-means: `benches/peers/cornac/`), read from a directory and scored by `sidb eval`
//! with the metrics of the SID methods trained here (method `sids:NAME`).
//!
//! A tokenizer of items has no user side. A user's `z` is the recency-weighted mean of its train
//! items' `z`s (the weights of its profile input), in the space the books quantize; its codes
//! (for the probe) are its greedy route through the books. The item codes, `z`s and books are
//! the tokenizer's own.
//!
//! The layout (`DIR/`), all little-endian, rows in `item_idx` order:
//!
//! | file | content |
//! |---|---|
//! | `sids.json` | `{"format": "sidb-external-sids-1", "tokenizer", "levels", "codes", "dim", "items", ...}` |
//! | `codes.u32` | `items x levels` codes, each `< codes` |
//! | `z.f32` | `items x dim`: the vector each item's codes quantize |
//! | `books.f32` | `levels x codes x dim`: the residual codebooks |
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::recommend;
use crate::model::{ModelError, Result};

/// The `format` of `sids.json`.
pub const FORMAT: &str = "sidb-external-sids-1";

/// What `sids.json` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalMeta {
    /// [`FORMAT`].
    pub format: String,
    /// Which tokenizer made them, e.g. `tiger-rqvae`.
    pub tokenizer: String,
    /// Package versions that made them (documentation).
    #[serde(default)]
    pub source: String,
    /// Residual levels.
    pub levels: usize,
    /// Codes per level.
    pub codes: usize,
    /// Dimension of `z` and of the codebooks.
    pub dim: usize,
    /// Items (rows).
    pub items: usize,
    /// The tokenizer's seed (documentation).
    #[serde(default)]
    pub seed: u64,
    /// Seconds the tokenizer trained (reported as the method's training time).
    #[serde(default)]
    pub seconds: f64,
}

/// One external SID set, checked against the data set it claims to tokenize.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalSids {
    /// `sids.json`.
    pub meta: ExternalMeta,
    /// `items x levels` codes.
    pub codes: Vec<u32>,
    /// `items x dim` vectors.
    pub z: Vec<f32>,
    /// `levels` books of `codes x dim`.
    pub books: Vec<Vec<f32>>,
}

fn format_error(path: &Path, reason: String) -> ModelError {
    ModelError::Format {
        path: path.display().to_string(),
        reason,
    }
}

/// The whole of `path`, which must hold exactly `rows x width` 4-byte values.
fn read_words(path: &Path, rows: usize, width: usize) -> Result<Vec<[u8; 4]>> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let want = rows.checked_mul(width).and_then(|n| n.checked_mul(4));
    if want != Some(bytes.len()) {
        return Err(format_error(
            path,
            format!(
                "{} bytes, expected {rows} x {width} 4-byte values ({} bytes)",
                bytes.len(),
                want.map_or("too many".into(), |n| n.to_string())
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect())
}

fn read_floats(path: &Path, rows: usize, width: usize) -> Result<Vec<f32>> {
    let v: Vec<f32> = read_words(path, rows, width)?
        .into_iter()
        .map(f32::from_le_bytes)
        .collect();
    if let Some(at) = v.iter().position(|x| !x.is_finite()) {
        return Err(format_error(
            path,
            format!(
                "value {at} (row {}) is not finite: {}",
                at / width.max(1),
                v[at]
            ),
        ));
    }
    Ok(v)
}

impl ExternalSids {
    /// Reads and checks `dir` for a catalogue of `n_items` items: every size, every code below
    /// `codes`, every float finite; anything else is an error naming the file.
    pub fn load(dir: &Path, n_items: usize) -> Result<Self> {
        let path = dir.join("sids.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let meta: ExternalMeta = serde_json::from_str(&text)
            .map_err(|e| format_error(&path, format!("not a SID set description: {e}")))?;
        let bad = |reason: String| Err(format_error(&path, reason));
        if meta.format != FORMAT {
            let shown: String = meta.format.chars().take(40).collect();
            return bad(format!("format {shown:?}, expected {FORMAT:?}"));
        }
        if !(1..=16).contains(&meta.levels) {
            return bad(format!("levels: expected 1..=16, got {}", meta.levels));
        }
        if !(1..=65_536).contains(&meta.codes) {
            return bad(format!("codes: expected 1..=65536, got {}", meta.codes));
        }
        if !(1..=4096).contains(&meta.dim) {
            return bad(format!("dim: expected 1..=4096, got {}", meta.dim));
        }
        if meta.items != n_items {
            return bad(format!(
                "items: {} rows, but the data set has {n_items} items",
                meta.items
            ));
        }
        let codes_path = dir.join("codes.u32");
        let codes: Vec<u32> = read_words(&codes_path, meta.items, meta.levels)?
            .into_iter()
            .map(u32::from_le_bytes)
            .collect();
        if let Some(at) = codes.iter().position(|&c| c as usize >= meta.codes) {
            return Err(format_error(
                &codes_path,
                format!(
                    "item {} level {}: code {} is not below {}",
                    at / meta.levels,
                    at % meta.levels,
                    codes[at],
                    meta.codes
                ),
            ));
        }
        let z = read_floats(&dir.join("z.f32"), meta.items, meta.dim)?;
        let books = read_floats(&dir.join("books.f32"), meta.levels * meta.codes, meta.dim)?
            .chunks(meta.codes * meta.dim)
            .map(<[f32]>::to_vec)
            .collect();
        Ok(Self {
            meta,
            codes,
            z,
            books,
        })
    }

    /// Writes the set in the layout [`ExternalSids::load`] reads.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |path: &Path, e: std::io::Error| ModelError::Io {
            path: path.display().to_string(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let write = |name: &str, bytes: Vec<u8>| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).map_err(|e| io(&p, e))
        };
        write(
            "sids.json",
            serde_json::to_vec_pretty(&self.meta).expect("plain data"),
        )?;
        write(
            "codes.u32",
            self.codes.iter().flat_map(|c| c.to_le_bytes()).collect(),
        )?;
        write(
            "z.f32",
            self.z.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )?;
        write(
            "books.f32",
            self.books
                .iter()
                .flatten()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        )
    }

    /// The `z` of each user: the `weights`-weighted mean of its items' `z`s (`recent[u]` =
    /// `(item, weight)`); zeros for a user without items.
    pub fn user_z(&self, recent: &[Vec<(u32, f32)>]) -> Vec<f32> {
        let d = self.meta.dim;
        let mut out = vec![0.0f32; recent.len() * d];
        for (row, items) in out.chunks_mut(d).zip(recent) {
            let total: f32 = items.iter().map(|(_, w)| w).sum();
            if total <= 0.0 {
                continue;
            }
            for &(i, w) in items {
                let z = &self.z[i as usize * d..][..d];
                row.iter_mut().zip(z).for_each(|(a, b)| *a += w / total * b);
            }
        }
        out
    }

    /// Greedy codes of each row of `z` (`n x dim`) through the books: the nearest code of each
    /// level to what remains (a user's codes for the probe), the route beam of width 1.
    pub fn route(&self, z: &[f32]) -> Vec<u32> {
        let d = self.meta.dim;
        z.chunks(d)
            .flat_map(|row| {
                let beam = recommend::beam_over_books(&self.books, d, row.to_vec(), 1, &|_| 1);
                beam.last().map_or(Vec::new(), |level| level[0].0.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> ExternalSids {
        // 2 levels x 2 codes in 2-d; level 1 splits by x, level 2 by y
        ExternalSids {
            meta: ExternalMeta {
                format: FORMAT.into(),
                tokenizer: "toy".into(),
                source: String::new(),
                levels: 2,
                codes: 2,
                dim: 2,
                items: 3,
                seed: 1,
                seconds: 0.5,
            },
            codes: vec![0, 0, 1, 1, 1, 0],
            z: vec![-1.0, -0.1, 1.0, 0.1, 1.0, -0.1],
            books: vec![vec![-1.0, 0.0, 1.0, 0.0], vec![0.0, -0.1, 0.0, 0.1]],
        }
    }

    #[test]
    fn a_set_round_trips_and_routes_users_by_their_items() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = toy();
        s.save(dir.path()).expect("save");
        let back = ExternalSids::load(dir.path(), 3).expect("load");
        assert_eq!(back, s);
        // user 0 holds item 0 only; user 1 items 1 and 2 (weights 3:1); user 2 none
        let z = s.user_z(&[vec![(0, 1.0)], vec![(1, 3.0), (2, 1.0)], vec![]]);
        assert_eq!(&z[..2], &[-1.0, -0.1]);
        assert!((z[2] - 1.0).abs() < 1e-6 && (z[3] - 0.05).abs() < 1e-6);
        assert_eq!(&z[4..], &[0.0, 0.0]);
        assert_eq!(s.route(&z[..4]), vec![0, 0, 1, 1]);
    }

    #[test]
    fn every_damage_is_refused_naming_the_file() {
        let s = toy();
        let dir = tempfile::tempdir().expect("tmp");
        let load_after = |edit: &dyn Fn(&Path), n_items: usize| {
            s.save(dir.path()).expect("save");
            edit(dir.path());
            ExternalSids::load(dir.path(), n_items).map_err(|e| e.to_string())
        };
        assert!(load_after(&|_| {}, 3).is_ok());
        let refused = |edit: &dyn Fn(&Path), n_items: usize, file: &str, what: &str| {
            let e = load_after(edit, n_items).expect_err("damaged");
            assert!(e.contains(file) && e.contains(what), "{e}");
        };
        let put = |name: &'static str, bytes: Vec<u8>| {
            move |d: &Path| std::fs::write(d.join(name), &bytes).expect("write")
        };
        refused(&|_| {}, 4, "sids.json", "the data set has 4 items");
        let other = String::from_utf8(serde_json::to_vec(&s.meta).expect("json"))
            .expect("utf-8")
            .replace(FORMAT, "sidb-external-sids-9");
        refused(
            &put("sids.json", other.into_bytes()),
            3,
            "sids.json",
            "format",
        );
        refused(
            &put("sids.json", b"{".to_vec()),
            3,
            "sids.json",
            "description",
        );
        let mut codes: Vec<u8> = s.codes.iter().flat_map(|c| c.to_le_bytes()).collect();
        codes[8] = 2;
        refused(
            &put("codes.u32", codes),
            3,
            "codes.u32",
            "item 1 level 0: code 2",
        );
        let z: Vec<u8> = s.z.iter().flat_map(|x| x.to_le_bytes()).collect();
        refused(&put("z.f32", z[..20].to_vec()), 3, "z.f32", "20 bytes");
        let mut books: Vec<u8> = s
            .books
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        books[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        refused(&put("books.f32", books), 3, "books.f32", "not finite");
        refused(
            &|d: &Path| std::fs::remove_file(d.join("z.f32")).expect("rm"),
            3,
            "z.f32",
            "io error",
        );
    }
}
