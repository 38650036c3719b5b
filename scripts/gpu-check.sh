#!/usr/bin/env bash
# What only a GPU can show, in one run (budget about 8 minutes on one H100 or H200):
#   1. the tests that touch CUDA: task sampling on a CUDA generator, and CUDA-graph training
#      (tests/test_graphs.py: a graphed run logs what the eager run logs, resumes, and the
#      graphed ensemble equals the eager one);
#   2. `ponder bench --device cuda`: single-run and ensemble (K = 1, 16, 64) throughput against
#      the naive reference. Issue targets on one H100: single-run parity Repeat >= 10x and ACT
#      >= 5x the naive reference, ensemble of 64 >= 100x, addition table projected <= 1 hour;
#   3. a short ACT run on the GPU whose metrics must match a CPU run of the same config to
#      about 1e-3 (same data: the generator streams differ by device, so compare shapes of the
#      learning curve, not numbers) and whose summary must not be diverged.
# Results go to $OUT (or ./gpu-check): BENCHMARKS-gpu.md, the run directories, the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
bash scripts/bootstrap.sh
.venv/bin/python -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())' | tee "$out/device.txt"
.venv/bin/python -m pytest -q -rs tests/test_graphs.py tests/test_tasks.py tests/test_ensemble.py 2>&1 | tail -8 | tee "$out/tests.txt"
timeout 420 .venv/bin/ponder bench --device cuda --out "$out/BENCHMARKS-gpu.md" 2>&1 | tee "$out/bench.txt"
for graphs in "" "--no-cuda-graphs"; do  # the same run, graphed and eager: compare elapsed_s
    .venv/bin/ponder train --task parity --model act --tau 0.001 --device cuda --steps 3000 \
        --log-every 500 --no-progress $graphs --out "$out/act-cuda${graphs:+-eager}" \
        | tee -a "$out/train.txt"
done
tail -n 2 "$out"/act-cuda*/metrics.csv | tee -a "$out/train.txt"
