"""bench: a benchmark and ablation harness for deep-learning training techniques.

Run studies with the ``bench`` command; read results in Python with
:func:`load_results`, which returns a pandas DataFrame (one row per run).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_results"]


def load_results(study: str | None = None, where: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Runs as a pandas DataFrame; see :func:`bench.report.frame.load_results`."""
    from bench.report.frame import load_results as _load

    return _load(study, where, **kwargs)
