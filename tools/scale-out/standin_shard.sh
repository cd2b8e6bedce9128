#!/usr/bin/env bash
# A stand-in for `fathom build --model MODEL --shard i/N` until the sharded CLI is on main:
# builds an ordinary index of the whole input with seed i (a real `fathom build`, so the
# task does real work and publishes a real index directory). With FAIL_ONCE_SHARD=i set,
# the first try of shard i fails (exit 3) after leaving a marker, so that the driver's
# engine retries can be watched. Usage: standin_shard.sh FATHOM INPUT OUTPUT I N
set -euo pipefail
fathom=$1 input=$2 output=$3 i=$4 n=$5
if [ "${FAIL_ONCE_SHARD:-}" = "$i" ] && [ ! -e "$output.failed-once" ]; then
  mkdir -p "$(dirname "$output")"
  touch "$output.failed-once"
  echo "standin_shard: injected failure of shard $i/$n (first try)" >&2
  exit 3
fi
exec "$fathom" build --input "$input" --output "$output" --seed "$((42 + i))" --head-ratio 0.05 --quiet
