#!/usr/bin/env bash
# What only a GPU can show, in one run (about 7 minutes on one H100 or H200; run it with a
# 9-10 minute limit):
#   1. the tests that touch CUDA: task sampling on a CUDA generator, and CUDA-graph training
#      (tests/test_graphs.py: a graphed run logs what the eager run logs and resumes, for ACT,
#      Repeat and PonderNet; the graphed ensemble equals the eager one);
#   2. `ponder bench --quick --device cuda`, then the full bench as far as the time allows:
#      single-run and ensemble (K = 1, 16, 64; PonderNet K = 1, 16) throughput against the
#      naive reference. Issue
#      targets on one H100: single-run parity Repeat >= 10x and ACT >= 5x the naive reference,
#      ensemble of 64 >= 100x, the addition table projected at <= 1 hour; and parity ACT
#      ensembles of 16 by how their members ponder (the graphed path keeps a fixed unroll over
#      every run, so there one slow member still sets the step's cost: the table shows how much);
#   3. the same short ACT run graphed and eager (--no-cuda-graphs): both must learn alike, and
#      elapsed_s in their metrics.csv shows what the graphs buy end to end.
# Results go to $OUT (or ./gpu-check): the BENCHMARKS files and the logs (7 files).
# It installs nothing: it runs the source tree with a Python that has a CUDA PyTorch and the
# dependencies (PYTHON, default .venv/bin/python if there is one, else python3), so it also
# works on a machine without a network.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
runs=$(mktemp -d)  # run directories stay here: only the summaries go to $out
"$py" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())' | tee "$out/device.txt" \
    || exit 1
timeout 120 "$py" -m pytest -q -rs tests/test_graphs.py tests/test_tasks.py \
    tests/test_ensemble.py 2>&1 | tail -15 | tee "$out/tests.txt"
timeout 150 "$py" -m ponder.cli bench --quick --device cuda --out "$out/BENCHMARKS-gpu-quick.md" 2>&1 \
    | tee "$out/bench-quick.txt"
for graphs in "" "--no-cuda-graphs"; do
    timeout 60 "$py" -m ponder.cli train --task parity --model act --tau 0.001 --device cuda \
        --steps 3000 --log-every 500 --no-progress $graphs --out "$runs/act${graphs:+-eager}" \
        2>&1 | tee -a "$out/train.txt"
done
tail -n 3 "$runs"/act*/metrics.csv | tee -a "$out/train.txt"
timeout 200 "$py" -m ponder.cli bench --device cuda --out "$out/BENCHMARKS-gpu.md" 2>&1 \
    | tee "$out/bench.txt"
