#!/usr/bin/env python3
"""Filtered-search benchmark: Fathom's planner vs post-filtering on the same index vs FAISS
IVF-Flat with an IDSelector, at several selectivities, with ground truth over the matching
vectors only. Run with bench/.venv-faiss/bin/python (numpy; faiss for the peer).

  filtered.py --dataset fashion-mnist-784|pypi-minilm-384 [--queries-limit 1000] [--fathom-bin PATH]

Attributes: the dataset's real columns plus two synthetic ones added here, `u` (uniform in
[0,1), independent of the vectors) and `c` (the rank of each vector's projection on the
first principal direction, scaled to [0,1): correlated with the vectors), so `u < s` and
`c < s` select a fraction s. Writes bench/results/filtered-NAME.json.
"""
import argparse, json, os, subprocess, sys, time
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
import common  # noqa: E402

SETS = {
    "fashion-mnist-784": dict(base="base.u8bin", q="query.u8bin", metric="l2", attrs="base_labels.csv",
                              real=[("label = 3", "class 3 (10%)"), ("label IN (0,1,2,3,4)", "5 classes (50%)")]),
    "pypi-minilm-384": dict(base="base.fbin", q="query.fbin", metric="ip", attrs="base_attrs.csv",
                            real=[("year >= 2025", "recent"), ("popular = 1", "popular (~2%)"),
                                  ("n_words <= 5 AND year >= 2024", "short and recent")]),
}


def load(path):
    n, d = np.fromfile(path, dtype=np.uint32, count=2)
    dt = np.float32 if path.endswith(".fbin") else np.uint8
    return np.fromfile(path, dtype=dt, offset=8).reshape(n, d)


def write_bin(path, x):
    with open(path, "wb") as f:
        np.array(x.shape, dtype=np.uint32).tofile(f)
        x.tofile(f)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True, choices=list(SETS))
    ap.add_argument("--queries-limit", type=int, default=1000)
    ap.add_argument("--fathom-bin", default=os.path.join(HERE, "..", ".build", "release", "fathom"))
    ap.add_argument("--probes", default="4,8,16,32")
    ap.add_argument("--skip-faiss", action="store_true")
    a = ap.parse_args()
    cfg = SETS[a.dataset]
    src = os.path.join(HERE, "..", "..", "shared", "datasets", a.dataset)
    work = os.path.join(HERE, "work", "filtered-" + a.dataset)
    os.makedirs(work, exist_ok=True)
    F = a.fathom_bin
    base_path = os.path.join(src, cfg["base"])
    xb = load(base_path).astype(np.float32)
    n = xb.shape[0]
    xq = load(os.path.join(src, cfg["q"]))[: a.queries_limit]
    qpath = os.path.join(work, "query" + os.path.splitext(cfg["q"])[1])
    write_bin(qpath, xq)

    # Attributes: the real CSV plus u (independent) and c (correlated).
    rng = np.random.default_rng(7)
    u = rng.random(n)
    centred = xb - xb.mean(0)
    v = np.linalg.svd(centred[rng.choice(n, min(n, 5000), replace=False)], full_matrices=False)[2][0]
    proj = centred @ v
    c = np.argsort(np.argsort(proj)) / n
    lines = open(os.path.join(src, cfg["attrs"])).read().splitlines()
    apath = os.path.join(work, "attrs.csv")
    with open(apath, "w") as f:
        f.write(lines[0] + ",u:float,c:float\n")
        for i, line in enumerate(lines[1:]):
            f.write(f"{line},{u[i]:.6f},{c[i]:.6f}\n")

    idx = os.path.join(work, "index")
    t0 = time.time()
    if not os.path.exists(idx):
        run([F, "build", "--input", base_path, "--output", idx, "--metric", cfg["metric"], "--attributes", apath, "--quiet"])
    build_s = time.time() - t0
    filters = [(f"u < {s}", f"independent {s:.1%}") for s in (0.5, 0.1, 0.01, 0.001)]
    filters += [(f"c < {s}", f"correlated {s:.1%}") for s in (0.5, 0.1, 0.01, 0.001)]
    filters += cfg["real"]
    out = dict(dataset=a.dataset, n=n, queries=len(xq), k=10, machine=common.machine_info(),
               build_seconds=build_s, filters=[])
    for expr, label in filters:
        gt = os.path.join(work, f"gt-{abs(hash(expr)) % 10**8}.ibin")
        run([F, "gt", "--base", base_path, "--queries", qpath, "-k", "10", "--metric", cfg["metric"], "--output", gt,
             "--attributes", apath, "--filter", expr, "--quiet"])
        common.drop_caches()
        rows = json.loads(run([F, "search", "--index", idx, "--queries", qpath, "--gt", gt, "-k", "10", "--probes", a.probes,
                               "--threads", "1", "--filter", expr, "--json", "--quiet"]))["rows"]
        post = json.loads(run([F, "search", "--index", idx, "--queries", qpath, "--gt", gt, "-k", "10", "--probes", "8,32,128",
                               "--threads", "1", "--filter", expr, "--post-filter", "--json", "--quiet"]))["rows"]
        entry = dict(filter=expr, label=label, fathom=rows, post_filter=post)
        print(f"{label:28s} {expr:40s} sel~{rows[0].get('selectivity', 0):.4f}")
        for r in rows:
            print(f"   fathom  probes {r['probes']:4d}  recall {r['recall']:.4f}  QPS {r['qps']:8.1f}  cand {r.get('mean_candidates', 0):8.1f}  exact {r.get('exact_path_queries')}")
        for r in post:
            print(f"   post    probes {r['probes']:4d}  recall {r['recall']:.4f}  QPS {r['qps']:8.1f}")
        if not a.skip_faiss and ("0.01" in expr or "10%" in label):
            # FAISS IVF-Flat with an IDSelector over the ids the filter allows.
            col = u if expr.startswith("u ") else (c if expr.startswith("c ") else None)
            if col is not None:
                thr = float(expr.split("<")[1])
                allowed = np.nonzero(col < thr)[0].astype(np.int64)
                np.save(os.path.join(work, "allowed.npy"), allowed)
                res = json.loads(run([os.path.join(HERE, ".venv-faiss", "bin", "python"), os.path.join(HERE, "peers", "faiss_peer.py"), "run",
                                      "--base", base_path, "--queries", qpath, "--gt", gt, "--metric", cfg["metric"],
                                      "--index", "ivf-flat", "--filter-ids", os.path.join(work, "allowed.npy"),
                                      "--nprobe", "8,16,32,64,128,256", "--threads", "1", "--no-batch",
                                      "--dir", os.path.join(work, "faiss"), "--skip-build"]))
                entry["faiss_idselector"] = res.get("rows", res)
                for r in entry["faiss_idselector"]:
                    print(f"   faiss   nprobe {r.get('nprobe'):4d}  recall {r['recall']:.4f}  QPS {r['qps']:8.1f}")
        out["filters"].append(entry)
        json.dump(out, open(os.path.join(HERE, "results", f"filtered-{a.dataset}.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
