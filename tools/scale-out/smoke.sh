#!/usr/bin/env bash
# Smoke test of tools/scale-out/build_shards.py, end to end on this machine, no pytest:
# a Ray head on loopback (`ray start --head`), a SeaweedFS S3 server on loopback (`weed mini`),
# 3 shard builds as Ray tasks (the stand-in shard command; shard 1 fails its first try and
# Ray retries it), each shard pushed with `fathom push`, then pulled back with `fathom pull`
# and checked with `fathom verify`. Stops what it started (by process group) on exit.
#
# Usage: tools/scale-out/smoke.sh FATHOM_BINARY [PYTHON_WITH_RAY]
#   PYTHON_WITH_RAY: a python with `ray` installed (default: python3), e.g.
#   python3 -m venv tools/scale-out/.venv && tools/scale-out/.venv/bin/pip install 'ray==2.60.0'
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fathom=$(realpath "${1:?usage: smoke.sh FATHOM_BINARY [PYTHON_WITH_RAY]}")
py=${2:-python3}
pybin=$(dirname "$(command -v "$py")")
ray="$pybin/ray"; [ -x "$ray" ] || ray=ray
weed=${FATHOM_WEED:-$(command -v weed || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/weed")}
[ -x "$weed" ] || { echo "smoke: weed (SeaweedFS) not found: run tools/bootstrap" >&2; exit 1; }
work=$(mktemp -d /tmp/fathom-scale-out-smoke.XXXXXX)
pids=()
cleanup() {
  # Our process groups only: TERM, then KILL what is left after 15 s (a busy `ray start
  # --block` may not act on TERM).
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 75); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# S3 server.
export AWS_ACCESS_KEY_ID=smoke AWS_SECRET_ACCESS_KEY=smoke-secret AWS_REGION=us-east-1
printf '{"identities":[{"name":"smoke","credentials":[{"accessKey":"smoke","secretKey":"smoke-secret"}],"actions":["Admin","Read","Write","List"]}]}' > "$work/s3.json"
mkdir -p "$work/s3" "$work/tmp"   # weed's logs and unix sockets go to TMPDIR
p=(); for _ in $(seq 13); do p+=("$(port)"); done
TMPDIR="$work/tmp" setsid "$weed" mini -dir="$work/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="${p[0]}" -master.port.grpc="${p[1]}" \
  -volume.port="${p[2]}" -volume.port.grpc="${p[3]}" -filer.port="${p[4]}" -filer.port.grpc="${p[5]}" -s3.port="${p[6]}" \
  -s3.port.grpc="${p[7]}" -s3.port.iceberg="${p[8]}" -s3.port.lance="${p[9]}" -admin.port="${p[10]}" -admin.port.grpc="${p[11]}" \
  -metricsPort="${p[12]}" -webdav=false -admin.ui=false -s3.config="$work/s3.json" -bucket=shards \
  -s3.localSocket="$work/tmp/s3.sock" -filer.localSocket="$work/tmp/filer.sock" > "$work/weed.log" 2>&1 &
pids+=($!)
export AWS_ENDPOINT_URL="http://127.0.0.1:${p[6]}"

# Ray head on loopback (--block keeps it in our process group, stopped by cleanup). Ray binds
# the machine's routable address unless this switch says single-machine (then 127.0.0.1).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Ray 2.60's `ray start` turns token authentication on (token in ~/.ray/auth_token); its
# clients (ray status, the driver) must say so to send it.
export RAY_AUTH_MODE=token
rport=$(port)
setsid "$ray" start --head --block --node-ip-address=127.0.0.1 --port="$rport" --num-cpus=2 \
  --include-dashboard=false --disable-usage-stats --temp-dir="$work/ray" > "$work/ray.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do "$ray" status --address "127.0.0.1:$rport" >/dev/null 2>&1 && break; sleep 1; done
"$ray" status --address "127.0.0.1:$rport" >/dev/null || { cat "$work/ray.log" >&2; exit 1; }

"$fathom" gen --n 3000 --dim 16 --out "$work/base.fbin" --seed 3 2>/dev/null
# The store is ready when a GET in the bucket says "no such key".
for _ in $(seq 120); do "$fathom" pull --from s3://shards/none --cache "$work/probe" --quiet 2>&1 | grep -q NoSuchKey && break; sleep 0.5; done

# Shard 1's first try fails; Ray retries it.
# (The variable is set in the command: Ray workers do not inherit the driver's environment.)
RAY_ADDRESS="127.0.0.1:$rport" "$py" "$here/build_shards.py" --fathom "$fathom" --input "$work/base.fbin" \
  --shards 3 --output-dir "$work/out" --upload s3://shards/smoke --max-retries 2 \
  --build-command "env FAIL_ONCE_SHARD=1 $here/standin_shard.sh {fathom} {input} {output} {i} {n}" > "$work/result.json"
cat "$work/result.json"
python3 - "$work/result.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
assert not r["failed"], r["failed"]
assert [b["shard"] for b in r["built"]] == [0, 1, 2], r
tries = {b["shard"]: b["attempts"] for b in r["built"]}
assert tries[1] == 2 and tries[0] == 1 and tries[2] == 1, tries
EOF
for i in 0 1 2; do
  d=$("$fathom" pull --from "s3://shards/smoke/shard-000$i" --cache "$work/cache" --quiet)
  "$fathom" verify "$d" --quiet
done
echo "smoke: 3 shards built on Ray (shard 1 retried by Ray), pushed, pulled and verified"
