"""gpu-check: every stage's code runs on a CPU (reduced), the files are written, a CUDA stage
says it was skipped without CUDA, and a stage past its limit is killed and said to be."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ponder.experiments import bench, gpucheck

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_trial_of_every_stage_writes_its_numbers(tmp_path):
    out = tmp_path / "gc"
    args = ["--out", str(out), "--device", "cpu", "--reduced", "--in-process"]
    assert gpucheck.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "results.json", "stages.log"]
    stages = {s["stage"]: s for s in results["stages"]}
    assert list(stages) == [s.name for s in gpucheck.STAGES]
    for name, s in stages.items():
        want = "skipped: --reduced" if name in ("pytest", "bench") else "ok"
        assert s["status"].startswith(want) and s["seconds"] >= 0, name
        assert f"| {name} | {s['status']} |" in report
    assert results["versions"]["torch"] == torch.__version__
    assert [r["k"] for r in results["record"]["rows"]] == list(gpucheck.REDUCED.ks)
    graphed = results["graphs"]["rows"]
    assert len(graphed) == len(bench.CASES) * len(gpucheck.REDUCED.ks)
    for row in graphed:
        assert row["graphed_ms_per_step"] > 0 and row["eager_ms_per_step"] > 0, row
        if " act " in f" {row['case']} ":
            assert row["graphed_records"] >= 1 and row["graphed_final_u"] >= 1
    unrolls = [(r["k"], r["forced_u"]) for r in results["unroll"]["rows"]]
    assert len(unrolls) == len(gpucheck.REDUCED.unroll_ks) * (len(gpucheck.REDUCED.unrolls) + 1)
    assert all(r["overflowed"] == 1 for r in results["overflow"]["rows"])
    assert results["addition"]["projected_table2_hours"] > 0
    runs = results["parity"]["rows"]
    assert [r["run"] for r in runs] == ["graphed", "eager"]
    assert runs[0]["final_eval_accuracy"] == pytest.approx(runs[1]["final_eval_accuracy"])
    assert 0 <= results["parity"]["max_logit_difference"] < 1e-4
    assert "## parity" in report and "max_parameter_difference" in report


def test_a_stage_past_its_limit_is_killed_and_said_to_be(tmp_path, monkeypatch):
    monkeypatch.setattr(
        gpucheck, "command", lambda *a: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    stage = gpucheck.Stage("slow", 1.0)
    args = gpucheck.parse_args(["--out", str(tmp_path)])
    rc, seconds = gpucheck.run_stage(stage, args, tmp_path / "part.json", tmp_path / "log")
    assert rc == gpucheck.TIMED_OUT and gpucheck.status(stage, rc).startswith("timed out")
    assert "killed at its limit" in (tmp_path / "log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without CUDA")
def test_the_script_without_cuda_skips_every_cuda_stage(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "gc"), "PYTHON": sys.executable}
    got = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh")], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert got.returncode == 0, got.stderr
    results = json.loads((tmp_path / "gc" / "results.json").read_text())
    for s in results["stages"]:
        if s["stage"] == "versions":
            assert s["status"] == "ok" and s["exit"] == 0
        else:
            assert s["status"] == "skipped: no CUDA" and s["exit"] is None, s
    assert results["versions"]["cuda available"] is False
    assert (tmp_path / "gc" / "report.md").exists()
