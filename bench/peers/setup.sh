#!/usr/bin/env bash
# Create the peer virtualenvs used by bench/compare.py. Idempotent and quiet when there is nothing to do.
#   bench/.venv-diskann : diskannpy 0.7.0 (needs numpy<2)
#   bench/.venv-faiss   : faiss-cpu 1.15.1, numpy, matplotlib (also runs bench/compare.py)
# Both folders are git-ignored (/bench/.venv*/). PYTHON=... selects the interpreter (default python3).
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"

make_venv() {  # make_venv DIR IMPORT_CHECK PACKAGES...
    local dir="$1" check="$2"; shift 2
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "$check" >/dev/null 2>&1; then
        return 0
    fi
    echo "setup.sh: creating $dir ($*)" >&2
    rm -rf "$dir"
    "$PY" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2
    "$dir/bin/python" -c "$check"
}

make_venv "$BENCH/.venv-diskann" \
    'import diskannpy, numpy; assert numpy.__version__.split(".")[0] == "1"; from importlib.metadata import version; assert version("diskannpy") == "0.7.0"' \
    "diskannpy==0.7.0" "numpy<2"
make_venv "$BENCH/.venv-faiss" \
    'import faiss, numpy, matplotlib; assert faiss.__version__ == "1.15.1"' \
    "faiss-cpu==1.15.1" numpy matplotlib
