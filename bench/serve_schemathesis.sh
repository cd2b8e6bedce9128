#!/usr/bin/env bash
# schemathesis (PyPI) against docs/openapi.yaml and a running `fathom serve` on loopback:
# generated requests for every operation; fails on a server error (5xx) or a response that
# does not match the spec. Bounded by --max-examples per operation and --max-time.
#
#   bench/serve_schemathesis.sh                   # 300 examples per operation, at most 300 s
#   bench/serve_schemathesis.sh --examples 30     # smoke run
#
# Two indexes are served: `docs` (read-only, with attributes: searches, filters, reload) and
# `rw` (writable, `--writable rw`, no attributes: the write operations POST/DELETE
# /v1/indexes/{name}/vectors run against it; it is rebuilt fresh for every run).
#
# Checks: no 5xx, documented status codes, content types and response schemas. Not
# positive_data_acceptance: the schema cannot say a vector's length must equal the index's
# dimension, so most generated searches and inserts are (rightly) refused with 400
# dimensionMismatch.
# The venv lives in bench/.venv-serve (git-ignored). Writes a JUnit report under bench/work/.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=300 MAX_TIME=300 PORT=7791 FATHOM="${FATHOM:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --examples) EXAMPLES="$2"; shift 2 ;;
    --max-time) MAX_TIME="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --fathom) FATHOM="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "serve_schemathesis: unknown option $1" >&2; exit 2 ;;
  esac
done
VENV=bench/.venv-serve
[ -x "$VENV/bin/schemathesis" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q schemathesis; }
if [ -z "$FATHOM" ]; then FATHOM=.build/debug/fathom; [ -x "$FATHOM" ] || swift build --product fathom >&2; fi
WORK=bench/work/schemathesis
mkdir -p "$WORK"
if [ ! -f "$WORK/idx/manifest.json" ]; then
  "$FATHOM" gen --n 2000 --dim 16 --out "$WORK/base.fbin" --attributes "$WORK/attrs.csv" --quiet
  "$FATHOM" build --input "$WORK/base.fbin" --output "$WORK/idx" --attributes "$WORK/attrs.csv" --quiet
fi
# The writable index: a fresh copy of a build without attributes (writes accumulate in its log).
if [ ! -f "$WORK/rw-base/manifest.json" ]; then
  "$FATHOM" build --input "$WORK/base.fbin" --output "$WORK/rw-base" --quiet
fi
rm -rf "$WORK/rw" "$WORK/rw.fathom-write.lock"
cp -r "$WORK/rw-base" "$WORK/rw"
"$FATHOM" serve --index "docs=$WORK/idx" --index "rw=$WORK/rw" --writable rw --max-write-body 1MiB \
  --listen "127.0.0.1:$PORT" --log-level warning 2> "$WORK/serve.log" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
# The path parameter `name` is generated too; most requests then get 404 unknownIndex. The
# config below pins it to the served index for half the story (`rw` for the write
# operations); the other half stays random.
cat > "$WORK/schemathesis.toml" <<TOML
[parameters]
"path.name" = "docs"

[[operations]]
include-operation-id = ["insertVectors", "deleteVectors"]
parameters = { "path.name" = "rw" }
TOML
"$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run docs/openapi.yaml --url "http://127.0.0.1:$PORT" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$EXAMPLES" --max-time "$MAX_TIME" --workers 1 --seed 12 \
  --report junit --report-junit-path "$WORK/junit.xml"
