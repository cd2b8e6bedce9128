#!/usr/bin/env bash
# Load test of `fathom serve` over loopback (issue 12): wrk at concurrency 1, 8 and 32,
# QPS and p50/p99 per level beside the in-process batch search (`fathom search --threads 2`)
# on the same queries, with reloads during the 32-connection run (failed requests reported).
# Bounded: 3 runs of --duration seconds (at most 300 each), loopback only, and it stops the
# server it started. Writes JSON under bench/results/.
#
#   bench/serve_load.sh                                  # synthetic 20,000 × 64 index, 30 s per level
#   bench/serve_load.sh --duration 2 --n 2000 --dim 16   # smoke run
#   bench/serve_load.sh --index DIR --queries Q.fbin --probes 24 --duration 30
#
# Options: --index DIR --queries FILE (else a synthetic set is generated under bench/work/serve),
# --n N --dim D (synthetic), --duration S, --probes P, -k K, --reloads R (during the 32 run),
# --port PORT, --fathom PATH (default: a release build, built if missing), --log-level LEVEL,
# --levels "1 8 32".
set -euo pipefail
cd "$(dirname "$0")/.."

INDEX="" QUERIES="" N=20000 DIM=64 DURATION=30 PROBES=16 K=10 RELOADS=1 PORT=7790 FATHOM="${FATHOM:-}" LOG_LEVEL=info LEVELS="1 8 32"
while [ $# -gt 0 ]; do
  case "$1" in
    --index) INDEX="$2"; shift 2 ;;
    --queries) QUERIES="$2"; shift 2 ;;
    --n) N="$2"; shift 2 ;;
    --dim) DIM="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --probes) PROBES="$2"; shift 2 ;;
    -k|--k) K="$2"; shift 2 ;;
    --reloads) RELOADS="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --fathom) FATHOM="$2"; shift 2 ;;
    --log-level) LOG_LEVEL="$2"; shift 2 ;;
    --levels) LEVELS="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "serve_load: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ "$DURATION" =~ ^[0-9]+$ ]] && [ "$DURATION" -ge 1 ] && [ "$DURATION" -le 300 ] || { echo "serve_load: --duration must be 1 to 300 seconds" >&2; exit 2; }
[[ "$RELOADS" =~ ^[0-9]+$ ]] && [ "$RELOADS" -le 100 ] || { echo "serve_load: --reloads must be 0 to 100" >&2; exit 2; }
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "serve_load: --port must be a number" >&2; exit 2; }

if ! command -v wrk >/dev/null 2>&1; then
  echo "serve_load: installing wrk (Debian package)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
command -v curl >/dev/null 2>&1 || tools/bootstrap

if [ -z "$FATHOM" ]; then
  FATHOM=.build/release/fathom
  [ -x "$FATHOM" ] || swift build -c release --product fathom >&2
fi

WORK=bench/work/serve
mkdir -p "$WORK" bench/results
if [ -z "$INDEX" ]; then
  INDEX="$WORK/idx-$N-$DIM"
  QUERIES="$WORK/q-$N-$DIM.fbin"
  if [ ! -f "$INDEX/manifest.json" ]; then
    echo "serve_load: building a synthetic $N × $DIM index in $INDEX" >&2
    "$FATHOM" gen --n "$N" --dim "$DIM" --queries 1000 --out "$WORK/base-$N-$DIM.fbin" --query-out "$QUERIES" --quiet
    "$FATHOM" build --input "$WORK/base-$N-$DIM.fbin" --output "$INDEX" --quiet
  fi
fi
[ -n "$QUERIES" ] || { echo "serve_load: --index needs --queries" >&2; exit 2; }

# Request bodies: one JSON search per query (at most 1000 queries).
BODIES="$WORK/bodies.jsonl"
python3 - "$QUERIES" "$K" "$PROBES" "$BODIES" <<'PY'
import struct, sys, json
path, k, probes, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open(path, "rb") as f:
    if path.endswith(".fbin"):
        n, d = struct.unpack("<II", f.read(8)); rows = []
        for _ in range(min(n, 1000)):
            rows.append(struct.unpack("<%df" % d, f.read(4 * d)))
    elif path.endswith(".fvecs"):
        rows = []
        while len(rows) < 1000:
            h = f.read(4)
            if not h: break
            (d,) = struct.unpack("<i", h); rows.append(struct.unpack("<%df" % d, f.read(4 * d)))
    else:
        sys.exit("serve_load: queries must be .fbin or .fvecs")
with open(out, "w") as o:
    for r in rows:
        o.write(json.dumps({"vector": [float("%.7g" % x) for x in r], "k": k, "probes": probes}, separators=(",", ":")) + "\n")
print(len(rows), file=sys.stderr)
PY
NQ=$(wc -l < "$BODIES")

# In-process reference: the library's batch search at 2 threads on the same queries.
INPROC_JSON=$("$FATHOM" search --index "$INDEX" --queries "$QUERIES" --limit "$NQ" -k "$K" --probes "$PROBES" --threads 2 --json --quiet)
INPROC_QPS=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["rows"][0]["qps"])' "$INPROC_JSON")

LOG="$WORK/serve.log"
"$FATHOM" serve --index "bench=$INDEX" --listen "127.0.0.1:$PORT" --log-level "$LOG_LEVEL" 2> "$LOG" &
SERVER=$!
cleanup() { kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
trap cleanup EXIT
BASE="http://127.0.0.1:$PORT"
for _ in $(seq 1 600); do
  curl -sf "$BASE/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { echo "serve_load: the server exited; see $LOG" >&2; cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
curl -sf "$BASE/readyz" >/dev/null || { echo "serve_load: the server is not ready after 60 s; see $LOG" >&2; exit 1; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$SERVER/status"; }

RESULTS="$WORK/levels.jsonl"; : > "$RESULTS"
RELOAD_LOG="$WORK/reloads.jsonl"; : > "$RELOAD_LOG"
RSS_BEFORE=""; RSS_AFTER=""
for C in $LEVELS; do
  T=$(( C < 2 ? 1 : 2 ))
  RELOADER=""
  if [ "$C" = "32" ] || [ "$C" = "$(echo $LEVELS | awk '{print $NF}')" ]; then
    RSS_BEFORE=$(rss_kib)
    if [ "$RELOADS" -gt 0 ]; then
      ( gap=$(python3 -c "print($DURATION / ($RELOADS + 1))")
        for _ in $(seq 1 "$RELOADS"); do
          sleep "$gap"
          curl -s -o /dev/null -w '{"status": %{http_code}, "seconds": %{time_total}}\n' -X POST "$BASE/v1/indexes/bench/reload" >> "$RELOAD_LOG"
        done ) &
      RELOADER=$!
    fi
  fi
  OUT=$(wrk -t"$T" -c"$C" -d"${DURATION}s" --timeout 10s -s bench/serve/wrk_search.lua "$BASE" -- "$BODIES" /v1/indexes/bench/search)
  [ -n "$RELOADER" ] && wait "$RELOADER"
  LINE=$(echo "$OUT" | grep '^WRKJSON ' | sed 's/^WRKJSON //')
  echo "{\"connections\": $C, \"threads\": $T, \"wrk\": $LINE}" >> "$RESULTS"
done
sleep 1
RSS_AFTER=$(rss_kib)
METRICS=$(curl -s "$BASE/metrics" | grep -E '^fathom_index_(generation|open_generations)' || true)

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUTFILE="bench/results/serve_load-$STAMP.json"
python3 - "$RESULTS" "$RELOAD_LOG" "$OUTFILE" "$INPROC_QPS" "$INDEX" "$QUERIES" "$NQ" "$K" "$PROBES" "$DURATION" "$LOG_LEVEL" "${RSS_BEFORE:-0}" "${RSS_AFTER:-0}" "$METRICS" "$FATHOM" <<'PY'
import json, sys, os, platform
res, rel, out, inproc, index, queries, nq, k, probes, dur, lvl, rss0, rss1, metrics, fathom = sys.argv[1:16]
levels = []
for line in open(res):
    r = json.loads(line); w = r["wrk"]
    secs = w["duration_us"] / 1e6
    failed = sum(w["errors"].values())
    levels.append({"connections": r["connections"], "qps": w["requests"] / secs if secs else 0.0,
                   "p50_us": w["p50_us"], "p90_us": w["p90_us"], "p99_us": w["p99_us"], "mean_us": w["mean_us"],
                   "requests": w["requests"], "failed": failed, "errors": w["errors"]})
reloads = [json.loads(l) for l in open(rel) if l.strip()]
doc = {"bench": "serve_load", "fathom": fathom, "index": index, "queries": queries, "queries_used": int(nq), "k": int(k), "probes": int(probes),
       "duration_s": int(dur), "log_level": lvl, "cpus": os.cpu_count(), "host": platform.node(),
       "inprocess_batch_qps_2_threads": float(inproc), "levels": levels,
       "reloads": reloads, "reloads_ok": sum(1 for r in reloads if r["status"] == 200),
       "rss_kib_before_reloads": int(rss0), "rss_kib_after": int(rss1),
       "metrics_after": metrics.splitlines()}
json.dump(doc, open(out, "w"), indent=2)
print("%-12s %10s %10s %10s %8s" % ("connections", "QPS", "p50 µs", "p99 µs", "failed"))
for l in levels:
    print("%-12d %10.1f %10d %10d %8d" % (l["connections"], l["qps"], l["p50_us"], l["p99_us"], l["failed"]))
print("in-process batch search, 2 threads: %.1f QPS" % float(inproc))
if levels:
    print("serve at %d connections / in-process: %.2f×" % (levels[-1]["connections"], levels[-1]["qps"] / float(inproc)))
print("reloads during the last level: %d/%d ok; failed requests in that level: %d" % (doc["reloads_ok"], len(reloads), levels[-1]["failed"] if levels else -1))
print("server RSS: %d KiB before the reloads, %d KiB after" % (int(rss0), int(rss1)))
print("wrote " + out)
PY
