"""How a grid runs its trials: the executor and what each trial reserves."""

from __future__ import annotations

from dataclasses import dataclass

# A trial of these studies' models (small CNNs, ResNet-20, a small ViT on 32×32 images)
# keeps a modern GPU far from busy, so by default four share one (Ray places them);
# benchmarks/packing.py measures what packing does on a given machine.
AUTO_GPUS_PER_TRIAL = 0.25


@dataclass
class GridOptions:
    """The executor (``ray`` or ``local``), the resources each trial reserves, where trials
    read data and which torch device they use (None: their defaults), how many times a
    trial whose worker or node is lost is retried from its checkpoint (Ray), and whether
    a finished trial's final weights are kept."""

    executor: str = "ray"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: AUTO_GPUS_PER_TRIAL when the Ray cluster has GPUs, else 0
    max_concurrent: int | None = None
    address: str | None = None
    data_dir: str | None = None
    device: str | None = None
    retries: int = 1
    keep_checkpoints: bool = False
