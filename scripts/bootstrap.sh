#!/usr/bin/env bash
# Create .venv beside this repository and install ponder into it (editable, with the dev extras).
# PyTorch is pinned before anything else asks for it: an unpinned `torch` would pull a multi-GB CUDA
# build, so we take PONDER_TORCH (default torch==2.13.0, a CPU build on our dev machines) unless the
# venv already has torch >= 2.11. The pip extras installed are PONDER_EXTRAS (default "dev,ray").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    # Where the base Python already has PyTorch >= 2.11 (a GPU image with its CUDA build), the
    # venv sees it instead of installing another.
    if "$PY" -c 'import torch, sys; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 11))' 2>/dev/null; then
        "$PY" -m venv --system-site-packages .venv
    else
        "$PY" -m venv .venv
    fi
fi
if ! .venv/bin/python -c 'import torch, sys; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 11))' 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check "${PONDER_TORCH:-torch==2.13.0}"
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[${PONDER_EXTRAS:-dev,ray}]"
