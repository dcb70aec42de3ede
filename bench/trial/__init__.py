"""One trial: build what its config names (:mod:`.build`), train it (:mod:`.loop`), log its
steps (:mod:`.steplog`) and measure its stability (:mod:`.spikes`). Knows nothing of Ray
or of the store."""

from bench.trial.build import (
    build_augment,
    build_model,
    build_optimizer,
    build_schedule,
    conv_factory,
    freeze_all_but_norms,
    norm_factory,
    pick_device,
    preflight,
    seed_everything,
    steps_per_epoch,
)
from bench.trial.loop import TrialResult, evaluate, run_trial

__all__ = [
    "TrialResult", "build_augment", "build_model", "build_optimizer", "build_schedule", "conv_factory", "evaluate",
    "freeze_all_but_norms", "norm_factory", "pick_device", "preflight", "run_trial", "seed_everything",
    "steps_per_epoch",
]
