"""Architectures, by name.

Every builder has the same keyword signature, so a study can swap the architecture
as easily as the norm::

    build(*, in_channels, num_classes, image_size, norm: NormFactory, conv: ConvFactory,
          activation: ActivationFactory, width, depth) -> nn.Module

``norm`` is a :class:`bench.zoo.norms.NormFactory`: the architecture calls
``norm(channels)`` for conv features and ``norm(features, dims=1)`` for vectors, so any
registered norm fits any architecture. ``conv`` is a :class:`bench.zoo.convs.ConvFactory`:
every conv and linear layer is built through ``conv.conv(...)`` / ``conv.linear(...)``, so
any weight reparametrization (standardization, weight norm, ...) fits any architecture.
``activation`` is a :class:`bench.zoo.activations.ActivationFactory`, called like the norm
(``activation(channels)``, ``activation(features, dims=1)`` on (N, C) vectors) for every
activation between the layers, so any registered activation fits any architecture (a
spatial one, FReLU, refuses vectors). Its keyword default is the architecture's own
activation, which a config's ``activation: null`` keeps, as ``width`` and ``depth`` left
unset keep the builder's defaults.

Architecture-specific options (``nf_alpha``, the ViT's ``patch_size`` and ``vit_*``) are
further keywords, named as the config fields that carry them. :func:`first_layer` finds
the layer that sees the input (whose gradient norm stability analyses watch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from bench.errors import ConfigError
from bench.zoo.registry import ARCHS

ArchBuilder = Callable[..., nn.Module]


def first_layer(model: nn.Module) -> nn.Module:
    """The layer that sees the input: ``first_layer()`` of the first module (the model or a
    module wrapping it) that defines one, else the first conv or linear layer."""
    for module in model.modules():
        if callable(getattr(module, "first_layer", None)):
            return module.first_layer()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return module
    raise ValueError(f"{type(model).__name__} has no conv or linear layer")


def refuse_instance_norm_on_single_pixels(norm: Any, arch: str, image_size: int, strided_stages: int) -> None:
    """A :class:`~bench.errors.ConfigError` when ``norm`` is InstanceNorm and the network's
    last stage sees 1×1 maps: ``image_size`` after ``strided_stages`` stride-2 convs
    (kernel 3, padding 1: ⌈s/2⌉ each)."""
    smallest = image_size
    for _ in range(strided_stages):
        smallest = (smallest + 1) // 2
    if getattr(norm, "name", None) == "in" and smallest < 2:
        raise ConfigError(
            f"InstanceNorm normalizes each channel over its spatial positions, but on {image_size}-pixel images the "
            f"last stage of this {arch} sees 1×1 maps (one position: the output would be constant, and training "
            "fails). Use it on 28- or 32-pixel images, or choose bn, gn, ln or none."
        )
