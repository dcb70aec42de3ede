"""One trial: build what its config names (:mod:`.build`), train it (:mod:`.loop`), log its
steps (:mod:`.steplog`) and measure its stability (:mod:`.spikes`). Knows nothing of Ray
or of the store.

The names below are loaded on first use, so that :mod:`.spikes` (pure numpy and pandas,
which reports use) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    **dict.fromkeys(
        ("activation_factory", "build_augment", "build_model", "build_optimizer", "build_schedule", "conv_factory",
         "freeze_all_but_norms", "norm_factory", "pick_device", "preflight", "seed_everything", "steps_per_epoch"),
        "bench.trial.build",
    ),
    **dict.fromkeys(("TrialResult", "evaluate", "run_trial"), "bench.trial.loop"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'bench.trial' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
