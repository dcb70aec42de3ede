"""How a grid runs its trials: the executor and what each trial reserves."""

from __future__ import annotations

from dataclasses import dataclass, field

# A trial of these studies' models (small CNNs, ResNet-20, a small ViT on 32×32 images)
# keeps a modern GPU far from busy, so by default four share one (Ray places them);
# benchmarks/packing.py measures what packing does on a given machine.
AUTO_GPUS_PER_TRIAL = 0.25


@dataclass
class GridOptions:
    """The executor (``ray``, ``local`` or ``docker``), the resources each trial reserves,
    where trials read data and which torch device they use (None: their defaults), how many
    times a trial whose worker or node is lost is retried from its checkpoint (Ray), and
    whether a finished trial's final weights are kept.

    The ``docker`` executor runs each trial in its own container of ``image``, with
    ``mounts`` (``SRC:DST[:ro|rw]``) besides the store, checkpoint, journal and data
    directories it mounts itself, at most ``memory_per_trial`` of memory (``4g``), on
    ``network`` (None: ``none`` with the embedded store, ``host`` with MongoDB)."""

    executor: str = "ray"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: on Ray, AUTO_GPUS_PER_TRIAL when the cluster has GPUs; else 0
    max_concurrent: int | None = None
    address: str | None = None
    data_dir: str | None = None
    device: str | None = None
    retries: int = 1
    keep_checkpoints: bool = False
    image: str | None = None
    mounts: list[str] = field(default_factory=list)
    memory_per_trial: str | None = None
    network: str | None = None
