#!/usr/bin/env python3
"""A/B of two Fathom builds on the same indexes: `fathom search` of binary A and binary B,
alternated run by run (A, B, A, B, ...), the page cache dropped before every run, the load
average recorded before and after each. Writes bench/results/ab-NAME.json and .png, and prints
per case and probe count the QPS ratio B/A (median over the repeats) with recall and IO
requests of both (they must agree: a change of the executor may not change what is read).

  python3 bench/ab_search.py --name executor --a /path/old/fathom --b .build/release/fathom \
      --case "pypi;IDX;QUERIES;GT;--probes 8,16,32 --threads 1 --window 1" [--case ...] [--repeats 3]

A case is `label;index;queries;gt;extra fathom search arguments` (gt may be empty). Run it
alone on the machine (no build, test or helper): the driver refuses to start at load >= 1.0
unless --force.
"""
import argparse, json, os, re, shlex, statistics, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
import common  # noqa: E402


def run_search(binary, case, record):
    label, index, queries, gt, extra = case
    cmd = [binary, "search", "--index", index, "--queries", queries, "-k", "10", "--json"]
    if gt:
        cmd += ["--gt", gt]
    cmd += shlex.split(extra)
    record["cache_dropped"] = common.drop_caches()
    record["load_before"] = common.loadavg()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = done.stdout
    record["load_after"] = common.loadavg()
    # The IO engine, from the search's progress line ("..., IO libaio, ...").
    m = re.search(r"IO (\w+)", done.stderr)
    record["io_engine"] = m.group(1) if m else None
    record["command"] = " ".join(cmd)
    rows = json.loads(out)
    return rows["rows"] if isinstance(rows, dict) and "rows" in rows else rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--a", required=True, help="baseline fathom binary")
    ap.add_argument("--b", required=True, help="candidate fathom binary")
    ap.add_argument("--a-label", default="A")
    ap.add_argument("--b-label", default="B")
    ap.add_argument("--case", action="append", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    load = common.loadavg()
    if load[0] >= 1.0 and not a.force:
        raise SystemExit(f"load average {load[0]:.2f} >= 1.0: a benchmark runs alone (wait, or --force to record it anyway)")
    cases = [tuple((c.split(";") + [""] * 5)[:5]) for c in a.case]
    out = dict(name=a.name, machine=common.machine_info(), a=dict(binary=a.a, label=a.a_label),
               b=dict(binary=a.b, label=a.b_label), repeats=a.repeats, load_start=load, cases=[])
    for case in cases:
        entry = dict(label=case[0], index=case[1], queries=case[2], gt=case[3], args=case[4], runs=[])
        for rep in range(a.repeats):
            for side, binary in (("a", a.a), ("b", a.b)):
                rec = dict(side=side, repeat=rep)
                rec["rows"] = run_search(binary, case, rec)
                entry["runs"].append(rec)
                print(f"{case[0]:24s} {side} #{rep}: " + "  ".join(
                    f"p{r['probes']} {r['qps']:.0f} QPS r={r.get('recall') or 0:.4f}" for r in rec["rows"]), flush=True)
        summary = []
        probes = [r["probes"] for r in entry["runs"][0]["rows"]]
        for i, p in enumerate(probes):
            qa = [r["rows"][i]["qps"] for r in entry["runs"] if r["side"] == "a"]
            qb = [r["rows"][i]["qps"] for r in entry["runs"] if r["side"] == "b"]
            ra = entry["runs"][0]["rows"][i]
            rb = next(r for r in entry["runs"] if r["side"] == "b")["rows"][i]
            s = dict(probes=p, qps_a=statistics.median(qa), qps_b=statistics.median(qb),
                     ratio_b_over_a=statistics.median(qb) / statistics.median(qa),
                     recall_a=ra.get("recall"), recall_b=rb.get("recall"),
                     ios_a=ra["mean_ios"], ios_b=rb["mean_ios"], pages_a=ra["mean_pages"], pages_b=rb["mean_pages"],
                     p99_us_a=ra["p99_us"], p99_us_b=rb["p99_us"])
            summary.append(s)
            print(f"  {case[0]:22s} probes {p:4d}: B/A {s['ratio_b_over_a']:.3f}  ({s['qps_a']:.0f} → {s['qps_b']:.0f} QPS)  "
                  f"recall {s['recall_a']} / {s['recall_b']}  IOs {s['ios_a']:.1f} / {s['ios_b']:.1f}", flush=True)
        entry["summary"] = summary
        out["cases"].append(entry)
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        json.dump(out, open(os.path.join(HERE, "results", f"ab-{a.name}.json"), "w"), indent=1)
    out["load_end"] = common.loadavg()
    json.dump(out, open(os.path.join(HERE, "results", f"ab-{a.name}.json"), "w"), indent=1)
    plot(out, os.path.join(HERE, "results", f"ab-{a.name}.png"))


def plot(out, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    cs = out["cases"]
    fig, axes = plt.subplots(1, len(cs), figsize=(4.2 * len(cs), 3.6), squeeze=False)
    for ax, c in zip(axes.flat, cs):
        for side, style in (("a", "o--"), ("b", "s-")):
            rec = [s for s in c["summary"]]
            ax.plot([s[f"recall_{side}"] or 0 for s in rec], [s[f"qps_{side}"] for s in rec], style,
                    label=out[side]["label"], ms=4)
        ax.set_title(c["label"], fontsize=8)
        ax.set_xlabel("recall@10", fontsize=8)
        ax.set_ylabel("QPS (median of repeats)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(f"A/B {out['name']}: cache dropped per run, runs alternated", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
