"""How a grid runs its trials: the executor and what each trial reserves."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GridOptions:
    """The executor (``ray`` or ``local``), the resources each trial reserves, where trials
    read data and which torch device they use (None: their defaults), how many times a
    trial whose worker or node is lost is retried from its checkpoint (Ray), and whether
    a finished trial's final weights are kept."""

    executor: str = "ray"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    address: str | None = None
    data_dir: str | None = None
    device: str | None = None
    retries: int = 1
    keep_checkpoints: bool = False
