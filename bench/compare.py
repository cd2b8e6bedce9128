#!/usr/bin/env python3
"""Fathom side by side with DiskANN (disk) and FAISS IVF (RAM) on one dataset: same data, threads and RAM.

Run with the FAISS venv (it has matplotlib):  bash bench/peers/setup.sh  first, then

  bench/.venv-faiss/bin/python bench/compare.py --dataset fashion-mnist-784 \
      --base  /work/shared/datasets/fashion-mnist-784/base.u8bin \
      --queries /work/shared/datasets/fashion-mnist-784/query.u8bin \
      --gt /work/shared/datasets/fashion-mnist-784/gt.ibin --metric l2 \
      --fathom-bin .build/release/fathom --workdir bench/work/fashion-mnist-784 \
      --fathom-configs "default;codec=lvq8;codec=none" --fathom-rerank 20,40 --fathom-window 1,4

Steps: (0) load gate: the 1-minute load must be < 1.0 at the start (polled for up to --wait-quiet s), else the
run is refused unless --allow-load (the result is then marked "under_load": true); (a) one `fathom build` per
--fathom-configs entry, each in WORKDIR/fathom-<config> (timed, peak RSS by /usr/bin/time -v); (b) one DiskANN
build per --diskann-bytes-per-vector figure (default: the default Fathom config's summary.ram_per_vector_bytes,
rounded, floored at 8, capped at d), each in WORKDIR/diskann-<B>B; (c) per Fathom config, one `fathom search`
per (rerank, window) with all --fathom-probes, the page cache dropped before each; (d) the DiskANN sweeps (L x
beam, cache dropped before each setting) and FAISS (nprobe). Every disk row records the IO engine actually used,
whether the cache drop succeeded, the load before/after, 4 KiB pages and IO requests per query. Writes
bench/results/NAME.json and NAME.png and prints a summary (QPS at recall 0.90 / 0.95 per Fathom config/window and
per DiskANN figure, Fathom/DiskANN at equal bytes). --skip-build reuses every index folder that exists; --only
picks systems, and the systems not rerun are kept from an existing NAME.json (each with its date and load).
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(BENCH, "peers"))
import common  # noqa: E402

DISKANN_PY = os.path.join(BENCH, ".venv-diskann", "bin", "python")
FAISS_PY = os.path.join(BENCH, ".venv-faiss", "bin", "python")
SYSTEMS = ("fathom", "diskann", "faiss")
TARGET = 0.90
TARGETS = (0.90, 0.95)
LOAD_LIMIT = 1.0  # 1-minute load at the start above which a run is refused (without --allow-load)
PAGE = 4096


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_now():
    return common.loadavg()


def wait_quiet(max_wait, limit=LOAD_LIMIT, what="start"):
    """Polls the 1-minute load every 5 s for up to max_wait seconds until it is below limit.
    Returns {"load": [1, 5, 15], "quiet": bool, "waited_seconds": s}."""
    t0 = time.monotonic()
    la = load_now()
    while la is not None and la[0] >= limit and time.monotonic() - t0 < max_wait:
        log(f"{what}: 1-minute load {la[0]:.2f} >= {limit}: waiting (up to {max_wait:.0f} s, "
            f"{time.monotonic() - t0:.0f} s so far)")
        time.sleep(min(5.0, max(0.5, max_wait - (time.monotonic() - t0))))
        la = load_now()
    return {"load": la, "quiet": la is not None and la[0] < limit, "waited_seconds": round(time.monotonic() - t0, 1)}


def run_json(cmd, what):
    """Runs cmd, streams its stderr through (and keeps a copy), parses its stdout as JSON.
    Returns (obj, wall_s, child_peak_rss, stderr_text)."""
    log(f"{what}: {' '.join(cmd)}")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines = []

    def tee():
        for line in p.stderr:
            err_lines.append(line)
            sys.stderr.write(line)
        sys.stderr.flush()

    th = threading.Thread(target=tee, daemon=True)
    th.start()
    out = p.stdout.read()
    th.join()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{what} failed (exit {p.returncode}): {' '.join(cmd)}")
    try:
        obj = json.loads(out)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{what}: stdout is not JSON ({e}): {out[:400]!r}")
    return obj, wall, ru.ru_maxrss * 1024, "".join(err_lines)


def time_v(cmd, what, log_path):
    """Runs cmd under /usr/bin/time -v (falls back to wait4); returns (wall_s, peak_rss_bytes, stdout)."""
    use_time = os.path.exists("/usr/bin/time")
    full = (["/usr/bin/time", "-v"] if use_time else []) + cmd
    log(f"{what}: {' '.join(full)}")
    t0 = time.perf_counter()
    with open(log_path, "w") as errf:
        p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=errf, text=True)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    text = open(log_path).read()
    if code != 0:
        sys.stderr.write(text[-3000:])
        raise SystemExit(f"{what} failed (exit {code}); log: {log_path}")
    rss = ru.ru_maxrss * 1024
    m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text)
    if m:
        rss = int(m.group(1)) * 1024
    return wall, rss, out


# ----------------------------------------------------------------------------------------------- systems

def build_records_path(wd):
    return os.path.join(wd, "build_records.json")


def load_build_records(wd):
    try:
        return json.load(open(build_records_path(wd)))
    except (OSError, ValueError):
        return {}


def save_build_record(wd, system, rec):
    recs = load_build_records(wd)
    recs[system] = rec
    with open(build_records_path(wd), "w") as f:
        json.dump(recs, f, indent=1)


def fathom_info(a, idx):
    out = subprocess.run([a.fathom_bin, "info", idx, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"fathom info {idx} failed: {out.stderr[-1000:]}")
    return json.loads(out.stdout)


def parse_fathom_configs(spec):
    """"default;codec=lvq8;codec=lvq4,reduce_dims=96;codec=none" -> [{name, flags, folder}].
    Each entry is a comma-separated list of key=value (-> --key-with-dashes value) or bare key (-> --key);
    "default" (or an empty entry) means no extra flag: Fathom's own defaults."""
    out, seen = [], set()
    for raw in spec.split(";"):
        name = raw.strip()
        if not name:
            continue
        flags = []
        if name != "default":
            for item in name.split(","):
                item = item.strip()
                if not item:
                    continue
                key, eq, val = item.partition("=")
                key = key.strip().lstrip("-").replace("_", "-")
                if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
                    raise SystemExit(f"--fathom-configs: bad flag {item!r} in {name!r}")
                if key in ("input", "output", "metric", "threads", "quiet"):
                    raise SystemExit(f"--fathom-configs: --{key} is set by compare.py, not per config")
                flags += [f"--{key}", val.strip()] if eq else [f"--{key}"]
        folder = "fathom-" + re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace(",", "-").replace("=", "_"))
        if name in seen:
            raise SystemExit(f"--fathom-configs: {name!r} given twice")
        seen.add(name)
        out.append({"name": name, "flags": flags, "folder": folder})
    if not out:
        raise SystemExit("--fathom-configs: no configuration")
    return out


def fathom_build(a, wd, cfg):
    idx = os.path.join(wd, cfg["folder"])
    key = "fathom:" + cfg["name"]
    cmd = [a.fathom_bin, "build", "--input", a.base, "--output", idx, "--metric", a.metric,
           "--memory-budget", a.memory_budget, "--threads", str(a.threads), "--quiet"] + cfg["flags"]
    if a.skip_build and os.path.isdir(idx):
        log(f"fathom {cfg['name']}: reusing {idx}")
        rec = load_build_records(wd).get(key, {"reused": True, "command": cmd})
        rec["reused"] = True
    else:
        load0 = load_now()
        wall, rss, _ = time_v(cmd, f"fathom build {cfg['name']}", os.path.join(wd, cfg["folder"] + "_build.log"))
        rec = {"build_seconds": round(wall, 3), "peak_rss_bytes": rss, "command": cmd, "load_before": load0,
               "load_after": load_now(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        log(f"fathom build {cfg['name']}: {wall:.1f} s, peak RSS {rss / 2**20:.0f} MiB")
    rec.update(config=cfg["name"], build_flags=cfg["flags"], folder=idx)
    info = fathom_info(a, idx)
    summ = info.get("summary", info)
    for k_out, k_in in (("ram_per_vector_bytes", "ram_per_vector_bytes"), ("ram_to_serve_bytes", "ram_to_serve_bytes"),
                        ("index_bytes", "disk_bytes"), ("heads", "heads"), ("codec", "codec"),
                        ("mean_replicas", "mean_replicas"), ("posting_histogram", "posting_histogram"),
                        ("tiers", "tiers")):
        rec[k_out] = summ.get(k_in)
    man = info.get("manifest") or {}
    if isinstance(man, dict) and isinstance(man.get("build"), dict):
        rec["manifest_build"] = man["build"]
    if not rec.get("reused"):
        save_build_record(wd, key, rec)
    return rec


SEARCH_LINE = re.compile(r"search: [^\n]*?\bIO (\w+)")
SERVE_LINE = re.compile(r"serving RAM [^=\n]*= ([0-9.]+) B/vector")


def fathom_search(a, wd, cfg, build):
    """One `fathom search` per (rerank, window), all probes in each, the page cache dropped before each."""
    idx = os.path.join(wd, cfg["folder"])
    compressed = (build.get("codec") or "none") != "none"
    reranks = common.parse_int_list(a.fathom_rerank) if compressed and a.fathom_rerank else [None]
    windows = common.parse_int_list(a.fathom_window) or [None]
    runs = []
    for rr in reranks:
        for w in windows:
            cmd = [a.fathom_bin, "search", "--index", idx, "--queries", a.queries, "--gt", a.gt, "-k", str(a.k),
                   "--probes", a.fathom_probes, "--threads", str(a.threads), "--io", a.fathom_io, "--json"]
            if rr is not None:
                cmd += ["--rerank", str(rr)]
            if w is not None:
                cmd += ["--window", str(w)]
            if a.limit:
                cmd += ["--limit", str(a.limit)]
            drop = {"page_cache_dropped": False, "drop_cache_error": "not requested (--no-drop-cache)"}
            if not a.no_drop_cache:
                common.drop_caches(drop)
            load0 = load_now()
            obj, wall, rss, err = run_json(cmd, f"fathom search {cfg['name']} rerank {rr} window {w}")
            load1 = load_now()
            engines = sorted(set(SEARCH_LINE.findall(err)))
            engine = engines[0] if len(engines) == 1 else (",".join(engines) if engines else None)
            if engine is None:
                log(f"WARNING: no 'search: … IO <engine>' line on fathom's stderr: io_engine unknown")
            serve = SERVE_LINE.search(err)
            rows = obj["rows"] if isinstance(obj, dict) else obj
            for r in rows:
                r.update(system="fathom", fathom_config=cfg["name"], build_flags=cfg["flags"], rerank=rr,
                         rerank_flag=("fathom default" if compressed else "n/a (uncompressed)") if rr is None else rr,
                         window=w, io_engine=engine, load_before=load0, load_after=load1,
                         ram_per_vector_bytes=build.get("ram_per_vector_bytes"), **drop)
                r["mean_requests"] = r.get("mean_ios")
                if r.get("mean_pages") is None and r.get("mean_kib") is not None:
                    r["mean_pages"] = round(r["mean_kib"] * 1024 / PAGE, 2)
                r["series"] = r["config"] = fathom_series(cfg["name"], w)
            runs.append({"command": cmd, "rerank": rr, "window": w, "io_engine": engine,
                         "serving_ram_per_vector_search_line": float(serve.group(1)) if serve else None,
                         "wall_seconds": round(wall, 1), "peak_rss_bytes": rss, "load_before": load0,
                         "load_after": load1, "rows": rows, **drop})
    return runs


def fathom_series(name, window):
    return f"fathom {name}" + (f" w{window}" if window is not None else "")


def diskann_metric(a, d, dtype):
    if a.diskann_metric:
        return a.diskann_metric
    if a.metric == "l2":
        return "l2"
    # inner product: on unit-norm data L2 ranks identically and is DiskANN's native mode; otherwise mips.
    import numpy as np
    x = common.read_bin(a.base, 2000).astype(np.float32)
    norms = np.linalg.norm(x, axis=1)
    if np.all(np.abs(norms - 1.0) < 1e-3):
        return "l2"
    if dtype != np.float32:
        raise SystemExit("DiskANN mips needs float32 data")
    return "mips"


def diskann_dir(wd, bpv):
    return os.path.join(wd, f"diskann-{bpv}B")


def diskann_build(a, wd, bpv, metric):
    ddir = diskann_dir(wd, bpv)
    key = f"diskann:{bpv}B"
    if a.skip_build and os.path.exists(os.path.join(ddir, "ann_disk.index")):
        log(f"diskann {bpv} B: reusing {ddir}")
        rec = load_build_records(wd).get(key, {"reused": True})
        rec["reused"] = True
        with open(os.path.join(ddir, "ann_pq_compressed.bin"), "rb") as f:
            rec["pq_bytes_per_vector"] = int.from_bytes(f.read(8)[4:8], "little")
        if rec["pq_bytes_per_vector"] != bpv:
            log(f"WARNING: the reused DiskANN index {ddir} keeps {rec['pq_bytes_per_vector']} B/vector in RAM, "
                f"not {bpv}: rerun without --skip-build")
        rec["ram_bytes_per_vector_requested"] = bpv
        return rec
    cmd = [DISKANN_PY, os.path.join(BENCH, "peers", "diskann_peer.py"), "build", "--data", a.base, "--metric", metric,
           "--dir", ddir, "--ram-bytes-per-vector", str(bpv), "--threads", str(a.threads),
           "--R", str(a.diskann_R), "--L", str(a.diskann_build_L)]
    load0 = load_now()
    obj, wall, rss, _ = run_json(cmd, f"diskann build {bpv} B")
    obj.update({"command": cmd, "wall_seconds": round(wall, 3), "load_before": load0, "load_after": load_now(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    log(f"diskann build: {obj['build_seconds']:.1f} s, peak RSS {obj['peak_rss_bytes'] / 2**20:.0f} MiB, "
        f"{obj['pq_bytes_per_vector']} B/vector PQ in RAM")
    save_build_record(wd, key, obj)
    return obj


def diskann_series(bpv):
    return f"diskann {bpv}B"


def diskann_search(a, wd, bpv):
    ddir = diskann_dir(wd, bpv)
    cmd = [DISKANN_PY, os.path.join(BENCH, "peers", "diskann_peer.py"), "search", "--dir", ddir,
           "--queries", a.queries, "--gt", a.gt, "-k", str(a.k), "--L", a.diskann_L, "--beam", a.diskann_beam,
           "--threads", str(a.threads)]
    if not a.no_drop_cache:
        cmd.append("--drop-cache")  # the peer drops before every (L, beam) setting and records the outcome per row
    if a.limit:
        cmd += ["--limit", str(a.limit)]
    load0 = load_now()
    obj, wall, _, _ = run_json(cmd, f"diskann search {bpv} B")
    for r in obj["rows"]:
        r["system"], r["ram_bytes_per_vector"] = "diskann", bpv
        r["pq_bytes_per_vector"] = obj.get("pq_bytes_per_vector")
        r["series"] = r["config"] = diskann_series(bpv)
        r.setdefault("io_engine", obj.get("io_engine"))
        r.setdefault("mean_requests", r.get("mean_ios"))
        if r.get("mean_pages") is None and r.get("mean_kib") is not None:
            r["mean_pages"] = round(r["mean_kib"] * 1024 / PAGE, 2)
    obj.update({"command": cmd, "wall_seconds": round(wall, 1), "load_before": load0, "load_after": load_now()})
    return obj


def faiss_runs(a, wd):
    out = []
    for kind in [x for x in a.faiss_indexes.split(",") if x]:
        cmd = [FAISS_PY, os.path.join(BENCH, "peers", "faiss_peer.py"), "run", "--base", a.base,
               "--queries", a.queries, "--gt", a.gt, "--metric", a.metric, "--index", kind, "--nprobe", a.nprobe,
               "-k", str(a.k), "--threads", str(a.threads), "--dir", os.path.join(wd, "faiss")]
        if a.nlist:
            cmd += ["--nlist", str(a.nlist)]
        if kind == "ivf-pq":
            cmd += ["--k-factor", a.k_factor]
        if a.skip_build:
            cmd.append("--skip-build")
        if a.limit:
            cmd += ["--limit", str(a.limit)]
        load0 = load_now()
        obj, wall, _, _ = run_json(cmd, f"faiss {kind}")
        many_kf = len(common.parse_int_list(a.k_factor)) > 1
        for r in obj["rows"]:
            r["system"] = "faiss"
            r["config"] = "faiss " + r["index"] + (f" k_factor {r['k_factor']}" if many_kf and "k_factor" in r else "")
            r["series"] = r["config"]
        if obj.get("build_seconds") is None:  # loaded: keep the figures of the run that built it
            prev = load_build_records(wd).get("faiss-" + kind, {})
            obj["build_seconds"] = prev.get("build_seconds")
            obj["build_peak_rss_bytes"] = prev.get("peak_rss_bytes")
        else:
            save_build_record(wd, "faiss-" + kind, {"build_seconds": obj["build_seconds"],
                                                    "peak_rss_bytes": obj["peak_rss_bytes"], "index": obj["index"]})
        obj.update({"command": cmd, "wall_seconds": round(wall, 1), "load_before": load0, "load_after": load_now()})
        out.append(obj)
    return out


# ----------------------------------------------------------------------------------------------- summary

# figures interpolated at the target recall (linear between the two frontier rows that bracket it)
AT_KEYS = ("mean_pages", "mean_requests", "mean_kib", "mean_round_trips", "mean_us", "p99_us")


def series_of(r):
    return r.get("series") or r["config"]


def frontier(rows):
    """Pareto frontier (recall up, QPS down), sorted by recall."""
    pts = sorted(((r["recall"], r["qps"], r) for r in rows if r.get("recall") is not None and r.get("qps")),
                 key=lambda t: (t[0], -t[1]))
    out = []
    for rec, qps, r in sorted(pts, key=lambda t: (-t[0], -t[1])):
        if not out or qps > out[-1][1]:
            out.append((rec, qps, r))
    return sorted(out, key=lambda t: t[0])


def at_target(rows, target=TARGET):
    """Best QPS at recall >= target, and QPS (log-linear) plus pages, requests, KiB, latency (linear) interpolated
    at exactly target on the Pareto frontier."""
    ok = [r for r in rows if r.get("recall") is not None and r["recall"] >= target]
    best = max(ok, key=lambda r: r["qps"]) if ok else None
    res = {"target": target, "best_qps": best["qps"] if best else None, "best_recall": best["recall"] if best else None,
           "qps_at_target": None}
    res.update({k: None for k in AT_KEYS})
    f = frontier(rows)
    for (r0, q0, row0), (r1, q1, row1) in zip(f, f[1:]):
        if r0 < target <= r1:
            t = (target - r0) / (r1 - r0)
            res["qps_at_target"] = round(math.exp(math.log(q0) + t * (math.log(q1) - math.log(q0))), 1)
            for key in AT_KEYS:
                if row0.get(key) is not None and row1.get(key) is not None:
                    res[key] = round(row0[key] + t * (row1[key] - row0[key]), 2)
            break
    else:
        if f and f[0][0] >= target and best:  # even the cheapest setting clears the target: no bracket
            res["note"] = "all settings above target: the figures are those of the best row (QPS a lower bound)"
            res["qps_at_target"] = best["qps"]
            for key in AT_KEYS:
                res[key] = best.get(key)
    # back-compatible names
    res["kib_at_target"], res["ios_at_target"] = res["mean_kib"], res["mean_requests"]
    return res


def ratio(x, y, nd=3):
    return round(x / y, nd) if x is not None and y else None


def summarize(result):
    rows = result["rows"]
    for r in rows:  # results written before requests and pages were recorded separately
        if r.get("mean_requests") is None and r.get("mean_ios") is not None:
            r["mean_requests"] = r["mean_ios"]
        if r.get("mean_pages") is None and r.get("mean_kib") is not None and r.get("system") in ("fathom", "diskann"):
            r["mean_pages"] = round(r["mean_kib"] * 1024 / PAGE, 2)
    groups = {}
    for r in rows:
        groups.setdefault(series_of(r), []).append(r)
    per_series = {}
    for c, rs in groups.items():
        r0 = rs[0]
        ent = {"system": r0["system"], "rows": len(rs)}
        if r0["system"] == "fathom":
            ent.update(fathom_config=r0.get("fathom_config"), build_flags=r0.get("build_flags"),
                       window=r0.get("window"), reranks=sorted({x.get("rerank") for x in rs}, key=lambda v: (v is None, v)),
                       ram_per_vector_bytes=r0.get("ram_per_vector_bytes"))
        elif r0["system"] == "diskann":
            ent.update(ram_per_vector_bytes=r0.get("pq_bytes_per_vector") or r0.get("ram_bytes_per_vector"),
                       beams=sorted({x.get("beam") for x in rs if x.get("beam") is not None}))
        if r0["system"] in ("fathom", "diskann"):
            ent["io_engines"] = sorted({str(x.get("io_engine")) for x in rs})
            ent["page_cache_dropped_all"] = all(x.get("page_cache_dropped") is True for x in rs)
        for t in TARGETS:
            ent[f"at_{t:.2f}"] = at_target(rs, t)
        per_series[c] = ent
    # Fathom / DiskANN: each Fathom series against the DiskANN figure at equal bytes (round(Fathom's RAM/vector));
    # without one, against the nearest figure (equal_bytes false).
    dk = {c: v for c, v in per_series.items() if v["system"] == "diskann" and v.get("ram_per_vector_bytes")}

    def pair(c, v, dc):
        ram, d = v.get("ram_per_vector_bytes"), dk[dc]
        p = {"fathom": c, "diskann": dc, "fathom_ram_per_vector_bytes": ram,
             "diskann_ram_per_vector_bytes": d["ram_per_vector_bytes"],
             "equal_bytes": ram is not None and int(round(ram)) == d["ram_per_vector_bytes"]}
        for t in TARGETS:
            fa, da = v[f"at_{t:.2f}"], d[f"at_{t:.2f}"]
            p[f"qps_at_{t:.2f}"] = ratio(fa["qps_at_target"], da["qps_at_target"])
            if fa.get("note") or da.get("note"):
                p[f"note_{t:.2f}"] = "a QPS figure is a lower bound (every setting above the target)"
        f90, d90 = v["at_0.90"], d["at_0.90"]
        for key in ("mean_pages", "mean_requests", "mean_us", "p99_us"):
            p[f"{key}_at_0.90"] = ratio(f90.get(key), d90.get(key))
        return p

    pairs, all_pairs = [], []
    for c, v in per_series.items():
        if v["system"] != "fathom" or not dk:
            continue
        ram = v.get("ram_per_vector_bytes")
        near = min(dk, key=lambda k: (abs(dk[k]["ram_per_vector_bytes"] - (ram or 0)), dk[k]["ram_per_vector_bytes"]))
        pairs.append(pair(c, v, near))
        all_pairs += [pair(c, v, dc) for dc in dk]
    summ = {"targets": list(TARGETS), "per_series": per_series, "fathom_over_diskann": pairs,
            "fathom_over_diskann_every_figure": all_pairs}
    # best Fathom series vs best DiskANN figure at 0.90 (one line, as before)
    best = {}
    for c, v in per_series.items():
        q = v["at_0.90"]["qps_at_target"] or 0
        if v["system"] not in best or q > (per_series[best[v["system"]]]["at_0.90"]["qps_at_target"] or 0):
            best[v["system"]] = c
    summ["best_series_at_0.90"] = best
    return summ


def print_summary(result):
    s = result["summary"]
    print(f"\n== {result['dataset']}: recall@{result['k']}, {result['threads']} thread(s), load at start "
          f"{result['machine'].get('loadavg')}, at end {result.get('machine_end', {}).get('loadavg')}"
          f"{', UNDER LOAD' if result.get('under_load') else ''} ==")
    for name in SYSTEMS:
        sysd = result["systems"].get(name)
        if not sysd:
            continue
        for bb in sysd.get("builds", []) + [x.get("build", {}) for x in sysd.get("indexes", [])] + \
                ([sysd["build"]] if isinstance(sysd.get("build"), dict) else []):
            label = bb.get("config") and f"fathom {bb['config']}" or bb.get("index") or \
                (f"diskann {bb.get('pq_bytes_per_vector')}B" if name == "diskann" else name)
            rss = bb.get("peak_rss_bytes") or bb.get("build_peak_rss_bytes")
            extra = ""
            if name == "fathom" and bb.get("ram_per_vector_bytes") is not None:
                extra = f", RAM {bb['ram_per_vector_bytes']:.1f} B/vector, codec {bb.get('codec')}"
            if name == "diskann":
                extra = f", PQ {bb.get('pq_bytes_per_vector')} B/vector in RAM"
            if bb.get("reused"):
                extra += ", reused (--skip-build)"
            secs = bb.get("build_seconds")
            print(f"build  {label:<40} {('%9.1f s' % secs) if secs is not None else '   reused  '}   peak RSS "
                  f"{(rss or 0) / 2**20:8.0f} MiB{extra}")
    fmt = lambda x, f="{:.1f}": (f.format(x) if x is not None else "-")  # noqa: E731
    print(f"\n{'series':<40} {'B/vec':>6} {'QPS@.90':>9} {'QPS@.95':>9} {'pages@.90':>9} {'reqs@.90':>8} "
          f"{'mean us':>8} {'p99 us':>8}  io / cache dropped")
    lower = False
    order = lambda t: (SYSTEMS.index(t[1]["system"]), t[0])  # noqa: E731
    for c, v in sorted(s["per_series"].items(), key=order):
        a9, a95 = v["at_0.90"], v["at_0.95"]
        m9, m95 = (">=" if a9.get("note") else ""), (">=" if a95.get("note") else "")
        lower = lower or bool(m9 or m95)
        ram = v.get("ram_per_vector_bytes")
        io = ""
        if v["system"] in ("fathom", "diskann"):
            io = f"{'/'.join(v.get('io_engines', []))} / {'yes' if v.get('page_cache_dropped_all') else 'NO'}"
        print(f"{c:<40} {fmt(ram):>6} {m9 + fmt(a9['qps_at_target']):>9} {m95 + fmt(a95['qps_at_target']):>9} "
              f"{fmt(a9['mean_pages']):>9} {fmt(a9['mean_requests']):>8} {fmt(a9['mean_us']):>8} "
              f"{fmt(a9['p99_us']):>8}  {io}")
    if lower:
        print(">=: even the cheapest setting is above the target: its figures stand in (a lower bound on QPS)")
    print("pages: 4 KiB pages read per query (Fathom mean_pages; DiskANN /proc/self/io read_bytes / 4096); "
          "reqs: IO requests per query (Fathom after coalescing; DiskANN node reads)")
    if s.get("fathom_over_diskann"):
        print("\nFathom / DiskANN" + " " * 34 + "bytes     QPS@.90 QPS@.95 pages@.90 reqs@.90")
        for p in s["fathom_over_diskann"]:
            eq = "=" if p["equal_bytes"] else "~"
            print(f"{p['fathom'] + ' / ' + p['diskann']:<50} {fmt(p['fathom_ram_per_vector_bytes'])}{eq}"
                  f"{p['diskann_ram_per_vector_bytes']:<4} {fmt(p['qps_at_0.90'], '{:.3f}'):>7} "
                  f"{fmt(p['qps_at_0.95'], '{:.3f}'):>7} {fmt(p['mean_pages_at_0.90'], '{:.3f}'):>9} "
                  f"{fmt(p['mean_requests_at_0.90'], '{:.3f}'):>8}")
        if any(not p["equal_bytes"] for p in s["fathom_over_diskann"]):
            print("~: no DiskANN index at this config's bytes per vector: compared with the nearest figure")


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5))
    palette = {"fathom": ["tab:red", "darkred", "tab:orange", "salmon", "tab:pink", "saddlebrown", "gold", "crimson"],
               "diskann": ["tab:blue", "navy", "tab:cyan", "tab:purple", "steelblue"],
               "faiss": ["tab:green", "olive", "darkgreen", "tab:brown"]}
    used = {}
    markers = iter("osD^v<>ph*" * 6)
    groups = {}
    for r in result["rows"]:
        if r.get("recall") is not None and r.get("qps"):
            groups.setdefault(series_of(r), []).append(r)
    for c, rs in sorted(groups.items(), key=lambda t: (SYSTEMS.index(t[1][0]["system"]), t[0])):
        sysname = rs[0]["system"]
        i = used.get(sysname, 0)
        used[sysname] = i + 1
        color = palette.get(sysname, ["black"])[i % len(palette.get(sysname, ["black"]))]
        in_ram = sysname == "faiss"
        windowed = sysname == "fathom" and (rs[0].get("window") or 1) > 1
        mk = next(markers)
        f = frontier(rs)
        label = c + (" (all in RAM)" if in_ram else "")
        if sysname == "diskann" and rs[0].get("pq_bytes_per_vector"):
            label = f"diskann {rs[0]['pq_bytes_per_vector']} B/vector PQ (beams {sorted({r['beam'] for r in rs})})"
        elif sysname == "fathom" and rs[0].get("ram_per_vector_bytes") is not None:
            label = f"{c} ({rs[0]['ram_per_vector_bytes']:.0f} B/vector" + (
                f", {rs[0]['window']} in flight)" if windowed else ")")
        ls = "--" if in_ram else (":" if windowed else "-")
        ax.plot([t[0] for t in f], [t[1] for t in f], ls, marker=mk, ms=5, color=color,
                lw=2.2 if sysname == "fathom" else 1.5, alpha=0.65 if in_ram else 0.95, label=label)
        off = [r for r in rs if all(r is not t[2] for t in f)]  # dominated settings: bare markers
        if off:
            ax.plot([r["recall"] for r in off], [r["qps"] for r in off], mk, ms=3, color=color, alpha=0.35, ls="none")
    ax.set_yscale("log")
    for t in TARGETS:
        ax.axvline(t, color="gray", ls=":", lw=1.2)
        ax.text(t, 0.01, f" {t:.2f}", color="gray", va="bottom", fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_xlabel(f"recall@{result['k']}")
    ax.set_ylabel("queries per second (log scale; lines: Pareto frontier of each series)")
    m = result["machine"]
    ax.set_title(f"{result['dataset']} ({result.get('n')} x {result.get('d')}, {result['metric']}), "
                 f"{result['threads']} thread(s), page cache dropped before each run"
                 f"{', UNDER LOAD' if result.get('under_load') else ''}\n{m.get('cpu', '')}, load {m.get('loadavg')}"
                 f" -> {result.get('machine_end', {}).get('loadavg')}, {m.get('date', '')}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="name: results go to bench/results/NAME.json/.png")
    p.add_argument("--base")
    p.add_argument("--queries")
    p.add_argument("--gt")
    p.add_argument("--metric", choices=["l2", "ip"])
    p.add_argument("--fathom-bin", default=os.path.join(os.path.dirname(BENCH), ".build", "release", "fathom"))
    p.add_argument("--workdir", help="default: bench/work/NAME")
    p.add_argument("--results-dir", default=os.path.join(BENCH, "results"))
    p.add_argument("--skip-build", action="store_true", help="reuse every index folder that exists in WORKDIR")
    p.add_argument("--only", default="fathom,diskann,faiss")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, help="first N queries only (quick runs)")
    p.add_argument("--no-drop-cache", action="store_true")
    p.add_argument("--allow-load", action="store_true",
                   help=f"run and write the result even when the 1-minute load at the start is >= {LOAD_LIMIT} "
                        "(the result is marked under_load: true)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="poll the load for up to SECONDS for it to fall below the limit before refusing (default 0)")
    p.add_argument("--memory-budget", default="4GiB", help="fathom build --memory-budget")
    p.add_argument("--fathom-configs", default="default",
                   help='";"-separated build configs, each "default" or comma-separated key=value build flags, e.g. '
                        '"default;codec=lvq8;codec=lvq4,reduce_dims=96;codec=none;serve_memory=64B"')
    p.add_argument("--fathom-probes", default="2,4,8,16,32,64")
    p.add_argument("--fathom-rerank", default="",
                   help="comma list of --rerank values, compressed configs only (default: Fathom's own default)")
    p.add_argument("--fathom-window", default="1,4", help="comma list of --window values (queries in flight/thread)")
    p.add_argument("--fathom-io", default="auto", choices=["auto", "aio", "pread"], help="fathom search --io")
    p.add_argument("--diskann-L", default="10,20,40,60,80,120,160")
    p.add_argument("--diskann-beam", default="2,4")
    p.add_argument("--diskann-R", type=int, default=64)
    p.add_argument("--diskann-build-L", type=int, default=100)
    p.add_argument("--diskann-bytes-per-vector",
                   help="comma list of PQ bytes/vector in RAM, one DiskANN index each (default: the default Fathom "
                        "config's ram_per_vector_bytes, rounded, floor 8, cap d; 32 without a Fathom index)")
    p.add_argument("--diskann-metric", choices=["l2", "mips"],
                   help="default: l2 for l2; for ip, l2 on unit-norm data, else mips")
    p.add_argument("--faiss-indexes", default="ivf-flat,ivf-pq")
    p.add_argument("--nprobe", default="1,2,4,8,16,32,64,128")
    p.add_argument("--nlist", type=int)
    p.add_argument("--k-factor", default="4")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: recompute the summary and the plot from bench/results/NAME.json")
    a = p.parse_args()

    if a.report_only:
        out_json = os.path.join(a.results_dir, a.dataset + ".json")
        result = json.load(open(out_json))
        result["summary"] = summarize(result)
        with open(out_json, "w") as f:
            json.dump(result, f, indent=1)
        png = os.path.join(a.results_dir, a.dataset + ".png")
        plot(result, png)
        print_summary(result)
        print(f"\nwrote {out_json} and {png}")
        return

    if not (a.base and a.queries and a.gt and a.metric):
        p.error("--base, --queries, --gt and --metric are required (unless --report-only)")
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    for s in only:
        if s not in SYSTEMS:
            raise SystemExit(f"--only: unknown system {s!r} (fathom, diskann, faiss)")
    for path in (a.base, a.queries, a.gt):
        if not os.path.exists(path):
            raise SystemExit(f"{path}: no such file")
    a.base, a.queries, a.gt = (os.path.abspath(x) for x in (a.base, a.queries, a.gt))
    configs = parse_fathom_configs(a.fathom_configs)
    if os.path.exists(a.fathom_bin):
        a.fathom_bin = os.path.abspath(a.fathom_bin)
    if "fathom" in only and not (os.path.isfile(a.fathom_bin) and os.access(a.fathom_bin, os.X_OK)):
        raise SystemExit(f"{a.fathom_bin}: no fathom binary (swift build -c release, or --only diskann,faiss)")
    if "diskann" in only and not os.path.exists(DISKANN_PY) or "faiss" in only and not os.path.exists(FAISS_PY):
        raise SystemExit("peer venvs missing: run bash bench/peers/setup.sh")
    try:
        bpv_list = common.parse_int_list(a.diskann_bytes_per_vector) if a.diskann_bytes_per_vector else None
    except ValueError:
        raise SystemExit(f"--diskann-bytes-per-vector: not a comma list of integers: {a.diskann_bytes_per_vector!r}")

    # (0) the load gate, before anything runs
    gate = wait_quiet(a.wait_quiet)
    load1 = gate["load"][0] if gate["load"] else None
    if not gate["quiet"]:
        msg = (f"1-minute load {load1} >= {LOAD_LIMIT} at the start" if load1 is not None else
               "cannot read /proc/loadavg") + (f" (waited {gate['waited_seconds']:.0f} s)" if a.wait_quiet else "")
        if not a.allow_load:
            raise SystemExit(f"compare.py: refusing to measure: {msg}. Figures taken under load are wrong (by 2.7x "
                             "last time): stop the other jobs, or wait with --wait-quiet SECONDS, or pass "
                             "--allow-load (the result is then marked under_load: true).")
        log(f"WARNING: {msg}; going on because of --allow-load (result marked under_load)")
    under_load = bool(a.allow_load)

    wd = os.path.abspath(a.workdir or os.path.join(BENCH, "work", a.dataset))
    os.makedirs(wd, exist_ok=True)
    os.makedirs(a.results_dir, exist_ok=True)
    n, d = common.bin_shape(a.base)
    dtype = common.dtype_of(a.base)

    out_json = os.path.join(a.results_dir, a.dataset + ".json")
    result = {"dataset": a.dataset, "base": a.base, "queries": a.queries, "gt": a.gt, "metric": a.metric,
              "n": n, "d": d, "dtype": dtype.__name__, "k": a.k, "threads": a.threads, "limit": a.limit,
              "page_cache_dropped": not a.no_drop_cache, "machine": common.machine_info(),
              "under_load": under_load,
              "load_gate": {"limit_1min": LOAD_LIMIT, "allow_load": a.allow_load, "wait_quiet_seconds": a.wait_quiet,
                            "waited_seconds": gate["waited_seconds"], "load_at_start": gate["load"],
                            "quiet_at_start": gate["quiet"]},
              "argv": sys.argv[1:], "systems": {}}
    if os.path.exists(out_json) and set(only) != set(SYSTEMS):  # keep the systems not rerun
        try:
            prev = json.load(open(out_json))
            for s, v in prev.get("systems", {}).items():
                if s not in only:
                    result["systems"][s] = v
                    log(f"keeping {s} from the previous {out_json} (measured {v.get('measured', {}).get('date')})")
                    if v.get("under_load", prev.get("under_load")):
                        result["under_load"] = True
        except (OSError, ValueError):
            pass

    def stamp(what):
        # before each system's searches: wait for our own builds' load to settle (up to --wait-quiet), record it
        q = wait_quiet(a.wait_quiet, what=what) if a.wait_quiet else {"load": load_now(), "waited_seconds": 0}
        return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg": q["load"],
                "waited_seconds": q["waited_seconds"]}

    # (a) + (b): builds, in this order, in the same run
    fbuilds = {}
    if "fathom" in only:
        for cfg in configs:
            fbuilds[cfg["name"]] = fathom_build(a, wd, cfg)
    dbuilds = {}
    if "diskann" in only:
        if bpv_list:
            src = "--diskann-bytes-per-vector"
        else:
            ref = next((c for c in configs if c["name"] == "default"), configs[0])
            ram = (fbuilds.get(ref["name"]) or {}).get("ram_per_vector_bytes")
            ref_dir = os.path.join(wd, ref["folder"])
            if ram is None and os.path.isdir(ref_dir) and os.path.exists(a.fathom_bin):
                ram = fathom_info(a, ref_dir).get("summary", {}).get("ram_per_vector_bytes")
            if ram is None:
                ram = load_build_records(wd).get("fathom:" + ref["name"], {}).get("ram_per_vector_bytes")
            src = (f"fathom config {ref['name']!r} summary.ram_per_vector_bytes {ram:.2f}, rounded"
                   if ram is not None else "default 32 (no Fathom index)")
            bpv_list = [int(min(d, max(8, round(ram)))) if ram is not None else 32]
        metric = diskann_metric(a, d, dtype)
        for bpv in dict.fromkeys(bpv_list):
            if bpv > d or bpv < 1:
                raise SystemExit(f"DiskANN keeps at most d = {d} and at least 1 PQ byte per vector, not {bpv}")
            log(f"diskann: {bpv} B/vector in RAM ({src}), metric {metric}")
            b = diskann_build(a, wd, bpv, metric)
            b["ram_bytes_per_vector_source"] = src
            b["metric_used"] = b.get("metric", metric)
            dbuilds[bpv] = b

    # (c) + (d): searches
    if "fathom" in only:
        m = stamp("fathom searches")
        runs = []
        for cfg in configs:
            runs += fathom_search(a, wd, cfg, fbuilds[cfg["name"]])
        result["systems"]["fathom"] = {
            "builds": list(fbuilds.values()), "configs": configs,
            "searches": [{k: v for k, v in r.items() if k != "rows"} for r in runs],
            "rows": [row for r in runs for row in r["rows"]], "measured": m, "load_after": load_now(),
            "under_load": under_load,
            "io_counting": {"mean_pages": "fathom search: 4 KiB pages read per query (mean_pages)",
                            "mean_requests": "fathom search mean_ios: IO requests per query after coalescing",
                            "io_engine": "parsed from fathom search's stderr line 'search: … IO <engine> …'"}}
    if "diskann" in only:
        m = stamp("diskann searches")
        runs = [diskann_search(a, wd, bpv) for bpv in dbuilds]
        io_counting = runs[0].get("io_counting") if runs else None
        result["systems"]["diskann"] = {
            "builds": list(dbuilds.values()),
            "searches": [{k: v for k, v in r.items() if k != "rows"} for r in runs],
            "rows": [row for r in runs for row in r["rows"]], "measured": m, "load_after": load_now(),
            "under_load": under_load, "io_counting": io_counting}
    if "faiss" in only:
        m = stamp("faiss runs")
        runs = faiss_runs(a, wd)
        result["systems"]["faiss"] = {
            "indexes": [{"build": {"index": r["index"], "build_seconds": r.get("build_seconds"),
                                   "peak_rss_bytes": r.get("peak_rss_bytes"), "nlist": r["nlist"], "pq_m": r["pq_m"],
                                   "ram_bytes_per_vector": r.get("ram_bytes_per_vector")},
                         "search": {k: v for k, v in r.items() if k != "rows"}} for r in runs],
            "rows": [row for r in runs for row in r["rows"]], "measured": m, "load_after": load_now(),
            "under_load": under_load}

    result["rows"] = [r for s in SYSTEMS if s in result["systems"] for r in result["systems"][s]["rows"]]
    result["machine_end"] = {"uptime": common.machine_info().get("uptime"), "loadavg": load_now()}
    result["summary"] = summarize(result)
    with open(out_json, "w") as f:
        json.dump(result, f, indent=1)
    png = os.path.join(a.results_dir, a.dataset + ".png")
    plot(result, png)
    print_summary(result)
    print(f"\nwrote {out_json} and {png}" + (" (marked under_load: true)" if result["under_load"] else ""))


if __name__ == "__main__":
    main()
