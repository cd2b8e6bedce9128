"""Shared helpers for the peer drivers and bench/compare.py (numpy only, works with numpy 1 and 2).

Formats (big-ann-benchmarks): .fbin / .u8bin / .i8bin = uint32 n, uint32 d, then n*d row-major values;
.ibin ground truth = uint32 nq, uint32 k, nq*k int32 ids, then nq*k float32 distances.
"""
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

DTYPES = {".fbin": np.float32, ".u8bin": np.uint8, ".i8bin": np.int8, ".bin": np.float32}


def dtype_of(path):
    ext = os.path.splitext(path)[1].lower()
    if ext not in DTYPES:
        raise SystemExit(f"{path}: unknown extension {ext!r} (expected .fbin, .u8bin or .i8bin)")
    return DTYPES[ext]


def bin_shape(path):
    with open(path, "rb") as f:
        n, d = np.fromfile(f, dtype=np.uint32, count=2)
    return int(n), int(d)


def read_bin(path, max_rows=None):
    """Memory-maps a big-ann vector file; returns an (n, d) array of the file's dtype."""
    n, d = bin_shape(path)
    if max_rows is not None:
        n = min(n, max_rows)
    return np.memmap(path, dtype=dtype_of(path), mode="r", offset=8, shape=(n, d))


def write_fbin(path, x):
    """Writes a float32 matrix as .fbin (uint32 n, uint32 d, then the rows)."""
    with open(path, "wb") as f:
        np.array(x.shape, dtype=np.uint32).tofile(f)
        np.ascontiguousarray(x, dtype=np.float32).tofile(f)


def write_labels(path, labels):
    """Writes labels as text, one decimal per line (`fathom build/insert/delete --labels`)."""
    with open(path, "w") as f:
        if len(labels):
            f.write("\n".join(map(str, np.asarray(labels, dtype=np.int64).tolist())))
            f.write("\n")


def read_ibin(path):
    """Ground truth: (ids int32 [nq, K], distances float32 [nq, K])."""
    with open(path, "rb") as f:
        nq, k = (int(x) for x in np.fromfile(f, dtype=np.uint32, count=2))
        ids = np.fromfile(f, dtype=np.int32, count=nq * k).reshape(nq, k)
        dist = np.fromfile(f, dtype=np.float32, count=nq * k).reshape(nq, k)
    return ids, dist


def recall_at_k(found, gt_ids, gt_dist, k, rel_tol=1e-6):
    """big-ann recall@k: a returned id counts if it is in the GT top-k, extended by the GT entries whose
    distance equals the k-th one (within rel_tol relative). found: [nq, >=k] ids (negative = none)."""
    nq = found.shape[0]
    if gt_ids.shape[0] < nq:
        raise SystemExit(f"ground truth has {gt_ids.shape[0]} rows, fewer than the {nq} queries")
    if gt_ids.shape[1] < k:
        raise SystemExit(f"ground truth has k = {gt_ids.shape[1]} < {k}")
    hits = 0
    for i in range(nq):
        kth = float(gt_dist[i, k - 1])
        tol = rel_tol * max(abs(kth), 1e-30)
        ext = k
        row = gt_dist[i]
        while ext < row.shape[0] and abs(float(row[ext]) - kth) <= tol:
            ext += 1
        allowed = set(int(x) for x in gt_ids[i, :ext])
        hits += sum(1 for x in found[i, :k] if int(x) in allowed)
    return hits / float(nq * k)


def latency_stats(lat_ns):
    """lat_ns: per-query latencies in nanoseconds -> dict of mean/p50/p99/p99.9 in microseconds."""
    us = np.asarray(lat_ns, dtype=np.float64) / 1e3
    return {
        "mean_us": round(float(us.mean()), 2),
        "p50_us": round(float(np.percentile(us, 50)), 2),
        "p99_us": round(float(np.percentile(us, 99)), 2),
        "p999_us": round(float(np.percentile(us, 99.9)), 2),
    }


LAST_DROP = {"ok": None, "reason": None}


def drop_caches(record=None):
    """Drops the Linux page cache (sync, then 3 > /proc/sys/vm/drop_caches; needs root). Returns True when the
    write succeeded, False otherwise, and says why on stderr. The outcome is kept in LAST_DROP and, when
    `record` (a dict) is given, written into it: page_cache_dropped (bool) and drop_cache_error (reason or None)."""
    ok, reason = False, None
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        ok = True
    except OSError as e:
        reason = f"{type(e).__name__}: {e}"
        print(f"warning: cannot drop the page cache: {reason}", file=sys.stderr)
    LAST_DROP.update(ok=ok, reason=reason)
    if record is not None:
        record["page_cache_dropped"] = ok
        record["drop_cache_error"] = reason
    return ok


def loadavg():
    """[1-, 5-, 15-minute load] from /proc/loadavg, or None."""
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def mapped_libraries(names):
    """Which of `names` (substrings, e.g. "libaio") are mapped into this process (/proc/self/maps)."""
    try:
        text = open("/proc/self/maps").read()
    except OSError:
        return None
    return {n: any(n in line for line in text.splitlines()) for n in names}


def proc_io():
    """This process's IO counters (/proc/self/io): read_bytes counts block-device reads, O_DIRECT included."""
    out = {}
    try:
        with open("/proc/self/io") as f:
            for line in f:
                key, val = line.split(":")
                out[key.strip()] = int(val)
    except OSError:
        pass
    return out


def peak_rss_bytes():
    """Peak RSS of this process and of its waited-for children, in bytes (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(max(own, kids)) * 1024


def set_single_thread_env(threads):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


_RESULT_OUT = None


def claim_stdout():
    """From now on fd 1 (and sys.stdout) go to stderr, for good: native libraries print progress on stdout,
    even from destructors at exit. emit_json() writes to the original stdout."""
    global _RESULT_OUT
    if _RESULT_OUT is None:
        sys.stdout.flush()
        _RESULT_OUT = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    return _RESULT_OUT


def emit_json(obj):
    out = _RESULT_OUT or sys.stdout
    out.write(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    out.flush()


def parse_int_list(s):
    return [int(x) for x in str(s).split(",") if x.strip()]


def now():
    return time.perf_counter()


def machine_info():
    info = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        info["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    la = loadavg()
    if la is not None:
        info["loadavg"] = la
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["nproc"] = os.cpu_count()
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_total_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    info["kernel"] = os.uname().release
    return info
