#!/usr/bin/env bash
# Downloads a public billion-scale set from big-ann-benchmarks where a network exists.
# Usage: datasets/fetch-bigann.sh bigann|deep1b|msspacev1b|text2image1b|msturing DIR [--first N]
set -euo pipefail
NAME=$1; DIR=$2; FIRST=${4:-}
BASE_URL=https://dl.fbaipublicfiles.com/billion-scale-ann-benchmarks
case $NAME in
  bigann)      FILES="bigann/base.1B.u8bin bigann/query.public.10K.u8bin bigann/GT.public.1B.ibin" ;;
  deep1b)      FILES="deep1b/base.1B.fbin deep1b/query.public.10K.fbin deep1b/groundtruth.public.10K.ibin" ;;
  msspacev1b)  FILES="spacev1b/base.1B.i8bin spacev1b/query.i8bin spacev1b/public_query_gt100.bin" ;;
  text2image1b) FILES="text2image1b/base.1B.fbin text2image1b/query.public.100K.fbin text2image1b/gt100-public.ibin" ;;
  msturing)    FILES="MSFT-TURING-ANNS/base1b.fbin MSFT-TURING-ANNS/testQuery10K.fbin MSFT-TURING-ANNS/testQuery10K.fbin.gt" ;;
  *) echo "unknown set '$NAME' (bigann, deep1b, msspacev1b, text2image1b, msturing)" >&2; exit 2 ;;
esac
mkdir -p "$DIR"
if ! curl -sfI --max-time 10 "$BASE_URL/" >/dev/null 2>&1; then
  echo "fetch-bigann: $BASE_URL is not reachable from this machine (no network beyond package registries)." >&2
  echo "Use datasets/synthetic.sh for scale tests here." >&2
  exit 3
fi
for f in $FILES; do
  out="$DIR/$(basename "$f")"
  if [ -n "$FIRST" ] && [[ "$f" == *base* ]]; then
    # Only the first N vectors: fetch the byte range and rewrite n in the header.
    d=$(curl -sf -r 4-7 "$BASE_URL/$f" | od -An -tu4 | tr -d ' ')
    case $f in *.u8bin|*.i8bin) sz=1 ;; *) sz=4 ;; esac
    curl -sf -r 0-$((8 + FIRST * d * sz - 1)) "$BASE_URL/$f" -o "$out"
    python3 -c "import struct,sys; f=open('$out','r+b'); f.write(struct.pack('<I', $FIRST))"
  else
    curl -f -C - "$BASE_URL/$f" -o "$out"
  fi
done
