"""The ID comparison of `sidb eval` reports (JSON, one or more): per data set and method, mean ±
sd over the seeds of R@10 (a) (Recommend; the ranking itself for the methods without SIDs),
NDCG@10 (a), R@10 (b) (z over all items) and, for the SID methods, the code-cross AUC probe, the
collision rate and the code use per level.

usage: python3 report.py REPORT.json [REPORT.json ...]
"""
import json
import statistics as st
import sys


def ms(xs, digits=4):
    sd = st.stdev(xs) if len(xs) > 1 else 0.0
    return f"{st.mean(xs):.{digits}f} ± {sd:.{digits}f}"


def main():
    rows = {}
    for path in sys.argv[1:]:
        d = json.load(open(path))
        for run in d.get("runs", [d]):
            label = run["dataset"] + (" implicit" if run.get("min_rating", 4) == 0 else "")
            label += " timeless" if run.get("timeless") else ""
            for r in run["results"]:
                rows.setdefault((label, r["method"]), []).append(r)
    print("| data set | method | seeds | R@10 (a) | NDCG@10 (a) | R@10 (b) | AUC probe | collisions | code use L1/L2/L3 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (label, method), rs in rows.items():
        cells = [ms([r["recall@10"] for r in rs]), ms([r["ndcg@10"] for r in rs])]
        if rs[0].get("auc_probe") is None:
            cells += ["-"] * 4
        else:
            levels = range(len(rs[0]["level_usage"]))
            cells += [
                ms([r["recall@10_z"] for r in rs]),
                ms([r["auc_probe"] for r in rs]),
                f"{st.mean(r['collision_rate'] for r in rs):.4f}",
                "/".join(f"{st.mean(r['level_usage'][l] for r in rs):.3f}" for l in levels),
            ]
        print(f"| {label} | {method} | {len(rs)} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
