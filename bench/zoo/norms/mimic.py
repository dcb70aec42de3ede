"""MimicNorm (Fei et al. 2021, arXiv:2010.09278): no norm layers inside the network;
instead every conv's weights have their mean removed (the ``centered`` conv) and a single
BatchNorm sits on the logits, after the final linear layer ("before the loss function",
the last BN layer; without affine, as in the authors' code), mimicking BatchNorm's two effects on training dynamics at the cost of
one BN layer.

It changes the model, not one layer, so it is registered as a norm (so studies can put it
on the ``norm`` axis) whose per-layer module is the identity, and :func:`wrap` adds the
last BatchNorm when the model is built.
"""

from __future__ import annotations

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
    """The network followed by the last BatchNorm over the logits, without affine
    (``nn.BatchNorm1d(num_classes, affine=False)`` in the authors' code)."""
    last = nn.BatchNorm1d(num_classes, eps=opts.options["norm_eps"], momentum=opts.options["norm_momentum"], affine=False)
    last.is_bench_norm = True
    return nn.Sequential(model, last)
