"""Nothing lost, the same answer every time: one writer per directory, workers that die with
their sweep, no silent truncation of metrics.csv, one-line errors, and sweeps whose numbers do
not depend on the machine's load."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ponder import rundir
from ponder.cli import main
from ponder.experiments import plan, sweep
from ponder.training import train

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


# ------------------------------------------------------------------ one writer per directory


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process that takes ``run_dir``'s lock and keeps it (until killed)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from ponder import rundir
            rundir.Lock(Path({str(run_dir)!r})).acquire()
            print("locked", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip


def test_a_second_writer_is_refused_naming_the_first(tiny, tmp_path):
    run_dir = tmp_path / "run"
    with rundir.Lock(run_dir, "train"):
        assert rundir.writer_pid(run_dir) == os.getpid()
        child = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                import sys
                from pathlib import Path
                from ponder import rundir
                try:
                    rundir.Lock(Path({str(run_dir)!r})).acquire()
                except rundir.Busy as e:
                    print(e)
                    sys.exit(7)
            """)],
            capture_output=True, text=True, env=ENV, timeout=60,
        )  # fmt: skip
        assert child.returncode == 7, child.stderr
        assert f"process {os.getpid()}" in child.stdout
    assert rundir.writer_pid(run_dir) is None  # released


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    child = _holder(run_dir)
    assert child.stdout.readline().strip() == "locked"
    assert rundir.writer_pid(run_dir) == child.pid
    with pytest.raises(rundir.Busy, match=str(child.pid)):
        rundir.Lock(run_dir).acquire()
    child.kill()
    child.wait()
    with rundir.Lock(run_dir):  # the kernel dropped the dead holder's lock
        assert rundir.writer_pid(run_dir) == os.getpid()


def test_train_on_a_directory_another_process_writes_exits_2_and_touches_nothing(
    tiny, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    train.run(tiny(steps=20), run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != rundir.LOCK}
    child = _holder(run_dir)
    try:
        assert child.stdout.readline().strip() == "locked"
        code = main(["train", "--config", str(run_dir / "config.yaml"), "--steps", "40",
                     "--out", str(run_dir)])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and str(child.pid) in err
    finally:
        child.kill()
        child.wait()
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != rundir.LOCK}
    assert after == before


SWEEP_GRID = """
name: two
base: {{task: parity, task_options: {{bits: 4}}, hidden: 8, batch_size: 16, log_every: 10,
       eval_size: 32, device: cpu, progress: false}}
seeds: 2
budget: {budget}
stop_when_solved: false
axes:
  - {{model: act, tau: [0.01]}}
  - {{model: repeat, rho: [2]}}
"""


def test_two_sweeps_on_one_directory_the_second_exits_at_once(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(SWEEP_GRID.format(budget=600))
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "ponder.cli", "sweep", str(grid), "--jobs", "1", "--out",
           str(out)]  # fmt: skip
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    _wait_for(lambda: rundir.writer_pid(out) == first.pid)
    second = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1 and str(first.pid) in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()[-2000:]
    for r in sweep.load_grid(grid).runs:
        assert rundir.read_summary(out / r.name)["step"] == 600
        assert [row["step"] for row in rundir.read_metrics(out / r.name)] == list(
            range(10, 610, 10)
        )


def test_a_killed_sweeps_workers_end_within_seconds(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(SWEEP_GRID.format(budget=100_000))
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "ponder.cli", "sweep", str(grid), "--jobs", "2", "--batch",
           "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    run_dirs = [out / r.name for r in sweep.load_grid(grid).runs]
    _wait_for(lambda: sum(rundir.writer_pid(d) is not None for d in run_dirs) == 2)
    workers = {rundir.writer_pid(d) for d in run_dirs} - {None}
    proc.kill()  # SIGKILL: the sweep has no chance to end its workers itself
    proc.wait()

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:  # a zombie (state Z) has ended
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    _wait_for(lambda: all(gone(pid) for pid in workers), timeout=10)
    # and the same sweep resumes their runs at once: nobody holds them
    assert all(rundir.writer_pid(d) is None for d in run_dirs)


# ------------------------------------------------------------------ no silent truncation


def _garbage_in_the_middle(run_dir: Path) -> bytes:
    path = run_dir / rundir.METRICS
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = "12,garbage,,\n"
    path.write_text("".join(lines))
    return path.read_bytes()


def test_a_garbage_row_is_an_error_naming_file_and_line(tiny, tmp_path):
    run_dir = tmp_path / "run"
    train.run(tiny(steps=60), run_dir)
    _garbage_in_the_middle(run_dir)
    with pytest.raises(rundir.DamagedRun, match=r"metrics.csv: line 4 "):
        rundir.read_metrics(run_dir)
    # a torn last line (no newline: a kill while it was written) is still ignored
    path = run_dir / rundir.METRICS
    train.run(tiny(steps=60), tmp_path / "b")
    torn = tmp_path / "b" / rundir.METRICS
    whole = rundir.read_metrics(tmp_path / "b")
    torn.write_bytes(torn.read_bytes() + b"70,0.5,0.4")
    assert rundir.read_metrics(tmp_path / "b") == whole
    assert path.exists()


def test_train_sweep_and_report_say_so_and_leave_the_file_unchanged(
    tiny, tmp_path, capsys, tiny_grid
):
    grid = tmp_path / "g.yaml"
    grid.write_text(tiny_grid)
    out = tmp_path / "s"
    sweep.sweep(sweep.load_grid(grid, seeds=1, budget=40), out, sweep.InlineExecutor(),
                progress=False)  # fmt: skip
    damaged = out / "rnn-seed0"
    data = _garbage_in_the_middle(damaged)
    capsys.readouterr()
    # train (a longer budget: it would resume) refuses in one line
    code = main(["train", "--config", str(damaged / "config.yaml"), "--steps", "60",
                 "--out", str(damaged)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "line 4" in err
    assert (damaged / rundir.METRICS).read_bytes() == data
    # a sweep says so in one line, trains the others and ends unfinished
    result = sweep.sweep(sweep.load_grid(grid, seeds=1, budget=60), out, sweep.InlineExecutor(),
                         progress=False)  # fmt: skip
    said = [ln for ln in capsys.readouterr().out.splitlines() if "damaged" in ln]
    assert len(said) == 1 and "rnn-seed0" in said[0] and "line 4" in said[0]
    assert result.statuses["rnn-seed0"] == "damaged" and not result.all_finished
    assert all(s == "done" for n, s in result.statuses.items() if n != "rnn-seed0")
    assert (damaged / rundir.METRICS).read_bytes() == data
    # the report lists it as damaged, in one line on stderr
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rnn-seed0" in err and "damaged" in err
    assert "rnn-seed0: damaged" in (out / "report.md").read_text()
    assert (damaged / rundir.METRICS).read_bytes() == data


# ------------------------------------------------------------------ one-line errors


@pytest.mark.parametrize(
    "files, flags, words",
    [
        ({"c.yaml": b"task: \xff\xfe\n"}, ["--config", "{c.yaml}"], "UTF-8"),
        ({"c.yaml": b"task: parity\ntask_options: [1, 2]\n"}, ["--config", "{c.yaml}"],
         "task_options"),
        ({"afile": b"x"}, ["--out", "{afile}"], "is a file"),
        ({"afile": b"x"}, ["--out", "{afile}/run"], "is a file"),
        ({}, ["--device", "cuda"], "CUDA"),
        ({}, ["--hidden", "200000"], "GiB"),
        ({}, ["--model", "pondernet", "--lambda-p", "1"], "lambda_p"),
    ],
)  # fmt: skip
def test_one_line_and_no_run_directory(tmp_path, capsys, files, flags, words, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name in files:
        flags = [f.replace("{" + name + "}", str(tmp_path / name)) for f in flags]
    out = ["--out", str(tmp_path / "run")] if "--out" not in flags else []
    assert main(["train", "--steps", "5", *out, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "run").exists()


def test_a_sweep_asking_for_cuda_without_it_exits_2_before_any_worker(
    tmp_path, capsys, monkeypatch, tiny_grid
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    grid = tmp_path / "g.yaml"
    grid.write_text(tiny_grid)
    out = tmp_path / "s"
    assert main(["sweep", str(grid), "--device", "cuda", "--out", str(out)]) == 2
    assert "CUDA" in capsys.readouterr().err
    assert not out.exists()


def test_a_full_disk_is_one_line_with_its_own_status(tiny, tmp_path, capsys, monkeypatch):
    def full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(rundir, "atomic_write", full)
    code = main(["train", "--steps", "5", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 4 and err.count("\n") == 1 and "No space left" in err


def test_a_checkpoint_of_another_network_is_refused_before_metrics_are_cut(tiny, tmp_path):
    run_dir = tmp_path / "run"
    train.run(tiny(steps=40), run_dir)
    other = tmp_path / "other"
    train.run(tiny(steps=40, hidden=12), other)
    (run_dir / rundir.CHECKPOINT).write_bytes((other / rundir.CHECKPOINT).read_bytes())
    (run_dir / rundir.SUMMARY).unlink()  # so that it would resume
    metrics = (run_dir / rundir.METRICS).read_bytes()
    with pytest.raises(rundir.RunError, match="another network"):
        train.run(tiny(steps=60), run_dir)
    assert (run_dir / rundir.METRICS).read_bytes() == metrics


def test_missing_and_corrupt_checkpoints_get_one_message(tiny, tmp_path):
    run_dir = tmp_path / "run"
    train.run(tiny(steps=60), run_dir)  # checkpoints every 20 steps
    (run_dir / rundir.SUMMARY).unlink()
    (run_dir / rundir.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(rundir.RunError) as corrupt:
        train.run(tiny(steps=80), run_dir)
    (run_dir / rundir.CHECKPOINT).unlink()
    with pytest.raises(rundir.RunError) as missing:
        train.run(tiny(steps=80), run_dir)
    for e in (corrupt, missing):
        assert "move" in str(e.value) and "start it again" in str(e.value)
        assert "delete" not in str(e.value)


def test_a_corrupt_summary_is_a_damaged_run(tiny, tmp_path):
    run_dir = tmp_path / "run"
    train.run(tiny(steps=20), run_dir)
    (run_dir / rundir.SUMMARY).write_text("[1, 2]")
    assert rundir.status(run_dir, tiny(steps=20)) == "damaged"
    with pytest.raises(rundir.DamagedRun):
        rundir.read_summary(run_dir)


# ------------------------------------------------------------------ files


def test_stale_tmp_files_go_and_files_follow_the_umask(tiny, tmp_path):
    run_dir = tmp_path / "run"
    train.run(tiny(steps=20), run_dir)
    stale = run_dir / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half")
    old = os.umask(0o027)
    try:
        train.run(tiny(steps=40), run_dir)
    finally:
        os.umask(old)
    assert not stale.exists()
    for name in (rundir.SUMMARY, rundir.CHECKPOINT, rundir.CONFIG):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o640, name


# ------------------------------------------------------------------ independent of timing

SITECUSTOMIZE = """
import os, sys, time
from pathlib import Path
# The first worker of the sweep sleeps before it trains: another start, another load.
WORKER = "ponder.experiments.executors"
if WORKER in " ".join(sys.argv) or (len(sys.argv) > 1 and sys.argv[-1].endswith(".json")):
    flag = Path(os.environ["PONDER_TEST_DELAY_FLAG"])
    try:
        flag.touch(exist_ok=False)
        time.sleep(3.0)
    except FileExistsError:
        pass
"""


def _numbers(out: Path) -> dict[str, list[dict]]:
    return {
        d.name: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rundir.read_metrics(d)]
        for d in sorted(out.iterdir())
        if rundir.is_run(d)
    }


def test_the_same_sweep_gives_the_same_numbers_under_another_load(tmp_path, monkeypatch):
    """Three ACT seeds (an ensemble the plan spreads over the two workers) and a short Repeat
    job: once as it comes, once with the first worker held back for seconds."""
    grid_text = SWEEP_GRID.format(budget=200).replace("seeds: 2", "seeds: 3")
    grid = sweep.load_grid(_write(tmp_path / "g.yaml", grid_text))
    plain = tmp_path / "plain"
    sweep.sweep(grid, plain, sweep.LocalExecutor(jobs=2), progress=False)
    hooks = tmp_path / "hooks"
    _write(hooks / "sitecustomize.py", SITECUSTOMIZE)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("PONDER_TEST_DELAY_FLAG", str(tmp_path / "delayed"))
    delayed = tmp_path / "delayed-sweep"
    sweep.sweep(grid, delayed, sweep.LocalExecutor(jobs=2), progress=False)
    assert (tmp_path / "delayed").exists()  # the delay did happen
    a, b = _numbers(plain), _numbers(delayed)
    assert len(a) == 6 and a == b


def test_the_plan_spreads_an_ensemble_over_idle_workers(tiny, tmp_path):
    runs = [(tiny(seed=s), tmp_path / f"a{s}") for s in range(5)]
    short = [(tiny(seed=9, model="rnn"), tmp_path / "b")]
    jobs = sweep.spread([runs, short], workers=3)
    # 3 workers: 3 + 2 runs would end with the 3; 2 + 2 + 1 ends after 2 runs, and splitting
    # on into single runs would end no sooner, so it stops there.
    assert sorted(len(j) for j in jobs) == [1, 1, 2, 2]
    assert sorted(str(d) for j in jobs for _, d in j) == sorted(str(d) for _, d in runs + short)
    assert sweep.spread([runs, short], workers=3) == jobs  # a function of the plan alone
    assert sweep.spread([runs], workers=1) == [runs]
    assert len(sweep.spread([runs], workers=9)) == 5  # no further than one run a job


def test_the_plan_splits_an_ensemble_that_would_outlast_every_other_job(tiny, tmp_path):
    """Addition's quick grid: one ensemble of 12 ACT runs (cap M = 20) and five small jobs on
    2 workers. There are more jobs than workers, but the ACT ensemble alone would take longer
    than all the rest: it is split 6 + 6, and no further (3 + 3 would not end sooner)."""
    act = [(tiny(seed=s, max_ponder=20, steps=100), tmp_path / f"act{s}") for s in range(12)]

    def three(model: str, **kw) -> list:
        return [(tiny(seed=s, model=model, steps=100, **kw), tmp_path / f"{model}{kw}{s}")
                for s in range(3)]  # fmt: skip

    small = [three("repeat", rho=rho) for rho in (2, 3, 5, 8)] + [three("rnn")]
    jobs = sweep.spread([act, *small], workers=2)
    assert sorted(len(j) for j in jobs) == [3, 3, 3, 3, 3, 6, 6]
    assert {len(j) for j in jobs if j[0][0].model == "act"} == {6}
    assert plan.makespan([plan.job_cost(j) for j in jobs], 2) < plan.job_cost(act)
    # Equal costs that already fill both workers stay as they are.
    assert sweep.spread([act[:6], act[6:]], workers=2) == [act[:6], act[6:]]
    # Four workers: splitting one of two equal ensembles gains nothing, splitting both halves
    # the sweep, so both are split.
    assert sorted(len(j) for j in sweep.spread([act[:6], act[6:]], workers=4)) == [3, 3, 3, 3]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_worker_leaves_a_run_another_process_writes_as_it_is(tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train.run(tiny(steps=20), run_dir)
    (run_dir / rundir.RUNNING).touch()  # the other writer's marker
    child = _holder(run_dir)
    try:
        assert child.stdout.readline().strip() == "locked"
        sweep.execute_job([(tiny(steps=40), run_dir)])
    finally:
        child.kill()
        child.wait()
    assert str(child.pid) in capsys.readouterr().err
    assert not (run_dir / rundir.ERROR).exists() and (run_dir / rundir.RUNNING).exists()
    assert rundir.read_summary(run_dir)["step"] == 20
