"""Architectures, by name.

Every builder has the same keyword signature, so a study can swap the architecture
as easily as the norm::

    build(*, in_channels, num_classes, image_size, norm: NormFactory, conv: ConvFactory, width, depth) -> nn.Module

``norm`` is a :class:`bench.zoo.norms.NormFactory`: the architecture calls
``norm(channels)`` for conv features and ``norm(features, dims=1)`` for vectors, so any
registered norm fits any architecture. ``conv`` is a :class:`bench.zoo.convs.ConvFactory`:
every conv and linear layer is built through ``conv.conv(...)`` / ``conv.linear(...)``, so
any weight reparametrization (standardization, weight norm, ...) fits any architecture.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bench.registry import Registry

ArchBuilder = Callable[..., nn.Module]
ARCHS: Registry[ArchBuilder] = Registry("arch")

# Importing the modules registers their entries.
from bench.zoo.archs import cnn, mlp, nfresnet, resnet  # noqa: E402,F401
