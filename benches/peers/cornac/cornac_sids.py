"""Semantic IDs of a data set's items by Cornac's TIGER tokenizers, for `sidb eval --methods sids:NAME`.

usage: cornac_sids.py DATA_DIR TOKENIZER LEVELS CODES SEED OUT_DIR

DATA_DIR is a data set in sidb's layout (docs/dataset-format.md: item_emb.f32 + item_emb.json).
TOKENIZER is one of
  tiger-rqvae    Cornac's TIGER RQ-VAE with its constructor defaults (the paper's architecture:
                 MLP 512-256-128, latent 32, beta 0.25, AdamW lr 1e-3, batch 1024, 200 epochs,
                 k-means codebook init, dead-code restarts)
  tiger-rkmeans  Cornac's residual k-means tokenizer (GRID's recipe: no gradient training)
Both run the package's own code (cornac.models.tiger), seeded the way TIGER.fit seeds it, on the
item vectors sidb trains on, with sidb's levels x codes. OUT_DIR receives the external SID set
that sidb reads (src/eval/external.rs):
  sids.json   {"format": "sidb-external-sids-1", "tokenizer", "levels", "codes", "dim", "items", ...}
  codes.u32   items x levels little-endian u32, row = item_idx
  z.f32       items x dim little-endian f32: the vector each item's codes quantize
  books.f32   levels x codes x dim little-endian f32: the codebooks (residual levels)
"""
import json
import os
import sys
import time

import numpy as np


def main():
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    data, tokenizer, levels, codes, seed, out = sys.argv[1:]
    levels, codes, seed = int(levels), int(codes), int(seed)
    import torch
    from cornac.models import TIGER

    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    dim = json.load(open(os.path.join(data, "item_emb.json")))["dim"]
    feats = np.fromfile(os.path.join(data, "item_emb.f32"), dtype="<f4").reshape(-1, dim)
    kind = {"tiger-rqvae": "rqvae", "tiger-rkmeans": "rkmeans"}[tokenizer]
    model = TIGER(tokenizer=kind, rqvae_num_levels=levels, rqvae_codebook_size=codes, seed=seed)
    # what TIGER.fit does before it tokenizes (the seq2seq stage after it is not needed here)
    torch.manual_seed(seed)
    model.device_ = "cpu"
    feats_t = torch.tensor(feats, device="cpu")
    t0 = time.time()
    ids = model._tokenize(torch, feats_t)
    seconds = time.time() - t0
    with torch.no_grad():
        if kind == "rqvae":
            z = model.rqvae.encoder(feats_t).numpy()
            books = model.rqvae.codebooks.detach().numpy()
        else:
            z = feats
            books = np.stack(model.rkmeans_centroids)
    os.makedirs(out, exist_ok=True)
    ids.astype("<u4").tofile(os.path.join(out, "codes.u32"))
    np.ascontiguousarray(z, dtype="<f4").tofile(os.path.join(out, "z.f32"))
    np.ascontiguousarray(books, dtype="<f4").tofile(os.path.join(out, "books.f32"))
    import cornac

    meta = {
        "format": "sidb-external-sids-1",
        "tokenizer": tokenizer,
        "source": f"cornac {cornac.__version__}, torch {torch.__version__}",
        "levels": levels,
        "codes": codes,
        "dim": int(z.shape[1]),
        "items": int(ids.shape[0]),
        "seed": seed,
        "seconds": round(seconds, 2),
        "threads": torch.get_num_threads(),
    }
    json.dump(meta, open(os.path.join(out, "sids.json"), "w"), indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
