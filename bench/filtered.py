#!/usr/bin/env python3
"""Filtered-search benchmark: Fathom's planner vs post-filtering on the same index vs FAISS
IVF-Flat with an IDSelector (everything in RAM), at 50%, 10%, 1% and 0.1% selectivity,
independent and correlated, plus the dataset's real attributes; recall@10 against the exact
filtered ground truth (`fathom gt --filter`). Run with the FAISS venv's python (numpy, faiss,
matplotlib):

  /work/main/bench/.venv-faiss/bin/python bench/filtered.py --dataset fashion-mnist-784
  /work/main/bench/.venv-faiss/bin/python bench/filtered.py --dataset pypi-minilm-384

Options: --queries-limit N (1000), --fathom-bin PATH (.build/release/fathom), --probes LIST,
--post-probes LIST, --nprobe LIST (FAISS), --skip-faiss, --only SUBSTRING (filters whose label
or expression contains it), --search-args "ARGS" (extra `fathom search` arguments for Fathom's
runs, e.g. "--serve-memory 8GiB --rerank 10" for the codes held in RAM), --windows LIST (Fathom's queries in flight per thread, default
"1,4": `fathom` is window 1, one query at a time as the peers run; `fathom_window_W` the
others, on the same single thread).

Attributes: the dataset's real columns plus two synthetic ones added here: `u` (uniform in
[0,1), independent of the vectors) and `c` (the rank of each vector's projection on the first
principal direction, scaled to [0,1): correlated with the vectors, so `c < s` is a region of
space: near some queries, far from others). `u < s` and `c < s` select a fraction s.

Each disk run (Fathom, post-filter) starts with the page cache dropped (needs root; recorded)
and records the load average before and after, single thread. Selectivity is measured (exact
matches / n) beside the planner's estimate. Writes bench/results/filtered-NAME.json and .png,
and prints per filter the best QPS at recall >= 0.90 of each system and the bars (issue 15):
QPS >= 3x post-filter at 1% and 0.1%, >= 1x at 50%, >= 0.5x FAISS at 1%.
"""
import argparse, csv, json, os, shlex, subprocess, sys, time
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
import common  # noqa: E402

# Real filters: (Fathom expression, label, numpy predicate over the attribute columns).
SETS = {
    "fashion-mnist-784": dict(base="base.u8bin", q="query.u8bin", metric="l2", attrs="base_labels.csv", real=[
        ("label = 3", "class 3 (10%, correlated)", lambda a: a["label"] == 3),
        ("label IN (0,1,2,3,4)", "5 classes (50%, correlated)", lambda a: np.isin(a["label"], [0, 1, 2, 3, 4])),
        ("label = 3 AND u < 0.1", "class 3 and u (1%)", lambda a: (a["label"] == 3) & (a["u"] < 0.1)),
        ("label = 3 AND u < 0.01", "class 3 and u (0.1%)", lambda a: (a["label"] == 3) & (a["u"] < 0.01)),
    ]),
    "pypi-minilm-384": dict(base="base.fbin", q="query.fbin", metric="ip", attrs="base_attrs.csv", real=[
        ("year >= 2025", "recent", lambda a: a["year"] >= 2025),
        ("popular = 1", "popular (~2%)", lambda a: a["popular"] == 1),
        ("month IN ('2025-01', '2025-02', '2025-03')", "a quarter (month range)",
         lambda a: np.isin(a["month"], ["2025-01", "2025-02", "2025-03"])),
        ("month = '2024-06'", "one month", lambda a: a["month"] == "2024-06"),
        ("n_words BETWEEN 3 AND 4", "n_words range", lambda a: (a["n_words"] >= 3) & (a["n_words"] <= 4)),
        ("n_words <= 5 AND year >= 2024", "short and recent", lambda a: (a["n_words"] <= 5) & (a["year"] >= 2024)),
        ("popular = 1 AND year >= 2025", "popular and recent", lambda a: (a["popular"] == 1) & (a["year"] >= 2025)),
    ]),
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


def read_columns(path):
    """The attribute CSV as numpy columns (numbers where every value parses, else strings)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    names = [h.split(":")[0] for h in rows[0]]
    cols = {}
    for j, name in enumerate(names):
        vals = [r[j] for r in rows[1:]]
        try:
            cols[name] = np.array([float(v) for v in vals])
        except ValueError:
            cols[name] = np.array(vals)
    return cols


def disk_run(cmd, record):
    """One cold single-thread run: page cache dropped, load before and after recorded."""
    common.drop_caches(record)
    record["load_before"] = common.loadavg()
    res = json.loads(run(cmd))
    rows = res["rows"]
    record["load_after"] = common.loadavg()
    record["io_engine"] = res.get("io_engine")
    return rows


def best_qps(rows, floor=0.90):
    ok = [r["qps"] for r in rows if (r.get("recall") or 0) >= floor]
    return max(ok) if ok else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True, choices=list(SETS))
    ap.add_argument("--queries-limit", type=int, default=1000)
    ap.add_argument("--fathom-bin", default=os.path.join(HERE, "..", ".build", "release", "fathom"))
    ap.add_argument("--probes", default="4,8,16,32")
    ap.add_argument("--post-probes", default="8,16,32,64,128")
    ap.add_argument("--nprobe", default="4,8,16,32,64,128,256")
    ap.add_argument("--skip-faiss", action="store_true")
    ap.add_argument("--only", help="run only the filters whose label or expression contains this")
    ap.add_argument("--tag", default="", help="results file suffix: filtered-NAME-TAG.json (a partial run, e.g. with --only, then leaves the full results alone)")
    ap.add_argument("--windows", default="1,4", help="Fathom's queries in flight per thread; the first is reported as `fathom`")
    ap.add_argument("--search-args", default="", help="extra `fathom search` arguments for the Fathom runs (not the post-filter baseline), "
                    "e.g. \"--serve-memory 8GiB --rerank 10\": the codes resident, issue 23's Bi-Granular tier; recorded in the JSON")
    a = ap.parse_args()
    cfg = SETS[a.dataset]
    name = a.dataset + (f"-{a.tag}" if a.tag else "")
    src = os.path.join(HERE, "..", "..", "shared", "datasets", a.dataset)
    work = os.path.join(HERE, "work", "filtered-" + a.dataset)
    os.makedirs(work, exist_ok=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
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
    c = np.argsort(np.argsort(centred @ v)) / n
    lines = open(os.path.join(src, cfg["attrs"])).read().splitlines()
    apath = os.path.join(work, "attrs.csv")
    with open(apath, "w") as f:
        f.write(lines[0] + ",u:float,c:float\n")
        for i, line in enumerate(lines[1:]):
            f.write(f"{line},{u[i]:.6f},{c[i]:.6f}\n")
    cols = read_columns(apath)

    idx = os.path.join(work, "index")
    t0 = time.time()
    if not os.path.exists(idx):
        run([F, "build", "--input", base_path, "--output", idx, "--metric", cfg["metric"], "--attributes", apath, "--quiet"])
    build_s = time.time() - t0
    filters = []
    for s in (0.5, 0.1, 0.01, 0.001):
        filters.append((f"u < {s}", f"independent {s:.1%}", lambda a, s=s: a["u"] < float(f"{s:.6f}")))
        filters.append((f"c < {s}", f"correlated {s:.1%}", lambda a, s=s: a["c"] < float(f"{s:.6f}")))
    filters += cfg["real"]
    if a.only:
        filters = [f for f in filters if a.only in f[0] or a.only in f[1]]
    out = dict(dataset=a.dataset, n=n, queries=len(xq), k=10, threads=1, machine=common.machine_info(), search_args=a.search_args,
               build_seconds=build_s, filters=[])
    faiss_dir = os.path.join(work, "faiss")
    for expr, label, pred in filters:
        allowed = np.nonzero(pred(cols))[0].astype(np.int64)
        gt = os.path.join(work, f"gt-{abs(hash(expr)) % 10**8}.ibin")
        run([F, "gt", "--base", base_path, "--queries", qpath, "-k", "10", "--metric", cfg["metric"], "--output", gt,
             "--attributes", apath, "--filter", expr, "--quiet"])
        entry = dict(filter=expr, label=label, matches=int(len(allowed)), selectivity_measured=len(allowed) / n)
        common_args = ["--index", idx, "--queries", qpath, "--gt", gt, "-k", "10", "--threads", "1", "--filter", expr, "--json", "--quiet"]
        windows = [int(w) for w in a.windows.split(",")]
        for i, w in enumerate(windows):
            key = "fathom" if i == 0 else f"fathom_window_{w}"
            rec = {"window": w}
            entry[key] = disk_run([F, "search", *common_args, "--probes", a.probes, "--window", str(w), *shlex.split(a.search_args)], rec)
            entry[key + "_run"] = rec
        rec = {}
        entry["post_filter"] = disk_run([F, "search", *common_args, "--probes", a.post_probes, "--post-filter", "--window", "1"], rec)
        entry["post_filter_run"] = rec
        print(f"{label:30s} {expr:46s} matches {len(allowed):6d} (s = {len(allowed) / n:.4f}, "
              f"estimated {entry['fathom'][0].get('selectivity', 0):.4f})", flush=True)
        for r in entry["fathom"]:
            print(f"   fathom  probes {r['probes']:4d}  recall {r['recall']:.4f}  QPS {r['qps']:8.1f}  IOs {r['mean_ios']:6.1f}"
                  f"  RTs {r['mean_round_trips']:4.1f}  plans {r.get('filter_plans')}", flush=True)
        for r in entry["post_filter"]:
            print(f"   post    probes {r['probes']:4d}  recall {r['recall']:.4f}  QPS {r['qps']:8.1f}  IOs {r['mean_ios']:6.1f}", flush=True)
        if not a.skip_faiss and len(allowed) > 0:
            np.save(os.path.join(work, "allowed.npy"), allowed)
            cmd = [sys.executable, os.path.join(HERE, "peers", "faiss_peer.py"), "run",
                   "--base", base_path, "--queries", qpath, "--gt", gt, "--metric", cfg["metric"],
                   "--index", "ivf-flat", "--filter-ids", os.path.join(work, "allowed.npy"),
                   "--nprobe", a.nprobe, "--threads", "1", "--no-batch", "--dir", faiss_dir]
            if os.path.exists(faiss_dir):
                cmd.append("--skip-build")
            entry["faiss_load_before"] = common.loadavg()
            res = json.loads(run(cmd))
            entry["faiss_load_after"] = common.loadavg()
            entry["faiss_idselector"] = res.get("rows", res)
            for r in entry["faiss_idselector"]:
                print(f"   faiss   nprobe {r.get('nprobe'):4d}  recall {r['recall']:.4f}  QPS {r['qps']:8.1f}", flush=True)
        for w in windows[1:]:
            for r in entry[f"fathom_window_{w}"]:
                print(f"   fathom window {w}  probes {r['probes']:4d}  recall {r['recall']:.4f}  QPS {r['qps']:8.1f}", flush=True)
        bf, bp = best_qps(entry["fathom"]), best_qps(entry["post_filter"])
        bq = best_qps(entry.get("faiss_idselector", []))
        entry["best_qps_at_0.90"] = dict(fathom=bf, post_filter=bp, faiss=bq,
                                         **{f"fathom_window_{w}": best_qps(entry[f"fathom_window_{w}"]) for w in windows[1:]})
        for w in windows[1:]:
            bw = entry["best_qps_at_0.90"][f"fathom_window_{w}"]
            if bf and bw:
                print(f"   window {w} / window {windows[0]} at recall >= 0.90: {bw / bf:.2f}x", flush=True)
        print(f"   best QPS at recall >= 0.90: fathom {bf}, post-filter {bp}, faiss {bq}"
              + (f"; fathom/post {bf / bp:.2f}x" if bf and bp else "") + (f"; fathom/faiss {bf / bq:.2f}x" if bf and bq else ""), flush=True)
        out["filters"].append(entry)
        json.dump(out, open(os.path.join(HERE, "results", f"filtered-{name}.json"), "w"), indent=1)
    plot(out, os.path.join(HERE, "results", f"filtered-{name}.png"))


def plot(out, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    fs = out["filters"]
    cols = 4
    rows = (len(fs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, e in zip(axes.flat, fs):
        series = [("fathom", "Fathom (disk, window 1)", "o-")]
        series += [(key, f"Fathom (disk, window {key.rsplit('_', 1)[1]})", "d-.") for key in e
                   if key.startswith("fathom_window_") and not key.endswith("_run")]
        series += [("post_filter", "post-filter (disk)", "s--"), ("faiss_idselector", "FAISS IVF+IDSelector (RAM)", "^:")]
        for key, name, style in series:
            r = e.get(key) or []
            if r:
                ax.plot([x["recall"] for x in r], [x["qps"] for x in r], style, label=name, ms=4)
        ax.axvline(0.90, color="grey", lw=0.5)
        ax.set_yscale("log")
        ax.set_title(f"{e['label']}\n{e['filter']} (s={e['selectivity_measured']:.4f})", fontsize=8)
        ax.set_xlabel("recall@10", fontsize=8)
        ax.set_ylabel("QPS, 1 thread", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(fs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"filtered search, {out['dataset']} ({out['n']} vectors, {out['queries']} queries, cache dropped per disk run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
