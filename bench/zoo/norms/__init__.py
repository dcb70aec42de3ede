"""Normalization layers, by name (the ``norm`` choice).

Every entry builds a layer for a given number of channels, so an architecture takes
"the norm" as a :class:`NormFactory` and any norm fits any architecture (the timm habit:
channels first, options as keywords). ``dims=2`` builds a layer for conv features
(N, C, H, W); ``dims=1`` for vector features (N, C), as in an MLP.

Entries live by family: :mod:`.basic` (none, BatchNorm, LayerNorm, InstanceNorm,
GroupNorm), :mod:`.batch` (Ghost, frozen and renormalized BatchNorm, Batch-Channel
Norm), :mod:`.mimic` (MimicNorm), :mod:`.frn` (Filter Response Normalization). The
options several families share are declared here once.

Tags say what a norm guarantees to the rest of the harness: ``batch`` (its statistics are
the batch's), ``model`` (a model-level technique, applied when the model is built), and
``unit-invariant``: in training it standardizes each channel with that channel's own mean
and variance, so the layer before it computes the same function when one unit's weights
are scaled (bn, bn-ghost, bn-example-weighted, in; the Grassmann optimizers rely on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.errors import ConfigError
from bench.zoo.registry import NORMS, Option

NORM_EPS = Option("norm_eps", float, 1e-5, "ε added to the variance before the square root", gt=0)
NORM_MOMENTUM = Option(
    "norm_momentum", float, 0.1, "running-statistics momentum α: running ← (1 − α)·running + α·batch", ge=0, le=1
)
NORM_AFFINE = Option("norm_affine", bool, True, "learn a per-channel γ, β after normalizing")
NORM_GROUPS = Option("norm_groups", int, 8, "number of groups G (each must divide every layer's channels)", ge=1)
NORM_GROUP_SIZE = Option(
    "norm_group_size", int, None, "channels per group C/G; overrides norm_groups", ge=1, nullable=True
)
BATCH_NORM_OPTIONS = (NORM_EPS, NORM_MOMENTUM, NORM_AFFINE)
GROUP_OPTIONS = (NORM_GROUPS, NORM_GROUP_SIZE)


@dataclass(frozen=True)
class NormFactory:
    """A norm chosen by name with its declared options; call it with a channel count.

    Every module built is marked ``is_bench_norm = True`` (see :func:`is_norm_module`), so
    training can find the norm layers (e.g. to train only their γ and β).
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        entry = NORMS.entry(self.name)
        defaults = {o.name: o.default for o in entry.options}
        unknown = sorted(set(self.options) - set(defaults))
        if unknown:
            raise ConfigError(f"The norm {self.name!r} takes no option {unknown[0]!r}; it takes: "
                              f"{', '.join(defaults) or 'none'}.")
        object.__setattr__(self, "options", {**defaults, **self.options})

    @classmethod
    def of(cls, name: str, **options: Any) -> NormFactory:
        """The norm ``name`` with those of ``options`` it declares (config names), as a
        trial config would give them: an option the entry does not read is left out. A name
        that no norm declares is refused (a misspelt option would otherwise be dropped)."""
        known = {o for entry in NORMS.entries() for o in entry.option_names}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"No norm takes an option {unknown[0]!r}; the norm options are: {', '.join(sorted(known))}.")
        declared = set(NORMS.entry(name).option_names)
        return cls(name, {k: v for k, v in options.items() if k in declared})

    def __call__(self, num_channels: int, dims: int = 2) -> Any:
        module = NORMS.get(self.name)(num_channels, dims, **self.options)
        module.is_bench_norm = True
        module.bench_norm = self.name  # the entry, for what its tags say (e.g. unit-invariant)
        return module


def is_norm_module(module: Any) -> bool:
    return bool(getattr(module, "is_bench_norm", False))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def groups_for(num_channels: int, norm_groups: int, norm_group_size: int | None) -> int:
    """The number of groups for a layer of ``num_channels`` channels, checked."""
    if norm_group_size is not None:
        if norm_group_size < 1 or num_channels % norm_group_size:
            raise ConfigError(
                f"GroupNorm with norm_group_size={norm_group_size} channels per group cannot split a layer "
                f"of {num_channels} channels: the group size must divide every layer's channel count. "
                f"Valid values for {num_channels} channels: {', '.join(map(str, divisors(num_channels)))}."
            )
        return num_channels // norm_group_size
    if norm_groups < 1 or num_channels % norm_groups:
        raise ConfigError(
            f"GroupNorm with norm_groups={norm_groups} cannot split a layer of {num_channels} "
            f"channels into equal groups: the number of groups must divide every layer's channel count. "
            f"Valid values for {num_channels} channels: {', '.join(map(str, divisors(num_channels)))} "
            "(change norm_groups or the architecture's width, or set norm_group_size)."
        )
    return norm_groups
