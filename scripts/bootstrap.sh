#!/usr/bin/env bash
# Create .venv beside this repository and install ponder into it (editable, with the dev extras).
# PyTorch is pinned before anything else asks for it: an unpinned `torch` would pull a multi-GB CUDA
# build, so we take PONDER_TORCH (default torch==2.13.0, a CPU build on our dev machines) unless the
# venv already sees torch >= 2.11. The pip extras installed are PONDER_EXTRAS (default "dev,ray").
#
# Where the base Python (PYTHON, default python3.11, else python3) already has PyTorch >= 2.11 (a
# GPU image with its CUDA build), the venv uses that torch instead of installing another. Such a
# Python may itself be a venv (sys.prefix != sys.base_prefix): a venv made from it with
# --system-site-packages sees the *base* interpreter's packages, not this venv's, where torch is.
# Then .venv gets a .pth file that adds the outer venv's site-packages after its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
has_torch='import torch, sys; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 11))'
# The outer venv's site-packages, one a line, when $PY is a venv (nothing otherwise).
outer_site='import site, sys; print("\n".join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "")'
base_torch=false
"$PY" -c "$has_torch" 2>/dev/null && base_torch=true
if [ ! -x .venv/bin/python ]; then
    if $base_torch; then
        "$PY" -m venv --system-site-packages .venv
        outer=$("$PY" -c "$outer_site")
        if [ -n "$outer" ]; then
            site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
            printf '%s\n' "$outer" > "$site/_ponder_outer_venv.pth"
            echo "bootstrap: $PY is a venv; .venv sees its packages (and its torch) through $site/_ponder_outer_venv.pth"
        fi
    else
        "$PY" -m venv .venv
    fi
fi
if ! .venv/bin/python -c "$has_torch" 2>/dev/null; then
    if $base_torch; then
        echo "bootstrap: $PY has torch >= 2.11 but .venv does not see it (.venv was made before); remove .venv and run this again, or run ponder with PYTHONPATH=src $PY -m ponder.cli" >&2
        exit 2
    fi
    .venv/bin/pip install --quiet --disable-pip-version-check "${PONDER_TORCH:-torch==2.13.0}"
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[${PONDER_EXTRAS:-dev,ray}]"
