"""hnswlib's side of the comparison: same files, same M / ef_construction, same ef sweep.

Usage: hnswlib_side.py DIR M EFC THREADS EFS
Build with THREADS threads; search single-threaded (num_threads=1, queries one by one in C++ via
a batch call, so Python overhead is not charged per query). Output: one JSON object per line.
"""
import json
import sys
import time

import hnswlib
import numpy as np

K = 10


def main():
    d, m, efc, threads, efs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    meta = json.load(open(f"{d}/meta.json"))
    dim = meta["dim"]
    base = np.fromfile(f"{d}/base.f32", dtype="<f4").reshape(-1, dim)
    queries = np.fromfile(f"{d}/queries.f32", dtype="<f4").reshape(-1, dim)
    gt = np.fromfile(f"{d}/gt.u32", dtype="<u4").reshape(-1, K)
    n = base.shape[0]
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=n, M=m, ef_construction=efc, random_seed=100)
    t = time.perf_counter()
    index.add_items(base, np.arange(n), num_threads=threads)
    secs = time.perf_counter() - t
    print(json.dumps({"side": "hnswlib", "n": n, "dim": dim, "threads": threads,
                      "build_s": secs, "build_per_s": n / secs}), flush=True)
    for ef in (int(e) for e in efs.split(",")):
        index.set_ef(ef)
        t = time.perf_counter()
        labels, _ = index.knn_query(queries, k=K, num_threads=1)
        secs = time.perf_counter() - t
        found = sum(len(set(labels[i]) & set(gt[i])) for i in range(len(queries)))
        print(json.dumps({"side": "hnswlib", "ef": ef, "recall": found / (len(queries) * K),
                          "qps": len(queries) / secs}), flush=True)


if __name__ == "__main__":
    main()
