#!/usr/bin/env python3
"""Updates-in-place benchmark (issue 13's bars). Needs numpy (system python3 has it).

  bench/updates.py --base /work/data/syn1000000.fbin --queries /work/data/syn1000000.q.fbin --metric l2 --name syn1m
  bench/updates.py --base /work/shared/datasets/pypi-minilm-384/base.fbin \
                   --queries /work/shared/datasets/pypi-minilm-384/query.fbin --metric ip --name pypi --kills 0 --power-losses 0

Protocol (80/20/10): build on the first 80% of the base; `fathom insert` the remaining 20% in
durable batches of --batch (10K); `fathom delete` a seeded random 10% of all rows. Ground truth
for the FINAL set (live rows) is computed here with `fathom gt`, mapped to labels (labels =
original row numbers). A fresh index is built on the final set with the same labels. Both are
searched at the --probes sweep: the bar compares recall@10 at the smallest probes where the
fresh build reaches --target (0.90): |Δ| ≤ 0.01 (syn) / 0.015 (pypi), and QPS ratio ≥ 0.8.

Also measured: insert throughput (vectors/s, one thread, group commit per batch) and p99
batch latency (an insert is acknowledged when its batch's fsync returns: its latency is the
batch's); search p99 while a `fathom insert` stream runs vs without it (≤ 1.5×); --kills
rounds of kill -9 at random moments of an insert/delete stream and --power-losses rounds
that also drop every log byte after the last acknowledged fsync (truncate to a random point
at or after it, then scribble the rest of the page): after each, every acknowledged insert
is found with its label (top-1 of its own vector, distance ~0), every acknowledged delete is
absent, and `fathom verify` passes.

Writes bench/results/updates-NAME.json and prints it. Run on a quiet machine, release build:
  swift build -c release --product fathom
"""
import argparse, json, os, random, shutil, signal, subprocess, sys, time
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
import common  # noqa: E402  (bench/peers/common.py: the shared file helpers)


def load(path):
    n, d = np.fromfile(path, dtype=np.uint32, count=2)
    return np.memmap(path, dtype=np.float32, mode="r", offset=8, shape=(int(n), int(d)))


def read_ibin(path):
    n, k = np.fromfile(path, dtype=np.uint32, count=2)
    ids = np.fromfile(path, dtype=np.int32, offset=8, count=int(n) * int(k)).reshape(int(n), int(k))
    return ids


def run(cmd, check=True):
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r, time.time() - t0


def drop_cache():
    """Drops the page cache (root only); returns whether it did."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def search(F, idx, q, gt, probes, threads, extra=(), drop=True):
    """One `fathom search` sweep; each row records whether the page cache was dropped before
    the run and the 1-minute load before and after it."""
    dropped = drop_cache() if drop else False
    before = os.getloadavg()[0]
    r, _ = run([F, "search", "--index", idx, "--queries", q, "--gt", gt, "-k", "10", "--probes", probes,
                "--threads", str(threads), "--json", "--quiet", *extra])
    after = os.getloadavg()[0]
    rows = json.loads(r.stdout)["rows"]
    for row in rows:
        row["page_cache_dropped"], row["load_before"], row["load_after"] = dropped, before, after
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--metric", default="l2")
    ap.add_argument("--name", required=True)
    ap.add_argument("--fathom-bin", default=os.path.join(HERE, "..", ".build", "release", "fathom"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--probes", default="2,4,6,8,12,16,24,32,48,64")
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--memory-budget", default="4GiB")
    ap.add_argument("--build-args", default="", help="extra `fathom build` arguments, e.g. '--codec lvq8'")
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--power-losses", type=int, default=10)
    ap.add_argument("--seed", type=int, default=13)
    a = ap.parse_args()
    F = os.path.abspath(a.fathom_bin)
    work = a.work or os.path.join(HERE, "work", "updates-" + a.name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    W = lambda name: os.path.join(work, name)
    rng = np.random.default_rng(a.seed)
    out = {"name": a.name, "base": a.base, "metric": a.metric, "batch": a.batch}
    build_extra = a.build_args.split()

    X = load(a.base)
    n, d = X.shape
    n_base = int(n * 0.8)
    print(f"[{a.name}] n={n} d={d}: build on {n_base}, insert {n - n_base}, delete {n // 10}", file=sys.stderr)
    common.write_fbin(W("base.fbin"), X[:n_base])
    common.write_fbin(W("insert.fbin"), X[n_base:])
    deleted = np.sort(rng.choice(n, size=n // 10, replace=False))
    common.write_labels(W("delete.labels"), deleted)
    live = np.setdiff1d(np.arange(n), deleted)
    common.write_fbin(W("final.fbin"), X[live])
    common.write_labels(W("final.labels"), live)

    # Ground truth of the final set, in labels (= original rows).
    run([F, "gt", "--base", W("final.fbin"), "--queries", a.queries, "-k", "10", "--metric", a.metric,
         "--output", W("final.gt.rows.ibin"), "--quiet"])
    raw = open(W("final.gt.rows.ibin"), "rb").read()
    nq, k = np.frombuffer(raw[:8], dtype=np.uint32)
    rows = np.frombuffer(raw[8:8 + 4 * nq * k], dtype=np.int32).reshape(nq, k)
    with open(W("final.gt.ibin"), "wb") as f:
        f.write(raw[:8]); f.write(live[rows].astype(np.int32).tobytes()); f.write(raw[8 + 4 * nq * k:])

    # Updated index: build 80%, insert 20%, delete 10%.
    _, t = run([F, "build", "--input", W("base.fbin"), "--output", W("upd"), "--metric", a.metric,
                "--memory-budget", a.memory_budget, "--quiet", *build_extra])
    out["build_80_seconds"] = t
    r, t = run([F, "insert", "--index", W("upd"), "--input", W("insert.fbin"), "--batch", str(a.batch), "--json", "--quiet"])
    ins = json.loads(r.stdout)
    out["insert"] = ins
    r, t = run([F, "delete", "--index", W("upd"), "--labels", W("delete.labels"), "--json", "--quiet"])
    out["delete"] = json.loads(r.stdout); out["delete"]["seconds"] = t
    run([F, "verify", W("upd"), "--quiet"])

    # Fresh build of the final set (same labels).
    _, t = run([F, "build", "--input", W("final.fbin"), "--output", W("fresh"), "--labels", W("final.labels"),
                "--metric", a.metric, "--memory-budget", a.memory_budget, "--quiet", *build_extra])
    out["build_fresh_seconds"] = t
    fresh = search(F, W("fresh"), a.queries, W("final.gt.ibin"), a.probes, a.threads)
    upd = search(F, W("upd"), a.queries, W("final.gt.ibin"), a.probes, a.threads)
    out["fresh"], out["updated"] = fresh, upd
    at = next((i for i, r in enumerate(fresh) if r["recall"] >= a.target), len(fresh) - 1)
    p = fresh[at]["probes"]
    out["bar"] = {"probes": p, "fresh_recall": fresh[at]["recall"], "updated_recall": upd[at]["recall"],
                  "recall_delta": upd[at]["recall"] - fresh[at]["recall"],
                  "qps_ratio": upd[at]["qps"] / fresh[at]["qps"],
                  "insert_vectors_per_second": ins["vectors_per_second"], "insert_p99_batch_ms": ins["p99_batch_ms"]}
    print(json.dumps(out["bar"]), file=sys.stderr)

    # Search p99 with and without a sustained insert stream (on a copy of the updated index).
    shutil.copytree(W("upd"), W("stream"))
    # Small groups: batches of 100 (one fsync each), the latency a service's single inserts would see.
    small = min(20_000, n - n_base)
    common.write_fbin(W("small.fbin"), X[n_base:n_base + small] + rng.normal(0, 1e-3, size=(small, d)).astype(np.float32))
    common.write_labels(W("small.labels"), np.arange(20 * n, 20 * n + small))
    r, _ = run([F, "insert", "--index", W("stream"), "--input", W("small.fbin"), "--labels", W("small.labels"),
                "--batch", "100", "--json", "--quiet"])
    out["insert_batches_of_100"] = json.loads(r.stdout)
    search(F, W("stream"), a.queries, W("final.gt.ibin"), str(p), a.threads, drop=False)   # warm-up
    quiet = search(F, W("stream"), a.queries, W("final.gt.ibin"), str(p), a.threads, drop=False)[0]
    stream_rows = min(n - n_base, 200_000)
    common.write_fbin(W("stream.fbin"), X[n_base:n_base + stream_rows] + rng.normal(0, 1e-3, size=(stream_rows, d)).astype(np.float32))
    # A sustained stream: `fathom insert` runs back to back (fresh labels each time) until the search ends.
    import threading
    stop = threading.Event()
    gaps = []
    def stream():
        r = 0
        while not stop.is_set():
            common.write_labels(W("stream.labels"), np.arange(n + r * stream_rows, n + (r + 1) * stream_rows))
            proc = subprocess.Popen([F, "insert", "--index", W("stream"), "--input", W("stream.fbin"), "--labels", W("stream.labels"),
                                     "--batch", "1000", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None and not stop.is_set(): time.sleep(0.05)
            if proc.poll() is None: proc.kill()
            proc.wait(); r += 1
    th = threading.Thread(target=stream); th.start()
    time.sleep(2.0)
    busy = search(F, W("stream"), a.queries, W("final.gt.ibin"), str(p), a.threads, drop=False)[0]
    covered = th.is_alive()
    stop.set(); th.join()
    out["stream"] = {"probes": p, "p99_us_quiet": quiet["p99_us"], "p99_us_during_inserts": busy["p99_us"],
                     "ratio": busy["p99_us"] / quiet["p99_us"], "stream_covered_the_search": covered}

    # kill -9 (and simulated power losses) at random moments of an insert/delete stream.
    crash = {"kills": 0, "power_losses": 0, "failures": []}
    if a.kills + a.power_losses > 0:
        # The crash index: a build on the first 100K rows (replay at every reopen stays short).
        crash_n = min(n_base, 100_000)
        common.write_fbin(W("crash.base.fbin"), X[:crash_n])
        run([F, "build", "--input", W("crash.base.fbin"), "--output", W("crash"), "--metric", a.metric,
             "--memory-budget", a.memory_budget, "--quiet", *build_extra])
        open(W("empty.labels"), "w").close()
        run([F, "delete", "--index", W("crash"), "--labels", W("empty.labels"), "--quiet"])   # creates the log
        floor = os.path.getsize(W("crash/updates.wal"))
        # Label L's vector: row L mod n plus noise seeded by L (distinct, regenerated on demand).
        sigma = 0.01 * float(np.asarray(X[:10_000]).std())
        def vec(labels):
            return np.stack([X[int(l) % n] + np.random.default_rng(int(l)).normal(0, sigma, d).astype(np.float32) for l in labels])
        next_label = 10 * n
        present, absent = set(), set()      # acknowledged inserts (not deleted since) / acknowledged deletes
        pr = random.Random(a.seed)
        for rnd in range(a.kills + a.power_losses):
            power = rnd >= a.kills
            if rnd % 5 == 4 and present:
                victims = pr.sample(sorted(present), min(2000, len(present)))
                common.write_labels(W("crash.del"), victims)
                proc = subprocess.Popen([F, "delete", "--index", W("crash"), "--labels", W("crash.del"), "--quiet"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                time.sleep(pr.uniform(0.0, 2.0))
                proc.send_signal(signal.SIGKILL)
                so, _ = proc.communicate()
                present.difference_update(victims)
                if so.startswith("deleted"):
                    absent.update(victims)      # acknowledged: must stay deleted
                # not acknowledged: either outcome is allowed, so neither set checks them
            else:
                m = 10_000
                labels = np.arange(next_label, next_label + m); next_label += m
                common.write_fbin(W("crash.fbin"), vec(labels)); common.write_labels(W("crash.labels"), labels)
                proc = subprocess.Popen([F, "insert", "--index", W("crash"), "--input", W("crash.fbin"), "--labels", W("crash.labels"),
                                         "--batch", "1000", "--print-acks", "--quiet"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                time.sleep(pr.uniform(0.3, 3.0))
                proc.send_signal(signal.SIGKILL)
                so, _ = proc.communicate()
                acks = [l.split() for l in so.splitlines() if l.startswith("ack ")]
                acked = int(acks[-1][1]) if acks else 0
                present.update(int(l) for l in labels[:acked])
                if power:
                    # Power loss: everything after the last acknowledged fsync may be lost or garbage.
                    wal = W("crash/updates.wal")
                    size = os.path.getsize(wal)
                    # Durable: what this round acknowledged, else all the log had before it.
                    durable = int(acks[-1][2]) if acks else floor
                    cut = pr.randint(durable, max(durable, size))
                    with open(wal, "r+b") as f:
                        f.truncate(cut)
                        f.seek(cut)
                        f.write(os.urandom((-cut) % 4096))
            crash["power_losses" if power else "kills"] += 1
            # Reopen as a writer (cuts a torn tail), verify, then check acknowledged updates.
            run([F, "delete", "--index", W("crash"), "--labels", W("empty.labels"), "--quiet"])
            r, _ = run([F, "verify", W("crash"), "--quiet"], check=False)
            if r.returncode != 0:
                crash["failures"].append({"round": rnd, "verify": r.stdout[-500:]})
            floor = os.path.getsize(W("crash/updates.wal"))   # everything in it now was acknowledged or recovered
            want = pr.sample(sorted(present), min(2000, len(present))) + pr.sample(sorted(absent), min(500, len(absent)))
            if not want:
                continue
            common.write_fbin(W("check.q.fbin"), vec(want))
            run([F, "search", "--index", W("crash"), "--queries", W("check.q.fbin"), "-k", "1", "--probes", "64",
                 "--threads", str(a.threads), "--output", W("check.ibin"), "--quiet"])
            got = read_ibin(W("check.ibin"))[:, 0].astype(np.int64) & 0xFFFFFFFF
            lost = [l for j, l in enumerate(want) if l in present and int(got[j]) != l]
            back = [l for j, l in enumerate(want) if l in absent and int(got[j]) == l]
            if lost or back:
                crash["failures"].append({"round": rnd, "power_loss": power, "acknowledged_inserts_missing": len(lost),
                                          "acknowledged_deletes_back": len(back), "examples": (lost + back)[:5]})
        crash["acknowledged_inserts"] = len(present); crash["acknowledged_deletes"] = len(absent)
    out["crash"] = crash
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"updates-{a.name}.json")
    with open(path, "w") as f: json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
