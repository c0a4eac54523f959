"""Reads the JSON lines of both sides and prints the comparison table (markdown).

QPS at recall@10 = 0.95: the QPS of the fastest ef whose recall reaches the target, per side.
"""
import json
import sys

TARGET = 0.95


def summarise(rows, side):
    build = next(r for r in rows if r.get("side") == side and "build_s" in r)
    sweep = [r for r in rows if r.get("side") == side and "ef" in r]
    ok = [r for r in sweep if r["recall"] >= TARGET]
    best = max(ok, key=lambda r: r["qps"]) if ok else None
    return build, best, sweep


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
    title = sys.argv[2] if len(sys.argv) > 2 else ""
    ours = summarise(rows, "sidb")
    theirs = summarise(rows, "hnswlib")
    print(f"### {title}\n")
    print("| side | build inserts/s | QPS @ recall>=0.95 (1 thread) | ef used | recall there |")
    print("|---|---|---|---|---|")
    for name, (b, best, _) in (("sidb", ours), ("hnswlib", theirs)):
        q = f"{best['qps']:.0f} | {best['ef']} | {best['recall']:.3f}" if best else "not reached | - | -"
        print(f"| {name} | {b['build_per_s']:.0f} ({b['threads']} threads) | {q} |")
    build_ratio = ours[0]["build_per_s"] / theirs[0]["build_per_s"]
    qps_ratio = ours[1]["qps"] / theirs[1]["qps"] if ours[1] and theirs[1] else float("nan")
    print(f"\nratio ours/hnswlib: build {build_ratio:.2f}x, QPS@0.95 {qps_ratio:.2f}x\n")
    for r in rows:
        if "dump_s" in r:
            print(f"sidb dump {r['dump_s']:.2f} s, checked reload {r['load_s']:.2f} s (the sweep below runs on the reloaded index)\n")
    print("ef sweep (recall / QPS):\n")
    print("| ef | sidb recall | sidb QPS | hnswlib recall | hnswlib QPS |")
    print("|---|---|---|---|---|")
    theirs_by_ef = {r["ef"]: r for r in theirs[2]}
    for r in ours[2]:
        t = theirs_by_ef.get(r["ef"], {})
        print(f"| {r['ef']} | {r['recall']:.3f} | {r['qps']:.0f} | {t.get('recall', float('nan')):.3f} | {t.get('qps', float('nan')):.0f} |")


if __name__ == "__main__":
    main()
