#!/usr/bin/env python3
"""SIGKILL inside a chosen stage, asserted (issue 23, item 2). Run through tools/crashtest-stages.

For every stage of a build (train, assign, sort, pack, publish) of three kinds of build (plain,
--codec lvq8, --attributes) and for `fathom insert`, `fathom delete` and `fathom checkpoint`, it
kills the process KILLS times *inside that stage*: it starts the process, waits until the stage
has begun (the stage's first progress line on stderr), sleeps a seeded random delay within the
stage's measured length, sends SIGKILL, and then asserts where the kill landed (the process was
still running, the stage's own stage-*.json marker or completion line was not yet written);
a kill that landed after the stage ended is a miss, retried with another delay (counted apart).

Stages and where they begin and end (stderr lines of the build; markers in DEST.fathom-build):
  train    "train: ..."                   .. stage-train.json
  assign   "assign: closure assignment"   .. "assign: merging" (the spill of sorted runs included)
  sort     "assign: merging N run(s)"     .. stage-assign.json (merge of the runs, posting cap, orphans)
  pack     "pack: writing"                .. stage-pack.json
  publish  "publish: manifest, ..."       .. "published DEST" (manifest, scratch removal, exchange,
           old generation removed): a few milliseconds, so these runs set FATHOM_CRASHTEST_PAUSE_MS
           (FathomStorage.CrashTestPause: a pause after each step, printed as `crashtest: point NAME`;
           inert unless set) and the table says at which points the kills landed.
  insert   "insert: ..."                  .. "inserted ..." (batches of --insert-batch, one fsync each)
  delete   "delete: N labels"             .. process exit (with pauses before the flush, after it and
           after the acknowledgement line, so the kill lands in each window)
  checkpoint  first line of its rebuild   .. "checkpointed ..." (with short pauses in its publish)

After each kill:
  build: DEST is the previous complete index or the new one (manifest file list byte-identical to
         one of them), `fathom verify` passes; the rerun resumes and publishes an index identical to
         an uninterrupted build, which verifies.
  insert: the index reopens as a writer (a torn tail cut), `fathom verify` passes, every batch whose
         `ack` line was printed before the kill is found (top-1 label of its own vector), and the
         inserted labels form a prefix of the input.
  delete: reopen + verify; if `deleted` was printed, no deleted label is found; every label not in
         the delete list is still found.
  checkpoint: verify; every acknowledged update of the log before it is present (inserted labels
         found, deleted ones absent); a rerun of the checkpoint succeeds and the same holds.
Prints a table (stage, kills, misses, failures) and writes bench/results/crashtest-stages.json.
"""
import argparse, json, os, random, shutil, signal, subprocess, sys, threading, time
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd, check=True, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r


class Watched:
    """A child process whose stdout and stderr lines are collected, with their arrival times."""

    def __init__(self, cmd, env=None):
        self.start = time.monotonic()
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, bufsize=1)
        self.out, self.err = [], []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._read, args=(self.p.stdout, self.out), daemon=True),
                        threading.Thread(target=self._read, args=(self.p.stderr, self.err), daemon=True)]
        for t in self.threads: t.start()

    def _read(self, stream, into):
        for line in stream:
            with self.lock: into.append((time.monotonic() - self.start, line.rstrip("\n")))

    def seen(self, pred, which="err"):
        with self.lock:
            lines = list(self.err if which == "err" else self.out)
        for t, l in lines:
            if pred(l): return t
        return None

    def wait_for(self, pred, timeout=600):
        """Time (s since start) of the first stderr line matching pred, or None if the process ended first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self.seen(pred)
            if t is not None: return t
            if self.p.poll() is not None:
                for th in self.threads: th.join(1)
                return self.seen(pred)
            time.sleep(0.0005)
        return None

    def kill(self):
        """SIGKILL; returns whether the process was still running when it was sent."""
        alive = self.p.poll() is None
        if alive:
            try: self.p.send_signal(signal.SIGKILL)
            except ProcessLookupError: alive = False
        self.p.wait()
        for th in self.threads: th.join(5)
        return alive and self.p.returncode == -signal.SIGKILL

    def finish(self):
        self.p.wait()
        for th in self.threads: th.join(5)
        return self.p.returncode

    def lines(self, which="err"):
        with self.lock: return [l for _, l in (self.err if which == "err" else self.out)]


def manifest_files(d):
    try:
        with open(os.path.join(d, "manifest.json")) as f: m = json.load(f)
        return json.dumps(m["files"], sort_keys=True)
    except Exception:
        return None


def write_fbin(path, x):
    with open(path, "wb") as f:
        np.array(x.shape, dtype=np.uint32).tofile(f)
        np.ascontiguousarray(x, dtype=np.float32).tofile(f)


def read_fbin(path):
    n, d = np.fromfile(path, dtype=np.uint32, count=2)
    return np.fromfile(path, dtype=np.float32, offset=8, count=int(n) * int(d)).reshape(int(n), int(d))


def write_labels(path, labels):
    with open(path, "w") as f:
        for l in labels: f.write(f"{int(l)}\n")


BUILD_STAGES = {
    # stage: (begins when this stderr line appears, the kill is inside it unless `ended` says otherwise)
    "train": lambda l: l.startswith("train:"),
    "assign": lambda l: l.startswith("assign: closure assignment"),
    "sort": lambda l: l.startswith("assign: merging"),
    "pack": lambda l: l.startswith("pack: writing"),
    "publish": lambda l: l.startswith("publish: manifest"),
}
NEXT = {"train": "assign", "assign": "sort", "sort": "pack", "pack": "publish", "publish": None}


def build_stage_ended(stage, w, build_dir):
    """Whether stage had already finished when the kill landed (a miss)."""
    marker = lambda s: os.path.exists(os.path.join(build_dir, f"stage-{s}.json"))
    if stage == "train": return marker("train")
    if stage == "assign": return w.seen(BUILD_STAGES["sort"]) is not None or marker("assign")
    if stage == "sort": return marker("assign")
    if stage == "pack": return marker("pack")
    return w.seen(lambda l: l.startswith("published ")) is not None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fathom-bin", required=True)
    ap.add_argument("--kills", type=int, default=50, help="kills inside each stage")
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--stages", default="train,assign,sort,pack,publish,insert,delete,checkpoint")
    ap.add_argument("--variants", default="plain,lvq8,attributes")
    ap.add_argument("--pause-ms", type=int, default=40, help="FATHOM_CRASHTEST_PAUSE_MS for the short stages")
    ap.add_argument("--insert-batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--work", default=os.path.join(ROOT, "bench", "work", "crashtest-stages"))
    ap.add_argument("--json-out", default=os.path.join(ROOT, "bench", "results", "crashtest-stages.json"))
    a = ap.parse_args()
    F = os.path.abspath(a.fathom_bin)
    W = lambda *p: os.path.join(a.work, *p)
    shutil.rmtree(a.work, ignore_errors=True); os.makedirs(a.work)
    rng = random.Random(a.seed)
    stages = a.stages.split(",")
    rows = []
    t_all = time.time()

    sh([F, "gen", "--n", str(a.n), "--dim", str(a.dim), "--out", W("base.fbin"), "--attributes", W("attrs.csv"),
        "--seed", "5", "--quiet"])
    common = ["build", "--input", W("base.fbin"), "--memory-budget", "256MiB", "--sort-buffer", "1MiB", "--head-ratio", "0.02"]
    variants = {"plain": [], "lvq8": ["--codec", "lvq8"], "attributes": ["--attributes", W("attrs.csv")]}

    def record(stage, variant, kills, misses, failures, notes, seconds):
        row = {"stage": stage, "variant": variant, "kills": kills, "misses": misses, "failures": len(failures),
               "failure_examples": failures[:5], "notes": notes, "seconds": round(seconds, 1)}
        rows.append(row)
        print(f"[crashtest-stages] {stage:<10} {variant:<10} kills {kills:>3}  misses {misses:>3}  failures {len(failures)}"
              f"  {json.dumps(notes) if notes else ''}  ({seconds:.0f} s)", file=sys.stderr, flush=True)

    # ---- builds -------------------------------------------------------------------------------
    for variant in a.variants.split(","):
        vstages = [s for s in stages if s in BUILD_STAGES]
        if not vstages: continue
        args = common + variants[variant]
        ref, prev = W(f"{variant}-reference"), W(f"{variant}-previous")
        # The uninterrupted build (the reference) with the stage lengths it took.
        w = Watched([F] + args + ["--output", ref]); rc = w.finish()
        if rc != 0: raise SystemExit(f"reference build failed: {w.lines()[-5:]}")
        begins = {s: w.seen(p) for s, p in BUILD_STAGES.items()}
        end_t = w.seen(lambda l: l.startswith("published "))
        length = {}
        for s in BUILD_STAGES:
            nxt = NEXT[s]
            stop = begins[nxt] if nxt else end_t
            length[s] = max(0.002, (stop or 0) - (begins[s] or 0))
        sh([F] + args + ["--output", prev, "--seed", "2", "--quiet"])
        ref_files, prev_files = manifest_files(ref), manifest_files(prev)
        print(f"[crashtest-stages] {variant}: stage lengths (s) " + ", ".join(f"{s} {length[s]:.3f}" for s in BUILD_STAGES), file=sys.stderr, flush=True)
        idx = W(f"{variant}-idx")
        for stage in vstages:
            t0 = time.time()
            env = dict(os.environ)
            if stage == "publish": env["FATHOM_CRASHTEST_PAUSE_MS"] = str(a.pause_ms)
            span = length[stage] if stage != "publish" else length[stage] + 7 * a.pause_ms / 1000
            kills = misses = 0; failures = []; points = {}
            while kills < a.kills:
                if misses > 5 * a.kills + 20: failures.append("too many misses: the stage cannot be hit"); break
                for p in (idx, idx + ".fathom-build"): shutil.rmtree(p, ignore_errors=True)
                shutil.copytree(prev, idx)
                delay = rng.uniform(0, span)
                w = Watched([F] + args + ["--output", idx], env=env)
                if w.wait_for(BUILD_STAGES[stage]) is None:
                    w.kill(); failures.append(f"the stage never began: {w.lines()[-3:]}"); break
                time.sleep(delay)
                alive = w.kill()
                if not alive or build_stage_ended(stage, w, idx + ".fathom-build"):
                    misses += 1; span = max(0.002, span * 0.9); continue
                kills += 1
                if stage == "publish":
                    pts = [l.split()[-1] for l in w.lines() if l.startswith("crashtest: point ")]
                    last = pts[-1] if pts else "publish.begin(before)"
                    points[last] = points.get(last, 0) + 1
                # The destination: old or new, complete.
                now = manifest_files(idx) if os.path.isdir(idx) else "missing"
                if now not in (prev_files, ref_files): failures.append(f"kill {kills} ({delay:.3f}s): destination is neither old nor new ({'missing' if now == 'missing' else 'mixed'})")
                r = sh([F, "verify", idx, "--quiet"], check=False)
                if r.returncode != 0: failures.append(f"kill {kills}: verify failed after the kill: {r.stdout[-300:]}{r.stderr[-300:]}")
                # Resume.
                r = sh([F] + args + ["--output", idx, "--quiet"], check=False)
                if r.returncode != 0: failures.append(f"kill {kills}: the rerun failed: {r.stderr[-300:]}"); continue
                if manifest_files(idx) != ref_files: failures.append(f"kill {kills}: the resumed index differs from the uninterrupted one")
                r = sh([F, "verify", idx, "--quiet"], check=False)
                if r.returncode != 0: failures.append(f"kill {kills}: verify failed after the rerun")
            record(stage, variant, kills, misses, failures, {"kill_points": points} if points else {}, time.time() - t0)

    # ---- updates ------------------------------------------------------------------------------
    X = read_fbin(W("base.fbin"))
    n, d = X.shape
    upd = W("upd-pristine")
    if any(s in stages for s in ("insert", "delete", "checkpoint")):
        sh([F] + common + ["--output", upd, "--quiet"])
    sigma = 0.05 * float(X[:1000].std())

    def vectors_of(labels):
        """Label L's vector: row L mod n plus noise seeded by L (distinct, regenerated on demand)."""
        return np.stack([X[int(l) % n] + np.random.default_rng(int(l)).normal(0, sigma, d).astype(np.float32) if l >= n else X[int(l)]
                         for l in labels]).astype(np.float32)

    def found(idx, labels):
        """For each label, whether a search for its own vector returns it first."""
        labels = list(labels)
        if not labels: return []
        write_fbin(W("check.fbin"), vectors_of(labels))
        sh([F, "search", "--index", idx, "--queries", W("check.fbin"), "-k", "1", "--probes", "512", "--threads", "1",
            "--output", W("check.ibin"), "--quiet"])
        nq, k = np.fromfile(W("check.ibin"), dtype=np.uint32, count=2)
        got = np.fromfile(W("check.ibin"), dtype=np.int32, offset=8, count=int(nq) * int(k)).reshape(int(nq), int(k))[:, 0]
        return [int(g) == int(l) for g, l in zip(got, labels)]

    def reopen(idx):
        open(W("empty.labels"), "w").close()
        return sh([F, "delete", "--index", idx, "--labels", W("empty.labels"), "--quiet"], check=False)

    if "insert" in stages:
        t0 = time.time()
        m = 40 * a.insert_batch
        labels = np.arange(10 * n, 10 * n + m)
        write_fbin(W("ins.fbin"), vectors_of(labels)); write_labels(W("ins.labels"), labels)
        idx = W("ins-idx")
        cmd = [F, "insert", "--index", idx, "--input", W("ins.fbin"), "--labels", W("ins.labels"), "--batch", str(a.insert_batch), "--print-acks"]
        shutil.rmtree(idx, ignore_errors=True); shutil.copytree(upd, idx)
        w = Watched(cmd); w.finish()
        span = max(0.01, (w.seen(lambda l: l.startswith("insert:") and "done" in l) or 1) - (w.seen(lambda l: l.startswith("insert:")) or 0))
        kills = misses = 0; failures = []; acked_total = 0
        while kills < a.kills:
            if misses > 5 * a.kills + 20: failures.append("too many misses"); break
            shutil.rmtree(idx, ignore_errors=True); shutil.copytree(upd, idx)
            delay = rng.uniform(0, span)
            w = Watched(cmd)
            if w.wait_for(lambda l: l.startswith("insert:")) is None: w.kill(); failures.append("never began"); break
            time.sleep(delay)
            if not w.kill() or any(l.startswith("inserted") for l in w.lines("out")): misses += 1; continue
            kills += 1
            acks = [l.split() for l in w.lines("out") if l.startswith("ack ")]
            acked = int(acks[-1][1]) if acks else 0
            acked_total += acked
            r = reopen(idx)
            if r.returncode != 0: failures.append(f"kill {kills}: reopen failed: {r.stderr[-300:]}"); continue
            r = sh([F, "verify", idx, "--quiet"], check=False)
            if r.returncode != 0: failures.append(f"kill {kills}: verify failed")
            # Every acknowledged row (sampled: the last acknowledged batch whole, and 200 others),
            # and the present rows a prefix of the input.
            want = sorted(set(range(max(0, acked - a.insert_batch), acked)) | set(rng.sample(range(acked), min(200, acked))))
            later = sorted(rng.sample(range(acked, m), min(200, m - acked)))
            ok = found(idx, [labels[i] for i in want + later])
            lost = [int(labels[i]) for i, f in zip(want, ok[:len(want)]) if not f]
            present_later = [i for i, f in zip(later, ok[len(want):]) if f]
            absent_later = [i for i, f in zip(later, ok[len(want):]) if not f]
            if lost: failures.append(f"kill {kills}: {len(lost)} acknowledged inserts missing, e.g. {lost[:3]}")
            if present_later and absent_later and min(absent_later) < max(present_later):
                failures.append(f"kill {kills}: the inserted rows are not a prefix of the input")
        record("insert", "-", kills, misses, failures, {"acknowledged_rows_checked_total": acked_total}, time.time() - t0)

    if "delete" in stages:
        t0 = time.time()
        idx = W("del-idx")
        env = dict(os.environ); env["FATHOM_CRASHTEST_PAUSE_MS"] = str(a.pause_ms)
        gone = sorted(rng.sample(range(n), min(5000, n // 4)))
        write_labels(W("gone.labels"), gone)
        keep = [l for l in rng.sample(range(n), 600) if l not in set(gone)][:300]
        cmd = [F, "delete", "--index", idx, "--labels", W("gone.labels")]
        shutil.rmtree(idx, ignore_errors=True); shutil.copytree(upd, idx)
        w = Watched(cmd, env=env); w.finish()
        span = max(0.01, w.p.returncode == 0 and (time.monotonic() - w.start) - (w.seen(lambda l: l.startswith("delete:")) or 0) or 0.2)
        kills = misses = 0; failures = []; acked_kills = 0; points = {}
        while kills < a.kills:
            if misses > 5 * a.kills + 20: failures.append("too many misses"); break
            shutil.rmtree(idx, ignore_errors=True); shutil.copytree(upd, idx)
            delay = rng.uniform(0, span)
            w = Watched(cmd, env=env)
            if w.wait_for(lambda l: l.startswith("delete:")) is None: w.kill(); failures.append("never began"); break
            time.sleep(delay)
            if not w.kill(): misses += 1; continue
            kills += 1
            pts = [l.split()[-1] for l in w.lines() if l.startswith("crashtest: point ")]
            last = pts[-1] if pts else "delete.begin"
            points[last] = points.get(last, 0) + 1
            acked = any(l.startswith("deleted") for l in w.lines("out"))
            acked_kills += acked
            r = reopen(idx)
            if r.returncode != 0: failures.append(f"kill {kills}: reopen failed: {r.stderr[-300:]}"); continue
            r = sh([F, "verify", idx, "--quiet"], check=False)
            if r.returncode != 0: failures.append(f"kill {kills}: verify failed")
            sample = rng.sample(gone, 200)
            ok = found(idx, sample + keep)
            back = [l for l, f in zip(sample, ok[:200]) if f]
            if acked and back: failures.append(f"kill {kills}: {len(back)} acknowledged deletes came back, e.g. {back[:3]}")
            if not acked and back and len(back) != len(sample) and any(not f for f in ok[:200]):
                pass  # unacknowledged: either outcome; one record group is applied whole (checked by the log test)
            lost = [l for l, f in zip(keep, ok[200:]) if not f]
            if lost: failures.append(f"kill {kills}: {len(lost)} labels that were never deleted are missing")
        record("delete", "-", kills, misses, failures, {"kill_points": points, "kills_after_the_acknowledgement": acked_kills}, time.time() - t0)

    if "checkpoint" in stages:
        t0 = time.time()
        base_ck = W("ck-pristine")
        shutil.rmtree(base_ck, ignore_errors=True); shutil.copytree(upd, base_ck)
        ins = np.arange(20 * n, 20 * n + 2000)
        write_fbin(W("ck.fbin"), vectors_of(ins)); write_labels(W("ck.labels"), ins)
        sh([F, "insert", "--index", base_ck, "--input", W("ck.fbin"), "--labels", W("ck.labels"), "--batch", "500", "--quiet"])
        dels = sorted(rng.sample(range(n), 1000)) + [int(x) for x in ins[:300]]
        write_labels(W("ck.del"), dels)
        sh([F, "delete", "--index", base_ck, "--labels", W("ck.del"), "--quiet"])
        present = [int(x) for x in ins[300:]] + [l for l in range(n) if l not in set(dels)]
        idx = W("ck-idx")
        env = dict(os.environ); env["FATHOM_CRASHTEST_PAUSE_MS"] = "10"
        cmd = [F, "checkpoint", "--index", idx, "--memory-budget", "256MiB"]
        shutil.rmtree(idx, ignore_errors=True); shutil.copytree(base_ck, idx)
        w = Watched(cmd, env=env); w.finish()
        first = w.err[0][0] if w.err else 0
        span = max(0.05, (time.monotonic() - w.start) - first)
        kills = misses = 0; failures = []; published = 0
        def check_state(tag):
            sample_p = rng.sample(present, 300); sample_d = rng.sample(dels, 200)
            ok = found(idx, sample_p + sample_d)
            lost = [l for l, f in zip(sample_p, ok[:300]) if not f]
            back = [l for l, f in zip(sample_d, ok[300:]) if f]
            if lost: failures.append(f"kill {kills} {tag}: {len(lost)} acknowledged labels missing, e.g. {lost[:3]}")
            if back: failures.append(f"kill {kills} {tag}: {len(back)} acknowledged deletes came back, e.g. {back[:3]}")
        while kills < a.kills:
            if misses > 5 * a.kills + 20: failures.append("too many misses"); break
            for p in (idx, idx + ".fathom-build"): shutil.rmtree(p, ignore_errors=True)
            shutil.copytree(base_ck, idx)
            delay = rng.uniform(0, span)
            w = Watched(cmd, env=env)
            if w.wait_for(lambda l: True) is None: w.kill(); failures.append("never began"); break
            time.sleep(delay)
            if not w.kill() or any(l.startswith("checkpointed") for l in w.lines("out")): misses += 1; continue
            kills += 1
            published += manifest_files(idx) != manifest_files(base_ck)
            r = sh([F, "verify", idx, "--quiet"], check=False)
            if r.returncode != 0: failures.append(f"kill {kills}: verify failed after the kill")
            check_state("after the kill")
            r = sh(cmd + ["--quiet"], check=False)
            if r.returncode != 0: failures.append(f"kill {kills}: the rerun of the checkpoint failed: {r.stderr[-300:]}"); continue
            r = sh([F, "verify", idx, "--quiet"], check=False)
            if r.returncode != 0: failures.append(f"kill {kills}: verify failed after the rerun")
            check_state("after the rerun")
        record("checkpoint", "-", kills, misses, failures, {"kills_after_the_new_version_was_published": published}, time.time() - t0)

    total = time.time() - t_all
    print(f"\n| stage | build | kills | misses (retried) | failures | notes |")
    print(f"|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['variant']} | {r['kills']} | {r['misses']} | {r['failures']} | {json.dumps(r['notes']) if r['notes'] else ''} |")
    bad = sum(r["failures"] for r in rows)
    print(f"\n{sum(r['kills'] for r in rows)} kills in {len(rows)} stages, {bad} failures, {total:.0f} s (n={a.n}, dim={a.dim}, seed={a.seed})")
    for r in rows:
        for f in r["failure_examples"]: print(f"  {r['stage']}/{r['variant']}: {f}")
    os.makedirs(os.path.dirname(a.json_out), exist_ok=True)
    with open(a.json_out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "n": a.n, "dim": a.dim, "kills_per_stage": a.kills,
                   "seed": a.seed, "seconds": round(total), "rows": rows}, f, indent=1)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
