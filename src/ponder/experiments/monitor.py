"""The sweep's progress bar: training steps over all runs, with runs done, running and failed,
read from the run directories (whatever process trains them)."""

from __future__ import annotations

import threading
from pathlib import Path

from .. import rundir
from .executors import run_status
from .grid import Run


class Monitor:
    """A progress bar over the sweep's training steps, with runs done / running / failed."""

    def __init__(self, runs: list[Run], sweep_dir: Path, enabled: bool) -> None:
        self.runs, self.dir, self.enabled = runs, sweep_dir, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def _poll(self) -> tuple[int, dict[str, int]]:
        steps, counts = 0, {"done": 0, "running": 0, "failed": 0}
        for r in self.runs:
            d = self.dir / r.name
            status = run_status(d, r.config)
            if status in ("done", "diverged"):
                steps += r.config.steps
                counts["done"] += 1
            elif status == "failed":
                steps += r.config.steps
                counts["failed"] += 1
            else:
                steps += rundir.last_logged_step(d)
                counts["running"] += rundir.is_running(d)
        return steps, counts

    def _loop(self) -> None:
        from tqdm.auto import tqdm

        total = sum(r.config.steps for r in self.runs)
        steps, _ = self._poll()
        bar = tqdm(total=total, initial=steps, unit="step", unit_scale=True, dynamic_ncols=True)
        while True:
            stopping = self._stop.wait(2.0)
            new, counts = self._poll()
            bar.update(max(0, new - bar.n))
            bar.set_postfix(
                done=f"{counts['done']}/{len(self.runs)}",
                running=counts["running"],
                failed=counts["failed"],
            )
            if stopping:
                break
        bar.close()
