#!/usr/bin/env bash
# The one-shot GPU check: bertline on one NVIDIA GPU (an H200 in mind) in under 8 minutes.
#
#   bash bench/gpu_bundle.sh            # here, beforehand: wheels + shards into build/gpu_bundle (≈ 20 MB)
#   OUT=/some/dir bash bench/gpu_check.sh            # on the GPU machine (needs torch, triton, numpy; no registry)
#   OUT=/tmp/x bash bench/gpu_check.sh --dry-run      # anywhere with the project's venv: CPU, tiny model
#   … bench/gpu_check.sh [--dry-run] --compile        # also the base and large runs under torch.compile
#
# On the GPU machine it installs the bundle's wheels (deepspeed built without ops, pydantic, PyYAML, …) into
# $OUT/../site (pip --no-index; unzipped if pip is absent), then runs bench/gpu_check.py, which writes
# $OUT/gpu_check.json and $OUT/logs/. The device tool: carry build/gpu_bundle, timeout_s 600.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the figures}
BUNDLE=${BUNDLE:-build/gpu_bundle}
mkdir -p "$OUT"

if [ "${1:-}" = "--dry-run" ]; then
    PYTHON=${PYTHON:-.venv/bin/python}
    SHARDS="$OUT/work/shards"
    if [ -d "$BUNDLE/shards" ]; then SHARDS="$BUNDLE/shards"
    elif [ ! -f "$SHARDS/COMPLETED" ]; then
        "$PYTHON" -m pipeline --config configs/pipeline/demo.yaml --output "$SHARDS" --overwrite >"$OUT/prepare.log" 2>&1
    fi
    shift
    exec "$PYTHON" bench/gpu_check.py --out "$OUT" --shards "$SHARDS" --dry-run "$@"
fi

PYTHON=${PYTHON:-python3}
[ -d "$BUNDLE/wheels" ] || { echo "gpu_check.sh: no $BUNDLE/wheels; run bash bench/gpu_bundle.sh first and carry $BUNDLE" >&2; exit 2; }
SITE=$(mktemp -d /tmp/bertline-site.XXXXXX)
echo "gpu_check.sh: $($PYTHON --version), installing the bundle into $SITE"
if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$SITE" $("$PYTHON" bench/gpu_bundle_select.py "$BUNDLE/wheels")
else
    for wheel in $("$PYTHON" bench/gpu_bundle_select.py "$BUNDLE/wheels"); do
        "$PYTHON" -m zipfile -e "$wheel" "$SITE"
    done
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PYTHON" bench/gpu_check.py --out "$OUT" --shards "$BUNDLE/shards" "$@"
