"""bench: a benchmark and ablation harness for deep-learning training techniques.

Run studies with the ``bench`` command, or from Python (:mod:`bench.api`)::

    import bench
    bench.load_plugins(["my_norms.py"])          # your own techniques, registered like the zoo's
    run = bench.run_study("norm-vs-batch", profile="quick", executor="local")
    df = bench.load_results(study="norm-vs-batch@quick")   # a pandas DataFrame, one row per run

The names are loaded on first use, so ``import bench`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    **dict.fromkeys(("load_plugins", "load_study", "run_study", "run_trial", "write_report", "open_store"), "bench.api"),
    "load_results": "bench.report.frame",
    "TrialConfig": "bench.spec",
    "StudySpec": "bench.spec",
    "Option": "bench.zoo.registry",
    **dict.fromkeys(("NORMS", "CONVS", "ACTIVATIONS", "ARCHS", "OPTIMIZERS", "SCHEDULES", "AUGMENTS", "DATASETS"),
                    "bench.zoo.registry"),
}
__all__ = ["__version__", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'bench' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
