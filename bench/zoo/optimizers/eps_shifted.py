"""The ε-shifted L2 regularizer (Li, Chen, Xia & Yang 2019, "Understanding the Disharmony
between Weight Normalization Family and Weight Decay: ε-shifted L2 Regularizer",
arXiv:1911.05920): ``weight_decay_mode: eps-shifted``.

A conv filter followed by a normalization (weight standardization, weight normalization,
BatchNorm) is scale invariant: the network computes the same function at any ‖w‖. L2
decay then only shrinks ‖w‖, raising the effective learning rate, and has no minimum: the
weights keep shrinking toward 0, where the normalized layer's gradient, ∝ 1/‖w‖, overflows.
The ε-shifted regularizer shifts the pull: the spread of each filter is pulled toward ε
instead of 0, so the objective keeps a minimum and the weights stay away from 0.

Definition, as the authors' code applies it (implus/PytorchInsight,
``classification/imagenet_fast.py``, ``LSGD.step``, run with ``--el2 --nowd-conv``): for
each filter w_i of a conv weight (the fan-in C_in·k·k of output channel i), with mean μ_i
and unbiased standard deviation σ_i over its n elements, the decay term added to the
gradient is

    λ · [ (1 − ε/σ_i)(w_i − μ_i) + μ_i ],

the gradient of  (λ/2) · [ (‖w_i − μ_i‖ − ε√(n−1))² + n μ_i² ] = (λ/2) · [ (n−1)(σ_i − ε)² + n μ_i² ]:
L2 on the filter's mean, the shifted L2 on its centred part. At ε = 0 it is λ w_i, plain L2
(‖w_i‖² = ‖w_i − μ_i‖² + n μ_i²). The code applies it to every 4-D conv weight except
depthwise ones (``sz[1] != 1``), those weights getting no other decay, and leaves the other
parameters to SGD's own weight decay; here they take the ``l2`` form, λw, with the same λ
(``weight_decay``), and ε is ``wd_shift_eps`` (the code's ``--mineps``, "min of weights
std", 1e-3 by default and in the README's WS-ResNet-50 command).

A filter with σ_i = 0 (all its elements equal) has no centred part to shift; its term is
λ μ_i.
"""

from __future__ import annotations

import torch
from torch import Tensor


def is_filter_bank(param: Tensor) -> bool:
    """Whether the ε-shifted form applies: a 2-D conv weight (out, in, k, k), not depthwise."""
    return param.ndim == 4 and param.shape[1] != 1


def decay_gradient(weight: Tensor, eps: float) -> Tensor:
    """(1 − ε/σ_i)(w_i − μ_i) + μ_i for each filter w_i of ``weight`` (λ = 1)."""
    filters = weight.reshape(weight.shape[0], -1)
    mean = filters.mean(dim=1, keepdim=True)
    centred = filters - mean
    std = filters.std(dim=1, keepdim=True)
    shrink = torch.where(std > 0, eps / std, torch.zeros_like(std))
    return (centred - shrink * centred + mean).reshape(weight.shape)
