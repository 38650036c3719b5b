#!/usr/bin/env bash
# What only a GPU can show, in one command of about 6 minutes (its stages' limits add up to
# 400 s; give the command 8 to 10 minutes). The stages, what each measures and the files are
# described in src/ponder/gpucheck.py; each stage runs in a process of its own under its limit,
# and its exit status and seconds are recorded, so a stage that fails or hangs costs only itself.
# Results go to $OUT (default ./gpu-check): report.md (versions, each stage's status, every
# table), results.json (the same numbers), pytest.log (the CUDA tests' full log), stages.log
# (what the stages printed) and BENCHMARKS-cuda.md (ponder bench --quick on the GPU).
#
# It installs nothing: it runs this source tree with a Python that already has PyTorch (a CUDA
# build) and the dependencies: $PYTHON, default .venv/bin/python if there is one, else python3.
# On a machine whose python3 is itself a venv with CUDA PyTorch (a GPU image), that is simply
#     PYTHON=python3 bash scripts/gpu-check.sh
# Arguments go to `python -m ponder.experiments.gpucheck`: `--device cpu --reduced` is a CPU
# trial of every stage's code; without CUDA and without them, every CUDA stage reports
# "skipped: no CUDA".
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ! "$py" -c 'import torch, yaml, scipy, tqdm, pytest, torch.utils.tensorboard' 2>/dev/null; then
    echo "gpu-check: $py cannot import torch, yaml, scipy, tqdm, pytest and tensorboard; set PYTHON to a Python that can" >&2
    exit 2
fi
exec "$py" -m ponder.experiments.gpucheck --out "${OUT:-gpu-check}" "$@"
