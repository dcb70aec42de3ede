"""Running studies: plan the grid (:mod:`.planning`), with a tuned study's second phase
(:mod:`.tuning`); run the trials on an executor, in this process (:mod:`.local`) or on
Ray Tune (:mod:`.ray_executor`); record every event as it happens (:mod:`.recorder`);
:mod:`.run` ties them together; :mod:`.estimate` prices a grid without running it.

The names below are imported on first use: reading a study's tuned trials (the report
does) needs neither torch nor Ray, while running trials needs torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.grid.estimate import describe_plan
    from bench.grid.local import run_local, run_one, run_recorded
    from bench.grid.options import GridOptions
    from bench.grid.planning import GridPlan, plan, plan_tuning, register, validate
    from bench.grid.recorder import HEARTBEAT_EVERY, Progress, Recorder
    from bench.grid.run import EXECUTORS, StudyRun, run_grid, run_ray, run_study
    from bench.grid.tuning import study_trials

_HOMES = {
    "describe_plan": "estimate",
    "run_local": "local", "run_one": "local", "run_recorded": "local",
    "GridOptions": "options",
    "GridPlan": "planning", "plan": "planning", "plan_tuning": "planning", "register": "planning", "validate": "planning",
    "HEARTBEAT_EVERY": "recorder", "Progress": "recorder", "Recorder": "recorder",
    "EXECUTORS": "run", "StudyRun": "run", "run_grid": "run", "run_ray": "run", "run_study": "run",
    "study_trials": "tuning",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """``bench.grid.NAME``: imports the module that defines NAME."""
    if name not in _HOMES:
        raise AttributeError(f"module 'bench.grid' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bench.grid.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
