#!/usr/bin/env bash
# Usage: datasets/synthetic.sh N DIM OUTDIR [extra fathom gen options]
# Writes OUTDIR/base.fbin, query.fbin (10,000 queries), gt.ibin (exact, k = 100), attrs.csv.
set -euo pipefail
N=$1; DIM=$2; OUT=$3; shift 3
cd "$(dirname "$0")/.."
swift build -c release --product fathom >/dev/null
F=$(swift build -c release --show-bin-path)/fathom
mkdir -p "$OUT"
"$F" gen --n "$N" --dim "$DIM" --queries 10000 --out "$OUT/base.fbin" --query-out "$OUT/query.fbin" \
  --attributes "$OUT/attrs.csv" "$@"
"$F" gt --base "$OUT/base.fbin" --queries "$OUT/query.fbin" -k 100 --metric l2 --output "$OUT/gt.ibin" --memory-budget 4GiB
