#!/usr/bin/env python3
"""Steady-state churn (issue 22): R rounds of inserts + deletes on an updated-in-place index,
each round compared with a fresh build of exactly the live vectors.

  bench/.venv-churn/bin/python bench/churn.py                        # the issue's run: 1M × 128, 10 rounds, 10%/10%
  bench/.venv-churn/bin/python bench/churn.py --n 20000 --rounds 2 --skip-fresh --allow-load   # quick look

Data. Base: `fathom gen --n N --dim D --seed 2 --queries Q` (rows = labels 0..N-1). Inserted
vectors: a second generator, `fathom gen --seed 3` with the base's mixture size (--clusters
N/2000 clamped to 16..1024, gen's default for N) — another mixture, so the live set drifts to a
new distribution round by round; round r inserts pool rows (r-1)·I .. r·I-1 with labels N + those
rows (I = --insert-frac × N). The stream of the p99 measurement uses pool rows after the last
round's (never inserted into the measured index). Queries: the first ⌈Q/2⌉ queries of the seed-2
generator followed by the first ⌊Q/2⌋ of the seed-3 generator (its own query draw, not rows of
its base), so both the original and the drifted part of the live set are asked about.

Round r: `fathom insert` the round's vectors (--labels), then `fathom delete` a seeded uniform
draw of --delete-frac × N labels among the labels live after that insert (so a vector can be
deleted in the round that inserted it); with 10%/10% the live count stays N. Both run under
`/usr/bin/time -v` (wall, peak RSS) with --json; their JSON is kept verbatim (and its
`maintenance` object, when the binary prints one). Then the live set is written (vectors in
label order + labels), its exact ground truth computed with `fathom gt` and mapped from rows to
labels, the updated index is searched at --probes (1 thread, --window 1, page cache dropped),
and a fresh `fathom build --labels` of the live set (same build flags as the initial build) is
searched the same way. On the --stream-rounds, search p99 at --stream-probes is measured on a
COPY of the updated index, first quiet, then while `fathom insert` streams the stream file into
that copy (batches of --stream-batch, relaunched with new labels until the search ends; the
search starts after the stream's first acknowledged batch). The copy is deleted afterwards: the
measured index never sees the stream.

Writes bench/results/churn-TAG-UTCSTAMP.json (after every round, `complete: false` until the end)
and .png. Fails with the command, exit code and stderr tail on any command failure. Refuses to
measure at 1-minute load >= 1.0 unless --allow-load (then `under_load: true`).
"""
import argparse, datetime, hashlib, json, os, re, shlex, shutil, subprocess, sys, threading, time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "peers"))
import common  # noqa: E402

LOAD_LIMIT = 1.0
HALVES = 0          # queries from the seed-2 generator (the rest: seed 3)
OUT = {}
OUT_PATH = None


class Failure(Exception):
    pass


def fail(msg):
    raise Failure(msg)


# ---------------------------------------------------------------- files

def fbin_shape(path):
    n, d = np.fromfile(path, dtype=np.uint32, count=2)
    return int(n), int(d)


def load_fbin(path):
    n, d = fbin_shape(path)
    return np.memmap(path, dtype=np.float32, mode="r", offset=8, shape=(n, d))


def gt_rows_to_labels(rows_path, labels_path, live_labels):
    """`fathom gt` gives base ROW numbers; `fathom search --gt` wants LABELS (docs/updates.md)."""
    raw = open(rows_path, "rb").read()
    nq, k = (int(x) for x in np.frombuffer(raw[:8], dtype=np.uint32))
    rows = np.frombuffer(raw[8:8 + 4 * nq * k], dtype=np.int32).reshape(nq, k)
    if rows.max() >= len(live_labels):
        fail(f"{rows_path}: row {rows.max()} outside the {len(live_labels)} live vectors")
    lab = np.where(rows >= 0, live_labels[np.maximum(rows, 0)], -1)
    if lab.max() >= 2**31:
        fail("a live label does not fit the int32 ids of an .ibin ground truth")
    with open(labels_path, "wb") as f:
        f.write(raw[:8]); f.write(lab.astype(np.int32).tobytes()); f.write(raw[8 + 4 * nq * k:])


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


# ---------------------------------------------------------------- running commands

def record_cmd(cmd, seconds, rc, what):
    OUT.setdefault("commands", []).append({"what": what, "cmd": " ".join(shlex.quote(c) for c in cmd),
                                           "seconds": round(seconds, 3), "exit": rc})


def run(cmd, what, timed=False):
    """Runs cmd; on failure raises with the command line, exit code and stderr tail. With timed,
    runs it under /usr/bin/time -v and returns (stdout, stderr, {wall_seconds, peak_rss_bytes})."""
    cmd = [str(c) for c in cmd]
    tfile = None
    full = cmd
    if timed:
        tfile = os.path.join(WORK, ".time-v.txt")
        full = ["/usr/bin/time", "-v", "-o", tfile] + cmd
    t0 = time.time()
    try:
        r = subprocess.run(full, capture_output=True, text=True)
    except OSError as e:
        fail(f"{what}: cannot run {cmd[0]}: {e}")
    secs = time.time() - t0
    record_cmd(full, secs, r.returncode, what)
    if r.returncode != 0:
        fail(f"{what} failed (exit {r.returncode}): {' '.join(shlex.quote(c) for c in full)}\n"
             f"--- stderr (tail) ---\n{r.stderr[-4000:]}\n--- stdout (tail) ---\n{r.stdout[-2000:]}")
    if not timed:
        return r.stdout, r.stderr, {"wall_seconds": round(secs, 3)}
    tv = open(tfile).read()
    m_rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tv)
    m_wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", tv)
    if not (m_rss and m_wall):
        fail(f"{what}: cannot parse /usr/bin/time -v output:\n{tv[-1500:]}")
    wall = 0.0
    for part in m_wall.group(1).split(":"):
        wall = wall * 60 + float(part)
    return r.stdout, r.stderr, {"wall_seconds": wall, "peak_rss_bytes": int(m_rss.group(1)) * 1024}


def last_json(stdout, what):
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        pass
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    fail(f"{what}: no JSON summary on stdout (got {stdout[-500:]!r})")


def load_state():
    la = common.loadavg()
    return la


def wait_quiet(max_wait):
    t0 = time.time()
    while True:
        la = common.loadavg()
        if la is None or la[0] < LOAD_LIMIT or time.time() - t0 >= max_wait:
            return la, time.time() - t0
        time.sleep(5)


INFO_KEYS = ("heads", "count", "codec", "ram_per_vector_bytes", "ram_to_serve_bytes", "disk_bytes", "mean_replicas",
             "posting_histogram", "tiers")


def info(idx, what):
    """`fathom info --json` summary (heads, RAM per vector, …): at fixed probes, indexes with other
    head counts or posting sizes are not equivalent, so both sides' shapes are kept."""
    so, _, _ = run([FATHOM, "info", idx, "--json"], what)
    summ = last_json(so, what).get("summary", {})
    return {k: summ.get(k) for k in INFO_KEYS}


def help_text(F, sub):
    r = subprocess.run([F, sub, "--help"], capture_output=True, text=True)
    return r.stdout + r.stderr


# ---------------------------------------------------------------- search

def search(idx, queries, gt, probes, what, window=1):
    """One `fathom search` (1 thread, --window, every probe count in one invocation), page cache
    dropped before it, load recorded before and after it."""
    rec = {"what": what}
    common.drop_caches(rec)
    rec["load_before"] = common.loadavg()
    cmd = [FATHOM, "search", "--index", idx, "--queries", queries, "-k", "10", "--probes", probes,
           "--threads", "1", "--window", str(window), "--json", "--quiet"]
    if gt:
        cmd += ["--gt", gt]
    res_path = os.path.join(WORK, "results.ibin")
    if HALVES:
        cmd += ["--output", res_path]
    so, _, t = run(cmd, what)
    rec["load_after"] = common.loadavg()
    js = last_json(so, what)
    rec["io_engine"] = js.get("io_engine")
    rec["window"] = js.get("window")
    rec["postings_resident"] = js.get("postings_resident")
    rec["rows"] = js["rows"]
    rec["wall_seconds"] = t["wall_seconds"]
    if HALVES and gt:
        # Recall at the last (largest) probe count per query half: seed-2 (original) vs seed-3 (drift) queries.
        found, _ = common.read_ibin(res_path)
        gid, gd = common.read_ibin(gt)
        na = HALVES
        rec["recall_by_query_half"] = {"probes": rec["rows"][-1]["probes"],
                                       "original_queries": common.recall_at_k(found[:na], gid[:na], gd[:na], 10),
                                       "drift_queries": common.recall_at_k(found[na:], gid[na:], gd[na:], 10)}
    return rec


def row_at(rec, p):
    for r in rec["rows"]:
        if r["probes"] == p:
            return r
    fail(f"{rec['what']}: no row for probes {p} in the search output")


# ---------------------------------------------------------------- the stream

def stream_measure(upd, queries, gt, probes, stream_fbin, first_label, rnd, a):
    """p99 at `probes` on a copy of the updated index: quiet, then under a `fathom insert` stream."""
    copy = os.path.join(WORK, "stream-copy")
    shutil.rmtree(copy, ignore_errors=True)
    t0 = time.time()
    shutil.copytree(upd, copy)
    res = {"probes": probes, "index": "copy of the updated index after the round (deleted after)",
           "copy_seconds": round(time.time() - t0, 2)}
    quiet = search(copy, queries, gt, str(probes), f"round {rnd}: stream copy, quiet")
    n_stream = fbin_shape(stream_fbin)[0]
    labels_path = os.path.join(WORK, "stream.labels")
    state = {"launches": 0, "acked_rows": 0, "error": None, "first_ack": threading.Event(),
             "commands": []}
    stop = threading.Event()

    def stream():
        i = 0
        while not stop.is_set():
            common.write_labels(labels_path, np.arange(first_label + i * n_stream, first_label + (i + 1) * n_stream))
            cmd = [FATHOM, "insert", "--index", copy, "--input", stream_fbin, "--labels", labels_path,
                   "--batch", str(a.stream_batch), "--print-acks", "--quiet"] + DELTA_ARGS
            state["commands"].append(" ".join(shlex.quote(c) for c in cmd))
            t_launch = time.time()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            state["launches"] += 1
            # Read acks as they come (a reader thread, so stop is honoured while no ack arrives).
            def reader():
                for line in proc.stdout:
                    if line.startswith("ack "):
                        state["acked_rows_this"] = int(line.split()[1])
                        state["first_ack"].set()
            state["acked_rows_this"] = 0
            rt = threading.Thread(target=reader, daemon=True); rt.start()
            while proc.poll() is None and not stop.is_set():
                time.sleep(0.05)
            killed = False
            if proc.poll() is None:
                proc.kill(); killed = True
            proc.wait(); rt.join(timeout=5)
            err = proc.stderr.read()
            state["acked_rows"] += state["acked_rows_this"]
            OUT.setdefault("commands", []).append({"what": f"round {rnd}: stream insert (background)",
                                                   "cmd": state["commands"][-1], "seconds": round(time.time() - t_launch, 3),
                                                   "exit": proc.returncode, "killed_at_search_end": killed})
            if not killed and proc.returncode != 0:
                state["error"] = f"stream insert failed (exit {proc.returncode}): {state['commands'][-1]}\n{err[-3000:]}"
                state["first_ack"].set()
                return
            i += 1

    th = threading.Thread(target=stream); th.start()
    t_wait = time.time()
    if not state["first_ack"].wait(timeout=a.stream_start_timeout):
        stop.set(); th.join()
        fail(f"round {rnd}: the stream insert acknowledged no batch within {a.stream_start_timeout} s")
    if state["error"]:
        stop.set(); th.join()
        fail(f"round {rnd}: {state['error']}")
    res["stream_first_ack_seconds"] = round(time.time() - t_wait, 2)
    launches_before = state["launches"]
    busy = search(copy, queries, gt, str(probes), f"round {rnd}: stream copy, during inserts")   # drops the cache too
    covered = th.is_alive() and state["error"] is None and state["launches"] == launches_before
    stop.set(); th.join()
    if state["error"]:
        fail(f"round {rnd}: {state['error']}")
    q, b = row_at(quiet, probes), row_at(busy, probes)
    res.update({"quiet": quiet, "during_inserts": busy,
                "p99_us_quiet": q["p99_us"], "p99_us_during_inserts": b["p99_us"],
                "ratio": b["p99_us"] / q["p99_us"] if q["p99_us"] else None,
                "stream_batch": a.stream_batch, "stream_rows_per_launch": n_stream,
                "stream_launches": state["launches"], "stream_acked_rows": state["acked_rows"],
                "stream_commands": state["commands"],
                # One insert process ran through the whole search (no relaunch gap: the writer's
                # open + log replay inserts nothing).
                "stream_covered_the_search": covered})
    shutil.rmtree(copy, ignore_errors=True)
    return res


# ---------------------------------------------------------------- main

def parse_rounds(text, rounds):
    if text == "all":
        return set(range(1, rounds + 1))
    if text == "none":
        return set()
    try:
        s = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise SystemExit(f"--stream-rounds: expected all, none or a comma-separated list of rounds, got {text!r}")
    bad = [r for r in s if not 1 <= r <= rounds]
    if bad:
        raise SystemExit(f"--stream-rounds: rounds {bad} outside 1..{rounds}")
    return s


def save(final=False):
    OUT["complete"] = final
    OUT["load_end"] = common.loadavg()
    tmp = OUT_PATH + ".tmp"
    with open(tmp, "w") as f:
        json.dump(OUT, f, indent=1)
    os.replace(tmp, OUT_PATH)


def main():
    global FATHOM, WORK, DELTA_ARGS, OUT_PATH
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="base vectors (default 1M)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000, help="queries: half from each generator (default 1000)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--insert-frac", type=float, default=0.10, help="inserts per round, × n (default 0.10)")
    ap.add_argument("--delete-frac", type=float, default=0.10, help="deletes per round, × n (default 0.10)")
    ap.add_argument("--probes", default="8,16", help="fixed probe counts searched every round (default 8,16)")
    ap.add_argument("--stream-probes", type=int, default=None, help="probes of the p99 runs (default: the largest --probes)")
    ap.add_argument("--stream-rounds", default="all", help="rounds with the p99-under-stream run: all, none or e.g. 1,5,10")
    ap.add_argument("--stream-rows", type=int, default=None, help="rows of the stream file (default: max(inserts per round, 100000))")
    ap.add_argument("--stream-batch", type=int, default=1000, help="stream insert --batch (default 1000)")
    ap.add_argument("--stream-start-timeout", type=float, default=600.0)
    ap.add_argument("--insert-batch", type=int, default=10_000, help="round insert --batch (default: fathom's 10000)")
    ap.add_argument("--delta-memory", default=None, help="pass --delta-memory SIZE to every insert/delete")
    ap.add_argument("--metric", default="l2")
    ap.add_argument("--memory-budget", default="4GiB", help="fathom build --memory-budget (both builds)")
    ap.add_argument("--build-threads", type=int, default=os.cpu_count(),
                    help="fathom build --threads (the index is byte-identical for any count)")
    ap.add_argument("--build-args", default="", help="extra fathom build flags, for the initial AND every fresh build")
    ap.add_argument("--seed", type=int, default=22, help="seed of the delete draws")
    ap.add_argument("--fathom", default=os.path.join(REPO, ".build", "release", "fathom"))
    ap.add_argument("--work", default=os.path.join(HERE, "work", "churn"))
    ap.add_argument("--tag", default=None, help="result name: churn-TAG-STAMP (default n<N>)")
    ap.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--skip-fresh", action="store_true", help="no fresh builds (quick looks: no recall bar)")
    ap.add_argument("--keep-fresh", action="store_true", help="keep every round's fresh index (default: deleted after its search)")
    ap.add_argument("--allow-load", action="store_true", help="measure even at load >= 1.0 (marked under_load)")
    ap.add_argument("--wait-quiet", type=float, default=0, help="poll up to SECONDS for load < 1.0 at the start")
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args()

    FATHOM = os.path.abspath(a.fathom)
    WORK = os.path.abspath(a.work)
    probes = sorted({int(x) for x in a.probes.split(",") if x.strip()})
    if not probes or min(probes) < 1:
        raise SystemExit("--probes: a comma-separated list of positive integers, e.g. 8,16")
    stream_probes = a.stream_probes or max(probes)
    stream_rounds = parse_rounds(a.stream_rounds, a.rounds)
    n, d, R = a.n, a.dim, a.rounds
    n_ins, n_del = int(round(a.insert_frac * n)), int(round(a.delete_frac * n))
    # Default: enough rows that one insert process outlasts the search (each relaunch is a gap: the
    # writer's open replays the log before it inserts anything).
    n_stream = a.stream_rows if a.stream_rows is not None else max(n_ins, 100_000)
    if n < 1000 or R < 1 or n_ins < 0 or n_del < 0 or a.queries < 2:
        raise SystemExit("need --n >= 1000, --rounds >= 1, non-negative fractions, --queries >= 2")

    # Preconditions: fail before any work.
    if not (os.path.isfile(FATHOM) and os.access(FATHOM, os.X_OK)):
        raise SystemExit(f"fathom binary not found or not executable: {FATHOM}\n"
                         f"  build it: swift build -c release --product fathom   (or pass --fathom PATH)")
    if not os.access("/usr/bin/time", os.X_OK):
        raise SystemExit("/usr/bin/time is missing (apt-get install time): insert/delete wall and peak RSS need it")
    DELTA_ARGS = []
    if a.delta_memory is not None:
        for sub in ("insert", "delete"):
            if "--delta-memory" not in help_text(FATHOM, sub):
                raise SystemExit(f"--delta-memory {a.delta_memory} was asked, but `{FATHOM} {sub} --help` has no "
                                 f"--delta-memory option: this binary predates it (rebuild from a tree that has it, "
                                 f"or drop --delta-memory)")
        DELTA_ARGS = ["--delta-memory", a.delta_memory]
    if not a.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("matplotlib is missing for the plot: run with bench/.venv-churn/bin/python "
                             "(python3 -m venv bench/.venv-churn && bench/.venv-churn/bin/pip install numpy matplotlib), "
                             "or pass --no-plot")

    la, waited = wait_quiet(a.wait_quiet)
    under_load = la is not None and la[0] >= LOAD_LIMIT
    if under_load and not a.allow_load:
        raise SystemExit(f"1-minute load {la[0]:.2f} >= {LOAD_LIMIT} (waited {waited:.0f} s): the benchmark runs alone "
                         f"on the machine. Stop builds/tests, use --wait-quiet SECONDS, or --allow-load (marked under_load)")

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tag = a.tag or f"n{n}"
    os.makedirs(a.results_dir, exist_ok=True)
    OUT_PATH = os.path.join(a.results_dir, f"churn-{tag}-{stamp}.json")
    os.makedirs(WORK, exist_ok=True)
    W = lambda name: os.path.join(WORK, name)

    def git(*args):
        r = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    with open(FATHOM, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    OUT.update({
        "benchmark": "churn", "issue": 22, "tag": tag, "started_utc": stamp, "argv": sys.argv,
        "args": vars(a), "machine": common.machine_info(),
        "fathom": {"binary": FATHOM, "sha256": sha,
                   "mtime_utc": datetime.datetime.fromtimestamp(os.path.getmtime(FATHOM), datetime.timezone.utc).isoformat(),
                   "repo_commit": git("rev-parse", "HEAD"), "repo_dirty": bool(git("status", "--porcelain"))},
        "load_gate": {"limit_1min": LOAD_LIMIT, "load": la, "waited_seconds": round(waited, 1),
                      "allow_load": a.allow_load},
        "under_load": under_load,
        "setup": {"n": n, "dim": d, "rounds": R, "inserts_per_round": n_ins, "deletes_per_round": n_del,
                  "probes": probes, "stream_probes": stream_probes, "stream_rounds": sorted(stream_rounds),
                  "stream_rows": n_stream, "delta_memory": a.delta_memory, "search": "1 thread, --window 1, page cache dropped before each run",
                  "deletes": "uniform (seeded) among the labels live after the round's insert",
                  "queries": "first ceil(Q/2) queries of gen --seed 2, then first floor(Q/2) of gen --seed 3",
                  "p99_stream": "on a copy of the updated index after the round; the copy is deleted"},
        "rounds": [],
    })
    print(f"churn: n={n} d={d} rounds={R} +{n_ins}/-{n_del} per round, probes {probes}, results {OUT_PATH}"
          + ("  [UNDER LOAD]" if under_load else ""), file=sys.stderr)

    try:
        body(a, W, n, d, R, n_ins, n_del, n_stream, probes, stream_probes, stream_rounds)
    except Failure as e:
        OUT["error"] = str(e)
        save(final=False)
        print(f"\nchurn: FAILED — partial results in {OUT_PATH}\n{e}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, Exception) as e:
        OUT["error"] = f"{type(e).__name__}: {e}"
        save(final=False)
        print(f"\nchurn: FAILED ({type(e).__name__}: {e}) — partial results in {OUT_PATH}", file=sys.stderr)
        raise


def body(a, W, n, d, R, n_ins, n_del, n_stream, probes, stream_probes, stream_rounds):
    # ---- data (reused from WORK/data when made by the same commands)
    os.makedirs(W("data"), exist_ok=True)
    D = lambda name: os.path.join(W("data"), name)
    nq_a, nq_b = (a.queries + 1) // 2, a.queries // 2
    clusters = min(1024, max(16, n // 2000))            # gen's default for the base's n
    pool_n = R * n_ins + n_stream
    gens = [
        [FATHOM, "gen", "--n", str(n), "--dim", str(d), "--seed", "2", "--queries", str(max(a.queries, 1000)),
         "--out", D("base.fbin"), "--query-out", D("base.q.fbin"), "--quiet"],
        [FATHOM, "gen", "--n", str(pool_n), "--dim", str(d), "--seed", "3", "--clusters", str(clusters),
         "--queries", str(max(a.queries, 1000)), "--out", D("drift.fbin"), "--query-out", D("drift.q.fbin"), "--quiet"],
    ]
    stamp_path = D("gen-commands.json")
    same = os.path.exists(stamp_path) and json.load(open(stamp_path)) == {"sha": OUT["fathom"]["sha256"], "gens": gens}
    if same:
        print("churn: reusing the generated data in " + W("data"), file=sys.stderr)
        OUT["data_reused"] = True
    else:
        if os.path.exists(stamp_path):
            os.remove(stamp_path)
        for g in gens:
            run(g, "gen")
        json.dump({"sha": OUT["fathom"]["sha256"], "gens": gens}, open(stamp_path, "w"))
        OUT["data_reused"] = False
    OUT["gen_commands"] = [" ".join(g) for g in gens]
    base, pool = load_fbin(D("base.fbin")), load_fbin(D("drift.fbin"))
    qa, qb = load_fbin(D("base.q.fbin")), load_fbin(D("drift.q.fbin"))
    if base.shape != (n, d) or pool.shape != (pool_n, d):
        fail(f"generated data has shapes {base.shape} / {pool.shape}, expected {(n, d)} / {(pool_n, d)}")
    global HALVES
    HALVES = nq_a
    Q = W("queries.fbin")
    common.write_fbin(Q, np.concatenate([qa[:nq_a], qb[:nq_b]]))
    common.write_fbin(W("stream.fbin"), pool[R * n_ins:R * n_ins + n_stream])
    stream_first_label = n + pool_n + 1                 # beyond every label the rounds use

    def vectors_of(labels):
        """Label L < n is base row L; label L >= n is drift-pool row L - n. labels sorted."""
        cut = np.searchsorted(labels, n)
        return np.concatenate([base[labels[:cut]], pool[labels[cut:] - n]])

    def write_live(labels):
        common.write_fbin(W("live.fbin"), vectors_of(labels))
        common.write_labels(W("live.labels"), labels)
        run([FATHOM, "gt", "--base", W("live.fbin"), "--queries", Q, "-k", "10", "--metric", a.metric,
             "--output", W("gt_rows.ibin"), "--quiet"], "gt")
        gt_rows_to_labels(W("gt_rows.ibin"), W("gt.ibin"), labels)

    build_flags = ["--metric", a.metric, "--memory-budget", a.memory_budget, "--threads", str(a.build_threads),
                   "--quiet", *shlex.split(a.build_args)]
    OUT["build_flags"] = build_flags
    P = ",".join(map(str, probes))

    # ---- round 0: the initial build (labels 0..n-1, written explicitly)
    live = np.arange(n, dtype=np.int64)
    upd = W("updated")
    for p in (upd, upd + ".fathom-write.lock", W("fresh"), W("stream-copy")):
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)
    common.write_labels(W("base.labels"), live)
    lb = common.loadavg()
    _, _, t = run([FATHOM, "build", "--input", D("base.fbin"), "--labels", W("base.labels"), "--output", upd, *build_flags],
                  "initial build", timed=True)
    OUT["initial_build"] = {**t, "load_before": lb, "load_after": common.loadavg(), "index_bytes": dir_bytes(upd),
                            "info": info(upd, "info: initial build")}
    write_live(live)
    r0 = {"round": 0, "live": int(len(live)), "updated": search(upd, Q, W("gt.ibin"), P, "round 0: initial build"),
          "note": "round 0 is the initial build: updated == fresh"}
    r0["recall"] = {str(p): {"updated": row_at(r0["updated"], p)["recall"]} for p in probes}
    OUT["rounds"].append(r0)
    save()
    print(f"round 0: live {len(live)}  " + "  ".join(f"p{p} recall {r0['recall'][str(p)]['updated']:.4f}" for p in probes),
          file=sys.stderr)

    rng = np.random.default_rng(a.seed)
    for rnd in range(1, R + 1):
        rec = {"round": rnd}
        # -- insert
        lo = (rnd - 1) * n_ins
        ins_labels = np.arange(n + lo, n + lo + n_ins, dtype=np.int64)
        common.write_fbin(W(f"round_{rnd}.fbin"), pool[lo:lo + n_ins])
        common.write_labels(W(f"round_{rnd}.labels"), ins_labels)
        lb = common.loadavg()
        so, se, t = run([FATHOM, "insert", "--index", upd, "--input", W(f"round_{rnd}.fbin"), "--labels",
                         W(f"round_{rnd}.labels"), "--batch", str(a.insert_batch), "--json", "--quiet", *DELTA_ARGS],
                        f"round {rnd}: insert", timed=True)
        rec["insert"] = {**t, "count": n_ins, "load_before": lb, "load_after": common.loadavg(),
                         "stdout": so, "json": last_json(so, f"round {rnd}: insert"), "stderr_tail": se[-2000:]}
        live = np.concatenate([live, ins_labels])       # still sorted: new labels are the largest
        # -- delete (uniform among the labels live now)
        dels = np.sort(rng.choice(live, size=min(n_del, len(live)), replace=False))
        common.write_labels(W(f"del_{rnd}.labels"), dels)
        lb = common.loadavg()
        so, se, t = run([FATHOM, "delete", "--index", upd, "--labels", W(f"del_{rnd}.labels"), "--json", "--quiet", *DELTA_ARGS],
                        f"round {rnd}: delete", timed=True)
        rec["delete"] = {**t, "count": int(len(dels)), "deleted_inserted_this_round": int(np.sum(dels >= n + lo)),
                         "load_before": lb, "load_after": common.loadavg(),
                         "stdout": so, "json": last_json(so, f"round {rnd}: delete"), "stderr_tail": se[-2000:]}
        if rec["delete"]["json"].get("deleted") not in (None, len(dels)):
            fail(f"round {rnd}: fathom delete deleted {rec['delete']['json'].get('deleted')} of {len(dels)} live labels")
        live = np.setdiff1d(live, dels, assume_unique=True)
        rec["live"] = int(len(live))
        rec["index_bytes"] = dir_bytes(upd)
        rec["updated_info"] = info(upd, f"round {rnd}: info updated")   # what `fathom info` reports (its built version)
        # -- ground truth of the live set (labels) and the updated index's search
        write_live(live)
        rec["updated"] = search(upd, Q, W("gt.ibin"), P, f"round {rnd}: updated")
        # -- the fresh build of exactly the live set
        if not a.skip_fresh:
            fresh = W("fresh")
            shutil.rmtree(fresh, ignore_errors=True)
            lb = common.loadavg()
            _, _, t = run([FATHOM, "build", "--input", W("live.fbin"), "--labels", W("live.labels"), "--output", fresh,
                           *build_flags], f"round {rnd}: fresh build", timed=True)
            rec["fresh_build"] = {**t, "load_before": lb, "load_after": common.loadavg(), "index_bytes": dir_bytes(fresh),
                                  "info": info(fresh, f"round {rnd}: info fresh")}
            rec["fresh"] = search(fresh, Q, W("gt.ibin"), P, f"round {rnd}: fresh")
            if a.keep_fresh:
                os.replace(fresh, W(f"fresh_{rnd}"))
            else:
                shutil.rmtree(fresh)
        rec["recall"] = {}
        for p in probes:
            u = row_at(rec["updated"], p)
            e = {"updated": u["recall"], "updated_mean_ios": u["mean_ios"], "updated_mean_pages": u["mean_pages"],
                 "updated_qps": u["qps"], "updated_p99_us": u["p99_us"]}
            if "fresh" in rec:
                f = row_at(rec["fresh"], p)
                e.update({"fresh": f["recall"], "diff": u["recall"] - f["recall"], "fresh_mean_ios": f["mean_ios"],
                          "fresh_mean_pages": f["mean_pages"], "fresh_qps": f["qps"], "fresh_p99_us": f["p99_us"],
                          "qps_ratio": u["qps"] / f["qps"] if f["qps"] else None,
                          "ios_ratio": u["mean_ios"] / f["mean_ios"] if f["mean_ios"] else None})
            rec["recall"][str(p)] = e
        # -- p99 under an insert stream
        if rnd in stream_rounds:
            rec["stream"] = stream_measure(upd, Q, W("gt.ibin"), stream_probes, W("stream.fbin"), stream_first_label, rnd, a)
        OUT["rounds"].append(rec)
        save()
        report_round(rec, probes)

    summarize(probes)
    save(final=True)
    if not a.no_plot:
        png = OUT_PATH[:-5] + ".png"
        plot(png, probes)
        OUT["plot"] = png
        save(final=True)
    print(json.dumps(OUT["summary"], indent=1))
    print(f"churn: wrote {OUT_PATH}", file=sys.stderr)


MAINT_KEYS = ("splits", "merges", "reassigned", "attached", "relocated", "spilled_rows", "reclaimed_records", "heads", "retired_heads", "delta_bytes", "delta_bound")


def report_round(rec, probes):
    parts = [f"round {rec['round']}: live {rec['live']}"]
    for p in probes:
        e = rec["recall"][str(p)]
        s = f"p{p} recall {e['updated']:.4f}"
        if "fresh" in e:
            s += f" (fresh {e['fresh']:.4f}, diff {e['diff']:+.4f})"
        parts.append(s)
    for side in ("updated", "fresh"):
        h = (rec.get(side) or {}).get("recall_by_query_half")
        if h:
            parts.append(f"{side} p{h['probes']} orig/drift queries {h['original_queries']:.3f}/{h['drift_queries']:.3f}")
    for what in ("insert", "delete"):
        x = rec[what]
        parts.append(f"{what} {x['wall_seconds']:.1f}s rss {x['peak_rss_bytes'] / 2**20:.0f}MiB")
        m = x["json"].get("maintenance")
        if isinstance(m, dict):
            parts.append(f"{what}.maintenance " + " ".join(f"{k}={m[k]}" for k in MAINT_KEYS if k in m))
        elif m is not None:
            parts.append(f"{what}.maintenance {m!r}")
    if "stream" in rec:
        s = rec["stream"]
        parts.append(f"p99 quiet {s['p99_us_quiet']:.0f}us stream {s['p99_us_during_inserts']:.0f}us "
                     f"ratio {s['ratio']:.2f}" + ("" if s["stream_covered_the_search"] else " (stream did NOT cover the search)"))
    print("  ".join(parts), file=sys.stderr)


def summarize(probes):
    rounds = [r for r in OUT["rounds"] if r["round"] > 0]
    s = {"rounds": len(rounds), "under_load": OUT["under_load"],
         "page_cache_dropped_every_search": all(x.get("page_cache_dropped") for r in OUT["rounds"]
                                                for x in [r.get("updated"), r.get("fresh"),
                                                          (r.get("stream") or {}).get("quiet"),
                                                          (r.get("stream") or {}).get("during_inserts")] if x),
         "io_engines": sorted({x["io_engine"] for r in OUT["rounds"] for x in [r.get("updated"), r.get("fresh")]
                               if x and x.get("io_engine")})}
    if rounds and all("fresh" in r["recall"][str(probes[0])] for r in rounds):
        s["recall_diff_min"] = {str(p): min(r["recall"][str(p)]["diff"] for r in rounds) for p in probes}
        s["recall_diff_max"] = {str(p): max(r["recall"][str(p)]["diff"] for r in rounds) for p in probes}
        # The bar, read literally: |updated − fresh| <= 0.01 at every probe count after every round. An
        # updated index whose delta lists grow without bound (RAM, no IO) can beat the fresh build at fixed
        # probes: that passes the one-sided reading only.
        s["bar_recall_within_0.01"] = all(abs(r["recall"][str(p)]["diff"]) <= 0.01 for r in rounds for p in probes)
        s["recall_not_below_fresh_minus_0.01"] = all(r["recall"][str(p)]["diff"] >= -0.01 for r in rounds for p in probes)
    else:
        s["bar_recall_within_0.01"] = None       # --skip-fresh: nothing to compare with
    ratios = [r["stream"]["ratio"] for r in rounds if "stream" in r and r["stream"]["ratio"] is not None]
    if ratios:
        s["stream_p99_ratio_max"] = max(ratios)
        s["bar_stream_p99_ratio_le_1.5"] = max(ratios) <= 1.5
        s["stream_covered_every_search"] = all(r["stream"]["stream_covered_the_search"] for r in rounds if "stream" in r)
    s["insert_peak_rss_bytes"] = [r["insert"]["peak_rss_bytes"] for r in rounds]
    s["delete_peak_rss_bytes"] = [r["delete"]["peak_rss_bytes"] for r in rounds]
    delta = [((r["insert"]["json"].get("maintenance") or {}).get("delta_bytes"),
              (r["insert"]["json"].get("maintenance") or {}).get("delta_bound")) for r in rounds]
    if any(x[0] is not None for x in delta):
        s["delta_bytes_after_insert"] = [x[0] for x in delta]
        s["delta_bound_bytes"] = [x[1] for x in delta]
        if all(x[0] is not None and x[1] is not None for x in delta):
            s["bar_delta_within_bound"] = all(x[0] <= x[1] for x in delta)
    else:
        s["delta_bytes_after_insert"] = None     # the binary prints no maintenance.delta_bytes
    OUT["summary"] = s


def plot(path, probes):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rs = OUT["rounds"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    for i, p in enumerate(probes):
        c = f"C{i}"
        xs = [r["round"] for r in rs]
        ax.plot(xs, [r["recall"][str(p)]["updated"] for r in rs], "o-", color=c, label=f"updated, probes {p}")
        fr = [(r["round"], r["recall"][str(p)]["fresh"]) for r in rs if "fresh" in r["recall"][str(p)]]
        if fr:
            ax.plot(*zip(*fr), "s--", color=c, mfc="none", label=f"fresh build, probes {p}")
    ax.set_xlabel("round"); ax.set_ylabel("recall@10"); ax.set_title("recall@10 (1 thread, window 1)", fontsize=9)
    ax.legend(fontsize=7); ax.grid(alpha=0.3)
    ax = axes[1]
    rr = [r for r in rs if r["round"] > 0]
    ax.plot([r["round"] for r in rr], [r["insert"]["peak_rss_bytes"] / 2**20 for r in rr], "o-", label="insert")
    ax.plot([r["round"] for r in rr], [r["delete"]["peak_rss_bytes"] / 2**20 for r in rr], "s-", label="delete")
    fb = [(r["round"], r["fresh_build"]["peak_rss_bytes"] / 2**20) for r in rr if "fresh_build" in r]
    if fb:
        ax.plot(*zip(*fb), "^:", color="gray", label="fresh build")
    ax.set_xlabel("round"); ax.set_ylabel("peak RSS (MiB)"); ax.set_title("peak RSS per round (/usr/bin/time -v)", fontsize=9)
    ax.legend(fontsize=7); ax.grid(alpha=0.3); ax.set_ylim(bottom=0)
    ax = axes[2]
    st = [r for r in rr if "stream" in r]
    if st:
        ax.plot([r["round"] for r in st], [r["stream"]["p99_us_quiet"] / 1e3 for r in st], "o-", label="quiet")
        ax.plot([r["round"] for r in st], [r["stream"]["p99_us_during_inserts"] / 1e3 for r in st], "s-", label="during insert stream")
        ax.legend(fontsize=7)
    ax.set_xlabel("round"); ax.set_ylabel("search p99 (ms)")
    ax.set_title(f"p99 at probes {OUT['setup']['stream_probes']}", fontsize=9); ax.grid(alpha=0.3); ax.set_ylim(bottom=0)
    st = OUT["setup"]
    fig.suptitle(f"churn {OUT['tag']}: n={st['n']} d={st['dim']}, +{st['inserts_per_round']}/-{st['deletes_per_round']} "
                 f"per round{', delta-memory ' + st['delta_memory'] if st['delta_memory'] else ''}"
                 f"{'  [UNDER LOAD: do not quote]' if OUT['under_load'] else ''}", fontsize=10)
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"churn: plot {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
