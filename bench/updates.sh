#!/bin/sh
# Issue 13's bars (updates in place). Run alone on a quiet machine, from the repository root:
#   bench/updates.sh            → bench/results/updates-syn1m.json, bench/results/updates-pypi.json
# Bars: recall@10 at the probes where the fresh build reaches 0.90 within 0.01 (syn) / 0.015 (pypi)
# of it ("bar.recall_delta"), "bar.qps_ratio" ≥ 0.8, "bar.insert_vectors_per_second" ≥ 5000 (with
# "bar.insert_p99_batch_ms"), "stream.ratio" ≤ 1.5, "crash.failures" empty after 50 kill -9 + 10 power losses.
set -eu
swift build -c release --product fathom
F=.build/release/fathom
python3 bench/updates.py --fathom-bin $F --name syn1m --metric l2 \
  --base /work/data/syn1000000.fbin --queries /work/data/syn1000000.q.fbin --kills 50 --power-losses 10 "$@"
python3 bench/updates.py --fathom-bin $F --name pypi --metric ip \
  --base /work/shared/datasets/pypi-minilm-384/base.fbin --queries /work/shared/datasets/pypi-minilm-384/query.fbin \
  --kills 0 --power-losses 0 "$@"
