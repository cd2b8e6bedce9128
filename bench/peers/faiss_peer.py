#!/usr/bin/env python3
"""FAISS (faiss-cpu 1.15.1) in-RAM IVF indexes as benchmark peers. Run with bench/.venv-faiss/bin/python.

  run --base F --queries Q [--gt GT] --metric l2|ip --index ivf-flat|ivf-pq [--nlist N] [--nprobe 1,2,4,...]
      [--threads 1] [--dir DIR [--skip-build]] [--filter-ids ALLOWED.npy] [--pq-m M] [--k-factor 4]

ivf-flat = "IVF{nlist},Flat"; ivf-pq = "IVF{nlist},PQ{M}x4fs" (4-bit fast scan) inside IndexRefineFlat
(the top k·k_factor PQ candidates re-ranked with the exact vectors, which stay in RAM).
Everything is in RAM: these rows show what the CPU allows, not a disk system.
Prints one JSON object on stdout: build figures and one row per (nprobe[, k_factor]).
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def default_nlist(n):
    """4·sqrt(n) rounded to the nearest power of two, within [16, 4096]."""
    x = 4.0 * math.sqrt(max(n, 1))
    return int(min(4096, max(16, 2 ** round(math.log2(x)))))


def default_pq_m(d):
    """Largest even divisor of d that is at most min(d/2, 256) (4-bit codes: M/2 bytes per vector)."""
    limit = min(d // 2, 256)
    for m in range(limit, 1, -1):
        if d % m == 0 and m % 2 == 0:
            return m
    return d


def factory_string(kind, nlist, m):
    if kind == "ivf-flat":
        return f"IVF{nlist},Flat"
    if kind == "ivf-pq":
        return f"IVF{nlist},PQ{m}x4fs"
    raise SystemExit(f"unknown --index {kind!r} (ivf-flat or ivf-pq)")


def exact_filtered_gt(faiss, np, xb, xq, allowed, metric, kgt):
    """Exact top-kgt over the allowed ids only (ids are the original row numbers)."""
    sub = np.ascontiguousarray(xb[allowed])
    kgt = min(kgt, sub.shape[0])
    D, I = faiss.knn(np.ascontiguousarray(xq), sub, kgt, metric=metric)
    return allowed[I].astype(np.int32), D.astype(np.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="build (or load) one index and sweep nprobe")
    r.add_argument("--base", required=True)
    r.add_argument("--queries", required=True)
    r.add_argument("--gt", help="ground truth .ibin (with --filter-ids and no --gt: computed exactly over the allowed ids)")
    r.add_argument("--metric", required=True, choices=["l2", "ip"])
    r.add_argument("--index", default="ivf-flat", choices=["ivf-flat", "ivf-pq"])
    r.add_argument("--nlist", type=int, help="default: 4*sqrt(n) rounded to a power of 2, capped at 4096")
    r.add_argument("--nprobe", default="1,2,4,8,16,32,64,128")
    r.add_argument("--pq-m", type=int, help="PQ sub-quantizers for ivf-pq (default: largest even divisor of d <= min(d/2, 256))")
    r.add_argument("--k-factor", default="4", help="IndexRefineFlat k_factor(s) for ivf-pq, comma-separated")
    r.add_argument("-k", type=int, default=10)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--dir", help="save the index here (faiss.write_index) / load it with --skip-build")
    r.add_argument("--skip-build", action="store_true", help="load DIR/<index>.faiss when it exists")
    r.add_argument("--filter-ids", help=".npy of allowed ids: IDSelectorBatch in SearchParametersIVF")
    r.add_argument("--limit", type=int, help="use the first N queries only")
    r.add_argument("--no-batch", action="store_true")
    a = p.parse_args()
    common.claim_stdout()

    common.set_single_thread_env(a.threads)
    import numpy as np
    import faiss

    faiss.omp_set_num_threads(a.threads)
    metric = faiss.METRIC_L2 if a.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    t0 = time.perf_counter()
    xb = np.ascontiguousarray(common.read_bin(a.base), dtype=np.float32)
    xq = np.ascontiguousarray(common.read_bin(a.queries, a.limit), dtype=np.float32)
    load_secs = time.perf_counter() - t0
    n, d = xb.shape
    nq = xq.shape[0]
    nlist = a.nlist or default_nlist(n)
    m = a.pq_m or default_pq_m(d)
    desc = factory_string(a.index, nlist, m)
    name = desc + (",RefineFlat" if a.index == "ivf-pq" else "")
    path = os.path.join(a.dir, a.index + ".faiss") if a.dir else None

    built = False
    if a.skip_build and path and os.path.exists(path):
        t0 = time.perf_counter()
        index = faiss.read_index(path)
        build_secs = None
        print(f"faiss: loaded {path} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    else:
        print(f"faiss: building {name} on {n} x {d}, metric {a.metric}, {a.threads} thread(s)", file=sys.stderr)
        t0 = time.perf_counter()
        base = faiss.index_factory(d, desc, metric)
        index = faiss.IndexRefineFlat(base) if a.index == "ivf-pq" else base
        index.train(xb)
        index.add(xb)
        build_secs = time.perf_counter() - t0
        built = True
        print(f"faiss: built {name} in {build_secs:.1f} s", file=sys.stderr)
        if path:
            os.makedirs(a.dir, exist_ok=True)
            faiss.write_index(index, path)
    ivf = faiss.extract_index_ivf(index)

    allowed = None
    if a.filter_ids:
        allowed = np.unique(np.load(a.filter_ids).astype(np.int64))
    if a.gt:
        gt_ids, gt_dist = common.read_ibin(a.gt)
    elif allowed is not None:
        t0 = time.perf_counter()
        gt_ids, gt_dist = exact_filtered_gt(faiss, np, xb, xq, allowed, metric, 100)
        print(f"faiss: exact filtered ground truth over {len(allowed)} ids in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
    else:
        gt_ids = gt_dist = None

    sel = faiss.IDSelectorBatch(allowed) if allowed is not None else None
    kfs = common.parse_int_list(a.k_factor) if a.index == "ivf-pq" else [None]
    rows = []
    for kf in kfs:
        for nprobe in common.parse_int_list(a.nprobe):
            nprobe = min(nprobe, nlist)
            params = None
            if sel is not None:
                ivf_params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
                params = (faiss.IndexRefineSearchParameters(k_factor=kf, base_index_params=ivf_params)
                          if kf is not None else ivf_params)
            else:
                ivf.nprobe = nprobe
                if kf is not None:
                    index.k_factor = kf
            ids = np.empty((nq, a.k), dtype=np.int64)
            lat = np.empty(nq, dtype=np.int64)
            wall0 = time.perf_counter()
            for i in range(nq):
                t = time.perf_counter_ns()
                _, I = index.search(xq[i:i + 1], a.k, params=params)
                lat[i] = time.perf_counter_ns() - t
                ids[i] = I[0]
            wall = time.perf_counter() - wall0
            qps_batch = None
            if not a.no_batch:
                b0 = time.perf_counter()
                index.search(xq, a.k, params=params)
                qps_batch = round(nq / (time.perf_counter() - b0), 1)
            row = {"index": name, "nprobe": nprobe}
            if kf is not None:
                row["k_factor"] = kf
            row.update({"qps": round(nq / wall, 1), "qps_batch": qps_batch})
            row.update(common.latency_stats(lat))
            row["recall"] = round(common.recall_at_k(ids, gt_ids, gt_dist, a.k), 5) if gt_ids is not None else None
            row["mean_ios"] = None
            row["mean_kib"] = None
            rows.append(row)
            print(f"faiss {name} nprobe {nprobe:4d}" + (f" k_factor {kf}" if kf else "") +
                  f": recall {row['recall']}, {row['qps']} QPS (batch {qps_batch}), mean {row['mean_us']} us",
                  file=sys.stderr)

    common.emit_json({
        "system": "faiss", "index": name, "kind": a.index, "n": n, "d": d, "metric": a.metric,
        "nlist": nlist, "pq_m": m if a.index == "ivf-pq" else None, "threads": a.threads,
        "filtered": allowed is not None, "allowed_ids": int(len(allowed)) if allowed is not None else None,
        "queries": nq, "k": a.k,
        "build_seconds": round(build_secs, 3) if built else None, "data_load_seconds": round(load_secs, 3),
        "peak_rss_bytes": common.peak_rss_bytes(),
        "ram_bytes_per_vector": round(index_ram_bytes(faiss, index) / n, 1),
        "rows": rows,
    })


def index_ram_bytes(faiss, index):
    """Size of the serialized index: what it holds in RAM, near enough."""
    return int(faiss.serialize_index(index).size)


if __name__ == "__main__":
    main()
