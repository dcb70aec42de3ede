"""Architectures, by name.

Every builder has the same keyword signature, so a study can swap the architecture
as easily as the norm::

    build(*, in_channels, num_classes, image_size, norm: NormFactory, conv: ConvFactory, width, depth) -> nn.Module

``norm`` is a :class:`bench.zoo.norms.NormFactory`: the architecture calls
``norm(channels)`` for conv features and ``norm(features, dims=1)`` for vectors, so any
registered norm fits any architecture. ``conv`` is a :class:`bench.zoo.convs.ConvFactory`:
every conv and linear layer is built through ``conv.conv(...)`` / ``conv.linear(...)``, so
any weight reparametrization (standardization, weight norm, ...) fits any architecture.

Architecture-specific options (``nf_alpha``, the ViT's ``patch_size`` and ``vit_*``) are
further keywords, named as the config fields that carry them. :func:`first_layer` finds
the layer that sees the input (whose gradient norm stability analyses watch).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

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
