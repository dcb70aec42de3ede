"""MimicNorm (Fei et al. 2021, arXiv:2010.09278): no norm layers inside the network;
instead every conv's weights have their mean removed (the ``centered`` conv) and a single
BatchNorm sits on the logits, after the final linear layer ("before the loss function",
the last BN layer; without affine, as in the authors' code), mimicking BatchNorm's two effects on training dynamics at the cost of
one BN layer.

It changes the model, not one layer, so it is registered as a norm (so studies can put it
on the ``norm`` axis) whose per-layer module is the identity, and :func:`wrap` makes the
model-level changes when the model is built: a bias on every conv and linear layer (the
authors' networks keep them, as a network without norm layers does) and the last
BatchNorm. The architecture-specific parts of the authors' networks live with the
architecture (the ResNet's learnable residual and shortcut scalars: ``archs/resnet.py``).

The authors' code is Kid-key/MimicNorm: ``Cifar100/models/resnet_nobn.py``,
``Cifar100/models/vgg_nobn.py``, ``ImageNet/models/resnet_nobn.py`` (the ``*_cbn``
networks), ``meanweigh`` in ``main.py`` (the weight mean).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.zoo.norms import NORM_EPS, NORM_MOMENTUM, NormFactory
from bench.zoo.registry import NORMS

CONV = "centered"


@NORMS.register(
    "mimic",
    "MimicNorm: weight-centred convs, no norm layers, one BatchNorm on the logits.",
    paper="Fei et al. 2021, arXiv:2010.09278",
    options=(NORM_EPS, NORM_MOMENTUM),
    tags=("model",),
    info={"conv": CONV},
)
def mimic(num_channels: int, dims: int, *, norm_eps: float, norm_momentum: float) -> nn.Module:
    return nn.Identity()


def wrap(model: nn.Module, num_classes: int, opts: NormFactory) -> nn.Module:
    """The network with a bias on every conv and linear layer, followed by the last
    BatchNorm over the logits, without affine (``nn.BatchNorm1d(num_classes, affine=False)``
    in the authors' code)."""
    add_biases(model)
    last = nn.BatchNorm1d(num_classes, eps=opts.options["norm_eps"], momentum=opts.options["norm_momentum"], affine=False)
    last.is_bench_norm = True
    return nn.Sequential(model, last)


def add_biases(model: nn.Module) -> None:
    """A bias, starting at 0, on every conv and linear layer built without one. The
    architectures leave out the bias of a layer a norm layer follows, and MimicNorm's
    per-layer norm is the identity: the authors' networks have ``bias=True`` on every conv
    and linear layer, initialized at 0 (``resnet_nobn.py``, ``vgg_nobn.py``). A layer that
    has a bias keeps it as built."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is None:
            weight = module.weight
            module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
