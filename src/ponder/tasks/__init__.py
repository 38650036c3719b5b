"""The tasks of Graves 2016 and Fojo et al. 2018: parity, addition, logic and sort.

``make(name, **options)`` builds one by name with its options checked, e.g.
``make("addition", digits=3)``; each class's constructor defaults are the papers' values.
"""

from __future__ import annotations

import inspect

from ponder.tasks.addition import Addition
from ponder.tasks.base import IGNORE, Task
from ponder.tasks.logic import Logic
from ponder.tasks.parity import Parity
from ponder.tasks.sort import Sort

TASKS: dict[str, type[Task]] = {task.name: task for task in (Parity, Addition, Logic, Sort)}


def make(name: str, **options: object) -> Task:
    """Build the task called ``name`` with keyword ``options``.

    Raises ``ValueError`` with a one-line message for an unknown task, an unknown option, or an
    invalid option value (e.g. ``bits < 1``).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    task = TASKS[name]
    known = list(inspect.signature(task).parameters)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for task {name!r}; "
            f"its options: {', '.join(known)}"
        )
    return task(**options)


__all__ = ["IGNORE", "TASKS", "Addition", "Logic", "Parity", "Sort", "Task", "make"]
