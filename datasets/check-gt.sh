#!/usr/bin/env bash
# Recomputes the shipped ground truth of a real dataset with `fathom gt` and reports how
# many ids differ (ties aside), with the wall time of both fathom and a NumPy/BLAS brute force.
# Usage: datasets/check-gt.sh fashion-mnist-784|pypi-minilm-384
set -euo pipefail
NAME=${1:-fashion-mnist-784}
cd "$(dirname "$0")/.."
S=../shared/datasets/$NAME
case $NAME in
  fashion-mnist-784) BASE=$S/base.u8bin; Q=$S/query.u8bin; METRIC=l2 ;;
  pypi-minilm-384) BASE=$S/base.fbin; Q=$S/query.fbin; METRIC=ip ;;
  *) echo "unknown dataset $NAME" >&2; exit 2 ;;
esac
swift build -c release --product fathom >/dev/null
F=$(swift build -c release --show-bin-path)/fathom
mkdir -p bench/work
/usr/bin/time -f "fathom gt: %e s wall, peak RSS %M KiB" "$F" gt --base "$BASE" --queries "$Q" -k 100 --metric $METRIC --output bench/work/$NAME-gt.ibin --quiet
python3 datasets/compare_gt.py "$S/gt.ibin" bench/work/$NAME-gt.ibin
python3 datasets/numpy_gt.py "$BASE" "$Q" $METRIC 100
