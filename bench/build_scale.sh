#!/usr/bin/env bash
# Build-scale measurement (issue 11): for each n, build /work/data/syn{n}.fbin with
# `--memory-budget 2GiB --threads 2` under /usr/bin/time -v after dropping the page cache,
# plus the 10M build at 1 GiB; record per-stage seconds, vectors/s, peak RSS, load before
# and after; search each index over a probes list for recall@10 (SEARCH_THREADS, default 1,
# window 1: one query at a time); run --plan-only --input for each build (the calibrated
# plan the build itself makes) and keep its time and RAM estimate beside the measurement.
# Everything goes into one JSON in bench/results/.
#
# Usage (alone on a quiet machine, as root for the cache drop):
#   bench/build_scale.sh                      # n = 1000000 3000000 10000000
#   N_LIST="1000000" bench/build_scale.sh     # a subset
# Environment: DATA (default /work/data), WORK (default /tmp/fathom-build-scale; indexes
# are deleted after they are searched unless KEEP=1), PROBES (default 2,4,8,16,32,64),
# FATHOM (default .build/release/fathom; built if missing), SKIP_1G=1 skips the 1 GiB run,
# NO_DROP=1 keeps the page cache (smoke tests only).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-/work/data}
WORK=${WORK:-/tmp/fathom-build-scale}
PROBES=${PROBES:-2,4,8,12,16,32,64}
SEARCH_THREADS=${SEARCH_THREADS:-1}
N_LIST=${N_LIST:-"1000000 3000000 10000000"}
FATHOM=${FATHOM:-.build/release/fathom}
[ -x "$FATHOM" ] || swift build -c release --product fathom
mkdir -p "$WORK" bench/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=bench/results/build_scale-$STAMP.json
ROWS=$WORK/rows.jsonl
: > "$ROWS"

drop_cache() { [ "${NO_DROP:-0}" = 1 ] && return 0; sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; else echo "warning: cannot drop the page cache (not root)" >&2; fi; }
load1() { cut -d' ' -f1 /proc/loadavg; }
# A run starts only on a quiet machine: wait (up to WAIT_QUIET seconds, default 600) for the
# 1-minute load to fall below 1.0, which also lets the previous run's load decay.
wait_quiet() {
    local waited=0
    while awk -v l="$(load1)" 'BEGIN { exit !(l >= 1.0) }'; do
        [ "$waited" -ge "${WAIT_QUIET:-600}" ] && { echo "warning: load $(load1) still >= 1.0 after ${waited} s" >&2; return 0; }
        sleep 10; waited=$((waited + 10))
    done
}

run_one() {  # n budget label
    local n=$1 budget=$2 label=$3
    local input=$DATA/syn$n.fbin idx=$WORK/idx-$label
    rm -rf "$idx" "$idx.fathom-build"
    "$FATHOM" build --plan-only --input "$input" --memory-budget "$budget" --threads 2 --json > "$WORK/$label.plan.json" 2>/dev/null
    wait_quiet
    drop_cache
    local before; before=$(load1)
    /usr/bin/time -v "$FATHOM" build --input "$input" --output "$idx" --memory-budget "$budget" --threads 2 --json \
        > "$WORK/$label.manifest.json" 2> "$WORK/$label.stderr"
    local after; after=$(load1)
    local search_json="$WORK/$label.search.json"
    drop_cache
    "$FATHOM" search --index "$idx" --queries "$DATA/syn$n.q.fbin" --gt "$DATA/syn$n.gt.ibin" -k 10 \
        --probes "$PROBES" --threads "$SEARCH_THREADS" --window 1 --json --quiet > "$search_json"
    python3 - "$n" "$budget" "$label" "$before" "$after" "$WORK/$label.manifest.json" "$WORK/$label.stderr" "$search_json" "$WORK/$label.plan.json" "$SEARCH_THREADS" >> "$ROWS" <<'EOF'
import json, re, sys
n, budget, label, before, after, mpath, epath, spath, ppath, sthreads = sys.argv[1:]
plan = json.load(open(ppath))
m = json.load(open(mpath))
err = open(epath, errors="replace").read()
def grab(pat, conv=float):
    x = re.search(pat, err)
    return conv(x.group(1)) if x else None
wall = grab(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", str)
if wall:
    parts = [float(p) for p in wall.split(":")]
    wall = sum(p * 60 ** (len(parts) - 1 - i) for i, p in enumerate(parts))
secs = m["build"]["seconds"]
row = {
    "n": int(n), "label": label, "memory_budget": budget, "threads": 2,
    "wall_seconds": wall, "stage_seconds": secs,
    "vectors_per_second": int(n) / wall if wall else None,
    "assign_vectors_per_second": int(n) / secs["assign"] if secs.get("assign") else None,
    "peak_rss_bytes_time_v": (grab(r"Maximum resident set size \(kbytes\): (\d+)", int) or 0) * 1024,
    "peak_rss_bytes_manifest": m["build"]["peak_rss_bytes"],
    "load_before": float(before), "load_after": float(after),
    "heads": m["heads"], "records": m["stats"]["records"], "mean_replicas": m["stats"]["mean_replicas"],
    "recall_vs_probes": [{"probes": r["probes"], "recall": r["recall"], "qps": r["qps"]} for r in json.load(open(spath))["rows"]],
    "search_threads": int(sthreads), "search_window": 1, "page_cache_dropped": True,
    "cut_records": m["stats"]["cut_records"], "orphans_fixed": m["stats"]["orphans_fixed"],
    "orphans_outside_nearest": m["stats"].get("orphans_outside_nearest"), "empty_postings": m["stats"]["empty_postings"],
    "head_choice": m["parameters"].get("head_choice"), "calibration": plan.get("calibration"),
    "plan_estimated_seconds": plan["estimated_seconds"], "plan_peak_ram_bytes": plan["peak_ram_bytes"], "plan_heads": plan["heads"],
}
row["plan_time_error"] = plan["estimated_seconds"] / wall - 1 if wall else None
row["plan_ram_error"] = plan["peak_ram_bytes"] / row["peak_rss_bytes_time_v"] - 1 if row["peak_rss_bytes_time_v"] else None
print(json.dumps(row))
EOF
    [ "${KEEP:-0}" = 1 ] || rm -rf "$idx"
}

PLAN=$WORK/plan10m.json
"$FATHOM" build --plan-only --n 10000000 --dim 128 --type f32 --memory-budget 2GiB --threads 2 --json > "$PLAN" 2>/dev/null   # uncalibrated: no input
for n in $N_LIST; do run_one "$n" 2GiB "n$n-2g"; done
if [ "${SKIP_1G:-0}" != 1 ] && [[ " $N_LIST " == *" 10000000 "* ]]; then run_one 10000000 1GiB "n10000000-1g"; fi

python3 - "$ROWS" "$PLAN" "$OUT" <<'EOF'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
plan = json.load(open(sys.argv[2]))
two = sorted([r for r in rows if r["memory_budget"] == "2GiB"], key=lambda r: r["n"])
exps = []
for a, b in zip(two, two[1:]):
    if a["wall_seconds"] and b["wall_seconds"]:
        exps.append({"from": a["n"], "to": b["n"], "exponent": math.log(b["wall_seconds"] / a["wall_seconds"]) / math.log(b["n"] / a["n"])})
ten = next((r for r in two if r["n"] == 10_000_000), None)
for r in rows:   # the smallest swept probes reaching recall@10 0.90 (the ±50% bar compares 10M with 1M)
    r["probes_for_recall_0.90"] = next((p["probes"] for p in r["recall_vs_probes"] if p["recall"] >= 0.90), None)
out = {
    "rows": rows,
    "scale_exponents": exps,
    "plan_10m_without_input": {"estimated_seconds": plan["estimated_seconds"], "peak_ram_bytes": plan["peak_ram_bytes"],
                 "stages": {s["name"]: s["seconds"] for s in plan["stages"]}},
    "plan_10m_error": ten["plan_time_error"] if ten else None,
    "plan_10m_ram_error": ten["plan_ram_error"] if ten else None,
    "bars": {"10M_2GiB_wall_seconds_max": 900, "peak_rss_max": "the run's budget", "scale_exponent_max": 1.1,
             "recall_at_10": 0.90, "probes_within": "≤ 1.5× the 1M build's", "plan_error_max": 0.25},
}
json.dump(out, open(sys.argv[3], "w"), indent=1)
print(json.dumps(out, indent=1))
EOF
echo "wrote $OUT" >&2
