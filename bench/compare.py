#!/usr/bin/env python3
"""Fathom side by side with DiskANN (disk) and FAISS IVF (RAM) on one dataset: same data, threads and RAM.

Run with the FAISS venv (it has matplotlib):  bash bench/peers/setup.sh  first, then

  bench/.venv-faiss/bin/python bench/compare.py --dataset fashion-mnist-784 \
      --base  /work/shared/datasets/fashion-mnist-784/base.u8bin \
      --queries /work/shared/datasets/fashion-mnist-784/query.u8bin \
      --gt /work/shared/datasets/fashion-mnist-784/gt.ibin --metric l2 \
      --fathom-bin .build/release/fathom --workdir bench/work/fashion-mnist-784

Steps: (a) `fathom build` (timed, peak RSS by /usr/bin/time -v); (b) DiskANN build with its in-RAM PQ bytes
per vector set to Fathom's RAM per vector (`fathom info --json`: summary.ram_per_vector_bytes, floored at 8
and capped at d); (c) `fathom search` after a page-cache drop; (d) the DiskANN (L x beam, cache dropped
before each setting) and FAISS (nprobe) sweeps. Writes bench/results/NAME.json and NAME.png and prints a
summary. --skip-build reuses the indexes (and build figures) in WORKDIR; --only picks systems, and the
systems not rerun are kept from an existing NAME.json (each system records when and under what load it ran).
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(BENCH, "peers"))
import common  # noqa: E402

DISKANN_PY = os.path.join(BENCH, ".venv-diskann", "bin", "python")
FAISS_PY = os.path.join(BENCH, ".venv-faiss", "bin", "python")
SYSTEMS = ("fathom", "diskann", "faiss")
TARGET = 0.90


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_now():
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def run_json(cmd, what):
    """Runs cmd, streams its stderr through, parses its stdout as JSON. Returns (obj, wall_s, child_peak_rss)."""
    log(f"{what}: {' '.join(cmd)}")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{what} failed (exit {p.returncode}): {' '.join(cmd)}")
    try:
        obj = json.loads(out)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{what}: stdout is not JSON ({e}): {out[:400]!r}")
    return obj, wall, ru.ru_maxrss * 1024


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


def fathom_build(a, wd):
    idx = os.path.join(wd, "fathom")
    if a.skip_build and os.path.isdir(idx):
        log(f"fathom: reusing {idx}")
        rec = load_build_records(wd).get("fathom", {"reused": True})
    else:
        cmd = [a.fathom_bin, "build", "--input", a.base, "--output", idx, "--metric", a.metric,
               "--memory-budget", a.memory_budget, "--threads", str(a.threads), "--quiet"]
        load0 = load_now()
        wall, rss, _ = time_v(cmd, "fathom build", os.path.join(wd, "fathom_build.log"))
        rec = {"build_seconds": round(wall, 3), "peak_rss_bytes": rss, "command": cmd, "load_before": load0,
               "load_after": load_now(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        log(f"fathom build: {wall:.1f} s, peak RSS {rss / 2**20:.0f} MiB")
    info = fathom_info(a, idx)
    summ = info.get("summary", info)
    rec["ram_per_vector_bytes"] = summ.get("ram_per_vector_bytes")
    rec["ram_to_serve_bytes"] = summ.get("ram_to_serve_bytes")
    rec["index_bytes"] = summ.get("disk_bytes")
    rec["heads"] = summ.get("heads")
    man = info.get("manifest") or {}
    if isinstance(man, dict) and isinstance(man.get("build"), dict):
        rec["manifest_build"] = man["build"]
    if not rec.get("reused"):
        save_build_record(wd, "fathom", rec)
    return rec


def fathom_search(a, wd):
    idx = os.path.join(wd, "fathom")
    if not a.no_drop_cache:
        common.drop_caches()
    cmd = [a.fathom_bin, "search", "--index", idx, "--queries", a.queries, "--gt", a.gt, "-k", str(a.k),
           "--probes", a.fathom_probes, "--threads", str(a.threads), "--json"]
    if a.limit:
        cmd += ["--limit", str(a.limit)]
    load0 = load_now()
    obj, wall, rss = run_json(cmd, "fathom search")
    rows = obj["rows"] if isinstance(obj, dict) else obj
    for r in rows:
        r["system"], r["config"] = "fathom", "fathom"
    return {"command": cmd, "rows": rows, "wall_seconds": round(wall, 1), "peak_rss_bytes": rss,
            "load_before": load0, "load_after": load_now()}


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


def diskann_build(a, wd, bpv, metric):
    ddir = os.path.join(wd, "diskann")
    if a.skip_build and os.path.exists(os.path.join(ddir, "ann_disk.index")):
        log(f"diskann: reusing {ddir}")
        rec = load_build_records(wd).get("diskann", {"reused": True})
        with open(os.path.join(ddir, "ann_pq_compressed.bin"), "rb") as f:
            rec["pq_bytes_per_vector"] = int.from_bytes(f.read(8)[4:8], "little")
        if rec["pq_bytes_per_vector"] != bpv:
            log(f"WARNING: the reused DiskANN index keeps {rec['pq_bytes_per_vector']} B/vector in RAM, "
                f"the matched figure is {bpv} B/vector: rerun without --skip-build")
        return rec
    cmd = [DISKANN_PY, os.path.join(BENCH, "peers", "diskann_peer.py"), "build", "--data", a.base, "--metric", metric,
           "--dir", ddir, "--ram-bytes-per-vector", str(bpv), "--threads", str(a.threads),
           "--R", str(a.diskann_R), "--L", str(a.diskann_build_L)]
    load0 = load_now()
    obj, wall, rss = run_json(cmd, "diskann build")
    obj.update({"command": cmd, "wall_seconds": round(wall, 3), "load_before": load0, "load_after": load_now(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    log(f"diskann build: {obj['build_seconds']:.1f} s, peak RSS {obj['peak_rss_bytes'] / 2**20:.0f} MiB, "
        f"{obj['pq_bytes_per_vector']} B/vector PQ in RAM")
    save_build_record(wd, "diskann", obj)
    return obj


def diskann_search(a, wd):
    ddir = os.path.join(wd, "diskann")
    cmd = [DISKANN_PY, os.path.join(BENCH, "peers", "diskann_peer.py"), "search", "--dir", ddir,
           "--queries", a.queries, "--gt", a.gt, "-k", str(a.k), "--L", a.diskann_L, "--beam", a.diskann_beam,
           "--threads", str(a.threads)]
    if not a.no_drop_cache:
        cmd.append("--drop-cache")
    if a.limit:
        cmd += ["--limit", str(a.limit)]
    load0 = load_now()
    obj, wall, _ = run_json(cmd, "diskann search")
    for r in obj["rows"]:
        r["system"], r["config"] = "diskann", f"diskann beam {r['beam']}"
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
        obj, wall, _ = run_json(cmd, f"faiss {kind}")
        many_kf = len(common.parse_int_list(a.k_factor)) > 1
        for r in obj["rows"]:
            r["system"] = "faiss"
            r["config"] = "faiss " + r["index"] + (f" k_factor {r['k_factor']}" if many_kf and "k_factor" in r else "")
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
    """Best QPS at recall >= target, and QPS / KiB interpolated at exactly target on the frontier."""
    ok = [r for r in rows if r.get("recall") is not None and r["recall"] >= target]
    best = max(ok, key=lambda r: r["qps"]) if ok else None
    res = {"best_qps": best["qps"] if best else None, "best_recall": best["recall"] if best else None,
           "best_row": best, "qps_at_target": None, "kib_at_target": None, "ios_at_target": None}
    f = frontier(rows)
    for (r0, q0, row0), (r1, q1, row1) in zip(f, f[1:]):
        if r0 < target <= r1:
            t = (target - r0) / (r1 - r0)
            res["qps_at_target"] = round(math.exp(math.log(q0) + t * (math.log(q1) - math.log(q0))), 1)
            for key, name in (("mean_kib", "kib_at_target"), ("mean_ios", "ios_at_target")):
                if row0.get(key) is not None and row1.get(key) is not None:
                    res[name] = round(row0[key] + t * (row1[key] - row0[key]), 2)
            break
    else:
        if f and f[0][0] >= target:  # even the cheapest setting clears the target: no bracket
            res["note"] = "all settings above target; qps_at_target is a lower bound = best_qps"
            res["qps_at_target"] = best["qps"] if best else None
            res["kib_at_target"] = best.get("mean_kib") if best else None
            res["ios_at_target"] = best.get("mean_ios") if best else None
    return res


def summarize(result):
    rows = result["rows"]
    configs = {}
    for r in rows:
        configs.setdefault(r["config"], []).append(r)
    per_config = {c: dict(at_target(rs), system=rs[0]["system"]) for c, rs in configs.items()}
    per_system = {}
    for c, s in per_config.items():
        cur = per_system.get(s["system"])
        key = s["qps_at_target"] or s["best_qps"] or 0
        if cur is None or key > (cur["qps_at_target"] or cur["best_qps"] or 0):
            per_system[s["system"]] = dict(s, config=c)
    summ = {"target_recall": TARGET, "per_config": {c: {k: v for k, v in s.items() if k != "best_row"}
                                                    for c, s in per_config.items()},
            "per_system": {k: {kk: vv for kk, vv in v.items() if kk != "best_row"} for k, v in per_system.items()}}
    f, d = per_system.get("fathom"), per_system.get("diskann")
    ratios = {}
    if f and d:
        if f["qps_at_target"] and d["qps_at_target"]:
            ratios["qps_at_target"] = round(f["qps_at_target"] / d["qps_at_target"], 3)
        if f["best_qps"] and d["best_qps"]:
            ratios["best_qps"] = round(f["best_qps"] / d["best_qps"], 3)
        if f.get("kib_at_target") and d.get("kib_at_target"):
            ratios["kib_at_target"] = round(f["kib_at_target"] / d["kib_at_target"], 3)
    if f and d and (f.get("note") or d.get("note")):
        ratios["note"] = "qps_at_target of " + " and ".join(
            n for n, v in (("fathom", f), ("diskann", d)) if v.get("note")) + " is a lower bound (no setting below 0.90)"
    bf = (result["systems"].get("fathom", {}).get("build") or {}).get("build_seconds")
    bd = (result["systems"].get("diskann", {}).get("build") or {}).get("build_seconds")
    if bf and bd:
        ratios["build_seconds"] = round(bf / bd, 3)
    summ["fathom_over_diskann"] = ratios
    return summ


def print_summary(result):
    s = result["summary"]
    print(f"\n== {result['dataset']}: recall@{result['k']} target {TARGET:.2f}, {result['threads']} thread(s), "
          f"load {result['machine'].get('loadavg')} ==")
    for name, sysd in sorted(result["systems"].items(), key=lambda t: SYSTEMS.index(t[0])):
        b = sysd.get("build") or {}
        for bb in ([b] if b else []) + [x.get("build", {}) for x in sysd.get("indexes", [])]:
            if bb.get("build_seconds") is not None:
                label = bb.get("index", name)
                rss = bb.get("peak_rss_bytes") or bb.get("build_peak_rss_bytes")
                extra = ""
                if name == "fathom" and b.get("ram_per_vector_bytes") is not None:
                    extra = f", RAM {b['ram_per_vector_bytes']:.1f} B/vector"
                if name == "diskann":
                    extra = f", PQ {b.get('pq_bytes_per_vector')} B/vector in RAM"
                print(f"build  {label:<34} {bb['build_seconds']:9.1f} s   peak RSS "
                      f"{(rss or 0) / 2**20:8.0f} MiB{extra}")
    print(f"{'config':<44} {'best QPS@>=0.90':>16} {'(recall)':>9} {'QPS@0.90':>10} {'KiB@0.90':>9} {'IOs@0.90':>9}")
    lower = False
    for c, v in sorted(s["per_config"].items()):
        fmt = lambda x, f="{:.1f}": (f.format(x) if x is not None else "-")  # noqa: E731
        mark = ">=" if v.get("note") else ""
        lower = lower or bool(mark)
        print(f"{c:<44} {fmt(v['best_qps']):>16} {fmt(v['best_recall'], '{:.4f}'):>9} "
              f"{mark + fmt(v['qps_at_target']):>10} {fmt(v['kib_at_target']):>9} {fmt(v['ios_at_target']):>9}")
    if lower:
        print(">=: even the cheapest setting is above the target: its figures stand in (a lower bound on QPS)")
    print("IOs: Fathom counts posting reads (several 4 KiB pages each), DiskANN node reads (one 4 KiB sector each)")
    if s.get("fathom_over_diskann"):
        print("Fathom / DiskANN (best config of each): " +
              ", ".join(f"{k} {v}" for k, v in s["fathom_over_diskann"].items()))


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    palette = {"fathom": ["tab:red", "darkred", "salmon"], "diskann": ["tab:blue", "navy", "tab:cyan", "tab:purple"],
               "faiss": ["tab:green", "olive", "darkgreen", "tab:brown"]}
    used = {}
    markers = iter("osD^v<>ph*" * 3)
    configs = {}
    for r in result["rows"]:
        if r.get("recall") is not None and r.get("qps"):
            configs.setdefault(r["config"], []).append(r)
    for c, rs in sorted(configs.items(), key=lambda t: (SYSTEMS.index(t[1][0]["system"]), t[0])):
        sysname = rs[0]["system"]
        i = used.get(sysname, 0)
        used[sysname] = i + 1
        colors = palette.get(sysname, ["black"])
        in_ram = sysname == "faiss"
        rs = sorted(rs, key=lambda r: r["recall"])
        ax.plot([r["recall"] for r in rs], [r["qps"] for r in rs], "--" if in_ram else "-", marker=next(markers),
                ms=5, color=colors[i % len(colors)], lw=2.2 if sysname == "fathom" else 1.5,
                alpha=0.65 if in_ram else 0.95, label=c + (" (all in RAM)" if in_ram else ""))
    ax.set_yscale("log")
    ax.axvline(TARGET, color="gray", ls=":", lw=1.2)
    ax.text(TARGET, 0.01, f" recall {TARGET:.2f}", color="gray", va="bottom", fontsize=8,
            transform=ax.get_xaxis_transform())
    ax.set_xlabel(f"recall@{result['k']}")
    ax.set_ylabel("queries per second (single query at a time, log scale)")
    m = result["machine"]
    ax.set_title(f"{result['dataset']} ({result.get('n')} x {result.get('d')}, {result['metric']}), "
                 f"{result['threads']} thread, page cache dropped\n{m.get('cpu', '')}, load {m.get('loadavg')} -> "
                 f"{result.get('machine_end', {}).get('loadavg')}, {m.get('date', '')}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
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
    p.add_argument("--skip-build", action="store_true", help="reuse the indexes in WORKDIR")
    p.add_argument("--only", default="fathom,diskann,faiss")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, help="first N queries only (quick runs)")
    p.add_argument("--no-drop-cache", action="store_true")
    p.add_argument("--memory-budget", default="4GiB", help="fathom build --memory-budget")
    p.add_argument("--fathom-probes", default="2,4,8,16,32,64")
    p.add_argument("--diskann-L", default="10,20,40,60,80,120,160")
    p.add_argument("--diskann-beam", default="2,4")
    p.add_argument("--diskann-R", type=int, default=64)
    p.add_argument("--diskann-build-L", type=int, default=100)
    p.add_argument("--diskann-bytes-per-vector", type=int,
                   help="PQ bytes/vector in RAM (default: Fathom's RAM per vector, floor 8, cap d; 32 without Fathom)")
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
    if "fathom" in only:
        if not (os.path.isfile(a.fathom_bin) and os.access(a.fathom_bin, os.X_OK)):
            raise SystemExit(f"{a.fathom_bin}: no fathom binary (swift build -c release, or --only diskann,faiss)")
        a.fathom_bin = os.path.abspath(a.fathom_bin)
    if "diskann" in only and not os.path.exists(DISKANN_PY) or "faiss" in only and not os.path.exists(FAISS_PY):
        raise SystemExit("peer venvs missing: run bash bench/peers/setup.sh")
    wd = os.path.abspath(a.workdir or os.path.join(BENCH, "work", a.dataset))
    os.makedirs(wd, exist_ok=True)
    os.makedirs(a.results_dir, exist_ok=True)
    n, d = common.bin_shape(a.base)
    dtype = common.dtype_of(a.base)

    out_json = os.path.join(a.results_dir, a.dataset + ".json")
    result = {"dataset": a.dataset, "base": a.base, "queries": a.queries, "gt": a.gt, "metric": a.metric,
              "n": n, "d": d, "dtype": dtype.__name__, "k": a.k, "threads": a.threads, "limit": a.limit,
              "page_cache_dropped": not a.no_drop_cache, "machine": common.machine_info(), "systems": {}}
    if os.path.exists(out_json) and set(only) != set(SYSTEMS):  # keep the systems not rerun
        try:
            prev = json.load(open(out_json))
            for s, v in prev.get("systems", {}).items():
                if s not in only:
                    result["systems"][s] = v
                    log(f"keeping {s} from the previous {out_json} (measured {v.get('measured', {}).get('date')})")
        except (OSError, ValueError):
            pass

    def stamp():
        return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg": load_now()}

    # (a) + (b): builds, in this order, in the same run
    fbuild = None
    if "fathom" in only:
        fbuild = fathom_build(a, wd)
    if "diskann" in only:
        if a.diskann_bytes_per_vector:
            bpv = a.diskann_bytes_per_vector
            src = "--diskann-bytes-per-vector"
        else:
            ram = (fbuild or {}).get("ram_per_vector_bytes")
            if ram is None and os.path.isdir(os.path.join(wd, "fathom")) and os.path.exists(a.fathom_bin):
                ram = fathom_info(a, os.path.join(wd, "fathom")).get("summary", {}).get("ram_per_vector_bytes")
            if ram is None:
                ram = load_build_records(wd).get("fathom", {}).get("ram_per_vector_bytes")
            src = "fathom ram_per_vector_bytes" if ram is not None else "default 32 (no Fathom index)"
            bpv = int(min(d, max(8, round(ram)))) if ram is not None else 32
        metric = diskann_metric(a, d, dtype)
        log(f"diskann: {bpv} B/vector in RAM ({src}), metric {metric}")
        dbuild = diskann_build(a, wd, bpv, metric)
        dbuild["ram_bytes_per_vector_source"] = src
        dbuild["metric_used"] = dbuild.get("metric", metric)

    # (c) + (d): searches
    if "fathom" in only:
        m = stamp()
        fs = fathom_search(a, wd)
        result["systems"]["fathom"] = {"build": fbuild, "search": {k: v for k, v in fs.items() if k != "rows"},
                                       "rows": fs["rows"], "measured": m}
    if "diskann" in only:
        m = stamp()
        ds = diskann_search(a, wd)
        result["systems"]["diskann"] = {"build": dbuild, "search": {k: v for k, v in ds.items() if k != "rows"},
                                        "rows": ds["rows"], "measured": m}
    if "faiss" in only:
        m = stamp()
        runs = faiss_runs(a, wd)
        result["systems"]["faiss"] = {
            "indexes": [{"build": {"index": r["index"], "build_seconds": r.get("build_seconds"),
                                   "peak_rss_bytes": r.get("peak_rss_bytes"), "nlist": r["nlist"], "pq_m": r["pq_m"],
                                   "ram_bytes_per_vector": r.get("ram_bytes_per_vector")},
                         "search": {k: v for k, v in r.items() if k != "rows"}} for r in runs],
            "rows": [row for r in runs for row in r["rows"]], "measured": m}

    result["rows"] = [r for s in SYSTEMS if s in result["systems"] for r in result["systems"][s]["rows"]]
    result["machine_end"] = {"uptime": common.machine_info().get("uptime"), "loadavg": load_now()}
    result["summary"] = summarize(result)
    with open(out_json, "w") as f:
        json.dump(result, f, indent=1)
    png = os.path.join(a.results_dir, a.dataset + ".png")
    plot(result, png)
    print_summary(result)
    print(f"\nwrote {out_json} and {png}")


if __name__ == "__main__":
    main()
